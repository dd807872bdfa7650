//! The pipeline file format. Unknown keys are errors everywhere (`deny_unknown_fields`), so a
//! typo never passes silently. Every stage table is one variant of [`StageConfig`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    pub version: u32,
    pub pipeline: PipelineInfo,
    /// Template data; strings anywhere else may refer to these as `{{ Name }}`.
    #[serde(default)]
    pub values: toml::Table,
    /// Environment for every step that takes env; a step's own env overrides it.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of `[env]` variables and `[values]` entries whose values are secret: they are
    /// replaced by `[redacted]` wherever a log or the terminal would show them.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Where the first layer comes from, when the first stage is not an install.
    #[serde(default)]
    pub from: Option<Source>,
    #[serde(default)]
    pub stages: Vec<StageConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineInfo {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// `[values]` entries the operator must set (in the file or with `--set`) before the
    /// pipeline can run: a Puppet server, a mirror. Unset, `run` and `plan` refuse it and
    /// `rebuild` reports it as not configured and skips it.
    #[serde(default)]
    pub required_values: Vec<String>,
}

/// `from = { image = ... }`, `{ repo = ..., name = ... }` or `{ pipeline = ... }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// Fingerprint of the key that must have signed the repository's index (with `repo`).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// `raw` or `qcow2`: the format of `image` (of its content when xz-compressed); read
    /// from the image's first bytes when not given.
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub pipeline: Option<String>,
}

/// One `[[stages]]` entry: exactly one stage table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StageConfig {
    Install(InstallConfig),
    Customize(CustomizeConfig),
    Sysprep(SysprepConfig),
    Firstboot(FirstbootConfig),
    Publish(PublishConfig),
    Provision(ProvisionConfig),
    Export(ExportConfig),
    Check(CheckConfig),
}

impl StageConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            StageConfig::Install(_) => "install",
            StageConfig::Customize(_) => "customize",
            StageConfig::Sysprep(_) => "sysprep",
            StageConfig::Firstboot(_) => "firstboot",
            StageConfig::Publish(_) => "publish",
            StageConfig::Provision(_) => "provision",
            StageConfig::Export(_) => "export",
            StageConfig::Check(_) => "check",
        }
    }
}

/// `[stages.check]`: boot a throwaway copy of the layer and refuse it unless the system
/// comes up with no failed unit (before a publish: never publish an image that does not boot).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// From power-on to the guest's SSH answering.
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout: String,
    /// How long the system may take to finish starting once SSH answers.
    #[serde(default = "default_settle_timeout")]
    pub settle_timeout: String,
    /// Units allowed to fail (e.g. one that needs hardware the VM lacks).
    #[serde(default)]
    pub allow_failed: Vec<String>,
    #[serde(default = "default_memory")]
    pub memory: String,
    #[serde(default = "default_cpus")]
    pub cpus: u32,
}

/// `[stages.install]`: how the first layer is made.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum InstallConfig {
    Netboot(NetbootConfig),
    Iso(IsoConfig),
    Debootstrap(DebootstrapConfig),
    Image(ImageConfig),
    Script(ScriptConfig),
}

/// `method = "netboot"`: an installer booted with an answers file injected into its initrd.
/// The keys after `initrd` are the same for `method = "iso"`; the two are separate types so
/// that a key of one method under the other is an unknown key, not silently ignored.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetbootConfig {
    /// Installer tree (URL or directory) holding `linux` and `initrd.gz`.
    #[serde(default)]
    pub location: Option<String>,
    /// Kernel and initrd directly (paths or URLs), instead of `location`.
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Option<String>,
    /// Debian/Ubuntu answers file, injected as /preseed.cfg.
    #[serde(default)]
    pub preseed: Option<String>,
    /// Fedora/RHEL/Rocky answers file, injected as /ks.cfg.
    #[serde(default)]
    pub kickstart: Option<String>,
    /// More files injected into the initrd root, by host path.
    #[serde(default)]
    pub inject: Vec<String>,
    #[serde(default)]
    pub extra_args: String,
    #[serde(default = "default_disk_size")]
    pub disk_size: String,
    #[serde(default = "default_memory")]
    pub memory: String,
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// The whole install may take at most this long.
    #[serde(default = "default_install_timeout")]
    pub timeout: String,
    /// An installer waiting at a question with no new output for this long is stopped.
    #[serde(default = "default_stall_timeout")]
    pub stall_timeout: String,
}

/// `method = "iso"`: the installer's kernel and initrd taken from an ISO, which is attached.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IsoConfig {
    /// Installer ISO (path or URL).
    pub iso: String,
    /// Kernel and initrd as paths inside the ISO, instead of the usual places.
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Option<String>,
    /// Debian/Ubuntu answers file, injected as /preseed.cfg.
    #[serde(default)]
    pub preseed: Option<String>,
    /// Fedora/RHEL/Rocky answers file, injected as /ks.cfg.
    #[serde(default)]
    pub kickstart: Option<String>,
    /// More files injected into the initrd root, by host path.
    #[serde(default)]
    pub inject: Vec<String>,
    #[serde(default)]
    pub extra_args: String,
    #[serde(default = "default_disk_size")]
    pub disk_size: String,
    #[serde(default = "default_memory")]
    pub memory: String,
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// The whole install may take at most this long.
    #[serde(default = "default_install_timeout")]
    pub timeout: String,
    /// An installer waiting at a question with no new output for this long is stopped.
    #[serde(default = "default_stall_timeout")]
    pub stall_timeout: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DebootstrapConfig {
    pub suite: String,
    #[serde(default = "default_mirror")]
    pub mirror: String,
    #[serde(default = "default_variant")]
    pub variant: String,
    #[serde(default)]
    pub include: Vec<String>,
    /// Environment for debootstrap on the host (e.g. `http_proxy`), over the file's `[env]`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default = "default_disk_size")]
    pub disk_size: String,
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// virt-customize syntax: `password:SECRET`, `file:PATH`, `random`, `disabled`.
    #[serde(default)]
    pub root_password: Option<String>,
    /// A public key (the key text, or a path to a .pub file) authorised for root.
    #[serde(default)]
    pub ssh_key: Option<String>,
}

/// `method = "script"`: a root tree filled on the host by a user's install script (PVC's
/// phases: setup, prepare, install, finish, cleanup), laid onto a new disk by the tool.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptConfig {
    /// The bash file defining the phase functions (`install` at least).
    pub script: String,
    /// The script's own settings, passed to every phase as `ARG_<KEY>` (upper case).
    #[serde(default)]
    pub args: toml::Table,
    /// Environment for the phases (e.g. `http_proxy`), over the file's `[env]`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default = "default_disk_size")]
    pub disk_size: String,
    /// The default prepare phase's partitioning: `mbr` (BIOS boot) or `gpt-uefi`.
    #[serde(default)]
    pub layout: DiskLayout,
    /// http(s) URLs of small files whose content the install depends on, such as a mirror's
    /// `dists/SUITE/InRelease`: a change of one rebuilds the image.
    #[serde(default)]
    pub upstream: Vec<String>,
    /// Each phase may take at most this long.
    #[serde(default = "default_command_timeout")]
    pub timeout: String,
    #[serde(default)]
    pub hostname: Option<String>,
    /// virt-customize syntax: `password:SECRET`, `file:PATH`, `random`, `disabled`.
    #[serde(default)]
    pub root_password: Option<String>,
    /// A public key (the key text, or a path to a .pub file) authorised for root.
    #[serde(default)]
    pub ssh_key: Option<String>,
}

/// How the tool partitions a new disk for a root tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", try_from = "String")]
pub enum DiskLayout {
    /// An MBR table with one bootable ext4 partition: BIOS boot with GRUB's i386-pc target.
    #[default]
    Mbr,
    /// GPT with a 512 MiB EFI system partition (vfat, /boot/efi) and an ext4 root.
    GptUefi,
}

/// Parsed by hand so that the message names the key: serde's own loses the key path inside
/// the internally tagged install table.
impl TryFrom<String> for DiskLayout {
    type Error = String;
    fn try_from(text: String) -> Result<DiskLayout, String> {
        match text.as_str() {
            "mbr" => Ok(DiskLayout::Mbr),
            "gpt-uefi" => Ok(DiskLayout::GptUefi),
            _ => Err(format!("layout `{text}` is not one of mbr, gpt-uefi")),
        }
    }
}

impl DiskLayout {
    pub fn name(self) -> &'static str {
        match self {
            DiskLayout::Mbr => "mbr",
            DiskLayout::GptUefi => "gpt-uefi",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// A local file or URL: qcow2, raw, or either compressed with xz.
    #[serde(default)]
    pub image: Option<String>,
    /// A virt-builder repository (directory or URL of index.asc) and the entry's name.
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// Fingerprint of the key that must have signed the repository's index (with `repo`).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// `raw` or `qcow2`: the format of `image` (of its content when xz-compressed); read
    /// from the image's first bytes when not given.
    #[serde(default)]
    pub format: Option<String>,
    /// Grow the disk to this size.
    #[serde(default)]
    pub disk_size: Option<String>,
    /// The partition to grow into the added space (`/dev/sda1`), with its filesystem; a
    /// repository entry's own `expand=` is used when this is not given.
    #[serde(default)]
    pub expand: Option<String>,
}

/// `[stages.customize]`: offline edits, applied in order, in one appliance launch.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustomizeConfig {
    pub steps: Vec<CustomizeStep>,
    /// Turn the appliance network on (needed by install/uninstall and network run-commands).
    #[serde(default)]
    pub network: Option<bool>,
    /// Environment for run-command, run, install and uninstall, over the file's `[env]`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The longest one guest command (run-command, run, install, uninstall) may take.
    #[serde(default = "default_command_timeout")]
    pub timeout: String,
}

/// One virt-customize action; names follow virt-customize's options.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CustomizeStep {
    Hostname(String),
    RootPassword(String),
    Timezone(String),
    Mkdir(String),
    Write {
        path: String,
        content: String,
    },
    AppendLine {
        path: String,
        line: String,
    },
    CopyIn {
        source: String,
        dest: String,
    },
    Chmod {
        mode: String,
        path: String,
    },
    Delete(String),
    Link {
        target: String,
        link: String,
    },
    RunCommand(String),
    Run(String),
    Install(Vec<String>),
    Uninstall(Vec<String>),
    /// `update = true`: upgrade every package with the guest's package manager
    /// (virt-customize's --update).
    Update(bool),
    SshInject {
        user: String,
        key: String,
    },
}

/// `[stages.sysprep]`: virt-sysprep's operations, then zero-fill and fstrim.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SysprepConfig {
    /// Run exactly these operations (like `virt-sysprep --enable`).
    #[serde(default)]
    pub enable: Option<Vec<String>>,
    /// Run the default set less these.
    #[serde(default)]
    pub disable: Option<Vec<String>>,
    /// The name the `hostname` operation writes (`localhost.localdomain` when not given).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Steps for the `customize` operation, in the customize stage's vocabulary.
    #[serde(default)]
    pub customize: Vec<CustomizeStep>,
    /// Host scripts the `script` operation runs inside the guest.
    #[serde(default)]
    pub scripts: Vec<String>,
    /// Environment for the scripts and customize commands, over the file's `[env]`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The longest one script or customize command may take in the guest.
    #[serde(default = "default_command_timeout")]
    pub timeout: String,
    #[serde(default)]
    pub zero_free_space: bool,
    #[serde(default)]
    pub fstrim: bool,
}

impl SysprepConfig {
    /// The name the `hostname` operation writes.
    pub fn hostname(&self) -> String {
        self.hostname.clone().unwrap_or_else(default_hostname)
    }
}

/// `[stages.firstboot]`: scripts installed as virt-customize `--firstboot` installs them,
/// run by booting the layer until the guest powers itself off (or left for the image's
/// real first boot with `run = false`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FirstbootConfig {
    /// Host files, installed as scripts in this order.
    #[serde(default)]
    pub scripts: Vec<String>,
    /// Shell commands, each installed as a script, after `scripts`.
    #[serde(default)]
    pub commands: Vec<String>,
    /// A masterless `puppet apply` of host manifests and modules.
    #[serde(default)]
    pub puppet_apply: Option<PuppetApplyConfig>,
    /// A `puppet agent` run against a server (the seed's command).
    #[serde(default)]
    pub puppet: Option<PuppetAgentConfig>,
    /// Boot the layer now and wait until the guest powers itself off.
    #[serde(default = "default_true")]
    pub run: bool,
    /// With `run`: the VM's memory and CPUs, and the longest the boot may take.
    #[serde(default)]
    pub memory: Option<String>,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PuppetAgentConfig {
    pub server: String,
    #[serde(default = "default_puppet_environment")]
    pub environment: String,
    /// The node's certificate name; Puppet's default (the guest's FQDN) when not given.
    #[serde(default)]
    pub certname: Option<String>,
    /// More arguments for `puppet agent`, each passed as one word.
    #[serde(default)]
    pub extra_args: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PuppetApplyConfig {
    /// A host manifest file (or directory of manifests).
    pub manifest: String,
    /// A host directory of modules, used as the module path.
    #[serde(default)]
    pub modules: Option<String>,
    /// More arguments for `puppet apply`, each passed as one word.
    #[serde(default)]
    pub extra_args: Vec<String>,
}

/// `[stages.publish]`: xz into a signed virt-builder repository.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    #[serde(default = "default_repo")]
    pub repo: String,
    /// The entry's identifier (`[name]` in the index).
    pub name: String,
    /// The human-readable `name=` line.
    #[serde(default)]
    pub long_name: Option<String>,
    #[serde(default)]
    pub osinfo: Option<String>,
    #[serde(default = "default_arch")]
    pub arch: String,
    /// `raw` (virt-builder's usual template format) or `qcow2`.
    #[serde(default = "default_format")]
    pub format: String,
    #[serde(default)]
    pub expand: Option<String>,
    #[serde(default)]
    pub notes: Option<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub hidden: bool,
    /// Fingerprint of the signing key; `--sign-key` overrides it.
    #[serde(default)]
    pub sign_key: Option<String>,
    /// xz preset, 0 (fastest) to 9 (smallest, the default).
    #[serde(default = "default_xz_level")]
    pub xz_level: u32,
}

fn default_xz_level() -> u32 {
    9
}

/// `[stages.provision]`: boots the layer and runs Virter provisioning steps over SSH.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionConfig {
    /// A Virter provisioning file (`version = 1`, `[values]`, `[env]`, `[[steps]]`), used
    /// unchanged; relative to the pipeline file.
    #[serde(default)]
    pub file: Option<String>,
    /// Steps written here instead, in Virter's format (`{ shell = { script = ... } }`).
    #[serde(default)]
    pub steps: Option<Vec<toml::Value>>,
    /// Environment for inline steps, over the pipeline's `[env]` (a file has its own).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Values over the provisioning file's `[values]` (and over the pipeline's `[values]`).
    #[serde(default)]
    pub values: toml::Table,
    #[serde(default = "default_memory")]
    pub memory: String,
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// How long the guest may take to answer on SSH.
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout: String,
    /// The whole stage (boot, steps, shutdown) may take at most this long.
    #[serde(default = "default_command_timeout")]
    pub timeout: String,
    /// `podman` or `docker` (or a path): runs container steps on the host.
    #[serde(default = "default_container_engine")]
    pub container_engine: String,
    /// `Always`, `IfNotExist` or `Never` for every container step (Virter's
    /// `--container-pull-policy`).
    #[serde(default)]
    pub pull: Option<String>,
}

fn default_settle_timeout() -> String {
    "5m".into()
}
fn default_boot_timeout() -> String {
    "10m".into()
}
fn default_container_engine() -> String {
    "podman".into()
}

/// `[stages.export]`: the layer as an artifact for another environment. `target` picks the
/// module in stages/export/ that reads every other key (a target's keys live beside its code,
/// and a key of one target under another is an unknown key); `dest` is the stage's.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ExportConfig {
    pub target: String,
    /// The directory the artifacts go to, as written in the file.
    pub dest: String,
    /// The target's own keys.
    #[serde(flatten)]
    pub keys: toml::Table,
}

fn default_disk_size() -> String {
    "4G".into()
}
fn default_memory() -> String {
    "1024M".into()
}
fn default_cpus() -> u32 {
    2
}
fn default_install_timeout() -> String {
    "2h".into()
}
fn default_command_timeout() -> String {
    "1h".into()
}
fn default_stall_timeout() -> String {
    "5m".into()
}
fn default_mirror() -> String {
    "http://deb.debian.org/debian".into()
}
fn default_variant() -> String {
    "minbase".into()
}
fn default_hostname() -> String {
    "localhost.localdomain".into()
}
fn default_true() -> bool {
    true
}
fn default_puppet_environment() -> String {
    "production".into()
}
fn default_repo() -> String {
    "repo-index".into()
}
fn default_arch() -> String {
    "x86_64".into()
}
fn default_format() -> String {
    "raw".into()
}
