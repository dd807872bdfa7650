//! Remove the database and log files of Samba

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "samba-db-log",
    default: true,
    description: "Remove the database and log files of Samba",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_unix_like() {
        return Ok(());
    }
    Ok(c.rm_globs(&["/var/log/samba/old/*", "/var/log/samba/*", "/var/lib/samba/*/*", "/var/lib/samba/*"])?)
}
