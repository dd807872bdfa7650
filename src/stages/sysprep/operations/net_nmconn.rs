//! Remove system-local NetworkManager connection profiles (keyfiles)

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "net-nmconn",
    default: true,
    description: "Remove system-local NetworkManager connection profiles (keyfiles)",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !(c.os.is_linux() && c.os.is_redhat_family()) {
        return Ok(());
    }
    for file in c.g.glob_expand("/etc/NetworkManager/system-connections/*.nmconnection")? {
        c.g.rm_f(&file)?;
    }
    Ok(())
}
