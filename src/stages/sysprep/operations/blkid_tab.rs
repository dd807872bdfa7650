//! Remove blkid tab in the guest

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "blkid-tab",
    default: true,
    description: "Remove blkid tab in the guest",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_unix_like() {
        return Ok(());
    }
    for file in [
        "/var/run/blkid.tab",
        "/var/run/blkid.tab.old",
        "/etc/blkid/blkid.tab",
        "/etc/blkid/blkid.tab.old",
        "/etc/blkid.tab",
        "/etc/blkid.tab.old",
        "/dev/.blkid.tab",
        "/dev/.blkid.tab.old",
    ] {
        if c.g.is_file(file)? {
            c.g.rm(file)?;
        }
    }
    Ok(())
}
