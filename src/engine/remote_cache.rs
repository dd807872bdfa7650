//! A layer cache shared by several builders on object storage (`--cache-remote
//! s3://BUCKET/PREFIX`). Each committed layer is uploaded as `layers/KEY.qcow2`, then
//! `layers/KEY.json` (its metadata, size and sha256): the record goes last, so a layer is
//! offered only once whole. A builder missing a layer fetches it instead of running the
//! stage. The key names the stage's inputs, so a fetched layer is the one the stage would
//! build; the digest catches a truncated or damaged copy. An overlay names its parent by the
//! uploader's path: the file name must be the parent layer's, and the reference is rewritten
//! to this cache's copy (an image naming any other file, or an external data file, is
//! refused).

use super::cache::{Cache, Layer, LayerMeta};
use super::ui::Ui;
use crate::digest::HashingWriter;
use crate::image::qemu_img;
use crate::s3::{Location, Store};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

#[derive(Serialize, Deserialize)]
struct RemoteRecord {
    meta: LayerMeta,
    size: u64,
    sha256: String,
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

    fn names(key: &str) -> (String, String) {
        (format!("layers/{key}.qcow2"), format!("layers/{key}.json"))
    }

    /// Whether the remote cache has the layer (its record; the image is checked on fetch).
    pub fn has(&self, key: &str) -> Result<bool> {
        Ok(self.store.size(&Self::names(key).1)?.is_some())
    }

    /// Uploads a committed layer unless the remote cache has it already (`replace`: a
    /// damaged copy is there).
    pub fn upload(&self, cache: &Cache, layer: &Layer, ui: &Ui, replace: bool) -> Result<()> {
        let (image, record) = Self::names(&layer.key);
        if !replace && self.store.size(&record)?.is_some() {
            return Ok(());
        }
        let meta = cache.meta(&layer.key).context("the layer has no metadata")?;
        let sha256 = crate::digest::file_hex::<Sha256>(&layer.path)?;
        let size = self.store.upload(&image, &layer.path, ui, &format!("cache upload {}", &layer.key[..12]))?;
        self.store.put(&record, serde_json::to_vec_pretty(&RemoteRecord { meta, size, sha256 })?)?;
        Ok(())
    }

    /// The layer `key` fetched into the local cache on top of `parent`; None when the
    /// remote cache does not have it. An error means a copy that cannot be used (damaged,
    /// or not a layer of ours); the caller builds the layer instead.
    pub fn fetch(&self, cache: &Cache, key: &str, parent: Option<&Layer>, ui: &Ui) -> Result<Option<Layer>> {
        let (image, record) = Self::names(key);
        let Some(bytes) = self.store.get(&record, 1 << 20)? else { return Ok(None) };
        let remote: RemoteRecord = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a layer record", self.store.url(&record)))?;
        if remote.meta.key != key || remote.meta.parent.as_deref() != parent.map(|p| p.key.as_str()) {
            bail!("{}: the record is for another layer or parent", self.store.url(&record));
        }
        let temp = cache.temp_path(key);
        let result = (|| -> Result<Layer> {
            let file = std::fs::File::create(&temp)?;
            let mut out = HashingWriter::<Sha256, _>::new(std::io::BufWriter::new(file));
            let size = self.store.download(&image, &mut out, ui, &format!("cache fetch {}", &key[..12]))?;
            let (sha256, writer) = out.finish();
            writer.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            if size != remote.size || sha256 != remote.sha256 {
                bail!(
                    "{}: {size} bytes with sha256 {sha256}, the record says {} bytes with {}: damaged or truncated",
                    self.store.url(&image),
                    remote.size,
                    remote.sha256
                );
            }
            let info = qemu_img::info(&temp)?;
            let backing_name = info.backing_filename.as_deref().map(|b| b.rsplit('/').next().unwrap_or(b));
            let want = parent.map(|p| format!("{}.qcow2", p.key));
            let data_file = info.format_specific.as_ref().and_then(|f| f.pointer("/data/data-file"));
            if backing_name != want.as_deref() || data_file.is_some() {
                bail!(
                    "{}: names the file {:?} as its backing file (the parent layer is {:?}) or has an external \
                     data file: not a layer of this cache",
                    self.store.url(&image),
                    info.backing_filename,
                    want
                );
            }
            // The other builder's path to the parent, replaced by this cache's.
            if let Some(parent) = parent {
                qemu_img::set_backing(&temp, &parent.path)?;
            }
            cache.commit(&temp, &remote.meta)
        })();
        match result {
            Ok(layer) => Ok(Some(layer)),
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                Err(e)
            }
        }
    }
}
