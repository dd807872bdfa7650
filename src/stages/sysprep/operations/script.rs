//! Run the stage's `scripts` (host files) inside the guest, one after another; a failing
//! script fails the stage with its output.

use crate::guest::customize::run_in_guest;
use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "script",
    default: true,
    description: "Run arbitrary scripts against the guest",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    const REMOTE: &str = "/tmp/virt-pipeline-sysprep-script";
    for script in &c.config.scripts {
        c.g.upload(&c.dir.join(script), REMOTE)?;
        c.g.chmod(0o755, REMOTE)?;
        let result = run_in_guest(c.g, REMOTE, &c.config.env, c.timeout, c.log);
        c.g.rm_f(REMOTE)?;
        result?;
    }
    Ok(())
}
