//! `[stages.export]`: the layer turned into an artifact for another environment. The stage
//! owns what every target shares: `dest` (checked before anything runs, written atomically),
//! the throwaway overlay a target makes its changes in, and the output record that lets a
//! later run skip an export whose inputs did not change. Each target is one file here and
//! one line in [`build_target`].

mod cloud;
mod docker;
mod ramdisk;
mod stream;
mod vagrant;

use crate::engine::stage::{LayerKind, RunSettings, Stage, StageContext, StageResult};
use crate::guest::inspect::Inspection;
use crate::guest::{Drive, Guest};
use crate::image::qemu_img;
use crate::pipeline::{ExportConfig, Pipeline};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

/// The file every export writes into its `dest`: what made it and what it holds. A `dest`
/// that exists without one is not an export's, and is never replaced.
pub const MANIFEST: &str = "export.json";

/// Every export target: its `target` name and what makes it from its keys. A new target is
/// one file in this folder (its keys, a `build` function and a `Target`) and one line here.
#[rustfmt::skip]
const TARGETS: &[(&str, BuildTarget)] = &[
    ("docker", docker::build),
    ("ramdisk", ramdisk::build),
    ("cloud", cloud::build),
    ("vagrant", vagrant::build),
];

type BuildTarget = fn(&toml::Table, &Pipeline, &str) -> Result<Box<dyn Target>>;

/// One export target: writes its artifacts into an empty directory.
trait Target {
    /// Its keys as checked, defaults filled in: they go into the cache key.
    fn keys(&self) -> serde_json::Value;
    fn export(&self, job: &mut Job) -> Result<()>;
    /// Host files the target reads; their contents go into the cache key.
    fn inputs(&self) -> Vec<PathBuf> {
        Vec::new()
    }
}

fn build_target(config: &ExportConfig, pipeline: &Pipeline, at: &str) -> Result<Box<dyn Target>> {
    match TARGETS.iter().find(|(name, _)| *name == config.target) {
        Some((_, build)) => build(&config.keys, pipeline, at),
        None => Err(crate::bad_input!(
            "{}: {at}.target: `{}` is not one of {}",
            pipeline.path.display(),
            config.target,
            TARGETS.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// A target's keys (every key of the export table but `target` and `dest`) as its own
/// struct; an unknown or mistyped key is bad input naming it.
fn keys<T: serde::de::DeserializeOwned>(keys: &toml::Table, pipeline: &Pipeline, at: &str) -> Result<T> {
    serde_path_to_error::deserialize(toml::Value::Table(keys.clone())).map_err(|e| {
        let key = e.path().to_string();
        let at = if key == "." { at.to_string() } else { format!("{at}.{key}") };
        crate::bad_input!("{}: {at}: {}", pipeline.path.display(), e.inner())
    })
}

pub struct ExportStage {
    config: ExportConfig,
    target: Box<dyn Target>,
    pipeline_path: PathBuf,
    pipeline_name: String,
    at: String,
    /// `dest` resolved against the pipeline file's directory, absolute.
    dest: PathBuf,
}

/// What a target works with. Artifacts go into `out`, which becomes `dest` only once the
/// target has finished.
pub struct Job<'a, 'b> {
    pub ctx: &'a mut StageContext<'b>,
    pub out: &'a Path,
    /// Where `out` goes at the end (absolute); it may hold the previous export.
    pub dest: &'a Path,
    /// Removed after the export, whatever happened.
    pub scratch: &'a Path,
    pub layer: &'a Path,
    pub layer_key: &'a str,
    pub pipeline_name: &'a str,
}

impl Job<'_, '_> {
    /// A throwaway qcow2 overlay on the layer, in the scratch directory, opened read-write in
    /// an appliance and mounted by inspection: a target changes what it needs there and the
    /// layer chain stays as it is. One launch per export. `network`: the appliance reaches
    /// the network (for the guest's package manager).
    pub fn open_overlay(&mut self, network: bool) -> Result<(Guest, Inspection)> {
        let overlay = self.overlay_path();
        qemu_img::create_overlay(self.layer, &overlay, None)?;
        self.ctx.bar.set_message("starting the appliance");
        let settings = self.ctx.settings;
        let g = Guest::new(settings.accel, Some(self.ctx.log.clone()), settings.verbose)?;
        g.add_drive(Drive { path: &overlay, format: "qcow2", readonly: false, discard: false })?;
        g.set_network(network)?;
        g.launch()?;
        let os = g.inspect_and_mount(false)?;
        self.ctx.log.line(format!("exporting {}", os.summary()));
        Ok((g, os))
    }

    /// The overlay [`Job::open_overlay`] makes (qcow2, backed by the layer).
    pub fn overlay_path(&self) -> PathBuf {
        self.scratch.join("export-overlay.qcow2")
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    /// Distinguishes this export's output from any other's at the same place.
    id: String,
    target: String,
    pipeline: String,
    layer: String,
    /// Every file written, relative to `dest`, with its size.
    files: Vec<(String, u64)>,
}

impl ExportStage {
    pub fn new(config: ExportConfig, pipeline: &Pipeline, at: &str) -> Result<ExportStage> {
        let shown = pipeline.path.display();
        let dest_text = &config.dest;
        if dest_text.trim().is_empty() {
            return Err(crate::bad_input!("{shown}: {at}.dest: give the directory the artifacts go to"));
        }
        let dest = normalize(&std::path::absolute(pipeline.resolve(dest_text))?);
        if dest.parent().is_none() {
            return Err(crate::bad_input!("{shown}: {at}.dest: `{dest_text}` is the root directory"));
        }
        let target = build_target(&config, pipeline, at)?;
        // An export replaces its dest as a whole: only one this pipeline's export made, holding
        // nothing but what that export wrote.
        match std::fs::symlink_metadata(&dest) {
            Err(_) => {}
            Ok(m) if m.is_dir() => {
                let empty = std::fs::read_dir(&dest).map(|mut d| d.next().is_none()).unwrap_or(false);
                if !empty {
                    replaceable(&dest, pipeline.name()).map_err(|why| {
                        crate::bad_input!(
                            "{shown}: {at}.dest: {} {why}; an export replaces its dest as a whole: name a new directory",
                            dest.display()
                        )
                    })?;
                }
            }
            Ok(_) => {
                return Err(crate::bad_input!("{shown}: {at}.dest: {} exists and is not a directory", dest.display()))
            }
        }
        Ok(ExportStage {
            config,
            target,
            pipeline_path: pipeline.path.clone(),
            pipeline_name: pipeline.name().to_string(),
            at: at.to_string(),
            dest,
        })
    }

    fn bad_dest(&self, what: String) -> anyhow::Error {
        crate::bad_input!("{}: {}.dest: {} {what}", self.pipeline_path.display(), self.at, self.dest.display())
    }

    /// Moves the finished `out` directory to `dest`, replacing an earlier export there.
    fn install(&self, out: tempfile::TempDir) -> Result<()> {
        let parent = self.dest.parent().context("dest has no parent directory")?;
        let name = self.dest.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let out = out.keep();
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        let had_old = self.dest.exists();
        if had_old {
            std::fs::rename(&self.dest, &old).with_context(|| format!("cannot move {} aside", self.dest.display()))?;
        }
        if let Err(e) = std::fs::rename(&out, &self.dest) {
            if had_old {
                let _ = std::fs::rename(&old, &self.dest);
            }
            let _ = std::fs::remove_dir_all(&out);
            return Err(e).with_context(|| format!("cannot move the export into {}", self.dest.display()));
        }
        if had_old {
            std::fs::remove_dir_all(&old)
                .with_context(|| format!("cannot remove the earlier export {}", old.display()))?;
        }
        // The rename is durable only once the directory holding it is synced.
        std::fs::File::open(parent).and_then(|d| d.sync_all()).ok();
        Ok(())
    }
}

impl Stage for ExportStage {
    fn kind(&self) -> &'static str {
        "export"
    }

    fn layer_kind(&self) -> LayerKind {
        LayerKind::Output
    }

    fn config(&self) -> serde_json::Value {
        let mut v = self.target.keys();
        v["target"] = serde_json::json!(self.config.target);
        v["dest"] = serde_json::json!(self.dest);
        // `created` of an OCI config comes from it: a different value is a different output.
        if let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") {
            v["source_date_epoch"] = serde_json::json!(epoch);
        }
        v
    }

    fn inputs(&self) -> Vec<PathBuf> {
        self.target.inputs()
    }

    /// `dest` must not be inside the layer cache (or hold it): checked for every stage before
    /// any runs.
    fn preflight(&self, settings: &RunSettings) -> Result<()> {
        let layers = normalize(&std::path::absolute(settings.work_dir.join("layers"))?);
        let layers = std::fs::canonicalize(&layers).unwrap_or(layers);
        let dest = real_path(&self.dest);
        if dest.starts_with(&layers) {
            return Err(self.bad_dest(format!("is inside the layer cache {}; export somewhere else", layers.display())));
        }
        if layers.starts_with(&dest) {
            return Err(self.bad_dest(format!("holds the layer cache {}; export somewhere else", layers.display())));
        }
        Ok(())
    }

    fn run(&self, ctx: &mut StageContext) -> Result<StageResult> {
        let parent_layer = ctx.parent.context("export needs a layer to export")?;
        let (layer, layer_key) = (parent_layer.path.clone(), parent_layer.key.clone());
        let dest_parent = self.dest.parent().context("dest has no parent directory")?;
        std::fs::create_dir_all(dest_parent)
            .with_context(|| format!("cannot create {} for dest", dest_parent.display()))?;
        let name = self.dest.file_name().unwrap_or_default().to_string_lossy().into_owned();
        // A sibling of dest, so that moving it into place is a rename on one filesystem; it
        // is removed on any failure, so a failed export leaves nothing at dest.
        let out = tempfile::Builder::new()
            .prefix(&format!(".{name}.export-{}-", std::process::id()))
            .tempdir_in(dest_parent)
            .with_context(|| format!("cannot write in {}", dest_parent.display()))?;
        let scratch = crate::base::scratch::dir(&ctx.settings.work_dir, "export")?;
        let mut job = Job {
            ctx,
            out: out.path(),
            dest: &self.dest,
            scratch: scratch.path(),
            layer: &layer,
            layer_key: &layer_key,
            pipeline_name: &self.pipeline_name,
        };
        self.target.export(&mut job)?;
        drop(scratch);
        let manifest = Manifest {
            id: hex::encode(rand::random::<[u8; 16]>()),
            target: self.config.target.clone(),
            pipeline: self.pipeline_name.clone(),
            layer: layer_key,
            files: list_files(out.path())?,
        };
        let path = out.path().join(MANIFEST);
        std::fs::write(&path, serde_json::to_vec_pretty(&manifest)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        self.install(out)?;
        let mut top: Vec<&str> = manifest.files.iter().map(|(f, _)| f.split('/').next().unwrap_or(f)).collect();
        top.dedup();
        ctx.ui.line(format!("exported {} ({}) to {}", self.config.target, top.join(", "), self.dest.display()));
        Ok(StageResult {
            inspection: None,
            record: Some(serde_json::json!({ "dest": self.dest, "id": manifest.id })),
            upstream: None,
        })
    }

    /// Still current while dest holds that very export, every file at its size.
    fn output_current(&self, record: &serde_json::Value) -> bool {
        let Ok(text) = std::fs::read(self.dest.join(MANIFEST)) else {
            return false;
        };
        let Ok(manifest) = serde_json::from_slice::<Manifest>(&text) else {
            return false;
        };
        record["id"].as_str() == Some(manifest.id.as_str())
            && manifest.files.iter().all(|(f, size)| {
                std::fs::symlink_metadata(self.dest.join(f)).is_ok_and(|m| m.is_file() && m.len() == *size)
            })
    }
}

/// Why a non-empty `dest` may not be replaced by an export of `pipeline`, if it may not: it
/// must hold an export manifest written by that pipeline, and no file the manifest does not
/// list.
fn replaceable(dest: &Path, pipeline: &str) -> std::result::Result<(), String> {
    let text = std::fs::read(dest.join(MANIFEST))
        .map_err(|_| format!("exists and holds files that no export wrote (no {MANIFEST})"))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| format!("holds a {MANIFEST} that is not an export's ({e})"))?;
    if manifest.pipeline != pipeline {
        return Err(format!("holds the export of another pipeline (`{}`, says its {MANIFEST})", manifest.pipeline));
    }
    let listed: std::collections::HashSet<&str> = manifest.files.iter().map(|(f, _)| f.as_str()).collect();
    let present = list_files(dest).map_err(|e| format!("cannot be read ({e:#})"))?;
    let extra: Vec<String> =
        present.into_iter().map(|(f, _)| f).filter(|f| f != MANIFEST && !listed.contains(f.as_str())).collect();
    if !extra.is_empty() {
        return Err(format!("holds files its export did not write ({})", extra.join(", ")));
    }
    Ok(())
}

/// Every regular file below `dir`, relative to it, with its size, sorted.
fn list_files(dir: &Path) -> Result<Vec<(String, u64)>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) -> Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                walk(root, &entry.path(), out)?;
            } else if meta.is_file() {
                let rel = entry.path().strip_prefix(root)?.to_string_lossy().into_owned();
                out.push((rel, meta.len()));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    Ok(files)
}

/// `a/./b/../c` → `a/c`, without touching the filesystem.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The path with symlinks resolved as far as it exists (the rest appended as written).
fn real_path(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name().map(|n| n.to_os_string()), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
    let mut real = std::fs::canonicalize(&existing).unwrap_or(existing);
    real.extend(rest.iter().rev());
    real
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(dir: &Path, dest: &str) -> Result<ExportStage> {
        stage_with(dir, &format!("target = \"docker\"\ndest = \"{dest}\"\n"))
    }

    fn stage_with(dir: &Path, keys: &str) -> Result<ExportStage> {
        let text = format!(
            "version = 1\nfrom = {{ image = \"x.qcow2\" }}\n[pipeline]\nname = \"t\"\n[[stages]]\n[stages.export]\n{keys}"
        );
        let path = dir.join("p.toml");
        std::fs::write(&path, text).unwrap();
        let p = crate::pipeline::load(&path, &[])?;
        match &p.file.stages[0] {
            crate::pipeline::StageConfig::Export(c) => ExportStage::new(c.clone(), &p, "stages[0].export"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_export_is_current_while_its_files_are_in_place() {
        let d = tempfile::tempdir().unwrap();
        let s = stage(d.path(), "out/docker").unwrap();
        assert_eq!(s.dest, d.path().join("out/docker"), "dest is relative to the pipeline file");
        let dest = d.path().join("out/docker");
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::write(dest.join("rootfs.tar"), "tar").unwrap();
        let manifest = Manifest {
            id: "abc".into(),
            target: "docker".into(),
            pipeline: "t".into(),
            layer: "k".into(),
            files: vec![("rootfs.tar".into(), 3)],
        };
        std::fs::write(dest.join(MANIFEST), serde_json::to_vec(&manifest).unwrap()).unwrap();
        assert!(s.output_current(&serde_json::json!({ "id": "abc" })));
        assert!(!s.output_current(&serde_json::json!({ "id": "another export" })));
        std::fs::write(dest.join("rootfs.tar"), "changed").unwrap();
        assert!(!s.output_current(&serde_json::json!({ "id": "abc" })), "a file of another size");
        std::fs::remove_file(dest.join("rootfs.tar")).unwrap();
        assert!(!s.output_current(&serde_json::json!({ "id": "abc" })), "a file gone");
        // An existing export may be replaced; a directory it did not write may not.
        stage(d.path(), "out/docker").unwrap();
        let e = stage(d.path(), "out").err().unwrap();
        assert_eq!(crate::base::error::exit_code(&e), 2);
        assert!(format!("{e:#}").contains("no export wrote"), "{e:#}");
        // Nor one that holds a file its export did not write, or another pipeline's export.
        std::fs::write(dest.join("notes.txt"), "mine").unwrap();
        let e = stage(d.path(), "out/docker").err().unwrap();
        assert!(format!("{e:#}").contains("holds files its export did not write (notes.txt)"), "{e:#}");
        std::fs::remove_file(dest.join("notes.txt")).unwrap();
        let other = Manifest { pipeline: "someone-else".into(), ..manifest };
        std::fs::write(dest.join(MANIFEST), serde_json::to_vec(&other).unwrap()).unwrap();
        let e = stage(d.path(), "out/docker").err().unwrap();
        assert!(format!("{e:#}").contains("holds the export of another pipeline (`someone-else`"), "{e:#}");
    }

    #[test]
    fn paths_normalize_without_the_filesystem() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(normalize(Path::new("/a/b/../../..")), PathBuf::from("/"));
    }

    #[test]
    fn real_path_resolves_the_existing_part() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("real")).unwrap();
        std::os::unix::fs::symlink(d.path().join("real"), d.path().join("link")).unwrap();
        let real = std::fs::canonicalize(d.path().join("real")).unwrap();
        assert_eq!(real_path(&d.path().join("link/x/y")), real.join("x/y"));
    }

    #[test]
    fn files_are_listed_recursively_with_sizes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("oci/blobs")).unwrap();
        std::fs::write(d.path().join("a"), "12").unwrap();
        std::fs::write(d.path().join("oci/blobs/b"), "123").unwrap();
        assert_eq!(list_files(d.path()).unwrap(), vec![("a".into(), 2), ("oci/blobs/b".into(), 3)]);
    }

    /// A target's keys are read by its own module: defaults filled in for the cache key,
    /// unknown and mistyped keys named, an unknown target named with the ones there are.
    #[test]
    fn a_target_reads_its_own_keys() {
        let d = tempfile::tempdir().unwrap();
        let s = stage_with(d.path(), "target = \"ramdisk\"\ndest = \"out\"\n").unwrap();
        let config = s.config();
        assert_eq!(config["target"], "ramdisk");
        assert_eq!(config["compression"], "zstd", "the default is in the key");
        assert_eq!(config["dest"], serde_json::json!(d.path().join("out")));

        let err = |keys: &str| format!("{:#}", stage_with(d.path(), keys).err().expect("refused"));
        let e = err("target = \"docker\"\ndest = \"out\"\noci = \"yes\"\n");
        assert!(e.contains("stages[0].export.oci") && e.contains("boolean"), "{e}");
        let e = err("target = \"docker\"\ndest = \"out\"\nproviders = [\"libvirt\"]\n");
        assert!(e.contains("unknown field `providers`"), "{e}");
        let e = err("target = \"floppy\"\ndest = \"out\"\n");
        assert!(e.contains("stages[0].export.target: `floppy` is not one of docker, ramdisk, cloud, vagrant"), "{e}");
    }
}
