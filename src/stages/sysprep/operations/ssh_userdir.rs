//! Remove ".ssh" directories in the guest

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "ssh-userdir",
    default: true,
    description: "Remove \".ssh\" directories in the guest",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_unix_like() {
        return Ok(());
    }
    Ok(c.rm_rf_globs(&["/home/*/.ssh", "/root/.ssh"])?)
}
