//! A layer booted on a throwaway overlay with root SSH: the check stage judges the image
//! this way, and `pipeline boot --ssh` opens a shell in it. The layer itself is never
//! written, and nothing of the boot is kept: the overlay, the key and the VM go when the
//! [`ThrowawayBoot`] is dropped.
//!
//! The way in is a fresh key as the systemd credential `ssh.authorized_keys.root`
//! ([`access::credential`]); where sshd refuses it (root already has keys, an older systemd)
//! the VM is stopped, the key authorised in a fresh overlay by the appliance, and booted
//! again. Nobody keeps that overlay, so nothing needs taking out afterwards.

use super::{access, Drive, Guest};
use crate::base::log::StageLog;
use crate::image::qemu_img;
use crate::vm::runner::{BootOptions, Runner};
use crate::vm::ssh::{AccessKey, Session};
use anyhow::{Context, Result};
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A booted throwaway copy and root's session in it. Field order is drop order: the VM
/// stops before its disk and key are removed.
pub struct ThrowawayBoot {
    pub runner: Runner,
    pub session: Session,
    pub key: AccessKey,
    _scratch: tempfile::TempDir,
}

/// How long the boot may take.
pub struct Limits {
    /// From power-on to root's SSH session.
    pub ssh: Duration,
    /// When the VM is killed whatever it is doing (the check stage's whole time limit).
    pub deadline: Option<Instant>,
}

/// Boots a throwaway overlay of `layer` and logs in as root (see the module's comment).
/// `verbose` is the appliance's, for the fallback.
pub fn boot(
    layer: &Path,
    options: &BootOptions,
    limits: &Limits,
    verbose: bool,
    log: &StageLog,
    bar: &ProgressBar,
) -> Result<ThrowawayBoot> {
    let scratch = crate::base::scratch::dir(&options.work_dir, "boot")?;
    let disk = scratch.path().join("boot.qcow2");
    qemu_img::create_overlay(layer, &disk, None)?;
    let key = AccessKey::generate()?;
    let runner = Runner::boot_with_credentials(options, &[access::credential(key.public_line())], &disk, log, bar)?;
    if let Some(deadline) = limits.deadline {
        runner.set_deadline(deadline);
    }
    let (runner, session) = match runner.wait_for_ssh_unless_refused(&key, limits.ssh) {
        Ok(Ok(session)) => (runner, session),
        Ok(Err(refusal)) => {
            log.line(format!(
                "sshd refused the credential key ({}); authorising it in the throwaway copy",
                refusal.root_cause()
            ));
            runner.kill();
            drop(runner);
            fresh_overlay(layer, &disk)?;
            authorise_in_copy(&disk, &key, options, verbose, log, bar)?;
            let runner = Runner::boot(options, &disk, log, bar)?;
            if let Some(deadline) = limits.deadline {
                runner.set_deadline(deadline);
            }
            let session = runner.wait_for_ssh(&key, limits.ssh).map_err(did_not_boot)?;
            (runner, session)
        }
        Err(e) => return Err(did_not_boot(e)),
    };
    Ok(ThrowawayBoot { runner, session, key, _scratch: scratch })
}

fn fresh_overlay(layer: &Path, disk: &PathBuf) -> Result<()> {
    std::fs::remove_file(disk).with_context(|| format!("cannot remove {}", disk.display()))?;
    qemu_img::create_overlay(layer, disk, None)
}

/// The fallback way in: the key authorised in the throwaway copy by the appliance.
fn authorise_in_copy(
    disk: &Path,
    key: &AccessKey,
    options: &BootOptions,
    verbose: bool,
    log: &StageLog,
    bar: &ProgressBar,
) -> Result<()> {
    bar.set_message("authorising the SSH key (appliance)");
    let g = Guest::new(options.accel, Some(log.clone()), verbose)?;
    g.add_drive(Drive { path: disk, format: "qcow2", readonly: false, discard: false })?;
    g.launch()?;
    g.inspect_and_mount(false)?;
    access::authorise_root(&g, key.public_line())?;
    g.umount_all()?;
    g.shutdown()?;
    Ok(())
}

fn did_not_boot(e: anyhow::Error) -> anyhow::Error {
    e.context("the image did not boot to a system that answers SSH")
}
