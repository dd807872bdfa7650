//! xz compression in independent 16 MiB blocks on all cores, the layout `xz -T0
//! --block-size=16777216` writes and virt-builder decompresses in parallel. Each block is
//! one xz stream (the format allows streams to be concatenated), which lets a block that is
//! all zeros skip the encoder: its compressed form is the same every time, made once.
//! Preset 9's dictionary (64 MiB) is capped at the block size: a block never refers beyond
//! itself, so the output is the same and each encoder needs a quarter of the memory.

use super::chain::DiskRead;
use anyhow::{Context, Result};
use indicatif::ProgressBar;
use sha2::{Digest, Sha512};
use std::collections::BTreeMap;
use std::io::Write;
use xz2::stream::{Check, Filters, LzmaOptions, Stream};

pub const BLOCK_SIZE: usize = 16 << 20;

#[derive(Debug, Clone)]
pub struct XzOptions {
    pub preset: u32,
    pub block_size: usize,
    pub threads: usize,
}

impl Default for XzOptions {
    fn default() -> Self {
        XzOptions {
            preset: 9,
            block_size: BLOCK_SIZE,
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Compressed {
    pub sha512: String,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    pub zero_blocks: u64,
    pub data_blocks: u64,
}

/// One block compressed as a complete xz stream.
pub fn compress_block(data: &[u8], opts: &XzOptions) -> Result<Vec<u8>> {
    let mut lzma = LzmaOptions::new_preset(opts.preset).context("invalid xz preset")?;
    let dict = (opts.block_size as u32).clamp(4096, 64 << 20);
    lzma.dict_size(dict);
    let mut filters = Filters::new();
    filters.lzma2(&lzma);
    let stream = Stream::new_stream_encoder(&filters, Check::Crc64).context("cannot start the xz encoder")?;
    let mut enc = xz2::write::XzEncoder::new_stream(Vec::with_capacity(data.len() / 4), stream);
    enc.write_all(data)?;
    Ok(enc.finish()?)
}

enum Job {
    Zero(usize, usize),
    Data(usize, Vec<u8>),
}

/// Compresses the whole disk into `out`, returning the output's checksum and sizes.
pub fn compress(
    disk: &mut dyn DiskRead,
    out: &mut (dyn Write + Send),
    opts: &XzOptions,
    bar: &ProgressBar,
) -> Result<Compressed> {
    let size = disk.size();
    let blocks = size.div_ceil(opts.block_size as u64) as usize;
    let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(opts.threads * 2);
    let (done_tx, done_rx) =
        crossbeam_channel::bounded::<Result<(usize, std::sync::Arc<Vec<u8>>, bool)>>(opts.threads * 2);
    let zero_full = std::sync::Arc::new(compress_block(&vec![0u8; opts.block_size], opts)?);
    bar.set_length(size);

    std::thread::scope(|scope| -> Result<Compressed> {
        for _ in 0..opts.threads.max(1) {
            let (job_rx, done_tx, zero_full) = (job_rx.clone(), done_tx.clone(), zero_full.clone());
            scope.spawn(move || {
                for job in job_rx {
                    let result = match job {
                        Job::Zero(i, len) if len == opts.block_size => Ok((i, zero_full.clone(), true)),
                        Job::Zero(i, len) => {
                            compress_block(&vec![0u8; len], opts).map(|c| (i, std::sync::Arc::new(c), true))
                        }
                        Job::Data(i, data) => compress_block(&data, opts).map(|c| (i, std::sync::Arc::new(c), false)),
                    };
                    if done_tx.send(result).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        // The writer puts blocks back in order and hashes what it writes.
        let writer = scope.spawn(move || -> Result<Compressed> {
            let mut pending = BTreeMap::new();
            let mut next = 0usize;
            let mut hash = Sha512::new();
            let (mut written, mut zero_blocks, mut data_blocks) = (0u64, 0u64, 0u64);
            for result in done_rx {
                let (i, data, zero) = result?;
                pending.insert(i, (data, zero));
                while let Some((data, zero)) = pending.remove(&next) {
                    out.write_all(&data)?;
                    hash.update(&*data);
                    written += data.len() as u64;
                    if zero {
                        zero_blocks += 1;
                    } else {
                        data_blocks += 1;
                    }
                    next += 1;
                }
            }
            out.flush()?;
            anyhow::ensure!(next == blocks, "compression stopped after {next} of {blocks} blocks");
            Ok(Compressed {
                sha512: hex::encode(hash.finalize()),
                compressed_size: written,
                uncompressed_size: size,
                zero_blocks,
                data_blocks,
            })
        });
        let mut read_error = None;
        for i in 0..blocks {
            let offset = (i * opts.block_size) as u64;
            let len = (size - offset).min(opts.block_size as u64) as usize;
            let mut buf = vec![0u8; len];
            if let Err(e) = disk.read_at(&mut buf, offset) {
                read_error = Some(e);
                break;
            }
            let job = if is_zero(&buf) { Job::Zero(i, len) } else { Job::Data(i, buf) };
            if job_tx.send(job).is_err() {
                break;
            }
            bar.inc(len as u64);
        }
        drop(job_tx);
        let result = writer.join().map_err(|_| anyhow::anyhow!("the xz writer thread panicked"))?;
        match read_error {
            Some(e) => Err(e),
            None => result,
        }
    })
}

fn is_zero(buf: &[u8]) -> bool {
    // An OR over each 4 KiB chunk vectorises; `all` on bytes alone would not.
    buf.chunks(4096).all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::chain::RawDisk;

    #[test]
    fn blocks_decompress_to_the_input_and_zero_blocks_are_shared() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        // Three 64 KiB blocks: data, zeros, data (short last block).
        let mut data = vec![0u8; 3 * 65536 - 1000];
        for (i, b) in data[..65536].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        data[2 * 65536 + 5] = 7;
        std::fs::write(&raw, &data).unwrap();
        let opts = XzOptions { preset: 6, block_size: 65536, threads: 2 };
        let mut out = Vec::new();
        let res = compress(&mut RawDisk::open(&raw).unwrap(), &mut out, &opts, &ProgressBar::hidden()).unwrap();
        assert_eq!((res.zero_blocks, res.data_blocks), (1, 2));
        assert_eq!(res.compressed_size, out.len() as u64);
        assert_eq!(res.sha512, hex::encode(Sha512::digest(&out)));
        // Concatenated streams decode back to the input, as xz -d does.
        let mut dec = xz2::read::XzDecoder::new_multi_decoder(&out[..]);
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut dec, &mut back).unwrap();
        assert_eq!(back, data);
    }
}
