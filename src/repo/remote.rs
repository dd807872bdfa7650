//! A virt-builder repository on S3-compatible object storage, written by several builders
//! at once without locks and without conditional writes (Garage ignores them).
//!
//! Layout under `s3://BUCKET/PREFIX/`:
//! - `NAME-ID.xz`: an image, under a name no other publish uses (ID: time and randomness);
//! - `records/NAME/ID.asc`: what one publish or removal did, clearsigned JSON. Records and
//!   images are only ever created, never rewritten;
//! - `index.asc`: the clearsigned virt-builder index, a deterministic function of the
//!   records (for each entry its newest record; revision = how many publishes the entry has
//!   had). Every publisher derives it, signs it, writes it, and reads the listing and the
//!   index back until the index it finds is the one the listing gives. The last writer's
//!   final check saw every record written before it, so no publish is lost whatever order
//!   the writes of `index.asc` land in (short of a publisher dying with a write still on
//!   its way, which `repo verify` reports and the next publish settles);
//! - `signing-key.fpr`, `NAME.asc` (public key) and `NAME.conf` (sources file for clients),
//!   written by `repo init`.

use super::index::{Entry, Index};
use super::manifest::Manifest;
use super::repository::NewImage;
use super::trust;
use crate::bad_input;
use crate::base::sign::{self, PinnedVerifier};
use crate::base::ui::Ui;
use crate::s3::{self, Location, Store};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

const INDEX: &str = "index.asc";
const KEY_FILE: &str = "signing-key.fpr";
const RECORDS: &str = "records/";
/// Small objects (index, records, keys) are read whole, up to this size.
const SMALL: u64 = 16 << 20;
/// An SBOM is read whole, up to this size (a large system's lists some thousand packages).
const SBOM_LIMIT: u64 = 256 << 20;
/// How many times a publisher writes the index before it gives up on it settling.
const SETTLE_ROUNDS: usize = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Publish,
    Remove,
}

/// What one publish or removal did; the index is derived from these alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub action: Action,
    pub entry: String,
    /// The record's own ID (its object name): sorts by when it was made.
    pub id: String,
    /// Publish: the image object, its sha512 and the other index fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<(String, String)>,
    /// Host and process that wrote it, for people reading the bucket.
    pub publisher: String,
    /// Publish: the image's packages and provenance (its revision is the record's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Manifest>,
}

pub struct RemoteRepo {
    pub store: Store,
    /// Records already read and verified, by object name: they never change.
    verified: std::cell::RefCell<std::collections::HashMap<String, Record>>,
}

impl RemoteRepo {
    pub fn connect(url: &str) -> Result<RemoteRepo> {
        Ok(RemoteRepo { store: Store::open(&Location::parse(url)?)?, verified: Default::default() })
    }

    pub fn url(&self) -> String {
        self.store.location.to_string()
    }

    /// The repository's name (the prefix's last part, else the bucket): of the key and
    /// sources files.
    pub fn name(&self) -> &str {
        self.store.location.name()
    }

    /// What the trust store knows the repository by: its URL at its endpoint.
    fn trust_id(&self) -> String {
        format!("{} at {}", self.url(), self.store.endpoint.trim_end_matches('/'))
    }

    /// The fingerprint `signing-key.fpr` in the bucket names. Anyone who can write the bucket
    /// can change it: it is only compared with the pinned key, never trusted alone.
    fn named_key(&self) -> Result<Option<String>> {
        match self.store.get(KEY_FILE, 1024)? {
            Some(b) => Ok(Some(
                sign::parse_fingerprint(String::from_utf8_lossy(&b).trim())
                    .map_err(|e| bad_input!("{}: {e}", self.store.url(KEY_FILE)))?,
            )),
            None => Ok(None),
        }
    }

    /// Creates the repository, or pins an existing one's key on this machine. A new one
    /// gets its signing key (generated when none is given), public half, the sources file
    /// for clients reading `uri`, and an empty signed index. An existing one is taken only
    /// with its key named by `--sign-key` (the bucket's own word for it is not proof); its
    /// sources file is rewritten when `uri` is given.
    pub fn init(
        url: &str,
        sign_key: Option<&str>,
        generate_name: Option<&str>,
        uri: Option<&str>,
    ) -> Result<(RemoteRepo, String)> {
        let sign_key =
            sign_key.map(|k| sign::parse_fingerprint(k).map_err(|e| bad_input!("signing key: {e}"))).transpose()?;
        let repo = RemoteRepo::connect(url)?;
        // Fails early, with the bucket named, when it does not exist.
        repo.store.list(KEY_FILE)?;
        let pinned = repo.pinned_key()?;
        let named = repo.named_key()?;
        let has_index = repo.store.size(INDEX)?.is_some();
        let fingerprint = match (sign_key.as_ref().or(pinned.as_ref()), &pinned, &named) {
            (Some(k), _, Some(n)) if k != n => {
                return Err(bad_input!(
                    "{url}: its signing-key.fpr names {n}, not {k}; moving a repository on object storage to \
                     another key is not supported (if the object was changed by someone else, put {k} back)"
                ))
            }
            (Some(k), Some(p), _) if k != p => {
                return Err(bad_input!("{url} was initialised here with key {p}, not {k}"));
            }
            (Some(k), _, _) => k.clone(),
            (None, _, Some(n)) => {
                return Err(bad_input!(
                    "{url} is a repository already, signed by {n} as its signing-key.fpr says; the bucket's word \
                     is not proof: check the fingerprint with whoever created it, then run `pipeline repo init \
                     {url} --sign-key {n}`"
                ))
            }
            (None, _, None) if has_index => {
                return Err(bad_input!(
                    "{url}: has an index.asc but no signing-key.fpr; pass the key that signed it with --sign-key"
                ))
            }
            (None, _, None) => sign::generate_key(
                &generate_name.map(str::to_string).unwrap_or_else(|| format!("{} repository signing key", repo.name())),
            )?,
        };
        let name = repo.name().to_string();
        let public_key = format!("{name}.asc");
        let conf_name = format!("{name}.conf");
        if named.is_none() || !has_index {
            if !sign::has_secret_key(&fingerprint) {
                return Err(bad_input!(
                    "signing key {fingerprint}: no secret key with that fingerprint in the keyring (GNUPGHOME)"
                ));
            }
            repo.store.put(KEY_FILE, format!("{fingerprint}\n").into_bytes())?;
        }
        if repo.store.size(&public_key)?.is_none() {
            repo.store.put(&public_key, sign::export_public_key(&fingerprint)?)?;
        }
        if uri.is_some() || repo.store.size(&conf_name)?.is_none() {
            let uri = match uri {
                Some(u) => u.trim_end_matches('/').to_string(),
                // Path-style public URL: what a public-read bucket on RGW or AWS answers at.
                None => format!(
                    "{}/{}",
                    repo.store.endpoint.trim_end_matches('/'),
                    repo.store.url("").trim_start_matches("s3://").trim_end_matches('/')
                ),
            };
            let conf = format!("[{name}]\nuri={uri}/index.asc\ngpgkey=file://{}/{public_key}\n", super::CLIENT_REPOS_D);
            repo.store.put(&conf_name, conf.into_bytes())?;
        }
        trust::record_id(&repo.trust_id(), &fingerprint)?;
        if !has_index {
            repo.settle(&fingerprint)?;
        }
        Ok((repo, fingerprint))
    }

    /// The key this user's trust store records for the repository (`repo init` records it):
    /// the only one trusted without a fingerprint given. It must still be the one the bucket
    /// names (a mismatch means the object was changed).
    pub fn pinned_key(&self) -> Result<Option<String>> {
        trust::pinned_id(&self.trust_id())
    }

    /// The repository's key: the pinned one, or `given` (a fingerprint the user named, which
    /// must be the one the bucket names); pinned and given must agree.
    pub fn signing_key(&self, given: Option<&str>) -> Result<String> {
        let given =
            given.map(|k| sign::parse_fingerprint(k).map_err(|e| bad_input!("signing key: {e}"))).transpose()?;
        let Some(named) = self.named_key()? else {
            return Err(bad_input!(
                "{url} is not a repository (no signing-key.fpr); run `pipeline repo init {url}`",
                url = self.url()
            ));
        };
        let pinned = self.pinned_key()?;
        let key = match (given, pinned) {
            (Some(k), Some(p)) if k != p => {
                return Err(bad_input!("{} is signed by {p} and its clients trust only that key, not {k}", self.url()))
            }
            (Some(k), _) | (None, Some(k)) => k,
            (None, None) => {
                return Err(bad_input!(
                    "{url}: no key is pinned for this repository on this machine; run `pipeline repo init {url} \
                     --sign-key FPR` with the fingerprint of its key (pass --fingerprint to `repo verify`)",
                    url = self.url()
                ))
            }
        };
        if named != key {
            return Err(bad_input!(
                "{} names key {named}, but this repository's key is {key}: the object was changed outside \
                 pipeline; put {key} back in it",
                self.store.url(KEY_FILE)
            ));
        }
        Ok(key)
    }

    fn verifier(&self, pin: &str) -> Result<PinnedVerifier> {
        let published = self.store.get(&format!("{}.asc", self.name()), SMALL)?;
        PinnedVerifier::new(pin, published.as_deref())
    }

    /// Every record, each verified against the key and checked to be where it says it is.
    /// Sorted by entry, then age.
    pub fn records(&self, verifier: &mut PinnedVerifier) -> Result<Vec<Record>> {
        let mut records = Vec::new();
        for listed in self.store.list(RECORDS)? {
            let Some((entry, id)) =
                listed.name.strip_prefix(RECORDS).and_then(|n| n.strip_suffix(".asc")).and_then(|n| n.split_once('/'))
            else {
                continue;
            };
            if let Some(known) = self.verified.borrow().get(&listed.name) {
                records.push(known.clone());
                continue;
            }
            let url = self.store.url(&listed.name);
            // Listed but gone: removed by hand since; nothing to derive from.
            let Some(signed) = self.store.get(&listed.name, SMALL)? else { continue };
            let foreign = |why: String| {
                anyhow::anyhow!(
                    "{url}: {why}. Nothing is published while the bucket holds a record the repository's key did \
                     not make: look at it (`gpg --verify`), and delete it if it is not the repository's own"
                )
            };
            let text = verifier.verify(&signed).map_err(|e| foreign(format!("signature check failed: {e:#}")))?;
            let record: Record =
                serde_json::from_slice(&text).map_err(|e| foreign(format!("not an entry record ({e})")))?;
            if record.entry != entry || record.id != id {
                return Err(foreign(format!(
                    "the record is for {}/{}, not for where it lies",
                    record.entry, record.id
                )));
            }
            self.verified.borrow_mut().insert(listed.name.clone(), record.clone());
            records.push(record);
        }
        records.sort_by(|a, b| (&a.entry, &a.id).cmp(&(&b.entry, &b.id)));
        Ok(records)
    }

    /// The signed index as it is now, verified (None: none written yet).
    pub fn signed_index(&self, verifier: &mut PinnedVerifier) -> Result<Option<String>> {
        let Some(signed) = self.store.get(INDEX, SMALL)? else { return Ok(None) };
        let text =
            verifier.verify(&signed).with_context(|| format!("{}: signature check failed", self.store.url(INDEX)))?;
        Ok(Some(String::from_utf8(text).map_err(|_| anyhow::anyhow!("{}: not UTF-8", self.store.url(INDEX)))?))
    }

    /// The index, verified against the repository's key.
    pub fn index(&self) -> Result<Index> {
        self.index_signed_by(&self.signing_key(None)?)
    }

    /// The index, verified against `pin` only.
    pub fn index_signed_by(&self, pin: &str) -> Result<Index> {
        let text = self.signed_index(&mut self.verifier(pin)?)?.unwrap_or_default();
        Index::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", self.store.url(INDEX)))
    }

    /// Downloads the image of a (verified) index entry into `out`, returning its size; no
    /// more than the entry's `compressed_size` is read.
    pub fn download(&self, entry: &Entry, out: &mut dyn std::io::Write, ui: &Ui) -> Result<u64> {
        let file = entry.file().unwrap_or_default();
        if file.is_empty() || file.contains('/') || file.starts_with('.') {
            bail!("{}: [{}]: file {file} is not an image in the repository", self.url(), entry.id);
        }
        let limit = entry
            .get("compressed_size")
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("{}: [{}] has no compressed_size", self.url(), entry.id))?;
        self.store.download(file, out, ui, &format!("download {file}"), limit)
    }

    /// Writes the index derived from the records until the index found is the one the
    /// records give (see the module's comment), and returns it.
    fn settle(&self, pin: &str) -> Result<Index> {
        let mut verifier = self.verifier(pin)?;
        for round in 0..SETTLE_ROUNDS {
            // The index before the records: a record is written before any index naming it,
            // so every entry of the index read is among the records listed after it.
            let signed = self.signed_index(&mut verifier)?;
            let records = self.records(&mut verifier)?;
            self.refuse_rollback(signed.as_deref(), &records)?;
            let derived = derive(&records);
            let text = derived.render();
            if signed.is_some_and(|signed| same_text(&signed, &text)) {
                return Ok(derived);
            }
            self.store.put(INDEX, sign::clearsign(pin, text.as_bytes())?)?;
            // Publishers that collide check back at different times.
            let jitter = rand::random::<u64>() % (50 + 50 * round.min(10) as u64);
            std::thread::sleep(Duration::from_millis(50 + jitter));
        }
        bail!(
            "{}: the index did not settle after {SETTLE_ROUNDS} writes (other publishers kept changing it); the \
             record is written, so the next publish into the repository settles the index with it",
            self.url()
        )
    }

    /// Uploads an image as a new revision of its entry and settles the index.
    pub fn publish(&self, new: NewImage, sign_key: Option<&str>, ui: &Ui) -> Result<Entry> {
        let NewImage { name, fields, image, checksum, mut manifest, blocks: _ } = new;
        let pin = self.signing_key(sign_key)?;
        let mut verifier = self.verifier(&pin)?;
        // Refused before anything is uploaded: an index or a record the key did not sign, or
        // records deleted from under the index.
        let signed = self.signed_index(&mut verifier)?;
        self.refuse_rollback(signed.as_deref(), &self.records(&mut verifier)?)?;
        let file = format!("{name}-{}.xz", s3::unique_id());
        let size = std::fs::metadata(image).with_context(|| format!("cannot read {}", image.display()))?.len();
        ui.line(format!("uploading {file} ({}) to {}", crate::base::ui::human_bytes(size), self.url()));
        self.store.upload(&file, image, ui, &format!("upload {file}"))?;
        // Beside the image, named after it; the signed record's manifest names their digests.
        if let Some(m) = manifest.as_mut() {
            m.entry = name.to_string();
            for (doc, bytes) in super::sbom::attach(m, &file) {
                self.store.put(&doc, bytes)?;
            }
        }
        let id = next_id(&self.records(&mut verifier)?, name);
        let record = Record {
            action: Action::Publish,
            entry: name.to_string(),
            id: id.clone(),
            file: Some(file),
            checksum: Some(checksum.to_string()),
            fields,
            publisher: publisher(),
            manifest,
        };
        self.write_record(&record, &pin)?;
        let index = self.settle(&pin)?;
        // Our revision: this entry's publishes up to ours (a later one may already lead).
        let records = self.records(&mut verifier)?;
        let revision =
            numbered(&records).into_iter().find(|(r, _)| r.entry == name && r.id == id).map_or(0, |(_, n)| n);
        if let Some(leader) = index.get(name).filter(|e| e.file() != record.file.as_deref()) {
            ui.line(format!(
                "{name}: a newer publish from another builder leads the index already (revision {})",
                leader.revision()
            ));
        }
        Ok(entry_of(&record, revision))
    }

    /// Bad input when the records no longer reach what the signed index names (see
    /// [`went_backwards`]): signing an index derived from them would roll those entries back.
    fn refuse_rollback(&self, signed: Option<&str>, records: &[Record]) -> Result<()> {
        let Some(signed) = signed else { return Ok(()) };
        let index = Index::parse(signed).map_err(|e| anyhow::anyhow!("{}: {e}", self.store.url(INDEX)))?;
        let backwards = went_backwards(&index, records);
        if backwards.is_empty() {
            return Ok(());
        }
        Err(bad_input!(
            "{}: nothing was signed: {}. Records are never deleted by this tool, so someone deleted these from {}{RECORDS}; \
             restore them from a backup of the bucket, or take the entry out with `pipeline repo remove` and publish it again",
            self.url(),
            backwards.join("; "),
            self.store.url("")
        ))
    }

    /// Signs a record and creates it; `If-None-Match` guards it where the server honours it.
    fn write_record(&self, record: &Record, pin: &str) -> Result<()> {
        let name = format!("{RECORDS}{}/{}.asc", record.entry, record.id);
        let signed = sign::clearsign(pin, &serde_json::to_vec_pretty(record)?)?;
        if !self.store.put_if_absent(&name, signed)? {
            bail!("{}: already exists; record IDs are unique, so another writer used this one", self.store.url(&name));
        }
        Ok(())
    }

    /// Removes an entry from the index (a removal record) and deletes the images of its
    /// earlier publishes.
    pub fn remove(&self, name: &str, sign_key: Option<&str>) -> Result<Entry> {
        let pin = self.signing_key(sign_key)?;
        let mut verifier = self.verifier(&pin)?;
        let entry = derive(&self.records(&mut verifier)?)
            .get(name)
            .cloned()
            .ok_or_else(|| bad_input!("{}: no entry `{name}`", self.url()))?;
        let record = Record {
            action: Action::Remove,
            entry: name.to_string(),
            id: next_id(&self.records(&mut verifier)?, name),
            file: None,
            checksum: None,
            fields: Vec::new(),
            publisher: publisher(),
            manifest: None,
        };
        self.write_record(&record, &pin)?;
        self.settle(&pin)?;
        for r in self.records(&mut verifier)?.iter().filter(|r| r.entry == name && r.id < record.id) {
            if let Some(f) = &r.file {
                self.delete_image(f)?;
            }
        }
        Ok(entry)
    }

    /// Deletes the images of older publishes beyond the newest `keep` per entry (never one
    /// the index names), and images no record names that are over a day old (a publish
    /// uploads its image before it writes its record). Records stay: revisions count them.
    /// `keep` is at least 1 (see `Repository::prune`).
    pub fn prune(&self, keep: usize) -> Result<Vec<String>> {
        let pin = self.signing_key(None)?;
        let mut verifier = self.verifier(&pin)?;
        let records = self.records(&mut verifier)?;
        // What the index names now stays, whatever the records say (a publish still settling).
        let index = Index::parse(&self.signed_index(&mut verifier)?.unwrap_or_default()).unwrap_or_default();
        let in_index: std::collections::HashSet<String> =
            index.entries.iter().filter_map(|e| e.file().map(str::to_string)).collect();
        let mut by_entry: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
        for r in records.iter().filter(|r| r.action == Action::Publish) {
            by_entry.entry(&r.entry).or_default().push(r);
        }
        let mut removed = Vec::new();
        for publishes in by_entry.values() {
            for r in publishes.iter().rev().skip(keep) {
                if let Some(f) = r.file.as_ref().filter(|f| !in_index.contains(*f)) {
                    if self.store.size(f)?.is_some() {
                        self.delete_image(f)?;
                        removed.push(f.clone());
                    }
                }
            }
        }
        let named: std::collections::HashSet<&str> = records.iter().filter_map(|r| r.file.as_deref()).collect();
        let day_ago = std::time::SystemTime::now() - Duration::from_secs(24 * 3600);
        for listed in self.store.list("")? {
            // An image, or an SBOM beside one, that no record names (its publish died).
            let image = [".xz", super::sbom::SPDX_SUFFIX, super::sbom::CYCLONEDX_SUFFIX]
                .iter()
                .find_map(|suffix| listed.name.strip_suffix(suffix))
                .map(|stem| format!("{stem}.xz"));
            let unnamed = image.is_some_and(|image| !named.contains(image.as_str()));
            if !listed.name.contains('/') && unnamed && listed.modified < day_ago {
                self.store.delete(&listed.name)?;
                removed.push(listed.name);
            }
        }
        Ok(removed)
    }

    /// Deletes an image object and the SBOMs beside it.
    fn delete_image(&self, file: &str) -> Result<()> {
        self.store.delete(file)?;
        for doc in super::sbom::document_names(file) {
            self.store.delete(&doc)?;
        }
        Ok(())
    }

    /// The package manifests of an entry's publishes, by revision (verified records).
    pub fn manifests(&self, name: &str) -> Result<BTreeMap<u64, Manifest>> {
        let pin = self.signing_key(None)?;
        let records = self.records(&mut self.verifier(&pin)?)?;
        let mut found = BTreeMap::new();
        for (r, revision) in numbered(&records).into_iter().filter(|(r, _)| r.entry == name) {
            if let Some(m) = r.manifest.as_ref().filter(|_| r.action == Action::Publish) {
                found.insert(revision, Manifest { revision, ..m.clone() });
            }
        }
        Ok(found)
    }

    /// Every problem: signatures (index and records), an index that is not the one the
    /// records give, missing or altered images.
    pub fn verify(&self, fingerprint: Option<&str>, ui: &Ui) -> Result<Vec<String>> {
        let pin = match fingerprint {
            Some(f) => sign::parse_fingerprint(f).map_err(|e| bad_input!("--fingerprint: {e}"))?,
            None => self.signing_key(None)?,
        };
        let mut verifier = self.verifier(&pin)?;
        let text = match self.signed_index(&mut verifier) {
            Ok(Some(t)) => t,
            Ok(None) => return Ok(vec![format!("{}: missing", self.store.url(INDEX))]),
            Err(e) => return Ok(vec![format!("{e:#}")]),
        };
        let index = match Index::parse(&text) {
            Ok(i) => i,
            Err(e) => return Ok(vec![format!("{}: {e}", self.store.url(INDEX))]),
        };
        let mut problems = Vec::new();
        let records = self.records(&mut verifier);
        match &records {
            Ok(records) if !went_backwards(&index, records).is_empty() => {
                for backwards in went_backwards(&index, records) {
                    problems.push(format!("{}: {backwards} (records were deleted)", self.store.url(INDEX)));
                }
            }
            Ok(records) if !same_text(&derive(records).render(), &text) => problems.push(format!(
                "{}: is not the index its records give (a publish that did not finish: publishing again settles it)",
                self.store.url(INDEX)
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("{e:#}")),
        }
        for entry in &index.entries {
            let id = &entry.id;
            let Some(file) = entry.file().filter(|f| !f.contains('/')) else {
                problems.push(format!("[{id}]: no file in the repository"));
                continue;
            };
            let mut hasher = crate::base::stream::HashingWriter::<sha2::Sha512, _>::new(std::io::sink());
            match self.download(entry, &mut hasher, ui) {
                Err(e) => problems.push(format!("[{id}]: {e:#}")),
                Ok(size) => {
                    let got = hasher.finish().0;
                    if entry.get("compressed_size").and_then(|s| s.parse::<u64>().ok()).is_some_and(|cs| cs != size) {
                        problems.push(format!("[{id}]: {file} is {size} bytes, not the index's compressed_size"));
                    }
                    if entry.checksum() != Some(got.as_str()) {
                        problems.push(format!("[{id}]: {file}: sha512 {got} does not match the index"));
                    }
                }
            }
            // The SBOMs the record's signed manifest names beside the image.
            let publish = records.as_ref().ok().and_then(|rs| rs.iter().find(|r| r.file.as_deref() == Some(file)));
            let manifest = publish.and_then(|r| r.manifest.as_ref());
            for (doc, want) in manifest.map(|m| &m.documents).into_iter().flatten() {
                match self.store.get(doc, SBOM_LIMIT) {
                    Ok(Some(bytes)) => {
                        use sha2::Digest;
                        let got = hex::encode(sha2::Sha512::digest(&bytes));
                        if &got != want {
                            problems
                                .push(format!("[{id}]: {doc}: sha512 {got} does not match its signed record ({want})"));
                        }
                    }
                    Ok(None) => problems.push(format!("[{id}]: {doc}: missing")),
                    Err(e) => problems.push(format!("[{id}]: {doc}: {e:#}")),
                }
            }
        }
        Ok(problems)
    }
}

/// The index the records give: for each entry whose newest record is a publish, that
/// publish, with the entry's count of publishes as its revision. Sorted by entry.
pub fn derive(records: &[Record]) -> Index {
    let mut latest: BTreeMap<&str, (&Record, u64)> = BTreeMap::new();
    for (r, n) in numbered(records) {
        latest.insert(&r.entry, (r, n));
    }
    let entries = latest
        .into_values()
        .filter(|(r, _)| r.action == Action::Publish)
        .map(|(r, revision)| entry_of(r, revision))
        .collect();
    Index { entries }
}

/// The entries `signed` names at a revision `records` no longer reach, each as a sentence.
/// Records are only ever added, so the index the records give never names an entry at a lower
/// revision than an index signed before it, nor leaves one out without a removal record: when
/// it does, records were deleted, and an index signed from them would name an older image (or
/// none) as the entry's latest.
pub fn went_backwards(signed: &Index, records: &[Record]) -> Vec<String> {
    let derived = derive(records);
    let mut found = Vec::new();
    for entry in &signed.entries {
        let name = &entry.id;
        let was = entry.revision();
        match derived.get(name) {
            Some(now) if now.revision() >= was => {}
            Some(now) => found.push(format!(
                "`{name}` is at revision {was} in the signed index but at {} in its records",
                now.revision()
            )),
            None if records.iter().rev().find(|r| &r.entry == name).is_some_and(|r| r.action == Action::Remove) => {}
            None => found.push(format!("`{name}` is at revision {was} in the signed index but has no records")),
        }
    }
    found
}

/// Each record (sorted by entry, then ID) with its entry's count of publishes up to and
/// including it: a publish record's revision.
fn numbered(records: &[Record]) -> Vec<(&Record, u64)> {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    records
        .iter()
        .map(|r| {
            let n = counts.entry(&r.entry).or_default();
            *n += u64::from(r.action == Action::Publish);
            (r, *n)
        })
        .collect()
}

/// Whether a signed text is `text`: clearsigning drops trailing blanks of lines (and adds a
/// line end to an empty text).
fn same_text(signed: &str, text: &str) -> bool {
    let lines = |t: &str| t.trim_end().lines().map(str::trim_end).map(str::to_string).collect::<Vec<_>>();
    lines(signed) == lines(text)
}

fn entry_of(r: &Record, revision: u64) -> Entry {
    let mut fields = vec![
        ("file".to_string(), r.file.clone().unwrap_or_default()),
        ("revision".to_string(), revision.to_string()),
        ("checksum[sha512]".to_string(), r.checksum.clone().unwrap_or_default()),
    ];
    fields.extend(r.fields.iter().cloned());
    Entry { id: r.entry.clone(), fields }
}

/// A record ID for `entry` that sorts after every record of it in `records` (taken just
/// before the record is written): a publisher whose clock runs behind still files its record
/// after the newest it has seen. Time in microseconds, then 64 random bits.
fn next_id(records: &[Record], entry: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros();
    let newest =
        records.iter().filter(|r| r.entry == entry).filter_map(|r| r.id.split('-').next()?.parse::<u128>().ok()).max();
    let micros = newest.map_or(now, |n| now.max(n + 1));
    format!("{micros:016}-{:016x}", rand::random::<u64>())
}

fn publisher() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    format!("{host} pid {}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(action: Action, entry: &str, id: &str) -> Record {
        Record {
            action,
            entry: entry.into(),
            id: id.into(),
            file: (action == Action::Publish).then(|| format!("{entry}-{id}.xz")),
            checksum: Some("c".into()),
            fields: vec![("format".into(), "raw".into())],
            publisher: "test".into(),
            manifest: None,
        }
    }

    /// Revisions count publishes, so they only grow: after a removal, a record that lands
    /// late (sorting before others) or a concurrent publish.
    #[test]
    fn the_index_is_the_newest_record_per_entry_with_publishes_counted() {
        use Action::*;
        let mut records = vec![record(Publish, "a", "1"), record(Publish, "b", "1"), record(Publish, "a", "3")];
        let index = derive(&records);
        assert_eq!(index.get("a").map(|e| (e.revision(), e.file())), Some((2, Some("a-3.xz"))));
        assert_eq!(index.get("b").map(|e| e.revision()), Some(1));
        records.insert(1, record(Publish, "a", "2"));
        let index = derive(&records);
        assert_eq!(index.get("a").map(|e| (e.revision(), e.file())), Some((3, Some("a-3.xz"))));
        records.push(record(Remove, "a", "4"));
        assert!(derive(&records).get("a").is_none());
        records.push(record(Publish, "a", "5"));
        assert_eq!(derive(&records).get("a").map(|e| e.revision()), Some(4));
        assert_eq!(derive(&records).render(), derive(&records).render(), "deterministic");
    }

    /// An index signed from every record, then records deleted: the entries rolled back are
    /// named; records added since (a publish, a removal) are not a rollback.
    #[test]
    fn deleted_records_are_found_against_the_signed_index() {
        use Action::*;
        let all = vec![record(Publish, "a", "1"), record(Publish, "a", "2"), record(Publish, "b", "1")];
        let signed = derive(&all);
        assert!(went_backwards(&signed, &all).is_empty());
        let newest_a_deleted = vec![all[0].clone(), all[2].clone()];
        assert_eq!(
            went_backwards(&signed, &newest_a_deleted),
            ["`a` is at revision 2 in the signed index but at 1 in its records"]
        );
        let b_deleted = all[..2].to_vec();
        assert_eq!(
            went_backwards(&signed, &b_deleted),
            ["`b` is at revision 1 in the signed index but has no records"]
        );
        let mut grown = all.clone();
        grown.push(record(Publish, "a", "3"));
        grown.push(record(Remove, "b", "2"));
        grown.push(record(Publish, "c", "1"));
        assert!(went_backwards(&signed, &grown).is_empty());
        // An index older than the records (a publish still settling) is not a rollback.
        assert!(went_backwards(&derive(&all[..1]), &all).is_empty());
    }
}
