//! Remove udev persistent net rules

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "udev-persistent-net",
    default: true,
    description: "Remove udev persistent net rules",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_linux() {
        return Ok(());
    }
    Ok(c.g.rm_f("/etc/udev/rules.d/70-persistent-net.rules")?)
}
