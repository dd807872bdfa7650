//! `[stages.customize]`: offline changes in virt-customize's vocabulary, applied in the order
//! written, in one appliance launch, without booting the guest.

use crate::engine::stage::{LayerKind, Stage, StageContext, StageResult};
use crate::guest::customize::{check_steps, step_name, StepRunner};
use crate::guest::{Drive, Guest};
use crate::pipeline::{CustomizeConfig, Pipeline};
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

    fn needs_network(&self) -> bool {
        self.config
            .network
            .unwrap_or_else(|| self.config.steps.iter().any(crate::guest::customize::uses_package_manager))
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

    fn run(&self, ctx: &mut StageContext) -> Result<StageResult> {
        let g = Guest::new(ctx.settings.accel, Some(ctx.log.clone()), ctx.settings.verbose)?;
        g.set_network(self.needs_network())?;
        g.add_drive(Drive { path: &ctx.output, format: "qcow2", readonly: false, discard: true })?;
        ctx.bar.set_message("launching the appliance");
        g.launch()?;
        let os = g.inspect_and_mount(false)?;
        ctx.log.line(format!("inspection: {}", os.summary()));
        let runner = StepRunner::new(&g, &os, &self.pipeline_dir, &self.config.env, self.timeout, &ctx.log);
        for (i, step) in self.config.steps.iter().enumerate() {
            let name = step_name(step);
            ctx.bar.set_message(name.to_string());
            ctx.log.line(format!("step {i}: {name}"));
            runner.apply(step).with_context(|| format!("customize step {i} ({name})"))?;
        }
        g.umount_all()?;
        g.shutdown()?;
        Ok(StageResult { inspection: Some(serde_json::to_value(&os)?), record: None })
    }
}
