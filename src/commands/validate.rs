//! `pipeline validate`: the chain loaded and built, nothing run.

use crate::chain::Chain;
use crate::cli::PipelineArgs;
use anyhow::Result;

pub fn validate(args: &PipelineArgs) -> Result<()> {
    let chain = Chain::load(&args.file, &args.sets)?;
    println!("{}: ok ({} stages)", args.file.display(), chain.pipeline().file.stages.len());
    Ok(())
}
