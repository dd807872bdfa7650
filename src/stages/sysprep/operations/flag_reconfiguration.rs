//! Flag the system for reconfiguration

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "flag-reconfiguration",
    default: false,
    description: "Flag the system for reconfiguration",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_unix_like() {
        return Ok(());
    }
    Ok(c.g.touch("/.unconfigured")?)
}
