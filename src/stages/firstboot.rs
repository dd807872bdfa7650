//! `[stages.firstboot]`: scripts installed as virt-customize/virt-builder `--firstboot`
//! installs them (`crate::guest::firstboot`), then — with `run = true` — the layer is
//! booted until the guest powers itself off after the last script; each script's exit
//! status and output are read back from the guest and a failed script fails the stage.
//!
//! One appliance launch installs; one boot runs the scripts, and its last script writes their
//! results onto a small record disk, removes what the stage installed and powers off. Only
//! when no whole record comes back (the guest went down early, the output did not fit) does a
//! second appliance launch read the results from the layer and clean it. With `run = false`
//! only the first launch happens: the scripts wait for the image's real first boot.

use crate::bad_input;
use crate::engine::stage::{LayerKind, Stage, StageContext, StageResult};
use crate::guest::firstboot::{self as fb, shell_quote, Installer, Results, DEFAULT_PRIORITY};
use crate::guest::{Drive, Guest};
use crate::pipeline::{FirstbootConfig, Pipeline};
use crate::vm::runner::{BootOptions, Runner};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The last script of a `run = true` boot (`guest::firstboot::finish_script`): it records
/// the results, cleans up and ends the boot (users' scripts need not).
const POWEROFF_NAME: &str = "virt-pipeline-poweroff";
const LAST_PRIORITY: u32 = 9999;

/// Where `puppet_apply`'s manifests and modules are copied in the guest.
const PUPPET_DIR: &str = "/usr/lib/virt-sysprep/puppet";

/// How many lines of a failed script's output the error shows.
const ERROR_LINES: usize = 20;

pub struct FirstbootStage {
    config: FirstbootConfig,
    scripts: Vec<PathBuf>,
    manifest: Option<PathBuf>,
    modules: Option<PathBuf>,
    memory: String,
    cpus: u32,
    timeout: Duration,
}

impl FirstbootStage {
    pub fn new(config: FirstbootConfig, pipeline: &Pipeline, at: &str) -> Result<FirstbootStage> {
        let shown = pipeline.path.display();
        let mut scripts = Vec::new();
        for (i, s) in config.scripts.iter().enumerate() {
            let p = pipeline.resolve(s);
            if !p.is_file() {
                return Err(bad_input!(
                    "{shown}: {at}.scripts[{i}]: the script {} does not exist (paths are relative to the pipeline file)",
                    p.display()
                ));
            }
            scripts.push(p);
        }
        for (i, c) in config.commands.iter().enumerate() {
            if c.trim().is_empty() {
                return Err(bad_input!("{shown}: {at}.commands[{i}]: the command is empty"));
            }
        }
        let (mut manifest, mut modules) = (None, None);
        if let Some(apply) = &config.puppet_apply {
            let m = pipeline.resolve(&apply.manifest);
            if !m.exists() {
                return Err(bad_input!(
                    "{shown}: {at}.puppet_apply.manifest: {} does not exist (a manifest file or a directory of them)",
                    m.display()
                ));
            }
            manifest = Some(m);
            if let Some(dir) = &apply.modules {
                let d = pipeline.resolve(dir);
                if !d.is_dir() {
                    return Err(bad_input!(
                        "{shown}: {at}.puppet_apply.modules: {} is not a directory (a module path: one directory per module)",
                        d.display()
                    ));
                }
                modules = Some(d);
            }
        }
        if let Some(agent) = &config.puppet {
            if agent.server.trim().is_empty() {
                return Err(bad_input!("{shown}: {at}.puppet.server: give the Puppet server's name"));
            }
        }
        if scripts.is_empty() && config.commands.is_empty() && config.puppet.is_none() && config.puppet_apply.is_none()
        {
            return Err(bad_input!("{shown}: {at}: nothing to run: give scripts, commands, puppet or puppet_apply"));
        }
        // Keys that only a run reads would otherwise be silently ignored.
        if !config.run {
            for (key, given) in [
                ("memory", config.memory.is_some()),
                ("cpus", config.cpus.is_some()),
                ("timeout", config.timeout.is_some()),
            ] {
                if given {
                    return Err(bad_input!(
                        "{shown}: {at}.{key}: with run = false nothing boots here; remove {key} or set run = true"
                    ));
                }
            }
        }
        let memory = config.memory.clone().unwrap_or_else(|| "1024M".into());
        if crate::image::qemu_img::parse_size(&memory).is_none_or(|m| m < (64 << 20)) {
            return Err(bad_input!("{shown}: {at}.memory: `{memory}` is not a memory size such as 1024M or 2G"));
        }
        let cpus = config.cpus.unwrap_or(2);
        if cpus == 0 || cpus > 64 {
            return Err(bad_input!("{shown}: {at}.cpus: {cpus} is not a CPU count from 1 to 64"));
        }
        let timeout_text = config.timeout.clone().unwrap_or_else(|| "1h".into());
        let timeout = pipeline.duration(&timeout_text, &format!("{at}.timeout"))?;
        Ok(FirstbootStage { config, scripts, manifest, modules, memory, cpus, timeout })
    }

    /// Installs every script into the mounted guest; returns what the service added.
    fn install(&self, inst: &mut Installer, g: &Guest, ctx: &StageContext) -> Result<()> {
        for path in &self.scripts {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let content = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let file = inst.add(DEFAULT_PRIORITY, &name, &content)?;
            ctx.log.line(format!("firstboot script {file} (from {})", path.display()));
        }
        for cmd in &self.config.commands {
            let file = inst.add(DEFAULT_PRIORITY, cmd, format!("#!/bin/sh\n{cmd}\n").as_bytes())?;
            ctx.log.line(format!("firstboot command {file}: {cmd}"));
        }
        if let (Some(apply), Some(manifest)) = (&self.config.puppet_apply, &self.manifest) {
            let name = inst.next_name(DEFAULT_PRIORITY, "puppet-apply");
            let dir = format!("{PUPPET_DIR}/{name}");
            inst.mkdir(PUPPET_DIR)?;
            g.mkdir_p(&format!("{dir}/manifest"))?;
            g.copy_in(manifest, &format!("{dir}/manifest"))?;
            let manifest_in_guest = format!("{dir}/manifest/{}", base_name(manifest));
            let modulepath = match &self.modules {
                Some(m) => {
                    g.mkdir_p(&format!("{dir}/modulepath"))?;
                    g.copy_in(m, &format!("{dir}/modulepath"))?;
                    Some(format!("{dir}/modulepath/{}", base_name(m)))
                }
                None => None,
            };
            let script = puppet_apply_script(&dir, &manifest_in_guest, modulepath.as_deref(), &apply.extra_args);
            let file = inst.add(DEFAULT_PRIORITY, "puppet-apply", script.as_bytes())?;
            ctx.log.line(format!("firstboot puppet apply {file}: {}", manifest.display()));
        }
        if let Some(agent) = &self.config.puppet {
            let script =
                puppet_agent_script(&agent.server, &agent.environment, agent.certname.as_deref(), &agent.extra_args);
            let file = inst.add(DEFAULT_PRIORITY, "puppet-agent", script.as_bytes())?;
            ctx.log.line(format!("firstboot puppet agent {file}: server {}", agent.server));
        }
        Ok(())
    }

    /// Boots the layer on the shared runner, with the record disk, and waits until the guest
    /// powers itself off.
    fn boot(&self, ctx: &StageContext, record_disk: &Path) -> Result<()> {
        let options = BootOptions {
            accel: ctx.settings.accel,
            memory: self.memory.clone(),
            cpus: self.cpus,
            work_dir: ctx.settings.work_dir.clone(),
            // A reboot ends the VM too: the scripts must not run into a second boot.
            no_reboot: true,
            raw_disks: vec![(record_disk.to_path_buf(), fb::RECORD_SERIAL.to_string())],
        };
        ctx.bar.set_message("booting the layer");
        let runner = Runner::boot(&options, &ctx.output, &ctx.log, &ctx.bar)?;
        runner.wait_for_poweroff(self.timeout).map_err(|e| {
            anyhow::anyhow!(
                "{e:#}\n(the firstboot scripts may still be running, or waiting for something; `timeout` is {})",
                humantime::format_duration(self.timeout)
            )
        })?;
        ctx.log.line("the guest powered itself off");
        Ok(())
    }
}

fn base_name(p: &Path) -> String {
    p.file_name().unwrap_or_default().to_string_lossy().into_owned()
}

/// The seed's agent command. `--detailed-exitcodes` makes a run that reports failures count:
/// 0 (no changes) and 2 (changes) succeed; 1 (the run failed), 4 and 6 (resources failed) fail.
/// The seed's `--configtimeout 600` exists up to Puppet 4; later agents take the same limit
/// as `--http_read_timeout`.
fn puppet_agent_script(server: &str, environment: &str, certname: Option<&str>, extra: &[String]) -> String {
    let mut args = format!("--server {} --environment {}", shell_quote(server), shell_quote(environment));
    if let Some(c) = certname {
        args = format!("--certname {} {args}", shell_quote(c));
    }
    for a in extra {
        args.push(' ');
        args.push_str(&shell_quote(a));
    }
    format!(
        "#!/bin/sh
# Puppet agent run of virt-pipeline's firstboot stage (`puppet` key).
PATH=\"$PATH:/opt/puppetlabs/bin\"
case \"$(puppet --version 2>/dev/null)\" in
  [0-4].*) timeout_arg='--configtimeout 600' ;;
  *) timeout_arg='--http_read_timeout 600' ;;
esac
puppet agent --onetime --no-daemonize --no-splay --verbose $timeout_arg --color false {args} --detailed-exitcodes
rc=$?
{VERDICT}"
    )
}

fn puppet_apply_script(dir: &str, manifest: &str, modulepath: Option<&str>, extra: &[String]) -> String {
    let mut args = String::new();
    if let Some(m) = modulepath {
        args.push_str(&format!(" --modulepath {}", shell_quote(m)));
    }
    for a in extra {
        args.push(' ');
        args.push_str(&shell_quote(a));
    }
    format!(
        "#!/bin/sh
# Masterless Puppet run of virt-pipeline's firstboot stage (`puppet_apply` key).
PATH=\"$PATH:/opt/puppetlabs/bin\"
puppet apply --verbose --color false --detailed-exitcodes{args} {}
rc=$?
# The copied manifests and modules are not left in the image.
rm -rf {}
{VERDICT}",
        shell_quote(manifest),
        shell_quote(dir)
    )
}

/// Turns `--detailed-exitcodes` into the script's status.
const VERDICT: &str = "case $rc in
  0|2) exit 0 ;;
  *) echo \"puppet: exit status $rc (1: the run failed; 4 or 6: some resources failed)\" >&2; exit $rc ;;
esac
";

/// What a boot's results say: the failures, as lines of the error. A script without a
/// status was running when the guest went down: that is how a script that powers the guest
/// off ends (the seed's does), so only the last script to run may lack one.
fn failures(results: &Results, poweroff: Option<&str>) -> Vec<String> {
    let mut failed = Vec::new();
    let last = results.done.len().saturating_sub(1);
    for (i, r) in results.done.iter().enumerate() {
        let problem = match r.status {
            Some(0) => continue,
            Some(n) => format!("firstboot script {} failed (exit status {n})", r.name),
            None if i == last => continue,
            None => format!("firstboot script {} did not finish (no exit status recorded)", r.name),
        };
        let output = crate::vm::qemu::tail(r.log.trim_end(), ERROR_LINES);
        failed.push(if output.is_empty() {
            format!("{problem}; it printed nothing")
        } else {
            format!("{problem}; the last lines of its output:\n{output}")
        });
    }
    let pending: Vec<&String> = results.pending.iter().filter(|p| Some(p.as_str()) != poweroff).collect();
    if !pending.is_empty() {
        let names = pending.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        let why = match results.done.last() {
            None => {
                "the firstboot service did not start (guestfs-firstboot.service under systemd, or the sysvinit links)"
                    .to_string()
            }
            Some(r) => format!("the guest went down while {} ran", r.name),
        };
        failed.push(format!("firstboot scripts never ran: {names} ({why})"));
    }
    failed
}

impl Stage for FirstbootStage {
    fn kind(&self) -> &'static str {
        "firstboot"
    }

    fn layer_kind(&self) -> LayerKind {
        LayerKind::Overlay
    }

    fn config(&self) -> serde_json::Value {
        serde_json::json!({
            "config": self.config,
            "memory": self.memory,
            "cpus": self.cpus,
            "timeout": self.timeout.as_secs(),
            // The scripts the helpers write are part of what the layer holds.
            "puppet": self.config.puppet.as_ref().map(|a| puppet_agent_script(&a.server, &a.environment, a.certname.as_deref(), &a.extra_args)),
            "puppet_apply": self.config.puppet_apply.as_ref().map(|a| puppet_apply_script("DIR", "MANIFEST", Some("MODULES"), &a.extra_args)),
        })
    }

    fn inputs(&self) -> Vec<PathBuf> {
        self.scripts.iter().chain(&self.manifest).chain(&self.modules).cloned().collect()
    }

    fn run(&self, ctx: &mut StageContext) -> Result<StageResult> {
        let accel = ctx.settings.accel;
        let drive = Drive { path: &ctx.output, format: "qcow2", readonly: false, discard: true };

        let g = Guest::new(accel, Some(ctx.log.clone()), ctx.settings.verbose)?;
        g.add_drive(drive)?;
        ctx.bar.set_message("launching the appliance");
        g.launch()?;
        let os = g.inspect_and_mount(false)?;
        ctx.log.line(format!("inspection: {}", os.summary()));
        ctx.bar.set_message("installing the firstboot scripts");
        let mut inst = Installer::new(&g, &os)?;
        self.install(&mut inst, &g, ctx)?;
        let poweroff = if self.config.run {
            let finish = fb::finish_script(inst.created());
            Some(inst.add(LAST_PRIORITY, POWEROFF_NAME, finish.as_bytes())?)
        } else {
            None
        };
        let created = inst.created().to_vec();
        drop(inst);
        g.umount_all()?;
        g.shutdown()?;
        drop(g);
        let Some(poweroff) = poweroff else {
            ctx.log.line("run = false: the scripts wait for the image's first boot");
            return Ok(StageResult { inspection: Some(serde_json::to_value(&os)?), record: None, upstream: None });
        };

        let scratch = crate::base::scratch::dir(&ctx.settings.work_dir, "firstboot")?;
        let record_disk = scratch.path().join("record.raw");
        std::fs::File::create(&record_disk)?.set_len(fb::RECORD_DISK_BYTES)?;
        self.boot(ctx, &record_disk)?;

        ctx.bar.set_message("reading the scripts' results");
        let recorded = fb::read_record(&record_disk)?;
        // Without a whole record, or when the guest could not clean up, the layer is opened.
        let g = if recorded.as_ref().is_some_and(|(_, removed)| *removed) {
            ctx.log.line("the scripts' record came back on the record disk; the guest removed the firstboot files");
            None
        } else {
            ctx.log.line("no whole record of the scripts came back: reading the layer");
            let g = Guest::new(accel, Some(ctx.log.clone()), ctx.settings.verbose)?;
            g.add_drive(drive)?;
            g.launch()?;
            g.inspect_and_mount(false)?;
            Some(g)
        };
        let results = match (recorded, &g) {
            (Some((results, _)), _) => results,
            (None, Some(g)) => fb::read_results(g)?,
            (None, None) => unreachable!("the layer is opened when there is no record"),
        };
        for r in &results.done {
            let status = r.status.map_or("none: the guest went down while it ran".to_string(), |s| s.to_string());
            ctx.log.line(format!("firstboot script {} exit status {status}; its output:", r.name));
            for line in r.log.lines() {
                ctx.log.line(format!("  {line}"));
            }
        }
        let failed = failures(&results, Some(&poweroff));
        if !failed.is_empty() {
            bail!("{}", failed.join("\n"));
        }
        // The record was read into the log; the layer keeps neither it nor the service
        // files the stage added (virt-customize leaves its service enabled after the first
        // boot; a layer built here is a template, so it is not left behind).
        if let Some(g) = g {
            fb::remove(&g, &created)?;
            g.rm_f(&format!("{}/{poweroff}", fb::SCRIPTS))?;
            g.umount_all()?;
            g.shutdown()?;
        }
        Ok(StageResult { inspection: Some(serde_json::to_value(&os)?), record: None, upstream: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::firstboot::ScriptResult;

    fn result(name: &str, status: Option<i32>, log: &str) -> ScriptResult {
        ScriptResult { name: name.into(), status, log: log.into() }
    }

    #[test]
    fn statuses_decide_the_stage() {
        let ok = Results {
            done: vec![result("5000-0001-a", Some(0), ""), result("9999-0002-virt-pipeline-poweroff", None, "")],
            ..Default::default()
        };
        assert!(failures(&ok, Some("9999-0002-virt-pipeline-poweroff")).is_empty());
        // A user's script that powers off itself (the seed's) leaves ours pending: fine.
        let seed = Results {
            done: vec![result("5000-0001-firstboot", None, "Notice: Applied catalog")],
            pending: vec!["9999-0002-virt-pipeline-poweroff".into()],
            ..Default::default()
        };
        assert!(failures(&seed, Some("9999-0002-virt-pipeline-poweroff")).is_empty());
        let bad = Results {
            done: vec![
                result(
                    "5000-0001-puppet-agent",
                    Some(4),
                    "Info: x\nError: /Stage[main]/Exec[/bin/false]/returns: change from 'notrun' to ['0'] failed",
                ),
                result("5000-0002-b", None, ""),
            ],
            pending: vec!["5000-0003-c".into(), "9999-0004-virt-pipeline-poweroff".into()],
            ..Default::default()
        };
        let f = failures(&bad, Some("9999-0004-virt-pipeline-poweroff")).join("\n");
        assert!(
            f.contains("5000-0001-puppet-agent failed (exit status 4)") && f.contains("Error: /Stage[main]"),
            "{f}"
        );
        assert!(f.contains("never ran: 5000-0003-c (the guest went down while 5000-0002-b ran)"), "{f}");
        assert!(!f.contains("poweroff"), "{f}");
        let none = Results { pending: vec!["5000-0001-a".into()], ..Default::default() };
        assert!(failures(&none, None)[0].contains("did not start"));
    }

    #[test]
    fn agent_command_is_the_seeds() {
        let s = puppet_agent_script(
            "puppet.example.net",
            "production",
            Some("node1"),
            &["--waitforcert".into(), "60".into()],
        );
        assert!(s.contains("puppet agent --onetime --no-daemonize --no-splay --verbose $timeout_arg --color false --certname 'node1' --server 'puppet.example.net' --environment 'production' '--waitforcert' '60' --detailed-exitcodes"), "{s}");
        assert!(s.contains("--configtimeout 600") && s.contains("0|2) exit 0"));
    }

    /// The verdict under a real shell: 0 and 2 pass, 1, 4 and 6 fail with their own status.
    #[test]
    fn detailed_exit_codes_map_to_the_scripts_status() {
        for (rc, expect) in [(0, 0), (2, 0), (1, 1), (4, 4), (6, 6)] {
            let script = format!("rc={rc}\n{VERDICT}");
            let st = std::process::Command::new("sh").arg("-c").arg(script).output().unwrap();
            assert_eq!(st.status.code(), Some(expect), "puppet exit {rc}");
        }
    }
}
