//! `method = "netboot"` and `method = "iso"`: the distribution's installer booted with its
//! answers file (preseed or kickstart) injected into the initrd, the serial console captured
//! to the stage log, until the installer powers the VM off. An installer stuck at a question
//! is stopped after `stall_timeout` with the question in the error.

use super::stall;
use crate::bad_input;
use crate::base::log::StageLog;
use crate::download;
use crate::engine::stage::{LayerKind, Stage, StageContext, StageResult};
use crate::image::{initrd, qemu_img};
use crate::pipeline::{IsoConfig, NetbootConfig, Pipeline};
use crate::upstream::Upstream;
use crate::vm::console::{last_lines, ConsoleReader, CONSOLE_TAIL};
use crate::vm::qemu::{Vm, VmConfig};
use anyhow::{bail, Result};
use md5::Md5;
use sha2::Sha256;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where installer trees keep kernel and initrd, relative to `location`, in the order tried.
const TREE_LAYOUTS: &[(&str, &str)] = &[
    ("linux", "initrd.gz"),
    ("current/images/netboot/debian-installer/amd64/linux", "current/images/netboot/debian-installer/amd64/initrd.gz"),
    ("current/images/netboot/ubuntu-installer/amd64/linux", "current/images/netboot/ubuntu-installer/amd64/initrd.gz"),
    ("images/pxeboot/vmlinuz", "images/pxeboot/initrd.img"),
];

/// Kernel and initrd inside installer ISOs, per distribution family, in the order tried.
const ISO_LAYOUTS: &[(&str, &str)] = &[
    ("/install.amd/vmlinuz", "/install.amd/initrd.gz"),
    ("/install/vmlinuz", "/install/initrd.gz"),
    ("/casper/vmlinuz", "/casper/initrd"),
    ("/images/pxeboot/vmlinuz", "/images/pxeboot/initrd.img"),
    ("/isolinux/vmlinuz", "/isolinux/initrd.img"),
];

/// Checksum lists an installer tree may carry: (path relative to the tree, algorithm).
const CHECKSUM_FILES: &[(&str, &str)] =
    &[("current/images/SHA256SUMS", "sha256"), ("current/images/MD5SUMS", "md5"), ("SHA256SUMS", "sha256")];

/// Both methods' keys in one record: what the stage works from and what goes into the
/// cache key (the shape, and so the keys, of the single table both methods once shared).
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstallerConfig {
    location: Option<String>,
    iso: Option<String>,
    kernel: Option<String>,
    initrd: Option<String>,
    preseed: Option<String>,
    kickstart: Option<String>,
    inject: Vec<String>,
    extra_args: String,
    disk_size: String,
    memory: String,
    cpus: u32,
    timeout: String,
    stall_timeout: String,
}

impl From<&NetbootConfig> for InstallerConfig {
    fn from(c: &NetbootConfig) -> InstallerConfig {
        InstallerConfig {
            location: c.location.clone(),
            iso: None,
            kernel: c.kernel.clone(),
            initrd: c.initrd.clone(),
            preseed: c.preseed.clone(),
            kickstart: c.kickstart.clone(),
            inject: c.inject.clone(),
            extra_args: c.extra_args.clone(),
            disk_size: c.disk_size.clone(),
            memory: c.memory.clone(),
            cpus: c.cpus,
            timeout: c.timeout.clone(),
            stall_timeout: c.stall_timeout.clone(),
        }
    }
}

impl From<&IsoConfig> for InstallerConfig {
    fn from(c: &IsoConfig) -> InstallerConfig {
        InstallerConfig {
            location: None,
            iso: Some(c.iso.clone()),
            kernel: c.kernel.clone(),
            initrd: c.initrd.clone(),
            preseed: c.preseed.clone(),
            kickstart: c.kickstart.clone(),
            inject: c.inject.clone(),
            extra_args: c.extra_args.clone(),
            disk_size: c.disk_size.clone(),
            memory: c.memory.clone(),
            cpus: c.cpus,
            timeout: c.timeout.clone(),
            stall_timeout: c.stall_timeout.clone(),
        }
    }
}

pub struct NetbootStage {
    config: InstallerConfig,
    iso: bool,
    /// The answers file, rendered: (name in the initrd, content).
    answers: Option<(String, String)>,
    injected: Vec<PathBuf>,
    base_dir: PathBuf,
    cmdline: String,
}

impl NetbootStage {
    pub fn new(config: InstallerConfig, pipeline: &Pipeline, at: &str) -> Result<NetbootStage> {
        let shown = pipeline.path.display();
        let iso = config.iso.is_some();
        let answers = match (&config.preseed, &config.kickstart) {
            (Some(_), Some(_)) => return Err(bad_input!("{shown}: {at}: give preseed or kickstart, not both")),
            (Some(p), None) => Some(("preseed.cfg".to_string(), pipeline.render_file(p, &format!("{at}.preseed"))?)),
            (None, Some(k)) => Some(("ks.cfg".to_string(), pipeline.render_file(k, &format!("{at}.kickstart"))?)),
            (None, None) => None,
        };
        // Every combination that would leave a key unused is refused.
        match (config.kernel.is_some(), config.initrd.is_some()) {
            (true, false) => return Err(bad_input!("{shown}: {at}.kernel: `kernel` needs `initrd` too")),
            (false, true) => return Err(bad_input!("{shown}: {at}.initrd: `initrd` needs `kernel` too")),
            (true, true) if config.location.is_some() => {
                return Err(bad_input!("{shown}: {at}.location: give `location`, or `kernel` and `initrd`, not both"))
            }
            (false, false) if !iso && config.location.is_none() => {
                return Err(bad_input!("{shown}: {at}: netboot needs `location`, or `kernel` and `initrd`"))
            }
            _ => {}
        }
        for (key, value) in [
            ("kernel", &config.kernel),
            ("initrd", &config.initrd),
            ("iso", &config.iso),
            ("location", &config.location),
        ] {
            if let Some(v) = value {
                let inside_iso = iso && (key == "kernel" || key == "initrd");
                if !download::is_url(v) && !inside_iso && !pipeline.resolve(v).exists() {
                    return Err(bad_input!("{shown}: {at}.{key}: {} does not exist", pipeline.resolve(v).display()));
                }
            }
        }
        let mut injected = Vec::new();
        for (i, f) in config.inject.iter().enumerate() {
            let p = pipeline.resolve(f);
            if !p.is_file() {
                return Err(bad_input!("{shown}: {at}.inject[{i}]: {} does not exist", p.display()));
            }
            injected.push(p);
        }
        for (key, value) in [("disk_size", &config.disk_size), ("memory", &config.memory)] {
            if qemu_img::parse_size(value).is_none() {
                return Err(bad_input!("{shown}: {at}.{key}: `{value}` is not a size such as 4G"));
            }
        }
        for (key, value) in [("timeout", &config.timeout), ("stall_timeout", &config.stall_timeout)] {
            pipeline.duration(value, &format!("{at}.{key}"))?;
        }
        let cmdline = kernel_cmdline(&config.extra_args, config.kickstart.is_some());
        // Answers files and installer arguments carry passwords: never into a log.
        for text in answers.iter().map(|(_, content)| content.as_str()).chain([cmdline.as_str()]) {
            crate::base::secrets::answers_secrets(text).iter().for_each(|s| crate::base::secrets::register(s));
        }
        Ok(NetbootStage { config, iso, answers, injected, base_dir: pipeline.dir.clone(), cmdline })
    }

    fn local_inputs(&self) -> Vec<PathBuf> {
        let mut files = self.injected.clone();
        for v in [&self.config.kernel, &self.config.initrd, &self.config.iso].into_iter().flatten() {
            let p = self.base_dir.join(v);
            if !download::is_url(v) && p.is_file() {
                files.push(p);
            }
        }
        if let Some(loc) = &self.config.location {
            if !download::is_url(loc) {
                if let Ok((k, i)) = find_in_tree_dir(&self.base_dir.join(loc)) {
                    files.extend([k, i]);
                }
            }
        }
        files
    }

    /// Kernel and initrd as local files.
    fn boot_files(&self, ctx: &StageContext, scratch: &Path) -> Result<(PathBuf, PathBuf, Option<PathBuf>)> {
        let cache = ctx.settings.work_dir.join("downloads");
        let fetch = |s: &str| download::local_or_fetch(s, &self.base_dir, &cache, ctx.settings.offline, ctx.ui);
        if self.iso {
            let iso = fetch(self.config.iso.as_deref().expect("checked in new"))?;
            let (k, i) = extract_from_iso(
                &iso,
                self.config.kernel.as_deref(),
                self.config.initrd.as_deref(),
                scratch,
                &ctx.log,
            )?;
            return Ok((k, i, Some(iso)));
        }
        if let (Some(k), Some(i)) = (&self.config.kernel, &self.config.initrd) {
            return Ok((fetch(k)?, fetch(i)?, None));
        }
        let location = self.config.location.as_deref().expect("checked in new");
        if !download::is_url(location) {
            let (k, i) = find_in_tree_dir(&self.base_dir.join(location))?;
            return Ok((k, i, None));
        }
        let base = location.trim_end_matches('/');
        let mut tried = Vec::new();
        for (k, i) in TREE_LAYOUTS {
            let (ku, iu) = (format!("{base}/{k}"), format!("{base}/{i}"));
            let kernel = match fetch(&ku) {
                Ok(kernel) => kernel,
                Err(e) => {
                    // The innermost cause says whether the file is missing or the server is.
                    tried.push(format!("{k}: {}", e.root_cause()));
                    continue;
                }
            };
            let initrd = fetch(&iu)?;
            verify_tree_checksums(base, &[(k, &kernel), (i, &initrd)], ctx)?;
            return Ok((kernel, initrd, None));
        }
        bail!("{location}: no installer kernel found; tried\n  {}", tried.join("\n  "))
    }
}

/// The kernel command line: `extra_args`, plus the kickstart location and a serial console
/// (the stage watches it) when they are missing.
pub fn kernel_cmdline(extra_args: &str, kickstart: bool) -> String {
    let mut args = extra_args.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    if kickstart && !args.iter().any(|a| a.starts_with("inst.ks=") || a.starts_with("ks=")) {
        args.push("inst.ks=file:/ks.cfg".into());
    }
    if !args.iter().any(|a| a.starts_with("console=ttyS0")) {
        args.push("console=ttyS0,115200".into());
    }
    args.join(" ")
}

fn find_in_tree_dir(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    for (k, i) in TREE_LAYOUTS {
        let (k, i) = (dir.join(k), dir.join(i));
        if k.is_file() && i.is_file() {
            return Ok((k, i));
        }
    }
    bail!(
        "{}: no installer kernel and initrd found (looked for linux + initrd.gz and the usual tree layouts)",
        dir.display()
    )
}

/// Checks downloaded files against the tree's SHA256SUMS or MD5SUMS where it has one.
fn verify_tree_checksums(base: &str, files: &[(&&str, &PathBuf)], ctx: &StageContext) -> Result<()> {
    for (list, algo) in CHECKSUM_FILES {
        let url = format!("{base}/{list}");
        let Ok(text) = download::read_small(
            &url,
            Path::new("."),
            &ctx.settings.work_dir.join("downloads"),
            ctx.settings.offline,
            ctx.ui,
        ) else {
            continue;
        };
        let list_dir = list.rsplit_once('/').map(|(d, _)| format!("{d}/")).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        for (rel, path) in files {
            let rel = rel.strip_prefix(list_dir.as_str()).unwrap_or(rel);
            let Some(want) = text.lines().find_map(|l| {
                let (sum, name) = l.split_once(char::is_whitespace)?;
                (name.trim().trim_start_matches("./") == rel).then(|| sum.to_string())
            }) else {
                bail!("{url} does not list {rel}; refusing an unverified installer");
            };
            let got = if *algo == "sha256" {
                crate::base::digest::file_hex::<Sha256>(path)?
            } else {
                crate::base::digest::file_hex::<Md5>(path)?
            };
            if got != want {
                let _ = std::fs::remove_file(path);
                bail!("{rel}: {algo} {got} does not match {url} ({want})");
            }
            ctx.log.line(format!("{rel}: {algo} matches {url}"));
        }
        return Ok(());
    }
    ctx.log.line(format!("{base}: no checksum list found; files not verified"));
    Ok(())
}

/// Kernel and initrd copied out of an installer ISO: the named ones, or the first of the
/// well-known locations the ISO has.
pub fn extract_from_iso(
    iso: &Path,
    kernel: Option<&str>,
    initrd: Option<&str>,
    scratch: &Path,
    log: &StageLog,
) -> Result<(PathBuf, PathBuf)> {
    let candidates: Vec<(&str, &str)> = match (kernel, initrd) {
        (Some(k), Some(i)) => vec![(k, i)],
        _ => ISO_LAYOUTS.to_vec(),
    };
    for (k, i) in candidates {
        let (kout, iout) = (scratch.join("iso-kernel"), scratch.join("iso-initrd"));
        let ok = crate::base::command::output(
            Command::new("xorriso")
                .args(["-osirrox", "on", "-indev"])
                .arg(iso)
                .args(["-extract", k])
                .arg(&kout)
                .args(["-extract", i])
                .arg(&iout),
            "xorriso",
        )?
        .status
        .success();
        if ok && kout.is_file() && iout.is_file() {
            log.line(format!("{}: kernel {k}, initrd {i}", iso.display()));
            return Ok((kout, iout));
        }
    }
    bail!("{}: no installer kernel found on the ISO; name it with `kernel` and `initrd`", iso.display())
}

impl Stage for NetbootStage {
    fn kind(&self) -> &'static str {
        "install"
    }

    fn layer_kind(&self) -> LayerKind {
        LayerKind::Base
    }

    fn config(&self) -> serde_json::Value {
        serde_json::json!({
            "method": if self.iso { "iso" } else { "netboot" },
            "config": self.config,
            "answers": self.answers,
            "cmdline": self.cmdline,
        })
    }

    fn inputs(&self) -> Vec<PathBuf> {
        self.local_inputs()
    }

    /// Downloaded installers: their published checksum lists, and the validators of files
    /// named one by one (local files are inputs, hashed whole).
    fn upstream(&self) -> Vec<Upstream> {
        let mut out = Vec::new();
        let sibling = |url: &str, name: &str| url.rsplit_once('/').map(|(dir, _)| format!("{dir}/{name}"));
        if let Some(iso) = self.config.iso.as_deref().filter(|i| download::is_url(i)) {
            out.push(Upstream::Validators { url: iso.to_string() });
            let lists: Vec<String> = ["SHA256SUMS", "CHECKSUM"].iter().filter_map(|n| sibling(iso, n)).collect();
            out.push(Upstream::Digest { urls: lists });
        }
        for file in [&self.config.kernel, &self.config.initrd].into_iter().flatten() {
            if download::is_url(file) && self.config.iso.is_none() {
                out.push(Upstream::Validators { url: file.clone() });
            }
        }
        if let Some(location) = self.config.location.as_deref().filter(|l| download::is_url(l)) {
            if self.config.kernel.is_none() {
                let base = location.trim_end_matches('/');
                let lists = CHECKSUM_FILES.iter().map(|(list, _)| format!("{base}/{list}")).collect();
                out.push(Upstream::Digest { urls: lists });
            }
        }
        out
    }

    fn run(&self, ctx: &mut StageContext) -> Result<StageResult> {
        let scratch = crate::base::scratch::dir(&ctx.settings.work_dir, "netboot")?;
        ctx.bar.set_message("fetching the installer");
        let (kernel, original_initrd, cdrom) = self.boot_files(ctx, scratch.path())?;
        let mut members = Vec::new();
        if let Some((name, content)) = &self.answers {
            members.push(initrd::Member { name: name.clone(), data: content.clone().into_bytes() });
        }
        for f in &self.injected {
            let name = f.file_name().unwrap_or_default().to_string_lossy().into_owned();
            members.push(initrd::Member { name, data: std::fs::read(f)? });
        }
        let initrd_path = scratch.path().join("initrd");
        initrd::append_members(&original_initrd, &members, &initrd_path)?;
        ctx.log.line(format!("initrd: {} + {} injected file(s)", original_initrd.display(), members.len()));
        ctx.log.line(format!("kernel command line: {}", self.cmdline));

        qemu_img::create_blank(&ctx.output, &self.config.disk_size)?;
        let mut vm_config = VmConfig::new(ctx.settings.accel);
        vm_config.memory = self.config.memory.clone();
        vm_config.cpus = self.config.cpus;
        vm_config.disks.push((ctx.output.clone(), "qcow2".into()));
        vm_config.cdrom = cdrom;
        vm_config.kernel = Some((kernel, initrd_path, self.cmdline.clone()));
        vm_config.no_reboot = true;
        let console = scratch.path().join("console.log");
        let mut vm = Vm::start_logged(&vm_config, &console, Some(ctx.log.clone()))?;
        let timeout = humantime::parse_duration(&self.config.timeout)?;
        let stall = humantime::parse_duration(&self.config.stall_timeout)?;
        let screen = watch(&mut vm, &console, timeout, stall, ctx)?;
        drop(vm);
        // qemu exits 0 under -no-reboot for a reboot, a triple fault or a kernel panic as
        // well as a power-off: only an operating system on the disk says the install worked.
        ctx.bar.set_message("inspecting the installed disk");
        match crate::guest::inspect::inspect_image(ctx.settings.accel, &ctx.output, "qcow2", Some(&ctx.log), ctx.settings.verbose)
        {
            Ok(os) => {
                ctx.log.line(format!("inspection: {}", os.summary()));
                Ok(StageResult { inspection: Some(serde_json::to_value(&os)?), record: None, upstream: None })
            }
            Err(e) => bail!(
                "the installer's VM stopped, but no operating system was found on the disk ({e}); last console lines:\n{}",
                last_lines(&stall::strip_escapes(&screen))
            ),
        }
    }
}

/// Follows the installer until it powers off, copying its console into the log. Returns the
/// console's recent text, for the caller's own checks.
fn watch(vm: &mut Vm, console: &Path, timeout: Duration, stall: Duration, ctx: &StageContext) -> Result<String> {
    let mut reader = ConsoleReader::new(console, CONSOLE_TAIL);
    let log_lines = |lines: Vec<String>| {
        for line in lines {
            let line = stall::strip_escapes(&line);
            if !line.trim().is_empty() {
                ctx.log.line(format!("console: {line}"));
                ctx.bar.set_message(line.trim().to_string());
            }
        }
    };
    // The question on screen and since when: the clock in d-i's status bar keeps the
    // console changing, so the stall is measured on the question itself.
    let mut waiting: Option<(String, Instant)> = None;
    loop {
        crate::base::interrupt::check()?;
        log_lines(reader.poll()?);
        if let Some(status) = vm.try_exit()? {
            // What qemu wrote between the last read and its exit.
            log_lines(reader.poll()?);
            log_lines(reader.flush());
            if status.success() {
                ctx.log.line("qemu exited: the installer powered the VM off (or rebooted, or the kernel panicked)");
                return Ok(reader.tail());
            }
            bail!("qemu failed ({status}): {}", vm.stderr().trim());
        }
        let text = reader.tail();
        waiting = match (stall::waiting_question(&text), waiting.take()) {
            (Some(q), Some((prev, since))) if q == prev => {
                if since.elapsed() >= stall {
                    vm.kill();
                    ctx.log.line(format!("console (waiting at a question): {q}"));
                    bail!("installer is waiting for an answer (no progress for {}s):\n{q}", stall.as_secs());
                }
                Some((prev, since))
            }
            (Some(q), _) => Some((q, Instant::now())),
            (None, _) => None,
        };
        if vm.started.elapsed() >= timeout {
            vm.kill();
            bail!(
                "the install did not finish within {}; last console lines:\n{}",
                humantime::format_duration(timeout),
                crate::vm::qemu::tail(&stall::strip_escapes(&text), 15)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_gets_console_and_kickstart() {
        assert_eq!(
            kernel_cmdline("auto url=file:///preseed.cfg", false),
            "auto url=file:///preseed.cfg console=ttyS0,115200"
        );
        assert_eq!(kernel_cmdline("console=ttyS0,115200 quiet", false), "console=ttyS0,115200 quiet");
        assert_eq!(kernel_cmdline("inst.text", true), "inst.text inst.ks=file:/ks.cfg console=ttyS0,115200");
        assert_eq!(kernel_cmdline("inst.ks=http://x/ks.cfg", true), "inst.ks=http://x/ks.cfg console=ttyS0,115200");
    }
}
