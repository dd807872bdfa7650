//! qemu-img for what it alone does well: creating overlays with a backing file, blank disks,
//! and converting a chain to a standalone file.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;
use std::process::Command;

fn run(args: &[&str]) -> Result<String> {
    let out = Command::new("qemu-img").args(args).output().context("cannot run qemu-img (install qemu-utils)")?;
    if !out.status.success() {
        bail!("qemu-img {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A qcow2 overlay at `out` whose backing file is `parent`, named by its absolute path
/// (qcow2-rs, which reads chains for publish, resolves names against the current directory).
pub fn create_overlay(parent: &Path, out: &Path, cluster_size: Option<u32>) -> Result<()> {
    let backing = std::fs::canonicalize(parent)?.to_string_lossy().into_owned();
    let fmt = info(parent)?.format;
    let opts = match cluster_size {
        Some(size) => format!("lazy_refcounts=on,cluster_size={size}"),
        None => "lazy_refcounts=on".to_string(),
    };
    run(&["create", "-q", "-f", "qcow2", "-o", &opts, "-F", &fmt, "-b", &backing, &out.to_string_lossy()])?;
    Ok(())
}

/// A blank qcow2 disk of `size` (qemu-img syntax: 4G, 512M).
pub fn create_blank(out: &Path, size: &str) -> Result<()> {
    run(&["create", "-q", "-f", "qcow2", &out.to_string_lossy(), size])?;
    Ok(())
}

/// Writes `src` (with its whole backing chain) as one standalone image of `format`.
pub fn convert(src: &Path, dst: &Path, format: &str) -> Result<()> {
    run(&["convert", "-q", "-O", format, &src.to_string_lossy(), &dst.to_string_lossy()])?;
    Ok(())
}

/// Grows an image's virtual size.
pub fn resize(path: &Path, size: &str) -> Result<()> {
    run(&["resize", "-q", &path.to_string_lossy(), size])?;
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct ImageInfo {
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    #[serde(rename = "actual-size", default)]
    pub actual_size: u64,
    pub format: String,
    #[serde(rename = "backing-filename", default)]
    pub backing_filename: Option<String>,
}

pub fn info(path: &Path) -> Result<ImageInfo> {
    let json = run(&["info", "--output=json", "-U", &path.to_string_lossy()])?;
    serde_json::from_str(&json).with_context(|| format!("cannot read qemu-img info for {}", path.display()))
}

/// Parses a qemu-style size (4G, 512M, 1T, plain bytes).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'B' => 1,
                _ => return None,
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    // A size too large for 64 bits is not a size, not a wrap-around.
    num.trim().parse::<u64>().ok().and_then(|n| n.checked_mul(mult))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4G"), Some(4 << 30));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("4X"), None);
        assert_eq!(parse_size("many"), None);
        assert_eq!(parse_size("99999999999T"), None);
        assert_eq!(parse_size("16777215T"), Some(16777215 << 40));
    }
}
