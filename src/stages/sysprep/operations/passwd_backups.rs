//! Remove /etc/passwd- and similar backup files

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "passwd-backups",
    default: true,
    description: "Remove /etc/passwd- and similar backup files",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_linux() {
        return Ok(());
    }
    for file in ["/etc/group-", "/etc/gshadow-", "/etc/passwd-", "/etc/shadow-", "/etc/subgid-", "/etc/subuid-"] {
        c.g.rm_f(file)?;
    }
    Ok(())
}
