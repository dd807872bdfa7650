//! Remove DHCP server leases

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "dhcp-server-state",
    default: true,
    description: "Remove DHCP server leases",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    Ok(c.rm_rf_globs(&["/var/lib/dhcpd/*"])?)
}
