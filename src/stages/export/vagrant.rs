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

use super::{Job, Target, MANIFEST};
use crate::guest::customize::StepRunner;
use crate::guest::vagrant as account;
use crate::image::qemu_img;
use crate::pipeline::{Pipeline, VagrantExportConfig};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
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

pub struct Vagrant {
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
    pub fn new(config: &VagrantExportConfig, pipeline: &Pipeline, at: &str) -> Result<Vagrant> {
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

#[derive(Debug, Serialize, Deserialize)]
struct Catalogue {
    name: String,
    #[serde(default)]
    description: String,
    versions: Vec<CatalogueVersion>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CatalogueVersion {
    version: String,
    providers: Vec<CatalogueProvider>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CatalogueProvider {
    name: String,
    url: String,
    checksum_type: String,
    checksum: String,
}

/// The newest `count` earlier versions of the same box that the previous export at `dest`
/// listed and whose boxes are still there as it wrote them (the size its manifest recorded):
/// linked into `out` (the same filesystem) and listed again with `base_url`. Anything else
/// in the earlier catalogue is dropped, with a line in the log.
fn carry_earlier(
    dest: &Path,
    out: &Path,
    name: &str,
    version: &str,
    count: usize,
    base_url: &str,
    log: &crate::base::log::StageLog,
) -> Result<Vec<CatalogueVersion>> {
    let Ok(text) = std::fs::read(dest.join(CATALOGUE)) else {
        return Ok(Vec::new());
    };
    let Ok(earlier) = serde_json::from_slice::<Catalogue>(&text) else {
        log.line(format!("{}: not a catalogue; earlier versions are not carried over", dest.join(CATALOGUE).display()));
        return Ok(Vec::new());
    };
    if earlier.name != name {
        log.line(format!(
            "the earlier catalogue is of box {}, not {name}: its versions are not carried over",
            earlier.name
        ));
        return Ok(Vec::new());
    }
    let sizes: BTreeMap<String, u64> = std::fs::read(dest.join(MANIFEST))
        .ok()
        .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
        .and_then(|m| serde_json::from_value::<Vec<(String, u64)>>(m["files"].clone()).ok())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut versions: Vec<CatalogueVersion> = earlier.versions.into_iter().filter(|v| v.version != version).collect();
    versions.sort_by_key(|v| std::cmp::Reverse(version_numbers(&v.version)));
    let mut kept = Vec::new();
    for mut v in versions {
        let files: Vec<String> =
            v.providers.iter().map(|p| p.url.rsplit('/').next().unwrap_or_default().to_string()).collect();
        let intact = !files.is_empty()
            && files.iter().all(|f| {
                !f.is_empty()
                    && !f.starts_with('.')
                    && sizes.get(f).is_some_and(|size| {
                        std::fs::symlink_metadata(dest.join(f)).is_ok_and(|m| m.is_file() && m.len() == *size)
                    })
            });
        if kept.len() == count || !intact {
            let why = if intact { "beyond keep" } else { "its boxes are no longer in dest as exported" };
            log.line(format!("earlier version {}: dropped ({why})", v.version));
            continue;
        }
        for (p, f) in v.providers.iter_mut().zip(&files) {
            std::fs::hard_link(dest.join(f), out.join(f))
                .or_else(|_| std::fs::copy(dest.join(f), out.join(f)).map(|_| ()))
                .with_context(|| format!("cannot carry {} over from the earlier export", dest.join(f).display()))?;
            p.url = format!("{base_url}/{f}");
        }
        log.line(format!("earlier version {}: kept", v.version));
        kept.push(v);
    }
    Ok(kept)
}

/// What every provider's box is made from.
struct BoxPlan<'a> {
    overlay: &'a Path,
    scratch: &'a Path,
    out: &'a Path,
    virtual_size: u64,
    info: Vec<u8>,
    /// UUIDs and the MAC address derive from it: the same box gets the same ones.
    seed: &'a str,
    os_type: (u32, &'static str),
    vm_name: String,
    /// The Vagrantfile's /vagrant line when the guest has no VirtualBox guest additions.
    synced_folder: Option<&'static str>,
    mtime: u64,
}

struct Packed {
    file: String,
    sha256: String,
    size: u64,
}

enum Member {
    Bytes(&'static str, Vec<u8>),
    File(&'static str, PathBuf),
}

impl BoxPlan<'_> {
    fn build(
        &self,
        provider: Provider,
        file: &str,
        bar: &indicatif::ProgressBar,
        log: &crate::base::log::StageLog,
    ) -> Result<Packed> {
        let dir = self.scratch.join(provider.name());
        std::fs::create_dir_all(&dir)?;
        let (members, level) = match provider {
            Provider::Libvirt => {
                let img = dir.join("box.img");
                log.line(format!("# qemu-img convert -f qcow2 -O qcow2 {} {}", self.overlay.display(), img.display()));
                qemu_img::convert_from(self.overlay, "qcow2", &img, "qcow2")?;
                let gib = self.virtual_size.div_ceil(1 << 30);
                let metadata = serde_json::json!({ "provider": "libvirt", "format": "qcow2", "virtual_size": gib });
                let members = vec![
                    Member::Bytes("metadata.json", serde_json::to_vec_pretty(&metadata)?),
                    Member::Bytes("Vagrantfile", self.libvirt_vagrantfile().into_bytes()),
                    Member::Bytes("info.json", self.info.clone()),
                    Member::File("box.img", img),
                ];
                (members, flate2::Compression::default())
            }
            Provider::Virtualbox => {
                let vmdk = dir.join(VMDK);
                log.line(format!(
                    "# qemu-img convert -f qcow2 -O vmdk -o subformat=streamOptimized {} {}",
                    self.overlay.display(),
                    vmdk.display()
                ));
                qemu_img::convert_to_stream_vmdk(self.overlay, &vmdk)?;
                let mac = self.mac();
                let members = vec![
                    Member::Bytes(
                        "metadata.json",
                        serde_json::to_vec_pretty(&serde_json::json!({ "provider": "virtualbox" }))?,
                    ),
                    Member::Bytes("Vagrantfile", self.virtualbox_vagrantfile(&mac).into_bytes()),
                    Member::Bytes("info.json", self.info.clone()),
                    Member::Bytes("box.ovf", self.ovf(&mac).into_bytes()),
                    Member::File(VMDK, vmdk),
                ];
                // The VMDK is deflate-compressed already: gzip's fastest level loses nothing.
                (members, flate2::Compression::fast())
            }
        };
        let path = self.out.join(file);
        write_box(&path, &members, level, self.mtime, provider.name(), bar)?;
        let size = std::fs::metadata(&path)?.len();
        let sha256 = crate::base::digest::file_hex::<Sha256>(&path)?;
        Ok(Packed { file: file.to_string(), sha256, size })
    }

    fn libvirt_vagrantfile(&self) -> String {
        format!(
            "{}Vagrant.configure(\"2\") do |config|\n  config.vm.provider :libvirt do |libvirt|\n    libvirt.driver = \"kvm\"\n  end\nend\n",
            self.vagrantfile_header()
        )
    }

    fn virtualbox_vagrantfile(&self, mac: &str) -> String {
        let synced = match self.synced_folder {
            Some(line) => {
                format!("  # No VirtualBox guest additions in this box, so no vboxsf shared folder.\n  {line}\n")
            }
            None => String::new(),
        };
        format!(
            "{}Vagrant.configure(\"2\") do |config|\n  # The MAC address of box.ovf's NAT adapter.\n  config.vm.base_mac = \"{mac}\"\n{synced}end\n",
            self.vagrantfile_header()
        )
    }

    fn vagrantfile_header(&self) -> String {
        format!(
            "# The box's own Vagrantfile (virt-pipeline, {}); a project's Vagrantfile overrides it.\n",
            self.vm_name
        )
    }

    /// VirtualBox's own prefix 08:00:27, then three bytes of the seed's digest.
    fn mac(&self) -> String {
        let d = Sha256::digest(format!("{}\nmac", self.seed));
        format!("080027{:02X}{:02X}{:02X}", d[0], d[1], d[2])
    }

    fn uuid(&self, what: &str) -> String {
        let d = Sha256::digest(format!("{}\n{what}", self.seed));
        let mut b = [0u8; 16];
        b.copy_from_slice(&d[..16]);
        // A version 4 (random) UUID in form: the digest stands in for the randomness.
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h = hex::encode(b);
        format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
    }

    /// An OVF 1.0 envelope as VirtualBox exports one, with its machine section.
    fn ovf(&self, mac: &str) -> String {
        let disk = self.uuid("disk");
        let machine = self.uuid("machine");
        let (os_id, os_type) = self.os_type;
        let name = &self.vm_name;
        let capacity = self.virtual_size;
        let (mem, cpus) = (VBOX_MEMORY_MB, VBOX_CPUS);
        format!(
            r#"<?xml version="1.0"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vbox="http://www.virtualbox.org/ovf/machine">
  <References>
    <File ovf:id="file1" ovf:href="{VMDK}"/>
  </References>
  <DiskSection>
    <Info>List of the virtual disks used in the package</Info>
    <Disk ovf:capacity="{capacity}" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" vbox:uuid="{disk}"/>
  </DiskSection>
  <NetworkSection>
    <Info>Logical networks used in the package</Info>
    <Network ovf:name="NAT">
      <Description>Logical network used by this appliance.</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A virtual machine</Info>
    <OperatingSystemSection ovf:id="{os_id}">
      <Info>The kind of installed guest operating system</Info>
      <Description>{os_type}</Description>
      <vbox:OSType ovf:required="false">{os_type}</vbox:OSType>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements for a virtual machine</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:Caption>{cpus} virtual CPU</rasd:Caption>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>{cpus} virtual CPU</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>
        <rasd:Caption>{mem} MB of memory</rasd:Caption>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>{mem} MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{mem}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Caption>sataController0</rasd:Caption>
        <rasd:Description>SATA Controller</rasd:Description>
        <rasd:ElementName>sataController0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>AHCI</rasd:ResourceSubType>
        <rasd:ResourceType>20</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:Caption>disk1</rasd:Caption>
        <rasd:Description>Disk Image</rasd:Description>
        <rasd:ElementName>disk1</rasd:ElementName>
        <rasd:HostResource>/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Caption>Ethernet adapter on 'NAT'</rasd:Caption>
        <rasd:Connection>NAT</rasd:Connection>
        <rasd:ElementName>Ethernet adapter on 'NAT'</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
    <vbox:Machine ovf:required="false" version="1.16-linux" uuid="{{{machine}}}" name="{name}" OSType="{os_type}" snapshotFolder="Snapshots">
      <ovf:Info>Complete VirtualBox machine configuration in VirtualBox format</ovf:Info>
      <Hardware>
        <CPU count="{cpus}">
          <PAE enabled="true"/>
          <LongMode enabled="true"/>
          <HardwareVirtExLargePages enabled="true"/>
        </CPU>
        <Memory RAMSize="{mem}"/>
        <Boot>
          <Order position="1" device="HardDisk"/>
          <Order position="2" device="None"/>
          <Order position="3" device="None"/>
          <Order position="4" device="None"/>
        </Boot>
        <BIOS>
          <IOAPIC enabled="true"/>
        </BIOS>
        <Network>
          <Adapter slot="0" enabled="true" MACAddress="{mac}" type="82540EM">
            <NAT/>
          </Adapter>
        </Network>
      </Hardware>
      <StorageControllers>
        <StorageController name="SATA Controller" type="AHCI" PortCount="1" useHostIOCache="false" Bootable="true">
          <AttachedDevice type="HardDisk" hotpluggable="false" port="0" device="0">
            <Image uuid="{{{disk}}}"/>
          </AttachedDevice>
        </StorageController>
      </StorageControllers>
    </vbox:Machine>
  </VirtualSystem>
</Envelope>
"#
        )
    }
}

/// The VMDK's name inside the virtualbox box (VirtualBox's own export names it so).
const VMDK: &str = "box-disk001.vmdk";

/// VirtualBox's guest OS type and the OVF (CIM) operating system id for it.
fn vbox_os_type(distro: &str) -> (u32, &'static str) {
    match distro {
        "debian" => (96, "Debian_64"),
        "ubuntu" => (94, "Ubuntu_64"),
        "rhel" | "centos" | "rocky" | "almalinux" | "oraclelinux" | "scientificlinux" => (80, "RedHat_64"),
        "fedora" => (101, "Fedora_64"),
        "opensuse" | "sles" => (101, "OpenSUSE_64"),
        "archlinux" => (101, "ArchLinux_64"),
        _ => (101, "Linux26_64"),
    }
}

/// Reads a member's file for the tar, showing progress; a signal ends the read.
struct Progress<'a, R> {
    inner: R,
    done: u64,
    shown: u64,
    total: u64,
    label: &'a str,
    bar: &'a indicatif::ProgressBar,
}

impl<R: Read> Read for Progress<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if crate::base::interrupt::interrupted() {
            return Err(std::io::Error::other("interrupted"));
        }
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if self.done - self.shown >= 64 << 20 {
            self.shown = self.done;
            self.bar.set_message(format!(
                "packing the {} box: {}/{} MiB",
                self.label,
                self.done >> 20,
                self.total >> 20
            ));
        }
        Ok(n)
    }
}

/// A gzip tar of `members` at `path`, synced; entries owned by root, mode 0644, `mtime`.
fn write_box(
    path: &Path,
    members: &[Member],
    level: flate2::Compression,
    mtime: u64,
    label: &str,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let gz = flate2::write::GzEncoder::new(std::io::BufWriter::with_capacity(1 << 20, file), level);
    let mut tar = tar::Builder::new(gz);
    let header = |size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        h
    };
    for member in members {
        match member {
            Member::Bytes(name, bytes) => tar.append_data(&mut header(bytes.len() as u64), name, bytes.as_slice())?,
            Member::File(name, file) => {
                let f = std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
                let total = f.metadata()?.len();
                let reader = Progress { inner: f, done: 0, shown: 0, total, label, bar };
                tar.append_data(&mut header(total), name, reader)
                    .with_context(|| format!("cannot pack {name} into {}", path.display()))?;
            }
        }
    }
    let gz = tar.into_inner().with_context(|| format!("cannot write {}", path.display()))?;
    let mut writer = gz.finish().with_context(|| format!("cannot write {}", path.display()))?;
    writer.flush()?;
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    file.sync_all().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(seed: &str) -> BoxPlan<'static> {
        BoxPlan {
            overlay: Path::new("/nonexistent"),
            scratch: Path::new("/nonexistent"),
            out: Path::new("/nonexistent"),
            virtual_size: 4 << 30,
            info: Vec::new(),
            seed: Box::leak(seed.to_string().into_boxed_str()),
            os_type: vbox_os_type("debian"),
            vm_name: "debian-bookworm-1".into(),
            synced_folder: None,
            mtime: 0,
        }
    }

    #[test]
    fn the_ovf_names_one_disk_uuid_and_the_vagrantfile_its_mac() {
        let p = plan("debian-bookworm\nkey\n1");
        let mac = p.mac();
        assert!(mac.starts_with("080027") && mac.len() == 12, "{mac}");
        let ovf = p.ovf(&mac);
        let disk = p.uuid("disk");
        assert!(ovf.contains(&format!("vbox:uuid=\"{disk}\"")), "{ovf}");
        assert!(ovf.contains(&format!("<Image uuid=\"{{{disk}}}\"/>")), "{ovf}");
        assert!(ovf.contains(&format!("MACAddress=\"{mac}\"")));
        assert!(ovf.contains("ovf:capacity=\"4294967296\""));
        assert!(p.virtualbox_vagrantfile(&mac).contains(&format!("config.vm.base_mac = \"{mac}\"")));
        assert_ne!(p.uuid("disk"), p.uuid("machine"));
        assert_eq!(p.uuid("disk"), plan("debian-bookworm\nkey\n1").uuid("disk"), "the same box, the same UUIDs");
        assert_ne!(p.uuid("disk"), plan("debian-bookworm\nkey\n2").uuid("disk"));
        assert_eq!(&p.uuid("disk")[14..15], "4");
    }

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

    /// An earlier export's versions: kept while their boxes are in dest as exported, newest
    /// first, at most `count`, linked into the new directory with the new base URL.
    #[test]
    fn earlier_versions_are_carried_while_their_boxes_are_intact() {
        let d = tempfile::tempdir().unwrap();
        let (dest, out) = (d.path().join("dest"), d.path().join("out"));
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        let entry = |v: &str| CatalogueVersion {
            version: v.into(),
            providers: vec![CatalogueProvider {
                name: "libvirt".into(),
                url: format!("file:///old/libvirt-{v}.box"),
                checksum_type: "sha256".into(),
                checksum: "c".repeat(64),
            }],
        };
        let earlier = Catalogue {
            name: "acme/debian".into(),
            description: String::new(),
            versions: ["1.0", "3.0", "2.0", "4.0", "5.0"].into_iter().map(entry).collect(),
        };
        std::fs::write(dest.join(CATALOGUE), serde_json::to_vec(&earlier).unwrap()).unwrap();
        let mut files = Vec::new();
        for v in ["1.0", "2.0", "3.0", "4.0", "5.0"] {
            let f = format!("libvirt-{v}.box");
            std::fs::write(dest.join(&f), v).unwrap();
            files.push((f, 3u64));
        }
        std::fs::write(dest.join("libvirt-4.0.box"), "changed").unwrap(); // not as exported
        std::fs::write(dest.join(MANIFEST), serde_json::to_vec(&serde_json::json!({ "files": files })).unwrap())
            .unwrap();
        let log = crate::base::log::StageLog::create(&d.path().join("log")).unwrap();

        let kept = carry_earlier(&dest, &out, "acme/debian", "5.0", 2, "https://boxes.example.net/d", &log).unwrap();
        let versions: Vec<&str> = kept.iter().map(|v| v.version.as_str()).collect();
        assert_eq!(versions, ["3.0", "2.0"], "5.0 is this export's, 4.0 changed, 1.0 is beyond keep");
        assert_eq!(kept[0].providers[0].url, "https://boxes.example.net/d/libvirt-3.0.box");
        assert_eq!(std::fs::read_to_string(out.join("libvirt-3.0.box")).unwrap(), "3.0");
        assert!(!out.join("libvirt-1.0.box").exists() && !out.join("libvirt-4.0.box").exists());
        let logged = std::fs::read_to_string(d.path().join("log")).unwrap();
        assert!(
            logged.contains("earlier version 4.0: dropped (its boxes are no longer in dest as exported)"),
            "{logged}"
        );

        let other = carry_earlier(&dest, &d.path().join("out2"), "acme/other", "6.0", 2, "x", &log).unwrap();
        assert!(other.is_empty(), "another box's versions are not carried");
    }

    #[test]
    fn file_urls_are_percent_encoded() {
        assert_eq!(file_url(Path::new("/srv/my boxes/x")), "file:///srv/my%20boxes/x");
    }
}
