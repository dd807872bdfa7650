//! Block maps: for each published image, where each 16 MiB data block's compressed form sits
//! (`NAME-rN.xz.blocks`, beside the image). A later publish into the repository takes a block
//! whose content an earlier image holds from there instead of encoding it again. A map is
//! only a hint: a block is offered only when its bytes still have the recorded digest, and
//! taken only when it decompresses to exactly the data it replaces (`xz::compress`), so a
//! damaged, missing or lying map or image costs speed, never correctness.

use crate::image::xz::{Block, BlockRecord, BlockSource};
use anyhow::Result;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The suffix of a block map beside its image.
pub const SUFFIX: &str = ".blocks";

/// One image's block map, as stored.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct BlockMap {
    /// `xz::encoder_identity` of the encoder that made the blocks.
    pub encoder: String,
    pub blocks: Vec<BlockRecord>,
}

/// The map file of an image file.
pub fn map_path(image: &Path) -> PathBuf {
    PathBuf::from(format!("{}{SUFFIX}", image.display()))
}

pub fn save(image: &Path, map: &BlockMap) -> Result<()> {
    crate::base::atomic::write(&map_path(image), &serde_json::to_vec(map)?)
}

/// Every block of the repository's images made by this encoder, by content; and what was
/// wrong with the maps that could not be used.
#[derive(Default)]
pub struct ReuseIndex {
    by_content: HashMap<String, (PathBuf, BlockRecord)>,
    warnings: Mutex<Vec<String>>,
}

impl ReuseIndex {
    /// Reads the block maps in `dir` whose image is still there and whose encoder is
    /// `encoder`. Unreadable maps are skipped with a warning.
    pub fn load(dir: &Path, encoder: &str) -> ReuseIndex {
        let mut by_content = HashMap::new();
        let mut warnings = Vec::new();
        let mut maps: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(SUFFIX))
            .collect();
        // Newest revision first, so a block's most recent copy is the one read.
        maps.sort();
        maps.reverse();
        for map in maps {
            let image = PathBuf::from(map.to_string_lossy().trim_end_matches(SUFFIX));
            if !image.is_file() {
                warnings.push(format!("{}: its image is gone, map not used", map.display()));
                continue;
            }
            let parsed: Result<BlockMap, String> = std::fs::read(&map)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(m) if m.encoder == encoder => {
                    for b in m.blocks {
                        by_content.entry(b.content.clone()).or_insert((image.clone(), b));
                    }
                }
                Ok(_) => {}
                Err(e) => warnings.push(format!("{}: unreadable block map, not used ({e})", map.display())),
            }
        }
        ReuseIndex { by_content, warnings: Mutex::new(warnings) }
    }

    /// What could not be used, for the log.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().map(|w| w.clone()).unwrap_or_default()
    }

    fn warn(&self, message: String) {
        if let Ok(mut w) = self.warnings.lock() {
            w.push(message);
        }
    }

    fn read(image: &Path, r: &BlockRecord) -> Result<Vec<u8>> {
        let mut f = std::fs::File::open(image)?;
        f.seek(SeekFrom::Start(r.offset))?;
        let mut bytes = vec![0u8; usize::try_from(r.length)?];
        f.read_exact(&mut bytes)?;
        Ok(bytes)
    }
}

impl BlockSource for ReuseIndex {
    fn find(&self, content: &str, uncompressed_size: u64) -> Option<Block> {
        let (image, r) = self.by_content.get(content)?;
        // A compressed block is far smaller than its content; a map claiming otherwise is
        // not believed (and not read into memory).
        if r.uncompressed_size != uncompressed_size || r.length > uncompressed_size + (1 << 20) {
            return None;
        }
        match Self::read(image, r) {
            Ok(bytes) if hex::encode(Sha256::digest(&bytes)) == r.sha256 => {
                Some(Block { bytes, unpadded_size: r.unpadded_size, uncompressed_size })
            }
            Ok(_) => {
                self.warn(format!(
                    "{}: the block at {} is not what its map says; encoded instead",
                    image.display(),
                    r.offset
                ));
                None
            }
            Err(e) => {
                self.warn(format!("{}: cannot read the block at {} ({e}); encoded instead", image.display(), r.offset));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::chain::RawDisk;
    use crate::image::xz::{self, EncodeAll, XzOptions};
    use indicatif::ProgressBar;

    const BLOCK: usize = 64 << 10;

    fn opts() -> XzOptions {
        XzOptions { preset: 6, block_size: BLOCK, threads: 2 }
    }

    /// Six blocks: data, data, zeros, data, data, data (short).
    fn disk(seed: u32) -> Vec<u8> {
        let mut data = vec![0u8; 6 * BLOCK - 100];
        let mut x = 7u32;
        for (i, b) in data.iter_mut().enumerate() {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            *b = if (2 * BLOCK..3 * BLOCK).contains(&i) { 0 } else { (x >> 28) as u8 + b'a' };
        }
        data[4 * BLOCK + 17] ^= seed as u8;
        data
    }

    /// Compresses `data` into `dir/name` with `source`; the file's bytes and the result.
    fn publish(dir: &Path, name: &str, data: &[u8], source: &dyn BlockSource) -> (Vec<u8>, xz::Compressed) {
        let raw = dir.join(format!("{name}.raw"));
        std::fs::write(&raw, data).unwrap();
        let mut out = Vec::new();
        let res =
            xz::compress(&mut RawDisk::open(&raw).unwrap(), &mut out, &opts(), source, &ProgressBar::hidden()).unwrap();
        std::fs::remove_file(raw).unwrap();
        let image = dir.join(format!("{name}.xz"));
        std::fs::write(&image, &out).unwrap();
        let encoder = xz::encoder_identity(&opts()).unwrap();
        save(&image, &BlockMap { encoder, blocks: res.blocks.clone() }).unwrap();
        (out, res)
    }

    fn full_encode(dir: &Path, data: &[u8]) -> Vec<u8> {
        let scratch = tempfile::tempdir_in(dir).unwrap();
        publish(scratch.path(), "full", data, &EncodeAll).0
    }

    fn index(dir: &Path) -> ReuseIndex {
        ReuseIndex::load(dir, &xz::encoder_identity(&opts()).unwrap())
    }

    #[test]
    fn unchanged_blocks_are_copied_and_the_result_is_what_encoding_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (first, res) = publish(dir, "img-r1", &disk(0), &EncodeAll);
        assert_eq!((res.data_blocks, res.zero_blocks, res.reused_blocks), (5, 1, 0));

        // The same content again: every data block reused, the same bytes.
        let (again, res) = publish(dir, "img-r2", &disk(0), &index(dir));
        assert_eq!((res.data_blocks, res.reused_blocks), (5, 5));
        assert_eq!(again, first);

        // One block changed: only it is encoded; byte for byte a full encode; decodes right.
        let changed = disk(1);
        let (third, res) = publish(dir, "img-r3", &changed, &index(dir));
        assert_eq!((res.data_blocks, res.reused_blocks), (5, 4));
        assert!(third == full_encode(dir, &changed), "reuse must write what a full encode writes");
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut xz2::read::XzDecoder::new(&third[..]), &mut back).unwrap();
        assert!(back == changed);
    }

    /// A map and image planted in the repository that agree with each other (real compressed
    /// bytes, their true digest) but claim another block's content: the block is offered,
    /// found not to decompress to the data, and encoded; the image is the layer exactly.
    #[test]
    fn a_consistent_lying_map_puts_nothing_into_the_image() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let honest = tempfile::tempdir().unwrap();
        let wanted = disk(0);
        let (_, truth) = publish(honest.path(), "truth", &wanted, &EncodeAll);
        // Real blocks of other data, each recorded as holding the wanted data's block.
        let (_, other) = publish(dir, "liar-r9", &disk(1), &EncodeAll);
        let lies: Vec<BlockRecord> = other
            .blocks
            .iter()
            .zip(&truth.blocks)
            .map(|(o, t)| BlockRecord { content: t.content.clone(), ..o.clone() })
            .collect();
        let encoder = xz::encoder_identity(&opts()).unwrap();
        save(&dir.join("liar-r9.xz"), &BlockMap { encoder, blocks: lies }).unwrap();

        let scratch = tempfile::tempdir().unwrap();
        let (out, res) = publish(scratch.path(), "next", &wanted, &index(dir));
        // Blocks 0, 1, 3 and 5 are the same in both disks: those are true and reused.
        assert_eq!((res.data_blocks, res.reused_blocks, res.rejected_blocks), (5, 4, 1));
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut xz2::read::XzDecoder::new(&out[..]), &mut back).unwrap();
        assert!(back == wanted, "the image decompresses to the layer");
        assert!(out == full_encode(dir, &wanted));
    }

    #[test]
    fn damaged_maps_and_images_cost_speed_never_correctness() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        publish(dir, "img-r1", &disk(0), &EncodeAll);
        let expected = full_encode(dir, &disk(0));

        // An image whose bytes no longer match its map: each block is checked and encoded.
        let image = dir.join("img-r1.xz");
        let mut bytes = std::fs::read(&image).unwrap();
        for b in bytes.iter_mut().skip(100).step_by(997) {
            *b ^= 0x55;
        }
        std::fs::write(&image, &bytes).unwrap();
        let source = index(dir);
        let scratch = tempfile::tempdir_in(dir).unwrap();
        let (out, res) = publish(scratch.path(), "img-r2", &disk(0), &source);
        assert_eq!(res.reused_blocks, 0);
        assert!(out == expected);
        assert!(source.warnings().iter().any(|w| w.contains("not what its map says")), "{:?}", source.warnings());

        // A map that is not JSON: skipped with a warning.
        std::fs::write(map_path(&image), b"{ garbage").unwrap();
        let source = index(dir);
        assert!(source.warnings().iter().any(|w| w.contains("unreadable block map")), "{:?}", source.warnings());
        assert!(source.find("x", 1).is_none());

        // A map made by another encoder (other settings) is not used at all.
        let (first, _) = publish(dir, "img-r3", &disk(0), &EncodeAll);
        let other = ReuseIndex::load(dir, "lzma2 preset=9 block=16777216 sample-sha256=00");
        let scratch = tempfile::tempdir_in(dir).unwrap();
        let (out, res) = publish(scratch.path(), "img-r4", &disk(0), &other);
        assert_eq!(res.reused_blocks, 0);
        assert!(out == first);

        // A map whose image is gone: not used, and said so.
        std::fs::remove_file(dir.join("img-r3.xz")).unwrap();
        let source = index(dir);
        assert!(source.warnings().iter().any(|w| w.contains("its image is gone")), "{:?}", source.warnings());
    }
}
