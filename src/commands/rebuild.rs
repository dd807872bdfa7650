//! `pipeline rebuild`: the arguments turned into a rebuild (see `crate::rebuild`).

use crate::cli::{GlobalArgs, PlanFormatArg, RebuildArgs};
use crate::engine::EngineOptions;
use crate::rebuild::run::{rebuild as run_rebuild, Options, PlanFormat};
use crate::rebuild::Shard;
use anyhow::Result;

pub fn rebuild(g: &GlobalArgs, args: &RebuildArgs) -> Result<()> {
    let paths = if args.paths.is_empty() { vec![std::path::PathBuf::from("pipelines")] } else { args.paths.clone() };
    let options = Options {
        paths,
        plan: args.plan.then_some(match args.format {
            PlanFormatArg::Text => PlanFormat::Text,
            PlanFormatArg::Dot => PlanFormat::Dot,
            PlanFormatArg::Mermaid => PlanFormat::Mermaid,
        }),
        shard: args.shard.as_deref().map(Shard::parse).transpose()?,
        wait: args.wait,
        base_timeout: args.base_timeout,
        report: args.report.clone(),
        engine: EngineOptions {
            build_id: args.build_id.clone(),
            log_dir: args.log_dir.clone(),
            cache_remote: super::remote_cache(g),
            ..Default::default()
        },
    };
    // A plan signs nothing.
    let sign_key = if args.plan { None } else { args.sign_key.clone() };
    run_rebuild(options, super::settings(g, args.offline, sign_key)?)
}
