//! Remove Dovecot (mail server) data

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "dovecot-data",
    default: true,
    description: "Remove Dovecot (mail server) data",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_unix_like() {
        return Ok(());
    }
    Ok(c.rm_globs(&["/var/lib/dovecot/*"])?)
}
