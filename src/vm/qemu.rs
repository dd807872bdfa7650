//! Running a VM with qemu-system-x86_64: the accelerator, virtio disk and user-mode
//! network, the serial console captured to a file, and the process killed on every way out
//! (drop included), so a failed or interrupted stage never leaves a qemu behind.

use super::Accel;
use crate::base::log::StageLog;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub accel: Accel,
    pub memory: String,
    pub cpus: u32,
    /// (path, format) attached as virtio disks, in order.
    pub disks: Vec<(PathBuf, String)>,
    /// (path, serial): raw virtio disks after those, found in the guest by their serial
    /// (`/sys/block/*/serial`).
    pub raw_disks: Vec<(PathBuf, String)>,
    pub cdrom: Option<PathBuf>,
    /// Direct kernel boot: kernel, initrd and command line.
    pub kernel: Option<(PathBuf, PathBuf, String)>,
    /// Exit instead of rebooting (an installer's last reboot ends the run).
    pub no_reboot: bool,
    pub network: bool,
    /// TCP ports forwarded from 127.0.0.1 on the host to the guest: (host, guest).
    pub forwards: Vec<(u16, u16)>,
    /// A QMP control socket (for an ACPI power-button press).
    pub qmp: Option<PathBuf>,
    /// A virtio RNG fed from the host: a guest short of entropy at boot (TCG, no RDRAND)
    /// would otherwise hold up sshd.
    pub rng: bool,
    /// systemd credentials (name, value) passed as SMBIOS type 11 strings: systemd >= 252
    /// imports them at boot (e.g. `ssh.authorized_keys.root`, which its tmpfiles.d turns
    /// into root's authorized_keys when root has none).
    pub credentials: Vec<(String, Vec<u8>)>,
    /// The serial console (and qemu's monitor, behind Ctrl-A C) on this process's terminal,
    /// a copy written to the console file: `pipeline boot`. Ctrl-A X quits qemu.
    pub terminal: bool,
}

impl VmConfig {
    pub fn new(accel: Accel) -> VmConfig {
        VmConfig {
            accel,
            memory: "1024M".into(),
            cpus: 2,
            disks: Vec::new(),
            raw_disks: Vec::new(),
            cdrom: None,
            kernel: None,
            no_reboot: false,
            network: true,
            forwards: Vec::new(),
            qmp: None,
            rng: false,
            credentials: Vec::new(),
            terminal: false,
        }
    }

    fn command(&self, console: &Path) -> Command {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-machine", &format!("accel={}", self.accel.qemu_name())]);
        if self.accel == Accel::Kvm {
            cmd.args(["-cpu", "host"]);
        }
        cmd.args([
            "-m",
            &self.memory,
            "-smp",
            &self.cpus.to_string(),
            "-display",
            "none",
            "-no-user-config",
            "-nodefaults",
        ]);
        if self.terminal {
            // signal=off: Ctrl-C goes to the guest; mux: Ctrl-A X quits, Ctrl-A C the monitor.
            cmd.arg("-chardev").arg(format!("stdio,id=console,mux=on,signal=off,logfile={}", console.display()));
            cmd.args(["-serial", "chardev:console", "-mon", "chardev=console,mode=readline"]);
        } else {
            cmd.arg("-serial").arg(format!("file:{}", console.display()));
        }
        for (i, (path, format)) in self.disks.iter().enumerate() {
            if self.raw_disks.is_empty() {
                cmd.arg("-drive")
                    .arg(format!("file={},format={format},if=virtio,index={i},discard=unmap", path.display()));
            } else {
                // With raw disks beside them the firmware must be told which to boot: SeaBIOS
                // tries the blank raw disk first and never reaches the layer.
                cmd.arg("-drive")
                    .arg(format!("file={},format={format},if=none,id=disk{i},discard=unmap", path.display()));
                cmd.arg("-device").arg(format!("virtio-blk-pci,drive=disk{i},bootindex={i}"));
            }
        }
        // A serial is a property of the device (qemu 10 refuses it on -drive).
        for (i, (path, serial)) in self.raw_disks.iter().enumerate() {
            cmd.arg("-drive").arg(format!("file={},format=raw,if=none,id=raw{i}", path.display()));
            cmd.arg("-device").arg(format!("virtio-blk-pci,drive=raw{i},serial={serial}"));
        }
        if let Some(iso) = &self.cdrom {
            cmd.arg("-drive").arg(format!("file={},media=cdrom,readonly=on,if=ide", iso.display()));
        }
        if let Some((kernel, initrd, append)) = &self.kernel {
            cmd.arg("-kernel").arg(kernel).arg("-initrd").arg(initrd).arg("-append").arg(append);
        }
        if self.network {
            let forwards: String =
                self.forwards.iter().map(|(host, guest)| format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}")).collect();
            cmd.arg("-netdev").arg(format!("user,id=net0{forwards}"));
            cmd.args(["-device", "virtio-net-pci,netdev=net0"]);
        }
        if let Some(socket) = &self.qmp {
            cmd.arg("-qmp").arg(format!("unix:{},server=on,wait=off", socket.display()));
        }
        if self.rng {
            cmd.args(["-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0"]);
        }
        for (name, value) in &self.credentials {
            cmd.arg("-smbios").arg(smbios_credential(name, value));
        }
        if self.no_reboot {
            cmd.arg("-no-reboot");
        }
        cmd
    }
}

/// `-smbios` for one systemd credential: base64 (no commas, which qemu's option syntax would
/// need doubled) under the `io.systemd.credential.binary:` prefix.
fn smbios_credential(name: &str, value: &[u8]) -> String {
    use base64::Engine;
    let value = base64::engine::general_purpose::STANDARD.encode(value);
    format!("type=11,value=io.systemd.credential.binary:{name}={value}")
}

pub struct Vm {
    child: Child,
    console: PathBuf,
    /// qemu's stderr, drained as it comes (a full pipe would stall qemu); the last lines are
    /// kept for error messages.
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    pub started: Instant,
}

/// How many lines of qemu's stderr are kept for error messages.
const STDERR_LINES: usize = 50;

impl Vm {
    pub fn start(config: &VmConfig, console: &Path) -> Result<Vm> {
        Vm::start_logged(config, console, None)
    }

    /// Starts qemu; its stderr goes to `log` line by line. qemu dies with this process, even
    /// when it is SIGKILLed (a parent-death signal).
    pub fn start_logged(config: &VmConfig, console: &Path, log: Option<StageLog>) -> Result<Vm> {
        std::fs::write(console, b"")?;
        let mut cmd = config.command(console);
        if let Some(log) = &log {
            log.line(format!("$ {}", crate::base::secrets::describe_command(&cmd)));
        }
        crate::base::interrupt::dies_with_parent(&mut cmd);
        let (stdin, stdout) = match config.terminal {
            true => (Stdio::inherit(), Stdio::inherit()),
            false => (Stdio::null(), Stdio::null()),
        };
        let mut child = cmd
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start qemu-system-x86_64 (install qemu-system-x86)")?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stream = child.stderr.take().context("qemu's stderr")?;
        let kept = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n').map_while(|l| l.ok()) {
                let line = String::from_utf8_lossy(&line).trim_end().to_string();
                if let Some(log) = &log {
                    log.line(format!("qemu: {line}"));
                }
                if let Ok(mut k) = kept.lock() {
                    k.push(line);
                    if k.len() > STDERR_LINES {
                        k.remove(0);
                    }
                }
            }
        });
        Ok(Vm {
            child,
            console: console.to_path_buf(),
            stderr,
            stderr_reader: Some(stderr_reader),
            started: Instant::now(),
        })
    }

    /// Everything the guest printed on its serial console so far.
    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// The exit status once qemu has exited.
    pub fn try_exit(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// The last lines of qemu's own error output (all of it, once qemu has exited).
    pub fn stderr(&mut self) -> String {
        if self.try_exit().ok().flatten().is_some() {
            if let Some(reader) = self.stderr_reader.take() {
                let _ = reader.join();
            }
        }
        self.stderr.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Waits until the console shows `needle`, qemu exits, or `timeout` passes.
    pub fn wait_for_console(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        loop {
            let text = self.console_text();
            if text.contains(needle) {
                return Ok(text);
            }
            if let Some(status) = self.try_exit()? {
                bail!(
                    "qemu exited ({status}) before the console showed `{needle}`: {}; last lines:\n{}",
                    self.stderr().trim(),
                    tail(&self.console_text(), 15)
                );
            }
            if self.started.elapsed() > timeout {
                bail!(
                    "the console did not show `{needle}` within {}s; last lines:\n{}",
                    timeout.as_secs(),
                    tail(&text, 15)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_become_smbios_type_11_strings() {
        let mut config = VmConfig::new(Accel::Tcg);
        config.credentials.push(("ssh.authorized_keys.root".into(), b"ssh-ed25519 AAAA x,y\n".to_vec()));
        let cmd = config.command(Path::new("/tmp/console"));
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let i = args.iter().position(|a| a == "-smbios").expect("an -smbios option");
        assert_eq!(
            args[i + 1],
            "type=11,value=io.systemd.credential.binary:ssh.authorized_keys.root=c3NoLWVkMjU1MTkgQUFBQSB4LHkK"
        );
    }

    /// The serial goes on the device: the qemu this runs on (10.0) refuses it on -drive; and
    /// the layer is the boot disk (SeaBIOS would try the blank raw disk first). qemu itself
    /// checks the command line, paused before the guest starts.
    #[test]
    fn a_raw_disk_gets_its_serial_on_the_device_and_qemu_takes_it() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("record.raw");
        std::fs::File::create(&raw).unwrap().set_len(1 << 20).unwrap();
        let layer = dir.path().join("layer.qcow2");
        let made = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&layer)
            .arg("16M")
            .status()
            .unwrap();
        assert!(made.success());
        let mut config = VmConfig::new(Accel::Tcg);
        config.network = false;
        config.disks.push((layer.clone(), "qcow2".into()));
        config.raw_disks.push((raw.clone(), "vp-firstboot".into()));
        let mut cmd = config.command(&dir.path().join("console"));
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(args.contains(&format!("file={},format=raw,if=none,id=raw0", raw.display())));
        assert!(args.contains(&"virtio-blk-pci,drive=raw0,serial=vp-firstboot".to_string()));
        assert!(args.contains(&"virtio-blk-pci,drive=disk0,bootindex=0".to_string()));
        // -S: paused before the first instruction; a command line qemu refuses ends at once.
        let mut child = cmd.arg("-S").stderr(std::process::Stdio::piped()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_secs(2));
        let early = child.try_wait().unwrap();
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        assert!(early.is_none(), "qemu refused the command line: {}", String::from_utf8_lossy(&out.stderr));
    }
}
