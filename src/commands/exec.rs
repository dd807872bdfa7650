//! `pipeline exec`: a Virter provisioning file run on machines that are already running.

use crate::bad_input;
use crate::base::ui::Ui;
use crate::cli::{ExecArgs, GlobalArgs};
use anyhow::{Context, Result};

/// `pipeline exec`: a Virter provisioning on running machines. Everything the user wrote is
/// checked (bad input, exit 2) before any target is contacted; then every target is
/// connected and its host key checked, and the steps run, each on all targets before the
/// next; a failed shell or container step's status is the exit code.
pub fn exec(g: &GlobalArgs, args: ExecArgs) -> Result<()> {
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

    crate::base::interrupt::install_handler();
    let ui = Ui::new();
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(':', "");
    let log = crate::base::log::StageLog::create(
        &g.work_dir.join("logs").join("exec").join(format!("{stamp}-{}.log", std::process::id())),
    )?;
    let scratch = crate::base::scratch::dir(&g.work_dir, "exec")?;
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
