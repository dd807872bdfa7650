//! `target = "docker"`: the root filesystem as a tar that `podman import` and `docker import`
//! accept, less what a container base should not carry, and with `oci = true` an OCI image
//! layout of it. The tar comes from libguestfs (`tar_out` with numeric owners and extended
//! attributes, so ownership, modes, links, device nodes and file capabilities survive) and is
//! compressed on the host while the appliance writes it.

use super::stream::{self, Blob, Compression, Encoder};
use super::{Job, Target};
use crate::guest::inspect::Inspection;
use crate::guest::{Guest, TarOut};
use crate::pipeline::Pipeline;
use anyhow::{Context, Result};
use oci_spec::image as oci;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// `target = "docker"`: the root filesystem as a tar for `podman import`, and optionally an
/// OCI image layout.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DockerKeys {
    /// Of `rootfs.tar`: `none`, `gzip` or `zstd`.
    #[serde(default = "default_docker_compression")]
    pub compression: String,
    /// Also write an OCI image layout in `dest/oci`.
    #[serde(default)]
    pub oci: bool,
    /// The image's default command (OCI config `Cmd`); `/bin/bash`, else `/bin/sh`.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// The OCI layout's reference name (`oci:DEST/oci:TAG`).
    #[serde(default)]
    pub tag: Option<String>,
}

fn default_docker_compression() -> String {
    "gzip".into()
}

/// Reads the target's keys from the export table and checks them.
pub fn build(keys: &toml::Table, pipeline: &Pipeline, at: &str) -> Result<Box<dyn Target>> {
    Ok(Box::new(Docker::new(&super::keys(keys, pipeline, at)?, pipeline, at)?))
}

pub struct Docker {
    config: DockerKeys,
    compression: Compression,
}

/// `rootfs.tar` with the compression's suffix.
fn file_name(compression: Compression) -> String {
    format!("rootfs.tar{}", compression.suffix())
}

/// Left out of the tree (glob patterns; directories stay, emptied): the kernel, its modules
/// and boot files, the contents of the pseudo and temporary filesystems a runtime mounts,
/// SSH host keys (each container would share them), and package caches and lists.
const REMOVE: &[&str] = &[
    "/boot/*",
    "/vmlinuz",
    "/vmlinuz.old",
    "/initrd.img",
    "/initrd.img.old",
    "/usr/lib/modules/*",
    "/lib/modules/*",
    "/lost+found",
    "/etc/ssh/ssh_host_*",
    "/proc/*",
    "/sys/*",
    "/dev/*",
    "/dev/.[!.]*",
    "/run/*",
    "/run/.[!.]*",
    "/tmp/*",
    "/tmp/.[!.]*",
    "/var/tmp/*",
    "/var/tmp/.[!.]*",
    "/var/cache/apt/*.bin",
    "/var/cache/apt/archives/*.deb",
    "/var/cache/apt/archives/partial/*",
    "/var/lib/apt/lists/*",
    "/var/cache/dnf/*",
    "/var/cache/yum/*",
    "/var/cache/zypp/*",
    "/var/cache/apk/*",
    "/var/cache/pacman/pkg/*",
];

/// What Debian's own container images carry: package scripts may not start services.
const POLICY_RC_D: &str =
    "#!/bin/sh\n# A container: package scripts do not start services (101: action forbidden).\nexit 101\n";

const FSTAB: &str = "# A container's filesystems are set up by its runtime.\n";

/// The PATH of Debian's and Docker's images.
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Docker {
    pub fn new(config: &DockerKeys, pipeline: &Pipeline, at: &str) -> Result<Docker> {
        let shown = pipeline.path.display();
        let compression = match Compression::parse(&config.compression) {
            Some(c @ (Compression::None | Compression::Gzip | Compression::Zstd)) => c,
            _ => {
                let given = &config.compression;
                return Err(crate::bad_input!("{shown}: {at}.compression: `{given}` is not none, gzip or zstd"));
            }
        };
        if !config.oci {
            for (key, given) in [("cmd", config.cmd.is_some()), ("tag", config.tag.is_some())] {
                if given {
                    return Err(crate::bad_input!(
                        "{shown}: {at}.{key}: `{key}` sets the OCI image's configuration; it goes with oci = true"
                    ));
                }
            }
        }
        if let Some(cmd) = &config.cmd {
            if cmd.is_empty() || cmd[0].is_empty() {
                return Err(crate::bad_input!(
                    "{shown}: {at}.cmd: give the program and its arguments, e.g. [\"/bin/sh\", \"-c\", \"...\"]"
                ));
            }
        }
        if let Some(tag) = &config.tag {
            if !valid_tag(tag) {
                return Err(crate::bad_input!(
                    "{shown}: {at}.tag: `{tag}` is not a tag (letters, digits, `_`, `.` and `-`, up to 128, not starting with `.` or `-`)"
                ));
            }
        }
        if config.oci {
            created().map_err(|e| crate::bad_input!("{shown}: {at}.oci: {e} (it sets the image's `created`)"))?;
        }
        Ok(Docker { config: config.clone(), compression })
    }

    fn tag(&self) -> &str {
        self.config.tag.as_deref().unwrap_or("latest")
    }
}

/// Docker's tag grammar, which OCI reference names in a layout also follow here.
fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    first_ok && tag.len() <= 128 && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl Target for Docker {
    fn keys(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }

    fn export(&self, job: &mut Job) -> Result<()> {
        let (g, os) = job.open_overlay(false)?;
        job.ctx.bar.set_message("removing what a container does not carry");
        prepare(&g, &os, &job.ctx.log)?;
        let cmd = match &self.config.cmd {
            Some(cmd) => cmd.clone(),
            None if g.exists("/bin/bash")? => vec!["/bin/bash".to_string()],
            None => vec!["/bin/sh".to_string()],
        };
        let tar_path = job.out.join(file_name(self.compression));
        let oci_dir = job.out.join("oci");
        let blobs = oci_dir.join("blobs").join("sha256");
        if self.config.oci {
            std::fs::create_dir_all(&blobs).with_context(|| format!("cannot create {}", blobs.display()))?;
        }
        // The OCI layer is always gzip (what every runtime and registry reads); a gzip
        // rootfs.tar.gz is that very blob, linked rather than compressed twice.
        let separate_layer =
            (self.config.oci && self.compression != Compression::Gzip).then(|| blobs.join("layer.tmp"));
        let mut encoders = vec![Encoder::create(&tar_path, self.compression)?];
        if let Some(layer) = &separate_layer {
            encoders.push(Encoder::create(layer, Compression::Gzip)?);
        }
        job.ctx.bar.set_message("packing the root filesystem");
        let opts = TarOut { numeric_owner: true, xattrs: true, excludes: Vec::new() };
        let streamed =
            stream::from_guest("the root filesystem", encoders, &job.ctx.bar, |pipe| g.tar_out("/", pipe, &opts))?;
        drop(g);
        let file = streamed.files[0].clone();
        job.ctx.log.line(format!(
            "wrote {} ({} bytes of tar, {} bytes compressed)",
            tar_path.display(),
            streamed.bytes,
            file.size
        ));
        if self.config.oci {
            let layer = match (&separate_layer, streamed.files.get(1)) {
                (Some(tmp), Some(layer)) => {
                    std::fs::rename(tmp, blobs.join(&layer.sha256))?;
                    layer.clone()
                }
                _ => {
                    std::fs::hard_link(&tar_path, blobs.join(&file.sha256))
                        .or_else(|_| std::fs::copy(&tar_path, blobs.join(&file.sha256)).map(|_| ()))?;
                    file
                }
            };
            let image = Image {
                diff_id: &streamed.sha256,
                layer: &layer,
                arch: &os.arch,
                cmd,
                pipeline: job.pipeline_name,
                layer_key: job.layer_key,
                tag: self.tag(),
            };
            write_layout(&oci_dir, &image)?;
            job.ctx.log.line(format!("wrote the OCI image layout {} (tag {})", oci_dir.display(), self.tag()));
        }
        Ok(())
    }
}

/// Makes the mounted overlay a container's root filesystem (see [`REMOVE`]).
fn prepare(g: &Guest, os: &Inspection, log: &crate::base::log::StageLog) -> Result<()> {
    let mut removed = Vec::new();
    for pattern in REMOVE {
        let paths = g.glob_expand(pattern)?;
        for p in &paths {
            g.rm_rf(p)?;
        }
        if !paths.is_empty() {
            removed.push(format!("{pattern} ({})", paths.len()));
        }
    }
    log.line(format!("removed: {}", if removed.is_empty() { "nothing".into() } else { removed.join(", ") }));
    if g.is_file("/etc/fstab")? {
        g.write("/etc/fstab", FSTAB.as_bytes())?;
        log.line("/etc/fstab: no entries");
    }
    // An empty machine-id: each container (or systemd in it) makes its own.
    if g.is_file("/etc/machine-id")? {
        g.truncate("/etc/machine-id")?;
        log.line("/etc/machine-id: emptied");
    }
    // A copy of the ID (a link to /etc/machine-id is fine).
    if g.is_file("/var/lib/dbus/machine-id")? {
        g.rm("/var/lib/dbus/machine-id")?;
    }
    if os.is_debian_family() && g.is_dir("/usr/sbin")? {
        g.write("/usr/sbin/policy-rc.d", POLICY_RC_D.as_bytes())?;
        g.chmod(0o755, "/usr/sbin/policy-rc.d")?;
        g.chown(0, 0, "/usr/sbin/policy-rc.d")?;
        log.line("/usr/sbin/policy-rc.d: exit 101 (no services started by package scripts)");
    }
    Ok(())
}

/// What the OCI layout describes.
struct Image<'a> {
    diff_id: &'a str,
    layer: &'a Blob,
    arch: &'a str,
    cmd: Vec<String>,
    pipeline: &'a str,
    layer_key: &'a str,
    tag: &'a str,
}

/// Labels the image carries: where it came from.
pub const LABEL_PIPELINE: &str = "org.virt-pipeline.pipeline";
pub const LABEL_LAYER: &str = "org.virt-pipeline.layer";

/// `created`: SOURCE_DATE_EPOCH when set (reproducible builds' convention), else now.
fn created() -> Result<String> {
    let time = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(text) => {
            let secs: u64 = text
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("SOURCE_DATE_EPOCH: `{text}` is not a number of seconds"))?;
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)
        }
        Err(_) => std::time::SystemTime::now(),
    };
    Ok(humantime::format_rfc3339_seconds(time).to_string())
}

/// The guest architecture as OCI names it.
fn oci_arch(arch: &str) -> oci::Arch {
    match arch {
        "x86_64" => oci::Arch::Amd64,
        "aarch64" => oci::Arch::ARM64,
        "i386" | "i486" | "i586" | "i686" => oci::Arch::i386,
        "armv7l" | "armv6l" | "arm" => oci::Arch::ARM,
        "ppc64le" => oci::Arch::PowerPC64le,
        "s390x" => oci::Arch::s390x,
        "riscv64" => oci::Arch::RISCV64,
        other => oci::Arch::Other(other.to_string()),
    }
}

/// Writes a JSON document as a blob; returns its descriptor.
fn write_json_blob(blobs: &Path, media_type: oci::MediaType, value: &impl serde::Serialize) -> Result<oci::Descriptor> {
    let bytes = sorted_json(value)?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    std::fs::write(blobs.join(&sha256), &bytes)?;
    Ok(oci::Descriptor::new(media_type, bytes.len() as u64, sha256_digest(&sha256)?))
}

/// JSON through serde_json::Value, whose maps are sorted: the same image gives the same bytes.
fn sorted_json(value: &impl serde::Serialize) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&serde_json::to_value(value)?)?)
}

fn sha256_digest(hex: &str) -> Result<oci::Digest> {
    let d: oci::Sha256Digest = hex.parse().map_err(|e| anyhow::anyhow!("digest {hex}: {e}"))?;
    Ok(d.into())
}

fn write_layout(dir: &Path, image: &Image) -> Result<()> {
    let blobs = dir.join("blobs").join("sha256");
    let created = created()?;
    let labels: std::collections::HashMap<String, String> = [
        (LABEL_PIPELINE.to_string(), image.pipeline.to_string()),
        (LABEL_LAYER.to_string(), image.layer_key.to_string()),
    ]
    .into();
    let config =
        oci::ConfigBuilder::default().env(vec![PATH_ENV.to_string()]).cmd(image.cmd.clone()).labels(labels).build()?;
    let history = oci::HistoryBuilder::default()
        .created(created.clone())
        .created_by(format!("virt-pipeline export of pipeline {} layer {}", image.pipeline, image.layer_key))
        .build()?;
    let image_config = oci::ImageConfigurationBuilder::default()
        .created(created)
        .architecture(oci_arch(image.arch))
        .os(oci::Os::Linux)
        .config(config)
        .rootfs(
            oci::RootFsBuilder::default().typ("layers").diff_ids(vec![format!("sha256:{}", image.diff_id)]).build()?,
        )
        .history(vec![history])
        .build()?;
    let config_desc = write_json_blob(&blobs, oci::MediaType::ImageConfig, &image_config)?;
    let layer_desc =
        oci::Descriptor::new(oci::MediaType::ImageLayerGzip, image.layer.size, sha256_digest(&image.layer.sha256)?);
    let manifest = oci::ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(oci::MediaType::ImageManifest)
        .config(config_desc)
        .layers(vec![layer_desc])
        .build()?;
    let mut manifest_desc = write_json_blob(&blobs, oci::MediaType::ImageManifest, &manifest)?;
    manifest_desc
        .set_annotations(Some([("org.opencontainers.image.ref.name".to_string(), image.tag.to_string())].into()));
    let index = oci::ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(oci::MediaType::ImageIndex)
        .manifests(vec![manifest_desc])
        .build()?;
    std::fs::write(dir.join("index.json"), sorted_json(&index)?)?;
    let layout: BTreeMap<&str, &str> = [("imageLayoutVersion", "1.0.0")].into();
    std::fs::write(dir.join("oci-layout"), serde_json::to_vec(&layout)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_follow_the_docker_grammar() {
        for good in ["latest", "12", "v1.2.3-rc_1", "_x"] {
            assert!(valid_tag(good), "{good}");
        }
        for bad in ["", ".x", "-x", "a:b", "a/b", &"x".repeat(129)] {
            assert!(!valid_tag(bad), "{bad}");
        }
    }

    #[test]
    fn created_follows_source_date_epoch() {
        // The only test in this binary that sets it.
        std::env::set_var("SOURCE_DATE_EPOCH", "1700000000");
        assert_eq!(created().unwrap(), "2023-11-14T22:13:20Z");
        std::env::set_var("SOURCE_DATE_EPOCH", "yesterday");
        assert!(created().is_err());
        std::env::remove_var("SOURCE_DATE_EPOCH");
    }

    #[test]
    fn the_layout_names_layer_config_and_tag() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("blobs/sha256")).unwrap();
        let layer = Blob { sha256: "a".repeat(64), size: 10 };
        let image = Image {
            diff_id: &"b".repeat(64),
            layer: &layer,
            arch: "x86_64",
            cmd: vec!["/bin/sh".into()],
            pipeline: "p",
            layer_key: "k",
            tag: "12",
        };
        write_layout(d.path(), &image).unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path().join("index.json")).unwrap()).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], "12");
        let digest = m["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap();
        let manifest_bytes = std::fs::read(d.path().join("blobs/sha256").join(digest)).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&manifest_bytes)), digest);
        let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
        assert_eq!(manifest["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
        let config_digest = manifest["config"]["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path().join("blobs/sha256").join(config_digest)).unwrap()).unwrap();
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["config"]["Cmd"], serde_json::json!(["/bin/sh"]));
        assert_eq!(config["config"]["Labels"][LABEL_LAYER], "k");
        assert_eq!(config["rootfs"]["diff_ids"][0], format!("sha256:{}", "b".repeat(64)));
    }
}
