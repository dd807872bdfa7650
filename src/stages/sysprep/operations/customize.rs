//! Apply the stage's `customize` steps (the customize stage's vocabulary) in the same
//! appliance launch, as virt-sysprep's customize operation applies its customize options.

use crate::guest::customize::StepRunner;
use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation =
    Operation { name: "customize", default: true, description: "Customize the guest", run, on_devices: false };

fn run(c: &OpContext) -> anyhow::Result<()> {
    let runner = StepRunner::new(c.g, c.os, c.dir, &c.config.env, c.timeout, c.log);
    for step in &c.config.customize {
        runner.apply(step)?;
    }
    Ok(())
}
