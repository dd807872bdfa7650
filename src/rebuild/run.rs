//! Running a rebuild: the graph's pipelines in order, each once, under a lock on the work
//! directory; a pipeline whose base failed is skipped; with shards, bases built elsewhere
//! are waited for; the summary and the JSON report.

use super::{PipelineReport, Report, Shard};
use crate::bad_input;
use crate::base::ui::Ui;
use crate::chain::Chain;
use crate::engine::cache::short_key;
use crate::engine::stage::RunSettings;
use crate::engine::{Engine, EngineOptions, Status};
use crate::pipeline;
use crate::repo::changes::with_package_changes;
use crate::repo::location::Location;
use crate::repo::repository::{self, Repository};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The result of a pipeline whose required values are unset, or that stands on one: skipped,
/// and not a failure of the rebuild (a site enables pipelines it has not set up yet).
const NOT_CONFIGURED: &str = "not-configured";

/// How `rebuild --plan` shows the plan: each pipeline's stages, or the graph of pipelines
/// (with what each would do) for Graphviz or Mermaid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanFormat {
    Text,
    Dot,
    Mermaid,
}

/// What `pipeline rebuild` was asked to do.
pub struct Options {
    /// Files, and directories searched for pipeline files.
    pub paths: Vec<PathBuf>,
    /// Print the plan in this form instead of running.
    pub plan: Option<PlanFormat>,
    pub shard: Option<Shard>,
    /// Wait for another rebuild holding the work directory instead of failing.
    pub wait: bool,
    /// How long to wait for a base another shard builds.
    pub base_timeout: Duration,
    /// Where to write the JSON report.
    pub report: Option<PathBuf>,
    pub engine: EngineOptions,
}

/// Every pipeline under the paths, bases first, each once. All files are loaded and
/// checked before anything runs.
pub fn rebuild(options: Options, settings: RunSettings) -> Result<()> {
    let Options { paths, plan, shard, wait, base_timeout, report: report_path, engine: engine_options } = options;
    let graph = super::graph(&super::find_files(&paths)?)?;
    if shard.is_some() && engine_options.cache_remote.is_none() {
        return Err(bad_input!(
            "--shard needs --cache-remote s3://BUCKET/PREFIX (or PIPELINE_CACHE_REMOTE): the builders find the \
             bases the others build there"
        ));
    }
    // Which shard builds pipeline `i`, when it is not this builder.
    let elsewhere = |i: usize| {
        shard.and_then(|s| {
            let name = graph.nodes[i].pipeline().name();
            (!s.owns(name)).then(|| Shard::of(name, s.count))
        })
    };
    let ui = Ui::new();
    let base_names =
        |i: usize| -> Vec<&str> { graph.nodes[i].bases.iter().map(|&b| graph.nodes[b].pipeline().name()).collect() };
    if let Some(format) = plan {
        let engine = Engine::read_only(settings, engine_options, &ui)?;
        let text = format == PlanFormat::Text;
        let mut unplanned = Vec::new();
        let mut drawn = Vec::new();
        for &i in &graph.order {
            let node = &graph.nodes[i];
            let bases = base_names(i);
            let after = if bases.is_empty() { String::new() } else { format!(", after {}", bases.join(", ")) };
            let heading = format!("{} ({}{after})", node.pipeline().name(), node.path.display());
            let PlannedNode { lines, why, unplannable } = plan_node(node, elsewhere(i), &engine);
            if unplannable {
                unplanned.push(node.pipeline().name().to_string());
            }
            if text {
                match elsewhere(i) {
                    Some(other) => println!("{heading}: built by shard {other}"),
                    None => println!("{heading}"),
                }
                lines.iter().for_each(|l| println!("{l}"));
            }
            drawn.push(super::draw::Node { name: node.pipeline().name(), why, bases });
        }
        match format {
            PlanFormat::Text => {}
            PlanFormat::Dot => print!("{}", super::draw::dot(&drawn)),
            PlanFormat::Mermaid => print!("{}", super::draw::mermaid(&drawn)),
        }
        if !unplanned.is_empty() {
            anyhow::bail!("rebuild --plan: cannot plan {} (see above)", unplanned.join(", "));
        }
        return Ok(());
    }

    std::fs::create_dir_all(&settings.work_dir)
        .with_context(|| format!("cannot create the work directory {}", settings.work_dir.display()))?;
    let _lock = rebuild_lock(&settings.work_dir, wait, &ui)?;
    crate::base::interrupt::install_handler();
    let engine = Engine::new(settings, engine_options, &ui)?;
    for node in graph.nodes.iter().filter(|n| n.chain.not_configured().is_none()) {
        node.chain.preflight(&engine)?;
    }
    let started = std::time::SystemTime::now();
    let clock = std::time::Instant::now();
    let mut reports: Vec<Option<PipelineReport>> = graph.nodes.iter().map(|_| None).collect();
    for &i in &graph.order {
        if elsewhere(i).is_some() {
            continue;
        }
        let node = &graph.nodes[i];
        let name = node.pipeline().name().to_string();
        let mut report = PipelineReport {
            name: name.clone(),
            file: node.path.clone(),
            result: "skipped".into(),
            reason: None,
            log: None,
            stages_cached: 0,
            stages_run: 0,
            published: Vec::new(),
            duration_seconds: 0.0,
            layer: None,
        };
        if let Some(why) = node.chain.not_configured() {
            ui.line(format!("== {name}: skipped, not configured"));
            report.result = NOT_CONFIGURED.into();
            report.reason = Some(why.to_string());
            reports[i] = Some(report);
            continue;
        }
        let failed_base = node
            .bases
            .iter()
            .filter(|&&b| elsewhere(b).is_none())
            .find(|&&b| reports[b].as_ref().is_none_or(|r| r.result != "ok"));
        if let Some(&b) = failed_base {
            let base = reports[b].as_ref().map_or("not built", |r| r.result.as_str());
            // Standing on a pipeline that is not configured is not a failure either.
            if base == NOT_CONFIGURED {
                report.result = NOT_CONFIGURED.into();
            }
            report.reason = Some(format!("base {} {base}", graph.nodes[b].pipeline().name()));
            ui.line(format!("== {name}: skipped (base {} {base})", graph.nodes[b].pipeline().name()));
            reports[i] = Some(report);
            continue;
        }
        if crate::base::interrupt::interrupted() {
            report.reason = Some("the rebuild was interrupted".into());
            reports[i] = Some(report);
            continue;
        }
        let waited = node.bases.iter().filter_map(|&b| Some((b, elsewhere(b)?))).try_for_each(|(b, other)| {
            wait_for_base(&graph.nodes[b].chain, other, &engine, base_timeout)
                .with_context(|| format!("base {} (built by shard {other})", graph.nodes[b].pipeline().name()))
        });
        if let Err(e) = waited {
            let text = format!("{e:#}");
            ui.line(format!("== {name}: failed: {text}"));
            report.result = "failed".into();
            report.reason = Some(text);
            reports[i] = Some(report);
            continue;
        }
        ui.line(format!("== {name} ({})", node.path.display()));
        let clock = std::time::Instant::now();
        engine.outcomes.borrow_mut().clear();
        let result = node.chain.run(&engine);
        for outcome in engine.outcomes.take().into_iter().filter(|o| o.pipeline == name) {
            match outcome.status {
                Status::Cached => report.stages_cached += 1,
                Status::ToRun => {
                    report.stages_run += 1;
                    if outcome.kind == "publish" {
                        report.published.extend(outcome.record.map(with_package_changes));
                    }
                }
            }
        }
        report.duration_seconds = clock.elapsed().as_secs_f64();
        match result {
            Ok(layer) => {
                report.result = "ok".into();
                report.layer = Some(layer.path);
            }
            Err(e) => {
                let text = crate::base::secrets::scrub(&format!("{e:#}")).into_owned();
                ui.line(format!("== {name}: failed: {text}"));
                report.result = "failed".into();
                report.reason = Some(text);
                // Absolute, as `file` is: the report is read from anywhere.
                report.log = e
                    .downcast_ref::<crate::engine::StageFailed>()
                    .map(|f| std::path::absolute(&f.log).unwrap_or_else(|_| f.log.clone()));
            }
        }
        reports[i] = Some(report);
    }

    let pipelines: Vec<PipelineReport> = graph.order.iter().filter_map(|&i| reports[i].take()).collect();
    let not_ok: Vec<String> = pipelines
        .iter()
        .filter(|r| r.result != "ok" && r.result != NOT_CONFIGURED)
        .map(|r| format!("{} ({})", r.name, r.result))
        .collect();
    let report = Report {
        started: humantime::format_rfc3339_seconds(started).to_string(),
        duration_seconds: clock.elapsed().as_secs_f64(),
        result: if not_ok.is_empty() { "ok".into() } else { "failed".into() },
        pipelines,
    };
    // `--report -`: the JSON is standard output, so the summary moves to standard error.
    let report_to_stdout = report_path.as_deref() == Some(Path::new("-"));
    if report_to_stdout {
        print_rebuild_summary(&report, &mut std::io::stderr())?;
    } else {
        print_rebuild_summary(&report, &mut std::io::stdout())?;
    }
    let json = serde_json::to_vec_pretty(&report)?;
    // Every night's report stays beside its logs until `cache gc` ages it out.
    let kept = engine.settings.work_dir.join("reports");
    std::fs::create_dir_all(&kept).with_context(|| format!("cannot create {}", kept.display()))?;
    let name = format!("{}-{}.json", report.started.replace(':', ""), std::process::id());
    crate::base::atomic::write(&kept.join(name), &json)?;
    match &report_path {
        Some(_) if report_to_stdout => println!("{}", String::from_utf8_lossy(&json)),
        Some(path) => crate::base::atomic::write(path, &json)?,
        None => {}
    }
    if !not_ok.is_empty() {
        anyhow::bail!(
            "rebuild: {} of {} pipelines did not succeed: {}",
            not_ok.len(),
            report.pipelines.len(),
            not_ok.join(", ")
        );
    }
    Ok(())
}

/// One pipeline of a rebuild's plan: the lines `--plan` prints under its heading (its
/// stages, as `pipeline plan` shows them, or why there are none) and, in a few words, what a
/// rebuild would do with it and why (the graph's label).
struct PlannedNode {
    lines: Vec<String>,
    why: String,
    /// Its plan failed for a reason of its own (an unreachable upstream), not its base's.
    unplannable: bool,
}

fn plan_node(node: &super::Node, elsewhere: Option<u64>, engine: &Engine) -> PlannedNode {
    let node_plan = |lines: Vec<String>, why: String| PlannedNode { lines, why, unplannable: false };
    if let Some(other) = elsewhere {
        return node_plan(Vec::new(), format!("built by shard {other}"));
    }
    if let Some(why) = node.chain.not_configured() {
        let unset: Vec<&str> = node.chain.links().flat_map(|l| l.pipeline.unset_required_values()).collect();
        return node_plan(vec![format!("    skipped: {why}")], format!("not configured: {} not set", unset.join(", ")));
    }
    match node.chain.plan(engine) {
        Ok((links, _)) => {
            let lines = links.iter().flat_map(|l| l.lines()).collect();
            // The pipeline's own stages: its bases are drawn as nodes of their own.
            let own: Vec<_> = links.iter().filter(|l| l.depth == 0).flat_map(|l| l.stages.iter()).collect();
            let to_run = own.iter().filter(|s| s.status == Status::ToRun).count();
            let why = match own.iter().find_map(|s| s.reason.as_deref()) {
                _ if to_run == 0 => "cached: nothing to run".to_string(),
                Some(reason) => format!("{to_run} of {} stages to run: {reason}", own.len()),
                None => format!("{to_run} of {} stages to run", own.len()),
            };
            node_plan(lines, why)
        }
        Err(e) => {
            let first_line = format!("{e:#}").lines().next().unwrap_or_default().to_string();
            if node.bases.is_empty() {
                // One pipeline's unreachable upstream does not hide the others' plans.
                PlannedNode {
                    lines: vec![format!("    cannot be planned: {first_line}")],
                    why: format!("cannot be planned: {first_line}"),
                    unplannable: true,
                }
            } else {
                // A repository entry its base has not published yet cannot be planned
                // against; the rebuild builds the base first.
                node_plan(
                    vec![format!("    planned after its base is built ({first_line})")],
                    "runs after its base is built".into(),
                )
            }
        }
    }
}

fn print_rebuild_summary(report: &Report, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<28} {:<8} {:>6} {:>4}  {:<32} {:>8}",
        "pipeline", "result", "cached", "ran", "published", "time"
    )?;
    for p in &report.pipelines {
        let published: Vec<String> = p
            .published
            .iter()
            .map(|r| format!("{} r{}", r["name"].as_str().unwrap_or("?"), r["revision"].as_u64().unwrap_or(0)))
            .collect();
        writeln!(
            out,
            "{:<28} {:<8} {:>6} {:>4}  {:<32} {:>7.0}s",
            p.name,
            p.result,
            p.stages_cached,
            p.stages_run,
            if published.is_empty() { "-".to_string() } else { published.join(", ") },
            p.duration_seconds
        )?;
        if let Some(reason) = &p.reason {
            writeln!(out, "    {}", reason.lines().next().unwrap_or_default())?;
        }
    }
    writeln!(out, "{} in {:.0}s", report.result, report.duration_seconds)
}

/// Two rebuilds in one work directory never overlap: an exclusive lock on
/// WORK_DIR/rebuild.lock, which names its holder for the one that finds it taken.
fn rebuild_lock(work_dir: &Path, wait: bool, ui: &Ui) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    use std::io::Write;
    let path = work_dir.join("rebuild.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = if holder.trim().is_empty() { "holder unknown" } else { holder.trim() };
            if !wait {
                return Err(anyhow::Error::new(crate::base::error::Busy(format!(
                    "another rebuild is running in this work directory ({holder}; lock {}); pass --wait to wait for it",
                    path.display()
                ))));
            }
            ui.line(format!("waiting for the rebuild that holds {} ({holder})", path.display()));
            Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, e)| anyhow::anyhow!("cannot lock {}: {e}", path.display()))?
        }
        Err((_, e)) => anyhow::bail!("cannot lock {}: {e}", path.display()),
    };
    lock.set_len(0)?;
    let since = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    write!(lock, "pid {} since {since}", std::process::id())?;
    Ok(lock)
}

/// Waits until another builder has built `base`: its last layer is in the remote cache and
/// each entry it publishes on object storage names that layer in its newest manifest.
fn wait_for_base(base: &Chain, shard: u64, engine: &Engine, timeout: Duration) -> Result<()> {
    let key = base.plan(engine)?.1.context("it makes no layer")?;
    // Connected once: a repository keeps the records it verified between polls.
    let entries = base
        .pipeline()
        .file
        .stages
        .iter()
        .filter_map(|s| match s {
            pipeline::StageConfig::Publish(c) => Some((Location::parse(&c.repo, &base.pipeline().dir).ok()?, &c.name)),
            _ => None,
        })
        .filter(|(location, _)| location.shared())
        .map(|(location, name)| Ok((repository::open(&location)?, name.as_str())))
        .collect::<Result<Vec<_>>>()?;
    let published = |repo: &dyn Repository, name: &str| -> Result<bool> {
        let newest = repo.manifest_revisions(name)?.last().copied();
        Ok(newest.map(|r| repo.manifest(name, r)).transpose()?.is_some_and(|m| m.provenance.layer == key))
    };
    let deadline = std::time::Instant::now() + timeout;
    let mut said = false;
    loop {
        crate::base::interrupt::check()?;
        let mut ready = engine.cache.get(&key).is_some() || engine.remote_has(&key)?;
        for (repo, name) in &entries {
            ready = ready && published(repo.as_ref(), name)?;
        }
        if ready {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            anyhow::bail!(
                "not built after {}: its layer {} is not in the remote cache{}; see shard {shard}'s report, or \
                 raise --base-timeout",
                humantime::format_duration(timeout),
                short_key(&key),
                if entries.is_empty() { "" } else { " or its entries do not name it yet" }
            );
        }
        if !said {
            engine.ui.line(format!(
                "== waiting for {} (shard {shard} builds it; layer {}) for up to {}",
                base.pipeline().name(),
                short_key(&key),
                humantime::format_duration(timeout)
            ));
            said = true;
        }
        std::thread::sleep(left.min(std::time::Duration::from_secs(5)));
    }
}
