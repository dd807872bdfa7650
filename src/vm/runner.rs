//! The VM runner shared by every stage that boots a layer (provision, firstboot, and the
//! boot checks and exports after them): qemu on a qcow2 overlay the caller made over the
//! parent layer, the serial console followed into the stage log (its latest line on the
//! progress bar), the guest's port 22 forwarded to a free 127.0.0.1 port, and a clean
//! shutdown: `poweroff` over SSH, then an ACPI power-button press through QMP, then kill.
//!
//! Nothing waits without a limit: every wait checks for a signal and ends with an error that
//! quotes the last console lines. qemu is killed and the scratch files (console, QMP socket)
//! removed when the runner is dropped, so every failure path cleans up.

use super::console::{last_lines, strip_escapes, ConsoleReader};
use super::qemu::{Vm, VmConfig};
use super::ssh::{AccessKey, ConnectError, Endpoint, Session};
use super::Accel;
use crate::base::log::StageLog;
use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the guest is booted.
#[derive(Debug, Clone)]
pub struct BootOptions {
    pub accel: Accel,
    /// qemu's `-m` (`1024M`, `2G`).
    pub memory: String,
    pub cpus: u32,
    /// Where the scratch directory (console, QMP socket) goes: the run's work directory.
    pub work_dir: PathBuf,
    /// Exit qemu instead of rebooting the guest.
    pub no_reboot: bool,
    /// Raw disks attached after the layer, each with a serial the guest finds it by.
    pub raw_disks: Vec<(PathBuf, String)>,
}

/// How long each way of stopping the guest may take before the next one is tried. Under TCG
/// a Debian guest takes 5-20 s to power off.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(120);
const ACPI_TIMEOUT: Duration = Duration::from_secs(60);
/// The `poweroff` command itself (the connection usually drops before it answers).
const POWEROFF_COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the console is read.
const CONSOLE_POLL: Duration = Duration::from_millis(250);

struct Shared {
    vm: Mutex<Vm>,
    console: Mutex<ConsoleReader>,
    stop: AtomicBool,
    /// Whether the console's latest line goes on the progress bar (while booting and
    /// shutting down; the stage's own steps have it otherwise).
    bar_follows_console: AtomicBool,
    deadline: Mutex<Option<Instant>>,
    /// The deadline passed and qemu was killed.
    expired: AtomicBool,
}

pub struct Runner {
    shared: Arc<Shared>,
    watcher: Option<std::thread::JoinHandle<()>>,
    endpoint: Endpoint,
    qmp: PathBuf,
    log: StageLog,
    bar: ProgressBar,
    // Removed on drop, after qemu is gone (field order: this one last).
    _scratch: Vec<tempfile::TempDir>,
}

impl Runner {
    /// Boots `disk` (a qcow2 the guest may write: the stage's new layer) and starts
    /// following its console.
    pub fn boot(options: &BootOptions, disk: &Path, log: &StageLog, bar: &ProgressBar) -> Result<Runner> {
        Runner::boot_with_credentials(options, &[], disk, log, bar)
    }

    /// [`Runner::boot`] with systemd credentials (name, value) for the guest (SMBIOS type 11).
    pub fn boot_with_credentials(
        options: &BootOptions,
        credentials: &[(String, Vec<u8>)],
        disk: &Path,
        log: &StageLog,
        bar: &ProgressBar,
    ) -> Result<Runner> {
        let scratch = crate::base::scratch::dir(&options.work_dir, "vm")?;
        let mut dirs = Vec::new();
        // A unix socket path must fit in 108 bytes; a deep work directory would not.
        let qmp = if scratch.path().join("qmp.sock").as_os_str().len() < 100 {
            scratch.path().join("qmp.sock")
        } else {
            let short = tempfile::Builder::new().prefix("vp-qmp-").tempdir()?;
            let path = short.path().join("qmp.sock");
            dirs.push(short);
            path
        };
        let console = scratch.path().join("console.log");
        let port = super::free_port().context("no free TCP port on 127.0.0.1 for the guest's SSH")?;
        let mut config = VmConfig::new(options.accel);
        config.memory = options.memory.clone();
        config.cpus = options.cpus;
        config.disks.push((disk.to_path_buf(), "qcow2".into()));
        config.raw_disks = options.raw_disks.clone();
        config.forwards.push((port, 22));
        config.qmp = Some(qmp.clone());
        config.rng = true;
        config.no_reboot = options.no_reboot;
        config.credentials = credentials.to_vec();
        bar.set_message("booting");
        let vm = Vm::start_logged(&config, &console, Some(log.clone()))?;
        log.line(format!("guest SSH forwarded from 127.0.0.1:{port}"));
        let shared = Arc::new(Shared {
            vm: Mutex::new(vm),
            console: Mutex::new(ConsoleReader::new(&console, super::console::CONSOLE_TAIL)),
            stop: AtomicBool::new(false),
            bar_follows_console: AtomicBool::new(true),
            deadline: Mutex::new(None),
            expired: AtomicBool::new(false),
        });
        let watcher = {
            let (shared, log, bar) = (shared.clone(), log.clone(), bar.clone());
            std::thread::spawn(move || watch(&shared, &log, &bar))
        };
        dirs.push(scratch);
        Ok(Runner {
            shared,
            watcher: Some(watcher),
            endpoint: Endpoint { name: "guest".into(), host: "127.0.0.1".into(), port, user: "root".into() },
            qmp,
            log: log.clone(),
            bar: bar.clone(),
            _scratch: dirs,
        })
    }

    /// Where the guest's sshd is reached (as root).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Kills the VM once `deadline` passes, whatever the stage is waiting on (an SSH
    /// command, rsync, a container): the stage's whole-run limit.
    pub fn set_deadline(&self, deadline: Instant) {
        if let Ok(mut d) = self.shared.deadline.lock() {
            *d = Some(deadline);
        }
    }

    /// Whether the deadline passed (and the VM was killed for it).
    pub fn expired(&self) -> bool {
        self.shared.expired.load(Ordering::SeqCst)
    }

    /// Whether the console's latest line is shown on the progress bar.
    pub fn console_on_bar(&self, on: bool) {
        self.shared.bar_follows_console.store(on, Ordering::SeqCst);
    }

    /// The last console lines, for error messages.
    pub fn last_console_lines(&self) -> String {
        let text = self.shared.console.lock().map(|c| c.tail()).unwrap_or_default();
        last_lines(&strip_escapes(&text))
    }

    /// `error` with the console's last lines, and the deadline named when it was the cause.
    pub fn explain(&self, error: anyhow::Error) -> anyhow::Error {
        let error =
            if self.expired() { error.context("the stage's time limit passed and its VM was stopped") } else { error };
        error.context(format!("last console lines:\n{}", self.last_console_lines()))
    }

    /// qemu's exit status once it has exited, with its error output.
    fn exited(&self) -> Option<(std::process::ExitStatus, String)> {
        let mut vm = self.shared.vm.lock().ok()?;
        match vm.try_exit() {
            Ok(Some(status)) => Some((status, vm.stderr().trim().to_string())),
            _ => None,
        }
    }

    fn check_deadline(&self) -> Result<()> {
        if self.expired() {
            bail!(
                "the stage's time limit passed and its VM was stopped; last console lines:\n{}",
                self.last_console_lines()
            );
        }
        Ok(())
    }

    /// Waits until the guest's sshd lets the run's key in as root, at most `timeout` from
    /// now; records the guest's host key in the key's known_hosts.
    pub fn wait_for_ssh(&self, key: &AccessKey, timeout: Duration) -> Result<Session> {
        self.wait_for_ssh_unless_refused(key, timeout)?
    }

    /// Like [`Runner::wait_for_ssh`], but sshd refusing the key is an answer, not an error:
    /// `Ok(Err(why))` as soon as it does, so a caller with another way in need not wait for
    /// the whole timeout.
    pub fn wait_for_ssh_unless_refused(
        &self,
        key: &AccessKey,
        timeout: Duration,
    ) -> Result<std::result::Result<Session, anyhow::Error>> {
        let start = Instant::now();
        let mut last_error = anyhow!("no attempt made");
        loop {
            crate::base::interrupt::check()?;
            self.check_deadline()?;
            if let Some((status, stderr)) = self.exited() {
                bail!(
                    "the VM stopped ({status}) before its SSH server answered{}; last console lines:\n{}",
                    if stderr.is_empty() { String::new() } else { format!(": {stderr}") },
                    self.last_console_lines()
                );
            }
            match Session::connect_once(&self.endpoint, key.private_key_path(), key.known_hosts_path()) {
                Ok(session) => {
                    self.log.line(format!("SSH answered after {}s", start.elapsed().as_secs()));
                    return Ok(Ok(session));
                }
                Err(ConnectError::Refused(e)) => {
                    self.log.line(format!("SSH refused the key after {}s: {e:#}", start.elapsed().as_secs()));
                    return Ok(Err(e.context(format!("last console lines:\n{}", self.last_console_lines()))));
                }
                Err(ConnectError::Fatal(e)) => {
                    return Err(e.context(format!("last console lines:\n{}", self.last_console_lines())))
                }
                Err(ConnectError::NotYet(e)) => last_error = e,
            }
            if start.elapsed() >= timeout {
                bail!(
                    "the guest's SSH server did not answer within {} (last attempt: {last_error:#}); last console lines:\n{}",
                    humantime::format_duration(timeout),
                    self.last_console_lines()
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Waits until the guest powers itself off (qemu exits), at most `timeout`.
    pub fn wait_for_poweroff(&self, timeout: Duration) -> Result<()> {
        self.wait_exit(timeout)?.ok_or_else(|| {
            self.kill();
            anyhow!(
                "the guest did not power off within {}; last console lines:\n{}",
                humantime::format_duration(timeout),
                self.last_console_lines()
            )
        })
    }

    /// Waits up to `timeout` for qemu to exit: Some(()) when it did, cleanly.
    fn wait_exit(&self, timeout: Duration) -> Result<Option<()>> {
        let start = Instant::now();
        loop {
            crate::base::interrupt::check()?;
            self.check_deadline()?;
            if let Some((status, stderr)) = self.exited() {
                self.drain_console();
                if !status.success() {
                    bail!(
                        "qemu failed ({status}){}; last console lines:\n{}",
                        if stderr.is_empty() { String::new() } else { format!(": {stderr}") },
                        self.last_console_lines()
                    );
                }
                self.log.line(format!("the guest powered off ({:.1}s of waiting)", start.elapsed().as_secs_f64()));
                return Ok(Some(()));
            }
            if start.elapsed() >= timeout {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the guest cleanly, so everything it wrote is on the disk: `poweroff` over the
    /// session, then the ACPI power button, then (a failure) kill.
    pub fn shutdown(self, session: Option<Session>) -> Result<()> {
        self.shutdown_with(session, "poweroff")
    }

    /// Like [`Runner::shutdown`], for a guest whose work is done and whose running services
    /// have nothing left to save: on a systemd guest `systemctl poweroff --force`, which skips
    /// stopping the units one by one (most of a clean poweroff's time under TCG) but still
    /// goes through systemd-shutdown — every process is sent SIGTERM (then SIGKILL), every
    /// filesystem unmounted or, for the root, remounted read-only (the journal committed, the
    /// filesystem marked clean), the disks synced — before the power goes off. So the disk
    /// holds everything written and clean filesystems, as after a full poweroff; what is
    /// skipped is the units' own stop actions (ExecStop=, state saved on the way down, a
    /// shutdown record in wtmp), which an image does not need. Not for a guest that has to
    /// shut down as it would in use. Other inits get a plain `poweroff`.
    pub fn shutdown_forced(self, session: Session) -> Result<()> {
        self.shutdown_with(
            Some(session),
            "sync; if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then systemctl poweroff --force; else poweroff; fi",
        )
    }

    fn shutdown_with(self, session: Option<Session>, poweroff: &str) -> Result<()> {
        self.console_on_bar(true);
        self.bar.set_message("shutting down");
        if let Some(session) = session {
            self.log.line(format!("shutdown: `{poweroff}` over SSH"));
            session.set_deadline(Some(Instant::now() + POWEROFF_COMMAND_TIMEOUT));
            // The guest closes the connection while it powers off: no answer is normal.
            if let Ok((status, output)) = session.exec(poweroff) {
                if status != 0 {
                    self.log.line(format!("poweroff exited {status}: {}", output.trim()));
                }
            }
            drop(session);
            if self.wait_exit(POWEROFF_TIMEOUT)?.is_some() {
                return Ok(());
            }
            self.log.line(format!("the guest did not power off within {}s", POWEROFF_TIMEOUT.as_secs()));
        }
        self.log.line("shutdown: ACPI power button (QMP system_powerdown)");
        match qmp_command(&self.qmp, "system_powerdown") {
            Ok(()) => {
                if self.wait_exit(ACPI_TIMEOUT)?.is_some() {
                    return Ok(());
                }
                self.log.line(format!("the guest ignored the power button for {}s", ACPI_TIMEOUT.as_secs()));
            }
            Err(e) => self.log.line(format!("QMP failed: {e:#}")),
        }
        self.kill();
        bail!(
            "the guest did not shut down (neither `poweroff` nor the ACPI power button); it was killed, so its disk may be inconsistent and is not kept; last console lines:\n{}",
            self.last_console_lines()
        )
    }

    /// Kills qemu now.
    pub fn kill(&self) {
        if let Ok(mut vm) = self.shared.vm.lock() {
            vm.kill();
        }
        self.drain_console();
    }

    /// Logs what the console holds that was not logged yet.
    fn drain_console(&self) {
        if let Ok(mut console) = self.shared.console.lock() {
            let mut lines = console.poll().unwrap_or_default();
            lines.extend(console.flush());
            log_console(&self.log, None, lines);
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
        self.kill();
    }
}

/// The watcher thread: the console into the log (and on the bar), and the deadline.
fn watch(shared: &Shared, log: &StageLog, bar: &ProgressBar) {
    while !shared.stop.load(Ordering::SeqCst) {
        if let Ok(mut console) = shared.console.lock() {
            let lines = console.poll().unwrap_or_default();
            let on_bar = shared.bar_follows_console.load(Ordering::SeqCst);
            log_console(log, on_bar.then_some(bar), lines);
        }
        let deadline = shared.deadline.lock().ok().and_then(|d| *d);
        if deadline.is_some_and(|d| Instant::now() >= d) && !shared.expired.swap(true, Ordering::SeqCst) {
            log.line("the stage's time limit passed: stopping the VM");
            if let Ok(mut vm) = shared.vm.lock() {
                vm.kill();
            }
        }
        std::thread::sleep(CONSOLE_POLL);
    }
}

fn log_console(log: &StageLog, bar: Option<&ProgressBar>, lines: Vec<String>) {
    for line in lines {
        let line = strip_escapes(&line);
        let line = line.trim_end();
        if line.trim().is_empty() {
            continue;
        }
        log.line(format!("console: {line}"));
        if let Some(bar) = bar {
            bar.set_message(line.trim().to_string());
        }
    }
}

/// Sends one QMP command (after the capabilities handshake) and waits for its answer.
pub fn qmp_command(socket: &Path, command: &str) -> Result<()> {
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to qemu's QMP socket {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let answer = |reader: &mut BufReader<std::os::unix::net::UnixStream>| -> Result<serde_json::Value> {
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                bail!("QMP closed the connection");
            }
            let value: serde_json::Value =
                serde_json::from_str(line.trim()).context("QMP sent something that is not JSON")?;
            // Events may come in between; greetings and answers are what we wait for.
            if value.get("event").is_none() {
                return Ok(value);
            }
        }
    };
    answer(&mut reader)?; // the greeting
    for execute in ["qmp_capabilities", command] {
        writeln!(writer, "{}", serde_json::json!({ "execute": execute }))?;
        let value = answer(&mut reader)?;
        if let Some(error) = value.get("error") {
            bail!("QMP {execute} failed: {error}");
        }
    }
    Ok(())
}
