//! The command layer: one file per subcommand, each turning its arguments into calls on the
//! library below (chain, engine, repo, rebuild, provision, seed); this file dispatches.
//! Nothing below this layer sees clap's types.

mod boot;
mod cache;
mod completions;
mod exec;
mod inspect;
mod manpages;
mod plan;
mod rebuild;
mod repo;
mod run;
mod seed;
mod serve;
mod sysprep;
mod validate;

use crate::cli::{Cli, Command, GlobalArgs};
use crate::engine::remote_cache::RemoteCacheOptions;
use crate::engine::stage::RunSettings;
use crate::engine::EngineOptions;
use crate::vm::Accel;
use anyhow::Result;

pub fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    crate::base::ui::set_quiet(g.quiet);
    crate::base::http::set_stall_timeout(g.stall_timeout);
    match cli.command {
        Command::Run { pipeline, no_cache, build_id, log_dir, output, offline, sign_key, until, keep_failed } => {
            let options = EngineOptions { no_cache, build_id, log_dir, cache_remote: remote_cache(g), keep_failed };
            run::run(g, &pipeline, options, output.as_deref(), offline, sign_key, until.as_deref())
        }
        Command::Boot(args) => boot::boot(g, &args),
        Command::Rebuild(args) => rebuild::rebuild(g, &args),
        Command::Validate { pipeline, json } => validate::validate(&pipeline, json),
        Command::Plan { pipeline, build_id, offline, json } => plan::plan(g, &pipeline, build_id, offline, json),
        Command::Inspect { image, json } => inspect::inspect(g, &image, json),
        Command::Sysprep { list_operations } => sysprep::sysprep(list_operations),
        Command::Cache { command } => cache::cache(g, command),
        Command::Repo { command } => repo::repo(command),
        Command::Exec(args) => exec::exec(g, args),
        Command::Seed(args) => seed::seed(&args),
        Command::Serve { dir, listen } => serve::serve(&dir, &listen),
        Command::Completions { shell } => completions::completions(shell),
        Command::Manpages { dir } => manpages::manpages(&dir),
        Command::Reference => Ok(crate::cli::write_reference(&mut std::io::stdout())?),
    }
}

/// The shared layer cache's options, when `--cache-remote` names one.
fn remote_cache(g: &GlobalArgs) -> Option<RemoteCacheOptions> {
    let url = g.cache_remote.clone()?;
    Some(RemoteCacheOptions { url, sign_key: g.cache_sign_key.clone(), trusted: g.cache_trust.clone() })
}

/// The settings every stage of a run sees; the accelerator is chosen (and probed) here.
fn settings(g: &GlobalArgs, offline: bool, sign_key: Option<String>) -> Result<RunSettings> {
    let accel = Accel::choose(g.accel.into())?;
    crate::guest::appliance::check_environment().map_err(|e| crate::bad_input!("{e}"))?;
    accel.export_to_environment();
    Ok(RunSettings { accel, work_dir: g.work_dir.clone(), offline, sign_key, verbose: g.verbose })
}
