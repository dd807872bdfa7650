//! The layer cache. A layer is `<key>.qcow2` plus `<key>.json` (what made it) in one
//! directory; an overlay names its backing file (the parent layer) by absolute path. Layers
//! are written under a temporary name and moved into place on success: a failed stage leaves
//! nothing behind (unless `run --keep-failed` asks to keep it, under `failed/`). Two runs in
//! one work directory may build the same key at once: the first layer committed stays
//! (another run's overlays may already name it as their backing file) and the later one is
//! dropped. Every run holds the cache's lock shared for its whole length and `gc` holds it
//! exclusively, so gc never removes a layer a running build stands on.

use crate::base::scratch;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A finished layer in the cache.
#[derive(Debug, Clone)]
pub struct Layer {
    pub key: String,
    pub path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerMeta {
    pub key: String,
    #[serde(default)]
    pub parent: Option<String>,
    pub pipeline: String,
    pub stage_index: usize,
    pub kind: String,
    pub created: String,
    /// What the guest inspection found, when the stage inspected it.
    #[serde(default)]
    pub inspection: Option<serde_json::Value>,
    /// The upstream states the layer was built with (mirror release files, validators).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstream: crate::upstream::States,
    /// Names this build of the layer (random): a layer built again under the same key gets
    /// another, and an overlay is only stacked on the build it was made on (remote cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

pub struct Cache {
    pub dir: PathBuf,
    /// Opened for `plan`: nothing is created.
    read_only: bool,
}

/// What `gc` removed.
#[derive(Debug, Default)]
pub struct GcReport {
    pub layers: Vec<String>,
    /// Output (publish, export, check) and upstream records.
    pub outputs: usize,
    pub downloads: usize,
    pub scratch: usize,
    /// Stage log directories (one per pipeline run) under WORK_DIR/logs.
    pub logs: usize,
    /// Rebuild reports under WORK_DIR/reports.
    pub reports: usize,
    /// Layers of failed stages kept by `run --keep-failed`.
    pub failed: usize,
}

/// A failed stage's layer as `run --keep-failed` keeps it: `failed/NAME.qcow2` in the cache
/// directory (an overlay still naming its parent layer, which `gc` keeps while it stays)
/// with this record as `failed/NAME.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeptFailure {
    pub pipeline: String,
    /// 1-based, as the plan numbers stages.
    pub stage: usize,
    pub kind: String,
    /// The layer it was made on (none for an install's own disk).
    pub parent: Option<String>,
    /// The failed stage's full log.
    pub log: PathBuf,
    pub failed: String,
}

/// A file a stage keeps beside a layer for as long as the layer is cached (what it read from
/// the layer once, such as publish's package list): `KEY.NAME.sidecar.json` next to
/// `KEY.qcow2`. `gc` removes it with the layer.
pub fn sidecar(layer: &Path, name: &str) -> PathBuf {
    layer.with_extension(format!("{name}{SIDECAR_SUFFIX}"))
}

const SIDECAR_SUFFIX: &str = ".sidecar.json";

impl Cache {
    /// Every sidecar file in the cache (see [`sidecar`]), read once for a whole `gc`.
    fn sidecars(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                // `KEY.packages.json`: the package list as earlier versions named it.
                name.ends_with(SIDECAR_SUFFIX) || name.ends_with(".packages.json")
            })
            .collect()
    }

    pub fn open(work_dir: &Path) -> Result<Cache> {
        let dir = work_dir.join("layers");
        for sub in ["outputs", "upstream"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create cache directory {}", dir.display()))?;
        }
        // Absolute, so printed layer paths and backing files work from any directory.
        Ok(Cache { dir: std::fs::canonicalize(&dir)?, read_only: false })
    }

    /// The cache as it is, creating nothing (for `plan`, which writes nothing): a work
    /// directory that does not exist yet is an empty cache.
    pub fn open_read_only(work_dir: &Path) -> Result<Cache> {
        let dir = work_dir.join("layers");
        let dir = match std::fs::canonicalize(&dir) {
            Ok(d) => d,
            Err(_) => std::path::absolute(&dir)?,
        };
        Ok(Cache { dir, read_only: true })
    }

    pub fn layer_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.qcow2"))
    }

    fn meta_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// Where a stage writes its layer while it runs; removed if the stage fails.
    pub fn temp_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!(".tmp-{key}-{}.qcow2", std::process::id()))
    }

    pub fn get(&self, key: &str) -> Option<Layer> {
        let path = self.layer_path(key);
        (path.exists() && self.meta_path(key).exists()).then(|| Layer { key: key.to_string(), path })
    }

    pub fn meta(&self, key: &str) -> Option<LayerMeta> {
        serde_json::from_slice(&std::fs::read(self.meta_path(key)).ok()?).ok()
    }

    /// Marks a cached layer as used now, so `gc` keeps what nightly runs still reuse.
    pub fn touch(&self, key: &str) {
        if let Ok(f) = std::fs::File::options().append(true).open(self.meta_path(key)) {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    /// Moves a finished temporary layer into place under its final name, never over a layer
    /// already there: when another run committed this key first, its layer is kept and
    /// returned, and this one is removed. The metadata follows the image; a layer is visible
    /// (`get`) only with both.
    pub fn commit(&self, temp: &Path, meta: &LayerMeta) -> Result<Layer> {
        let path = self.layer_path(&meta.key);
        let layer = Layer { key: meta.key.clone(), path: path.clone() };
        // A hard link fails where the name exists; a rename would replace it.
        match std::fs::hard_link(temp, &path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                std::fs::remove_file(temp)?;
                if !self.meta_path(&meta.key).exists() {
                    // The other run is between its image and its metadata; either is this key.
                    crate::base::atomic::write(&self.meta_path(&meta.key), &serde_json::to_vec_pretty(meta)?)?;
                }
                return Ok(layer);
            }
            Err(e) => return Err(e).with_context(|| format!("cannot move layer into {}", path.display())),
        }
        crate::base::atomic::write(&self.meta_path(&meta.key), &serde_json::to_vec_pretty(meta)?)?;
        std::fs::remove_file(temp)?;
        Ok(layer)
    }

    /// Moves a finished temporary layer into place over any layer of its key (`--no-cache`:
    /// the user asked for this build).
    pub fn replace(&self, temp: &Path, meta: &LayerMeta) -> Result<Layer> {
        crate::base::atomic::write(&self.meta_path(&meta.key), &serde_json::to_vec_pretty(meta)?)?;
        let path = self.layer_path(&meta.key);
        std::fs::rename(temp, &path).with_context(|| format!("cannot move layer into {}", path.display()))?;
        Ok(Layer { key: meta.key.clone(), path })
    }

    /// The work directory's own files beside the layers: the key secret, the run lock.
    fn work_file(&self, name: &str) -> PathBuf {
        self.dir.parent().unwrap_or(&self.dir).join(name)
    }

    /// The secret that keys hide passwords under (`secrets::keyed_config`): 32 random
    /// bytes in `WORK_DIR/key-secret` (0600), made on first use; builders sharing a remote
    /// cache share keys of stages with secrets only when they share this file. A cache opened
    /// for `plan` without one gets a throwaway secret: nothing is cached there to match.
    pub fn key_secret(&self) -> Result<Vec<u8>> {
        use std::io::Write;
        let path = self.work_file("key-secret");
        if let Ok(hex_text) = std::fs::read_to_string(&path) {
            return hex::decode(hex_text.trim()).with_context(|| format!("{}: not a key secret", path.display()));
        }
        let secret: [u8; 32] = rand::random();
        if self.read_only {
            return Ok(secret.to_vec());
        }
        // Written whole (0600, tempfile's mode) and then linked into place, never over
        // another run's: a reader never sees it half-written.
        let mut temp = tempfile::NamedTempFile::new_in(path.parent().unwrap_or(&self.dir))?;
        temp.write_all(hex::encode(secret).as_bytes())?;
        temp.as_file().sync_all()?;
        match temp.persist_noclobber(&path) {
            Ok(_) => Ok(secret.to_vec()),
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => self.key_secret(),
            Err(e) => Err(e.error).with_context(|| format!("cannot create {}", path.display())),
        }
    }

    /// Held shared by a run for its whole length; `gc` takes it exclusively and refuses while
    /// a run holds it. A run that starts during a gc waits for the gc to end.
    pub fn hold_for_run(&self) -> Result<nix::fcntl::Flock<std::fs::File>> {
        use nix::fcntl::{Flock, FlockArg};
        Flock::lock(self.lock_file()?, FlockArg::LockShared)
            .map_err(|(_, e)| anyhow::anyhow!("cannot lock {}: {e}", self.dir.display()))
    }

    fn lock_file(&self) -> Result<std::fs::File> {
        let path = self.work_file("cache.lock");
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))
    }

    /// The record an output stage (publish) left for this key, if any.
    pub fn output_record(&self, key: &str) -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(self.dir.join("outputs").join(format!("{key}.json"))).ok()?).ok()
    }

    pub fn save_output_record(&self, key: &str, record: &serde_json::Value) -> Result<()> {
        crate::base::atomic::write(
            &self.dir.join("outputs").join(format!("{key}.json")),
            &serde_json::to_vec_pretty(record)?,
        )
    }

    /// The upstream states a stage of this identity (its key before upstream states) was last
    /// built with: what `plan` compares against, and what `--offline` uses.
    pub fn upstream_record(&self, identity: &str) -> Option<crate::upstream::States> {
        serde_json::from_slice(&std::fs::read(self.upstream_record_path(identity)).ok()?).ok()
    }

    pub fn save_upstream_record(&self, identity: &str, states: &crate::upstream::States) -> Result<()> {
        crate::base::atomic::write(&self.upstream_record_path(identity), &serde_json::to_vec_pretty(states)?)
    }

    /// Marks a record as still in use (a cached stage keyed by it), for `gc`.
    pub fn touch_upstream_record(&self, identity: &str) {
        if let Ok(f) = std::fs::File::options().append(true).open(self.upstream_record_path(identity)) {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    fn upstream_record_path(&self, identity: &str) -> PathBuf {
        self.dir.join("upstream").join(format!("{identity}.json"))
    }

    /// Every complete layer with its metadata, oldest first.
    pub fn list(&self) -> Result<Vec<(LayerMeta, u64, SystemTime)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let key = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            let (Some(meta), Ok(image)) = (self.meta(&key), std::fs::metadata(self.layer_path(&key))) else {
                continue;
            };
            let used = std::fs::metadata(&path)?.modified()?;
            out.push((meta, allocated_bytes(&image), used));
        }
        out.sort_by_key(|(_, _, used)| *used);
        Ok(out)
    }

    /// Keeps the temporary layer `temp` of a failed stage (see [`KeptFailure`]); returns
    /// where it now is.
    pub fn keep_failed(&self, temp: &Path, record: &KeptFailure) -> Result<PathBuf> {
        let dir = self.dir.join("failed");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let stamp = record.failed.replace(':', "");
        let name = format!("{}-{:02}-{}-{stamp}-{}", record.pipeline, record.stage, record.kind, std::process::id());
        let kept = dir.join(format!("{name}.qcow2"));
        crate::base::atomic::write(&dir.join(format!("{name}.json")), &serde_json::to_vec_pretty(record)?)?;
        std::fs::rename(temp, &kept).with_context(|| format!("cannot move the failed layer to {}", kept.display()))?;
        Ok(kept)
    }

    /// Removes kept failures older than `keep` and those whose parent layer is gone (they
    /// cannot be opened); returns how many went and the parents of those that stay.
    fn gc_failed(&self, keep: Duration) -> (usize, Vec<String>) {
        let (mut removed, mut parents) = (0, Vec::new());
        let Ok(entries) = std::fs::read_dir(self.dir.join("failed")) else { return (0, parents) };
        let now = SystemTime::now();
        for record_path in entries.flatten().map(|e| e.path()) {
            if record_path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let record: Option<KeptFailure> =
                std::fs::read(&record_path).ok().and_then(|b| serde_json::from_slice(&b).ok());
            let old = std::fs::metadata(&record_path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() >= keep);
            let orphan =
                record.as_ref().and_then(|r| r.parent.as_ref()).is_some_and(|parent| !self.layer_path(parent).exists());
            match record {
                Some(record) if !old && !orphan => parents.extend(record.parent),
                _ => {
                    let _ = std::fs::remove_file(record_path.with_extension("qcow2"));
                    if std::fs::remove_file(&record_path).is_ok() {
                        removed += 1;
                    }
                }
            }
        }
        (removed, parents)
    }

    /// Marks an output stage's record as used now, so `gc` keeps it while runs rely on it.
    pub fn touch_output(&self, key: &str) {
        if let Ok(f) = std::fs::File::options().append(true).open(self.dir.join("outputs").join(format!("{key}.json")))
        {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    /// Cleans the work directory: layers (see `gc_layers`), output records and downloads not
    /// used for `keep`, and scratch directories and temporary layers of runs that died.
    pub fn gc(&self, work_dir: &Path, keep: Duration) -> Result<GcReport> {
        use nix::fcntl::{Flock, FlockArg};
        let _exclusive = Flock::lock(self.lock_file()?, FlockArg::LockExclusiveNonblock).map_err(|_| {
            anyhow::anyhow!(
                "{}: a run is using this work directory; collect garbage once it has ended",
                self.dir.display()
            )
        })?;
        let (failed, failed_parents) = self.gc_failed(keep);
        let mut report = GcReport { layers: self.gc_layers(keep, &failed_parents)?, failed, ..Default::default() };
        let old = |path: &Path| {
            std::fs::symlink_metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() >= keep)
        };
        for entry in std::fs::read_dir(self.dir.join("outputs"))?.flatten() {
            if old(&entry.path()) && std::fs::remove_file(entry.path()).is_ok() {
                report.outputs += 1;
            }
        }
        // Upstream records are rewritten by each build that uses them.
        if let Ok(records) = std::fs::read_dir(self.dir.join("upstream")) {
            for entry in records.flatten() {
                if old(&entry.path()) && std::fs::remove_file(entry.path()).is_ok() {
                    report.outputs += 1;
                }
            }
        }
        // A download being written has a fresh .part; a cached one is touched when reused.
        if let Ok(downloads) = std::fs::read_dir(work_dir.join("downloads")) {
            for entry in downloads.flatten() {
                if entry.path().is_file() && old(&entry.path()) && std::fs::remove_file(entry.path()).is_ok() {
                    report.downloads += 1;
                }
            }
        }
        // Logs are WORK_DIR/logs/PIPELINE/TIME/NN-KIND.log (a run's directory goes whole),
        // and WORK_DIR/logs/exec|boot/TIME-PID.log.
        if let Ok(pipelines) = std::fs::read_dir(work_dir.join("logs")) {
            for pipeline in pipelines.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
                for run in std::fs::read_dir(pipeline.path()).into_iter().flatten().flatten() {
                    if !old(&run.path()) {
                        continue;
                    }
                    let removed = match run.file_type().is_ok_and(|t| t.is_dir()) {
                        true => std::fs::remove_dir_all(run.path()),
                        false => std::fs::remove_file(run.path()),
                    };
                    if removed.is_ok() {
                        report.logs += 1;
                    }
                }
                // Only removed when empty: a pipeline's newer runs keep it.
                let _ = std::fs::remove_dir(pipeline.path());
            }
        }
        if let Ok(reports) = std::fs::read_dir(work_dir.join("reports")) {
            for entry in reports.flatten() {
                if entry.path().is_file() && old(&entry.path()) && std::fs::remove_file(entry.path()).is_ok() {
                    report.reports += 1;
                }
            }
        }
        for entry in std::fs::read_dir(work_dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if scratch::left_by_dead_run(&name) && entry.path().is_dir() {
                std::fs::remove_dir_all(entry.path())
                    .with_context(|| format!("cannot remove {}", entry.path().display()))?;
                report.scratch += 1;
            }
        }
        Ok(report)
    }

    /// Removes layers not used for `keep` and not the backing of a layer (or of a kept
    /// failure, `also_kept`) that stays, and temporary files of stages that died. Returns the
    /// removed keys.
    fn gc_layers(&self, keep: Duration, also_kept: &[String]) -> Result<Vec<String>> {
        let now = SystemTime::now();
        let layers = self.list()?;
        let mut kept: std::collections::HashSet<String> = layers
            .iter()
            .filter(|(_, _, used)| now.duration_since(*used).unwrap_or_default() < keep)
            .map(|(m, _, _)| m.key.clone())
            .chain(also_kept.iter().cloned())
            .collect();
        // Ancestors of kept layers stay: an overlay is useless without its backing file.
        let parents: std::collections::HashMap<_, _> =
            layers.iter().map(|(m, _, _)| (m.key.clone(), m.parent.clone())).collect();
        for key in kept.clone() {
            let mut cur = parents.get(&key).cloned().flatten();
            while let Some(p) = cur {
                kept.insert(p.clone());
                cur = parents.get(&p).cloned().flatten();
            }
        }
        let mut removed = Vec::new();
        let sidecars = self.sidecars();
        for (meta, _, _) in &layers {
            if !kept.contains(&meta.key) {
                let _ = std::fs::remove_file(self.layer_path(&meta.key));
                let prefix = format!("{}.", meta.key);
                for sidecar in
                    sidecars.iter().filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix)))
                {
                    let _ = std::fs::remove_file(sidecar);
                }
                std::fs::remove_file(self.meta_path(&meta.key))?;
                removed.push(meta.key.clone());
            }
        }
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with(".tmp-") && !temp_owner_alive(&name) {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(removed)
    }
}

/// `.tmp-<key>-<pid>.qcow2`: is that stage's process still running?
fn temp_owner_alive(name: &str) -> bool {
    name.trim_end_matches(".qcow2")
        .rsplit('-')
        .next()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(scratch::pid_alive)
}

/// The first 16 characters of a layer key, for listings; a key read from a damaged metadata
/// file may be shorter (or not ASCII) and is then shown whole.
pub fn short_key(key: &str) -> &str {
    key.get(..16).unwrap_or(key)
}

pub fn allocated_bytes(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.blocks() * 512
}

/// Builds a cache key: a SHA-256 over labelled parts, so reordering parts changes the key.
pub struct KeyHasher(Sha256);

impl KeyHasher {
    pub fn new(parent: Option<&str>, kind: &str) -> KeyHasher {
        let mut h = Sha256::new();
        h.update(b"virt-pipeline layer v1\n");
        h.update(format!("parent={}\nkind={kind}\n", parent.unwrap_or("-")));
        KeyHasher(h)
    }

    pub fn part(&mut self, label: &str, data: &[u8]) {
        self.0.update(format!("{label}:{}\n", data.len()));
        self.0.update(data);
    }

    /// Hashes a file's contents, or a directory tree's names and contents in sorted order.
    /// The path itself is followed if it is a symlink; symlinks inside a directory are hashed
    /// as links, by their target text, and never followed: a link to a parent directory
    /// would otherwise recurse forever, and a link is what a copy of the tree holds.
    pub fn path(&mut self, path: &Path) -> Result<()> {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        self.hash_entry(path, &meta)
    }

    fn hash_entry(&mut self, path: &Path, meta: &std::fs::Metadata) -> Result<()> {
        if meta.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(path)?.collect::<Result<_, _>>()?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                self.part("entry", e.file_name().as_encoded_bytes());
                let child = e.path();
                let meta =
                    std::fs::symlink_metadata(&child).with_context(|| format!("cannot read {}", child.display()))?;
                if meta.file_type().is_symlink() {
                    let target =
                        std::fs::read_link(&child).with_context(|| format!("cannot read {}", child.display()))?;
                    self.part("symlink", target.as_os_str().as_encoded_bytes());
                } else {
                    self.hash_entry(&child, &meta)?;
                }
            }
        } else {
            self.part("file", crate::base::digest::file_hex::<Sha256>(path)?.as_bytes());
        }
        Ok(())
    }

    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(path: &Path) -> String {
        let mut h = KeyHasher::new(None, "t");
        h.path(path).unwrap();
        h.finish()
    }

    #[test]
    fn symlinks_in_a_directory_are_hashed_as_links() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.join("file"), "a").unwrap();
        // A link to its own parent: following it would never end.
        std::os::unix::fs::symlink("..", tree.join("up")).unwrap();
        let first = key_of(&tree);
        assert_eq!(first, key_of(&tree));
        // Retargeting the link changes the key; what it points at does not matter.
        std::fs::remove_file(tree.join("up")).unwrap();
        std::os::unix::fs::symlink("../elsewhere", tree.join("up")).unwrap();
        let retargeted = key_of(&tree);
        assert_ne!(first, retargeted);
        std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
        std::fs::write(dir.path().join("elsewhere/x"), "x").unwrap();
        assert_eq!(retargeted, key_of(&tree));
    }
}
