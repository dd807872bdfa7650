//! The `box.json` catalogue `vagrant box add` reads: this export's version and the earlier
//! ones still in `dest`.

use super::{version_numbers, CATALOGUE};
use crate::stages::export::MANIFEST;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Catalogue {
    pub(super) name: String,
    #[serde(default)]
    pub(super) description: String,
    pub(super) versions: Vec<CatalogueVersion>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct CatalogueVersion {
    pub(super) version: String,
    pub(super) providers: Vec<CatalogueProvider>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct CatalogueProvider {
    pub(super) name: String,
    pub(super) url: String,
    pub(super) checksum_type: String,
    pub(super) checksum: String,
}

/// The newest `count` earlier versions of the same box that the previous export at `dest`
/// listed and whose boxes are still there as it wrote them (the size its manifest recorded):
/// linked into `out` (the same filesystem) and listed again with `base_url`. Anything else
/// in the earlier catalogue is dropped, with a line in the log.
pub(super) fn carry_earlier(
    dest: &Path,
    out: &Path,
    name: &str,
    version: &str,
    count: usize,
    base_url: &str,
    log: &crate::base::log::StageLog,
) -> Result<Vec<CatalogueVersion>> {
    let Ok(text) = std::fs::read(dest.join(CATALOGUE)) else {
        return Ok(Vec::new());
    };
    let Ok(earlier) = serde_json::from_slice::<Catalogue>(&text) else {
        log.line(format!("{}: not a catalogue; earlier versions are not carried over", dest.join(CATALOGUE).display()));
        return Ok(Vec::new());
    };
    if earlier.name != name {
        log.line(format!(
            "the earlier catalogue is of box {}, not {name}: its versions are not carried over",
            earlier.name
        ));
        return Ok(Vec::new());
    }
    let sizes: BTreeMap<String, u64> = std::fs::read(dest.join(MANIFEST))
        .ok()
        .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
        .and_then(|m| serde_json::from_value::<Vec<(String, u64)>>(m["files"].clone()).ok())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut versions: Vec<CatalogueVersion> = earlier.versions.into_iter().filter(|v| v.version != version).collect();
    versions.sort_by_key(|v| std::cmp::Reverse(version_numbers(&v.version)));
    let mut kept = Vec::new();
    for mut v in versions {
        let files: Vec<String> =
            v.providers.iter().map(|p| p.url.rsplit('/').next().unwrap_or_default().to_string()).collect();
        let intact = !files.is_empty()
            && files.iter().all(|f| {
                !f.is_empty()
                    && !f.starts_with('.')
                    && sizes.get(f).is_some_and(|size| {
                        std::fs::symlink_metadata(dest.join(f)).is_ok_and(|m| m.is_file() && m.len() == *size)
                    })
            });
        if kept.len() == count || !intact {
            let why = if intact { "beyond keep" } else { "its boxes are no longer in dest as exported" };
            log.line(format!("earlier version {}: dropped ({why})", v.version));
            continue;
        }
        for (p, f) in v.providers.iter_mut().zip(&files) {
            std::fs::hard_link(dest.join(f), out.join(f))
                .or_else(|_| std::fs::copy(dest.join(f), out.join(f)).map(|_| ()))
                .with_context(|| format!("cannot carry {} over from the earlier export", dest.join(f).display()))?;
            p.url = format!("{base_url}/{f}");
        }
        log.line(format!("earlier version {}: kept", v.version));
        kept.push(v);
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An earlier export's versions: kept while their boxes are in dest as exported, newest
    /// first, at most `count`, linked into the new directory with the new base URL.
    #[test]
    fn earlier_versions_are_carried_while_their_boxes_are_intact() {
        let d = tempfile::tempdir().unwrap();
        let (dest, out) = (d.path().join("dest"), d.path().join("out"));
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        let entry = |v: &str| CatalogueVersion {
            version: v.into(),
            providers: vec![CatalogueProvider {
                name: "libvirt".into(),
                url: format!("file:///old/libvirt-{v}.box"),
                checksum_type: "sha256".into(),
                checksum: "c".repeat(64),
            }],
        };
        let earlier = Catalogue {
            name: "acme/debian".into(),
            description: String::new(),
            versions: ["1.0", "3.0", "2.0", "4.0", "5.0"].into_iter().map(entry).collect(),
        };
        std::fs::write(dest.join(CATALOGUE), serde_json::to_vec(&earlier).unwrap()).unwrap();
        let mut files = Vec::new();
        for v in ["1.0", "2.0", "3.0", "4.0", "5.0"] {
            let f = format!("libvirt-{v}.box");
            std::fs::write(dest.join(&f), v).unwrap();
            files.push((f, 3u64));
        }
        std::fs::write(dest.join("libvirt-4.0.box"), "changed").unwrap(); // not as exported
        std::fs::write(dest.join(MANIFEST), serde_json::to_vec(&serde_json::json!({ "files": files })).unwrap())
            .unwrap();
        let log = crate::base::log::StageLog::create(&d.path().join("log")).unwrap();

        let kept = carry_earlier(&dest, &out, "acme/debian", "5.0", 2, "https://boxes.example.net/d", &log).unwrap();
        let versions: Vec<&str> = kept.iter().map(|v| v.version.as_str()).collect();
        assert_eq!(versions, ["3.0", "2.0"], "5.0 is this export's, 4.0 changed, 1.0 is beyond keep");
        assert_eq!(kept[0].providers[0].url, "https://boxes.example.net/d/libvirt-3.0.box");
        assert_eq!(std::fs::read_to_string(out.join("libvirt-3.0.box")).unwrap(), "3.0");
        assert!(!out.join("libvirt-1.0.box").exists() && !out.join("libvirt-4.0.box").exists());
        let logged = std::fs::read_to_string(d.path().join("log")).unwrap();
        assert!(
            logged.contains("earlier version 4.0: dropped (its boxes are no longer in dest as exported)"),
            "{logged}"
        );

        let other = carry_earlier(&dest, &d.path().join("out2"), "acme/other", "6.0", 2, "x", &log).unwrap();
        assert!(other.is_empty(), "another box's versions are not carried");
    }
}
