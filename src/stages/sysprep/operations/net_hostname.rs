//! Remove HOSTNAME and DHCP_HOSTNAME in network interface configuration

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "net-hostname",
    default: true,
    description: "Remove HOSTNAME and DHCP_HOSTNAME in network interface configuration",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    c.drop_ifcfg_lines(|l| l.starts_with("HOSTNAME=") || l.starts_with("DHCP_HOSTNAME="))
}
