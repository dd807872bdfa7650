//! Remove package manager cache

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "package-manager-cache",
    default: true,
    description: "Remove package manager cache",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    let dirs: Vec<String> = match c.os.package_management.as_str() {
        "apt" => vec!["/var/cache/apt/archives".into()],
        "dnf" => vec!["/var/cache/dnf".into()],
        "yum" => vec!["/var/cache/yum".into()],
        "zypper" => c.g.glob_expand("/var/cache/zypp*")?,
        _ => vec![],
    };
    for dir in dirs {
        c.rm_files_below(&dir, |_| false)?;
    }
    Ok(())
}
