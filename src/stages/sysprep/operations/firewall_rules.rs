//! Remove the firewall rules

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "firewall-rules",
    default: false,
    description: "Remove the firewall rules",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_unix_like() {
        return Ok(());
    }
    Ok(c.rm_globs(&["/etc/sysconfig/iptables", "/etc/firewalld/services/*", "/etc/firewalld/zones/*"])?)
}
