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
    c.drop_ifcfg_lines(|l| l.starts_with("HWADDR="))
}
