//! Set the guest's hostname files (/etc/hostname, the 127.0.1.1 line of /etc/hosts,
//! /etc/sysconfig/network) to the stage's `hostname`, as the customize stage's `hostname`
//! does. virt-sysprep 1.48 dropped this operation; the seed's command line still names it.

use crate::guest::customize::set_hostname;
use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "hostname",
    default: true,
    description: "Change the hostname of the guest",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_linux() {
        return Ok(());
    }
    set_hostname(c.g, &c.config.hostname(), c.os.is_debian_family())
}
