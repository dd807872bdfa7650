//! Ctrl-C and SIGTERM: the first one makes long loops stop and clean up (qemu killed,
//! temporary files removed) instead of the process dying with work half-written.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn install_handler() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            // A second interrupt: the user insists.
            std::process::exit(130);
        }
        eprintln!("interrupted: stopping and cleaning up (press Ctrl-C again to exit at once)");
    });
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// An error when an interrupt arrived, for loops to return early.
pub fn check() -> anyhow::Result<()> {
    if interrupted() {
        anyhow::bail!("interrupted");
    }
    Ok(())
}
