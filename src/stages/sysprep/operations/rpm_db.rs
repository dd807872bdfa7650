//! Remove host-specific RPM database files

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "rpm-db",
    default: true,
    description: "Remove host-specific RPM database files",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if c.os.package_format != "rpm" {
        return Ok(());
    }
    Ok(c.rm_globs(&["/var/lib/rpm/__db.*"])?)
}
