//! Remove HWADDR (hard-coded MAC address) configuration

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "net-hwaddr",
    default: true,
    description: "Remove HWADDR (hard-coded MAC address) configuration",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !(c.os.is_linux() && c.os.is_redhat_family()) {
        return Ok(());
    }
    for file in c.g.glob_expand("/etc/sysconfig/network-scripts/ifcfg-*")? {
        c.drop_lines(&file, |l| l.starts_with("HWADDR="))?;
    }
    Ok(())
}
