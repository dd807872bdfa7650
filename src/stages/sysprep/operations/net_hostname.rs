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
    if !(c.os.is_linux() && c.os.is_redhat_family()) {
        return Ok(());
    }
    for file in c.g.glob_expand("/etc/sysconfig/network-scripts/ifcfg-*")? {
        c.drop_lines(&file, |l| l.starts_with("HOSTNAME=") || l.starts_with("DHCP_HOSTNAME="))?;
    }
    Ok(())
}
