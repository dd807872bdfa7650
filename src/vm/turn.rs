//! Taking turns at qemu. With `PIPELINE_QEMU_LOCK=FILE` set, every VM and libguestfs
//! appliance this process starts holds an exclusive lock on FILE while it runs, so runs that
//! share a machine (a nightly rebuild beside a run by hand, tests run side by side) never
//! emulate two guests at once: under TCG two guests on two cores only slow each other, while
//! the work around them (compression, downloads, packing) can go on in parallel. Unset, no
//! lock is taken.
//!
//! The lock is taken before qemu starts, so a guest's own time limits start when it runs, not
//! while it waits. Within one process the turn is shared: an appliance open while the same
//! process boots a VM does not wait for itself. A run waits at most
//! `PIPELINE_QEMU_LOCK_WAIT` (a duration, default 1h) and then fails naming the lock file.

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

const LOCK_VARIABLE: &str = "PIPELINE_QEMU_LOCK";
const WAIT_VARIABLE: &str = "PIPELINE_QEMU_LOCK_WAIT";
const DEFAULT_WAIT: Duration = Duration::from_secs(3600);

/// This process's turn at qemu, held until dropped (with the VM or appliance it is for).
pub struct QemuTurn {
    _lock: Option<Arc<Flock<File>>>,
}

/// The lock this process holds, shared by every guest it runs at once.
static HELD: Mutex<Weak<Flock<File>>> = Mutex::new(Weak::new());

/// Waits for this process's turn at qemu (at once when `PIPELINE_QEMU_LOCK` is unset).
pub fn take() -> Result<QemuTurn> {
    let Some(path) = std::env::var_os(LOCK_VARIABLE).filter(|p| !p.is_empty()) else {
        return Ok(QemuTurn { _lock: None });
    };
    let limit = match std::env::var(WAIT_VARIABLE) {
        Ok(text) => humantime::parse_duration(&text)
            .map_err(|e| crate::bad_input!("{WAIT_VARIABLE}={text:?} is not a duration ({e}); give e.g. 30m"))?,
        Err(_) => DEFAULT_WAIT,
    };
    let mut held = HELD.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(lock) = held.upgrade() {
        return Ok(QemuTurn { _lock: Some(lock) });
    }
    let path = std::path::PathBuf::from(path);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open the qemu lock {} ({LOCK_VARIABLE})", path.display()))?;
    let started = Instant::now();
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                let lock = Arc::new(lock);
                *held = Arc::downgrade(&lock);
                return Ok(QemuTurn { _lock: Some(lock) });
            }
            Err((unlocked, nix::errno::Errno::EWOULDBLOCK)) => file = unlocked,
            Err((_, e)) => bail!("cannot lock {} ({LOCK_VARIABLE}): {e}", path.display()),
        }
        crate::interrupt::check()?;
        if started.elapsed() > limit {
            bail!(
                "waited {} for the qemu lock {} ({LOCK_VARIABLE}): another run's VM or appliance holds it; \
                 raise {WAIT_VARIABLE} or unset {LOCK_VARIABLE}",
                humantime::format_duration(limit),
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
