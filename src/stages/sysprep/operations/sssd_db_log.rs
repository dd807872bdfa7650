//! Remove the database and log files of sssd

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "sssd-db-log",
    default: true,
    description: "Remove the database and log files of sssd",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_unix_like() {
        return Ok(());
    }
    Ok(c.rm_globs(&["/var/log/sssd/*", "/var/lib/sss/db/*"])?)
}
