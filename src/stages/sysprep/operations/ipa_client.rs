//! Remove the IPA files

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation =
    Operation { name: "ipa-client", default: true, description: "Remove the IPA files", run, on_devices: false };

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_linux() {
        return Ok(());
    }
    Ok(c.rm_globs(&[
        "/etc/ipa/ca.crt",
        "/etc/ipa/default.conf",
        "/var/lib/ipa-client/sysrestore/*",
        "/var/lib/ipa-client/pki/*",
        "/etc/pki/ca-trust/source/anchors/ipa-ca.crt",
        "/usr/local/share/ca-certificates/ipa-ca.crt",
        "/etc/pki/ca-trust/source/ipa.p11-kit",
    ])?)
}
