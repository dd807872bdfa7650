//! The operations every repository backend offers, so that commands, the rebuild report and
//! `repo diff` never ask which kind of repository they have: [`open`] and [`init`] pick the
//! implementation from the [`Location`]. A local directory is [`super::Repo`], object
//! storage [`super::remote::RemoteRepo`].

use super::index::{Entry, Index};
use super::location::Location;
use super::manifest::{self, Manifest};
use super::remote::RemoteRepo;
use super::Repo;
use crate::bad_input;
use crate::base::ui::Ui;
use anyhow::Result;

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
}

/// An existing repository.
pub fn open(location: &Location) -> Result<Box<dyn Repository>> {
    match location {
        Location::Local(dir) => Ok(Box::new(Repo::open(dir)?)),
        Location::ObjectStorage(l) => Ok(Box::new(RemoteRepo::connect(&l.to_string())?)),
        Location::Http(url) => Err(read_only(url)),
    }
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
    fn location(&self) -> String {
        self.dir.display().to_string()
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
}
