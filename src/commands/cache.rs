//! `pipeline cache ls|gc`: the work directory's layer cache.

use crate::base::ui::human_bytes;
use crate::cli::{CacheCommand, GlobalArgs};
use crate::engine::cache::{short_key, Cache};
use anyhow::Result;

pub fn cache(g: &GlobalArgs, command: CacheCommand) -> Result<()> {
    let cache = Cache::open(&g.work_dir)?;
    match command {
        CacheCommand::Ls => {
            let now = std::time::SystemTime::now();
            for (meta, size, used) in cache.list()? {
                let age = humantime::format_duration(std::time::Duration::from_secs(
                    now.duration_since(used).unwrap_or_default().as_secs(),
                ));
                println!(
                    "{}  {:>10}  {:<20} stage {} {:<10} used {age} ago",
                    short_key(&meta.key),
                    human_bytes(size),
                    meta.pipeline,
                    meta.stage_index + 1,
                    meta.kind
                );
            }
        }
        CacheCommand::Gc { keep_days } => {
            let keep = std::time::Duration::from_secs(keep_days.saturating_mul(86400));
            let report = cache.gc(&g.work_dir, keep)?;
            println!(
                "removed {} layers, {} output and upstream records, {} downloads, {} scratch directories of dead runs, \
                 {} stage log directories, {} rebuild reports",
                report.layers.len(),
                report.outputs,
                report.downloads,
                report.scratch,
                report.logs,
                report.reports
            );
        }
    }
    Ok(())
}
