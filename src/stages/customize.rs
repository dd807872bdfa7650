//! `[stages.customize]`: offline changes in virt-customize's vocabulary, applied in the order
//! written, in one appliance launch, without booting the guest.

use crate::engine::stage::{LayerKind, Stage, StageContext, StageResult};
use crate::guest::customize::{check_steps, step_name, StepRunner};
use crate::guest::{sources, Drive, Guest};
use crate::pipeline::{CustomizeConfig, Pipeline};
use crate::upstream;
use anyhow::{Context, Result};
use std::path::PathBuf;

pub struct CustomizeStage {
    config: CustomizeConfig,
    timeout: std::time::Duration,
    /// Host files named by copy-in, run, ssh-inject and root-password file:, resolved.
    files: Vec<PathBuf>,
    pipeline_dir: PathBuf,
}

impl CustomizeStage {
    pub fn new(mut config: CustomizeConfig, pipeline: &Pipeline, at: &str) -> Result<CustomizeStage> {
        let files = check_steps(&config.steps, pipeline, &format!("{at}.steps"))?;
        // The effective environment is part of the configuration, so of the cache key.
        config.env = pipeline.stage_env(&config.env, &format!("{at}.env"))?;
        let timeout = pipeline.duration(&config.timeout, &format!("{at}.timeout"))?;
        Ok(CustomizeStage { config, timeout, files, pipeline_dir: pipeline.dir.clone() })
    }

    fn installs_packages(&self) -> bool {
        self.config.steps.iter().any(crate::guest::customize::uses_package_manager)
    }

    fn needs_network(&self) -> bool {
        self.config.network.unwrap_or_else(|| self.installs_packages())
    }
}

impl Stage for CustomizeStage {
    fn kind(&self) -> &'static str {
        "customize"
    }

    fn layer_kind(&self) -> LayerKind {
        LayerKind::Overlay
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }

    fn inputs(&self) -> Vec<PathBuf> {
        self.files.clone()
    }

    /// Steps that install or update packages depend on the guest's package sources, which
    /// only the guest names.
    fn upstream_found_in_run(&self) -> bool {
        self.installs_packages()
    }

    fn run(&self, ctx: &mut StageContext) -> Result<StageResult> {
        let g = Guest::new(ctx.settings.accel, Some(ctx.log.clone()), ctx.settings.verbose)?;
        g.set_network(self.needs_network())?;
        g.add_drive(Drive { path: &ctx.output, format: "qcow2", readonly: false, discard: true })?;
        ctx.bar.set_message("launching the appliance");
        g.launch()?;
        let os = g.inspect_and_mount(false)?;
        ctx.log.line(format!("inspection: {}", os.summary()));
        let client = if ctx.settings.offline { None } else { Some(upstream::Client::new()?) };
        let tracks = self.installs_packages();
        let rpm = tracks && matches!(os.package_management.as_str(), "dnf" | "yum");
        let rpm_states = if rpm { Some(sources::rpm_states(&g, client.as_ref())?) } else { None };
        let runner = StepRunner::new(&g, &os, &self.pipeline_dir, &self.config.env, self.timeout, &ctx.log);
        for (i, step) in self.config.steps.iter().enumerate() {
            let name = step_name(step);
            ctx.bar.set_message(name.to_string());
            ctx.log.line(format!("step {i}: {name}"));
            runner.apply(step).with_context(|| format!("customize step {i} ({name})"))?;
        }
        let upstream = match (tracks, rpm_states) {
            (false, _) => None,
            (true, Some((states, untracked))) => {
                if !untracked.is_empty() {
                    ctx.log.line(format!(
                        "repositories without a fixed baseurl are not checked for changes: {}",
                        untracked.join(", ")
                    ));
                }
                Some(states)
            }
            (true, None) if os.package_management == "apt" => {
                let sources = sources::apt_sources(&g)?;
                Some(sources::apt_states(&g, &sources, client.as_ref())?)
            }
            (true, None) => {
                ctx.log.line(format!(
                    "package sources of {} are not checked for changes: this layer is rebuilt when its inputs \
                     change (or with --build-id)",
                    os.package_management
                ));
                Some(Vec::new())
            }
        };
        g.umount_all()?;
        g.shutdown()?;
        Ok(StageResult { inspection: Some(serde_json::to_value(&os)?), record: None, upstream })
    }
}
