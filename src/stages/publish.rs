//! `[stages.publish]`: the layer chain, flattened and xz-compressed in 16 MiB blocks, into a
//! signed virt-builder repository (created with a fresh signing key when it does not exist),
//! or into one on object storage (`repo = "s3://BUCKET/PREFIX"`, made by `repo init`).

use crate::base::log::StageLog;
use crate::base::sign;
use crate::engine::stage::{LayerKind, RunSettings, Stage, StageContext, StageResult};
use crate::guest::{inspect, Package};
use crate::image::{chain, qemu_img, xz};
use crate::pipeline::{Pipeline, PublishConfig};
use crate::repo::location::Location;
use crate::repo::manifest::{Manifest, OperatingSystem, Provenance};
use crate::repo::repository::{self, NewImage};
use crate::repo::{self, blocks};
use anyhow::{Context, Result};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// What `packages` found, as kept beside the layer.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct PackageList {
    packages: Vec<Package>,
    unreadable: Option<String>,
    os: Option<OperatingSystem>,
}

pub struct PublishStage {
    config: PublishConfig,
    /// A local directory (relative to the pipeline file) or object storage.
    location: Location,
}

impl PublishStage {
    pub fn new(config: PublishConfig, pipeline: &Pipeline, at: &str) -> Result<PublishStage> {
        let pipeline_path = &pipeline.path;
        repo::check_entry_name(&config.name)
            .map_err(|e| crate::bad_input!("{}: {at}.name: {e}", pipeline_path.display()))?;
        if !matches!(config.format.as_str(), "raw" | "qcow2") {
            return Err(crate::bad_input!(
                "{}: {at}.format: `{}` is not raw or qcow2",
                pipeline_path.display(),
                config.format
            ));
        }
        if config.xz_level > 9 {
            return Err(crate::bad_input!(
                "{}: {at}.xz_level: {} is not an xz preset; give 0 (fastest) to 9 (smallest)",
                pipeline_path.display(),
                config.xz_level
            ));
        }
        let location = Location::parse(&config.repo, &pipeline.dir)
            .map_err(|e| crate::bad_input!("{}: {at}.repo: {e:#}", pipeline_path.display()))?;
        if let Location::Http(url) = &location {
            return Err(crate::bad_input!(
                "{}: {at}.repo: publish writes to a local directory or s3://BUCKET/PREFIX, not {url}",
                pipeline_path.display()
            ));
        }
        Ok(PublishStage { location, config })
    }

    /// The installed packages of the layer, or why they could not be read (a package
    /// database libguestfs cannot open); read once per layer and kept beside it in the cache
    /// as a sidecar (the key names the layer's content). A disk with no operating
    /// system that inspection recognises has an empty list.
    fn packages(&self, layer: &Path, settings: &RunSettings, log: &StageLog) -> Result<PackageList> {
        // "packages-2": lists kept by versions that read no sources, licences or OS are not used.
        let kept = crate::engine::cache::sidecar(layer, "packages-2");
        if let Some(list) = std::fs::read(&kept).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
            log.line(format!("packages: as read before, {}", kept.display()));
            return Ok(list);
        }
        if !chain::has_disk_label(&mut chain::Qcow2Chain::open(layer)?)? {
            log.line("packages: none (the disk has no partition table or filesystem)");
            return Ok(PackageList::default());
        }
        let list = match inspect::installed_packages(settings.accel, layer, "qcow2", log, settings.verbose) {
            Ok((os, packages)) => {
                log.line(format!("packages: {} installed ({})", packages.len(), os.summary()));
                let os = OperatingSystem {
                    distro: os.distro.clone(),
                    version: match os.minor_version {
                        0 => os.major_version.to_string(),
                        minor => format!("{}.{minor}", os.major_version),
                    },
                    arch: os.arch.clone(),
                    package_format: os.package_format.clone(),
                    product_name: os.product_name.clone(),
                };
                PackageList { packages, unreadable: None, os: Some(os) }
            }
            Err(e) if e.message.contains("no operating system") => {
                log.line(format!("packages: none listed: {e}"));
                PackageList::default()
            }
            Err(e) if e.call == "inspect_list_applications2" => {
                log.line(format!("warning: the package list cannot be read: {e}"));
                PackageList { unreadable: Some(e.to_string()), ..Default::default() }
            }
            Err(e) => return Err(e.into()),
        };
        let _ = crate::base::atomic::write(&kept, &serde_json::to_vec(&list)?);
        Ok(list)
    }

    /// Where the layer came from: its pipeline (from the layer's metadata), key, the tool.
    fn provenance(&self, ctx: &StageContext) -> Result<Provenance> {
        let parent = ctx.parent.context("publish needs a layer")?;
        let meta: Option<serde_json::Value> =
            std::fs::read(parent.path.with_extension("json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
        Ok(Provenance {
            pipeline: meta.as_ref().and_then(|m| m["pipeline"].as_str()).unwrap_or("").to_string(),
            layer: parent.key.clone(),
            tool: format!("virt-pipeline {}", env!("CARGO_PKG_VERSION")),
            built: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        })
    }

    fn fields(&self, size: u64, compressed: u64) -> Vec<(String, String)> {
        let c = &self.config;
        let mut f = vec![
            ("name".to_string(), c.long_name.clone().unwrap_or_else(|| c.name.clone())),
            ("arch".into(), c.arch.clone()),
            ("format".into(), c.format.clone()),
            ("size".into(), size.to_string()),
            ("compressed_size".into(), compressed.to_string()),
        ];
        if let Some(os) = &c.osinfo {
            f.insert(1, ("osinfo".into(), os.clone()));
        }
        if let Some(e) = &c.expand {
            f.push(("expand".into(), e.clone()));
        }
        if let Some(n) = &c.notes {
            f.push(("notes".into(), n.trim_end().to_string()));
        }
        if !c.aliases.is_empty() {
            f.push(("aliases".into(), c.aliases.join(" ")));
        }
        if c.hidden {
            f.push(("hidden".into(), "true".into()));
        }
        f
    }
}

impl Stage for PublishStage {
    fn kind(&self) -> &'static str {
        "publish"
    }

    fn layer_kind(&self) -> LayerKind {
        LayerKind::Output
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }

    fn preflight(&self, settings: &RunSettings) -> Result<()> {
        let chosen = settings.sign_key.as_deref().or(self.config.sign_key.as_deref());
        let key = match repository::for_publish(&self.location)? {
            Some(repo) => Some(repo.signing_key(chosen)?),
            // Made by the publish, with the chosen key or a new one.
            None => chosen
                .map(|k| {
                    sign::parse_fingerprint(k).map_err(|e| crate::bad_input!("{}: signing key: {e}", self.location))
                })
                .transpose()?,
        };
        if let Some(k) = key {
            if !sign::has_secret_key(&k) {
                return Err(crate::bad_input!(
                    "{}: signing key {k}: no secret key with that fingerprint in the keyring (GNUPGHOME)",
                    self.location
                ));
            }
        }
        Ok(())
    }

    fn run(&self, ctx: &mut StageContext) -> Result<StageResult> {
        let layer = ctx.parent_path()?.to_path_buf();
        let sign_key = ctx.settings.sign_key.clone().or(self.config.sign_key.clone());
        let repo = repository::open_or_create(&self.location, sign_key.as_deref(), ctx.ui)?;
        // Removed when the publish fails; renamed into place or uploaded when it succeeds.
        let staging = repo.staging(&self.config.name, &ctx.settings.work_dir)?;
        let temp = &staging.path;
        let opts = xz::XzOptions { preset: self.config.xz_level, ..Default::default() };
        let encoder = xz::encoder_identity(&opts)?;
        // Blocks an earlier image in the repository already holds are copied, not encoded.
        let reuse = repo.reusable_blocks(&encoder);
        let compress = || -> Result<(xz::Compressed, u64)> {
            // qcow2 entries are converted first, in the work directory (a standalone file);
            // raw ones are read straight from the chain.
            let scratch = crate::base::scratch::dir(&ctx.settings.work_dir, "publish-qcow2")?;
            let flat_qcow2 = scratch.path().join("image.qcow2");
            let mut disk: Box<dyn chain::DiskRead> = if self.config.format == "qcow2" {
                qemu_img::convert(&layer, &flat_qcow2, "qcow2")?;
                Box::new(chain::RawDisk::open(&flat_qcow2)?)
            } else {
                Box::new(chain::Qcow2Chain::open(&layer)?)
            };
            let size = qemu_img::info(&layer)?.virtual_size;
            let bar = ctx.ui.bytes("xz", disk.size());
            // Never through a link: the staged file is ours, created exclusively.
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(temp)
                .with_context(|| format!("cannot write {}", temp.display()))?;
            let mut out = std::io::BufWriter::new(file);
            let res = xz::compress(disk.as_mut(), &mut out, &opts, &reuse, &bar);
            bar.finish_and_clear();
            Ok((res?, size))
        };
        // The package list is read in an appliance while the image compresses.
        let (result, packages) = std::thread::scope(|scope| {
            let packages = scope.spawn(|| self.packages(&layer, ctx.settings, &ctx.log));
            let result = compress();
            (result, packages.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the package reader panicked"))))
        });
        let (compressed, size) = result?;
        let list = packages.context("cannot read the image's installed packages for its manifest")?;
        let manifest = Manifest {
            entry: self.config.name.clone(),
            revision: 0,
            image_sha512: compressed.sha512.clone(),
            size,
            compressed_size: compressed.compressed_size,
            provenance: self.provenance(ctx)?,
            packages: list.packages,
            packages_unreadable: list.unreadable,
            os: list.os,
            documents: Default::default(),
        };
        if let Some(why) = &manifest.packages_unreadable {
            ctx.ui.line(format!("warning: the manifest lists no packages: {why}"));
        }
        if compressed.rejected_blocks > 0 {
            let warning = format!(
                "warning: {} block(s) the repository's block maps offered did not decompress to the layer's data and were encoded instead: a block map or image in {} was altered",
                compressed.rejected_blocks,
                repo.location()
            );
            ctx.log.line(&warning);
            ctx.ui.line(warning);
        }
        for warning in reuse.warnings() {
            ctx.log.line(format!("warning: {warning}"));
            ctx.ui.line(format!("warning: {warning}"));
        }
        let summary = format!(
            "{} blocks: {} reused from earlier images, {} encoded, {} skipped as zero",
            compressed.data_blocks + compressed.zero_blocks,
            compressed.reused_blocks,
            compressed.data_blocks - compressed.reused_blocks,
            compressed.zero_blocks
        );
        ctx.log.line(format!(
            "compressed {} bytes to {}; {summary}",
            compressed.uncompressed_size, compressed.compressed_size
        ));
        ctx.ui.line(format!("publish: {summary}"));
        let new = NewImage {
            name: &self.config.name,
            fields: self.fields(size, compressed.compressed_size),
            image: temp,
            checksum: &compressed.sha512,
            manifest: Some(manifest),
            blocks: Some(blocks::BlockMap { encoder, blocks: compressed.blocks.clone() }),
        };
        let entry = repo.publish(new, sign_key.as_deref(), ctx.ui).context("cannot publish into the repository")?;
        let at = repo.location();
        ctx.ui.line(format!(
            "published {} revision {} into {at} ({} bytes)",
            self.config.name,
            entry.revision(),
            compressed.compressed_size
        ));
        let record = serde_json::json!({
            "repo": at,
            "name": self.config.name,
            "revision": entry.revision(),
            "checksum": compressed.sha512,
            "sboms": entry.file().map(repo::sbom::document_names),
        });
        Ok(StageResult { inspection: None, record: Some(record), upstream: None })
    }

    /// Still current while the repository's index names this exact image.
    fn output_current(&self, record: &serde_json::Value) -> bool {
        let Ok(repo) = repository::open(&self.location) else { return false };
        let Ok(index) = repo.index() else { return false };
        let entry = index.entries.iter().find(|e| e.id == self.config.name);
        entry.is_some_and(|e| e.checksum() == record["checksum"].as_str() && repo.holds_image(e))
    }
}
