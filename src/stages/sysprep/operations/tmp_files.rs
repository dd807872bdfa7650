//! Remove temporary files

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation =
    Operation { name: "tmp-files", default: true, description: "Remove temporary files", run, on_devices: false };

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_unix_like() {
        return Ok(());
    }
    for dir in ["/tmp", "/var/tmp"] {
        if !c.g.is_dir(dir)? {
            continue;
        }
        // ls, not a glob: dot files go too.
        for name in c.g.ls(dir)? {
            c.g.rm_rf(&format!("{dir}/{name}"))?;
        }
    }
    Ok(())
}
