//! What each subcommand does, on top of the library.

use crate::bad_input;
use crate::cli::{CacheCommand, Cli, Command, ExecArgs, GlobalArgs, PipelineArgs, RebuildArgs, RepoCommand, SeedArgs};
use crate::engine::cache::{Cache, Layer};
use crate::engine::stage::RunSettings;
use crate::engine::ui::{human_bytes, Ui};
use crate::engine::{Engine, EngineOptions, Status};
use crate::guest::{Drive, Guest};
use crate::image::qemu_img;
use crate::pipeline::{self, Pipeline};
use crate::repo::Repo;
use crate::stages;
use crate::vm::Accel;
use anyhow::{Context, Result};
use std::path::Path;

pub fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Run { pipeline, no_cache, build_id, log_dir, output, offline, sign_key } => {
            let options = EngineOptions { no_cache, build_id, log_dir, cache_remote: g.cache_remote.clone() };
            run_command(g, &pipeline, options, output.as_deref(), offline, sign_key)
        }
        Command::Rebuild(args) => rebuild_command(g, &args),
        Command::Validate { pipeline } => {
            let p = load_checked(&pipeline.file, &pipeline.sets)?;
            println!("{}: ok ({} stages)", pipeline.file.display(), p.file.stages.len());
            Ok(())
        }
        Command::Plan { pipeline, build_id, offline } => plan_command(g, &pipeline, build_id, offline),
        Command::Inspect { image, json } => inspect_command(g, &image, json),
        Command::Sysprep { list_operations } => {
            if !list_operations {
                return Err(bad_input!("sysprep: use --list-operations (sysprep runs as a pipeline stage)"));
            }
            print!("{}", stages::sysprep::list_operations());
            Ok(())
        }
        Command::Cache { command } => cache_command(g, command),
        Command::Repo { command } => repo_command(command),
        Command::Exec(args) => exec_command(g, args),
        Command::Seed(args) => seed_command(&args),
        Command::Serve { dir, listen } => {
            Repo::open(&dir)?;
            crate::repo::serve::serve(&dir, &listen)
        }
    }
}

/// Loads a pipeline and builds its stages (which checks files, names and sizes), and does
/// the same for the pipelines it starts from; a chain of `from = { pipeline }` that comes
/// back to a file already in it is bad input naming the cycle.
fn load_checked(file: &Path, sets: &[String]) -> Result<Pipeline> {
    let mut chain = Vec::new();
    let p = pipeline::load(file, sets)?;
    stages::build(&p)?;
    chain.push(std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf()));
    let mut base = p.file.from.as_ref().and_then(|f| f.pipeline.as_ref()).map(|b| p.resolve(b));
    while let Some(path) = base {
        let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if let Some(start) = chain.iter().position(|c| c == &canonical) {
            let names: Vec<String> =
                chain[start..].iter().chain([&canonical]).map(|c| c.display().to_string()).collect();
            return Err(bad_input!(
                "{}: from = {{ pipeline }} makes a cycle: {}; a pipeline cannot start from itself",
                file.display(),
                names.join(" -> ")
            ));
        }
        chain.push(canonical);
        let next = pipeline::load(&path, &[])?;
        stages::build(&next)?;
        base = next.file.from.as_ref().and_then(|f| f.pipeline.as_ref()).map(|b| next.resolve(b));
    }
    Ok(p)
}

fn settings(g: &GlobalArgs, offline: bool, sign_key: Option<String>) -> Result<RunSettings> {
    let accel = Accel::choose(g.accel)?;
    accel.export_to_environment();
    Ok(RunSettings { accel, work_dir: g.work_dir.clone(), offline, sign_key, verbose: g.verbose })
}

/// Checks every stage of the pipeline and of those it starts from against the run's
/// settings before any of them runs, so bad input in the last pipeline writes nothing.
fn preflight_chain(p: &Pipeline, engine: &Engine) -> Result<()> {
    for stage in stages::build(p)? {
        stage.preflight(&engine.settings)?;
    }
    match p.file.from.as_ref().and_then(|f| f.pipeline.as_ref()) {
        Some(other) => preflight_chain(&pipeline::load(&p.resolve(other), &[])?, engine),
        None => Ok(()),
    }
}

/// Runs a pipeline (first the one it starts `from`, if any) and returns its last layer.
fn run_pipeline(p: &Pipeline, engine: &Engine, depth: usize) -> Result<Layer> {
    if depth > 8 {
        return Err(bad_input!("{}: from = {{ pipeline }} nests more than 8 deep (a cycle?)", p.path.display()));
    }
    let stages = stages::build(p)?;
    let base = match p.file.from.as_ref().and_then(|f| f.pipeline.as_ref()) {
        Some(other) => {
            let other = pipeline::load(&p.resolve(other), &[])?;
            engine.ui.line(format!("{}: starting from pipeline {}", p.name(), other.name()));
            Some(run_pipeline(&other, engine, depth + 1)?)
        }
        None => None,
    };
    engine.run(p.name(), &stages, base)
}

fn run_command(
    g: &GlobalArgs,
    args: &PipelineArgs,
    options: EngineOptions,
    output: Option<&Path>,
    offline: bool,
    sign_key: Option<String>,
) -> Result<()> {
    let p = load_checked(&args.file, &args.sets)?;
    // Ctrl-C and SIGTERM stop VMs and remove temporary layers instead of killing us mid-write.
    crate::interrupt::install_handler();
    let ui = Ui::new();
    let engine = Engine::new(settings(g, offline, sign_key)?, options, &ui)?;
    preflight_chain(&p, &engine)?;
    let layer = run_pipeline(&p, &engine, 0)?;
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

/// `pipeline rebuild`: every pipeline under the paths, bases first, each once. All files
/// are loaded and checked before anything runs; a pipeline whose base failed is skipped.
fn rebuild_command(g: &GlobalArgs, args: &RebuildArgs) -> Result<()> {
    use crate::rebuild::{self, PipelineReport, Report};
    let paths = if args.paths.is_empty() { vec![std::path::PathBuf::from("pipelines")] } else { args.paths.clone() };
    let graph = rebuild::graph(&rebuild::find_files(&paths)?)?;
    for node in &graph.nodes {
        load_checked(&node.path, &[])?;
    }
    let shard = args.shard.as_deref().map(rebuild::Shard::parse).transpose()?;
    if shard.is_some() && g.cache_remote.is_none() {
        return Err(bad_input!(
            "--shard needs --cache-remote s3://BUCKET/PREFIX (or PIPELINE_CACHE_REMOTE): the builders find the \
             bases the others build there"
        ));
    }
    // Which shard builds pipeline `i`, when it is not this builder.
    let elsewhere = |i: usize| {
        shard.and_then(|s| {
            let name = graph.nodes[i].pipeline.name();
            (!s.owns(name)).then(|| rebuild::Shard::of(name, s.count))
        })
    };
    let ui = Ui::new();
    let options = EngineOptions {
        build_id: args.build_id.clone(),
        log_dir: args.log_dir.clone(),
        cache_remote: g.cache_remote.clone(),
        ..Default::default()
    };
    let base_names =
        |i: usize| -> Vec<&str> { graph.nodes[i].bases.iter().map(|&b| graph.nodes[b].pipeline.name()).collect() };
    if args.plan {
        let engine = Engine::read_only(settings(g, args.offline, None)?, options, &ui)?;
        for &i in &graph.order {
            let node = &graph.nodes[i];
            let after = base_names(i);
            let after = if after.is_empty() { String::new() } else { format!(", after {}", after.join(", ")) };
            if let Some(other) = elsewhere(i) {
                println!("{} ({}{after}): built by shard {other}", node.pipeline.name(), node.path.display());
                continue;
            }
            println!("{} ({}{after})", node.pipeline.name(), node.path.display());
            if let Err(e) = plan_pipeline(&node.pipeline, &engine, 0, true) {
                // A repository entry its base has not published yet cannot be planned
                // against; the rebuild builds the base first.
                if node.bases.is_empty() {
                    return Err(e);
                }
                println!(
                    "    planned after its base is built ({})",
                    format!("{e:#}").lines().next().unwrap_or_default()
                );
            }
        }
        return Ok(());
    }

    std::fs::create_dir_all(&g.work_dir)
        .with_context(|| format!("cannot create the work directory {}", g.work_dir.display()))?;
    let _lock = rebuild_lock(&g.work_dir, args.wait, &ui)?;
    crate::interrupt::install_handler();
    let engine = Engine::new(settings(g, args.offline, args.sign_key.clone())?, options, &ui)?;
    for node in &graph.nodes {
        preflight_chain(&node.pipeline, &engine)?;
    }
    let started = std::time::SystemTime::now();
    let clock = std::time::Instant::now();
    let mut reports: Vec<Option<PipelineReport>> = graph.nodes.iter().map(|_| None).collect();
    for &i in &graph.order {
        if elsewhere(i).is_some() {
            continue;
        }
        let node = &graph.nodes[i];
        let name = node.pipeline.name().to_string();
        let mut report = PipelineReport {
            name: name.clone(),
            file: node.path.clone(),
            result: "skipped".into(),
            reason: None,
            stages_cached: 0,
            stages_run: 0,
            published: Vec::new(),
            duration_seconds: 0.0,
            layer: None,
        };
        let failed_base = node
            .bases
            .iter()
            .filter(|&&b| elsewhere(b).is_none())
            .find(|&&b| reports[b].as_ref().is_none_or(|r| r.result != "ok"));
        if let Some(&b) = failed_base {
            let base = reports[b].as_ref().map_or("not built", |r| r.result.as_str());
            report.reason = Some(format!("base {} {base}", graph.nodes[b].pipeline.name()));
            ui.line(format!("== {name}: skipped (base {} {base})", graph.nodes[b].pipeline.name()));
            reports[i] = Some(report);
            continue;
        }
        if crate::interrupt::interrupted() {
            report.reason = Some("the rebuild was interrupted".into());
            reports[i] = Some(report);
            continue;
        }
        let waited = node.bases.iter().filter_map(|&b| Some((b, elsewhere(b)?))).try_for_each(|(b, other)| {
            wait_for_base(&graph.nodes[b].pipeline, other, &engine, args.base_timeout)
                .with_context(|| format!("base {} (built by shard {other})", graph.nodes[b].pipeline.name()))
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
        let result = run_pipeline(&node.pipeline, &engine, 0);
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
                let text = crate::engine::secrets::scrub(&format!("{e:#}")).into_owned();
                ui.line(format!("== {name}: failed: {text}"));
                report.result = "failed".into();
                report.reason = Some(text);
            }
        }
        reports[i] = Some(report);
    }

    let pipelines: Vec<PipelineReport> = graph.order.iter().filter_map(|&i| reports[i].take()).collect();
    let not_ok: Vec<String> =
        pipelines.iter().filter(|r| r.result != "ok").map(|r| format!("{} ({})", r.name, r.result)).collect();
    let report = Report {
        started: humantime::format_rfc3339_seconds(started).to_string(),
        duration_seconds: clock.elapsed().as_secs_f64(),
        result: if not_ok.is_empty() { "ok".into() } else { "failed".into() },
        pipelines,
    };
    print_rebuild_summary(&report);
    if let Some(path) = &args.report {
        write_atomically(path, &serde_json::to_vec_pretty(&report)?)?;
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

fn print_rebuild_summary(report: &crate::rebuild::Report) {
    println!("{:<28} {:<8} {:>6} {:>4}  {:<32} {:>8}", "pipeline", "result", "cached", "ran", "published", "time");
    for p in &report.pipelines {
        let published: Vec<String> = p
            .published
            .iter()
            .map(|r| format!("{} r{}", r["name"].as_str().unwrap_or("?"), r["revision"].as_u64().unwrap_or(0)))
            .collect();
        println!(
            "{:<28} {:<8} {:>6} {:>4}  {:<32} {:>7.0}s",
            p.name,
            p.result,
            p.stages_cached,
            p.stages_run,
            if published.is_empty() { "-".to_string() } else { published.join(", ") },
            p.duration_seconds
        );
        if let Some(reason) = &p.reason {
            println!("    {}", reason.lines().next().unwrap_or_default());
        }
    }
    println!("{} in {:.0}s", report.result, report.duration_seconds);
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
                anyhow::bail!(
                    "another rebuild is running in this work directory ({holder}; lock {}); pass --wait to wait for it",
                    path.display()
                );
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

/// Writes `data` to `path` through a temporary file in the same directory and a rename, so
/// a reader never sees half a file.
fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut temp =
        tempfile::NamedTempFile::new_in(dir).with_context(|| format!("cannot write into {}", dir.display()))?;
    temp.write_all(data)?;
    temp.persist(path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// `pipeline exec`: a Virter provisioning on running machines. Everything the user wrote is
/// checked (bad input, exit 2) before any target is contacted; then every target is
/// connected and its host key checked, and the steps run, each on all targets before the
/// next; a failed shell or container step's status is the exit code.
fn exec_command(g: &GlobalArgs, args: ExecArgs) -> Result<()> {
    use crate::provision::{self, exec, ContainerEngine, LoadOptions, RunContext, Source, Target};
    use crate::vm::ssh::Session;
    let source = match &args.provision {
        Some(file) => Source::File(file.clone()),
        None if args.sets.is_empty() => {
            return Err(bad_input!(
                "exec: give a provisioning file with -p FILE, or steps with --set steps[0].shell.script=..."
            ))
        }
        None => Source::Empty,
    };
    let opts = LoadOptions { sets: args.sets.clone(), pull_override: args.container_pull_policy, ..Default::default() };
    let p = provision::load(&source, &opts)?;
    let mut endpoints = args.targets.iter().map(|t| exec::parse_target(t)).collect::<Result<Vec<_>>>()?;
    exec::name_targets(&mut endpoints);
    let workdir = std::env::current_dir().context("cannot read the working directory")?;
    let mut engine = ContainerEngine::named(&args.container_engine);
    if let Some(extra) = &args.container_create_args {
        engine.create_args = extra.clone();
    }
    provision::check(&p, &workdir, &engine)?;
    let key = exec::user_key(args.ssh_key.as_deref())?;
    let user_known_hosts = exec::user_known_hosts(args.known_hosts.as_deref());

    crate::interrupt::install_handler();
    let ui = Ui::new();
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(':', "");
    let log = crate::engine::log::StageLog::create(
        &g.work_dir.join("logs").join("exec").join(format!("{stamp}-{}.log", std::process::id())),
    )?;
    let scratch = crate::engine::cache::scratch_dir(&g.work_dir, "exec")?;
    // The sessions record the host keys they see here; rsync and containers check them strictly.
    let known_hosts = scratch.path().join("known_hosts");
    std::fs::write(&known_hosts, "")?;
    let bar = ui.spinner("exec");
    let mut targets = Vec::new();
    for endpoint in endpoints {
        bar.set_message(format!("connecting to {}@{}:{}", endpoint.user, endpoint.host, endpoint.port));
        let session = Session::connect(&endpoint, &key, &known_hosts, args.connect_timeout)?;
        if let Some(note) = exec::verify_host_key(&endpoint, &known_hosts, &user_known_hosts)? {
            ui.line(&note);
            log.line(&note);
        }
        targets.push(Target { endpoint, session });
    }
    let ctx = RunContext {
        workdir: &workdir,
        scratch: scratch.path(),
        key: &key,
        known_hosts: &known_hosts,
        access_network: exec::access_network(&targets[0].endpoint),
        engine: &engine,
        log: &log,
        bar: &bar,
        echo: Some(&ui),
    };
    let result = provision::run(&p, &targets, &ctx);
    bar.finish_and_clear();
    result?;
    ui.line(format!("{} step(s) ran on {} target(s) (log: {})", p.steps.len(), targets.len(), log.path().display()));
    Ok(())
}

/// `pipeline seed`: the seed file is read and checked in full (bad input, exit 2) before
/// the ISO is written.
fn seed_command(args: &SeedArgs) -> Result<()> {
    let seed = crate::seed::Seed::load(&args.file, &args.sets)?;
    crate::seed::write_iso(&seed, args.format, &args.output)?;
    let files: Vec<String> = seed.files(args.format).into_iter().map(|(name, _)| name).collect();
    println!(
        "wrote {} ({}, volume {}: {})",
        args.output.display(),
        args.format,
        args.format.volume_id(),
        files.join(", ")
    );
    Ok(())
}

fn plan_command(g: &GlobalArgs, args: &PipelineArgs, build_id: Option<String>, offline: bool) -> Result<()> {
    let p = load_checked(&args.file, &args.sets)?;
    let ui = Ui::new();
    // Plan writes nothing: upstream state is read (the network too: a key depends on it) but
    // not kept, and the cache is only looked at (a missing one is empty).
    let engine = Engine::read_only(settings(g, offline, None)?, EngineOptions { build_id, ..Default::default() }, &ui)?;
    plan_pipeline(&p, &engine, 0, true)?;
    Ok(())
}

/// Prints a pipeline's plan (after the plan of the pipeline it starts from) and returns the
/// key of its last layer, the base of a pipeline that starts from it.
/// Waits until another builder has built `base`: its last layer is in the remote cache and
/// each entry it publishes on object storage names that layer in its newest manifest.
fn wait_for_base(base: &Pipeline, shard: u64, engine: &Engine, timeout: std::time::Duration) -> Result<()> {
    let key = plan_pipeline(base, engine, 0, false)?.context("it makes no layer")?;
    // Connected once: a repository keeps the records it verified between polls.
    let entries = base
        .file
        .stages
        .iter()
        .filter_map(|s| match s {
            pipeline::StageConfig::Publish(c) if crate::s3::is_s3(&c.repo) => Some((&c.repo, c.name.as_str())),
            _ => None,
        })
        .map(|(url, name)| Ok((crate::repo::remote::RemoteRepo::connect(url)?, name)))
        .collect::<Result<Vec<_>>>()?;
    let published = |repo: &crate::repo::remote::RemoteRepo, name: &str| -> Result<bool> {
        Ok(repo.manifests(name)?.values().last().is_some_and(|m| m.provenance.layer == key))
    };
    let deadline = std::time::Instant::now() + timeout;
    let mut said = false;
    loop {
        crate::interrupt::check()?;
        let mut ready = engine.cache.get(&key).is_some() || engine.remote_has(&key)?;
        for (repo, name) in &entries {
            ready = ready && published(repo, name)?;
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
                base.name(),
                short_key(&key),
                humantime::format_duration(timeout)
            ));
            said = true;
        }
        std::thread::sleep(left.min(std::time::Duration::from_secs(5)));
    }
}

/// Plans a pipeline (and the one it starts from), printing each stage when `show`, and
/// returns the key of its last layer.
fn plan_pipeline(p: &Pipeline, engine: &Engine, depth: usize, show: bool) -> Result<Option<String>> {
    if depth > 8 {
        return Err(bad_input!("{}: from = {{ pipeline }} nests more than 8 deep (a cycle?)", p.path.display()));
    }
    let base = match p.file.from.as_ref().and_then(|f| f.pipeline.as_ref()) {
        Some(other) => {
            let other = pipeline::load(&p.resolve(other), &[])?;
            plan_pipeline(&other, engine, depth + 1, show)?
                .map(|key| Layer { path: engine.cache.layer_path(&key), key })
        }
        None => None,
    };
    let stages = stages::build(p)?;
    engine.resolve(&stages, true)?;
    let planned = engine.plan(&stages, base.as_ref())?;
    let mut last = base.map(|l| l.key);
    for (s, stage) in planned.iter().zip(&stages) {
        let status = match s.status {
            Status::Cached => "cached",
            Status::ToRun => "to run",
        };
        let inputs: Vec<String> = s.inputs.iter().map(|i| i.display().to_string()).collect();
        let name = if depth > 0 { format!("{}:", p.name()) } else { String::new() };
        let mut notes = Vec::new();
        if let Some(reason) = &s.reason {
            notes.push(reason.clone());
        }
        if !inputs.is_empty() {
            notes.push(format!("reads {}", inputs.join(", ")));
        }
        if show {
            println!(
                "{name}{:>2}  {:<10} {}  {:<7} {}",
                s.index + 1,
                s.kind,
                short_key(&s.key),
                status,
                notes.join("; ")
            );
        }
        if stage.layer_kind() != crate::engine::stage::LayerKind::Output {
            last = Some(s.key.clone());
        }
    }
    Ok(last)
}

fn inspect_command(g: &GlobalArgs, image: &Path, json: bool) -> Result<()> {
    if !image.exists() {
        return Err(bad_input!("{}: no such image", image.display()));
    }
    let accel = Accel::choose(g.accel)?;
    // The format from the image's first bytes, never qemu's probe (see qemu_img).
    let format = match qemu_img::detect_format(image)? {
        qemu_img::Detected::Xz => return Err(bad_input!("{}: decompress the image first (xz)", image.display())),
        other => other.as_str(),
    };
    let guest = Guest::new(accel, None, false)?;
    guest.add_drive(Drive { path: image, format, readonly: true, discard: false })?;
    guest.launch()?;
    let os = guest.inspect().with_context(|| format!("cannot inspect {}", image.display()))?;
    guest.shutdown()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&os)?);
    } else {
        println!("root:               {}", os.root);
        println!("type:               {}", os.os_type);
        println!("distro:             {}", os.distro);
        println!("version:            {}.{}", os.major_version, os.minor_version);
        println!("product:            {}", os.product_name);
        println!("arch:               {}", os.arch);
        println!("package management: {} ({})", os.package_management, os.package_format);
        println!("hostname:           {}", os.hostname);
        for (mp, dev) in &os.mountpoints {
            println!("mountpoint:         {mp} {dev}");
        }
        for (dev, fs) in &os.filesystems {
            println!("filesystem:         {dev} {fs}");
        }
    }
    Ok(())
}

fn cache_command(g: &GlobalArgs, command: CacheCommand) -> Result<()> {
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
                "removed {} layers, {} output and upstream records, {} downloads, {} scratch directories of dead runs",
                report.layers.len(),
                report.outputs,
                report.downloads,
                report.scratch
            );
        }
    }
    Ok(())
}

/// The repository URL when a repository argument names object storage.
fn remote_url(dir: &Path) -> Option<&str> {
    dir.to_str().filter(|d| crate::s3::is_s3(d))
}

fn repo_command(command: RepoCommand) -> Result<()> {
    let remote = match &command {
        RepoCommand::Init { dir, .. }
        | RepoCommand::List { dir }
        | RepoCommand::Show { dir, .. }
        | RepoCommand::Diff { dir, .. }
        | RepoCommand::Remove { dir, .. }
        | RepoCommand::Prune { dir, .. }
        | RepoCommand::Verify { dir, .. } => remote_url(dir).map(str::to_string),
    };
    if let Some(url) = remote {
        return remote_repo_command(&url, command);
    }
    match command {
        RepoCommand::Init { dir, generate_key, sign_key, uri } => {
            let (repo, fpr) = Repo::init(&dir, sign_key.as_deref(), generate_key.as_deref(), uri.as_deref())?;
            println!("repository {} signed by {fpr}", dir.display());
            println!("public key: {}", repo.public_key_path().display());
            if uri.is_some() {
                println!(
                    "virt-builder sources file: {} (clients: copy it and {} to {})",
                    repo.conf_path().display(),
                    repo.public_key_path().display(),
                    crate::repo::CLIENT_REPOS_D
                );
            } else {
                println!(
                    "virt-builder sources file: {} (copy it to ~/.config/virt-builder/repos.d/)",
                    repo.conf_path().display()
                );
            }
        }
        RepoCommand::List { dir } => print_entries(&Repo::open(&dir)?.index()?),
        RepoCommand::Show { dir, name } => {
            let index = Repo::open(&dir)?.index()?;
            let e = index.get(&name).ok_or_else(|| bad_input!("{}: no entry `{name}`", dir.display()))?;
            println!("[{}]", e.id);
            for (k, v) in &e.fields {
                println!("{k}={}", v.replace('\n', "\n "));
            }
            let repo = Repo::open(&dir)?;
            match repo.manifest(&name, e.revision()) {
                Ok(m) => print_manifest(&m),
                Err(err) => println!("\nno package manifest: {err:#}"),
            }
        }
        RepoCommand::Diff { dir, name, rev_a, rev_b, json } => repo_diff(&dir, &name, rev_a, rev_b, json)?,
        RepoCommand::Remove { dir, name, sign_key } => {
            let e = Repo::open(&dir)?.remove(&name, sign_key.as_deref())?;
            println!("removed {} (revision {})", e.id, e.revision());
        }
        RepoCommand::Prune { dir, keep } => {
            for p in Repo::open(&dir)?.prune(keep)? {
                println!("removed {}", p.display());
            }
        }
        RepoCommand::Verify { dir, fingerprint } => {
            let problems = Repo::open(&dir)?.verify(fingerprint.as_deref()).context("cannot verify")?;
            if problems.is_empty() {
                println!("{}: ok", dir.display());
            } else {
                for p in &problems {
                    eprintln!("{}: {p}", dir.display());
                }
                anyhow::bail!("{}: {} problem(s)", dir.display(), problems.len());
            }
        }
    }
    Ok(())
}

/// `repo` commands on a repository on object storage.
fn remote_repo_command(url: &str, command: RepoCommand) -> Result<()> {
    use crate::repo::remote::RemoteRepo;
    match command {
        RepoCommand::Init { generate_key, sign_key, uri, .. } => {
            let (repo, fpr) = RemoteRepo::init(url, sign_key.as_deref(), generate_key.as_deref(), uri.as_deref())?;
            println!("repository {url} signed by {fpr}");
            // Only for the operator's information: publishing never depends on it.
            match repo.store.honours_conditional_put() {
                Ok(true) => println!("{}: honours conditional writes (an extra guard on records)", repo.store.endpoint),
                Ok(false) => println!(
                    "{}: ignores conditional writes (as Garage does); publishing does not need them",
                    repo.store.endpoint
                ),
                Err(e) => {
                    println!("{}: could not tell whether it honours conditional writes: {e:#}", repo.store.endpoint)
                }
            }
            let name = repo.name();
            println!("public key: {}", repo.store.url(&format!("{name}.asc")));
            println!(
                "virt-builder sources file: {} (clients: copy it and {name}.asc to {})",
                repo.store.url(&format!("{name}.conf")),
                crate::repo::CLIENT_REPOS_D
            );
        }
        RepoCommand::List { .. } => print_entries(&RemoteRepo::connect(url)?.index()?),
        RepoCommand::Show { name, .. } => {
            let repo = RemoteRepo::connect(url)?;
            let index = repo.index()?;
            let e = index.get(&name).ok_or_else(|| bad_input!("{url}: no entry `{name}`"))?;
            println!("[{}]", e.id);
            for (k, v) in &e.fields {
                println!("{k}={}", v.replace('\n', "\n "));
            }
            let manifests = repo.manifests(&name)?;
            if let Some(m) = manifests.get(&e.revision()) {
                print_manifest(m);
            }
        }
        RepoCommand::Diff { dir, name, rev_a, rev_b, json } => repo_diff(&dir, &name, rev_a, rev_b, json)?,
        RepoCommand::Remove { name, sign_key, .. } => {
            let e = RemoteRepo::connect(url)?.remove(&name, sign_key.as_deref())?;
            println!("removed {} (revision {})", e.id, e.revision());
        }
        RepoCommand::Prune { keep, .. } => {
            for p in RemoteRepo::connect(url)?.prune(keep)? {
                println!("removed {p}");
            }
        }
        RepoCommand::Verify { fingerprint, .. } => {
            let ui = Ui::new();
            let problems = RemoteRepo::connect(url)?.verify(fingerprint.as_deref(), &ui).context("cannot verify")?;
            if problems.is_empty() {
                println!("{url}: ok");
            } else {
                for p in &problems {
                    eprintln!("{url}: {p}");
                }
                anyhow::bail!("{url}: {} problem(s)", problems.len());
            }
        }
    }
    Ok(())
}

fn print_manifest(m: &crate::repo::manifest::Manifest) {
    println!();
    match m.package_list() {
        Some(list) => println!("packages:  {}", list.len()),
        None => println!("packages:  unknown ({})", m.packages_unreadable.as_deref().unwrap_or("")),
    }
    println!("pipeline:  {}", m.provenance.pipeline);
    println!("layer:     {}", m.provenance.layer);
    println!("tool:      {}", m.provenance.tool);
    println!("built:     {}", m.provenance.built);
}

fn print_entries(index: &crate::repo::index::Index) {
    for e in &index.entries {
        println!(
            "{:<24} r{:<4} {:<10} {:<8} {}",
            e.id,
            e.revision(),
            e.get("osinfo").unwrap_or("-"),
            e.get("arch").unwrap_or("-"),
            e.get("compressed_size").and_then(|s| s.parse().ok()).map(human_bytes).unwrap_or_default()
        );
    }
}

/// The first 16 characters of a layer key, for listings; a key read from a damaged metadata
/// file may be shorter (or not ASCII) and is then shown whole.
fn short_key(key: &str) -> &str {
    key.get(..16).unwrap_or(key)
}

/// `repo diff`: the two revisions' manifests, verified, compared.
fn repo_diff(dir: &Path, name: &str, rev_a: Option<u64>, rev_b: Option<u64>, json: bool) -> Result<()> {
    type Read = Box<dyn Fn(u64) -> Result<crate::repo::manifest::Manifest>>;
    let (known, manifest): (Vec<u64>, Read) = match remote_url(dir) {
        Some(url) => {
            let all = crate::repo::remote::RemoteRepo::connect(url)?.manifests(name)?;
            (all.keys().copied().collect(), Box::new(move |r| all.get(&r).cloned().context("no manifest")))
        }
        None => {
            let repo = Repo::open(dir)?;
            let name = name.to_string();
            (crate::repo::manifest::revisions(dir, &name), Box::new(move |r| repo.manifest(&name, r)))
        }
    };
    if known.is_empty() {
        return Err(bad_input!("{}: no revision of `{name}` has a package manifest", dir.display()));
    }
    let missing = |rev: u64| {
        bad_input!(
            "{}: `{name}` has no manifest for revision {rev} (revisions with one: {})",
            dir.display(),
            known.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
        )
    };
    let b = rev_b.unwrap_or(*known.last().expect("not empty"));
    let a = match rev_a {
        Some(a) => a,
        None => *known
            .iter()
            .rev()
            .find(|&&r| r < b)
            .ok_or_else(|| bad_input!("{}: `{name}` has no revision before {b} to compare with", dir.display()))?,
    };
    for rev in [a, b] {
        if !known.contains(&rev) {
            return Err(missing(rev));
        }
    }
    let (old, new) = (manifest(a)?, manifest(b)?);
    let list = |m: &crate::repo::manifest::Manifest| {
        m.package_list().map(<[_]>::to_vec).ok_or_else(|| {
            anyhow::anyhow!(
                "{name} revision {}: its packages could not be read when it was published ({})",
                m.revision,
                m.packages_unreadable.as_deref().unwrap_or("")
            )
        })
    };
    let d = crate::repo::manifest::diff(&list(&old)?, &list(&new)?);
    if json {
        let out = serde_json::json!({ "name": name, "from": a, "to": b, "added": d.added, "removed": d.removed, "changed": d.changed });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{name}: revision {a} -> {b}");
    for p in &d.added {
        println!("+ {} {} ({})", p.name, p.version, p.arch);
    }
    for p in &d.removed {
        println!("- {} {} ({})", p.name, p.version, p.arch);
    }
    for c in &d.changed {
        println!("~ {} {} -> {} ({})", c.name, c.old, c.new, c.arch);
    }
    println!("{} added, {} removed, {} changed", d.added.len(), d.removed.len(), d.changed.len());
    Ok(())
}

/// A publish record with what its revision changed in packages against the revision before
/// it (`packages`: count, previous revision, added, removed, changed), from the signed
/// manifests; unchanged when they cannot be read.
fn with_package_changes(mut record: serde_json::Value) -> serde_json::Value {
    let (Some(dir), Some(name), Some(revision)) =
        (record["repo"].as_str(), record["name"].as_str(), record["revision"].as_u64())
    else {
        return record;
    };
    let (dir, name) = (std::path::PathBuf::from(dir), name.to_string());
    let Ok(repo) = Repo::open(&dir) else { return record };
    let Ok(new) = repo.manifest(&name, revision) else { return record };
    let Some(new_list) = new.package_list() else { return record };
    let previous = crate::repo::manifest::revisions(&dir, &name).into_iter().rfind(|&r| r < revision);
    let mut packages = serde_json::json!({ "count": new_list.len(), "previous": previous });
    let old = previous.and_then(|r| repo.manifest(&name, r).ok());
    if let Some(old_list) = old.as_ref().and_then(|m| m.package_list()) {
        let d = crate::repo::manifest::diff(old_list, new_list);
        packages["added"] = serde_json::json!(d.added);
        packages["removed"] = serde_json::json!(d.removed);
        packages["changed"] = serde_json::json!(d.changed);
    }
    record["packages"] = packages;
    record
}
