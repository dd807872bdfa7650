//! `pipeline cache ls|gc`: the work directory's layer cache.

use crate::base::ui::human_bytes;
use crate::cli::{CacheCommand, GlobalArgs};
use crate::engine::cache::{short_key, Cache};
use anyhow::Result;

pub fn cache(g: &GlobalArgs, command: CacheCommand) -> Result<()> {
    let cache = Cache::open(&g.work_dir)?;
    match command {
        CacheCommand::Ls { json } => {
            let now = std::time::SystemTime::now();
            let layers = cache.list()?;
            if json {
                let out: Vec<serde_json::Value> = layers
                    .iter()
                    .map(|(meta, size, used)| {
                        serde_json::json!({
                            "key": meta.key, "parent": meta.parent, "pipeline": meta.pipeline,
                            "stage": meta.stage_index + 1, "kind": meta.kind, "size": size,
                            "created": meta.created,
                            "last_used": humantime::format_rfc3339_seconds(*used).to_string(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(());
            }
            for (meta, size, used) in layers {
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
                 {} stage log directories, {} rebuild reports, {} kept failed layers",
                report.layers.len(),
                report.outputs,
                report.downloads,
                report.scratch,
                report.logs,
                report.reports,
                report.failed
            );
        }
    }
    Ok(())
}
