//! Remove the yum UUID

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation =
    Operation { name: "yum-uuid", default: true, description: "Remove the yum UUID", run, on_devices: false };

fn run(c: &OpContext) -> anyhow::Result<()> {
    if c.os.package_management != "yum" {
        return Ok(());
    }
    Ok(c.g.rm_f("/var/lib/yum/uuid")?)
}
