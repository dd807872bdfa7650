//! Remove editor backup files (`*.bak`, `*~`) under /etc, /root, /srv, /tmp and /var.

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "backup-files",
    default: true,
    description: "Remove editor backup files from the guest",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    let roots: &[&str] = if c.os.is_unix_like() { &["/etc", "/root", "/srv", "/tmp", "/var"] } else { &["/"] };
    for root in roots {
        if !c.g.is_dir(root)? {
            continue;
        }
        for rel in c.g.find(root)? {
            let name = rel.rsplit('/').next().unwrap_or(&rel);
            if name.ends_with(".bak") || name.ends_with('~') {
                let path = format!("{}/{rel}", root.trim_end_matches('/'));
                if c.g.is_file(&path)? {
                    c.g.rm_f(&path)?;
                }
            }
        }
    }
    Ok(())
}
