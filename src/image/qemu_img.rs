//! qemu-img for what it alone does well: creating overlays with a backing file, blank disks,
//! and converting a chain to a standalone file.
//!
//! Every call names the input format (`-f`): qemu never probes. A probed raw image whose first
//! sector looks like a qcow2 header would be opened as qcow2, and its backing file (any host
//! path) read into the result. Our own layers are qcow2; images from outside are imported
//! with the format their source declares, or the one [`detect_format`] reads from their first
//! bytes, and a qcow2 import that names another file is refused ([`check_self_contained`]).

use crate::base::command;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;
use std::process::Command;

fn run(args: &[&str]) -> Result<String> {
    let out = command::checked(Command::new("qemu-img").args(args), "qemu-utils")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A qcow2 overlay at `out` whose backing file is `parent`, named by its absolute path
/// (qcow2-rs, which reads chains for publish, resolves names against the current directory).
pub fn create_overlay(parent: &Path, out: &Path, cluster_size: Option<u32>) -> Result<()> {
    let backing = std::fs::canonicalize(parent)?.to_string_lossy().into_owned();
    let opts = match cluster_size {
        Some(size) => format!("lazy_refcounts=on,cluster_size={size}"),
        None => "lazy_refcounts=on".to_string(),
    };
    run(&["create", "-q", "-f", "qcow2", "-o", &opts, "-F", "qcow2", "-b", &backing, &out.to_string_lossy()])?;
    Ok(())
}

/// Points a qcow2 overlay at another copy of its backing file (`rebase -u`: the data is
/// not touched), named by its absolute path as `create_overlay` names it.
pub fn set_backing(path: &Path, backing: &Path) -> Result<()> {
    let backing = std::fs::canonicalize(backing)?.to_string_lossy().into_owned();
    run(&["rebase", "-q", "-u", "-f", "qcow2", "-F", "qcow2", "-b", &backing, &path.to_string_lossy()])?;
    Ok(())
}

/// A blank qcow2 disk of `size` (qemu-img syntax: 4G, 512M).
pub fn create_blank(out: &Path, size: &str) -> Result<()> {
    run(&["create", "-q", "-f", "qcow2", &out.to_string_lossy(), size])?;
    Ok(())
}

/// Writes the layer `src` (with its whole backing chain) as one standalone image of `format`.
pub fn convert(src: &Path, dst: &Path, format: &str) -> Result<()> {
    convert_from(src, "qcow2", dst, format)
}

/// Writes `src`, read as `src_format`, as one standalone image of `format`.
pub fn convert_from(src: &Path, src_format: &str, dst: &Path, format: &str) -> Result<()> {
    convert_with_options(src, src_format, dst, format, None)
}

/// [`convert_from`] with `-o OPTIONS` for the output format (`subformat=streamOptimized`).
pub fn convert_with_options(
    src: &Path,
    src_format: &str,
    dst: &Path,
    format: &str,
    options: Option<&str>,
) -> Result<()> {
    let (src, dst) = (src.to_string_lossy(), dst.to_string_lossy());
    let mut args = vec!["convert", "-q", "-f", src_format, "-O", format];
    if let Some(options) = options {
        args.extend(["-o", options]);
    }
    args.extend([&*src, &*dst]);
    run(&args)?;
    Ok(())
}

/// A standalone qcow2 with every cluster compressed (what cloud image downloads are).
pub fn convert_compressed_qcow2(src: &Path, src_format: &str, dst: &Path) -> Result<()> {
    run(&["convert", "-q", "-c", "-f", src_format, "-O", "qcow2", &src.to_string_lossy(), &dst.to_string_lossy()])?;
    Ok(())
}

/// Writes the layer `src` (with its chain) as a streamOptimized VMDK: the compressed,
/// sequentially readable variant that OVF packages carry (VirtualBox, VMware).
pub fn convert_to_stream_vmdk(src: &Path, dst: &Path) -> Result<()> {
    convert_with_options(src, "qcow2", dst, "vmdk", Some("subformat=streamOptimized"))
}

/// Grows a layer's virtual size.
pub fn resize(path: &Path, size: &str) -> Result<()> {
    run(&["resize", "-q", "-f", "qcow2", &path.to_string_lossy(), size])?;
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
    /// qcow2's extras; `data.data-file` names an external data file.
    #[serde(rename = "format-specific", default)]
    pub format_specific: Option<serde_json::Value>,
}

/// qemu-img info of one of our own layers (qcow2).
pub fn info(path: &Path) -> Result<ImageInfo> {
    info_as(path, "qcow2")
}

/// qemu-img info of `path` read as `format`.
pub fn info_as(path: &Path, format: &str) -> Result<ImageInfo> {
    let json = run(&["info", "--output=json", "-U", "-f", format, &path.to_string_lossy()])?;
    serde_json::from_str(&json).with_context(|| format!("cannot read qemu-img info for {}", path.display()))
}

/// What an image's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Qcow2,
    Xz,
    Raw,
}

impl Detected {
    /// The qemu-img format name (xz is not one: decompress first).
    pub fn as_str(self) -> &'static str {
        match self {
            Detected::Qcow2 => "qcow2",
            Detected::Xz => "xz",
            Detected::Raw => "raw",
        }
    }
}

/// Reads the magic bytes: qcow2 (`QFI\xfb`), xz, anything else is raw. Unlike qemu's probe
/// this knows only the formats this tool imports.
pub fn detect_format(path: &Path) -> Result<Detected> {
    use std::io::Read;
    let mut magic = [0u8; 6];
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut n = 0;
    while n < magic.len() {
        match f.read(&mut magic[n..])? {
            0 => break,
            got => n += got,
        }
    }
    Ok(if n >= 4 && magic[..4] == *b"QFI\xfb" {
        Detected::Qcow2
    } else if n == 6 && magic == [0xFD, b'7', b'z', b'X', b'Z', 0] {
        Detected::Xz
    } else {
        Detected::Raw
    })
}

/// Refuses a qcow2 image from outside that names another file (a backing file or an
/// external data file): importing it would copy that host file into the layer.
pub fn check_self_contained(path: &Path) -> Result<()> {
    let info = info_as(path, "qcow2")?;
    if let Some(backing) = &info.backing_filename {
        bail!(
            "{} is a qcow2 image with a backing file ({backing}); an imported image must be self-contained \
             (flatten it with `qemu-img convert -O qcow2`, or declare format = \"raw\" if it is a raw disk)",
            path.display()
        );
    }
    let data_file = info.format_specific.as_ref().and_then(|f| f.pointer("/data/data-file")).and_then(|v| v.as_str());
    if let Some(data_file) = data_file {
        bail!(
            "{} is a qcow2 image with an external data file ({data_file}); an imported image must be self-contained",
            path.display()
        );
    }
    Ok(())
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
