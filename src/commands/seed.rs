//! `pipeline seed`: the seed file is read and checked in full (bad input, exit 2) before the
//! ISO is written.

use crate::cli::SeedArgs;
use anyhow::Result;

pub fn seed(args: &SeedArgs) -> Result<()> {
    let seed = crate::seed::Seed::load(&args.file, &args.sets)?;
    crate::seed::write_iso(&seed, args.format, &args.output)?;
    let files: Vec<String> = seed.files(args.format).into_iter().map(|(name, _)| name).collect();
    println!(
        "wrote {} ({}, volume {}: {})",
        args.output.display(),
        args.format,
        args.format.volume_id(),
        files.join(", ")
    );
    Ok(())
}
