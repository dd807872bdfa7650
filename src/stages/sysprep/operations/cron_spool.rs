//! Remove user at-jobs and cron-jobs

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "cron-spool",
    default: true,
    description: "Remove user at-jobs and cron-jobs",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    let is_seq = |p: &str| p.ends_with("/.SEQ");
    // .SEQ holds the next job number; reset in place rather than removed, as virt-sysprep does.
    let reset = |f: &str| -> crate::guest::Result<()> {
        if c.g.is_file(f)? {
            c.g.write(f, b"00000\n")?;
        }
        Ok(())
    };
    c.rm_files_below("/var/spool/cron", is_seq)?;
    reset("/var/spool/cron/atjobs/.SEQ")?;
    c.rm_globs(&["/var/spool/atjobs/*"])?;
    reset("/var/spool/atjobs/.SEQ")?;
    c.rm_globs(&["/var/spool/atspool/*"])?;
    c.rm_files_below("/var/spool/at", is_seq)?;
    Ok(reset("/var/spool/at/.SEQ")?)
}
