//! Remove DHCP client leases

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "dhcp-client-state",
    default: true,
    description: "Remove DHCP client leases",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_linux() {
        return Ok(());
    }
    Ok(c.rm_rf_globs(&["/var/lib/dhclient/*", "/var/lib/dhcp/*"])?)
}
