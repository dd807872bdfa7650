//! Set the guest's hostname files (/etc/hostname, the 127.0.1.1 line of /etc/hosts, /etc/sysconfig/network) to the stage's `hostname`. virt-sysprep 1.48 dropped this operation; the seed's command line still names it.

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
    let name = c.config.hostname.as_str();
    let short = name.split('.').next().unwrap_or(name);
    c.g.write("/etc/hostname", format!("{name}\n").as_bytes())?;
    // Debian-style 127.0.1.1 alias in /etc/hosts.
    if c.g.is_file("/etc/hosts")? {
        let hosts = c.g.read_string("/etc/hosts")?;
        if hosts.lines().any(|l| l.starts_with("127.0.1.1")) {
            let alias = if short == name { name.to_string() } else { format!("{name} {short}") };
            let new: Vec<String> = hosts
                .lines()
                .map(|l| if l.starts_with("127.0.1.1") { format!("127.0.1.1\t{alias}") } else { l.to_string() })
                .collect();
            c.g.write("/etc/hosts", format!("{}\n", new.join("\n")).as_bytes())?;
        }
    }
    // Older Red Hat releases read it from /etc/sysconfig/network.
    if c.g.is_file("/etc/sysconfig/network")? {
        c.drop_lines("/etc/sysconfig/network", |l| l.starts_with("HOSTNAME="))?;
        let text = c.g.read_string("/etc/sysconfig/network")?;
        c.g.write("/etc/sysconfig/network", format!("{text}HOSTNAME={name}\n").as_bytes())?;
    }
    Ok(())
}
