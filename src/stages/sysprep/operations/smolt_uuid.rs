//! Remove the Smolt hardware UUID

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "smolt-uuid",
    default: true,
    description: "Remove the Smolt hardware UUID",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_linux() {
        return Ok(());
    }
    for file in ["/etc/sysconfig/hw-uuid", "/etc/smolt/uuid", "/etc/smolt/hw-uuid"] {
        c.g.rm_f(file)?;
    }
    Ok(())
}
