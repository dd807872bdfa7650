//! `method = "debootstrap"`: a Debian/Ubuntu system built on the host with debootstrap, then
//! laid onto a new disk through libguestfs (partition, ext4, fstab, network, GRUB for BIOS
//! boot, root password or key) without booting the guest.

use crate::bad_input;
use crate::engine::stage::{LayerKind, Stage, StageContext, StageResult};
use crate::guest::customize;
use crate::guest::{Drive, Guest};
use crate::image::qemu_img;
use crate::pipeline::DebootstrapConfig;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Packages the image needs to boot and be reachable, added to `include`.
const REQUIRED: &[&str] = &["linux-image-amd64", "grub-pc", "systemd-sysv", "udev"];

const GRUB_DEFAULTS: &str = "GRUB_CMDLINE_LINUX_DEFAULT=\"console=tty0 console=ttyS0,115200\"
GRUB_TERMINAL=\"console serial\"
GRUB_TIMEOUT=1
";

const DHCP_NETWORK: &str = "[Match]
Name=en* eth*

[Network]
DHCP=yes
";

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
        let key_file = match &config.ssh_key {
            Some(k) if !k.starts_with("ssh-") && !k.starts_with("ecdsa-") => {
                let p = base_dir.join(k);
                if !p.exists() {
                    return Err(bad_input!("{where_}.ssh_key: {} does not exist", p.display()));
                }
                Some(p)
            }
            _ => None,
        };
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

    fn inputs(&self) -> Vec<PathBuf> {
        self.key_file.iter().cloned().collect()
    }

    fn run(&self, ctx: &mut StageContext) -> Result<StageResult> {
        if effective_uid() != 0 {
            bail!("debootstrap needs root (it creates device nodes and owns files as other users); run as root");
        }
        let scratch = crate::engine::cache::scratch_dir(&ctx.settings.work_dir, "debootstrap")?;
        let tree = scratch.path().join("tree");
        let tar = scratch.path().join("tree.tar");
        let c = &self.config;
        ctx.bar.set_message(format!("debootstrap {} from {}", c.suite, c.mirror));
        ctx.log.run_checked(
            Command::new("debootstrap")
                .envs(&c.env)
                .arg(format!("--variant={}", c.variant))
                .arg(format!("--include={}", self.packages()))
                .arg(&c.suite)
                .arg(&tree)
                .arg(&c.mirror),
            &ctx.bar,
        )?;
        ctx.bar.set_message("packing the tree");
        ctx.log.run_checked(
            Command::new("tar")
                .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-C"])
                .arg(&tree)
                .args(["-cf"])
                .arg(&tar)
                .arg("."),
            &ctx.bar,
        )?;
        std::fs::remove_dir_all(&tree).context("cannot remove the debootstrap tree")?;

        qemu_img::create_blank(&ctx.output, &c.disk_size)?;
        let g = Guest::new(ctx.settings.accel, Some(ctx.log.clone()), ctx.settings.verbose)?;
        g.add_drive(Drive { path: &ctx.output, format: "qcow2", readonly: false, discard: true })?;
        ctx.bar.set_message("launching the appliance");
        g.launch()?;
        let disk = g.list_devices()?.into_iter().next().context("the appliance sees no disk")?;
        g.part_disk(&disk, "mbr")?;
        g.part_set_bootable(&disk, 1, true)?;
        let root = g.list_partitions()?.into_iter().next().context("partitioning made no partition")?;
        g.mkfs("ext4", &root)?;
        g.mount(&root, "/")?;
        ctx.bar.set_message("copying the tree onto the disk");
        g.tar_in(&tar, "/")?;
        drop(scratch);

        ctx.bar.set_message("configuring");
        let uuid = g.vfs_uuid(&root)?;
        g.write("/etc/fstab", format!("UUID={uuid} / ext4 errors=remount-ro 0 1\n").as_bytes())?;
        customize::set_hostname(&g, &c.hostname, true)?;
        g.mkdir_p("/etc/systemd/network")?;
        g.write("/etc/systemd/network/80-dhcp.network", DHCP_NETWORK.as_bytes())?;
        g.sh("systemctl enable systemd-networkd.service >/dev/null 2>&1")?;
        if let Some(spec) = &c.root_password {
            customize::set_root_password(&g, spec, &self.base_dir, &ctx.log)?;
        }
        if let Some(key) = &c.ssh_key {
            let text = match &self.key_file {
                Some(f) => std::fs::read_to_string(f)?,
                None => key.clone(),
            };
            customize::inject_ssh_key(&g, "root", &text)?;
        }
        ctx.bar.set_message("installing GRUB");
        g.mkdir_p("/etc/default/grub.d")?;
        g.write("/etc/default/grub.d/50-virt-pipeline.cfg", GRUB_DEFAULTS.as_bytes())?;
        for cmd in [format!("grub-install --target=i386-pc {disk} 2>&1"), "update-grub 2>&1".to_string()] {
            ctx.log.line(format!("# {cmd}"));
            for line in g.sh(&cmd)?.lines() {
                ctx.log.line(line);
            }
        }
        g.umount_all()?;
        g.shutdown()?;
        Ok(StageResult::default())
    }
}

fn effective_uid() -> u32 {
    // The owner of /proc/self is the effective user: no libc call needed.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}
