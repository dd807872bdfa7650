//! Running a VM with qemu-system-x86_64: the accelerator, virtio disk and user-mode
//! network, the serial console captured to a file, and the process killed on every way out
//! (drop included), so a failed or interrupted stage never leaves a qemu behind.

use super::Accel;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub accel: Accel,
    pub memory: String,
    pub cpus: u32,
    /// (path, format) attached as virtio disks, in order.
    pub disks: Vec<(PathBuf, String)>,
    pub cdrom: Option<PathBuf>,
    /// Direct kernel boot: kernel, initrd and command line.
    pub kernel: Option<(PathBuf, PathBuf, String)>,
    /// Exit instead of rebooting (an installer's last reboot ends the run).
    pub no_reboot: bool,
    pub network: bool,
    /// TCP ports forwarded from 127.0.0.1 on the host to the guest: (host, guest).
    pub forwards: Vec<(u16, u16)>,
}

impl VmConfig {
    pub fn new(accel: Accel) -> VmConfig {
        VmConfig {
            accel,
            memory: "1024M".into(),
            cpus: 2,
            disks: Vec::new(),
            cdrom: None,
            kernel: None,
            no_reboot: false,
            network: true,
            forwards: Vec::new(),
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
        cmd.arg("-serial").arg(format!("file:{}", console.display()));
        for (i, (path, format)) in self.disks.iter().enumerate() {
            cmd.arg("-drive").arg(format!("file={},format={format},if=virtio,index={i},discard=unmap", path.display()));
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
        if self.no_reboot {
            cmd.arg("-no-reboot");
        }
        cmd
    }
}

pub struct Vm {
    child: Child,
    console: PathBuf,
    pub started: Instant,
}

impl Vm {
    pub fn start(config: &VmConfig, console: &Path) -> Result<Vm> {
        std::fs::write(console, b"")?;
        let mut cmd = config.command(console);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start qemu-system-x86_64 (install qemu-system-x86)")?;
        Ok(Vm { child, console: console.to_path_buf(), started: Instant::now() })
    }

    /// Everything the guest printed on its serial console so far.
    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// The exit status once qemu has exited.
    pub fn try_exit(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// qemu's own error output (after it exited).
    pub fn stderr(&mut self) -> String {
        use std::io::Read;
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    /// Waits until the console shows `needle`, qemu exits, or `timeout` passes.
    pub fn wait_for_console(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        loop {
            let text = self.console_text();
            if text.contains(needle) {
                return Ok(text);
            }
            if let Some(status) = self.try_exit()? {
                bail!("qemu exited ({status}) before the console showed `{needle}`: {}", self.stderr().trim());
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
