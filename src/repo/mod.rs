//! A virt-builder repository in a directory: `index` and its clearsigned `index.asc`, xz
//! images named `<name>-r<revision>.xz`, the public key `<name>.asc` and a sources file
//! `<name>.conf` for clients. Updates are locked and atomic: files are written under
//! temporary names and renamed into place, index.asc last, so a crash at any moment leaves
//! the previous signed index valid and every file it names complete.

pub mod blocks;
pub mod changes;
pub mod index;
pub mod location;
pub mod manifest;
pub mod page;
pub mod remote;
pub mod repository;
pub mod sbom;
pub mod serve;
pub mod source;
pub mod trust;

use crate::bad_input;
use crate::base::sign;
use crate::base::ui::Ui;
use anyhow::{bail, Context, Result};
use index::{Entry, Index};
use repository::NewImage;
use sha2::Sha512;
use std::path::{Path, PathBuf};

const KEY_FILE: &str = "signing-key.fpr";

/// Where remote clients install a repository's sources file and public key.
pub const CLIENT_REPOS_D: &str = "/etc/virt-builder/repos.d";

pub struct Repo {
    pub dir: PathBuf,
}

/// An exclusive lock on a repository, released on drop.
pub struct RepoLock {
    _file: std::fs::File,
}

impl Repo {
    pub fn open(dir: &Path) -> Result<Repo> {
        if !dir.join("index.asc").exists() && !dir.join(KEY_FILE).exists() {
            return Err(bad_input!(
                "{} is not a repository (no index.asc); create it with `pipeline repo init {}`",
                dir.display(),
                dir.display()
            ));
        }
        Ok(Repo { dir: dir.to_path_buf() })
    }

    /// The repository's name: its directory's name, used for the key and .conf files.
    pub fn name(&self) -> String {
        std::fs::canonicalize(&self.dir)
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "repo".into())
    }

    /// Creates a repository (or completes a half-made one): the signing key (generated when
    /// none is given), its public half, the .conf for clients and an empty signed index. The
    /// key is recorded in this user's trust store (see `trust`), the pin consumers check the
    /// repository against. `sign_key` on an existing repository moves it to that key: the
    /// entries the old key signed are signed again.
    pub fn init(
        dir: &Path,
        sign_key: Option<&str>,
        generate_name: Option<&str>,
        uri: Option<&str>,
    ) -> Result<(Repo, String)> {
        let sign_key =
            sign_key.map(|k| sign::parse_fingerprint(k).map_err(|e| bad_input!("signing key: {e}"))).transpose()?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let repo = Repo { dir: dir.to_path_buf() };
        let _lock = repo.lock()?;
        let (pinned, named) = repo.recorded_keys()?;
        let existing = match (&pinned, &named, &sign_key) {
            // Moving the repository: the old entries are what the trusted key signed.
            (Some(p), _, Some(_)) => Some(p.clone()),
            _ => repo.configured_key()?,
        };
        let fingerprint = match (sign_key, existing.clone()) {
            (Some(k), _) => {
                if !sign::has_secret_key(&k) {
                    return Err(bad_input!(
                        "signing key {k}: no secret key with that fingerprint in the keyring (GNUPGHOME)"
                    ));
                }
                k
            }
            (None, Some(k)) => k,
            (None, None) => {
                let name = generate_name
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{} repository signing key", repo.name()));
                sign::generate_key(&name)?
            }
        };
        // Read (and check) before the public key file that may vouch for the old key changes.
        let index = match &existing {
            Some(old) => repo.signed_index(old)?,
            None if dir.join("index.asc").exists() => {
                return Err(bad_input!(
                    "{}: has a signed index.asc but no key is recorded for it; pass the key that signed it \
                     with --sign-key",
                    dir.display()
                ))
            }
            None => repo.signed_index(&fingerprint)?,
        };
        crate::base::atomic::write(&dir.join(KEY_FILE), format!("{fingerprint}\n").as_bytes())?;
        let name = repo.name();
        crate::base::atomic::write(&repo.public_key_path(), &sign::export_public_key(&fingerprint)?)?;
        let abs = std::fs::canonicalize(dir)?;
        // virt-builder takes the key only from a local file (it ignores a gpgkey= that is not
        // file://), so remote clients install it next to the sources file.
        let (uri, key) = match uri {
            Some(u) => (format!("{}/index.asc", u.trim_end_matches('/')), PathBuf::from(CLIENT_REPOS_D)),
            None => (format!("file://{}/index.asc", abs.display()), abs.clone()),
        };
        let conf = format!("[{name}]\nuri={uri}\ngpgkey=file://{}\n", key.join(format!("{name}.asc")).display());
        crate::base::atomic::write(&repo.conf_path(), conf.as_bytes())?;
        // A new index, or the existing one signed again when the key changed.
        if existing.as_deref() != Some(fingerprint.as_str()) || !dir.join("index.asc").exists() {
            repo.write_index(&index, &fingerprint)?;
        }
        trust::record(dir, &fingerprint)?;
        Ok((repo, fingerprint))
    }

    pub fn public_key_path(&self) -> PathBuf {
        self.dir.join(format!("{}.asc", self.name()))
    }

    pub fn conf_path(&self) -> PathBuf {
        self.dir.join(format!("{}.conf", self.name()))
    }

    /// The key recorded for the repository in this user's trust store, and the one its
    /// `signing-key.fpr` names.
    fn recorded_keys(&self) -> Result<(Option<String>, Option<String>)> {
        let pinned = trust::pinned(&self.dir)?;
        let path = self.dir.join(KEY_FILE);
        let named = match std::fs::read_to_string(&path) {
            Ok(s) => Some(sign::parse_fingerprint(s.trim()).map_err(|e| bad_input!("{}: {e}", path.display()))?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok((pinned, named))
    }

    /// The repository's key: the one recorded when it was initialised, else (a repository
    /// initialised by another user) the one it names. The two must agree: the file inside the
    /// repository can be changed by anyone who can write the repository.
    pub fn configured_key(&self) -> Result<Option<String>> {
        match self.recorded_keys()? {
            (Some(p), Some(f)) if p != f => Err(bad_input!(
                "{dir}/{KEY_FILE} names key {f}, but the repository was initialised with key {p} (recorded in \
                 {store}): the file was changed outside pipeline. To keep {p}, run `pipeline repo init {dir} \
                 --sign-key {p}`; to move the repository to {f}, run `pipeline repo init {dir} --sign-key {f}`",
                dir = self.dir.display(),
                store = trust::store_dir().unwrap_or_default().display()
            )),
            (p, f) => Ok(p.or(f)),
        }
    }

    /// The key that signs the index: the repository's own; a key given for one update must
    /// be that key, since clients trust only it (`repo init --sign-key` moves a repository
    /// to another key).
    pub fn signing_key(&self, override_key: Option<&str>) -> Result<String> {
        let override_key =
            override_key.map(|k| sign::parse_fingerprint(k).map_err(|e| bad_input!("signing key: {e}"))).transpose()?;
        match (override_key, self.configured_key()?) {
            (Some(k), Some(c)) if k != c => Err(bad_input!(
                "{dir} is signed by {c} and its clients trust only that key, not {k}; to move the repository \
                 to {k}, run `pipeline repo init {dir} --sign-key {k}`",
                dir = self.dir.display()
            )),
            (_, Some(c)) => Ok(c),
            (Some(k), None) => Ok(k),
            (None, None) => Err(bad_input!(
                "{}: no signing key configured; pass --sign-key or run `pipeline repo init`",
                self.dir.display()
            )),
        }
    }

    pub fn lock(&self) -> Result<RepoLock> {
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(".lock"))
            .with_context(|| format!("cannot lock {}", self.dir.display()))?;
        file.lock().with_context(|| format!("cannot lock {}", self.dir.display()))?;
        Ok(RepoLock { _file: file })
    }

    /// The index as last written (the unsigned copy, for display; updates read
    /// `signed_index`).
    pub fn index(&self) -> Result<Index> {
        match std::fs::read_to_string(self.dir.join("index")) {
            Ok(text) => Index::parse(&text).map_err(|e| anyhow::anyhow!("{}/index: {e}", self.dir.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// The index as `index.asc` says, checked against `fingerprint` (and only it). Updates
    /// start from it, so they sign again only what was signed: a plain `index` that differs
    /// from it (edited outside the tool) is refused. No index.asc: an empty index.
    pub fn signed_index(&self, fingerprint: &str) -> Result<Index> {
        let asc = self.dir.join("index.asc");
        let plain = match std::fs::read_to_string(self.dir.join("index")) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}/index", self.dir.display())),
        };
        let signed = match crate::download::read_small_file(&asc) {
            Ok(s) => s,
            Err(_) if !asc.exists() => {
                if plain.as_deref().is_some_and(|p| !p.trim().is_empty()) {
                    bail!(
                        "{}/index has entries but there is no signed index.asc: the repository was edited \
                         outside pipeline; remove the index, or restore index.asc",
                        self.dir.display()
                    );
                }
                return Ok(Index::default());
            }
            Err(e) => return Err(e),
        };
        let published = std::fs::read(self.public_key_path()).ok();
        let text = sign::verify_pinned(&signed, fingerprint, published.as_deref())
            .with_context(|| format!("{}: signature check failed", asc.display()))?;
        let text = String::from_utf8(text).map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", asc.display()))?;
        if let Some((line, got, want)) = plain.as_deref().and_then(|p| first_difference(p, &text)) {
            bail!(
                "{dir}/index differs from the signed {dir}/index.asc at line {line} (index: `{got}`, index.asc: \
                 `{want}`): the repository was edited outside pipeline, and an update would sign what nobody \
                 signed. Nothing was changed. If the edit is unwanted, delete {dir}/index (the next update writes \
                 it again from the signed index) and check the rest with `pipeline repo verify {dir}`",
                dir = self.dir.display()
            );
        }
        Index::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", asc.display()))
    }

    /// Writes `index`, then `index.asc` signed by `fingerprint`, each atomically.
    fn write_index(&self, index: &Index, fingerprint: &str) -> Result<()> {
        let text = index.render();
        let signed = sign::clearsign(fingerprint, text.as_bytes())?;
        crate::base::atomic::write(&self.dir.join("index"), text.as_bytes())?;
        crate::base::atomic::write(&self.dir.join("index.asc"), &signed)?;
        Ok(())
    }

    /// A new empty file for an image being written into the repository,
    /// `.tmp-PID-RANDOM-NAME.xz`: created exclusively (never through a link someone placed
    /// at a name they guessed), and named by the process so that `prune` leaves it while the
    /// publish runs. Mode 0644, as every file of a repository: it is served, possibly by
    /// another user (the serve unit's).
    pub fn new_temp_image(&self, name: &str) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let file = tempfile::Builder::new()
            .prefix(&format!(".tmp-{}-", std::process::id()))
            .suffix(&format!("-{name}.xz"))
            .rand_bytes(8)
            .permissions(std::fs::Permissions::from_mode(0o644))
            .tempfile_in(&self.dir)
            .with_context(|| format!("cannot create a temporary file in {}", self.dir.display()))?;
        let (_, path) = file.keep().map_err(|e| e.error)?;
        Ok(path)
    }

    /// Adds (or replaces, with the revision bumped) an entry whose compressed image is at
    /// `new.image`, a path from [`Self::new_temp_image`]: it is renamed into place. The
    /// package manifest, when given, is signed and written for the new revision first; the
    /// block map is kept beside the image for later publishes to reuse.
    pub fn publish(&self, new: NewImage, sign_key: Option<&str>, ui: &Ui) -> Result<Entry> {
        let NewImage { name, mut fields, image: temp, checksum, manifest, blocks } = new;
        let _lock = self.lock()?;
        let fingerprint = self.signing_key(sign_key)?;
        let mut index = self.signed_index(&fingerprint)?;
        // Past revisions count too: a removed entry published again does not reuse the
        // number (and the files) of an old revision still on disk.
        let on_disk = manifest::revisions(&self.dir, name).last().copied().unwrap_or(0);
        let in_index = index.entries.iter().find(|e| e.id == name).map(|e| e.revision()).unwrap_or(0);
        let revision = in_index.max(on_disk) + 1;
        let file = format!("{name}-r{revision}.xz");
        if let Some(mut m) = manifest {
            m.entry = name.to_string();
            m.revision = revision;
            for (doc, bytes) in sbom::attach(&mut m, &file) {
                crate::base::atomic::write(&self.dir.join(doc), &bytes)?;
            }
            manifest::write(&self.dir, &m, &fingerprint)?;
        }
        std::fs::File::open(temp)?.sync_all()?;
        std::fs::rename(temp, self.dir.join(&file))?;
        if let Some(map) = blocks {
            // Only a later publish's speed depends on it.
            if let Err(e) = blocks::save(&self.dir.join(&file), &map) {
                ui.line(format!("warning: cannot write the block map of {file}: {e:#}"));
            }
        }
        fields.insert(0, ("file".into(), file));
        fields.insert(1, ("revision".into(), revision.to_string()));
        fields.insert(2, ("checksum[sha512]".into(), checksum.to_string()));
        let entry = Entry { id: name.to_string(), fields };
        index.upsert(entry.clone());
        self.write_index(&index, &fingerprint)?;
        Ok(entry)
    }

    pub fn remove(&self, name: &str, sign_key: Option<&str>) -> Result<Entry> {
        let _lock = self.lock()?;
        let fingerprint = self.signing_key(sign_key)?;
        let mut index = self.signed_index(&fingerprint)?;
        let entry = index.remove(name).ok_or_else(|| bad_input!("{}: no entry `{name}`", self.dir.display()))?;
        self.write_index(&index, &fingerprint)?;
        if let Some(file) = entry.file() {
            remove_image(&self.dir.join(file))?;
        }
        Ok(entry)
    }

    /// Deletes image files of older revisions beyond the newest `keep` (at least 1, see
    /// `Repository::prune`) per name (the index names only the newest; older ones stay for
    /// rollback), and leftovers of crashed writes (a running publisher's image, written
    /// before it takes the lock, stays).
    pub fn prune(&self, keep: usize) -> Result<Vec<PathBuf>> {
        let _lock = self.lock()?;
        let index = self.signed_index(&self.signing_key(None)?)?;
        let mut removed = Vec::new();
        for entry in &index.entries {
            let prefix = format!("{}-r", entry.id);
            let mut revisions: Vec<(u64, PathBuf)> = std::fs::read_dir(&self.dir)?
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let rev = name.strip_prefix(&prefix)?.strip_suffix(".xz")?.parse().ok()?;
                    Some((rev, e.path()))
                })
                .collect();
            revisions.sort_by_key(|r| std::cmp::Reverse(r.0));
            for (_, path) in revisions.into_iter().skip(keep) {
                if Some(path.file_name().unwrap_or_default().to_string_lossy().as_ref()) != entry.file() {
                    remove_image(&path)?;
                    removed.push(path);
                }
            }
        }
        for e in std::fs::read_dir(&self.dir)? {
            let path = e?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let orphan_map = name
                .strip_suffix(blocks::SUFFIX)
                .filter(|image| image.ends_with(".xz"))
                .is_some_and(|image| !self.dir.join(image).exists());
            // SBOMs go with their image (publish writes them under the lock, before the image).
            let orphan_sbom = [sbom::SPDX_SUFFIX, sbom::CYCLONEDX_SUFFIX]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .is_some_and(|stem| !self.dir.join(format!("{stem}.xz")).exists());
            if (name.starts_with(".tmp-") && !temp_of_live_process(&name)) || orphan_map || orphan_sbom {
                std::fs::remove_file(&path)?;
                removed.push(path);
            }
        }
        Ok(removed)
    }

    /// Every problem with the repository: signature, missing or altered files, sizes.
    pub fn verify(&self, fingerprint: Option<&str>) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let signed = match std::fs::read(self.dir.join("index.asc")) {
            Ok(s) => s,
            Err(e) => return Ok(vec![format!("index.asc: {e}")]),
        };
        let want = match fingerprint {
            Some(f) => sign::parse_fingerprint(f).map_err(|e| bad_input!("--fingerprint: {e}"))?,
            None => match self.configured_key() {
                Ok(Some(k)) => k,
                Ok(None) => return Ok(vec!["no key is recorded for this repository: pass --fingerprint".into()]),
                Err(e) => return Ok(vec![format!("{e:#}")]),
            },
        };
        let published = std::fs::read(self.public_key_path()).ok();
        let text = match sign::verify_pinned(&signed, &want, published.as_deref()) {
            Ok(t) => String::from_utf8_lossy(&t).into_owned(),
            Err(e) => return Ok(vec![format!("index.asc: signature check failed: {e:#}")]),
        };
        let index = match Index::parse(&text) {
            Ok(i) => i,
            Err(e) => return Ok(vec![format!("index.asc: {e}")]),
        };
        if let Ok(plain) = std::fs::read_to_string(self.dir.join("index")) {
            if plain.trim_end() != text.trim_end() {
                problems.push("index: differs from the signed index.asc".to_string());
            }
        }
        for entry in &index.entries {
            let id = &entry.id;
            let Some(file) = entry.file() else {
                problems.push(format!("[{id}]: no file= line"));
                continue;
            };
            if file.contains('/') && !file.starts_with("http") {
                problems.push(format!("[{id}]: file {file} is outside the repository"));
                continue;
            }
            let path = self.dir.join(file);
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    problems.push(format!("[{id}]: {file}: {e}"));
                    continue;
                }
            };
            if let Some(cs) = entry.get("compressed_size").and_then(|s| s.parse::<u64>().ok()) {
                if cs != meta.len() {
                    problems
                        .push(format!("[{id}]: {file} is {} bytes, the index says compressed_size={cs}", meta.len()));
                }
            }
            match (entry.checksum(), sha512_file(&path)) {
                (Some(want), Ok(got)) if want != got => {
                    problems.push(format!("[{id}]: {file}: sha512 {got} does not match the index ({want})"))
                }
                (None, _) => problems.push(format!("[{id}]: no checksum[sha512] line")),
                (_, Err(e)) => problems.push(format!("[{id}]: {file}: {e}")),
                _ => {}
            }
            if entry.get("size").and_then(|s| s.parse::<u64>().ok()).is_none() {
                problems.push(format!("[{id}]: no valid size= line"));
            }
        }
        // Every package manifest: signed by the key, naming itself, and for a current
        // revision naming the image the index names.
        let mut files: Vec<String> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.ends_with(manifest::SUFFIX))
            .collect();
        files.sort();
        for file in files {
            let parsed = file
                .strip_suffix(manifest::SUFFIX)
                .and_then(|s| s.rsplit_once("-r"))
                .and_then(|(name, rev)| Some((name.to_string(), rev.parse::<u64>().ok()?)));
            let Some((name, revision)) = parsed else {
                problems.push(format!("{file}: not a manifest name (NAME-rN{})", manifest::SUFFIX));
                continue;
            };
            match manifest::read(&self.dir, &name, revision, &want, published.as_deref()) {
                Err(e) => problems.push(format!("{file}: {e:#}")),
                Ok(m) => {
                    for (doc, want_sha512) in &m.documents {
                        match sha512_file(&self.dir.join(doc)) {
                            Ok(got) if &got == want_sha512 => {}
                            Ok(got) => problems.push(format!(
                                "{doc}: sha512 {got} does not match the one its signed manifest {file} names ({want_sha512})"
                            )),
                            Err(e) => problems.push(format!("{doc} (named by {file}): {e:#}")),
                        }
                    }
                    let current = index.get(&name).filter(|e| e.revision() == revision);
                    if let Some(e) = current.filter(|e| e.checksum() != Some(m.image_sha512.as_str())) {
                        problems.push(format!(
                            "{file}: names image sha512 {}, the index's [{}] is {}",
                            m.image_sha512,
                            e.id,
                            e.checksum().unwrap_or("-")
                        ));
                    }
                }
            }
        }
        Ok(problems)
    }

    /// The package manifest of a revision, verified against the repository's recorded key.
    pub fn manifest(&self, name: &str, revision: u64) -> Result<manifest::Manifest> {
        let pin = self
            .configured_key()?
            .ok_or_else(|| anyhow::anyhow!("{}: no key is recorded for this repository", self.dir.display()))?;
        let published = std::fs::read(self.public_key_path()).ok();
        manifest::read(&self.dir, name, revision, &pin, published.as_deref())
    }
}

/// Deletes an image file and what is kept beside it (its block map).
fn remove_image(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let _ = std::fs::remove_file(blocks::map_path(path));
    let _ = std::fs::remove_file(manifest::path_of_image(path));
    if let (Some(dir), Some(file)) = (path.parent(), path.file_name()) {
        for doc in sbom::document_names(&file.to_string_lossy()) {
            let _ = std::fs::remove_file(dir.join(doc));
        }
    }
    Ok(())
}

/// The first line where a plain index and the signed text differ (blank lines and trailing
/// blanks aside: clearsigning ignores the latter, the format the former): its number in the
/// plain index and both versions.
fn first_difference(plain: &str, signed: &str) -> Option<(usize, String, String)> {
    let lines = |t: &str| {
        t.lines()
            .enumerate()
            .map(|(n, l)| (n + 1, l.trim_end().to_string()))
            .filter(|(_, l)| !l.is_empty())
            .collect::<Vec<_>>()
    };
    let (a, b) = (lines(plain), lines(signed));
    let i = (0..a.len().max(b.len())).find(|&i| a.get(i).map(|x| &x.1) != b.get(i).map(|x| &x.1))?;
    let show = |v: &[(usize, String)]| v.get(i).map(|x| x.1.clone()).unwrap_or_else(|| "(end)".into());
    let line = a.get(i).or(a.last()).map(|x| x.0).unwrap_or(1);
    Some((line, show(&a), show(&b)))
}

/// Whether a `.tmp-PID-...` file belongs to a process that is still running (a publish
/// compressing its image). Other temporary files are only written under the lock, so any
/// found by a lock holder are leftovers.
fn temp_of_live_process(file_name: &str) -> bool {
    let Some(rest) = file_name.strip_prefix(".tmp-") else { return false };
    let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { return false };
    pid > 0 && Path::new("/proc").join(pid.to_string()).exists()
}

/// The hex SHA-512 of a file, as the index's `checksum[sha512]` holds it.
pub fn sha512_file(path: &Path) -> Result<String> {
    crate::base::digest::file_hex::<Sha512>(path)
}

/// Checks that a name is safe as an index id and a file name.
pub fn check_entry_name(name: &str) -> Result<()> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) || name.starts_with('.')
    {
        bail!("`{name}` is not a usable entry name (letters, digits, - _ . only)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A publish writes its image under `.tmp-PID-RANDOM-NAME.xz` before it takes the lock:
    /// prune (which holds the lock) leaves those of running processes (whatever the entry's
    /// name holds) and removes the rest.
    #[test]
    fn prune_keeps_the_temporary_image_of_a_running_publish() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repo { dir: tmp.path().to_path_buf() };
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let live = repo.new_temp_image("debian").unwrap();
        let live_qcow2 = live.with_extension("qcow2");
        let dotted = repo.new_temp_image("debian-12.1").unwrap();
        let crashed = tmp.path().join(format!(".tmp-{dead}-a1B2c3d4-debian.xz"));
        let stray = tmp.path().join(".tmp-a1B2c3");
        for f in [&live_qcow2, &crashed, &stray] {
            std::fs::write(f, b"x").unwrap();
        }
        std::fs::write(tmp.path().join(KEY_FILE), "61A0D7D05F70F0F8E76E6E91E17F83535EEEE8D4\n").unwrap();
        let removed = repo.prune(1).unwrap();
        assert!(live.exists() && live_qcow2.exists() && dotted.exists(), "a running publish keeps its files");
        assert!(!crashed.exists() && !stray.exists(), "leftovers go: {removed:?}");
    }

    /// The temporary image is a new file of its own: a link placed where a guessable name
    /// would be is never written through, and two publishes never share a name.
    #[test]
    fn a_temporary_image_is_created_exclusively_under_a_name_of_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repo { dir: tmp.path().to_path_buf() };
        let target = tmp.path().join("elsewhere");
        std::fs::write(&target, b"keep").unwrap();
        // Where the name used to be `.tmp-NAME-PID.xz`.
        std::os::unix::fs::symlink(&target, tmp.path().join(format!(".tmp-debian-{}.xz", std::process::id()))).unwrap();
        let a = repo.new_temp_image("debian").unwrap();
        let b = repo.new_temp_image("debian").unwrap();
        assert_ne!(a, b);
        for p in [&a, &b] {
            let meta = std::fs::symlink_metadata(p).unwrap();
            assert!(meta.file_type().is_file() && meta.len() == 0, "{}", p.display());
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }

    #[test]
    fn the_first_difference_of_two_indexes_is_named() {
        let signed = "[a]\nrevision=1\nfile=a-r1.xz\n";
        assert_eq!(first_difference(signed, &format!("{signed}\n")), None);
        assert_eq!(first_difference("[a]\nrevision=1 \nfile=a-r1.xz", signed), None);
        let got = first_difference("[a]\nrevision=2\nfile=a-r1.xz\n", signed);
        assert_eq!(got, Some((2, "revision=2".into(), "revision=1".into())));
        let got = first_difference(&format!("{signed}\n[b]\n"), signed);
        assert_eq!(got, Some((5, "[b]".into(), "(end)".into())));
        let got = first_difference("[a]\n", signed);
        assert_eq!(got, Some((1, "(end)".into(), "revision=1".into())));
    }
}
