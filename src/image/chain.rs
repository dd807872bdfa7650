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
}

pub struct RawDisk {
    file: std::fs::File,
    size: u64,
}

impl RawDisk {
    pub fn open(path: &Path) -> Result<RawDisk> {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let size = file.metadata()?.len();
        Ok(RawDisk { file, size })
    }
}

impl DiskRead for RawDisk {
    fn size(&self) -> u64 {
        self.size
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
                Some(b) => bail!(
                    "{} names its backing file relatively ({b}); layers use absolute names",
                    cur.display()
                ),
                None => break,
            }
        }
        let params = Qcow2DevParams::new(9, None, None, true, false);
        let dev = qcow2_rs::utils::qcow2_setup_dev_sync(path, &params)
            .map_err(|e| anyhow::anyhow!("cannot open qcow2 chain {}: {e:?}", path.display()))?;
        let size = dev.info.virtual_size();
        Ok(Qcow2Chain { dev, size })
    }
}

impl DiskRead for Qcow2Chain {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        let len = buf.len().min(self.size.saturating_sub(offset) as usize);
        buf[len..].fill(0);
        if len > 0 {
            futures::executor::block_on(self.dev.read_at(&mut buf[..len], offset))
                .map_err(|e| anyhow::anyhow!("qcow2 read at {offset}: {e:?}"))?;
        }
        Ok(())
    }
}

/// Opens a disk image by its format on disk.
pub fn open(path: &Path) -> Result<Box<dyn DiskRead>> {
    let format = super::qemu_img::info(path)?.format;
    Ok(match format.as_str() {
        "qcow2" => Box::new(Qcow2Chain::open(path)?),
        "raw" => Box::new(RawDisk::open(path)?),
        other => bail!("{}: cannot read {other} images directly", path.display()),
    })
}
