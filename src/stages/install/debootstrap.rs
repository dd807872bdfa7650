//! `method = "debootstrap"`: a Debian/Ubuntu system built on the host with debootstrap, then
//! laid onto a new disk through libguestfs (partition, ext4, fstab, network, GRUB for BIOS
//! boot, root password or key) without booting the guest. It is the built-in install script
//! `debootstrap.sh` run through [`tree`](super::tree), the same phases as `method = "script"`.

use super::tree::{self, Account, Phases, TreeInstall};
use crate::bad_input;
use crate::engine::stage::{LayerKind, Stage, StageContext, StageResult};
use crate::image::qemu_img;
use crate::pipeline::{DebootstrapConfig, DiskLayout};
use crate::upstream::Upstream;
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Packages the image needs to boot and be reachable, added to `include`.
const REQUIRED: &[&str] = &["linux-image-amd64", "grub-pc", "systemd-sysv", "udev"];

const SCRIPT: &str = include_str!("debootstrap.sh");

/// debootstrap has no timeout key; a stuck mirror is stopped after this long.
const TIMEOUT: Duration = Duration::from_secs(2 * 3600);

pub struct DebootstrapStage {
    config: DebootstrapConfig,
    base_dir: PathBuf,
    key_file: Option<PathBuf>,
}

impl DebootstrapStage {
    pub fn new(config: DebootstrapConfig, base_dir: &Path, where_: &str) -> Result<DebootstrapStage> {
        if qemu_img::parse_size(&config.disk_size).is_none() {
            return Err(bad_input!("{where_}.disk_size: `{}` is not a size such as 4G", config.disk_size));
        }
        let key_file = tree::ssh_key_file(config.ssh_key.as_ref(), base_dir, where_)?;
        Ok(DebootstrapStage { config, base_dir: base_dir.to_path_buf(), key_file })
    }

    fn packages(&self) -> String {
        let mut pkgs: Vec<&str> = REQUIRED.to_vec();
        for p in &self.config.include {
            if !pkgs.contains(&p.as_str()) {
                pkgs.push(p);
            }
        }
        pkgs.join(",")
    }
}

impl Stage for DebootstrapStage {
    fn kind(&self) -> &'static str {
        "install"
    }

    fn layer_kind(&self) -> LayerKind {
        LayerKind::Base
    }

    fn config(&self) -> serde_json::Value {
        serde_json::json!({ "method": "debootstrap", "config": self.config })
    }

    /// The suite's release file: a mirror that publishes new packages rebuilds the image.
    fn upstream(&self) -> Vec<Upstream> {
        vec![Upstream::AptSuite { mirror: self.config.mirror.clone(), suite: self.config.suite.clone() }]
    }

    fn inputs(&self) -> Vec<PathBuf> {
        self.key_file.iter().cloned().collect()
    }

    fn run(&self, ctx: &mut StageContext) -> Result<StageResult> {
        let c = &self.config;
        ctx.bar.set_message(format!("debootstrap {} from {}", c.suite, c.mirror));
        let mut env: BTreeMap<String, String> = c.env.clone();
        env.insert("ARG_VARIANT".into(), c.variant.clone());
        env.insert("ARG_INCLUDE".into(), self.packages());
        env.insert("ARG_SUITE".into(), c.suite.clone());
        env.insert("ARG_MIRROR".into(), c.mirror.clone());
        let install = TreeInstall {
            name: "debootstrap".into(),
            script: SCRIPT.into(),
            phases: Phases::defined_in(SCRIPT),
            env,
            timeout: TIMEOUT,
            disk_size: c.disk_size.clone(),
            layout: DiskLayout::Mbr,
            account: Account {
                hostname: Some(&c.hostname),
                root_password: c.root_password.as_deref(),
                ssh_key: tree::ssh_key_text(c.ssh_key.as_ref(), self.key_file.as_ref())?,
                base_dir: &self.base_dir,
            },
        };
        install.run(ctx)?;
        Ok(StageResult::default())
    }
}
