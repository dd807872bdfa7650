//! What the debootstrap and script methods share, in PVC's phases: a root tree filled on the
//! host by shell functions (`setup`, `install`) run in a sandbox whose `/` is read-only, laid
//! by the tool onto a new disk (`prepare`: the partitioning of `layout`), finished in the
//! guest (`finish`: fstab, network, GRUB by default), and `cleanup`, which runs whatever
//! happened before it. The debootstrap method is the built-in script `debootstrap.sh`, so the
//! defaults a user's script inherits are exactly what debootstrap does.

use crate::engine::stage::StageContext;
use crate::guest::customize;
use crate::guest::{Drive, Guest};
use crate::image::qemu_img;
use crate::pipeline::DiskLayout;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Runs one phase function of an install script. `unshare` gives it a private mount
/// namespace; there every mount but the kernel's (/proc, /sys, /dev) and the phase's work
/// directory ($TARGET, $SCRATCH) is made read-only, so a script that writes anywhere else on
/// the host fails instead of changing it (PVC's safety point). The namespace, and any mount a
/// phase made in it (mmdebstrap's /proc in the target), ends with the phase.
const PHASE_RUNNER: &str = r#"set -eo pipefail
phase=$1
mount --bind "$VIRT_PIPELINE_WORK" "$VIRT_PIPELINE_WORK"
findmnt -rn -o TARGET | while read -r mnt; do
    mnt=$(printf '%b' "$mnt")
    case $mnt in
        /proc | /proc/* | /sys | /sys/* | /dev | /dev/*) continue ;;
        "$VIRT_PIPELINE_WORK" | "$VIRT_PIPELINE_WORK"/*) continue ;;
    esac
    if ! mount -o remount,bind,ro "$mnt" 2>/dev/null && [ "$mnt" = / ]; then
        echo "virt-pipeline: cannot make / read-only for the $phase phase" >&2
        exit 1
    fi
done
setup() { :; }
cleanup() { find "$TARGET" -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system -- {} +; }
cd "$SCRATCH"
. "$VIRT_PIPELINE_SCRIPT"
"$phase"
"#;

/// Runs a script's own `finish` in the guest (chrooted by the appliance), with bash when
/// the guest has it.
const GUEST_FINISH: &str = "if [ -x /bin/bash ]; then sh=/bin/bash; else sh=/bin/sh; fi; \
     $sh -c 'set -e; . /.virt-pipeline-install.sh; finish'";

const GRUB_DEFAULTS: &str = "GRUB_CMDLINE_LINUX_DEFAULT=\"console=tty0 console=ttyS0,115200\"
GRUB_TERMINAL=\"console serial\"
GRUB_TIMEOUT=1
";

const DHCP_NETWORK: &str = "[Match]
Name=en* eth*

[Network]
DHCP=yes
";

/// The EFI system partition's GPT type.
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const ESP_SECTORS: i64 = 512 * 1024 * 2;

/// The phase functions a script defines that change what the tool does: `install` is
/// required, `prepare` refused, a `finish` of its own runs instead of the default. (`setup`
/// and `cleanup` need no flag: the phase runner defines defaults the script overrides.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Phases {
    pub prepare: bool,
    pub install: bool,
    pub finish: bool,
}

impl Phases {
    /// The functions a bash file defines at the start of a line (`name() {` or
    /// `function name {`), read without running the file: checking a script must not run it.
    pub fn defined_in(text: &str) -> Phases {
        let mut p = Phases::default();
        for line in text.lines() {
            let line = line.trim_start();
            let rest = line.strip_prefix("function ").map(str::trim_start);
            let (name, after) = match rest {
                Some(r) => r.split_at(r.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(r.len())),
                None => {
                    line.split_at(line.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(line.len()))
                }
            };
            let after = after.trim_start();
            let is_definition = if rest.is_some() {
                after.is_empty() || after.starts_with('(') || after.starts_with('{')
            } else {
                after.starts_with('(') && after[1..].trim_start().starts_with(')')
            };
            if !is_definition {
                continue;
            }
            match name {
                "prepare" => p.prepare = true,
                "install" => p.install = true,
                "finish" => p.finish = true,
                _ => {}
            }
        }
        p
    }
}

/// Settings the default finish applies; the hostname, root password and key are applied
/// after any finish, the script's own too.
pub struct Account<'a> {
    pub hostname: Option<&'a str>,
    pub root_password: Option<&'a str>,
    /// The public key text.
    pub ssh_key: Option<String>,
    /// Where `root_password = "file:..."` resolves.
    pub base_dir: &'a Path,
}

/// One install from a root tree.
pub struct TreeInstall<'a> {
    /// What the messages call it: `debootstrap`, `install script install/alpine.sh`.
    pub name: String,
    /// The script's text (the built-in debootstrap.sh or the user's file).
    pub script: String,
    pub phases: Phases,
    /// Environment of every phase: the stage's env and the script's `ARG_*`.
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    pub disk_size: String,
    pub layout: DiskLayout,
    pub account: Account<'a>,
}

/// The devices of a disk laid out by [`prepare`].
struct Disk {
    device: String,
    root: String,
    esp: Option<String>,
}

impl TreeInstall<'_> {
    pub fn run(&self, ctx: &mut StageContext) -> Result<()> {
        if effective_uid() != 0 {
            bail!("{}: the install phases need root (they own files as other users, create device nodes and mount); run as root", self.name);
        }
        let scratch = crate::base::scratch::dir(&ctx.settings.work_dir, "install")?;
        let work = scratch.path();
        let target = work.join("target");
        let tmp = work.join("scratch");
        for dir in [&target, &tmp] {
            std::fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(work.join("phase.sh"), PHASE_RUNNER)?;
        std::fs::write(work.join("install.sh"), &self.script)?;

        let built = self.build(ctx, work, &target);
        let cleaned = self.host_phase(ctx, work, "cleanup");
        match (built, cleaned) {
            (Ok(()), cleaned) => cleaned,
            (Err(e), Ok(())) => Err(e),
            (Err(e), Err(c)) => {
                ctx.log.line(format!("the cleanup phase failed too: {c:#}"));
                Err(e.context("(the cleanup phase failed too; see the log)"))
            }
        }
    }

    /// setup, install, then the disk: everything before cleanup.
    fn build(&self, ctx: &mut StageContext, work: &Path, target: &Path) -> Result<()> {
        self.host_phase(ctx, work, "setup")?;
        self.host_phase(ctx, work, "install")?;
        if std::fs::read_dir(target)?.next().is_none() {
            bail!("{}: the install phase left $TARGET empty (it must fill $TARGET with the root tree)", self.name);
        }
        ctx.bar.set_message("packing the tree");
        let tar = work.join("tree.tar");
        ctx.log.run_checked(
            Command::new("tar")
                .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-C"])
                .arg(target)
                .args(["-cf"])
                .arg(&tar)
                .arg("."),
            &ctx.bar,
        )?;

        qemu_img::create_blank(&ctx.output, &self.disk_size)?;
        let g = Guest::new(ctx.settings.accel, Some(ctx.log.clone()), ctx.settings.verbose)?;
        g.add_drive(Drive { path: &ctx.output, format: "qcow2", readonly: false, discard: true })?;
        ctx.bar.set_message("launching the appliance");
        g.launch()?;
        ctx.log.line(format!("== prepare ({} layout)", self.layout.name()));
        let disk = prepare(&g, self.layout)?;
        ctx.bar.set_message("copying the tree onto the disk");
        g.tar_in(&tar, "/")?;
        std::fs::remove_file(&tar)?;

        if self.phases.finish {
            ctx.log.line("== finish (the script's, in the guest)");
            ctx.bar.set_message("finish");
            g.write("/.virt-pipeline-install.sh", self.script.as_bytes())?;
            let mut env = self.env.clone();
            let root_uuid = g.vfs_uuid(&disk.root)?;
            let (root, device) = kernel_names(&g, &root_uuid).unwrap_or_else(|e| {
                ctx.log.line(format!("{e:#}; DISK and ROOT_DEVICE are libguestfs's names"));
                (disk.root.clone(), disk.device.clone())
            });
            env.insert("DISK".into(), device);
            env.insert("ROOT_DEVICE".into(), root);
            env.insert("ROOT_UUID".into(), root_uuid);
            env.insert("LAYOUT".into(), self.layout.name().into());
            if let Some(esp) = &disk.esp {
                let esp = kernel_names(&g, &g.vfs_uuid(esp)?).map_or_else(|_| esp.clone(), |(part, _)| part);
                env.insert("ESP_DEVICE".into(), esp);
            }
            let finished = customize::run_in_guest(&g, GUEST_FINISH, &env, self.timeout, &ctx.log);
            g.rm_f("/.virt-pipeline-install.sh")?;
            finished.with_context(|| format!("{}: phase `finish` failed in the guest", self.name))?;
        } else {
            ctx.log.line("== finish (default: fstab, network, GRUB)");
            default_finish(&g, &disk, self.layout, ctx)
                .with_context(|| format!("{}: the default finish phase failed", self.name))?;
        }
        ctx.bar.set_message("configuring");
        let a = &self.account;
        if let Some(name) = a.hostname {
            // The 127.0.1.1 alias too, as debootstrap images have always had it.
            customize::set_hostname(&g, name, true)?;
        }
        if let Some(spec) = a.root_password {
            customize::set_root_password(&g, spec, a.base_dir, &ctx.log)?;
        }
        if let Some(key) = &a.ssh_key {
            customize::inject_ssh_key(&g, "root", key)?;
        }
        g.umount_all()?;
        g.shutdown()?;
        Ok(())
    }

    /// One phase function on the host, in the read-only sandbox, under the timeout. A
    /// non-zero exit fails the stage and names the phase.
    fn host_phase(&self, ctx: &StageContext, work: &Path, phase: &str) -> Result<()> {
        ctx.log.line(format!("== {phase}"));
        ctx.bar.set_message(phase.to_string());
        let scratch = work.join("scratch");
        let status = ctx.log.run(
            Command::new("timeout")
                .args(["--kill-after=30", &self.timeout.as_secs().max(1).to_string()])
                .args(["unshare", "--mount", "--propagation", "private", "--", "bash"])
                .arg(work.join("phase.sh"))
                .arg(phase)
                .current_dir(work)
                .envs(&self.env)
                .env("TARGET", work.join("target"))
                .env("SCRATCH", &scratch)
                .env("TMPDIR", &scratch)
                .env("DISK_SIZE", &self.disk_size)
                .env("LAYOUT", self.layout.name())
                .env("VIRT_PIPELINE_WORK", work)
                .env("VIRT_PIPELINE_SCRIPT", work.join("install.sh")),
            &ctx.bar,
        )?;
        if status.success() {
            return Ok(());
        }
        if status.code() == Some(124) || status.code() == Some(137) {
            bail!(
                "{}: phase `{phase}` ran out of its {} timeout (full log: {})",
                self.name,
                humantime::format_duration(self.timeout),
                ctx.log.path().display()
            );
        }
        bail!(
            "{}: phase `{phase}` failed ({status}); last lines:\n{}\n(full log: {})",
            self.name,
            ctx.log.tail(12),
            ctx.log.path().display()
        )
    }
}

/// The default prepare phase: partitions and filesystems for `layout`, mounted at / (and
/// /boot/efi), ready for the tree.
fn prepare(g: &Guest, layout: DiskLayout) -> Result<Disk> {
    let device = g.list_devices()?.into_iter().next().context("the appliance sees no disk")?;
    let disk = match layout {
        DiskLayout::Mbr => {
            g.part_disk(&device, "mbr")?;
            g.part_set_bootable(&device, 1, true)?;
            let root = g.list_partitions()?.into_iter().next().context("partitioning made no partition")?;
            Disk { device, root, esp: None }
        }
        DiskLayout::GptUefi => {
            g.part_init(&device, "gpt")?;
            g.part_add(&device, "p", 2048, 2048 + ESP_SECTORS - 1)?;
            g.part_add(&device, "p", 2048 + ESP_SECTORS, -34)?;
            g.part_set_gpt_type(&device, 1, ESP_TYPE)?;
            let parts = g.list_partitions()?;
            let [esp, root] = parts.as_slice() else { bail!("partitioning made {} partitions, not 2", parts.len()) };
            g.mkfs("vfat", esp)?;
            Disk { device, root: root.clone(), esp: Some(esp.clone()) }
        }
    };
    g.mkfs("ext4", &disk.root)?;
    g.mount(&disk.root, "/")?;
    if let Some(esp) = &disk.esp {
        g.mkdir_p("/boot/efi")?;
        g.mount(esp, "/boot/efi")?;
    }
    Ok(disk)
}

/// The kernel's own names of a filesystem's partition and of the disk holding it, found in
/// the guest by the filesystem's UUID. libguestfs names disks by the order they were added
/// (`/dev/sda` is the layer) and translates those names in its own calls, but not in a
/// command run in the guest; and the appliance's kernel probes its disks in parallel, so
/// there `/dev/sda` is sometimes the appliance's own disk (GRUB then refused "cross-disk
/// install" onto its ext2).
fn kernel_names(g: &Guest, uuid: &str) -> Result<(String, String)> {
    if uuid.is_empty() || !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        bail!("the filesystem's UUID {uuid:?} is not one blkid takes");
    }
    let out = g.sh(&format!(
        "part=$(blkid -U {uuid}) && echo \"$part\" && echo \"/dev/$(lsblk -no PKNAME \"$part\")\" || true"
    ))?;
    let mut lines = out.lines().map(str::trim);
    let named = |d: &str| d.len() > "/dev/".len() && d.starts_with("/dev/") && !d.contains(char::is_whitespace);
    match (lines.next(), lines.next()) {
        (Some(part), Some(disk)) if named(part) && named(disk) => Ok((part.to_string(), disk.to_string())),
        _ => bail!(
            "cannot find the device of the filesystem {uuid} in the guest with blkid and lsblk (util-linux): {out:?}"
        ),
    }
}

/// The default finish phase, what debootstrap images get: fstab, DHCP on the first NIC with
/// systemd-networkd (when the tree has it), GRUB on the serial console for `layout`.
fn default_finish(g: &Guest, disk: &Disk, layout: DiskLayout, ctx: &StageContext) -> Result<()> {
    let mut fstab = format!("UUID={} / ext4 errors=remount-ro 0 1\n", g.vfs_uuid(&disk.root)?);
    if let Some(esp) = &disk.esp {
        fstab += &format!("UUID={} /boot/efi vfat umask=0077 0 1\n", g.vfs_uuid(esp)?);
    }
    g.write("/etc/fstab", fstab.as_bytes())?;
    let networkd = ["/lib/systemd/system/systemd-networkd.service", "/usr/lib/systemd/system/systemd-networkd.service"];
    if networkd.iter().any(|p| g.exists(p).unwrap_or(false)) {
        g.mkdir_p("/etc/systemd/network")?;
        g.write("/etc/systemd/network/80-dhcp.network", DHCP_NETWORK.as_bytes())?;
        g.sh("systemctl enable systemd-networkd.service >/dev/null 2>&1")?;
    } else {
        ctx.log.line("the tree has no systemd-networkd: network configuration left to the tree");
    }
    ctx.bar.set_message("installing GRUB");
    let install = match layout {
        DiskLayout::Mbr => {
            let (_, device) = kernel_names(g, &g.vfs_uuid(&disk.root)?)?;
            format!("grub-install --target=i386-pc {device} 2>&1")
        }
        DiskLayout::GptUefi => {
            "grub-install --target=x86_64-efi --efi-directory=/boot/efi --removable --no-nvram 2>&1".to_string()
        }
    };
    let has_grub = g.sh("command -v grub-install >/dev/null 2>&1 && echo yes || true")?;
    if has_grub.trim() != "yes" {
        let package = match layout {
            DiskLayout::Mbr => "grub-pc",
            DiskLayout::GptUefi => "grub-efi-amd64",
        };
        bail!("the tree has no grub-install: install GRUB ({package} on Debian) into $TARGET, or define a finish function that makes the disk bootable");
    }
    g.mkdir_p("/etc/default/grub.d")?;
    g.write("/etc/default/grub.d/50-virt-pipeline.cfg", GRUB_DEFAULTS.as_bytes())?;
    let config = "if command -v update-grub >/dev/null 2>&1; then update-grub 2>&1; \
                  else grub-mkconfig -o /boot/grub/grub.cfg 2>&1; fi";
    for cmd in [install.as_str(), config] {
        ctx.log.line(format!("# {cmd}"));
        // libguestfs keeps a failed command's output to itself: the status is printed
        // instead, so a failure is reported with what GRUB said.
        let output = g.sh(&format!("{{ {cmd}; }}; echo \"exit status $?\""))?;
        let (said, status) = output.trim_end().rsplit_once('\n').unwrap_or(("", output.trim_end()));
        for line in said.lines() {
            ctx.log.line(line);
        }
        if status != "exit status 0" {
            let shown = crate::vm::qemu::tail(said, 20);
            bail!("`{cmd}` failed in the appliance ({status}):\n{shown}");
        }
    }
    Ok(())
}

/// The script's `[args]` as environment: `suite` becomes `ARG_SUITE`; arrays are joined
/// with spaces (package lists). `Err` names the offending key.
pub fn args_env(args: &toml::Table) -> std::result::Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    for (key, value) in args {
        let name = format!("ARG_{}", key.to_ascii_uppercase().replace('-', "_"));
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("args.{key}: a key must be letters, digits, - and _ (it becomes the variable {name})"));
        }
        let text = match value {
            toml::Value::Array(items) => items.iter().map(scalar).collect::<Option<Vec<_>>>().map(|v| v.join(" ")),
            other => scalar(other),
        };
        let text = text.ok_or_else(|| format!("args.{key}: give a string, number, boolean, or an array of those"))?;
        if env.insert(name.clone(), text).is_some() {
            return Err(format!("args.{key}: another key also becomes {name}"));
        }
    }
    Ok(env)
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A public key given as text or as a path to a .pub file: the file, if it is one.
pub fn ssh_key_file(key: Option<&String>, base_dir: &Path, at: &str) -> Result<Option<PathBuf>> {
    match key {
        Some(k) if !k.starts_with("ssh-") && !k.starts_with("ecdsa-") => {
            let p = base_dir.join(k);
            if !p.exists() {
                return Err(crate::bad_input!("{at}.ssh_key: {} does not exist", p.display()));
            }
            Ok(Some(p))
        }
        _ => Ok(None),
    }
}

/// The key text for [`Account::ssh_key`].
pub fn ssh_key_text(key: Option<&String>, file: Option<&PathBuf>) -> Result<Option<String>> {
    Ok(match (key, file) {
        (_, Some(f)) => Some(std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?),
        (Some(k), None) => Some(k.clone()),
        (None, None) => None,
    })
}

fn effective_uid() -> u32 {
    // The owner of /proc/self is the effective user: no libc call needed.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_functions_are_found_in_both_spellings() {
        let p = Phases::defined_in("setup() {\n:\n}\nfunction install {\n  x\n}\n  finish ( ) { :; }\n");
        assert_eq!(p, Phases { install: true, finish: true, ..Phases::default() });
    }

    #[test]
    fn calls_and_similar_names_are_not_definitions() {
        let p = Phases::defined_in("install\ninstall_packages() { :; }\necho install()\n# install() {\n");
        assert!(!p.install, "{p:?}");
    }

    #[test]
    fn args_become_arg_variables() {
        let args: toml::Table =
            toml::from_str("suite = \"bookworm\"\ninclude = [\"a\", \"b\"]\nsize-gb = 4\n").unwrap();
        let env = args_env(&args).unwrap();
        assert_eq!(env["ARG_SUITE"], "bookworm");
        assert_eq!(env["ARG_INCLUDE"], "a b");
        assert_eq!(env["ARG_SIZE_GB"], "4");
        let bad: toml::Table = toml::from_str("x = { y = 1 }").unwrap();
        assert!(args_env(&bad).unwrap_err().contains("args.x"));
    }
}
