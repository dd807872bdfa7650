//! Injecting files into an installer's initrd the way virt-install --initrd-inject does: the
//! original archive untouched, followed by a newc cpio archive holding the files. The kernel
//! unpacks concatenated archives in order, so the files appear in the installer's root.

use anyhow::{Context, Result};
use std::io::{Cursor, Write};
use std::path::Path;

pub struct Member {
    /// Path inside the initrd's root, without a leading slash (`preseed.cfg`).
    pub name: String,
    pub data: Vec<u8>,
}

/// Writes `original` followed by a cpio archive of `members` to `out`.
pub fn append_members(original: &Path, members: &[Member], out: &Path) -> Result<()> {
    let mut bytes = std::fs::read(original).with_context(|| format!("cannot read initrd {}", original.display()))?;
    // Start the new archive on a 4-byte boundary; the kernel skips the zero padding.
    while bytes.len() % 4 != 0 {
        bytes.push(0);
    }
    let inputs = members.iter().enumerate().map(|(i, m)| {
        let builder = cpio::newc::Builder::new(m.name.trim_start_matches('/'))
            .ino(0x7000_0000 + i as u32)
            .mode(0o100644)
            .nlink(1);
        (builder, Cursor::new(m.data.clone()))
    });
    let archive = cpio::write_cpio(inputs, Vec::new())?;
    let mut f = std::fs::File::create(out).with_context(|| format!("cannot write {}", out.display()))?;
    f.write_all(&bytes)?;
    f.write_all(&archive)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn members_follow_the_untouched_original() {
        let dir = tempfile::tempdir().unwrap();
        let original = dir.path().join("initrd.gz");
        let orig_bytes: Vec<u8> = (0..1001u32).map(|i| (i * 7 % 256) as u8).collect();
        std::fs::write(&original, &orig_bytes).unwrap();
        let out = dir.path().join("initrd.injected");
        let preseed = b"d-i debian-installer/locale string en_US\n".to_vec();
        append_members(
            &original,
            &[
                Member { name: "preseed.cfg".into(), data: preseed.clone() },
                Member { name: "/extra.sh".into(), data: b"#!/bin/sh\n".to_vec() },
            ],
            &out,
        )
        .unwrap();
        let all = std::fs::read(&out).unwrap();
        assert_eq!(&all[..orig_bytes.len()], &orig_bytes[..], "the original archive is unchanged");
        assert_eq!(std::fs::read(&original).unwrap(), orig_bytes, "the original file is untouched");
        let mut rest = &all[1004..];
        let mut found = Vec::new();
        loop {
            let reader = cpio::newc::Reader::new(rest).unwrap();
            if reader.entry().is_trailer() {
                break;
            }
            let name = reader.entry().name().to_string();
            let mode = reader.entry().mode();
            let mut data = Vec::new();
            let mut reader = reader;
            reader.read_to_end(&mut data).unwrap();
            found.push((name, mode, data));
            rest = reader.finish().unwrap();
        }
        assert_eq!(found[0], ("preseed.cfg".to_string(), 0o100644, preseed));
        assert_eq!(found[1].0, "extra.sh");
    }
}
