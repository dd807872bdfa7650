//! S3-compatible object storage (Garage, Ceph RGW, MinIO, AWS) through `object_store`: an
//! `s3://BUCKET/PREFIX` location, a client configured the usual S3 way, and the few
//! operations the repository and the layer cache need. Every call is retried with backoff
//! (bounded) by the client; uploads of files go in parts, so an interrupted one leaves no
//! object behind.

use crate::bad_input;
use crate::base::ui::Ui;
use anyhow::{anyhow, Context, Result};
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, WriteMultipart};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// Part size of multipart uploads: large enough for few requests, small enough to retry.
const PART_SIZE: usize = 16 << 20;
/// Parts in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// Whether a repository or cache argument names object storage.
pub fn is_s3(location: &str) -> bool {
    location.starts_with("s3://")
}

/// `s3://BUCKET/PREFIX`: a bucket and a key prefix inside it (possibly empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub bucket: String,
    pub prefix: String,
}

impl Location {
    pub fn parse(url: &str) -> Result<Location> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| bad_input!("`{url}` is not an s3://BUCKET/PREFIX URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c));
        if !bucket_ok {
            return Err(bad_input!(
                "`{url}`: `{bucket}` is not a bucket name (3 to 63 lower-case letters, digits, - and .)"
            ));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
            return Err(bad_input!("`{url}`: the prefix must not hold empty, `.` or `..` parts"));
        }
        Ok(Location { bucket: bucket.to_string(), prefix })
    }

    /// The last part of the prefix, else the bucket: the repository's name.
    pub fn name(&self) -> &str {
        self.prefix.rsplit('/').next().filter(|s| !s.is_empty()).unwrap_or(&self.bucket)
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.prefix.as_str() {
            "" => write!(f, "s3://{}", self.bucket),
            p => write!(f, "s3://{}/{p}", self.bucket),
        }
    }
}

/// One object listed: its name below the location's prefix and its size.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub size: u64,
    pub modified: std::time::SystemTime,
}

/// A bucket and prefix with a client for it. Blocking: each call runs on a runtime of its
/// own, as the rest of the tool is synchronous.
pub struct Store {
    pub location: Location,
    /// The endpoint, for messages and for keying trust.
    pub endpoint: String,
    client: AmazonS3,
    runtime: tokio::runtime::Runtime,
}

/// An environment variable's value; an empty one counts as unset.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Store {
    /// A client for `location` configured from the environment: `AWS_ENDPOINT_URL` (Garage,
    /// RGW, MinIO; unset for AWS itself), `AWS_REGION` (or `AWS_DEFAULT_REGION`),
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`), or those of
    /// the profile `AWS_PROFILE` in ~/.aws/credentials and ~/.aws/config. Virtual-hosted
    /// requests with `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true`; path-style otherwise, which
    /// every S3-compatible server takes.
    pub fn open(location: &Location) -> Result<Store> {
        let profile = profile::load()?;
        let setting = |var: &str, key: &str| env(var).or_else(|| profile.get(key).cloned());
        let missing = |what: &str| {
            bad_input!(
                "{location}: no {what}; set it in the environment, or in the profile {} of ~/.aws/credentials \
                 and ~/.aws/config (AWS_PROFILE picks another)",
                profile.name
            )
        };
        let key_id =
            setting("AWS_ACCESS_KEY_ID", "aws_access_key_id").ok_or_else(|| missing("AWS_ACCESS_KEY_ID is set"))?;
        let secret = setting("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key")
            .ok_or_else(|| missing("AWS_SECRET_ACCESS_KEY is set"))?;
        let endpoint = setting("AWS_ENDPOINT_URL", "endpoint_url");
        let region = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")).or_else(|| profile.get("region").cloned());
        let region = match (&endpoint, region) {
            (_, Some(r)) => r,
            // The usual default of S3-compatible servers (Garage wants its `s3_region`); AWS
            // itself needs the bucket's region.
            (Some(_), None) => "us-east-1".to_string(),
            (None, None) => {
                return Err(missing(
                    "endpoint or region: set AWS_ENDPOINT_URL to the S3 endpoint of Garage, Ceph RGW or MinIO, or \
                     AWS_REGION for AWS",
                ))
            }
        };
        let endpoint_shown = endpoint.clone().unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&location.bucket)
            .with_region(&region)
            .with_access_key_id(key_id)
            .with_secret_access_key(secret)
            .with_virtual_hosted_style_request(env("AWS_VIRTUAL_HOSTED_STYLE_REQUEST").as_deref() == Some("true"))
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: 6,
                retry_timeout: Duration::from_secs(60),
            });
        if let Some(token) = setting("AWS_SESSION_TOKEN", "aws_session_token") {
            builder = builder.with_token(token);
        }
        if let Some(url) = &endpoint {
            builder = builder.with_endpoint(url).with_allow_http(url.starts_with("http://"));
        }
        let client = builder.build().map_err(|e| bad_input!("{location}: {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Store { location: location.clone(), endpoint: endpoint_shown, client, runtime })
    }

    fn path(&self, name: &str) -> ObjectPath {
        match self.location.prefix.as_str() {
            "" => ObjectPath::from(name),
            p => ObjectPath::from(format!("{p}/{name}")),
        }
    }

    /// `s3://bucket/prefix/name`, for messages.
    pub fn url(&self, name: &str) -> String {
        format!("s3://{}/{}", self.location.bucket, self.path(name))
    }

    /// An error with the object's URL and what to do about the usual causes.
    fn explain(&self, name: &str, e: object_store::Error) -> anyhow::Error {
        let text = e.to_string();
        let hint = if text.contains("NoSuchBucket") {
            format!(" (the bucket {} does not exist at {}: create it first)", self.location.bucket, self.endpoint)
        } else if text.contains("AccessDenied") || text.contains("InvalidAccessKeyId") || text.contains("403") {
            " (access denied: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the key's rights on the bucket)".into()
        } else if text.contains("error sending request") || text.contains("Connect") {
            format!(" (cannot reach {}: is AWS_ENDPOINT_URL right and the server up?)", self.endpoint)
        } else {
            String::new()
        };
        anyhow!("{}: {e}{hint}", self.url(name))
    }

    /// An object's bytes, or None when there is none; refused when larger than `limit`.
    pub fn get(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let path = self.path(name);
        self.runtime.block_on(async {
            let got = match self.client.get(&path).await {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(self.explain(name, e)),
            };
            if got.meta.size > limit {
                anyhow::bail!("{}: {} bytes, more than the {limit} expected", self.url(name), got.meta.size);
            }
            Ok(Some(got.bytes().await.map_err(|e| self.explain(name, e))?.to_vec()))
        })
    }

    /// An object's size, or None when there is none.
    pub fn size(&self, name: &str) -> Result<Option<u64>> {
        self.runtime.block_on(async {
            match self.client.head(&self.path(name)).await {
                Ok(m) => Ok(Some(m.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.explain(name, e)),
            }
        })
    }

    /// Streams an object of at most `limit` bytes into `out` with progress, returning its
    /// size; a larger one is refused (before or while it is read).
    pub fn download(&self, name: &str, out: &mut dyn Write, ui: &Ui, label: &str, limit: u64) -> Result<u64> {
        self.runtime.block_on(async {
            let got = self.client.get(&self.path(name)).await.map_err(|e| self.explain(name, e))?;
            let too_big = || anyhow!("{}: larger than the {limit} bytes expected", self.url(name));
            if got.meta.size > limit {
                return Err(too_big());
            }
            let bar = ui.bytes(label, got.meta.size);
            let mut stream = got.into_stream();
            let mut total = 0u64;
            let result = async {
                while let Some(chunk) = stream.next().await {
                    crate::base::interrupt::check()?;
                    let chunk = chunk.map_err(|e| self.explain(name, e))?;
                    total += chunk.len() as u64;
                    if total > limit {
                        return Err(too_big());
                    }
                    out.write_all(&chunk)?;
                    bar.set_position(total);
                }
                Ok(total)
            }
            .await;
            bar.finish_and_clear();
            result
        })
    }

    /// Writes a small object whole (one request: atomic).
    pub fn put(&self, name: &str, data: Vec<u8>) -> Result<()> {
        self.runtime.block_on(async {
            self.client.put(&self.path(name), PutPayload::from(data)).await.map_err(|e| self.explain(name, e))?;
            Ok(())
        })
    }

    /// Writes a small object only if none exists (`If-None-Match: *`): false when one did.
    /// Only as good as the server: Garage answers 200 and overwrites (see
    /// `honours_conditional_put`), so callers use it as a guard, never for correctness.
    pub fn put_if_absent(&self, name: &str, data: Vec<u8>) -> Result<bool> {
        self.runtime.block_on(async {
            let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
            match self.client.put_opts(&self.path(name), PutPayload::from(data), opts).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                    Ok(false)
                }
                Err(e) => Err(self.explain(name, e)),
            }
        })
    }

    /// Whether the server refuses a second create of one key: probed once by writing a
    /// unique object twice with `If-None-Match: *`, then deleting it.
    pub fn honours_conditional_put(&self) -> Result<bool> {
        let probe = format!(".probe/conditional-put-{}", unique_id());
        self.put_if_absent(&probe, b"1".to_vec())?;
        let refused = !self.put_if_absent(&probe, b"2".to_vec())?;
        self.delete(&probe)?;
        Ok(refused)
    }

    /// Uploads a file in parts with progress, returning its size and the sha256 of what was
    /// sent. The object appears only when the last part is in; on any failure (or a signal)
    /// the upload is aborted and nothing is left.
    pub fn upload(&self, name: &str, file: &Path, ui: &Ui, label: &str) -> Result<(u64, String)> {
        use sha2::Digest;
        let mut input = std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
        let total = input.metadata()?.len();
        let path = self.path(name);
        self.runtime.block_on(async {
            let upload = self.client.put_multipart(&path).await.map_err(|e| self.explain(name, e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let bar = ui.bytes(label, total);
            let mut buf = vec![0u8; PART_SIZE];
            let mut sent = 0u64;
            let mut sha256 = sha2::Sha256::new();
            let result: Result<()> = async {
                loop {
                    crate::base::interrupt::check()?;
                    let n = input.read(&mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(|e| self.explain(name, e))?;
                    writer.write(&buf[..n]);
                    sha256.update(&buf[..n]);
                    sent += n as u64;
                    bar.set_position(sent);
                }
            }
            .await;
            // Every part in before completing: `finish` aborts only a failed completion.
            let result = match result {
                Ok(()) => writer.wait_for_capacity(0).await.map_err(|e| self.explain(name, e)),
                Err(e) => Err(e),
            };
            bar.finish_and_clear();
            match result {
                Ok(()) => {
                    writer.finish().await.map_err(|e| self.explain(name, e))?;
                    Ok((sent, hex::encode(sha256.finalize())))
                }
                Err(e) => {
                    let _ = writer.abort().await;
                    Err(e)
                }
            }
        })
    }

    /// The objects below `dir` (a prefix inside the location, "" for all), by name.
    pub fn list(&self, dir: &str) -> Result<Vec<Listed>> {
        let base = self.path("");
        let prefix = match dir {
            "" => (!self.location.prefix.is_empty()).then(|| ObjectPath::from(self.location.prefix.as_str())),
            d => Some(self.path(d)),
        };
        self.runtime.block_on(async {
            let mut stream = self.client.list(prefix.as_ref());
            let mut found = Vec::new();
            while let Some(meta) = stream.next().await {
                let meta = meta.map_err(|e| self.explain(dir, e))?;
                let full = meta.location.to_string();
                let name = match base.as_ref() {
                    "" => full,
                    b => full.strip_prefix(b).map(|n| n.trim_start_matches('/').to_string()).unwrap_or(full),
                };
                let modified =
                    std::time::UNIX_EPOCH + Duration::from_millis(meta.last_modified.timestamp_millis().max(0) as u64);
                found.push(Listed { name, size: meta.size, modified });
            }
            found.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(found)
        })
    }

    /// Deletes an object; one that is already gone is no error.
    pub fn delete(&self, name: &str) -> Result<()> {
        self.runtime.block_on(async {
            match self.client.delete(&self.path(name)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.explain(name, e)),
            }
        })
    }
}

/// A name no other writer picks: the time in microseconds (so names sort by when they were
/// made) and 64 random bits.
pub fn unique_id() -> String {
    let micros = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros();
    format!("{micros:016}-{:016x}", rand::random::<u64>())
}

pub mod profile {
    //! The settings of one profile in ~/.aws/credentials and ~/.aws/config (or the files
    //! AWS_SHARED_CREDENTIALS_FILE and AWS_CONFIG_FILE name), as the AWS CLI reads them.

    use anyhow::{Context, Result};
    use std::collections::HashMap;
    use std::path::PathBuf;

    pub struct Profile {
        pub name: String,
        settings: HashMap<String, String>,
    }

    impl Profile {
        pub fn get(&self, key: &str) -> Option<&String> {
            self.settings.get(key)
        }
    }

    pub fn load() -> Result<Profile> {
        let name = super::env("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        let file = |var: &str, default: &str| super::env(var).map(PathBuf::from).unwrap_or(home.join(default));
        let mut settings = HashMap::new();
        // In the config file a profile other than the default is headed `[profile NAME]`.
        let config_section = if name == "default" { name.clone() } else { format!("profile {name}") };
        for (path, section) in [
            (file("AWS_CONFIG_FILE", ".aws/config"), config_section),
            (file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"), name.clone()),
        ] {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            };
            settings.extend(section_of(&text, &section));
        }
        if super::env("AWS_PROFILE").is_some() && settings.is_empty() {
            return Err(crate::bad_input!(
                "AWS_PROFILE={name}: no such profile in ~/.aws/credentials or ~/.aws/config"
            ));
        }
        Ok(Profile { name, settings })
    }

    /// The `key = value` lines of one `[section]` of an INI file.
    fn section_of(text: &str, section: &str) -> Vec<(String, String)> {
        let mut current = None;
        let mut found = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                current = Some(name.trim().to_string());
            } else if current.as_deref() == Some(section) {
                if let Some((k, v)) = line.split_once('=') {
                    found.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
        }
        found
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn a_profile_section_is_read_and_others_are_not() {
            let text = "[default]\naws_access_key_id = A\n\n[profile garage]\n# note\nregion = garage\n\
                        endpoint_url=http://127.0.0.1:3900\n[other]\nregion = x\n";
            let got = super::section_of(text, "profile garage");
            assert_eq!(
                got,
                [("region".into(), "garage".into()), ("endpoint_url".into(), "http://127.0.0.1:3900".into())]
            );
            assert_eq!(super::section_of(text, "default"), [("aws_access_key_id".into(), "A".into())]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_bad_ones_are_named() {
        let l = Location::parse("s3://images/repo/main/").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str(), l.name()), ("images", "repo/main", "main"));
        assert_eq!(l.to_string(), "s3://images/repo/main");
        let l = Location::parse("s3://images").unwrap();
        assert_eq!((l.prefix.as_str(), l.name()), ("", "images"));
        for bad in ["s3://Images/x", "s3://ab", "s3://images/a/../b", "http://images/x"] {
            let e = Location::parse(bad).unwrap_err();
            assert_eq!(crate::base::error::exit_code(&e), 2, "{bad}: {e}");
        }
    }

    #[test]
    fn unique_ids_sort_by_time() {
        let a = unique_id();
        std::thread::sleep(Duration::from_millis(2));
        let b = unique_id();
        assert!(a < b, "{a} {b}");
    }
}
