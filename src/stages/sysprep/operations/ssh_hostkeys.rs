//! Remove the SSH host keys; on Debian and Ubuntu install a one-shot unit that regenerates them on first boot, since Debian's openssh does not.

use crate::stages::sysprep::{OpContext, Operation};

const UNIT_NAME: &str = "regenerate-ssh-host-keys.service";
const UNIT_PATH: &str = "/etc/systemd/system/regenerate-ssh-host-keys.service";
const UNIT: &str = "[Unit]
Description=Regenerate SSH host keys removed by sysprep
Before=ssh.service
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
";

pub const OPERATION: Operation = Operation {
    name: "ssh-hostkeys",
    default: true,
    description: "Remove the SSH host keys in the guest",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_unix_like() {
        return Ok(());
    }
    c.rm_globs(&["/etc/ssh/*_host_*"])?;
    // Debian's openssh-server creates host keys only when the package is configured; a
    // clone would boot with none and sshd would refuse to start. A one-shot unit makes them.
    if c.os.is_debian_family() && c.g.is_dir("/etc/systemd/system")? && c.g.is_dir("/etc/ssh")? {
        c.g.write(UNIT_PATH, UNIT.as_bytes())?;
        for target in ["multi-user.target.wants", "ssh.service.wants"] {
            let dir = format!("/etc/systemd/system/{target}");
            c.g.mkdir_p(&dir)?;
            c.g.ln_sf(UNIT_PATH, &format!("{dir}/{UNIT_NAME}"))?;
        }
    }
    Ok(())
}
