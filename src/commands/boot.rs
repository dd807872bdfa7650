//! `pipeline boot`: a layer booted on a throwaway overlay for a look around, on the serial
//! console or over SSH (as mkosi's `vm`/`ssh` and Virter's `vm run`/`vm ssh`). The layer is
//! never written and nothing reaches the cache: the overlay lives in a scratch directory
//! removed when the command ends, and the cache's run lock is held meanwhile so that `cache
//! gc` leaves the layer alone.

use crate::bad_input;
use crate::base::error::StepFailed;
use crate::base::log::StageLog;
use crate::base::ui::Ui;
use crate::chain::Chain;
use crate::cli::{BootArgs, GlobalArgs};
use crate::engine::cache::Cache;
use crate::engine::{Engine, EngineOptions};
use crate::guest::{access, throwaway};
use crate::image::qemu_img::{self, Detected};
use crate::vm::qemu::{Vm, VmConfig};
use crate::vm::runner::BootOptions;
use crate::vm::ssh::{openssh_command, shell_quote, AccessKey};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

pub fn boot(g: &GlobalArgs, args: &BootArgs) -> Result<()> {
    if qemu_img::parse_size(&args.memory).is_none_or(|m| m < 128 << 20) {
        return Err(bad_input!("--memory {}: not a memory size such as 1024M or 2G (at least 128M)", args.memory));
    }
    if !(1..=256).contains(&args.cpus) {
        return Err(bad_input!("--cpus {}: not a number of CPUs from 1 to 256", args.cpus));
    }
    let ui = Ui::new();
    // Offline: the layer that boots is the one the last run built, whatever upstream did since.
    let settings = super::settings(g, true, None)?;
    let (layer, what) = match (&args.file, &args.disk) {
        (Some(file), _) => pipeline_layer(file, args, &settings, &ui)?,
        (None, Some(disk)) => (given_disk(disk)?, disk.display().to_string()),
        (None, None) => unreachable!("clap requires FILE or --disk"),
    };
    // Held shared while the guest runs, as a build holds it: `cache gc` waits.
    let _in_use = match g.work_dir.join("layers").is_dir() {
        true => Some(Cache::open(&g.work_dir)?.hold_for_run()?),
        false => None,
    };
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(':', "");
    let logs = g.work_dir.join("logs").join("boot");
    let log = StageLog::create(&logs.join(format!("{stamp}-{}.log", std::process::id())))?;
    log.line(format!("booting {what} on a throwaway overlay"));
    let options = BootOptions {
        accel: settings.accel,
        memory: args.memory.clone(),
        cpus: args.cpus,
        work_dir: g.work_dir.clone(),
        no_reboot: false,
        raw_disks: Vec::new(),
    };
    ui.line(format!("booting {what} on a throwaway overlay (log: {})", log.path().display()));
    if args.ssh {
        over_ssh(&layer, &options, args, g.verbose, &log, &ui)
    } else {
        let console = logs.join(format!("{stamp}-{}-console.log", std::process::id()));
        on_console(&layer, &options, &console, &log, &ui)
    }
}

/// The layer a pipeline's last stage (or `--stage`) leaves, which must be built.
fn pipeline_layer(
    file: &Path,
    args: &BootArgs,
    settings: &crate::engine::stage::RunSettings,
    ui: &Ui,
) -> Result<(PathBuf, String)> {
    let mut chain = Chain::load(file, &args.sets)?;
    if let Some(stage) = &args.stage {
        chain.stop_after(stage, "--stage")?;
    }
    let engine = Engine::read_only(settings.clone(), EngineOptions::default(), ui)?;
    let (planned, key) = chain.plan(&engine)?;
    let key = key.ok_or_else(|| bad_input!("{}: its stages make no layer to boot", file.display()))?;
    let layer = engine.cache.get(&key).ok_or_else(|| {
        let until = args.stage.as_deref().map(|s| format!(" --until {s}")).unwrap_or_default();
        anyhow!(
            "{}: the layer to boot is not built (`pipeline plan` shows what a run would build); \
             build it with `pipeline run {}{until}`",
            file.display(),
            file.display()
        )
    })?;
    // The stage that made the layer (output stages pass theirs on), in whichever file it is.
    let made_by = planned
        .iter()
        .rev()
        .find_map(|link| link.stages.iter().find(|s| s.key == key).map(|s| (link.pipeline.name(), s)));
    let what = match made_by {
        Some((name, s)) => format!("stage {} ({}) of {name}: {}", s.index + 1, s.kind, layer.path.display()),
        None => layer.path.display().to_string(),
    };
    Ok((layer.path.clone(), what))
}

/// A disk given with `--disk`: an existing qcow2 image (it is only read, as a backing file).
fn given_disk(disk: &Path) -> Result<PathBuf> {
    match qemu_img::detect_format(disk) {
        Ok(Detected::Qcow2) => Ok(disk.to_path_buf()),
        Ok(other) => Err(bad_input!(
            "--disk {}: a {} image; boot takes qcow2 (convert it with `qemu-img convert -O qcow2`)",
            disk.display(),
            other.as_str()
        )),
        Err(e) => Err(bad_input!("--disk {}: {e:#}", disk.display())),
    }
}

/// The serial console on this terminal until the user quits qemu (Ctrl-A X) or the guest
/// powers off. A key goes in as a credential too, for a second terminal's SSH.
fn on_console(layer: &Path, options: &BootOptions, console: &Path, log: &StageLog, ui: &Ui) -> Result<()> {
    let scratch = crate::base::scratch::dir(&options.work_dir, "boot")?;
    let disk = scratch.path().join("boot.qcow2");
    qemu_img::create_overlay(layer, &disk, None)?;
    let key = AccessKey::generate()?;
    let port = crate::vm::free_port().context("no free TCP port on 127.0.0.1 for the guest's SSH")?;
    let mut config = VmConfig::new(options.accel);
    config.memory = options.memory.clone();
    config.cpus = options.cpus;
    config.disks.push((disk, "qcow2".into()));
    config.forwards.push((port, 22));
    config.rng = true;
    config.credentials.push(access::credential(key.public_line()));
    config.terminal = true;
    ui.line("the serial console follows; Ctrl-A X quits (the overlay is thrown away), Ctrl-A C is qemu's monitor");
    ui.line(format!(
        "root's SSH from another terminal, while this runs (where the image's sshd takes a systemd credential key): \
         ssh -i {} -p {port} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1",
        shell_quote(&key.private_key_path().display().to_string())
    ));
    // Ctrl-C reaches the guest (the terminal is raw); SIGTERM or SIGINT from elsewhere stops
    // qemu, and the overlay goes with the scratch directory.
    crate::base::interrupt::install_handler();
    let mut vm = Vm::start_logged(&config, console, Some(log.clone()))?;
    let status = loop {
        if let Some(status) = vm.try_exit()? {
            break status;
        }
        if let Err(stopped) = crate::base::interrupt::check() {
            vm.kill();
            return Err(stopped);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    log.line(format!("qemu exited: {status}"));
    if !status.success() {
        bail!("qemu failed ({status}): {} (log: {})", vm.stderr().trim(), log.path().display());
    }
    Ok(())
}

/// Root's shell (or COMMAND) over SSH in the booted throwaway copy; the guest is killed when
/// it ends, since nothing of it is kept.
fn over_ssh(
    layer: &Path,
    options: &BootOptions,
    args: &BootArgs,
    verbose: bool,
    log: &StageLog,
    ui: &Ui,
) -> Result<()> {
    crate::base::interrupt::install_handler();
    let bar = ui.spinner("boot");
    let limits = throwaway::Limits { ssh: args.boot_timeout, deadline: None };
    let booted = throwaway::boot(layer, options, &limits, verbose, log, &bar);
    bar.finish_and_clear();
    let booted = booted.with_context(|| format!("log: {}", log.path().display()))?;
    booted.runner.console_on_bar(false);
    let mut ssh = openssh_command(booted.runner.endpoint(), &booted.key);
    ssh.args(&args.command);
    log.line(format!("$ {}", crate::base::secrets::describe_command(&ssh)));
    let status = ssh.status().context("cannot run ssh (install openssh-client)")?;
    log.line(format!("ssh exited: {status}"));
    booted.runner.kill();
    let shown = args.command.join(" ");
    match status.code() {
        Some(0) => Ok(()),
        Some(255) => bail!("ssh to the guest failed (log: {})", log.path().display()),
        // A shell's status is that of the last command typed: no news.
        Some(_) if args.command.is_empty() => Ok(()),
        Some(code) => Err(anyhow::Error::new(StepFailed {
            code,
            message: format!("`{shown}` exited with status {code} in the guest"),
        })),
        None => bail!("ssh was stopped by a signal ({status})"),
    }
}
