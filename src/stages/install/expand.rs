//! virt-resize's `--expand`, in place: once the image file has grown, the end of one
//! partition moves to the end of the disk and what the partition holds grows to fill it
//! (ext2/3/4, XFS, btrfs, an LVM physical volume), in one appliance launch. In place means
//! only the last partition can grow; virt-resize copies the disk to move the others.

use crate::base::log::StageLog;
use crate::guest::Guest;
use anyhow::{bail, Result};

/// Grows `partition` (`/dev/sda1`) to the end of its disk, then its content.
pub fn expand_partition(g: &Guest, partition: &str, log: &StageLog) -> Result<()> {
    let device = g.part_to_dev(partition)?;
    let partnum = g.part_to_partnum(partition)?;
    let table = g.part_get_parttype(&device)?;
    let parts = g.part_list(&device)?;
    let Some(&(_, _, old_end)) = parts.iter().find(|p| p.0 == partnum) else {
        bail!("{device} has no partition {partnum}");
    };
    if parts.iter().any(|p| p.2 > old_end) {
        bail!("cannot expand {partition}: it is not the last partition on {device}, so it cannot grow in place");
    }
    if table == "msdos" && partnum > 4 {
        bail!("cannot expand {partition}: it is a logical partition inside an extended one");
    }
    if table == "gpt" {
        g.part_expand_gpt(&device)?;
    }
    let sector = g.blockdev_getss(&device)?;
    let Some(last_usable) = last_usable_sector(&table, g.blockdev_getsize64(&device)?, sector) else {
        bail!("cannot expand {partition}: {device} is too small to hold a partition table");
    };
    if last_usable <= old_end / sector {
        log.line(format!("{partition} already reaches the end of {device}"));
        return Ok(());
    }
    log.line(format!("moving the end of {partition} from sector {} to {last_usable}", old_end / sector));
    g.part_resize(&device, partnum, last_usable as i64)?;
    grow_content(g, partition, log)
}

/// The last sector a partition may end on: a GPT keeps its backup table (32 sectors) and
/// header (1) at the end of the disk. None for a disk too small for that (or a zero sector
/// size reported by a damaged device).
fn last_usable_sector(table: &str, bytes: u64, sector: u64) -> Option<u64> {
    let sectors = bytes.checked_div(sector)?;
    sectors.checked_sub(if table == "gpt" { 34 } else { 1 })
}

fn grow_content(g: &Guest, partition: &str, log: &StageLog) -> Result<()> {
    let fs = g.vfs_type(partition)?;
    log.line(format!("growing the {fs} on {partition}"));
    match fs.as_str() {
        "ext2" | "ext3" | "ext4" => {
            g.e2fsck_f(partition)?;
            g.resize2fs(partition)?;
        }
        // XFS and btrfs grow while mounted.
        "xfs" | "btrfs" => {
            g.mount(partition, "/")?;
            let grown = if fs == "xfs" { g.xfs_growfs("/") } else { g.btrfs_filesystem_resize("/") };
            g.umount_all()?;
            grown?;
        }
        "LVM2_member" => g.pvresize(partition)?,
        other => bail!("cannot grow a `{other}` filesystem on {partition}; the partition grew, its content did not"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_disks_have_no_usable_end() {
        assert_eq!(last_usable_sector("gpt", 1 << 20, 512), Some(2048 - 34));
        assert_eq!(last_usable_sector("msdos", 1 << 20, 512), Some(2047));
        assert_eq!(last_usable_sector("gpt", 16 * 512, 512), None);
        assert_eq!(last_usable_sector("msdos", 0, 512), None);
        assert_eq!(last_usable_sector("msdos", 4096, 0), None);
    }
}
