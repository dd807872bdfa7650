//! The publish stage's compressor on its own, for scripts/bench-publish:
//! `cargo run --release --example compress -- IN OUT` (IN raw or qcow2).

use indicatif::ProgressBar;
use std::time::Instant;
use virt_pipeline::image::{chain, xz};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 3, "usage: compress IN OUT");
    let mut disk = chain::open(std::path::Path::new(&args[1]))?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(&args[2])?);
    let started = Instant::now();
    let res = xz::compress(disk.as_mut(), &mut out, &xz::XzOptions::default(), &xz::EncodeAll, &ProgressBar::hidden())?;
    println!(
        "{:.2}s {} -> {} bytes ({} data blocks, {} zero blocks)",
        started.elapsed().as_secs_f64(),
        res.uncompressed_size,
        res.compressed_size,
        res.data_blocks,
        res.zero_blocks
    );
    Ok(())
}
