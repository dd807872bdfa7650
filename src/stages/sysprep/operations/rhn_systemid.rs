//! Remove the RHN system ID

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation =
    Operation { name: "rhn-systemid", default: true, description: "Remove the RHN system ID", run, on_devices: false };

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !(c.os.is_linux() && c.os.distro == "rhel") {
        return Ok(());
    }
    c.g.rm_f("/etc/sysconfig/rhn/systemid")?;
    Ok(c.g.rm_f("/etc/sysconfig/rhn/osad-auth.conf")?)
}
