//! Empty /etc/machine-id and D-Bus's machine-id so each clone generates its own on first boot.

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation =
    Operation { name: "machine-id", default: true, description: "Remove the local machine ID", run, on_devices: false };

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_unix_like() {
        return Ok(());
    }
    // Left empty: systemd generates a fresh ID on first boot, so no two clones share one.
    // (virt-sysprep's trailing customize step writes an ID back; nothing here does.)
    for path in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if c.g.is_file(path)? {
            c.g.truncate(path)?;
        }
    }
    Ok(())
}
