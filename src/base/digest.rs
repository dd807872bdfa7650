//! Hashing whole files in 1 MiB reads, with any RustCrypto digest.

use anyhow::{Context, Result};
use sha2::Digest;
use std::io::Read;
use std::path::Path;

/// The file's digest, hex-encoded.
pub fn file_hex<D: Digest>(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = D::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A writer that hashes what passes through it to `inner` (a download kept and checked in
/// one pass).
pub struct HashingWriter<D: Digest, W> {
    inner: W,
    hasher: D,
}

impl<D: Digest, W: std::io::Write> HashingWriter<D, W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: D::new() }
    }

    /// The digest of everything written, hex-encoded, and the writer.
    pub fn finish(self) -> (String, W) {
        (hex::encode(self.hasher.finalize()), self.inner)
    }
}

impl<D: Digest, W: std::io::Write> std::io::Write for HashingWriter<D, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
