//! Remove Kerberos data in the guest

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "kerberos-data",
    default: false,
    description: "Remove Kerberos data in the guest",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_unix_like() {
        return Ok(());
    }
    const KEEP: [&str; 2] = ["/var/kerberos/krb5kdc/kadm5.acl", "/var/kerberos/krb5kdc/kdc.conf"];
    for path in c.g.glob_expand("/var/kerberos/krb5kdc/*")? {
        if !KEEP.contains(&path.as_str()) {
            let _ = c.g.rm(&path);
        }
    }
    Ok(())
}
