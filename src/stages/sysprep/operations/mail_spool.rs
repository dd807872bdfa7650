//! Remove email from the local mail spool directory

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "mail-spool",
    default: true,
    description: "Remove email from the local mail spool directory",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    Ok(c.rm_rf_globs(&["/var/spool/mail/*", "/var/mail/*"])?)
}
