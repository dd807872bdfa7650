//! Adapters for data passing through: a writer that hashes and counts it, and a reader or
//! writer that counts it for a progress message and stops when the run is interrupted.

use sha2::Digest;
use std::io::{Read, Write};

/// A writer that hashes and counts what passes through it to `inner` (a download kept and
/// checked in one pass, an artifact's digest taken while it is written).
pub struct HashingWriter<D: Digest, W> {
    inner: W,
    hasher: D,
    written: u64,
}

impl<D: Digest, W: Write> HashingWriter<D, W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: D::new(), written: 0 }
    }

    /// The bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The digest of everything written, hex-encoded, and the writer.
    pub fn finish(self) -> (String, W) {
        (hex::encode(self.hasher.finalize()), self.inner)
    }
}

impl<D: Digest, W: Write> Write for HashingWriter<D, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader or writer that counts the bytes through it, calls `report` with the count each
/// time another `every` bytes have passed (to set a progress bar's message without redrawing
/// it for every buffer), and fails the next read or write once the run is interrupted.
pub struct Progress<T, F: FnMut(u64)> {
    inner: T,
    done: u64,
    shown: u64,
    every: u64,
    report: F,
}

impl<T, F: FnMut(u64)> Progress<T, F> {
    pub fn new(inner: T, every: u64, report: F) -> Self {
        Progress { inner, done: 0, shown: 0, every, report }
    }

    /// The bytes through it so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    pub fn into_inner(self) -> T {
        self.inner
    }

    fn passed(&mut self, n: usize) {
        self.done += n as u64;
        if self.done - self.shown >= self.every {
            self.shown = self.done;
            (self.report)(self.done);
        }
    }
}

fn check_interrupted() -> std::io::Result<()> {
    if super::interrupt::interrupted() {
        return Err(std::io::Error::other("interrupted"));
    }
    Ok(())
}

impl<R: Read, F: FnMut(u64)> Read for Progress<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        check_interrupted()?;
        let n = self.inner.read(buf)?;
        self.passed(n);
        Ok(n)
    }
}

impl<W: Write, F: FnMut(u64)> Write for Progress<W, F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        check_interrupted()?;
        let n = self.inner.write(buf)?;
        self.passed(n);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_counts_and_hashes_what_passes() {
        let mut w = HashingWriter::<sha2::Sha256, _>::new(Vec::new());
        w.write_all(b"abc").unwrap();
        assert_eq!(w.written(), 3);
        let (hex, inner) = w.finish();
        assert_eq!(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(inner, b"abc");
    }

    #[test]
    fn progress_reports_every_so_many_bytes() {
        let mut seen = Vec::new();
        let done = {
            let mut r = Progress::new(&[7u8; 10][..], 4, |n| seen.push(n));
            let mut buf = [0u8; 3];
            while r.read(&mut buf).unwrap() > 0 {}
            r.done()
        };
        assert_eq!((done, seen), (10, vec![6, 10]));
    }
}
