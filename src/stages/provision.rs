//! `[stages.provision]`: Virter's `image build` as a stage. The new layer's overlay is
//! booted (the VM writes the layer itself), the run's ephemeral key is authorised for root
//! in one appliance launch before the boot, the provisioning steps run over SSH, the key is
//! taken out again, the guest is powered off cleanly, and the engine commits the layer. A
//! failing step fails the stage with the step's exit code and leaves no layer.

use crate::bad_input;
use crate::engine::stage::{LayerKind, Stage, StageContext, StageResult};
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
        if qemu_img::parse_size(&config.memory).is_none_or(|m| m < 128 << 20) {
            return Err(bad_input!(
                "{shown}: {at}.memory: `{}` is not a memory size such as 1024M or 2G (at least 128M)",
                config.memory
            ));
        }
        if !(1..=256).contains(&config.cpus) {
            return Err(bad_input!("{shown}: {at}.cpus: {} is not a number of CPUs from 1 to 256", config.cpus));
        }
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

        // One appliance launch: check sshd, authorise the key, remember what was there.
        ctx.bar.set_message("authorising the run's SSH key (appliance)");
        let (os, access) = {
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
            (os, access)
        };

        let options = BootOptions {
            accel: ctx.settings.accel,
            memory: self.config.memory.clone(),
            cpus: self.config.cpus,
            work_dir: ctx.settings.work_dir.clone(),
            no_reboot: false,
        };
        let runner = Runner::boot(&options, &ctx.output, &ctx.log, &ctx.bar)?;
        runner.set_deadline(deadline);
        let wait = self.boot_timeout.min(deadline.saturating_duration_since(Instant::now()));
        let session = runner.wait_for_ssh(&key, wait)?;
        session.set_deadline(Some(deadline));
        runner.console_on_bar(false);

        let scratch = crate::engine::cache::scratch_dir(&ctx.settings.work_dir, "provision")?;
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
        access.remove(&target.session, &ctx.log).map_err(|e| runner.explain(e))?;
        runner.shutdown(Some(target.session)).context("shutting the guest down")?;
        Ok(StageResult { inspection: Some(serde_json::to_value(&os)?), record: None })
    }
}
