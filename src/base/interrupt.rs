//! SIGINT and SIGTERM stop a run within seconds and leave nothing behind: the signal thread
//! records the signal and stops every process the run started (qemu, the libguestfs
//! appliance, debootstrap, qemu-img), which makes the blocked call return an error; the
//! stage's usual error path then removes its temporary layer and scratch files, and `main`
//! exits with 128 + the signal (130, 143). A second signal stops processes again but never
//! skips that cleanup. qemu VMs also get a parent-death signal, so even a SIGKILLed run
//! leaves no VM running (the appliance has libguestfs's own recovery process for that).

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// How long processes get to exit on SIGTERM before they are killed.
const GRACE: Duration = Duration::from_secs(3);

pub fn install_handler() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let first = SIGNAL.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst).is_ok();
            if first {
                eprintln!("{}: stopping the run and cleaning up", name(sig));
            } else {
                eprintln!("{}: already stopping; cleaning up first", name(sig));
            }
            stop_descendants();
        }
    });
}

fn name(sig: i32) -> &'static str {
    if sig == signal_hook::consts::SIGTERM {
        "SIGTERM"
    } else {
        "interrupted (SIGINT)"
    }
}

pub fn interrupted() -> bool {
    SIGNAL.load(Ordering::SeqCst) != 0
}

/// The signal that stopped the run, by name.
pub fn stopped_by() -> Option<&'static str> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        sig if sig == signal_hook::consts::SIGTERM => Some("SIGTERM"),
        _ => Some("SIGINT"),
    }
}

/// The exit code for a run stopped by a signal: 128 + the signal number.
pub fn exit_code() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(128 + sig),
    }
}

/// An error when a signal arrived, for loops to return early.
pub fn check() -> anyhow::Result<()> {
    if interrupted() {
        anyhow::bail!("interrupted");
    }
    Ok(())
}

/// Makes a command's process die with this one (a parent-death signal), so that not even a
/// SIGKILLed run leaves a VM or a debootstrap behind. The one unsafe call outside the
/// libguestfs wrapper: std offers no safe way to run code between fork and exec.
pub fn dies_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure makes only async-signal-safe calls (prctl, getppid), allocates
    // nothing and touches no memory of the parent's.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Some(Signal::SIGKILL)).map_err(std::io::Error::from)?;
            // The parent may have died before prctl: then nobody would send the signal.
            if nix::unistd::getppid() == Pid::from_raw(1) {
                return Err(std::io::Error::other("the parent process exited"));
            }
            Ok(())
        })
    };
}

/// SIGTERM to every process below this one, then SIGKILL to those still there after
/// [`GRACE`].
fn stop_descendants() {
    let pids = descendants(std::process::id());
    for &pid in &pids {
        send(pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline && pids.iter().any(|&p| alive(p)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in descendants(std::process::id()) {
        send(pid, Signal::SIGKILL);
    }
}

fn send(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
    }
}

fn alive(pid: u32) -> bool {
    // A zombie has exited; only its parent's wait is missing.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| parse_stat(&s).is_some_and(|(st, _)| st != 'Z'))
}

/// (state, parent pid) from /proc/PID/stat; the command name may contain spaces and ')'.
fn parse_stat(stat: &str) -> Option<(char, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Every live process whose chain of parents leads to `root`.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            if let Some((state, ppid)) =
                std::fs::read_to_string(entry.path().join("stat")).ok().as_deref().and_then(parse_stat)
            {
                if state != 'Z' {
                    parent_of.push((pid, ppid));
                }
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        assert_eq!(parse_stat("42 (qemu) x) S 7 42 42 0"), Some(('S', 7)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn children_and_grandchildren_are_found() {
        let mut child = std::process::Command::new("sh").args(["-c", "sleep 30 & wait"]).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut found = Vec::new();
        while Instant::now() < deadline && found.len() < 2 {
            found = descendants(std::process::id());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(found.contains(&child.id()), "{found:?}");
        assert!(found.len() >= 2, "the shell's sleep is found too: {found:?}");
        let _ = child.kill();
        let _ = child.wait();
        for p in found {
            send(p, Signal::SIGKILL);
        }
    }
}
