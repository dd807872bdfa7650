//! `[stages.provision]`: Virter's `image build` as a stage. The new layer's overlay is
//! booted (the VM writes the layer itself) with the run's ephemeral key as the systemd
//! credential `ssh.authorized_keys.root`, the provisioning steps run over SSH, the key is
//! taken out again, the guest is powered off (forced: no unit-by-unit stop, filesystems
//! still unmounted cleanly), and the engine commits the layer. When sshd refuses the key
//! (root already has keys, a guest without systemd credentials), the VM is killed, the
//! overlay made again from the parent, and the key authorised in one appliance launch that
//! also checks sshd's settings, before a second boot. A failing step fails the stage with
//! the step's exit code and leaves no layer.

use crate::bad_input;
use crate::engine::stage::{LayerKind, Stage, StageContext, StageResult};
use crate::guest::inspect::Inspection;
use crate::guest::{access, Drive, Guest};
use crate::image::qemu_img;
use crate::pipeline::{Pipeline, ProvisionConfig};
use crate::provision::{self, ContainerEngine, LoadOptions, Provisioning, PullPolicy, RunContext, Source, Target};
use crate::vm::runner::{BootOptions, Runner};
use crate::vm::ssh::AccessKey;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The host as the guest reaches it under qemu's user-mode networking, for containers'
/// `VIRTER_ACCESS_NETWORK` (Virter gives its libvirt network's host address the same way).
const ACCESS_NETWORK: &str = "10.0.2.2/24";

pub struct ProvisionStage {
    config: ProvisionConfig,
    provisioning: Provisioning,
    /// Relative rsync sources resolve here (and containers see it as /virter/workspace):
    /// the pipeline file's directory, like every relative path in a pipeline.
    workdir: PathBuf,
    engine: ContainerEngine,
    file: Option<PathBuf>,
    boot_timeout: Duration,
    timeout: Duration,
}

impl ProvisionStage {
    pub fn new(config: ProvisionConfig, pipeline: &Pipeline, at: &str) -> Result<ProvisionStage> {
        let shown = pipeline.path.display();
        let boot_timeout = pipeline.duration(&config.boot_timeout, &format!("{at}.boot_timeout"))?;
        let timeout = pipeline.duration(&config.timeout, &format!("{at}.timeout"))?;
        pipeline.check_vm_size(&config.memory, config.cpus, at)?;
        let pull_override = match &config.pull {
            Some(p) => Some(p.parse::<PullPolicy>().map_err(|e| bad_input!("{shown}: {at}.pull: {e}"))?),
            None => None,
        };
        if config.container_engine.trim().is_empty() {
            return Err(bad_input!("{shown}: {at}.container_engine: name podman, docker or a path to one"));
        }
        let engine = ContainerEngine::named(&config.container_engine);
        let (source, file) = match (&config.file, &config.steps) {
            (Some(_), Some(_)) => {
                return Err(bad_input!("{shown}: {at}: `file` and `steps` both given; use one (a Virter provisioning file, or steps written here)"))
            }
            (None, None) => {
                return Err(bad_input!("{shown}: {at}: no steps: give `file` (a Virter provisioning file) or `steps`"))
            }
            (Some(file), None) => {
                if !config.env.is_empty() {
                    return Err(bad_input!("{shown}: {at}.env: only for inline `steps`; a provisioning file has its own [env]"));
                }
                let path = pipeline.resolve(file);
                if !path.is_file() {
                    return Err(bad_input!("{shown}: {at}.file: {} does not exist", path.display()));
                }
                (Source::File(path.clone()), Some(path))
            }
            (None, Some(steps)) => {
                let env = pipeline.stage_env(&config.env, &format!("{at}.env"))?;
                (Source::Inline { steps: steps.clone(), env, origin: format!("{shown}: {at}.steps") }, None)
            }
        };
        // The pipeline's [values] (with --set values.X) and the stage's own override the
        // provisioning file's.
        let mut values = pipeline.file.values.clone();
        values.extend(config.values.clone());
        let options = LoadOptions { values, pull_override, ..Default::default() };
        let provisioning = provision::load(&source, &options)?;
        if provisioning.steps.is_empty() {
            return Err(bad_input!("{shown}: {at}: the provisioning has no steps"));
        }
        let workdir = pipeline.dir.canonicalize().unwrap_or_else(|_| pipeline.dir.clone());
        provision::check(&provisioning, &workdir, &engine)?;
        Ok(ProvisionStage { config, provisioning, workdir, engine, file, boot_timeout, timeout })
    }
}

impl Stage for ProvisionStage {
    fn kind(&self) -> &'static str {
        "provision"
    }

    fn layer_kind(&self) -> LayerKind {
        LayerKind::Overlay
    }

    /// The rendered provisioning (values applied, templates expanded) and what shapes the
    /// guest's work; time limits are left out, they do not change the layer.
    fn config(&self) -> serde_json::Value {
        serde_json::json!({
            "steps": self.provisioning.steps,
            "env": self.provisioning.env,
            "memory": self.config.memory,
            "cpus": self.config.cpus,
            "container_engine": self.config.container_engine,
            "pull": self.config.pull,
        })
    }

    /// The provisioning file and every file the rsync steps would send.
    fn inputs(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.file.iter().cloned().collect();
        files.extend(provision::inputs(&self.provisioning, &self.workdir));
        files
    }

    fn run(&self, ctx: &mut StageContext) -> Result<StageResult> {
        let deadline = Instant::now() + self.timeout;
        let key = AccessKey::generate()?;
        ctx.log.line(format!("the run's SSH key: {}", key.public_line()));
        let options = BootOptions {
            accel: ctx.settings.accel,
            memory: self.config.memory.clone(),
            cpus: self.config.cpus,
            work_dir: ctx.settings.work_dir.clone(),
            no_reboot: false,
            raw_disks: Vec::new(),
        };
        let boot_wait = || self.boot_timeout.min(deadline.saturating_duration_since(Instant::now()));

        // First the key as a systemd credential: no appliance launch before the boot.
        ctx.log.line("root access: the run's key as the systemd credential ssh.authorized_keys.root");
        let runner = Runner::boot_with_credentials(
            &options,
            &[access::credential(key.public_line())],
            &ctx.output,
            &ctx.log,
            &ctx.bar,
        )?;
        runner.set_deadline(deadline);
        let answer = match runner.wait_for_ssh_unless_refused(&key, boot_wait()) {
            Ok(answer) => answer,
            Err(e) if runner.expired() || crate::base::interrupt::interrupted() => return Err(e),
            Err(e) => {
                // No answer at all: the image may lack sshd or not start it. The appliance
                // check says what to change, as the fallback path would before its boot.
                runner.kill();
                drop(runner);
                return Err(self.check_sshd(ctx).err().unwrap_or(e));
            }
        };
        let (runner, session, access, os) = match answer {
            Ok(session) => {
                ctx.log.line("root access: the credential let the key in (no appliance launch)");
                (runner, session, Access::Credential(access::CredentialKey::new(key.public_line())), None)
            }
            Err(refusal) => {
                // Nothing was committed: the layer starts again from its parent.
                ctx.log.line(format!(
                    "root access: the credential did not let the key in ({}); authorising it in the image instead",
                    refusal.root_cause()
                ));
                runner.kill();
                drop(runner);
                std::fs::remove_file(&ctx.output).with_context(|| format!("cannot remove {}", ctx.output.display()))?;
                qemu_img::create_overlay(ctx.parent_path()?, &ctx.output, self.overlay_cluster_size())?;
                let (os, access) = self.authorise_in_image(ctx, &key)?;
                let runner = Runner::boot(&options, &ctx.output, &ctx.log, &ctx.bar)?;
                runner.set_deadline(deadline);
                let session = runner.wait_for_ssh(&key, boot_wait())?;
                (runner, session, Access::Image(access), Some(os))
            }
        };
        session.set_deadline(Some(deadline));
        runner.console_on_bar(false);

        let scratch = crate::base::scratch::dir(&ctx.settings.work_dir, "provision")?;
        let targets = [Target { endpoint: runner.endpoint().clone(), session }];
        let run = RunContext {
            workdir: &self.workdir,
            scratch: scratch.path(),
            key: key.private_key_path(),
            known_hosts: key.known_hosts_path(),
            access_network: ACCESS_NETWORK.to_string(),
            engine: &self.engine,
            log: &ctx.log,
            bar: &ctx.bar,
            echo: None,
        };
        provision::run(&self.provisioning, &targets, &run).map_err(|e| {
            if runner.expired() {
                runner.explain(e)
            } else {
                e
            }
        })?;
        let [target] = targets;

        ctx.bar.set_message("removing the run's SSH key");
        match &access {
            Access::Credential(a) => a.remove(&target.session, &ctx.log),
            Access::Image(a) => a.remove(&target.session, &ctx.log),
        }
        .map_err(|e| runner.explain(e))?;
        // The steps are done and the key is out: nothing in the guest needs an orderly stop.
        runner.shutdown_forced(target.session).context("shutting the guest down")?;
        let inspection = match os {
            Some(os) => Some(serde_json::to_value(&os)?),
            // No appliance saw this layer: the steps ran on the parent's system, so its
            // inspection stands (an inspection of our own would cost an appliance launch).
            None => ctx.parent.and_then(|parent| {
                crate::engine::cache::Cache::open_read_only(&ctx.settings.work_dir).ok()?.meta(&parent.key)?.inspection
            }),
        };
        Ok(StageResult { inspection, record: None, upstream: None })
    }
}

/// How the run's key reached root.
enum Access {
    Credential(access::CredentialKey),
    Image(access::RootAccess),
}

impl ProvisionStage {
    /// sshd's presence and settings, checked in a read-only appliance.
    fn check_sshd(&self, ctx: &StageContext) -> Result<()> {
        let g = Guest::new(ctx.settings.accel, Some(ctx.log.clone()), ctx.settings.verbose)?;
        g.add_drive(Drive { path: &ctx.output, format: "qcow2", readonly: true, discard: false })?;
        g.launch()?;
        g.inspect_and_mount(true)?;
        access::check_sshd(&g)
    }

    /// The fallback way in: one appliance launch that checks sshd and authorises the key.
    fn authorise_in_image(&self, ctx: &StageContext, key: &AccessKey) -> Result<(Inspection, access::RootAccess)> {
        ctx.bar.set_message("authorising the run's SSH key (appliance)");
        let g = Guest::new(ctx.settings.accel, Some(ctx.log.clone()), ctx.settings.verbose)?;
        g.add_drive(Drive { path: &ctx.output, format: "qcow2", readonly: false, discard: false })?;
        g.launch()?;
        let os = g.inspect_and_mount(false)?;
        if !os.is_linux() {
            bail!("the provision stage boots Linux guests over SSH; this layer holds {}", os.summary());
        }
        let access = access::authorise_root(&g, key.public_line())?;
        g.umount_all()?;
        g.shutdown()?;
        Ok((os, access))
    }
}
