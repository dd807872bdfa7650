//! `pipeline run`: the chain loaded and preflighted, then run; the last layer's path printed.

use crate::base::ui::Ui;
use crate::chain::Chain;
use crate::cli::{GlobalArgs, PipelineArgs};
use crate::engine::{Engine, EngineOptions};
use crate::image::qemu_img;
use anyhow::Result;
use std::path::Path;

pub fn run(
    g: &GlobalArgs,
    args: &PipelineArgs,
    options: EngineOptions,
    output: Option<&Path>,
    offline: bool,
    sign_key: Option<String>,
    until: Option<&str>,
) -> Result<()> {
    let mut chain = Chain::load(&args.file, &args.sets)?;
    if let Some(stage) = until {
        chain.stop_after(stage, "--until")?;
    }
    // Ctrl-C and SIGTERM stop VMs and remove temporary layers instead of killing us mid-write.
    crate::base::interrupt::install_handler();
    let ui = Ui::new();
    let engine = Engine::new(super::settings(g, offline, sign_key)?, options, &ui)?;
    chain.preflight(&engine)?;
    let layer = chain.run(&engine)?;
    if let Some(out) = output {
        let format = match out.extension().and_then(|e| e.to_str()) {
            Some("raw" | "img") => "raw",
            _ => "qcow2",
        };
        ui.line(format!("writing {} ({format})", out.display()));
        qemu_img::convert(&layer.path, out, format)?;
    }
    println!("{}", layer.path.display());
    Ok(())
}
