//! Reading guest data straight from a disk image: a qcow2 file with its whole backing chain
//! (qcow2-rs, compressed clusters included) or a raw file, without writing a flat copy.

use anyhow::{bail, Context, Result};
use qcow2_rs::dev::{Qcow2Dev, Qcow2DevParams};
use qcow2_rs::sync_io::Qcow2IoSync;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Random-access reads of a disk's guest-visible bytes.
pub trait DiskRead {
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; reads past the end are zeros.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// False when the range is known to read as zeros (unallocated or zero clusters, holes),
    /// so it need not be read at all.
    fn may_hold_data(&self, _offset: u64, _len: u64) -> bool {
        true
    }
}

/// The ranges of an image (with its backing chain) that hold data, sorted: `qemu-img map`
/// knows qcow2 allocation and zero clusters, and a raw file's holes (SEEK_DATA).
#[derive(Debug, Default)]
pub struct DataMap {
    extents: Vec<(u64, u64)>,
}

impl DataMap {
    /// The map of `path` read as `format`: a qcow2 file read as `raw` is mapped by file
    /// offsets (its holes), read as `qcow2` by guest offsets.
    pub fn of(path: &Path, format: &str) -> Result<DataMap> {
        #[derive(serde::Deserialize)]
        struct Extent {
            start: u64,
            length: u64,
            data: bool,
            zero: bool,
        }
        let out = crate::base::command::checked(
            std::process::Command::new("qemu-img").args(["map", "--output=json", "-U", "-f", format]).arg(path),
            "qemu-utils",
        )?;
        let map: Vec<Extent> = serde_json::from_slice(&out.stdout).context("cannot read qemu-img map's output")?;
        Ok(DataMap {
            extents: map.into_iter().filter(|e| e.data && !e.zero).map(|e| (e.start, e.start + e.length)).collect(),
        })
    }

    pub fn overlaps(&self, offset: u64, len: u64) -> bool {
        let end = offset + len;
        // The first extent ending after `offset` decides.
        let i = self.extents.partition_point(|&(_, e)| e <= offset);
        self.extents.get(i).is_some_and(|&(s, _)| s < end)
    }
}

pub struct RawDisk {
    file: std::fs::File,
    size: u64,
    map: DataMap,
}

impl RawDisk {
    pub fn open(path: &Path) -> Result<RawDisk> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let size = file.metadata()?.len();
        Ok(RawDisk { file, size, map: DataMap::of(path, "raw")? })
    }
}

impl DiskRead for RawDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn may_hold_data(&self, offset: u64, len: u64) -> bool {
        self.map.overlaps(offset, len)
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = self.file.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                buf[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }
}

pub struct Qcow2Chain {
    dev: Qcow2Dev<Qcow2IoSync>,
    size: u64,
    map: DataMap,
}

impl Qcow2Chain {
    pub fn open(path: &Path) -> Result<Qcow2Chain> {
        // qcow2-rs panics on a missing file and resolves backing names against the current
        // directory; check the chain with qemu-img first so a bad chain is an error instead.
        let mut cur = path.to_path_buf();
        loop {
            let info = super::qemu_img::info(&cur)?;
            if info.format != "qcow2" {
                bail!("{} is {}, not qcow2", cur.display(), info.format);
            }
            match info.backing_filename {
                Some(b) if Path::new(&b).is_absolute() => cur = b.into(),
                Some(b) => {
                    bail!("{} names its backing file relatively ({b}); layers use absolute names", cur.display())
                }
                None => break,
            }
        }
        let params = Qcow2DevParams::new(9, None, None, true, false);
        let dev = qcow2_rs::utils::qcow2_setup_dev_sync(path, &params)
            .map_err(|e| anyhow::anyhow!("cannot open qcow2 chain {}: {e:?}", path.display()))?;
        // Loads the mapping tables of every image in the chain; without it, reads return zeros.
        futures::executor::block_on(dev.qcow2_prep_io())
            .map_err(|e| anyhow::anyhow!("cannot read qcow2 chain {}: {e:?}", path.display()))?;
        let size = dev.info.virtual_size();
        Ok(Qcow2Chain { dev, size, map: DataMap::of(path, "qcow2")? })
    }
}

impl DiskRead for Qcow2Chain {
    fn size(&self) -> u64 {
        self.size
    }

    fn may_hold_data(&self, offset: u64, len: u64) -> bool {
        self.map.overlaps(offset, len)
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        let len = buf.len().min(self.size.saturating_sub(offset) as usize);
        buf[len..].fill(0);
        if len == 0 {
            return Ok(());
        }
        // qcow2-rs reads whole 512-byte sectors; widen unaligned requests.
        const SECTOR: u64 = 512;
        let start = offset / SECTOR * SECTOR;
        let end = (offset + len as u64).div_ceil(SECTOR) * SECTOR;
        let read = |dev: &Qcow2Dev<Qcow2IoSync>, b: &mut [u8], at: u64| {
            futures::executor::block_on(dev.read_at(b, at)).map_err(|e| anyhow::anyhow!("qcow2 read at {at}: {e:?}"))
        };
        if start == offset && end == offset + len as u64 {
            read(&self.dev, &mut buf[..len], offset)?;
        } else {
            let mut wide = vec![0u8; (end - start) as usize];
            read(&self.dev, &mut wide, start)?;
            let skip = (offset - start) as usize;
            buf[..len].copy_from_slice(&wide[skip..skip + len]);
        }
        Ok(())
    }
}

/// Whether the disk's first sectors hold what an operating system needs: a partition table
/// (MBR or GPT), or a filesystem or volume signature on the whole disk (ext2/3/4, XFS,
/// btrfs, LVM, ISO 9660). A disk with none of them — blank, or raw data — holds no
/// operating system, and inspecting it would only cost an appliance launch.
pub fn has_disk_label(disk: &mut dyn DiskRead) -> Result<bool> {
    let mut head = vec![0u8; 0x11000];
    disk.read_at(&mut head, 0)?;
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    Ok(at(510, &[0x55, 0xAA])
        || at(512, b"EFI PART")
        || at(0x438, &[0x53, 0xEF])
        || at(0, b"XFSB")
        || at(0x10040, b"_BHRfS_M")
        || (0..4).any(|sector| at(sector * 512, b"LABELONE"))
        || at(0x8001, b"CD001"))
}

/// Opens a disk image by its format on disk (its first bytes, never qemu's probe).
pub fn open(path: &Path) -> Result<Box<dyn DiskRead>> {
    use super::qemu_img::Detected;
    Ok(match super::qemu_img::detect_format(path)? {
        Detected::Qcow2 => Box::new(Qcow2Chain::open(path)?),
        Detected::Raw => Box::new(RawDisk::open(path)?),
        Detected::Xz => bail!("{}: cannot read xz-compressed images directly", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn blank_and_data_disks_have_no_label_and_partitioned_ones_do() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let mut data = vec![0u8; 1 << 20];
        data[4096..8192].fill(0x33);
        std::fs::write(&raw, &data).unwrap();
        assert!(!has_disk_label(&mut RawDisk::open(&raw).unwrap()).unwrap());
        data[510] = 0x55;
        data[511] = 0xAA;
        std::fs::write(&raw, &data).unwrap();
        assert!(has_disk_label(&mut RawDisk::open(&raw).unwrap()).unwrap(), "an MBR");
        data[510..512].fill(0);
        data[0x438..0x43a].copy_from_slice(&[0x53, 0xEF]);
        std::fs::write(&raw, &data).unwrap();
        assert!(has_disk_label(&mut RawDisk::open(&raw).unwrap()).unwrap(), "ext4 on the whole disk");
    }

    fn qemu_io(path: &Path, cmd: &str) {
        let st = Command::new("qemu-io").args(["-f", "qcow2", "-c", cmd]).arg(path).output().unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    }

    #[test]
    fn a_chain_reads_like_qemu_img_convert() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let top = dir.path().join("top.qcow2");
        super::super::qemu_img::create_blank(&base, "8M").unwrap();
        qemu_io(&base, "write -P 0x11 0 1M");
        qemu_io(&base, "write -P 0x22 3M 512k");
        super::super::qemu_img::create_overlay(&base, &top, Some(4096)).unwrap();
        qemu_io(&top, "write -P 0x33 512k 8k");
        qemu_io(&top, "discard 3M 64k");
        qemu_io(&top, "write -z 100k 4k");
        let raw = dir.path().join("flat.raw");
        super::super::qemu_img::convert(&top, &raw, "raw").unwrap();
        let want = std::fs::read(&raw).unwrap();
        let mut chain = Qcow2Chain::open(&top).unwrap();
        assert_eq!(chain.size(), want.len() as u64);
        let mut got = vec![0u8; want.len()];
        // Odd-sized reads across cluster boundaries.
        for (i, piece) in got.chunks_mut(300_000).enumerate() {
            chain.read_at(piece, (i * 300_000) as u64).unwrap();
        }
        assert!(got == want, "qcow2-rs and qemu-img disagree");
        // The map knows the written, discarded and never-written ranges.
        assert!(chain.may_hold_data(0, 4096));
        assert!(chain.may_hold_data(512 << 10, 4096));
        assert!(!chain.may_hold_data(3 << 20, 64 << 10), "discarded: reads as zeros");
        assert!(!chain.may_hold_data(5 << 20, 1 << 20), "never written");
    }
}
