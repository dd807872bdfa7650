//! `pipeline plan`: what a run would do, stage by stage, writing nothing.

use crate::base::ui::Ui;
use crate::chain::{Chain, PlannedLink};
use crate::cli::{GlobalArgs, PipelineArgs};
use crate::engine::{Engine, EngineOptions};
use anyhow::Result;

pub fn plan(g: &GlobalArgs, args: &PipelineArgs, build_id: Option<String>, offline: bool, json: bool) -> Result<()> {
    let chain = Chain::load(&args.file, &args.sets)?;
    let ui = Ui::new();
    // Plan writes nothing: upstream state is read (the network too: a key depends on it) but
    // not kept, and the cache is only looked at (a missing one is empty).
    let settings = super::settings(g, offline, None)?;
    let engine = Engine::read_only(settings, EngineOptions { build_id, ..Default::default() }, &ui)?;
    let (planned, _) = chain.plan(&engine)?;
    if json {
        let stages: Vec<serde_json::Value> = planned.iter().flat_map(PlannedLink::json).collect();
        println!("{}", serde_json::to_string_pretty(&stages)?);
        return Ok(());
    }
    for link in &planned {
        for line in link.lines() {
            println!("{line}");
        }
    }
    Ok(())
}
