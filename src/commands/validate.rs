//! `pipeline validate`: the chain loaded and built, nothing run.

use crate::chain::Chain;
use crate::cli::PipelineArgs;
use anyhow::Result;

pub fn validate(args: &PipelineArgs, json: bool) -> Result<()> {
    let chain = Chain::load(&args.file, &args.sets)?;
    let pipeline = chain.pipeline();
    let stages = pipeline.file.stages.len();
    if json {
        // Bad input never gets here: it is exit 2 with the message on standard error.
        let bases: Vec<&str> = chain.links().map(|l| l.pipeline.name()).filter(|n| *n != pipeline.name()).collect();
        let out = serde_json::json!({
            "file": args.file, "ok": true, "pipeline": pipeline.name(), "stages": stages, "bases": bases,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}: ok ({stages} stages)", args.file.display());
    }
    Ok(())
}
