//! Remove the data and log files of puppet

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "puppet-data-log",
    default: true,
    description: "Remove the data and log files of puppet",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_unix_like() {
        return Ok(());
    }
    Ok(c.rm_globs(&["/var/log/puppet/*", "/var/lib/puppet/*/*", "/var/lib/puppet/*/*/*"])?)
}
