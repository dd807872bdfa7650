//! Remove the bash history in the guest

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "bash-history",
    default: true,
    description: "Remove the bash history in the guest",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_unix_like() {
        return Ok(());
    }
    Ok(c.rm_globs(&["/home/*/.bash_history", "/root/.bash_history"])?)
}
