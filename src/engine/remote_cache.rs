//! A layer cache shared by several builders on object storage (`--cache-remote
//! s3://BUCKET/PREFIX`). Each committed layer is uploaded as `layers/KEY-ORIGIN.qcow2` (a
//! name of its own per build of the layer), then `layers/KEY.json`, its record: metadata,
//! which image object, its size and sha256, and which build of the parent layer it was made
//! on. The record goes last, so a layer is offered only once whole, and it always names an
//! image that matches it.
//!
//! A builder missing a layer fetches it instead of running the stage. The key names the
//! stage's inputs, so a fetched layer is the one the stage would build; the digest catches a
//! truncated or damaged copy; an overlay is taken only when it was made on the very build of
//! the parent layer this builder has (its origin), since a layer built again under the same
//! key differs block by block. An overlay names its parent by the uploader's path: the file
//! name must be the parent layer's, and the reference is rewritten to this cache's copy (an
//! image naming any other file, or an external data file, is refused).
//!
//! Whoever can write the cache's prefix is trusted like a builder sharing a local cache
//! directory: give only the builders write access to it.

use super::cache::{Cache, Layer, LayerMeta};
use crate::base::stream::HashingWriter;
use crate::base::ui::Ui;
use crate::image::qemu_img;
use crate::s3::{Location, Store};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

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

pub struct RemoteCache {
    store: Store,
}

impl RemoteCache {
    pub fn open(url: &str) -> Result<RemoteCache> {
        Ok(RemoteCache { store: Store::open(&Location::parse(url)?)? })
    }

    pub fn url(&self) -> String {
        self.store.location.to_string()
    }

    fn record_name(key: &str) -> String {
        format!("layers/{key}.json")
    }

    /// Whether the remote cache has the layer (its record; the image is checked on fetch).
    pub fn has(&self, key: &str) -> Result<bool> {
        Ok(self.store.size(&Self::record_name(key))?.is_some())
    }

    /// Uploads a committed layer unless the remote cache has it already (`replace`: a
    /// damaged copy is there).
    pub fn upload(&self, cache: &Cache, layer: &Layer, ui: &Ui, replace: bool) -> Result<()> {
        let record = Self::record_name(&layer.key);
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
        self.store.put(&record, serde_json::to_vec_pretty(&record_body)?)?;
        Ok(())
    }

    /// The layer `key` fetched into the local cache on top of `parent`. An error is one of
    /// reaching the remote cache; a copy that cannot be used is `Damaged`.
    pub fn fetch(&self, cache: &Cache, key: &str, parent: Option<&Layer>, ui: &Ui) -> Result<Fetched> {
        let record = Self::record_name(key);
        let Some(bytes) = self.store.get(&record, 1 << 20)? else { return Ok(Fetched::Absent) };
        let damaged = |why: String| Ok(Fetched::Damaged(format!("{}: {why}", self.store.url(&record))));
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
