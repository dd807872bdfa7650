//! Remove the RH subscription manager files

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "rh-subscription-manager",
    default: true,
    description: "Remove the RH subscription manager files",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !(c.os.is_linux() && c.os.distro == "rhel") {
        return Ok(());
    }
    Ok(c.rm_rf_globs(&["/etc/pki/consumer/*", "/etc/pki/entitlement/*"])?)
}
