//! Remove CA certificates in the guest

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "ca-certificates",
    default: false,
    description: "Remove CA certificates in the guest",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_unix_like() {
        return Ok(());
    }
    const KEEP: [&str; 2] = ["/etc/pki/tls/certs/ca-bundle.crt", "/etc/pki/tls/certs/ca-bundle.trust.crt"];
    for glob in [
        "/etc/pki/CA/certs/*.crt",
        "/etc/pki/CA/crl/*.crt",
        "/etc/pki/CA/newcerts/*.crt",
        "/etc/pki/CA/private/*.key",
        "/etc/pki/tls/private/*.key",
        "/etc/pki/tls/certs/*.crt",
    ] {
        for path in c.g.glob_expand(glob)? {
            if !KEEP.contains(&path.as_str()) {
                let _ = c.g.rm(&path);
            }
        }
    }
    Ok(())
}
