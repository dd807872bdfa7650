//! `method = "script"`: an install method written by the user as a bash file of phase
//! functions (PVC's provisioner scripts). The tool runs them through [`tree`](super::tree),
//! as it runs the built-in debootstrap method.

use super::tree::{self, Account, Phases, TreeInstall};
use crate::bad_input;
use crate::engine::stage::{LayerKind, Stage, StageContext, StageResult};
use crate::image::qemu_img;
use crate::pipeline::{Pipeline, ScriptConfig};
use crate::upstream::Upstream;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub struct ScriptStage {
    config: ScriptConfig,
    script_path: PathBuf,
    /// The script as read when the pipeline was loaded, the text that was checked and that
    /// runs (its contents are also in the cache key, through `inputs`).
    script: String,
    phases: Phases,
    env: BTreeMap<String, String>,
    timeout: Duration,
    base_dir: PathBuf,
    key_file: Option<PathBuf>,
}

impl ScriptStage {
    /// Checks everything that can be checked without running the script: it exists, bash
    /// can parse it, it defines `install`, and the keys are valid.
    pub fn new(config: &ScriptConfig, pipeline: &Pipeline, at: &str) -> Result<ScriptStage> {
        let where_ = format!("{}: {at}", pipeline.path.display());
        if qemu_img::parse_size(&config.disk_size).is_none() {
            return Err(bad_input!("{where_}.disk_size: `{}` is not a size such as 4G", config.disk_size));
        }
        let script_path = pipeline.resolve(&config.script);
        let script = std::fs::read_to_string(&script_path)
            .map_err(|e| bad_input!("{where_}.script: cannot read {}: {e}", script_path.display()))?;
        let syntax = crate::base::command::output(Command::new("bash").arg("-n").arg(&script_path), "bash")
            .with_context(|| format!("cannot check {}", script_path.display()))?;
        if !syntax.status.success() {
            return Err(bad_input!(
                "{where_}.script: {} is not valid bash:\n{}",
                script_path.display(),
                String::from_utf8_lossy(&syntax.stderr).trim_end()
            ));
        }
        let phases = Phases::defined_in(&script);
        if !phases.install {
            return Err(bad_input!(
                "{where_}.script: {} defines no `install` function; an install script must define install() to fill $TARGET (see docs/install-scripts.md)",
                script_path.display()
            ));
        }
        if phases.prepare {
            return Err(bad_input!(
                "{where_}.script: {} defines prepare(); the disk is partitioned by the tool, as `layout` says (mbr or gpt-uefi): remove prepare() and set layout",
                script_path.display()
            ));
        }
        if let Some(bad) = config.upstream.iter().find(|u| !crate::download::is_url(u)) {
            return Err(bad_input!(
                "{where_}.upstream: `{bad}` is not an http(s) URL; list the URLs of the small files the install \
                 depends on, such as {{{{ Mirror }}}}/dists/bookworm/InRelease"
            ));
        }
        let mut env = pipeline.stage_env(&config.env, &format!("{at}.env"))?;
        let args = tree::args_env(&config.args).map_err(|e| bad_input!("{where_}.{e}"))?;
        env.extend(args);
        let timeout = pipeline.duration(&config.timeout, &format!("{at}.timeout"))?;
        let key_file = tree::ssh_key_file(config.ssh_key.as_ref(), &pipeline.dir, &where_)?;
        Ok(ScriptStage {
            config: config.clone(),
            script_path,
            script,
            phases,
            env,
            timeout,
            base_dir: pipeline.dir.clone(),
            key_file,
        })
    }
}

impl Stage for ScriptStage {
    fn kind(&self) -> &'static str {
        "install"
    }

    fn layer_kind(&self) -> LayerKind {
        LayerKind::Base
    }

    fn config(&self) -> serde_json::Value {
        serde_json::json!({ "method": "script", "config": self.config })
    }

    fn upstream(&self) -> Vec<Upstream> {
        self.config.upstream.iter().map(|url| Upstream::Digest { urls: vec![url.clone()] }).collect()
    }

    fn inputs(&self) -> Vec<PathBuf> {
        std::iter::once(self.script_path.clone()).chain(self.key_file.iter().cloned()).collect()
    }

    fn run(&self, ctx: &mut StageContext) -> Result<StageResult> {
        let c = &self.config;
        let install = TreeInstall {
            name: format!("install script {}", self.script_path.display()),
            script: self.script.clone(),
            phases: self.phases.clone(),
            env: self.env.clone(),
            timeout: self.timeout,
            disk_size: c.disk_size.clone(),
            layout: c.layout,
            account: Account {
                hostname: c.hostname.as_deref(),
                root_password: c.root_password.as_deref(),
                ssh_key: tree::ssh_key_text(c.ssh_key.as_ref(), self.key_file.as_ref())?,
                base_dir: &self.base_dir,
            },
        };
        install.run(ctx)?;
        Ok(StageResult::default())
    }
}
