//! Remove the utmp file

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation =
    Operation { name: "utmp", default: true, description: "Remove the utmp file", run, on_devices: false };

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_unix_like() {
        return Ok(());
    }
    Ok(c.g.rm_f("/var/run/utmp")?)
}
