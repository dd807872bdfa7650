//! `[stages.check]`: the gate before a publish. A throwaway overlay of the layer is booted
//! (the layer itself is never written) with a key of the run's as the systemd credential
//! `ssh.authorized_keys.root` — or, where sshd refuses it, authorised in the throwaway copy
//! by the appliance — and over SSH systemd is asked whether the system finished starting and
//! which units failed. An image that does not boot, whose SSH never answers, or that comes up
//! with a failed unit fails the stage, so the stages after it (publish) do not run.

use crate::bad_input;
use crate::engine::stage::{LayerKind, Stage, StageContext, StageResult};
use crate::guest::throwaway;
use crate::pipeline::{CheckConfig, Pipeline};
use crate::vm::runner::BootOptions;
use crate::vm::ssh::{shell_quote, Session};
use anyhow::{bail, Result};
use std::time::{Duration, Instant};

pub struct CheckStage {
    config: CheckConfig,
    boot_timeout: Duration,
    settle_timeout: Duration,
}

impl CheckStage {
    pub fn new(config: CheckConfig, pipeline: &Pipeline, at: &str) -> Result<CheckStage> {
        let shown = pipeline.path.display();
        let boot_timeout = pipeline.duration(&config.boot_timeout, &format!("{at}.boot_timeout"))?;
        let settle_timeout = pipeline.duration(&config.settle_timeout, &format!("{at}.settle_timeout"))?;
        pipeline.check_vm_size(&config.memory, config.cpus, at)?;
        if let Some(bad) = config.allow_failed.iter().find(|u| !is_unit_name(u)) {
            return Err(bad_input!("{shown}: {at}.allow_failed: `{bad}` is not a unit name such as foo.service"));
        }
        Ok(CheckStage { config, boot_timeout, settle_timeout })
    }
}

impl Stage for CheckStage {
    fn kind(&self) -> &'static str {
        "check"
    }

    /// Reads the layer, writes nothing: the layer passes on unchanged once it is found good.
    fn layer_kind(&self) -> LayerKind {
        LayerKind::Output
    }

    /// What decides the verdict; time limits and the VM's size do not.
    fn config(&self) -> serde_json::Value {
        serde_json::json!({ "allow_failed": self.config.allow_failed })
    }

    fn run(&self, ctx: &mut StageContext) -> Result<StageResult> {
        let options = BootOptions {
            accel: ctx.settings.accel,
            memory: self.config.memory.clone(),
            cpus: self.config.cpus,
            work_dir: ctx.settings.work_dir.clone(),
            no_reboot: false,
            raw_disks: Vec::new(),
        };
        let limits = throwaway::Limits {
            ssh: self.boot_timeout,
            deadline: Some(Instant::now() + self.boot_timeout + self.settle_timeout),
        };
        let booted = throwaway::boot(ctx.parent_path()?, &options, &limits, ctx.settings.verbose, &ctx.log, &ctx.bar)?;
        let (runner, session) = (&booted.runner, &booted.session);
        runner.console_on_bar(false);
        let verdict = self.judge(session, ctx);
        // The copy is thrown away: no orderly shutdown needed.
        runner.kill();
        let state = verdict?;
        ctx.ui.line(format!("check: the image booted and came up {state}"));
        Ok(StageResult { inspection: None, record: Some(serde_json::json!({ "state": state })), upstream: None })
    }
}

impl CheckStage {
    /// systemd's state once it settled, failing on failed units not allowed to fail.
    fn judge(&self, session: &Session, ctx: &StageContext) -> Result<String> {
        ctx.bar.set_message("waiting for the system to finish starting");
        let secs = self.settle_timeout.as_secs().max(1);
        let (code, out) = session.exec(&format!("timeout {secs} systemctl is-system-running --wait"))?;
        let state = out.lines().last().unwrap_or_default().trim().to_string();
        ctx.log.line(format!("systemctl is-system-running: {state} (exit {code})"));
        if code == 127 {
            ctx.log.line("the guest has no systemctl: only the boot to SSH was checked");
            return Ok("up (no systemd)".into());
        }
        let (_, listing) = session.exec("systemctl list-units --failed --plain --no-legend --no-pager")?;
        let failed: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|unit| !self.config.allow_failed.iter().any(|a| a == unit))
            .collect();
        if !failed.is_empty() {
            let mut details = String::new();
            for unit in &failed {
                let (_, journal) =
                    session.exec(&format!("journalctl -b -u {} -n 8 --no-pager -o cat", shell_quote(unit)))?;
                ctx.log.line(format!("--- journal of {unit}\n{journal}"));
                details.push_str(&format!("\n{unit}:\n{}", indent(&journal)));
            }
            bail!(
                "the image booted, but {} failed (allow one with allow_failed if it cannot work in a VM):{details}\n(full log: {})",
                failed.join(", "),
                ctx.log.path().display()
            );
        }
        match state.as_str() {
            "running" | "degraded" => Ok(state),
            _ => {
                let (_, jobs) = session.exec("systemctl list-jobs --no-pager")?;
                bail!(
                    "the system did not finish starting within {} (state: {state}); jobs still waiting:\n{}",
                    humantime::format_duration(self.settle_timeout),
                    indent(&jobs)
                )
            }
        }
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}

/// A systemd unit name: no spaces or shell characters, and a unit type suffix.
fn is_unit_name(name: &str) -> bool {
    let types = [
        ".service",
        ".socket",
        ".mount",
        ".target",
        ".timer",
        ".path",
        ".swap",
        ".device",
        ".scope",
        ".slice",
        ".automount",
    ];
    types.iter().any(|t| name.ends_with(t) && name.len() > t.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || ":-_.@\\".contains(c))
}

#[cfg(test)]
mod tests {
    #[test]
    fn unit_names() {
        assert!(super::is_unit_name("getty@ttyS0.service"));
        assert!(super::is_unit_name("systemd-networkd-wait-online.service"));
        assert!(!super::is_unit_name("foo"));
        assert!(!super::is_unit_name("a b.service"));
        assert!(!super::is_unit_name(".service"));
    }
}
