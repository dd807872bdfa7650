//! Remove the process accounting log files

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "pacct-log",
    default: true,
    description: "Remove the process accounting log files",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_linux() {
        return Ok(());
    }
    let dir = if c.os.is_redhat_family() {
        "/var/account"
    } else if c.os.is_debian_family() {
        "/var/log/account"
    } else {
        return Ok(());
    };
    c.rm_globs(&[&format!("{dir}/pacct*")])?;
    // An empty log is left so accounting keeps working, as virt-sysprep does.
    if c.g.is_dir(dir)? {
        c.g.touch(&format!("{dir}/pacct"))?;
    }
    Ok(())
}
