//! `[stages.sysprep]`: virt-sysprep's operations, then zero-fill and fstrim, all in one
//! appliance launch. Each operation is one small module in `operations/`, listed once in
//! [`OPERATIONS`]; the stage is a loop over the selected ones (guestfs-tools' model).

pub mod operations;

use crate::bad_input;
use crate::engine::stage::{LayerKind, Stage, StageContext, StageResult};
use crate::guest::inspect::Inspection;
use crate::guest::{Drive, Guest};
use crate::pipeline::{Pipeline, SysprepConfig};
use anyhow::{Context, Result};
pub use operations::OPERATIONS;

/// One sysprep operation: a name, whether it runs by default, a one-line description
/// (as `--list-operations` prints it) and the function doing it.
pub struct Operation {
    pub name: &'static str,
    pub default: bool,
    pub description: &'static str,
    pub run: fn(&OpContext) -> anyhow::Result<()>,
    /// Works on block devices, so it runs before the filesystems are mounted.
    pub on_devices: bool,
}

/// What an operation works with: the mounted guest and what inspection found.
pub struct OpContext<'a> {
    pub g: &'a Guest,
    pub os: &'a Inspection,
    pub config: &'a SysprepConfig,
    /// The pipeline file's directory: host paths in the configuration resolve against it.
    pub dir: &'a std::path::Path,
    /// The longest one guest command may take.
    pub timeout: std::time::Duration,
    pub log: &'a crate::base::log::StageLog,
}

impl OpContext<'_> {
    /// Removes everything matching the globs, recursively (virt-sysprep's `rm_rf` of a glob).
    pub fn rm_rf_globs(&self, globs: &[&str]) -> crate::guest::Result<()> {
        for glob in globs {
            for path in self.g.glob_expand(glob)? {
                self.g.rm_rf(&path)?;
            }
        }
        Ok(())
    }

    /// Removes the files matching the globs, skipping what cannot be removed (directories),
    /// as virt-sysprep's `try g#rm file with _ -> ()` does.
    pub fn rm_globs(&self, globs: &[&str]) -> crate::guest::Result<()> {
        for glob in globs {
            for path in self.g.glob_expand(glob)? {
                let _ = self.g.rm(&path);
            }
        }
        Ok(())
    }

    /// Removes the regular files and symlinks below `dir`, keeping the directories (and
    /// files for which `keep` says so).
    pub fn rm_files_below(&self, dir: &str, keep: impl Fn(&str) -> bool) -> crate::guest::Result<()> {
        if !self.g.is_dir(dir)? {
            return Ok(());
        }
        let dir = dir.trim_end_matches('/');
        for rel in self.g.find(dir)? {
            let path = format!("{dir}/{rel}");
            if keep(&path) || self.g.is_dir(&path)? {
                continue;
            }
            self.g.rm_f(&path)?;
        }
        Ok(())
    }

    /// Drops the selected lines from every ifcfg file of a Red Hat-family guest (the
    /// net-hostname and net-hwaddr operations); other guests have none.
    pub fn drop_ifcfg_lines(&self, drop: impl Fn(&str) -> bool) -> anyhow::Result<()> {
        if !(self.os.is_linux() && self.os.is_redhat_family()) {
            return Ok(());
        }
        for file in self.g.glob_expand("/etc/sysconfig/network-scripts/ifcfg-*")? {
            self.drop_lines(&file, &drop)?;
        }
        Ok(())
    }

    /// Rewrites a text file without the lines `drop` selects.
    pub fn drop_lines(&self, path: &str, drop: impl Fn(&str) -> bool) -> crate::guest::Result<()> {
        let text = self.g.read_string(path)?;
        let kept: Vec<&str> = text.lines().filter(|l| !drop(l)).collect();
        self.g.write(path, format!("{}\n", kept.join("\n")).as_bytes())
    }
}

pub fn find(name: &str) -> Option<&'static Operation> {
    OPERATIONS.iter().find(|op| op.name == name)
}

/// The operations a configuration selects, in table order.
pub fn selected(config: &SysprepConfig) -> Result<Vec<&'static Operation>> {
    let check = |names: &Vec<String>, key: &str| -> Result<()> {
        for n in names {
            if find(n).is_none() {
                return Err(bad_input!(
                    "sysprep.{key}: `{n}` is not a known operation; `pipeline sysprep --list-operations` lists them"
                ));
            }
        }
        Ok(())
    };
    match (&config.enable, &config.disable) {
        (Some(_), Some(_)) => {
            Err(bad_input!("sysprep: give `enable` (exactly these) or `disable` (the defaults less these), not both"))
        }
        (Some(enable), None) => {
            check(enable, "enable")?;
            Ok(OPERATIONS.iter().filter(|op| enable.iter().any(|n| n == op.name)).collect())
        }
        (None, disable) => {
            let none = Vec::new();
            let disable = disable.as_ref().unwrap_or(&none);
            check(disable, "disable")?;
            Ok(OPERATIONS.iter().filter(|op| op.default && !disable.iter().any(|n| n == op.name)).collect())
        }
    }
}

pub struct SysprepStage {
    pub config: SysprepConfig,
    operations: Vec<&'static Operation>,
    /// Host files the customize and script operations read.
    files: Vec<std::path::PathBuf>,
    dir: std::path::PathBuf,
    timeout: std::time::Duration,
}

impl SysprepStage {
    pub fn new(mut config: SysprepConfig, pipeline: &Pipeline, at: &str) -> Result<SysprepStage> {
        let shown = pipeline.path.display();
        config.env = pipeline.stage_env(&config.env, &format!("{at}.env"))?;
        let operations = selected(&config).map_err(|e| bad_input!("{shown}: {at}: {e}"))?;
        // A key whose operation does not run would be ignored without a word.
        for (key, given, op) in [
            ("scripts", !config.scripts.is_empty(), "script"),
            ("customize", !config.customize.is_empty(), "customize"),
            ("hostname", config.hostname.is_some(), "hostname"),
        ] {
            if given && !operations.iter().any(|o| o.name == op) {
                return Err(bad_input!(
                    "{shown}: {at}.{key}: the `{op}` operation is not selected, so `{key}` would be ignored; \
                     add `{op}` to `enable` (or remove it from `disable`), or drop `{key}`"
                ));
            }
        }
        let mut files = crate::guest::customize::check_steps(&config.customize, pipeline, &format!("{at}.customize"))?;
        for (i, script) in config.scripts.iter().enumerate() {
            let path = pipeline.resolve(script);
            if !path.is_file() {
                return Err(bad_input!("{shown}: {at}.scripts[{i}]: {} does not exist", path.display()));
            }
            files.push(path);
        }
        let timeout = pipeline.duration(&config.timeout, &format!("{at}.timeout"))?;
        Ok(SysprepStage { config, operations, files, dir: pipeline.dir.clone(), timeout })
    }
}

impl Stage for SysprepStage {
    fn kind(&self) -> &'static str {
        "sysprep"
    }

    fn layer_kind(&self) -> LayerKind {
        LayerKind::Overlay
    }

    fn config(&self) -> serde_json::Value {
        serde_json::json!({
            "operations": self.operations.iter().map(|op| op.name).collect::<Vec<_>>(),
            "hostname": self.config.hostname(),
            "zero_free_space": self.config.zero_free_space,
            "fstrim": self.config.fstrim,
            "customize": self.config.customize,
            "scripts": self.config.scripts,
            // What the scripts and commands see changes what they do.
            "env": self.config.env,
            "timeout": self.config.timeout,
        })
    }

    fn inputs(&self) -> Vec<std::path::PathBuf> {
        self.files.clone()
    }

    /// 4 KiB clusters, the size of a filesystem block: every block fstrim discards becomes a
    /// zero cluster of the layer (qemu drops discards smaller than a cluster).
    fn overlay_cluster_size(&self) -> Option<u32> {
        self.config.fstrim.then_some(TRIM_CLUSTER as u32)
    }

    fn run(&self, ctx: &mut StageContext) -> Result<StageResult> {
        let g = Guest::new(ctx.settings.accel, Some(ctx.log.clone()), ctx.settings.verbose)?;
        // Package installs in customize steps need the appliance network.
        let network = self.operations.iter().any(|op| op.name == "customize")
            && self.config.customize.iter().any(crate::guest::customize::uses_package_manager);
        g.set_network(network)?;
        g.add_drive(Drive { path: &ctx.output, format: "qcow2", readonly: false, discard: true })?;
        ctx.bar.set_message("launching the appliance");
        g.launch()?;
        let os = g.inspect()?;
        ctx.log.line(format!("inspection: {}", os.summary()));
        let op_ctx =
            OpContext { g: &g, os: &os, config: &self.config, dir: &self.dir, timeout: self.timeout, log: &ctx.log };
        let (device_ops, fs_ops): (Vec<&&Operation>, Vec<&&Operation>) =
            self.operations.iter().partition(|op| op.on_devices);
        for (i, ops) in [device_ops, fs_ops].into_iter().enumerate() {
            if i == 1 {
                g.mount_inspected(&os, false)?;
            }
            for op in ops {
                ctx.bar.set_message(format!("operation {}", op.name));
                ctx.log.line(format!("operation: {}", op.name));
                (op.run)(&op_ctx).with_context(|| format!("sysprep operation {}", op.name))?;
            }
        }
        free_space(&g, &os, self.config.zero_free_space, self.config.fstrim, ctx)?;
        g.umount_all()?;
        g.shutdown()?;
        Ok(StageResult { inspection: Some(serde_json::to_value(&os)?), record: None, upstream: None })
    }
}

/// The cluster size of a sysprep layer that trims: the size of a filesystem block.
pub const TRIM_CLUSTER: u64 = 4096;

/// Zero-fills and/or trims every mounted filesystem, after the operations.
///
/// With both on, fstrim alone does the zero-fill's work where that is exact: on a filesystem
/// with blocks of at least 4 KiB whose partition starts on a 4 KiB boundary, every block is a
/// whole cluster of the layer (a qcow2 overlay with 4 KiB clusters), so each discarded block
/// becomes a zero cluster that reads as zeros and takes no space — what zero-free-space
/// guarantees, without writing gigabytes of zeros through the appliance. Anywhere else a
/// block straddles two clusters, qemu ignores the partial discards and the old data would
/// stay: smaller blocks, a misaligned partition (an old MBR disk's sector 63), or a volume
/// whose placement is not checked (LVM, RAID) are zero-filled first, the classic way.
pub fn free_space(g: &Guest, os: &Inspection, zero: bool, trim: bool, ctx: &StageContext) -> Result<()> {
    let fs_types: std::collections::HashMap<_, _> = os.filesystems.iter().cloned().collect();
    for (mp, dev) in &os.mountpoints {
        let fs = fs_types.get(dev).map(String::as_str).unwrap_or("");
        if matches!(fs, "swap" | "unknown" | "") {
            continue;
        }
        let block = g.block_size(mp)?;
        let aligned = starts_on_cluster(g, dev)?;
        if !aligned {
            ctx.log
                .line(format!("{dev} does not start on a {TRIM_CLUSTER}-byte boundary (or is not a plain partition)"));
        }
        let exact_trim = trim && block >= TRIM_CLUSTER && aligned;
        if zero && !exact_trim {
            ctx.bar.set_message(format!("zero-free-space {mp}"));
            ctx.log.line(format!("zero-free-space {mp} ({fs}, {block}-byte blocks)"));
            g.zero_free_space(mp)?;
        }
        if trim {
            ctx.bar.set_message(format!("fstrim {mp}"));
            ctx.log.line(format!("fstrim {mp} ({fs}, {block}-byte blocks)"));
            if let Err(e) = g.fstrim(mp) {
                if !zero || exact_trim {
                    // Without working discards the zero-fill above did not happen.
                    ctx.log.line(format!("fstrim {mp} failed: {e}"));
                    if zero {
                        g.zero_free_space(mp)?;
                    } else {
                        return Err(e.into());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Whether the filesystem on `dev` starts on a cluster boundary of the layer: a whole disk
/// does, a partition when its first byte does; anything else (LVM, RAID, btrfs subvolumes)
/// counts as not proven.
fn starts_on_cluster(g: &Guest, dev: &str) -> Result<bool> {
    if g.list_devices()?.iter().any(|d| d == dev) {
        return Ok(true);
    }
    if !g.list_partitions()?.iter().any(|p| p == dev) {
        return Ok(false);
    }
    let (disk, number) = (g.part_to_dev(dev)?, g.part_to_partnum(dev)?);
    Ok(g.part_list(&disk)?.iter().any(|&(n, start, _)| n == number && start % TRIM_CLUSTER == 0))
}

/// `pipeline sysprep --list-operations`: name, default marker, description, like virt-sysprep.
pub fn list_operations() -> String {
    OPERATIONS
        .iter()
        .map(|op| format!("{} {} {}\n", op.name, if op.default { "*" } else { " " }, op.description))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage_config(env_line: &str) -> serde_json::Value {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        let text = format!(
            "version = 1\nfrom = {{ image = \"x.qcow2\" }}\n[pipeline]\nname = \"t\"\n[env]\n{env_line}\n[[stages]]\n[stages.sysprep]\nfstrim = true\n"
        );
        std::fs::write(&file, text).unwrap();
        let p = crate::pipeline::load(&file, &[]).unwrap();
        let crate::pipeline::StageConfig::Sysprep(c) = &p.file.stages[0] else { unreachable!() };
        SysprepStage::new(c.clone(), &p, "stages[0].sysprep").unwrap().config()
    }

    /// The scripts and commands see the environment, so a changed value is a new layer.
    #[test]
    fn the_key_follows_the_environment() {
        assert_ne!(stage_config("MIRROR = \"http://a\""), stage_config("MIRROR = \"http://b\""));
        assert_eq!(stage_config("MIRROR = \"http://a\""), stage_config("MIRROR = \"http://a\""));
    }
}
