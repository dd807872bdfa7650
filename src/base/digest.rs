//! Hashing whole files in 1 MiB reads, with any RustCrypto digest (data passing through is
//! hashed by `stream::HashingWriter`).

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
