//! The seed volume as an ISO 9660 image with Rock Ridge and Joliet, made by xorriso (see
//! docs/seeds.md for why xorriso). The image is written next to `output` under a temporary
//! name and renamed into place, so a failure leaves nothing at `output`.

use super::{Format, Seed};
use crate::bad_input;
use crate::base::log::StageLog;
use anyhow::{Context, Result};
use indicatif::ProgressBar;
use std::path::Path;
use std::process::Command;

/// Writes the seed ISO for `format` to `output`, replacing a file there.
pub fn write_iso(seed: &Seed, format: Format, output: &Path) -> Result<()> {
    write(seed, format, output, None)
}

/// [`write_iso`] for a stage: the xorriso run goes to the stage's log and its progress bar.
pub fn write_iso_logged(seed: &Seed, format: Format, output: &Path, log: &StageLog, bar: &ProgressBar) -> Result<()> {
    write(seed, format, output, Some((log, bar)))
}

fn write(seed: &Seed, format: Format, output: &Path, logged: Option<(&StageLog, &ProgressBar)>) -> Result<()> {
    let name = output.file_name().ok_or_else(|| bad_input!("--output {}: not a file name", output.display()))?;
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(bad_input!("--output {}: the directory {} does not exist", output.display(), parent.display()));
    }
    if output.is_dir() {
        return Err(bad_input!("--output {}: is a directory; name the ISO file to write", output.display()));
    }
    // A sibling of output holds the volume's tree and the image, so that moving the image
    // into place is a rename on one filesystem; dropping it removes both.
    let work = tempfile::Builder::new()
        .prefix(&format!(".{}.seed-", name.to_string_lossy()))
        .tempdir_in(parent)
        .with_context(|| format!("cannot write in {}", parent.display()))?;
    let tree = work.path().join("tree");
    for (rel, data) in seed.files(format) {
        let path = tree.join(&rel);
        std::fs::create_dir_all(path.parent().expect("a file in the tree"))?;
        std::fs::write(&path, data).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let image = work.path().join("seed.iso");
    let mut cmd = Command::new("xorriso");
    cmd.args(["-as", "mkisofs", "-quiet", "-volid", format.volume_id(), "-joliet", "-rock", "-o"])
        .arg(&image)
        .arg(&tree);
    match logged {
        Some((log, bar)) => {
            bar.set_message(format!("writing the {format} seed ISO"));
            log.run_checked(&mut cmd, bar)?;
        }
        None => {
            crate::base::command::checked(&mut cmd, "xorriso")?;
        }
    }
    // A seed may carry secrets (keys, passwords, files): for its owner only, as ssh keys are.
    std::fs::set_permissions(&image, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", image.display()))?;
    std::fs::File::open(&image)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", image.display()))?;
    std::fs::rename(&image, output).with_context(|| format!("cannot move the ISO to {}", output.display()))?;
    // The rename is durable only once the directory holding it is synced.
    std::fs::File::open(parent).and_then(|d| d.sync_all()).ok();
    Ok(())
}
