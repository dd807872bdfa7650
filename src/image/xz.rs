//! xz compression in independent 16 MiB blocks on all cores: one xz stream of many blocks,
//! the layout `xz -T0 --block-size=16777216` writes and virt-builder (pxzcat) decompresses
//! in parallel.
//!
//! Each block is compressed by liblzma (xz2) as a complete single-block stream; its block is
//! then lifted out and placed into one shared stream, whose header, index and footer are
//! written here (xz file format 1.0.4). xz2 offers no block-level encoder, and this is what
//! lets a block that is all zeros skip the encoder: its compressed form is the same every
//! time, made once. Preset 9's dictionary (64 MiB) is capped at the block size: a block never
//! refers beyond itself, so the data compresses the same and each encoder needs less memory.
//!
//! Because blocks are independent and liblzma is deterministic at fixed settings, a block
//! whose content an earlier file already holds can take its compressed bytes from there
//! (a [`BlockSource`]) instead of going through the encoder: the result is byte for byte what
//! encoding it would write. Each run returns where every data block went ([`BlockRecord`]),
//! for a later run to reuse.

use super::chain::DiskRead;
use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use sha2::{Digest, Sha512};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use xz2::stream::{Check, Filters, LzmaOptions, Stream};

pub const BLOCK_SIZE: usize = 16 << 20;

const HEADER_MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0x00];
const FOOTER_MAGIC: [u8; 2] = [b'Y', b'Z'];
/// Stream flags: no reserved bits, check type 0x04 (CRC64), as liblzma's blocks use.
const STREAM_FLAGS: [u8; 2] = [0x00, 0x04];

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
    /// Data blocks, encoded or reused.
    pub data_blocks: u64,
    /// Data blocks whose compressed bytes came from a `BlockSource`.
    pub reused_blocks: u64,
    /// Blocks a `BlockSource` offered that did not decompress to the data they stood for
    /// (encoded instead).
    pub rejected_blocks: u64,
    /// Where each data block sits in the output, in order.
    pub blocks: Vec<BlockRecord>,
}

/// Where one data block's compressed form sits in a written file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockRecord {
    /// SHA-256 of the uncompressed block.
    pub content: String,
    pub uncompressed_size: u64,
    /// The compressed block (header to check, padding included) in the file.
    pub offset: u64,
    pub length: u64,
    /// The block's unpadded size, for the stream index.
    pub unpadded_size: u64,
    /// SHA-256 of the compressed bytes, checked before they are reused.
    pub sha256: String,
}

/// Compressed blocks made earlier, found by the digest of their content.
pub trait BlockSource: Sync {
    /// The compressed form of a block with this content (SHA-256, hex) and size, when one
    /// is at hand and intact. Only a hint: `compress` takes it only when it decompresses to
    /// exactly the block's data.
    fn find(&self, content: &str, uncompressed_size: u64) -> Option<Block>;
}

/// No earlier blocks: everything is encoded.
pub struct EncodeAll;

impl BlockSource for EncodeAll {
    fn find(&self, _: &str, _: u64) -> Option<Block> {
        None
    }
}

/// What identifies the encoder's output: the settings, and the bytes this liblzma makes of a
/// fixed sample at them. Blocks recorded under another identity are never reused (a
/// different liblzma may compress the same data differently).
pub fn encoder_identity(opts: &XzOptions) -> Result<String> {
    let mut sample = Vec::with_capacity(256 << 10);
    let mut x = 0x2545_f491_u32;
    while sample.len() < 256 << 10 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        // Text-like runs and noise, so the match finder and the literal coder both show.
        if x.is_multiple_of(3) {
            sample.extend_from_slice(b"virt-pipeline encoder sample ");
        } else {
            sample.extend_from_slice(&x.to_le_bytes());
        }
    }
    let block = compress_block(&sample, opts)?;
    Ok(format!(
        "lzma2 preset={} block={} sample-sha256={}",
        opts.preset,
        opts.block_size,
        hex::encode(sha2::Sha256::digest(&block.bytes))
    ))
}

/// What a block decompresses to (its own check verified), read no further than one byte past
/// its recorded size: a block taken from elsewhere must prove it holds the data it replaces.
pub fn decode_block(block: &Block) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut stream = stream_header();
    stream.extend_from_slice(&block.bytes);
    stream.extend_from_slice(&stream_tail(&[(block.unpadded_size, block.uncompressed_size)]));
    let mut out = Vec::with_capacity(usize::try_from(block.uncompressed_size)?);
    xz2::read::XzDecoder::new(&stream[..]).take(block.uncompressed_size + 1).read_to_end(&mut out)?;
    Ok(out)
}

/// One compressed xz block (header, data, padding, check) and its index record.
#[derive(Debug)]
pub struct Block {
    pub bytes: Vec<u8>,
    pub unpadded_size: u64,
    pub uncompressed_size: u64,
}

/// Compresses one block's data with liblzma and lifts the block out of the stream it made.
pub fn compress_block(data: &[u8], opts: &XzOptions) -> Result<Block> {
    let mut lzma = LzmaOptions::new_preset(opts.preset).context("invalid xz preset")?;
    lzma.dict_size((opts.block_size as u32).clamp(4096, 64 << 20));
    let mut filters = Filters::new();
    filters.lzma2(&lzma);
    let stream = Stream::new_stream_encoder(&filters, Check::Crc64).context("cannot start the xz encoder")?;
    let mut enc = xz2::write::XzEncoder::new_stream(Vec::with_capacity(data.len() / 4 + 4096), stream);
    enc.write_all(data)?;
    let stream = enc.finish()?;
    extract_block(&stream, data.len() as u64)
}

/// The single block of a one-block xz stream: [header 12][block][index][footer 12].
fn extract_block(stream: &[u8], uncompressed: u64) -> Result<Block> {
    let n = stream.len();
    if n < 32 || stream[..6] != HEADER_MAGIC || stream[n - 2..] != FOOTER_MAGIC {
        bail!("liblzma produced an unexpected stream");
    }
    let backward = u32::from_le_bytes(stream[n - 8..n - 4].try_into().expect("4 bytes")) as usize;
    let index_size = (backward + 1) * 4;
    let index = &stream[n - 12 - index_size..n - 12];
    // Index: indicator 0x00, record count, then (unpadded size, uncompressed size).
    let mut pos = 1;
    let records = read_varint(index, &mut pos)?;
    let unpadded_size = read_varint(index, &mut pos)?;
    let recorded = read_varint(index, &mut pos)?;
    if index[0] != 0 || records != 1 || recorded != uncompressed {
        bail!("liblzma produced an unexpected index");
    }
    Ok(Block { bytes: stream[12..n - 12 - index_size].to_vec(), unpadded_size, uncompressed_size: uncompressed })
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..63).step_by(7) {
        let byte = *buf.get(*pos).context("truncated xz index")?;
        *pos += 1;
        value |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    bail!("xz varint too long")
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn stream_header() -> Vec<u8> {
    let mut h = HEADER_MAGIC.to_vec();
    h.extend_from_slice(&STREAM_FLAGS);
    h.extend_from_slice(&crc32fast::hash(&STREAM_FLAGS).to_le_bytes());
    h
}

/// The index of all blocks and the stream footer.
fn stream_tail(records: &[(u64, u64)]) -> Vec<u8> {
    let mut index = vec![0u8];
    write_varint(&mut index, records.len() as u64);
    for (unpadded, uncompressed) in records {
        write_varint(&mut index, *unpadded);
        write_varint(&mut index, *uncompressed);
    }
    while index.len() % 4 != 0 {
        index.push(0);
    }
    index.extend_from_slice(&crc32fast::hash(&index).to_le_bytes());
    let backward = (index.len() / 4 - 1) as u32;
    let mut footer_body = backward.to_le_bytes().to_vec();
    footer_body.extend_from_slice(&STREAM_FLAGS);
    let mut tail = index;
    tail.extend_from_slice(&crc32fast::hash(&footer_body).to_le_bytes());
    tail.extend_from_slice(&footer_body);
    tail.extend_from_slice(&FOOTER_MAGIC);
    tail
}

enum Job {
    Zero(usize, usize),
    Data(usize, Vec<u8>),
}

/// How a block was made.
#[derive(Clone, Copy, PartialEq)]
enum Made {
    Zero,
    Encoded,
    Reused,
}

/// A finished block: its position, bytes, how it was made and its content digest (data).
type Done = Result<(usize, Arc<Block>, Made, Option<String>)>;

/// Compresses the whole disk into `out`, taking the compressed form of data blocks that
/// `source` has instead of encoding them; returns the output's checksum, sizes and block map.
pub fn compress(
    disk: &mut dyn DiskRead,
    out: &mut (dyn Write + Send),
    opts: &XzOptions,
    source: &dyn BlockSource,
    bar: &ProgressBar,
) -> Result<Compressed> {
    let size = disk.size();
    let blocks = size.div_ceil(opts.block_size as u64) as usize;
    let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(opts.threads * 2);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<Done>(opts.threads * 2);
    let zero_full = Arc::new(compress_block(&vec![0u8; opts.block_size], opts)?);
    let rejected = std::sync::atomic::AtomicU64::new(0);
    bar.set_length(size);

    std::thread::scope(|scope| -> Result<Compressed> {
        for _ in 0..opts.threads.max(1) {
            let (job_rx, done_tx, zero_full, rejected) =
                (job_rx.clone(), done_tx.clone(), zero_full.clone(), &rejected);
            scope.spawn(move || {
                for job in job_rx {
                    let result = match job {
                        Job::Zero(i, len) if len == opts.block_size => Ok((i, zero_full.clone(), Made::Zero, None)),
                        Job::Zero(i, len) => {
                            compress_block(&vec![0u8; len], opts).map(|b| (i, Arc::new(b), Made::Zero, None))
                        }
                        Job::Data(i, data) => {
                            let content = hex::encode(sha2::Sha256::digest(&data));
                            // Decoding a block costs a fraction of encoding it; a source's
                            // digests alone could be made to agree with any bytes.
                            let found = source.find(&content, data.len() as u64);
                            match found {
                                Some(b) if decode_block(&b).is_ok_and(|d| d == data) => {
                                    Ok((i, Arc::new(b), Made::Reused, Some(content)))
                                }
                                _ => {
                                    if found.is_some() {
                                        rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    }
                                    compress_block(&data, opts).map(|b| (i, Arc::new(b), Made::Encoded, Some(content)))
                                }
                            }
                        }
                    };
                    if done_tx.send(result).is_err() {
                        break;
                    }
                }
            });
        }
        // Only the workers hold the job receiver and the writer the done receiver: when the
        // writer fails (disk full, closed pipe) the workers' sends fail, they exit, and the
        // reader's next send fails instead of blocking on a full queue forever.
        drop(job_rx);
        drop(done_tx);
        // The writer puts blocks back in order, hashes what it writes, and ends the stream
        // with the index of every block.
        let writer = scope.spawn(move || -> Result<Compressed> {
            let mut hash = Sha512::new();
            let mut emit = |bytes: &[u8], out: &mut (dyn Write + Send)| -> Result<()> {
                out.write_all(bytes)?;
                hash.update(bytes);
                Ok(())
            };
            let header = stream_header();
            emit(&header, out)?;
            let mut written = header.len() as u64;
            let (mut pending, mut next) = (BTreeMap::new(), 0usize);
            let mut records = Vec::with_capacity(blocks);
            let mut map = Vec::new();
            let (mut zero_blocks, mut data_blocks, mut reused_blocks) = (0u64, 0u64, 0u64);
            for result in done_rx {
                let (i, block, made, content) = result?;
                pending.insert(i, (block, made, content));
                while let Some((block, made, content)) = pending.remove(&next) {
                    emit(&block.bytes, out)?;
                    if let Some(content) = content {
                        map.push(BlockRecord {
                            content,
                            uncompressed_size: block.uncompressed_size,
                            offset: written,
                            length: block.bytes.len() as u64,
                            unpadded_size: block.unpadded_size,
                            sha256: hex::encode(sha2::Sha256::digest(&block.bytes)),
                        });
                    }
                    written += block.bytes.len() as u64;
                    records.push((block.unpadded_size, block.uncompressed_size));
                    match made {
                        Made::Zero => zero_blocks += 1,
                        Made::Encoded => data_blocks += 1,
                        Made::Reused => {
                            data_blocks += 1;
                            reused_blocks += 1;
                        }
                    }
                    next += 1;
                }
            }
            anyhow::ensure!(next == blocks, "compression stopped after {next} of {blocks} blocks");
            let tail = stream_tail(&records);
            emit(&tail, out)?;
            written += tail.len() as u64;
            out.flush()?;
            Ok(Compressed {
                sha512: hex::encode(hash.finalize()),
                compressed_size: written,
                uncompressed_size: size,
                zero_blocks,
                data_blocks,
                reused_blocks,
                rejected_blocks: 0,
                blocks: map,
            })
        });
        let mut read_error = None;
        for i in 0..blocks {
            if let Err(e) = crate::base::interrupt::check() {
                read_error = Some(e);
                break;
            }
            let offset = (i * opts.block_size) as u64;
            let len = (size - offset).min(opts.block_size as u64) as usize;
            if !disk.may_hold_data(offset, len as u64) {
                // Unallocated or zero clusters, holes: not even read.
                if job_tx.send(Job::Zero(i, len)).is_err() {
                    break;
                }
                bar.inc(len as u64);
                continue;
            }
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
            None => {
                result.map(|c| Compressed { rejected_blocks: rejected.load(std::sync::atomic::Ordering::Relaxed), ..c })
            }
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

    /// A writer that fails once `limit` bytes went through, like a full disk.
    struct FailingWriter {
        written: usize,
        limit: usize,
    }

    impl Write for FailingWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.written + buf.len() > self.limit {
                return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left on device"));
            }
            self.written += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_output_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        // 64 blocks of incompressible-ish data: far more than the job queue holds.
        let mut data = vec![0u8; 64 * 4096];
        let mut x = 1u32;
        for b in data.iter_mut() {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            *b = (x >> 24) as u8;
        }
        std::fs::write(&raw, &data).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let opts = XzOptions { preset: 0, block_size: 4096, threads: 2 };
            let mut out = FailingWriter { written: 0, limit: 10_000 };
            let res = compress(&mut RawDisk::open(&raw).unwrap(), &mut out, &opts, &EncodeAll, &ProgressBar::hidden());
            let _ = tx.send(res.map(|_| ()).map_err(|e| format!("{e:#}")));
        });
        // A hang guard, not a timing assertion: the compressor used to block here forever.
        let res = rx.recv_timeout(std::time::Duration::from_secs(120)).expect("compress returned");
        let err = res.expect_err("a full disk is an error");
        assert!(err.contains("no space left"), "{err}");
    }

    #[test]
    fn one_stream_of_blocks_that_xz_decodes_and_lists() {
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
        let res =
            compress(&mut RawDisk::open(&raw).unwrap(), &mut out, &opts, &EncodeAll, &ProgressBar::hidden()).unwrap();
        assert_eq!((res.zero_blocks, res.data_blocks), (1, 2));
        assert_eq!(res.compressed_size, out.len() as u64);
        assert_eq!(res.sha512, hex::encode(Sha512::digest(&out)));
        // A single-stream decoder (not the multi-stream one) reads it all back.
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut xz2::read::XzDecoder::new(&out[..]), &mut back).unwrap();
        assert_eq!(back, data);
        // xz itself sees one stream of three blocks.
        let file = dir.path().join("disk.raw.xz");
        std::fs::write(&file, &out).unwrap();
        let list = std::process::Command::new("xz").args(["--robot", "--list"]).arg(&file).output().unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        assert!(list.lines().any(|l| l.starts_with("file\t1\t3\t")), "{list}");
    }
}
