//! `target = "vagrant"`: Vagrant boxes of the layer, one per provider, and a `box.json`
//! catalogue that `vagrant box add` reads, so a nightly rebuild's new version reaches its
//! users with `vagrant box update`.
//!
//! The `vagrant` account (src/guest/vagrant.rs) is made in the export's throwaway overlay,
//! in one appliance launch for every provider; the overlay is then converted once per
//! provider (qcow2 for libvirt, a streamOptimized VMDK for VirtualBox) and each box packed
//! as a gzip tar, the providers on threads of their own.
//!
//! - libvirt: `box.img`, and a `metadata.json` with `format` and an integer `virtual_size`
//!   in GiB: the first box format of vagrant-libvirt, which every version of it reads.
//! - virtualbox: `box.ovf` and `box-disk001.vmdk`, with a `Vagrantfile` whose `base_mac` is
//!   the OVF's NAT adapter's; the OVF names the disk by the same UUID in its DiskSection
//!   and in VirtualBox's own machine section, or VirtualBox refuses the import.

mod boxes;
mod catalogue;
mod pack;

use super::{Job, Target};
use crate::guest::customize::StepRunner;
use crate::guest::vagrant as account;
use crate::image::qemu_img;
use crate::pipeline::Pipeline;
use anyhow::{anyhow, bail, Context, Result};
use boxes::{vbox_os_type, BoxPlan, Packed};
use catalogue::{carry_earlier, Catalogue, CatalogueProvider, CatalogueVersion};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The catalogue `vagrant box add DEST/box.json` reads.
pub const CATALOGUE: &str = "box.json";

/// The longest installing sudo (or the guest additions) in the guest may take.
const PACKAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// What the virtualbox box's machine gets; a user's Vagrantfile changes both.
const VBOX_MEMORY_MB: u32 = 1024;
const VBOX_CPUS: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Provider {
    Libvirt,
    Virtualbox,
}

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Provider::Libvirt => "libvirt",
            Provider::Virtualbox => "virtualbox",
        }
    }

    fn parse(name: &str) -> Option<Provider> {
        match name {
            "libvirt" => Some(Provider::Libvirt),
            "virtualbox" => Some(Provider::Virtualbox),
            _ => None,
        }
    }
}

/// `target = "vagrant"`: a Vagrant box per provider, with the `vagrant` account Vagrant's
/// base-box documentation describes, and a `box.json` catalogue of the versions in `dest`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct VagrantKeys {
    /// `libvirt` and/or `virtualbox`.
    #[serde(default = "default_vagrant_providers")]
    pub providers: Vec<String>,
    /// A public key (the key text, or a path to a .pub file) authorised for `vagrant` instead
    /// of Vagrant's two insecure keys.
    #[serde(default)]
    pub ssh_key: Option<String>,
    /// The box's name in the catalogue (`vagrant box list`); the pipeline's name by default.
    #[serde(default)]
    pub name: Option<String>,
    /// The box version (`X.Y.Z` digits); by default `YYYYMMDD.HHMMSS` of the build time
    /// (SOURCE_DATE_EPOCH when set).
    #[serde(default)]
    pub version: Option<String>,
    /// Where the boxes will be reachable (the catalogue's URLs); the file:// URL of `dest`
    /// by default.
    #[serde(default)]
    pub base_url: Option<String>,
    /// How many versions the catalogue lists: this one and the newest earlier ones still
    /// in `dest`.
    #[serde(default = "default_vagrant_keep")]
    pub keep: u32,
}

fn default_vagrant_providers() -> Vec<String> {
    vec!["libvirt".into(), "virtualbox".into()]
}
fn default_vagrant_keep() -> u32 {
    3
}

/// Reads the target's keys from the export table and checks them.
pub fn build(keys: &toml::Table, pipeline: &Pipeline, at: &str) -> Result<Box<dyn Target>> {
    Ok(Box::new(Vagrant::new(&super::keys(keys, pipeline, at)?, pipeline, at)?))
}

pub struct Vagrant {
    config: VagrantKeys,
    providers: Vec<Provider>,
    /// The authorized_keys lines for `vagrant`.
    keys: Vec<String>,
    custom_key: bool,
    key_file: Option<PathBuf>,
    name: String,
    version: String,
    base_url: Option<String>,
    keep: usize,
    /// Seconds since the epoch: the version's time, and the tar entries' mtime.
    built: u64,
    pipeline_dir: PathBuf,
    env: BTreeMap<String, String>,
}

impl Vagrant {
    pub fn new(config: &VagrantKeys, pipeline: &Pipeline, at: &str) -> Result<Vagrant> {
        let shown = pipeline.path.display();
        if config.providers.is_empty() {
            return Err(crate::bad_input!("{shown}: {at}.providers: name at least one of libvirt, virtualbox"));
        }
        let mut providers = Vec::new();
        for (i, name) in config.providers.iter().enumerate() {
            let Some(p) = Provider::parse(name) else {
                return Err(crate::bad_input!(
                    "{shown}: {at}.providers[{i}]: `{name}` is not a provider this export makes (libvirt, virtualbox)"
                ));
            };
            if providers.contains(&p) {
                return Err(crate::bad_input!("{shown}: {at}.providers[{i}]: `{name}` is listed twice"));
            }
            providers.push(p);
        }
        let (keys, key_file) = match &config.ssh_key {
            None => (vec![account::INSECURE_RSA_KEY.to_string(), account::INSECURE_ED25519_KEY.to_string()], None),
            Some(spec) => {
                let (text, file) = if is_inline_key(spec) {
                    (spec.clone(), None)
                } else {
                    let path = pipeline.resolve(spec);
                    let text = std::fs::read_to_string(&path).map_err(|e| {
                        crate::bad_input!(
                            "{shown}: {at}.ssh_key: cannot read {} ({e}); give a public key's text (`ssh-ed25519 AAAA…`) or the path of a .pub file",
                            path.display()
                        )
                    })?;
                    (text, Some(path))
                };
                let line = public_key_line(&text).map_err(|e| crate::bad_input!("{shown}: {at}.ssh_key: {e}"))?;
                (vec![line], file)
            }
        };
        let name = config.name.clone().unwrap_or_else(|| pipeline.name().to_string());
        if !valid_box_name(&name) {
            let key = if config.name.is_some() { "name" } else { "name (the pipeline's name by default)" };
            return Err(crate::bad_input!(
                "{shown}: {at}.{key}: `{name}` is not a box name (letters, digits, `.`, `_` and `-`, optionally `org/` before it)"
            ));
        }
        let built =
            build_time().map_err(|e| crate::bad_input!("{shown}: {at}.version: {e} (it sets the default version)"))?;
        let version = match &config.version {
            Some(v) if valid_version(v) => v.clone(),
            Some(v) => {
                return Err(crate::bad_input!(
                    "{shown}: {at}.version: `{v}` is not a box version (numbers separated by dots, such as 1.2.3 or 20260101.120000)"
                ))
            }
            None => default_version(built),
        };
        if let Some(url) = &config.base_url {
            let scheme_ok = url.split_once("://").is_some_and(|(s, rest)| {
                !rest.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            });
            if !scheme_ok {
                return Err(crate::bad_input!(
                    "{shown}: {at}.base_url: `{url}` is not a URL (such as https://boxes.example.net/debian or file:///srv/boxes)"
                ));
            }
        }
        if config.keep == 0 {
            return Err(crate::bad_input!("{shown}: {at}.keep: at least 1 (the version this export makes)"));
        }
        Ok(Vagrant {
            config: config.clone(),
            providers,
            keys,
            custom_key: config.ssh_key.is_some(),
            key_file,
            name,
            version,
            base_url: config.base_url.as_ref().map(|u| u.trim_end_matches('/').to_string()),
            keep: config.keep as usize,
            built,
            pipeline_dir: pipeline.dir.clone(),
            env: pipeline.stage_env(&BTreeMap::new(), &format!("{at}.env"))?,
        })
    }

    fn box_file(&self, provider: Provider) -> String {
        format!("{}-{}.box", provider.name(), self.version)
    }
}

/// An inline key rather than a path: what OpenSSH public keys start with.
fn is_inline_key(spec: &str) -> bool {
    ["ssh-", "ecdsa-", "sk-"].iter().any(|p| spec.trim_start().starts_with(p))
}

/// The one OpenSSH public key in `text`, as an authorized_keys line.
fn public_key_line(text: &str) -> std::result::Result<String, String> {
    if text.contains("PRIVATE KEY") {
        return Err(
            "this is a private key; give its public half (the .pub file; `ssh-keygen -y -f KEY` prints it)".into()
        );
    }
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let [line] = lines[..] else {
        return Err(format!("give exactly one public key (found {} lines)", lines.len()));
    };
    ssh_key::PublicKey::from_openssh(line).map_err(|e| {
        let shown: String = line.chars().take(40).collect();
        format!("`{shown}` is not an OpenSSH public key ({e})")
    })?;
    Ok(line.to_string())
}

/// Vagrant's box names: `name` or `org/name`.
fn valid_box_name(name: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && p.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    match name.split_once('/') {
        Some((org, box_name)) => part(org) && part(box_name),
        None => part(name),
    }
}

/// Numbers separated by dots: what Vagrant compares versions as (and Vagrant Cloud takes).
fn valid_version(v: &str) -> bool {
    v.len() <= 64 && v.split('.').all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

fn version_numbers(v: &str) -> Vec<u64> {
    v.split('.').map(|n| n.parse().unwrap_or(0)).collect()
}

/// SOURCE_DATE_EPOCH when set (reproducible builds' convention), else now.
fn build_time() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(text) => text.trim().parse().map_err(|_| anyhow!("SOURCE_DATE_EPOCH: `{text}` is not a number of seconds")),
        Err(_) => Ok(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs()),
    }
}

/// `YYYYMMDD.HHMMSS` (UTC): sorts by build time as Vagrant compares versions.
fn default_version(secs: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let text = humantime::format_rfc3339_seconds(time).to_string(); // 2026-11-30T17:42:48Z
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    format!("{}.{}", &digits[..8], &digits[8..14])
}

/// `file://` and the path, percent-encoded.
fn file_url(path: &Path) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
    const PATH: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'<').add(b'>').add(b'?').add(b'`');
    format!("file://{}", utf8_percent_encode(&path.to_string_lossy(), PATH))
}

impl Target for Vagrant {
    fn keys(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }

    fn inputs(&self) -> Vec<PathBuf> {
        self.key_file.iter().cloned().collect()
    }

    fn export(&self, job: &mut Job) -> Result<()> {
        let vbox = self.providers.contains(&Provider::Virtualbox);
        // The network is for the guest's package manager: sudo where it is missing, the
        // guest additions where the distribution has them.
        let (g, os) = job.open_overlay(true)?;
        if vbox && !matches!(os.arch.as_str(), "x86_64" | "i386" | "i686") {
            bail!("VirtualBox runs x86 guests and this one is {}: leave virtualbox out of providers", os.arch);
        }
        let log = job.ctx.log.clone();
        job.ctx.bar.set_message("making the vagrant account");
        let runner = StepRunner::new(&g, &os, &self.pipeline_dir, &self.env, PACKAGE_TIMEOUT, &log);
        account::make_account(&g, &self.keys, &runner, &log)?;
        log.line(if self.custom_key {
            "authorised for vagrant: the key of ssh_key".to_string()
        } else {
            "authorised for vagrant: Vagrant's insecure RSA and ed25519 keys (Vagrant swaps them for a key of its own on the first `vagrant up`)".to_string()
        });
        let guest_additions = if vbox {
            job.ctx.bar.set_message("VirtualBox guest additions");
            account::install_guest_additions(&os.distro, &runner, &log)?
        } else {
            false
        };
        if vbox && !guest_additions {
            job.ctx.ui.line(format!(
                "note: {} has no VirtualBox guest additions; the virtualbox box has none (no shared folders through vboxsf)",
                os.summary()
            ));
        }
        let has_rsync = g.exists("/usr/bin/rsync")?;
        g.umount_all()?;
        g.shutdown()?;
        drop(g);

        let overlay = job.overlay_path();
        let virtual_size = qemu_img::info(&overlay)?.virtual_size;
        let base_url = self.base_url.clone().unwrap_or_else(|| file_url(job.dest));
        let info = serde_json::json!({
            "pipeline": job.pipeline_name,
            "layer": job.layer_key,
            "version": self.version,
            "built": humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.built)).to_string(),
            "made_by": "virt-pipeline",
        });
        let seed = format!("{}\n{}\n{}", self.name, job.layer_key, self.version);
        let plan = BoxPlan {
            overlay: &overlay,
            scratch: job.scratch,
            out: job.out,
            virtual_size,
            info: serde_json::to_vec_pretty(&info)?,
            seed: &seed,
            os_type: vbox_os_type(&os.distro),
            vm_name: format!("{}-{}", self.name.replace('/', "-"), self.version),
            synced_folder: if guest_additions {
                None
            } else if has_rsync {
                Some("config.vm.synced_folder \".\", \"/vagrant\", type: \"rsync\"")
            } else {
                Some("config.vm.synced_folder \".\", \"/vagrant\", disabled: true")
            },
            mtime: self.built,
        };
        job.ctx.bar.set_message(format!(
            "packing {}",
            self.providers.iter().map(|p| p.name()).collect::<Vec<_>>().join(" and ")
        ));
        // One thread per provider: each converts the overlay and compresses its own box.
        let bar = job.ctx.bar.clone();
        let built: Vec<Result<Packed>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .providers
                .iter()
                .map(|&p| {
                    let (plan, bar, log, file) = (&plan, bar.clone(), log.clone(), self.box_file(p));
                    s.spawn(move || plan.build(p, &file, &bar, &log))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("a box-packing thread panicked"))))
                .collect()
        });
        let mut providers = Vec::new();
        for (p, packed) in self.providers.iter().zip(built) {
            let packed = packed.with_context(|| format!("cannot make the {} box", p.name()))?;
            log.line(format!("{}: {} bytes, sha256 {}", packed.file, packed.size, packed.sha256));
            providers.push(CatalogueProvider {
                name: p.name().to_string(),
                url: format!("{base_url}/{}", packed.file),
                checksum_type: "sha256".into(),
                checksum: packed.sha256,
            });
        }
        let mut versions = vec![CatalogueVersion { version: self.version.clone(), providers }];
        versions.extend(carry_earlier(job.dest, job.out, &self.name, &self.version, self.keep - 1, &base_url, &log)?);
        let catalogue = Catalogue {
            name: self.name.clone(),
            description: format!("Built by virt-pipeline from pipeline {}", job.pipeline_name),
            versions,
        };
        let path = job.out.join(CATALOGUE);
        std::fs::write(&path, serde_json::to_vec_pretty(&catalogue)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        log.line(format!(
            "{CATALOGUE}: {} version(s) of {}: {}",
            catalogue.versions.len(),
            self.name,
            catalogue.versions.iter().map(|v| v.version.as_str()).collect::<Vec<_>>().join(", ")
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_by_build_time() {
        assert_eq!(default_version(1_700_000_000), "20231114.221320");
        assert_eq!(default_version(1_700_000_000 - 22 * 3600), "20231114.001320");
        assert!(version_numbers("20231114.221320") > version_numbers("20231114.001320"));
        assert!(version_numbers("10.0") > version_numbers("9.1"));
        for good in ["1", "1.2.3", "20231114.001320"] {
            assert!(valid_version(good), "{good}");
        }
        for bad in ["", "1.", "v1", "1.2-rc1", "1..2"] {
            assert!(!valid_version(bad), "{bad}");
        }
    }

    #[test]
    fn box_names_are_vagrants() {
        for good in ["debian-bookworm", "acme/debian-12", "x.y_z"] {
            assert!(valid_box_name(good), "{good}");
        }
        for bad in ["", "a/b/c", "/x", "x/", "a b", "-x", "ä"] {
            assert!(!valid_box_name(bad), "{bad}");
        }
    }

    #[test]
    fn ssh_key_must_be_one_public_key() {
        assert!(public_key_line(account::INSECURE_RSA_KEY).is_ok(), "RSA parses");
        assert!(public_key_line(&format!("# mine\n{}\n", account::INSECURE_ED25519_KEY)).is_ok());
        let private =
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
        assert!(public_key_line(private).unwrap_err().contains("private key"));
        assert!(public_key_line("ssh-ed25519 not-base64").unwrap_err().contains("not an OpenSSH public key"));
        assert!(public_key_line("").is_err());
        let two = format!("{}\n{}\n", account::INSECURE_RSA_KEY, account::INSECURE_ED25519_KEY);
        assert!(public_key_line(&two).unwrap_err().contains("exactly one"));
    }

    #[test]
    fn file_urls_are_percent_encoded() {
        assert_eq!(file_url(Path::new("/srv/my boxes/x")), "file:///srv/my%20boxes/x");
    }
}
