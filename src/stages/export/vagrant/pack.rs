//! A box file: a gzip tar of its members, with progress.

use crate::base::stream::Progress;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One file of a box: bytes made here, or a file on disk.
pub(super) enum Member {
    Bytes(&'static str, Vec<u8>),
    File(&'static str, PathBuf),
}

/// A gzip tar of `members` at `path`, synced; entries owned by root, mode 0644, `mtime`.
pub(super) fn write_box(
    path: &Path,
    members: &[Member],
    level: flate2::Compression,
    mtime: u64,
    label: &str,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let gz = flate2::write::GzEncoder::new(std::io::BufWriter::with_capacity(1 << 20, file), level);
    let mut tar = tar::Builder::new(gz);
    let header = |size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        h
    };
    for member in members {
        match member {
            Member::Bytes(name, bytes) => tar.append_data(&mut header(bytes.len() as u64), name, bytes.as_slice())?,
            Member::File(name, file) => {
                let f = std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
                let total = f.metadata()?.len();
                // Progress shown, and a signal ends the read.
                let reader = Progress::new(f, 64 << 20, |done| {
                    bar.set_message(format!("packing the {label} box: {}/{} MiB", done >> 20, total >> 20))
                });
                tar.append_data(&mut header(total), name, reader)
                    .with_context(|| format!("cannot pack {name} into {}", path.display()))?;
            }
        }
    }
    let gz = tar.into_inner().with_context(|| format!("cannot write {}", path.display()))?;
    let mut writer = gz.finish().with_context(|| format!("cannot write {}", path.display()))?;
    writer.flush()?;
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    file.sync_all().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
