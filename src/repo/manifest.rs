//! Package manifests: what each published revision contains (every installed package with
//! its version and architecture) and where it came from (pipeline, layer key, tool, time),
//! kept beside the image as `NAME-rN.manifest.asc`, a JSON document clearsigned by the
//! repository's key. It has its own signature rather than a line in the index, so the index
//! stays exactly what virt-builder reads, and a manifest stays verifiable after its revision
//! left the index (for `repo diff` against older revisions). It names the image's sha512, so
//! it cannot be moved to another image.

use crate::base::sign;
use crate::guest::Package;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const SUFFIX: &str = ".manifest.asc";

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub entry: String,
    pub revision: u64,
    pub image_sha512: String,
    /// The disk's size and the compressed file's.
    pub size: u64,
    pub compressed_size: u64,
    pub provenance: Provenance,
    /// Sorted by name, then architecture.
    pub packages: Vec<Package>,
    /// Why `packages` is empty though the image has an operating system: its package
    /// database could not be read at publish time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages_unreadable: Option<String>,
    /// The operating system inspection found (none on a disk without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<OperatingSystem>,
    /// The SBOMs published beside the image (`NAME-rN.spdx.json`, `NAME-rN.cdx.json`): file
    /// name and sha512, so this signature covers them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub documents: BTreeMap<String, String>,
}

/// The operating system of a published image, as inspection names it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OperatingSystem {
    /// libguestfs's distribution name: `debian`, `ubuntu`, `rocky`, `fedora`, ...
    pub distro: String,
    /// `12`, `22.4`.
    pub version: String,
    pub arch: String,
    /// `deb`, `rpm`, ...
    pub package_format: String,
    pub product_name: String,
}

impl Manifest {
    /// The package list, unless it could not be read at publish time.
    pub fn package_list(&self) -> Option<&[Package]> {
        self.packages_unreadable.is_none().then_some(self.packages.as_slice())
    }
}

/// Where a revision came from.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Provenance {
    pub pipeline: String,
    /// The cache key of the layer that was published.
    pub layer: String,
    pub tool: String,
    /// RFC 3339, UTC.
    pub built: String,
}

/// The manifest file of revision `revision` of `name`.
pub fn path(dir: &Path, name: &str, revision: u64) -> PathBuf {
    dir.join(format!("{name}-r{revision}{SUFFIX}"))
}

/// The manifest file kept beside an image file `NAME-rN.xz`.
pub fn path_of_image(image: &Path) -> PathBuf {
    let s = image.to_string_lossy();
    PathBuf::from(format!("{}{SUFFIX}", s.strip_suffix(".xz").unwrap_or(&s)))
}

/// Signs and writes the manifest (atomically).
pub fn write(dir: &Path, manifest: &Manifest, fingerprint: &str) -> Result<()> {
    let mut text = serde_json::to_string_pretty(manifest)?;
    text.push('\n');
    let signed = sign::clearsign(fingerprint, text.as_bytes())?;
    crate::base::atomic::write(&path(dir, &manifest.entry, manifest.revision), &signed)
}

/// Reads a revision's manifest, verified against the pinned key: the signature, and that it
/// is the manifest of that entry and revision.
pub fn read(dir: &Path, name: &str, revision: u64, pin: &str, published_key: Option<&[u8]>) -> Result<Manifest> {
    let file = path(dir, name, revision);
    let signed = crate::download::read_small_file(&file)
        .with_context(|| format!("{name} revision {revision} has no package manifest"))?;
    let text = sign::verify_pinned(&signed, pin, published_key)
        .with_context(|| format!("{}: signature check failed", file.display()))?;
    let m: Manifest = serde_json::from_slice(&text).with_context(|| format!("{}: not a manifest", file.display()))?;
    if m.entry != name || m.revision != revision {
        bail!("{}: it is the manifest of {} revision {}", file.display(), m.entry, m.revision);
    }
    Ok(m)
}

/// The manifest's content without checking its signature: for the repository's own web page,
/// which the server renders from its own files (clients verify what they download).
pub fn read_unverified(dir: &Path, name: &str, revision: u64) -> Option<Manifest> {
    let signed = crate::download::read_small_file(&path(dir, name, revision)).ok()?;
    let text = String::from_utf8(signed).ok()?;
    let body = text.split_once("\n\n")?.1;
    let body = body.split("\n-----BEGIN PGP SIGNATURE-----").next()?;
    // Clearsigning dash-escapes lines that start with a dash.
    let body: Vec<&str> = body.lines().map(|l| l.strip_prefix("- ").unwrap_or(l)).collect();
    serde_json::from_str(&body.join("\n")).ok()
}

/// The revisions of `name` that have a manifest in `dir`, ascending.
pub fn revisions(dir: &Path, name: &str) -> Vec<u64> {
    let prefix = format!("{name}-r");
    let mut out: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let f = e.file_name().to_string_lossy().into_owned();
            f.strip_prefix(&prefix)?.strip_suffix(SUFFIX)?.parse().ok()
        })
        .collect();
    out.sort_unstable();
    out
}

/// What changed between two package lists.
#[derive(Debug, Default, PartialEq, serde::Serialize)]
pub struct Diff {
    pub added: Vec<Package>,
    pub removed: Vec<Package>,
    pub changed: Vec<Change>,
}

#[derive(Debug, PartialEq, serde::Serialize)]
pub struct Change {
    pub name: String,
    pub arch: String,
    pub old: String,
    pub new: String,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Packages added, removed, and changed (same name and architecture, another version).
pub fn diff(old: &[Package], new: &[Package]) -> Diff {
    let by_key = |list: &[Package]| -> BTreeMap<(String, String), Package> {
        list.iter().map(|p| ((p.name.clone(), p.arch.clone()), p.clone())).collect()
    };
    let (old, new) = (by_key(old), by_key(new));
    let mut d = Diff::default();
    for (key, p) in &new {
        match old.get(key) {
            None => d.added.push(p.clone()),
            Some(o) if o.version != p.version => d.changed.push(Change {
                name: p.name.clone(),
                arch: p.arch.clone(),
                old: o.version.clone(),
                new: p.version.clone(),
            }),
            _ => {}
        }
    }
    d.removed = old.iter().filter(|(k, _)| !new.contains_key(*k)).map(|(_, p)| p.clone()).collect();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, version: &str) -> Package {
        Package { name: name.into(), version: version.into(), arch: "amd64".into(), ..Default::default() }
    }

    #[test]
    fn a_diff_names_added_removed_and_changed_packages() {
        let old = [p("bash", "5.2.15-2+b2"), p("less", "590-2"), p("openssl", "3.0.11-1~deb12u2")];
        let new = [p("bash", "5.2.15-2+b2"), p("openssl", "3.0.15-1~deb12u1"), p("tree", "2.1.0-1")];
        let d = diff(&old, &new);
        assert_eq!(d.added, [p("tree", "2.1.0-1")]);
        assert_eq!(d.removed, [p("less", "590-2")]);
        assert_eq!(
            d.changed,
            [Change {
                name: "openssl".into(),
                arch: "amd64".into(),
                old: "3.0.11-1~deb12u2".into(),
                new: "3.0.15-1~deb12u1".into()
            }]
        );
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn manifest_files_sit_beside_their_images() {
        let dir = Path::new("/r");
        assert_eq!(path(dir, "debian-12", 7), Path::new("/r/debian-12-r7.manifest.asc"));
        assert_eq!(path_of_image(Path::new("/r/debian-12-r7.xz")), Path::new("/r/debian-12-r7.manifest.asc"));
    }
}
