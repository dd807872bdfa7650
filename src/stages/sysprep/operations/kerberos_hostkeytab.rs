//! Remove the Kerberos host keytab file in the guest

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "kerberos-hostkeytab",
    default: true,
    description: "Remove the Kerberos host keytab file in the guest",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_unix_like() {
        return Ok(());
    }
    Ok(c.g.rm_f("/etc/krb5.keytab")?)
}
