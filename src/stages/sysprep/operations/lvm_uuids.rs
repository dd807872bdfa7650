//! On Linux guests with LVM2 volumes, give physical volumes and volume groups new random UUIDs.

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation =
    Operation { name: "lvm-uuids", default: true, description: "Change LVM2 PV and VG UUIDs", run, on_devices: true };

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_linux() {
        return Ok(());
    }
    let (pvs, vgs) = (c.g.pvs()?, c.g.vgs()?);
    if pvs.is_empty() && vgs.is_empty() {
        return Ok(());
    }
    // UUIDs can only change on inactive volume groups; this runs before anything is mounted.
    c.g.vg_activate_all(false)?;
    if !pvs.is_empty() {
        c.g.pvchange_uuid_all()?;
    }
    if !vgs.is_empty() {
        c.g.vgchange_uuid_all()?;
    }
    Ok(c.g.vg_activate_all(true)?)
}
