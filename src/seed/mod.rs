//! Cloud-init seed data in Virtlet's model, without Kubernetes: a seed file (TOML) gives the
//! instance-id, hostname, SSH keys, user-data, files, mounts and network; this module turns
//! it into a NoCloud (`cidata`) or ConfigDrive (`config-2`) ISO that cloud-init reads at
//! first boot. Everything is read and checked by [`Seed::load`] (bad input, exit 2), so
//! writing the ISO cannot fail on the user's data.

mod iso;
pub mod network;
mod userdata;
pub mod yaml;

pub use iso::{write_iso, write_iso_logged};
pub use network::NetworkConfig;

use crate::bad_input;
use crate::base::overrides;
use anyhow::Result;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// The seed file: every key, as docs/seeds.md documents them.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SeedConfig {
    /// cloud-init's `instance-id` (ConfigDrive: also `uuid`); default: the hostname.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// `local-hostname` (ConfigDrive: also `hostname`).
    pub hostname: String,
    /// OpenSSH public keys for the default user: a list, or one string with a key per line
    /// (Virtlet's `VirtletSSHKeys`).
    #[serde(default, deserialize_with = "string_or_list")]
    pub ssh_keys: Vec<String>,
    /// The user's cloud-config (or, in script mode, the script): text, or `{ file = "..." }`.
    #[serde(default)]
    pub user_data: Option<UserData>,
    /// A cloud-config file merged after `user_data` (Virtlet's `VirtletCloudInitUserDataSource`).
    #[serde(default)]
    pub user_data_source: Option<String>,
    #[serde(default)]
    pub user_data_mode: UserDataMode,
    /// Host files and directories written into the guest by cloud-init's `write_files`.
    #[serde(default)]
    pub write_files: Vec<WriteFile>,
    /// Block devices cloud-init mounts (its `mounts`).
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Network config; without it cloud-init uses DHCP on the first interface.
    #[serde(default)]
    pub network: Option<NetworkConfig>,
}

/// How the user's documents combine with the generated part, as Virtlet's annotations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UserDataMode {
    /// Maps merge recursively, lists are appended, later scalars win.
    #[default]
    Merge,
    /// Later documents replace earlier top-level keys (`VirtletCloudInitUserDataOverwrite`).
    Overwrite,
    /// `user_data` is a script (`#!...`) that replaces user-data (`VirtletCloudInitUserDataScript`).
    Script,
}

/// `user_data = "..."` or `user_data = { file = "..." }`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum UserData {
    Text(String),
    File { file: String },
}

impl<'de> Deserialize<'de> for UserData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UserData;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("cloud-config text or a table { file = \"PATH\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<UserData, E> {
                Ok(UserData::Text(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UserData, A::Error> {
                let mut file = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "file" {
                        return Err(de::Error::unknown_field(&key, &["file"]));
                    }
                    file = Some(map.next_value::<String>()?);
                }
                file.map(|file| UserData::File { file }).ok_or_else(|| de::Error::missing_field("file"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A string with one item per line, or a list of strings.
fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of strings, or a string with one per line")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(v.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// `[[write_files]]`: a host file, or every file below a host directory, written into the
/// guest at `path` (a directory's files below it), base64-encoded.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WriteFile {
    /// A file or directory on the host, relative to the seed file.
    pub source: String,
    /// Where it goes in the guest (absolute).
    pub path: String,
    /// Octal mode such as "0644"; default: each host file's own mode.
    #[serde(default)]
    pub permissions: Option<String>,
    /// `user:group` in the guest; default: cloud-init's (root:root).
    #[serde(default)]
    pub owner: Option<String>,
}

/// `[[mounts]]`: one entry of cloud-init's `mounts` (an fstab line).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// The device (`/dev/vdb`, `LABEL=data`).
    pub device: String,
    /// The mount point (absolute).
    pub path: String,
    /// Filesystem type; cloud-init's default is `auto`.
    #[serde(default)]
    pub fstype: Option<String>,
    /// Mount options; cloud-init's default is `defaults,nofail,...`.
    #[serde(default)]
    pub options: Option<String>,
}

/// The two seed layouts cloud-init reads from a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Volume `cidata`: `meta-data`, `user-data`, `network-config`.
    NoCloud,
    /// Volume `config-2`: `openstack/latest/{meta_data.json,user_data,network_data.json}`.
    ConfigDrive,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::NoCloud => "nocloud",
            Format::ConfigDrive => "configdrive",
        }
    }

    /// The ISO volume label cloud-init looks for.
    pub fn volume_id(self) -> &'static str {
        match self {
            Format::NoCloud => "cidata",
            Format::ConfigDrive => "config-2",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "nocloud" => Ok(Format::NoCloud),
            "configdrive" => Ok(Format::ConfigDrive),
            _ => Err(format!("`{s}` is not a seed format: use nocloud or configdrive")),
        }
    }
}

/// A loaded and checked seed: the files of the ISO are decided; writing them is all that
/// is left.
#[derive(Debug, Clone)]
pub struct Seed {
    path: PathBuf,
    config: SeedConfig,
    keys: Vec<String>,
    user_data: String,
    inputs: Vec<PathBuf>,
}

impl Seed {
    /// Reads a seed file with `--set KEY=VALUE` overrides applied, reads every file it names
    /// (relative to the seed file) and checks everything. Every failure is bad input (exit 2)
    /// naming the file and the key.
    pub fn load(path: &Path, sets: &[String]) -> Result<Seed> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| bad_input!("cannot read seed file {shown}: {e}"))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| bad_input!("{shown}: {}", e.to_string().trim_end()))?;
        let config = apply_sets(toml::Value::Table(table), &shown.to_string(), sets)?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
        let mut seed = Seed::from_config(config, &dir, &shown.to_string())?;
        seed.path = path.to_path_buf();
        seed.inputs.insert(0, path.to_path_buf());
        Ok(seed)
    }

    /// A seed from a configuration built in code: relative paths resolve against `dir`, and
    /// `origin` names the configuration in messages (`pipeline.toml: stages[3].export.seed`).
    pub fn from_config(config: SeedConfig, dir: &Path, origin: &str) -> Result<Seed> {
        let bad = |at: &str, msg: String| bad_input!("{origin}: {at}: {msg}");
        check_hostname(&config.hostname).map_err(|m| bad("hostname", m))?;
        if let Some(id) = &config.instance_id {
            let ok = !id.is_empty() && id.chars().all(|c| c.is_ascii_graphic() && c != '/');
            if !ok {
                return Err(bad("instance_id", format!("`{id}` is not usable as an instance-id (printable characters without spaces or `/`; cloud-init makes a directory of it)")));
            }
        }
        let keys = config
            .ssh_keys
            .iter()
            .enumerate()
            .map(|(i, k)| check_ssh_key(k).map_err(|m| bad(&format!("ssh_keys[{i}]"), m)))
            .collect::<Result<Vec<_>>>()?;
        if let Some(n) = &config.network {
            n.check().map_err(|m| bad_input!("{origin}: network.{m}"))?;
        }
        let (user_data, inputs) = userdata::build(&config, dir, origin)?;
        Ok(Seed { path: PathBuf::from(origin), config, keys, user_data, inputs })
    }

    /// The host files the seed reads (the seed file, user-data files, every `write_files`
    /// source file): with [`config`](Self::config), what a cache key must cover.
    pub fn inputs(&self) -> Vec<PathBuf> {
        self.inputs.clone()
    }

    /// The configuration after `--set`.
    pub fn config(&self) -> &SeedConfig {
        &self.config
    }

    /// The seed file (or the `origin` given to [`from_config`](Self::from_config)).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn instance_id(&self) -> &str {
        self.config.instance_id.as_deref().unwrap_or(&self.config.hostname)
    }

    /// The user-data file's content: `#cloud-config` YAML, or the script in script mode.
    pub fn user_data(&self) -> &str {
        &self.user_data
    }

    /// The files of the seed volume in `format`: (path inside the ISO, content).
    pub fn files(&self, format: Format) -> Vec<(String, Vec<u8>)> {
        let c = &self.config;
        let mut meta = serde_json::json!({
            "instance-id": self.instance_id(),
            "local-hostname": c.hostname,
        });
        if !self.keys.is_empty() {
            meta["public-keys"] = serde_json::json!(self.keys);
        }
        let json = |v: &serde_json::Value| {
            let mut text = serde_json::to_vec_pretty(v).expect("JSON values serialize");
            text.push(b'\n');
            text
        };
        match format {
            Format::NoCloud => {
                let mut files = vec![
                    ("meta-data".to_string(), json(&meta)),
                    ("user-data".to_string(), self.user_data.clone().into_bytes()),
                ];
                if let Some(n) = &c.network {
                    files.push(("network-config".to_string(), yaml::to_yaml(&n.to_v1()).into_bytes()));
                }
                files
            }
            Format::ConfigDrive => {
                // Virtlet repeats instance-id as `uuid` (cloud-init requires it) and the
                // hostname as `hostname`. cloud-init reads a ConfigDrive's keys from the
                // `public_keys` map, not Virtlet's `public-keys` list, so both are written.
                meta["uuid"] = serde_json::json!(self.instance_id());
                meta["hostname"] = serde_json::json!(c.hostname);
                if !self.keys.is_empty() {
                    let map: serde_json::Map<String, serde_json::Value> =
                        self.keys.iter().enumerate().map(|(i, k)| (format!("key-{i}"), serde_json::json!(k))).collect();
                    meta["public_keys"] = serde_json::Value::Object(map);
                }
                let mut files = vec![
                    ("openstack/latest/meta_data.json".to_string(), json(&meta)),
                    ("openstack/latest/user_data".to_string(), self.user_data.clone().into_bytes()),
                ];
                if let Some(n) = &c.network {
                    files.push(("openstack/latest/network_data.json".to_string(), json(&n.to_network_data())));
                }
                files
            }
        }
    }
}

/// Applies the `--set`s and reads the result as a [`SeedConfig`].
fn apply_sets(doc: toml::Value, origin: &str, sets: &[String]) -> Result<SeedConfig> {
    fn hint(msg: &str) -> &'static str {
        if msg.contains("unknown field") || msg.contains("unknown variant") {
            "; check the spelling against the seed file keys in docs/seeds.md"
        } else {
            ""
        }
    }
    let document = overrides::Document { origin, schema: "a seed file", hint };
    overrides::deserialize_with_sets(&doc, sets, &document, |_| Ok(()))
}

/// RFC 1123 host names, or dotted names of them (cloud-init sets the first label as the
/// hostname and the whole as the FQDN).
fn check_hostname(name: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "`{name}` is not a host name (letters, digits and `-` in dot-separated labels of up to 63 characters)"
        ));
    }
    Ok(())
}

/// One OpenSSH public key line (`ssh-ed25519 AAAA... comment`), returned trimmed.
fn check_ssh_key(key: &str) -> Result<String, String> {
    let key = key.trim();
    if key.contains("PRIVATE KEY") {
        return Err("is a private key; give the public key (the line of the .pub file, e.g. ~/.ssh/id_ed25519.pub) and keep the private key to yourself".into());
    }
    if key.contains('\n') {
        return Err("holds more than one line; give one key per entry".into());
    }
    let shown: String = key.chars().take(40).collect();
    ssh_key::PublicKey::from_openssh(key).map_err(|e| {
        format!("`{shown}...` is not an OpenSSH public key ({e}); give a line such as `ssh-ed25519 AAAA... user@host`")
    })?;
    Ok(key.to_string())
}

#[cfg(test)]
mod tests;
