//! Streaming an archive out of the appliance into compressed host files: the appliance
//! writes into a pipe (`tar_out`, `cpio_out`) while a thread of ours hashes, counts and
//! compresses what comes out, so compression overlaps the appliance's work. Shared by the
//! targets that pack a tree (docker, ramdisk).

use crate::base::stream::{HashingWriter, Progress};
use anyhow::{Context, Result};
use sha2::Sha256;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// How an artifact is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    /// With CRC32 checks: the kernel's XZ decoder (initramfs) does not know CRC64.
    Xz,
}

impl Compression {
    pub fn parse(text: &str) -> Option<Compression> {
        Some(match text {
            "none" => Compression::None,
            "gzip" => Compression::Gzip,
            "zstd" => Compression::Zstd,
            "xz" => Compression::Xz,
            _ => return None,
        })
    }

    /// The file name suffix: `""`, `".gz"`, `".zst"`, `".xz"`.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
            Compression::Xz => ".xz",
        }
    }
}

/// A file written, with its SHA-256 and size counted on the way.
#[derive(Debug, Clone)]
pub struct Blob {
    pub sha256: String,
    pub size: u64,
}

type FileOut = HashingWriter<Sha256, std::io::BufWriter<std::fs::File>>;

/// A compressed file being written.
pub struct Encoder(Kind);

enum Kind {
    None(FileOut),
    Gzip(flate2::write::GzEncoder<FileOut>),
    Zstd(zstd::Encoder<'static, FileOut>),
    Xz(xz2::write::XzEncoder<FileOut>),
}

impl Encoder {
    pub fn create(path: &Path, compression: Compression) -> Result<Encoder> {
        let f = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let out = FileOut::new(std::io::BufWriter::with_capacity(1 << 20, f));
        Ok(Encoder(match compression {
            Compression::None => Kind::None(out),
            // gzip's own default level; the header's mtime stays 0, so equal input gives equal bytes.
            Compression::Gzip => Kind::Gzip(flate2::write::GzEncoder::new(out, flate2::Compression::default())),
            Compression::Zstd => {
                let mut encoder = zstd::Encoder::new(out, zstd::DEFAULT_COMPRESSION_LEVEL)?;
                // Worker threads, as `zstd -T0`: compression keeps up with the appliance.
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
                encoder.multithread(threads).context("cannot start zstd's worker threads")?;
                Kind::Zstd(encoder)
            }
            Compression::Xz => {
                let stream = xz2::stream::Stream::new_easy_encoder(6, xz2::stream::Check::Crc32)
                    .context("cannot start the xz encoder")?;
                Kind::Xz(xz2::write::XzEncoder::new_stream(out, stream))
            }
        }))
    }

    /// Ends the stream, flushes and syncs the file.
    pub fn finish(self) -> Result<Blob> {
        let out = match self.0 {
            Kind::None(w) => w,
            Kind::Gzip(w) => w.finish()?,
            Kind::Zstd(w) => w.finish()?,
            Kind::Xz(w) => w.finish()?,
        };
        let size = out.written();
        let (sha256, buffered) = out.finish();
        let file = buffered.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(Blob { sha256, size })
    }
}

impl Write for Encoder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.0 {
            Kind::None(w) => w.write(buf),
            Kind::Gzip(w) => w.write(buf),
            Kind::Zstd(w) => w.write(buf),
            Kind::Xz(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.0 {
            Kind::None(w) => w.flush(),
            Kind::Gzip(w) => w.flush(),
            Kind::Zstd(w) => w.flush(),
            Kind::Xz(w) => w.flush(),
        }
    }
}

/// What came out of the appliance: the files written (in the order given), and the
/// uncompressed stream's SHA-256 and length.
pub struct Streamed {
    pub files: Vec<Blob>,
    pub sha256: String,
    pub bytes: u64,
}

/// Runs `produce` (an appliance call writing an archive to the path it is given) into a
/// pipe whose other end a thread of ours copies into every encoder. `what` names the
/// stream in progress messages and errors.
pub fn from_guest<E>(
    what: &str,
    encoders: Vec<Encoder>,
    bar: &indicatif::ProgressBar,
    produce: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> Result<Streamed>
where
    anyhow::Error: From<E>,
{
    let (thread_bar, thread_what) = (bar.clone(), what.to_string());
    from_guest_with(what, produce, move |reader| consume(reader, encoders, &thread_what, &thread_bar))
}

/// Runs `produce` into a pipe whose other end `consume` reads on a thread of its own, so
/// the host's work overlaps the appliance's. A consumer that fails closes the pipe, which
/// ends `produce` too; the consumer's error is the one reported.
pub fn from_guest_with<E, T: Send + 'static>(
    what: &str,
    produce: impl FnOnce(&Path) -> std::result::Result<(), E>,
    consume: impl FnOnce(std::io::PipeReader) -> Result<T> + Send + 'static,
) -> Result<T>
where
    anyhow::Error: From<E>,
{
    use std::os::fd::AsRawFd;
    let (reader, writer) = std::io::pipe().context("cannot create a pipe")?;
    let path = PathBuf::from(format!("/dev/fd/{}", writer.as_raw_fd()));
    let drain = std::thread::spawn(move || consume(reader));
    let produced = produce(&path);
    // The last write end: the thread sees the end of the stream.
    drop(writer);
    let consumed = drain.join().map_err(|_| anyhow::anyhow!("the {what} writer thread panicked"))?;
    let value = consumed?;
    produced.map_err(anyhow::Error::from).with_context(|| format!("cannot pack {what}"))?;
    Ok(value)
}

fn consume(
    reader: impl Read,
    mut encoders: Vec<Encoder>,
    what: &str,
    bar: &indicatif::ProgressBar,
) -> Result<Streamed> {
    let mut buf = vec![0u8; 1 << 20];
    let mut reader = Progress::new(reader, 16 << 20, |n| bar.set_message(format!("packing {what}: {} MiB", n >> 20)));
    let mut hash = HashingWriter::<Sha256, _>::new(std::io::sink());
    loop {
        crate::base::interrupt::check()?;
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {what}")),
        };
        hash.write_all(&buf[..n])?;
        for encoder in &mut encoders {
            encoder.write_all(&buf[..n]).with_context(|| format!("cannot write {what}"))?;
        }
    }
    let files = encoders.into_iter().map(Encoder::finish).collect::<Result<Vec<_>>>();
    let bytes = hash.written();
    Ok(Streamed { files: files.with_context(|| format!("cannot write {what}"))?, sha256: hash.finish().0, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn every_encoder_round_trips_and_counts_what_it_wrote() {
        let d = tempfile::tempdir().unwrap();
        let data = b"virt-pipeline ".repeat(10_000);
        for c in [Compression::None, Compression::Gzip, Compression::Zstd, Compression::Xz] {
            let path = d.path().join(format!("x{}", c.suffix()));
            let mut e = Encoder::create(&path, c).unwrap();
            e.write_all(&data).unwrap();
            let blob = e.finish().unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(blob.size, bytes.len() as u64);
            assert_eq!(blob.sha256, hex::encode(Sha256::digest(&bytes)));
            let mut back = Vec::new();
            match c {
                Compression::None => back = bytes,
                Compression::Gzip => {
                    flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut back).unwrap();
                }
                Compression::Zstd => back = zstd::decode_all(&bytes[..]).unwrap(),
                Compression::Xz => {
                    xz2::read::XzDecoder::new(&bytes[..]).read_to_end(&mut back).unwrap();
                    // Byte 7 of the stream header holds the check type: 0x01 is CRC32.
                    assert_eq!(std::fs::read(&path).unwrap()[7], 0x01, "xz with CRC32 for the kernel");
                }
            }
            assert_eq!(back, data, "{c:?}");
        }
    }

    #[test]
    fn compression_names() {
        assert_eq!(Compression::parse("zstd"), Some(Compression::Zstd));
        assert_eq!(Compression::parse("bzip2"), None);
    }
}
