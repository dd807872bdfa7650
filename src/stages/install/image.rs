//! `method = "image"` (and `from = { image | repo }`): an existing disk image from a file, a
//! URL, or a signed virt-builder repository entry, imported as the first layer.

use super::expand;
use crate::bad_input;
use crate::base::sign;
use crate::download;
use crate::engine::stage::{LayerKind, ResolveContext, Stage, StageContext, StageResult};
use crate::guest::{Drive, Guest};
use crate::image::qemu_img::{self, Detected};
use crate::repo::location::Location;
use crate::repo::{self, index::Entry, source};
use crate::upstream::Upstream;
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub enum ImageSource {
    /// A local file (hashed into the cache key) or a URL.
    File(String),
    /// An entry of a virt-builder repository: a directory or the URL of its index.asc, and
    /// the full fingerprint of the key it must be signed by (for a local repository, the key
    /// `repo init` recorded when none is given).
    Repo { repo: String, name: String, fingerprint: Option<String> },
}

pub struct ImageStage {
    source: ImageSource,
    /// The declared format of a file or URL (`format = "raw" | "qcow2"`, of the content
    /// when xz-compressed); detected from its first bytes when not given.
    format: Option<String>,
    disk_size: Option<String>,
    expand: Option<String>,
    base_dir: PathBuf,
    /// The pipeline file and key, for messages.
    where_: String,
    /// Where the repository of a repository entry is.
    location: Option<Location>,
    /// The repository entry as the verified index says, read once by `resolve`.
    resolved: std::cell::OnceCell<Entry>,
}

impl ImageStage {
    pub fn new(
        mut source: ImageSource,
        format: Option<String>,
        disk_size: Option<String>,
        expand: Option<String>,
        base_dir: &Path,
        where_: &str,
    ) -> Result<ImageStage> {
        if let Some(fmt) = &format {
            if !matches!(fmt.as_str(), "raw" | "qcow2") {
                return Err(bad_input!("{where_}: format `{fmt}` is not an image format: give \"raw\" or \"qcow2\""));
            }
            if matches!(source, ImageSource::Repo { .. }) {
                return Err(bad_input!(
                    "{where_}: format goes with `image`; a repository entry's format is the one its signed index declares"
                ));
            }
        }
        if let ImageSource::File(f) = &source {
            if !download::is_url(f) && !base_dir.join(f).exists() {
                return Err(bad_input!("{where_}: image {} does not exist", base_dir.join(f).display()));
            }
        }
        let mut location = None;
        if let ImageSource::Repo { repo, fingerprint, .. } = &mut source {
            let at = Location::parse(repo, base_dir).map_err(|e| bad_input!("{where_}.repo: {e:#}"))?;
            match fingerprint.as_deref() {
                Some(f) => {
                    let full = sign::parse_fingerprint(f).map_err(|e| bad_input!("{where_}.fingerprint: {e}"))?;
                    *fingerprint = Some(full);
                }
                None if matches!(at, Location::Http(_)) => {
                    return Err(bad_input!(
                        "{where_}.fingerprint: the repository {repo} is read over the network, so the key that \
                         signs it must be pinned: add fingerprint = \"...\" (its full 40-digit fingerprint)"
                    ));
                }
                None => {}
            }
            location = Some(at);
        }
        if let Some(size) = &disk_size {
            if qemu_img::parse_size(size).is_none() {
                return Err(bad_input!("{where_}: disk_size `{size}` is not a size such as 10G"));
            }
        }
        if let Some(part) = &expand {
            if !part.starts_with("/dev/") {
                return Err(bad_input!("{where_}: expand `{part}` is not a partition such as /dev/sda1"));
            }
            if disk_size.is_none() {
                return Err(bad_input!("{where_}: expand needs disk_size, the size to grow the disk to"));
            }
        }
        Ok(ImageStage {
            source,
            format,
            disk_size,
            expand,
            base_dir: base_dir.to_path_buf(),
            where_: where_.to_string(),
            location,
            resolved: std::cell::OnceCell::new(),
        })
    }
}

impl Stage for ImageStage {
    fn kind(&self) -> &'static str {
        "install"
    }

    fn layer_kind(&self) -> LayerKind {
        LayerKind::Base
    }

    fn config(&self) -> serde_json::Value {
        let source = match &self.source {
            ImageSource::File(f) => serde_json::json!({ "image": f }),
            // The entry's revision and checksum are upstream state (see `upstream`).
            ImageSource::Repo { repo, name, .. } => serde_json::json!({ "repo": repo, "name": name }),
        };
        let mut source = source;
        if let Some(fmt) = &self.format {
            source["format"] = fmt.as_str().into();
        }
        serde_json::json!({ "method": "image", "source": source, "disk_size": self.disk_size, "expand": self.expand })
    }

    /// Fetches and verifies the repository's index once; `config` and `run` use the entry.
    fn resolve(&self, ctx: &ResolveContext) -> Result<()> {
        let (ImageSource::Repo { repo, name, fingerprint }, Some(location)) = (&self.source, &self.location) else {
            return Ok(());
        };
        if self.resolved.get().is_some() {
            return Ok(());
        }
        let cache = ctx.settings.work_dir.join("downloads");
        let io = source::Io { cache: &cache, offline: ctx.settings.offline, keep_copy: !ctx.read_only, ui: ctx.ui };
        let index = source::verified_index(location, fingerprint.as_deref(), &self.where_, &io)?;
        let entry = index
            .get(name)
            .ok_or_else(|| bad_input!("{}.name: the repository {repo} has no entry `{name}`", self.where_))?
            .clone();
        let _ = self.resolved.set(entry);
        Ok(())
    }

    /// A URL's validators; a repository entry's revision and checksum from the verified
    /// index, so a republished image is a new layer.
    fn upstream(&self) -> Vec<Upstream> {
        match &self.source {
            ImageSource::File(f) if download::is_url(f) => vec![Upstream::Validators { url: f.clone() }],
            ImageSource::File(_) => vec![],
            ImageSource::Repo { repo, name, .. } => {
                let state = match self.resolved.get() {
                    Some(e) => format!("revision {} sha512 {}", e.revision(), e.checksum().unwrap_or("-")),
                    None => "not resolved".to_string(),
                };
                vec![Upstream::Resolved { what: format!("entry {name} of {repo}"), state }]
            }
        }
    }

    fn inputs(&self) -> Vec<PathBuf> {
        match &self.source {
            ImageSource::File(f) if !download::is_url(f) => vec![self.base_dir.join(f)],
            _ => vec![],
        }
    }

    fn run(&self, ctx: &mut StageContext) -> Result<StageResult> {
        let (local, entry_expand, entry_format) = self.fetch(ctx)?;
        let declared = match (&self.format, entry_format) {
            (Some(f), _) => Some((f.clone(), "declared by `format`")),
            (None, Some(f)) => Some((f, "declared by the repository index's format=")),
            (None, None) => None,
        };
        self.import(&local, declared, ctx)?;
        if let Some(size) = &self.disk_size {
            grow(size, self.expand.as_deref().or(entry_expand.as_deref()), ctx)?;
        }
        Ok(StageResult::default())
    }
}

impl ImageStage {
    /// The image as a local file (downloaded and, for a repository entry, checked against
    /// the signed index), and the entry's `expand=` partition and `format=` if it has them.
    fn fetch(&self, ctx: &mut StageContext) -> Result<(PathBuf, Option<String>, Option<String>)> {
        let cache = ctx.settings.work_dir.join("downloads");
        let offline = ctx.settings.offline;
        match &self.source {
            ImageSource::File(f) => {
                Ok((download::local_or_fetch(f, &self.base_dir, &cache, offline, ctx.ui)?, None, None))
            }
            ImageSource::Repo { .. } => {
                if self.resolved.get().is_none() {
                    self.resolve(&ResolveContext { settings: ctx.settings, ui: ctx.ui, read_only: false })?;
                }
                let entry = self.resolved.get().context("the repository entry was not resolved")?;
                let location = self.location.as_ref().context("a repository entry has a location")?;
                let io = source::Io { cache: &cache, offline, keep_copy: true, ui: ctx.ui };
                let local = source::fetch(location, entry, &io)?;
                let src = source::describe(location, entry);
                ctx.bar.set_message("checking sha512");
                let got = repo::sha512_file(&local)?;
                if Some(got.as_str()) != entry.checksum() {
                    if source::is_copy(location) {
                        let _ = std::fs::remove_file(&local);
                    }
                    bail!("{src}: sha512 {got} does not match the signed index; refusing the image");
                }
                ctx.log.line(format!("{src}: sha512 matches the signed index"));
                Ok((local, entry.get("expand").map(str::to_string), entry.get("format").map(str::to_string)))
            }
        }
    }

    /// Writes the image (xz decompressed first, sparsely) as the stage's qcow2 layer. The
    /// image is data: qemu-img is told its format (`declared`, else what its first bytes say,
    /// logged), and a qcow2 that names another host file is refused.
    fn import(&self, local: &Path, declared: Option<(String, &str)>, ctx: &mut StageContext) -> Result<()> {
        let decompressed = ctx.output.with_extension("raw.tmp");
        let result = (|| -> Result<()> {
            let src = if qemu_img::detect_format(local)? == Detected::Xz {
                ctx.bar.set_message("decompressing");
                let mut dec =
                    xz2::read::XzDecoder::new_multi_decoder(std::io::BufReader::new(std::fs::File::open(local)?));
                let mut out = std::fs::File::create(&decompressed)?;
                copy_sparse(&mut dec, &mut out)?;
                decompressed.clone()
            } else {
                local.to_path_buf()
            };
            let format = match declared {
                Some((f, how)) => {
                    if !matches!(f.as_str(), "raw" | "qcow2") {
                        bail!("{}: format `{f}` ({how}) is not raw or qcow2", local.display());
                    }
                    ctx.log.line(format!("image format: {f} ({how})"));
                    f
                }
                None => {
                    let f = match qemu_img::detect_format(&src)? {
                        Detected::Qcow2 => "qcow2",
                        Detected::Raw => "raw",
                        Detected::Xz => bail!("{}: compressed twice with xz", local.display()),
                    };
                    ctx.log.line(format!("image format: {f} (detected from its first bytes; no format declared)"));
                    f.to_string()
                }
            };
            if format == "qcow2" {
                qemu_img::check_self_contained(&src)?;
            }
            ctx.bar.set_message("importing");
            ctx.log.line(format!("importing {} ({format}) as qcow2", src.display()));
            qemu_img::convert_from(&src, &format, &ctx.output, "qcow2")
        })();
        let _ = std::fs::remove_file(&decompressed);
        result
    }
}

/// An image of a repository on object storage, kept in the download cache (its name is
/// unique to one publish, so a kept copy is that image; the caller checks its sha512).
/// Grows the layer to `size` when it is smaller, then the `expand` partition into the new space.
fn grow(size: &str, expand: Option<&str>, ctx: &mut StageContext) -> Result<()> {
    let want = qemu_img::parse_size(size).unwrap_or(0);
    if want <= qemu_img::info(&ctx.output)?.virtual_size {
        return Ok(());
    }
    qemu_img::resize(&ctx.output, size)?;
    if let Some(partition) = expand {
        ctx.bar.set_message(format!("expanding {partition}"));
        let g = Guest::new(ctx.settings.accel, Some(ctx.log.clone()), ctx.settings.verbose)?;
        g.add_drive(Drive { path: &ctx.output, format: "qcow2", readonly: false, discard: true })?;
        g.launch()?;
        expand::expand_partition(&g, partition, &ctx.log)?;
        g.shutdown()?;
    }
    Ok(())
}

/// Copies a stream to a file, seeking over zero blocks so the result stays sparse.
fn copy_sparse(src: &mut impl Read, out: &mut std::fs::File) -> Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = src.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        if buf[..filled].iter().all(|&b| b == 0) {
            out.seek(SeekFrom::Current(filled as i64))?;
        } else {
            out.write_all(&buf[..filled])?;
        }
        len += filled as u64;
    }
    out.set_len(len)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::stage::RunSettings;

    /// A repository entry's key is computed from the index `resolve` read once: with the
    /// server gone it is unchanged and still holds the entry's checksum; `plan`'s read-only
    /// resolve writes nothing into the work directory.
    #[test]
    fn a_resolved_key_needs_no_network() {
        let tmp = tempfile::tempdir().unwrap();
        let gnupg = tmp.path().join("gnupg");
        std::fs::create_dir(&gnupg).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&gnupg, std::fs::Permissions::from_mode(0o700)).unwrap();
        // No other unit test uses gpg; gpgme passes GNUPGHOME on to gpg.
        std::env::set_var("GNUPGHOME", &gnupg);
        let fpr = sign::generate_key("Unit Test <unit@example.net>").unwrap();
        let served = tmp.path().join("served");
        std::fs::create_dir(&served).unwrap();
        let index = "[e]\nfile=e-r1.xz\nrevision=1\nchecksum[sha512]=abc123\n";
        std::fs::write(served.join("index.asc"), sign::clearsign(&fpr, index.as_bytes()).unwrap()).unwrap();

        let router = crate::repo::serve::router(&served).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });

        let source = ImageSource::Repo {
            repo: format!("http://{addr}/index.asc"),
            name: "e".into(),
            fingerprint: Some(fpr.to_lowercase()),
        };
        let stage = ImageStage::new(source, None, None, None, tmp.path(), "p.toml: from").unwrap();
        let work = tmp.path().join("work");
        let settings = RunSettings {
            accel: crate::vm::Accel::Tcg,
            work_dir: work.clone(),
            offline: false,
            sign_key: None,
            verbose: false,
        };
        let ui = crate::base::ui::Ui::new();
        stage.resolve(&ResolveContext { settings: &settings, ui: &ui, read_only: true }).unwrap();
        let key = (stage.config(), stage.upstream());
        let Upstream::Resolved { state, .. } = &key.1[0] else { panic!("{:?}", key.1) };
        assert!(state.ends_with("sha512 abc123"), "{state}");

        stop.send(()).unwrap();
        server.join().unwrap();
        assert!(std::net::TcpStream::connect(addr).is_err(), "the server is gone");
        assert_eq!((stage.config(), stage.upstream()), key, "the key does not depend on the network once resolved");
        assert!(!work.exists(), "a read-only resolve writes nothing");
        let _ = std::process::Command::new("gpgconf").args(["--kill", "all"]).env("GNUPGHOME", &gnupg).status();
    }
}
