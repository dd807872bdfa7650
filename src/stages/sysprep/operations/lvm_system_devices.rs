//! Remove LVM2 system.devices file

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "lvm-system-devices",
    default: true,
    description: "Remove LVM2 system.devices file",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_linux() {
        return Ok(());
    }
    Ok(c.g.rm_f("/etc/lvm/devices/system.devices")?)
}
