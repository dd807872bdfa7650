//! A layer cache shared by several builders on object storage (`--cache-remote
//! s3://BUCKET/PREFIX`). Each committed layer is uploaded as `layers/KEY-ORIGIN.qcow2` (a
//! name of its own per build of the layer), then `layers/KEY.FPR.asc`, its record signed by
//! the builder's key FPR (`--cache-sign-key`): metadata, which image object, its size and
//! sha256, and which build of the parent layer it was made on. The record goes last, so a
//! layer is offered only once whole, and it always names an image that matches it.
//!
//! A builder missing a layer fetches it instead of running the stage, but only through a
//! record signed by a key it trusts (`--cache-trust`, and its own): whoever can merely write
//! the prefix cannot have their disk content built upon. Each trusted key's record is looked
//! for under its own name, so builders never overwrite each other's records, and a record is
//! verified in a keyring holding only the key it is filed under. The key names the stage's
//! inputs, so a fetched layer is the one the stage would build; the digest catches a
//! truncated or damaged copy; an overlay is taken only when it was made on the very build of
//! the parent layer this builder has (its origin), since a layer built again under the same
//! key differs block by block. An overlay names its parent by the uploader's path: the file
//! name must be the parent layer's, and the reference is rewritten to this cache's copy (an
//! image naming any other file, or an external data file, is refused).

use super::cache::{Cache, Layer, LayerMeta};
use crate::bad_input;
use crate::base::sign::{self, PinnedVerifier};
use crate::base::stream::HashingWriter;
use crate::base::ui::Ui;
use crate::image::qemu_img;
use crate::s3::{Location, Store};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::cell::RefCell;
use std::collections::HashMap;

#[derive(Serialize, Deserialize)]
struct RemoteRecord {
    meta: LayerMeta,
    /// The image object, below `layers/`.
    image: String,
    size: u64,
    sha256: String,
    /// The origin of the parent layer the overlay was made on.
    #[serde(default)]
    parent_origin: Option<String>,
}

/// What `fetch` found.
pub enum Fetched {
    Layer(Layer),
    Absent,
    /// Made on another build of the parent layer than this cache's.
    OtherParent,
    /// A copy that cannot be used: why.
    Damaged(String),
}

/// Where the shared cache is and whose layers it takes, from the command line.
#[derive(Debug, Clone, Default)]
pub struct RemoteCacheOptions {
    /// `s3://BUCKET/PREFIX`.
    pub url: String,
    /// The key that signs the records of layers this builder uploads (none: nothing is uploaded).
    pub sign_key: Option<String>,
    /// Fingerprints of the builders whose layers are fetched (the signing key is trusted too).
    pub trusted: Vec<String>,
}

pub struct RemoteCache {
    store: Store,
    sign_key: Option<String>,
    /// Trusted fingerprints, the builder's own first.
    trusted: Vec<String>,
    /// One private keyring per trusted key, made when first needed.
    verifiers: RefCell<HashMap<String, PinnedVerifier>>,
}

impl RemoteCache {
    /// The cache; bad input when a key is not a full fingerprint.
    pub fn open(options: &RemoteCacheOptions) -> Result<RemoteCache> {
        let fingerprint = |what: &str, f: &str| sign::parse_fingerprint(f).map_err(|e| bad_input!("{what}: {e}"));
        let sign_key = options.sign_key.as_deref().map(|f| fingerprint("--cache-sign-key", f)).transpose()?;
        if let Some(key) = sign_key.as_deref().filter(|k| !sign::has_secret_key(k)) {
            return Err(bad_input!(
                "--cache-sign-key {key}: no secret key with this fingerprint in the keyring (GNUPGHOME); the builder \
                 signs the records of the layers it uploads with it"
            ));
        }
        let mut trusted: Vec<String> = sign_key.iter().cloned().collect();
        for f in &options.trusted {
            let f = fingerprint("--cache-trust", f)?;
            if !trusted.contains(&f) {
                trusted.push(f);
            }
        }
        Ok(RemoteCache {
            store: Store::open(&Location::parse(&options.url)?)?,
            sign_key,
            trusted,
            verifiers: Default::default(),
        })
    }

    pub fn url(&self) -> String {
        self.store.location.to_string()
    }

    /// Why layers built here are not uploaded, when they are not.
    pub fn not_uploading(&self) -> Option<String> {
        self.sign_key.is_none().then(|| {
            format!("layers built here are not uploaded to {}: no --cache-sign-key to sign their records", self.url())
        })
    }

    fn record_name(key: &str, signer: &str) -> String {
        format!("layers/{key}.{signer}.asc")
    }

    /// Whether a trusted builder's record of the layer is there (its signature and image are
    /// checked on fetch).
    pub fn has(&self, key: &str) -> Result<bool> {
        for signer in &self.trusted {
            if self.store.size(&Self::record_name(key, signer))?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Uploads a committed layer with a record signed by this builder's key, unless its
    /// record is there already (`replace`: a damaged copy is there). Without a signing key,
    /// nothing.
    pub fn upload(&self, cache: &Cache, layer: &Layer, ui: &Ui, replace: bool) -> Result<()> {
        let Some(signer) = &self.sign_key else { return Ok(()) };
        let record = Self::record_name(&layer.key, signer);
        if !replace && self.store.size(&record)?.is_some() {
            return Ok(());
        }
        let meta = cache.meta(&layer.key).context("the layer has no metadata")?;
        let parent_origin = meta.parent.as_deref().and_then(|p| cache.meta(p)).and_then(|m| m.origin);
        let origin = meta.origin.clone().unwrap_or_else(|| "unknown".into());
        let image = format!("layers/{}-{origin}.qcow2", layer.key);
        let (size, sha256) =
            self.store.upload(&image, &layer.path, ui, &format!("cache upload {}", &layer.key[..12]))?;
        let record_body = RemoteRecord { meta, image, size, sha256, parent_origin };
        self.store.put(&record, sign::clearsign(signer, &serde_json::to_vec_pretty(&record_body)?)?)?;
        Ok(())
    }

    /// The layer `key` fetched into the local cache on top of `parent`, through the first
    /// trusted builder's record that gives a usable layer. An error is one of reaching the
    /// remote cache; when no record gives one, the first copy that cannot be used is
    /// `Damaged` (else `OtherParent`, else `Absent`).
    pub fn fetch(&self, cache: &Cache, key: &str, parent: Option<&Layer>, ui: &Ui) -> Result<Fetched> {
        let mut found = Fetched::Absent;
        for signer in &self.trusted {
            match self.fetch_signed_by(signer, cache, key, parent, ui)? {
                Fetched::Layer(layer) => return Ok(Fetched::Layer(layer)),
                Fetched::Absent => {}
                other @ Fetched::Damaged(_) if !matches!(found, Fetched::Damaged(_)) => found = other,
                other @ Fetched::OtherParent if matches!(found, Fetched::Absent) => found = other,
                _ => {}
            }
        }
        Ok(found)
    }

    /// The text of `signed` if the key `signer` signed it, checked in a keyring holding only
    /// that key.
    fn verified(&self, signer: &str, signed: &[u8]) -> Result<Vec<u8>> {
        let mut verifiers = self.verifiers.borrow_mut();
        let verifier = match verifiers.entry(signer.to_string()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(PinnedVerifier::new(signer, None)?),
        };
        verifier.verify(signed)
    }

    fn fetch_signed_by(
        &self,
        signer: &str,
        cache: &Cache,
        key: &str,
        parent: Option<&Layer>,
        ui: &Ui,
    ) -> Result<Fetched> {
        let record = Self::record_name(key, signer);
        let Some(signed) = self.store.get(&record, 1 << 20)? else { return Ok(Fetched::Absent) };
        let damaged = |why: String| Ok(Fetched::Damaged(format!("{}: {why}", self.store.url(&record))));
        let bytes = match self.verified(signer, &signed) {
            Ok(text) => text,
            Err(e) => return damaged(format!("not signed by the trusted key it is filed under: {e:#}")),
        };
        let remote: RemoteRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => return damaged(format!("not a layer record ({e})")),
        };
        let image_ok = remote.image.strip_prefix("layers/").is_some_and(|n| !n.contains('/') && n.starts_with(key));
        if remote.meta.key != key || remote.meta.parent.as_deref() != parent.map(|p| p.key.as_str()) || !image_ok {
            return damaged("the record is for another layer or parent".into());
        }
        if let Some(parent) = parent {
            let ours = cache.meta(&parent.key).and_then(|m| m.origin);
            if ours.is_none() || ours != remote.parent_origin {
                return Ok(Fetched::OtherParent);
            }
        }
        let temp = cache.temp_path(key);
        let result = self.fetch_image(&remote, &temp, parent, ui);
        match result {
            Ok(None) => Ok(Fetched::Layer(cache.commit(&temp, &remote.meta)?)),
            Ok(Some(why)) => {
                let _ = std::fs::remove_file(&temp);
                damaged(why)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    /// Downloads and checks the record's image into `temp`: None when it is whole and a
    /// layer of this cache, else what is wrong with it.
    fn fetch_image(
        &self,
        remote: &RemoteRecord,
        temp: &std::path::Path,
        parent: Option<&Layer>,
        ui: &Ui,
    ) -> Result<Option<String>> {
        let file = std::fs::File::create(temp)?;
        let mut out = HashingWriter::<Sha256, _>::new(std::io::BufWriter::new(file));
        let label = format!("cache fetch {}", &remote.meta.key.get(..12).unwrap_or_default());
        let size = match self.store.download(&remote.image, &mut out, ui, &label, remote.size) {
            Ok(size) => size,
            Err(e) if self.store.size(&remote.image)?.is_some_and(|s| s != remote.size) => {
                return Ok(Some(format!("{e:#}")))
            }
            Err(e) => return Err(e),
        };
        let (sha256, writer) = out.finish();
        writer.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        if size != remote.size || sha256 != remote.sha256 {
            return Ok(Some(format!(
                "{} bytes with sha256 {sha256}, the record says {} bytes with {}: damaged or truncated",
                size, remote.size, remote.sha256
            )));
        }
        let info = match qemu_img::info(temp) {
            Ok(i) => i,
            Err(e) => return Ok(Some(format!("not a qcow2 image: {e:#}"))),
        };
        let backing_name = info.backing_filename.as_deref().map(|b| b.rsplit('/').next().unwrap_or(b));
        let want = parent.map(|p| format!("{}.qcow2", p.key));
        if backing_name != want.as_deref()
            || info.format_specific.as_ref().and_then(|f| f.pointer("/data/data-file")).is_some()
        {
            return Ok(Some(format!(
                "names the file {:?} as its backing file (the parent layer is {want:?}) or has an external data \
                 file: not a layer of this cache",
                info.backing_filename
            )));
        }
        // The other builder's path to the parent, replaced by this cache's.
        if let Some(parent) = parent {
            qemu_img::set_backing(temp, &parent.path)?;
        }
        Ok(None)
    }
}
