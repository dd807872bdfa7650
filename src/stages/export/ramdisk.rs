//! `target = "ramdisk"`: the image booted entirely from RAM. The kernel is copied out as
//! `vmlinuz`; the whole root filesystem, modules included, becomes a compressed newc cpio
//! (`rootfs.cpio.zst`), the format the kernel unpacks as its initramfs, so
//! `qemu -kernel vmlinuz -initrd rootfs.cpio.zst` boots it with no disk.
//!
//! The kernel's initramfs is its `rootfs`, which cannot be `pivot_root`ed away from (container
//! runtimes need that) and which `df /` does not report. So the archive carries a small
//! `/init` that mounts a tmpfs, copies the tree into it and `switch_root`s to the image's own
//! init; `switch_root` empties the initramfs behind it, so twice the tree's size is needed
//! only while the copy runs. The appliance streams the tree as a tar (`tar_out`), which the
//! host rewrites as newc on the fly (src/image/initramfs.rs): the fstab's disk entries
//! disabled, `/init` appended, compressed while the appliance writes. The image is not
//! changed.

use super::stream::{self, Compression, Encoder};
use super::{Job, Target};
use crate::base::stream::Progress;
use crate::guest::{Guest, TarOut};
use crate::image::initramfs::NewcWriter;
use crate::pipeline::Pipeline;
use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// `target = "ramdisk"`: the kernel and the whole root filesystem as a compressed cpio
/// initramfs that boots with no disk.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RamdiskKeys {
    /// Of `rootfs.cpio`: `zstd`, `gzip` or `xz` (what the kernel can unpack).
    #[serde(default = "default_ramdisk_compression")]
    pub compression: String,
}

fn default_ramdisk_compression() -> String {
    "zstd".into()
}

/// Reads the target's keys from the export table and checks them.
pub fn build(keys: &toml::Table, pipeline: &Pipeline, at: &str) -> Result<Box<dyn Target>> {
    Ok(Box::new(Ramdisk::new(&super::keys(keys, pipeline, at)?, pipeline, at)?))
}

pub struct Ramdisk {
    keys: RamdiskKeys,
    compression: Compression,
}

/// Started by the kernel from the initramfs. Plain POSIX sh and util-linux/coreutils tools,
/// which every image this boots has. `@TREE_KIB@` is the tree's size (of the archive).
const INIT: &str = r#"#!/bin/sh
# virt-pipeline ramdisk: run the image from a tmpfs instead of the kernel's initramfs
# (rootfs), where pivot_root (container runtimes) and `df /` do not work.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
new=/.ramdisk-root
tree_kib=@TREE_KIB@
fail() {
    echo "virt-pipeline ramdisk: $*" >&2
    echo "virt-pipeline ramdisk: the image unpacks to $((tree_kib / 1024)) MiB and needs about twice that in RAM while it starts" >&2
    exec /bin/sh
}
mount -t proc proc /proc || fail "cannot mount /proc"
mem_kib=0
while read -r name value _; do
    [ "$name" = MemTotal: ] && mem_kib=$value
done < /proc/meminfo
# tmpfs's usual half of the memory, but never less than the tree and some room to write.
size=$((mem_kib / 2))
want=$((tree_kib + tree_kib / 4 + 65536))
[ "$size" -lt "$want" ] && size=$want
mkdir -p "$new" && mount -t tmpfs -o "mode=0755,size=${size}k" ramdisk-root "$new" || fail "cannot mount a tmpfs"
for entry in /* /.[!.]*; do
    case "$entry" in "$new"|/proc|/init) continue ;; esac
    [ -e "$entry" ] || [ -L "$entry" ] || continue
    cp -a "$entry" "$new/" || fail "copying $entry into memory failed"
done
mkdir -p "$new/proc"
umount /proc
exec switch_root "$new" /sbin/init "$@"
"#;

impl Ramdisk {
    pub fn new(config: &RamdiskKeys, pipeline: &Pipeline, at: &str) -> Result<Ramdisk> {
        let compression = match Compression::parse(&config.compression) {
            Some(c @ (Compression::Zstd | Compression::Gzip | Compression::Xz)) => c,
            _ => {
                return Err(crate::bad_input!(
                    "{}: {at}.compression: `{}` is not zstd, gzip or xz (the compressions a kernel unpacks)",
                    pipeline.path.display(),
                    config.compression
                ))
            }
        };
        Ok(Ramdisk { keys: config.clone(), compression })
    }
}

impl Target for Ramdisk {
    fn keys(&self) -> serde_json::Value {
        serde_json::to_value(&self.keys).unwrap_or_default()
    }

    fn export(&self, job: &mut Job) -> Result<()> {
        let (g, os) = job.open_overlay(false)?;
        if !os.is_linux() {
            bail!("a ramdisk needs a Linux guest; this is {}", os.summary());
        }
        let (kernel, version) = kernel(&g)?;
        job.ctx.log.line(format!("kernel {kernel} (modules in /lib/modules/{version})"));
        job.ctx.bar.set_message("copying the kernel");
        g.download(&kernel, &job.out.join("vmlinuz"))?;
        // The archive's own changes are made in the stream, not in the image.
        let mut replace = BTreeMap::new();
        if g.is_file("/etc/fstab")? {
            let (fstab, disabled) = disabled_fstab(&g.read_string("/etc/fstab")?);
            job.ctx.log.line(format!("/etc/fstab: {disabled} entries disabled for the ramdisk"));
            replace.insert("etc/fstab".to_string(), fstab.into_bytes());
        }
        let name = format!("rootfs.cpio{}", self.compression.suffix());
        let encoder = Encoder::create(&job.out.join(&name), self.compression)?;
        job.ctx.bar.set_message("packing the root filesystem");
        let bar = job.ctx.bar.clone();
        let opts = TarOut { numeric_owner: true, xattrs: false, excludes: Vec::new() };
        let (archive, unpacked) = stream::from_guest_with(
            "the root filesystem",
            |pipe| g.tar_out("/", pipe, &opts),
            move |tar| {
                let counting = Progress::new(encoder, 16 << 20, move |n| {
                    bar.set_message(format!("packing the root filesystem: {} MiB", n >> 20))
                });
                let mut cpio = NewcWriter::new(counting);
                cpio.copy_tar(tar, &replace, &["init"])?;
                // The tree's size, for /init's tmpfs; /init comes last, once it is known.
                let tree_kib = cpio.get_ref().done() / 1024;
                cpio.add_file("init", 0o755, INIT.replace("@TREE_KIB@", &tree_kib.to_string()).as_bytes())?;
                let counting = cpio.finish()?;
                let unpacked = counting.done();
                Ok((counting.into_inner().finish()?, unpacked))
            },
        )?;
        drop(g);
        job.ctx.log.line(format!("wrote {name}: {} bytes compressed, {unpacked} bytes of cpio", archive.size));
        job.ctx.ui.line(format!(
            "ramdisk: unpacks to {} MiB; give the VM at least {} MiB of memory",
            unpacked >> 20,
            minimum_memory_mib(unpacked, archive.size)
        ));
        Ok(())
    }
}

/// The memory a guest needs to start the ramdisk, in MiB rounded up to 64: while the
/// kernel unpacks, the compressed archive is held in memory and the unpacked tree may fill
/// only half of the memory that is left (the kernel's rootfs is a tmpfs of the default size);
/// then the tree and its copy sit side by side. Plus room for the kernel and first processes.
pub fn minimum_memory_mib(unpacked_bytes: u64, compressed_bytes: u64) -> u64 {
    let mib = 2 * unpacked_bytes.div_ceil(1 << 20) + compressed_bytes.div_ceil(1 << 20) + 384;
    mib.div_ceil(64) * 64
}

/// The kernel to boot: the one `/vmlinuz` (Debian's link to the default kernel) names, else
/// the newest `/boot/vmlinuz-*`; with its version, whose modules must be in the image.
fn kernel(g: &Guest) -> Result<(String, String)> {
    let mut candidates = g.glob_expand("/boot/vmlinuz-*")?;
    candidates.sort_by(|a, b| version_order(a, b));
    let linked = ["/vmlinuz", "/boot/vmlinuz"].into_iter().find_map(|link| {
        let target = g.is_symlink(link).ok()?.then(|| g.readlink(link).ok())??;
        let name = target.rsplit('/').next()?.to_string();
        candidates.iter().find(|c| c.ends_with(&format!("/{name}"))).cloned()
    });
    let Some(kernel) = linked.or_else(|| candidates.last().cloned()) else {
        bail!("the image has no kernel (/boot/vmlinuz-*): install one (e.g. linux-image-amd64) before the export");
    };
    let version = kernel.trim_start_matches("/boot/vmlinuz-").to_string();
    let modules = [format!("/lib/modules/{version}"), format!("/usr/lib/modules/{version}")];
    if !modules.iter().any(|m| g.is_dir(m).unwrap_or(false)) {
        bail!("{kernel} has no modules in /lib/modules/{version}: without them the ramdisk has no drivers");
    }
    Ok((kernel, version))
}

/// Orders kernel file names by their version, numbers as numbers (`6.1.0-10` after `6.1.0-9`).
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<(u64, String)> {
        s.split(|c: char| !c.is_ascii_alphanumeric())
            .map(|p| (p.parse::<u64>().unwrap_or(0), if p.parse::<u64>().is_ok() { String::new() } else { p.into() }))
            .collect()
    }
    parts(a).cmp(&parts(b))
}

/// A RAM root has no disk to mount: every fstab entry is commented out (kept, so the change
/// is visible), and the file says why. Returns the text and how many entries were disabled.
fn disabled_fstab(text: &str) -> (String, usize) {
    let mut out =
        String::from("# The root filesystem is in RAM (virt-pipeline ramdisk export): the disk entries are off.\n");
    let mut disabled = 0;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            out.push_str(line);
        } else {
            out.push_str("#ramdisk# ");
            out.push_str(line);
            disabled += 1;
        }
        out.push('\n');
    }
    (out, disabled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_entries_are_commented_out() {
        let (text, n) =
            disabled_fstab("# <file system>\nUUID=1 / ext4 errors=remount-ro 0 1\n\n/dev/vdb none swap sw 0 0\n");
        assert_eq!(n, 2);
        assert!(text.contains("#ramdisk# UUID=1 / ext4"), "{text}");
        assert!(text.contains("\n# <file system>\n"), "{text}");
        assert!(text.lines().all(|l| l.is_empty() || l.starts_with('#')), "{text}");
    }

    #[test]
    fn memory_covers_the_archive_and_two_copies_of_the_tree() {
        // 691 MiB unpacked from 216 MiB: 1382 + 216 + 384 = 1982, rounded up to 1984.
        assert_eq!(minimum_memory_mib(691 << 20, 216 << 20), 1984);
    }

    #[test]
    fn kernels_sort_by_version() {
        let mut k =
            vec!["/boot/vmlinuz-6.1.0-10-amd64", "/boot/vmlinuz-6.1.0-9-amd64", "/boot/vmlinuz-5.10.0-28-amd64"];
        k.sort_by(|a, b| version_order(a, b));
        assert_eq!(k, ["/boot/vmlinuz-5.10.0-28-amd64", "/boot/vmlinuz-6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-10-amd64"]);
    }

    #[test]
    fn init_is_posix_sh() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("init");
        std::fs::write(&path, INIT.replace("@TREE_KIB@", "1000")).unwrap();
        let out = std::process::Command::new("sh").arg("-n").arg(&path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}
