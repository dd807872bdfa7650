//! The operations every repository backend offers, so that commands, the rebuild report and
//! `repo diff` never ask which kind of repository they have: [`open`] and [`init`] pick the
//! implementation from the [`Location`]. A local directory is [`super::Repo`], object
//! storage [`super::remote::RemoteRepo`].

use super::blocks::{BlockMap, ReuseIndex};
use super::index::{Entry, Index};
use super::location::Location;
use super::manifest::{self, Manifest};
use super::remote::RemoteRepo;
use super::Repo;
use crate::bad_input;
use crate::base::ui::Ui;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// An image to publish: the entry, its index fields other than file, revision and
/// checksum, the compressed file and its sha512, its package manifest, and the map of its
/// xz blocks (kept where later publishes can reuse them).
pub struct NewImage<'a> {
    pub name: &'a str,
    pub fields: Vec<(String, String)>,
    pub image: &'a Path,
    pub checksum: &'a str,
    pub manifest: Option<Manifest>,
    pub blocks: Option<BlockMap>,
}

/// Where a new image is written before `publish` takes it; whatever is still there when this
/// is dropped (a failed or interrupted publish) is removed.
pub struct Staging {
    pub path: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub trait Repository {
    /// Its directory or URL, for messages.
    fn location(&self) -> String;
    /// The index, its signature checked against the repository's pinned key only.
    fn index(&self) -> Result<Index>;
    /// The revisions of `name` that have a package manifest, oldest first.
    fn manifest_revisions(&self, name: &str) -> Result<Vec<u64>>;
    /// The package manifest of a revision, its signature checked against the pinned key.
    fn manifest(&self, name: &str, revision: u64) -> Result<Manifest>;
    /// Takes an entry out of the index and deletes its images.
    fn remove(&self, name: &str, sign_key: Option<&str>) -> Result<Entry>;
    /// Deletes the images of older revisions beyond the newest `keep` per entry (at least
    /// 1: the index names the newest), and leftovers of interrupted publishes. Returns what
    /// was deleted.
    fn prune(&self, keep: usize) -> Result<Vec<String>>;
    /// Every problem found: signatures, missing or altered files.
    fn verify(&self, fingerprint: Option<&str>, ui: &Ui) -> Result<Vec<String>>;
    /// The key a change is signed with: `chosen` (a fingerprint) when given and accepted,
    /// else the repository's own.
    fn signing_key(&self, chosen: Option<&str>) -> Result<String>;
    /// Where the compressed image of entry `name` is written before [`Self::publish`]: in the
    /// repository itself, to be renamed into place, or in `work_dir`, to be uploaded.
    fn staging(&self, name: &str, work_dir: &Path) -> Result<Staging>;
    /// The blocks of its images that a new image made by `encoder` may copy, not encode.
    fn reusable_blocks(&self, encoder: &str) -> ReuseIndex;
    /// Whether the image an entry names is there (cheaply: `verify` checks its content).
    fn holds_image(&self, entry: &Entry) -> bool;
    /// Adds an image as the next revision of its entry; returns the entry as indexed.
    fn publish(&self, new: NewImage, sign_key: Option<&str>, ui: &Ui) -> Result<Entry>;
}

/// An existing repository.
pub fn open(location: &Location) -> Result<Box<dyn Repository>> {
    match location {
        Location::Local(dir) => Ok(Box::new(Repo::open(dir)?)),
        Location::ObjectStorage(l) => Ok(Box::new(RemoteRepo::connect(&l.to_string())?)),
        Location::Http(url) => Err(read_only(url)),
    }
}

/// The repository a publish to `location` would write to, or None for a local directory
/// that is not one yet ([`open_or_create`] makes it). Object storage is never created by a
/// publish: builders racing to create it would each make their own key.
pub fn for_publish(location: &Location) -> Result<Option<Box<dyn Repository>>> {
    match location {
        Location::Local(dir) if !dir.join("index.asc").exists() => Ok(None),
        _ => open(location).map(Some),
    }
}

/// The repository a publish writes to; a local directory that is not one yet is made a
/// repository signed by `sign_key` (a new key when None), and `ui` tells where clients find it.
pub fn open_or_create(location: &Location, sign_key: Option<&str>, ui: &Ui) -> Result<Box<dyn Repository>> {
    if let Some(repo) = for_publish(location)? {
        return Ok(repo);
    }
    let Location::Local(dir) = location else { unreachable!("for_publish opens every other location") };
    let (repo, fingerprint) = Repo::init(dir, sign_key, None, None)?;
    ui.line(format!(
        "created repository {} signed by key {fingerprint}; clients: copy {} to ~/.config/virt-builder/repos.d/",
        dir.display(),
        repo.conf_path().display()
    ));
    Ok(Box::new(repo))
}

/// What `repo init` made: the key, and lines telling the operator where clients find the
/// repository.
pub struct Initialized {
    pub fingerprint: String,
    pub notes: Vec<String>,
}

/// Creates a repository, completes a half-made one, or moves one to `sign_key` (see
/// [`Repo::init`] and [`RemoteRepo::init`]).
pub fn init(
    location: &Location,
    sign_key: Option<&str>,
    generate_name: Option<&str>,
    uri: Option<&str>,
) -> Result<Initialized> {
    match location {
        Location::Local(dir) => {
            let (repo, fingerprint) = Repo::init(dir, sign_key, generate_name, uri)?;
            let mut notes = vec![format!("public key: {}", repo.public_key_path().display())];
            notes.push(match uri {
                Some(_) => format!(
                    "virt-builder sources file: {} (clients: copy it and {} to {})",
                    repo.conf_path().display(),
                    repo.public_key_path().display(),
                    super::CLIENT_REPOS_D
                ),
                None => format!(
                    "virt-builder sources file: {} (copy it to ~/.config/virt-builder/repos.d/)",
                    repo.conf_path().display()
                ),
            });
            Ok(Initialized { fingerprint, notes })
        }
        Location::ObjectStorage(l) => {
            let (repo, fingerprint) = RemoteRepo::init(&l.to_string(), sign_key, generate_name, uri)?;
            let endpoint = &repo.store.endpoint;
            // Only for the operator's information: publishing never depends on it.
            let mut notes = vec![match repo.store.honours_conditional_put() {
                Ok(true) => format!("{endpoint}: honours conditional writes (an extra guard on records)"),
                Ok(false) => {
                    format!("{endpoint}: ignores conditional writes (as Garage does); publishing does not need them")
                }
                Err(e) => format!("{endpoint}: could not tell whether it honours conditional writes: {e:#}"),
            }];
            let name = repo.name();
            notes.push(format!("public key: {}", repo.store.url(&format!("{name}.asc"))));
            notes.push(format!(
                "virt-builder sources file: {} (clients: copy it and {name}.asc to {})",
                repo.store.url(&format!("{name}.conf")),
                super::CLIENT_REPOS_D
            ));
            Ok(Initialized { fingerprint, notes })
        }
        Location::Http(url) => Err(read_only(url)),
    }
}

fn read_only(url: &str) -> anyhow::Error {
    bad_input!("{url}: a repository served over HTTP is read-only here; run the command where it is kept")
}

/// `--keep 0` would delete the image the index names.
fn check_keep(location: &str, keep: usize) -> Result<()> {
    if keep == 0 {
        return Err(bad_input!("{location}: --keep 0 would delete the images the index names; keep at least 1"));
    }
    Ok(())
}

impl Repository for Repo {
    /// Absolute: publish records name it, and are read from anywhere.
    fn location(&self) -> String {
        std::fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone()).display().to_string()
    }

    fn index(&self) -> Result<Index> {
        self.signed_index(&self.signing_key(None)?)
    }

    fn manifest_revisions(&self, name: &str) -> Result<Vec<u64>> {
        Ok(manifest::revisions(&self.dir, name))
    }

    fn manifest(&self, name: &str, revision: u64) -> Result<Manifest> {
        Repo::manifest(self, name, revision)
    }

    fn remove(&self, name: &str, sign_key: Option<&str>) -> Result<Entry> {
        Repo::remove(self, name, sign_key)
    }

    fn prune(&self, keep: usize) -> Result<Vec<String>> {
        check_keep(&self.location(), keep)?;
        Ok(Repo::prune(self, keep)?.iter().map(|p| p.display().to_string()).collect())
    }

    fn verify(&self, fingerprint: Option<&str>, _ui: &Ui) -> Result<Vec<String>> {
        Repo::verify(self, fingerprint)
    }

    fn signing_key(&self, chosen: Option<&str>) -> Result<String> {
        Repo::signing_key(self, chosen)
    }

    fn staging(&self, name: &str, _work_dir: &Path) -> Result<Staging> {
        Ok(Staging { path: self.new_temp_image(name)?, _dir: None })
    }

    fn reusable_blocks(&self, encoder: &str) -> ReuseIndex {
        ReuseIndex::load(&self.dir, encoder)
    }

    fn holds_image(&self, entry: &Entry) -> bool {
        entry.file().is_some_and(|file| self.dir.join(file).exists())
    }

    fn publish(&self, new: NewImage, sign_key: Option<&str>, ui: &Ui) -> Result<Entry> {
        Repo::publish(self, new, sign_key, ui)
    }
}

impl Repository for RemoteRepo {
    fn location(&self) -> String {
        self.url()
    }

    fn index(&self) -> Result<Index> {
        RemoteRepo::index(self)
    }

    fn manifest_revisions(&self, name: &str) -> Result<Vec<u64>> {
        Ok(self.manifests(name)?.into_keys().collect())
    }

    fn manifest(&self, name: &str, revision: u64) -> Result<Manifest> {
        self.manifests(name)?
            .remove(&revision)
            .ok_or_else(|| anyhow::anyhow!("{}: `{name}` has no manifest for revision {revision}", self.url()))
    }

    fn remove(&self, name: &str, sign_key: Option<&str>) -> Result<Entry> {
        RemoteRepo::remove(self, name, sign_key)
    }

    fn prune(&self, keep: usize) -> Result<Vec<String>> {
        check_keep(&self.location(), keep)?;
        RemoteRepo::prune(self, keep)
    }

    fn verify(&self, fingerprint: Option<&str>, ui: &Ui) -> Result<Vec<String>> {
        RemoteRepo::verify(self, fingerprint, ui)
    }

    fn signing_key(&self, chosen: Option<&str>) -> Result<String> {
        RemoteRepo::signing_key(self, chosen)
    }

    fn staging(&self, name: &str, work_dir: &Path) -> Result<Staging> {
        let dir = crate::base::scratch::dir(work_dir, "publish")?;
        Ok(Staging { path: dir.path().join(format!("{name}.xz")), _dir: Some(dir) })
    }

    /// None: block maps are not kept on object storage (every image is encoded whole).
    fn reusable_blocks(&self, _encoder: &str) -> ReuseIndex {
        ReuseIndex::default()
    }

    /// Listing the bucket for every plan would cost a request per entry; `repo verify`
    /// checks the objects.
    fn holds_image(&self, entry: &Entry) -> bool {
        entry.file().is_some()
    }

    fn publish(&self, new: NewImage, sign_key: Option<&str>, ui: &Ui) -> Result<Entry> {
        RemoteRepo::publish(self, new, sign_key, ui)
    }
}
