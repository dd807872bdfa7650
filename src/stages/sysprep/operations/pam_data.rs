//! Remove the PAM data in the guest

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "pam-data",
    default: true,
    description: "Remove the PAM data in the guest",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_unix_like() {
        return Ok(());
    }
    Ok(c.rm_globs(&["/var/run/console/*", "/var/run/faillock/*", "/var/run/sepermit/*"])?)
}
