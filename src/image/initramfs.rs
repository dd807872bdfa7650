//! A tar stream rewritten as a newc cpio archive, the format the kernel unpacks as its
//! initramfs. libguestfs's own `cpio-out` runs GNU cpio with 512-byte blocks, which crawl
//! through the appliance's channel; `tar-out` streams at full speed, and the conversion here
//! costs next to nothing.
//!
//! Hard links: the kernel links an entry to an earlier one with the same inode number only
//! if that earlier entry said `nlink >= 2` (it remembers only those). A stream cannot know
//! whether a link to a file follows, so every regular file is written with `nlink = 2`; the
//! kernel uses the field for nothing else. Extended attributes are dropped: newc has none.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::Path;

const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;
const S_IFIFO: u32 = 0o010000;

pub struct NewcWriter<W: Write> {
    out: W,
    next_ino: u32,
    /// Inode numbers of the regular files written, by name, for hard links to them.
    inodes: HashMap<String, u32>,
}

impl<W: Write> NewcWriter<W> {
    pub fn new(out: W) -> NewcWriter<W> {
        NewcWriter { out, next_ino: 1, inodes: HashMap::new() }
    }

    /// Copies every entry of the tar stream, except the names in `skip`; a regular file named
    /// in `replace` gets that content instead of its own. Names are relative (`etc/fstab`).
    pub fn copy_tar(&mut self, tar: impl Read, replace: &BTreeMap<String, Vec<u8>>, skip: &[&str]) -> Result<()> {
        let mut archive = tar::Archive::new(tar);
        for entry in archive.entries().context("cannot read the tar stream")? {
            crate::base::interrupt::check()?;
            let mut entry = entry.context("cannot read the tar stream")?;
            let name = relative_name(&entry.path().context("a tar entry without a name")?);
            if name.is_empty() || skip.contains(&name.as_str()) {
                continue;
            }
            let header = entry.header();
            let perm = header.mode()? & 0o7777;
            let (uid, gid) = (header.uid()? as u32, header.gid()? as u32);
            let mtime = header.mtime()? as u32;
            let entry_type = header.entry_type();
            // Only device entries carry numbers there (GNU tar leaves the fields empty otherwise).
            let device = match entry_type {
                tar::EntryType::Char | tar::EntryType::Block => {
                    (header.device_major()?.unwrap_or(0), header.device_minor()?.unwrap_or(0))
                }
                _ => (0, 0),
            };
            let meta = Meta { perm, uid, gid, mtime };
            match entry_type {
                tar::EntryType::Regular | tar::EntryType::Continuous => match replace.get(&name) {
                    Some(data) => self.file(&name, &meta, data.len() as u64, &mut &data[..])?,
                    None => {
                        let size = entry.size();
                        self.file(&name, &meta, size, &mut entry)?
                    }
                },
                tar::EntryType::Directory => self.node(&name, S_IFDIR | perm, &meta, (0, 0), b"")?,
                tar::EntryType::Symlink => {
                    let target = entry.link_name()?.context("a symbolic link without a target")?;
                    self.node(&name, S_IFLNK | 0o777, &meta, (0, 0), target.to_string_lossy().as_bytes())?
                }
                tar::EntryType::Link => {
                    let target = entry.link_name()?.context("a hard link without a target")?;
                    let target = relative_name(&target);
                    let Some(&ino) = self.inodes.get(&target) else {
                        bail!("hard link {name}: its target {target} is not in the archive before it");
                    };
                    self.header(&name, ino, S_IFREG | perm, &meta, (0, 0), 0)?.finish()?;
                }
                tar::EntryType::Char => self.node(&name, S_IFCHR | perm, &meta, device, b"")?,
                tar::EntryType::Block => self.node(&name, S_IFBLK | perm, &meta, device, b"")?,
                tar::EntryType::Fifo => self.node(&name, S_IFIFO | perm, &meta, (0, 0), b"")?,
                // Extension headers the tar reader has not folded into an entry: nothing to unpack.
                _ => continue,
            }
        }
        // The reader stops at the end-of-archive blocks; tar pads its output past them, and a
        // writer (the appliance) whose padding is not read would fail with a broken pipe.
        std::io::copy(&mut archive.into_inner(), &mut std::io::sink()).context("cannot read the tar stream")?;
        Ok(())
    }

    /// A regular file owned by root, written after the copied tree (it replaces an entry
    /// of the same name when the kernel unpacks).
    pub fn add_file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<()> {
        let meta = Meta { perm, uid: 0, gid: 0, mtime: 0 };
        self.file(name, &meta, data.len() as u64, &mut &data[..])
    }

    /// The writer the archive goes to.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// Writes the trailer; returns the writer.
    pub fn finish(self) -> Result<W> {
        Ok(cpio::newc::trailer(self.out)?)
    }

    fn file(&mut self, name: &str, meta: &Meta, size: u64, data: &mut impl Read) -> Result<()> {
        let Ok(size32) = u32::try_from(size) else {
            bail!("{name} is {size} bytes: a newc cpio archive holds files up to 4 GiB");
        };
        let ino = self.next_ino();
        self.inodes.insert(name.to_string(), ino);
        let mut w = self.header(name, ino, S_IFREG | meta.perm, meta, (0, 0), size32)?;
        let copied = std::io::copy(&mut data.take(size), &mut w).with_context(|| format!("cannot copy {name}"))?;
        if copied != size {
            bail!("{name}: the tar stream ended inside the file");
        }
        w.finish()?;
        Ok(())
    }

    fn node(&mut self, name: &str, mode: u32, meta: &Meta, device: (u32, u32), data: &[u8]) -> Result<()> {
        let ino = self.next_ino();
        let mut w = self.header(name, ino, mode, meta, device, data.len() as u32)?;
        w.write_all(data)?;
        w.finish()?;
        Ok(())
    }

    fn header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        meta: &Meta,
        (major, minor): (u32, u32),
        size: u32,
    ) -> Result<cpio::newc::Writer<&mut W>> {
        let nlink = if mode & 0o170000 == S_IFREG { 2 } else { 1 };
        Ok(cpio::newc::Builder::new(name)
            .ino(ino)
            .mode(mode)
            .uid(meta.uid)
            .gid(meta.gid)
            .mtime(meta.mtime)
            .nlink(nlink)
            .rdev_major(major)
            .rdev_minor(minor)
            .write(&mut self.out, size))
    }

    fn next_ino(&mut self) -> u32 {
        self.next_ino += 1;
        self.next_ino
    }
}

struct Meta {
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: u32,
}

/// `./etc/fstab`, `/etc/fstab/` → `etc/fstab`; `./` → ``.
fn relative_name(path: &Path) -> String {
    let text = path.to_string_lossy();
    let mut name = text.as_ref();
    loop {
        let stripped = name.trim_start_matches('/');
        let stripped = stripped.strip_prefix("./").unwrap_or(stripped);
        if stripped == name {
            break;
        }
        name = stripped;
    }
    let name = name.trim_end_matches('/');
    if name == "." {
        String::new()
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of a small tree made by GNU tar, as libguestfs's tar-out makes it.
    fn sample_tar(dir: &Path) -> Vec<u8> {
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/fstab"), "UUID=1 / ext4 defaults 0 1\n").unwrap();
        std::fs::write(root.join("etc/hostname"), "box\n").unwrap();
        std::fs::hard_link(root.join("etc/hostname"), root.join("etc/hostname.link")).unwrap();
        std::os::unix::fs::symlink("etc/hostname", root.join("hostname")).unwrap();
        std::fs::write(root.join("init"), "the image's own").unwrap();
        let out = std::process::Command::new("tar")
            .args(["--numeric-owner", "-C"])
            .arg(&root)
            .args(["-cf", "-", "."])
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    }

    fn read_back(archive: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let mut rest = archive;
        let mut found = Vec::new();
        loop {
            let mut reader = cpio::newc::Reader::new(rest).unwrap();
            if reader.entry().is_trailer() {
                return found;
            }
            let e = reader.entry();
            let (name, mode, ino, nlink) = (e.name().to_string(), e.mode(), e.ino(), e.nlink());
            let mut data = Vec::new();
            reader.read_to_end(&mut data).unwrap();
            found.push((name, mode, ino, nlink, data));
            rest = reader.finish().unwrap();
        }
    }

    #[test]
    fn a_tar_becomes_newc_with_links_replacements_and_extra_files() {
        let d = tempfile::tempdir().unwrap();
        let tar = sample_tar(d.path());
        let mut w = NewcWriter::new(Vec::new());
        let replace: BTreeMap<String, Vec<u8>> = [("etc/fstab".to_string(), b"# off\n".to_vec())].into();
        w.copy_tar(&tar[..], &replace, &["init"]).unwrap();
        w.add_file("init", 0o755, b"#!/bin/sh\n").unwrap();
        let entries = read_back(&w.finish().unwrap());
        let get = |n: &str| entries.iter().find(|e| e.0 == n).unwrap_or_else(|| panic!("{n}: {entries:?}"));
        assert!(entries.iter().all(|e| !e.0.starts_with('.') && !e.0.starts_with('/')), "relative names");
        assert_eq!(get("etc").1 & 0o170000, S_IFDIR);
        assert_eq!(get("etc/fstab").4, b"# off\n", "replaced");
        assert_eq!(get("hostname").1 & 0o170000, S_IFLNK);
        assert_eq!(get("hostname").4, b"etc/hostname");
        // Whichever of the two names tar wrote first carries the data; the other links to it.
        let (a, b) = (get("etc/hostname"), get("etc/hostname.link"));
        assert_eq!(a.2, b.2, "one inode");
        assert!(a.3 >= 2 && b.3 >= 2, "nlink lets the kernel link them");
        assert_eq!([a.4.clone(), b.4.clone()].concat(), b"box\n");
        // The image's own /init is left out; ours comes last.
        let inits: Vec<_> = entries.iter().filter(|e| e.0 == "init").collect();
        assert_eq!(inits.len(), 1);
        assert_eq!((inits[0].1, &inits[0].4[..]), (S_IFREG | 0o755, &b"#!/bin/sh\n"[..]));
        assert_eq!(entries.last().unwrap().0, "init");
    }

    #[test]
    fn gnu_cpio_reads_what_is_written() {
        let d = tempfile::tempdir().unwrap();
        let tar = sample_tar(d.path());
        let mut w = NewcWriter::new(Vec::new());
        w.copy_tar(&tar[..], &BTreeMap::new(), &[]).unwrap();
        let archive = w.finish().unwrap();
        let out_dir = d.path().join("out");
        std::fs::create_dir(&out_dir).unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-i", "--quiet", "-d", "--no-absolute-filenames"])
            .current_dir(&out_dir)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("cpio is installed by scripts/install-deps");
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read_to_string(out_dir.join("etc/hostname.link")).unwrap(), "box\n");
        assert_eq!(std::fs::read_link(out_dir.join("hostname")).unwrap(), Path::new("etc/hostname"));
        use std::os::unix::fs::MetadataExt;
        let (a, b) = (
            std::fs::metadata(out_dir.join("etc/hostname")).unwrap(),
            std::fs::metadata(out_dir.join("etc/hostname.link")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "a hard link again");
    }

    #[test]
    fn the_tar_stream_is_read_to_its_end() {
        let d = tempfile::tempdir().unwrap();
        let tar = sample_tar(d.path());
        assert_eq!(tar.len() % 10240, 0, "GNU tar pads to whole records");
        let mut rest = &tar[..];
        NewcWriter::new(Vec::new()).copy_tar(&mut rest, &BTreeMap::new(), &[]).unwrap();
        assert!(rest.is_empty(), "{} bytes left unread", rest.len());
    }

    #[test]
    fn names_are_relative() {
        assert_eq!(relative_name(Path::new("./etc/fstab")), "etc/fstab");
        assert_eq!(relative_name(Path::new("./")), "");
        assert_eq!(relative_name(Path::new("/usr/bin/")), "usr/bin");
        assert_eq!(relative_name(Path::new("././x")), "x");
    }
}
