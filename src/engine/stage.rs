//! The one interface every stage kind implements (PVC's lesson: small pluggable pieces
//! behind one trait, not a fixed flow with special cases).

use super::cache::Layer;
use crate::base::log::StageLog;
use crate::base::ui::Ui;
use crate::upstream::{States, Upstream};
use crate::vm::Accel;
use anyhow::Result;
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};

/// What a stage does to the layer chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// Makes a new disk at `ctx.output` with no parent (install).
    Base,
    /// Changes a qcow2 overlay at `ctx.output` whose backing file is the parent layer.
    Overlay,
    /// Reads the chain and writes somewhere else (publish, export); the layer passes on
    /// unchanged. Its run returns a record that `output_current` checks on the next run.
    Output,
}

pub trait Stage {
    fn kind(&self) -> &'static str;
    fn layer_kind(&self) -> LayerKind;
    /// The rendered configuration that goes into the cache key.
    fn config(&self) -> serde_json::Value;
    /// Reads the upstream state the key depends on (a repository's signed index, ...), once,
    /// before any key is computed, so that computing a key never touches the network or GPG.
    /// A stage keeps what it resolved (interior mutability) for `config` and `run`.
    fn resolve(&self, _ctx: &ResolveContext) -> Result<()> {
        Ok(())
    }
    /// What upstream the output depends on (a mirror suite, an image URL's validators), known
    /// after `resolve`. The engine probes each (or, offline, takes the state the last build
    /// recorded) and hashes the states into the key.
    fn upstream(&self) -> Vec<Upstream> {
        Vec::new()
    }
    /// Whether the stage learns its upstreams only while it runs (the guest's own package
    /// sources, for a step that installs packages). Its key then holds the current states of
    /// the upstreams its last build reported, and `run` reports them in `StageResult::upstream`.
    fn upstream_found_in_run(&self) -> bool {
        false
    }
    /// Host files and directories the stage reads; their contents go into the cache key.
    fn inputs(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    /// For overlay stages: the qcow2 cluster size of the new layer, when the default (64 KiB)
    /// does not suit (sysprep's discards need clusters as small as filesystem blocks).
    fn overlay_cluster_size(&self) -> Option<u32> {
        None
    }
    /// Checks that need the run's settings (a signing key given on the command line), made
    /// for every stage before any runs, so such bad input writes nothing.
    fn preflight(&self, _settings: &RunSettings) -> Result<()> {
        Ok(())
    }
    fn run(&self, ctx: &mut StageContext) -> Result<StageResult>;
    /// For output stages: is what an earlier run recorded still in place (the published
    /// entry still in its repository)? If not, the stage runs again.
    fn output_current(&self, _record: &serde_json::Value) -> bool {
        true
    }
}

/// What a finished stage reports back to the engine.
#[derive(Debug, Default)]
pub struct StageResult {
    /// Guest inspection of the new layer, stored in its metadata.
    pub inspection: Option<serde_json::Value>,
    /// For output stages: where the output went, checked on the next run.
    pub record: Option<serde_json::Value>,
    /// For stages that find their upstreams while they run: each with the state the run used.
    pub upstream: Option<States>,
}

/// Settings of one `pipeline run` that stages need.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub accel: Accel,
    pub work_dir: PathBuf,
    pub offline: bool,
    pub sign_key: Option<String>,
    /// Appliance messages in the stage logs, more output on the terminal.
    pub verbose: bool,
}

/// What `Stage::resolve` may use: the run's settings (`offline` forbids the network) and
/// whether it may write (`plan` writes nothing, not even a download cache entry).
pub struct ResolveContext<'a> {
    pub settings: &'a RunSettings,
    pub ui: &'a Ui,
    pub read_only: bool,
}

pub struct StageContext<'a> {
    pub parent: Option<&'a Layer>,
    /// Where Base and Overlay stages write their layer (a temporary name).
    pub output: PathBuf,
    pub log: StageLog,
    pub bar: ProgressBar,
    pub ui: &'a Ui,
    pub settings: &'a RunSettings,
}

impl StageContext<'_> {
    /// The parent layer; stages other than install always have one.
    pub fn parent_path(&self) -> Result<&Path> {
        self.parent
            .map(|l| l.path.as_path())
            .ok_or_else(|| anyhow::anyhow!("this stage needs a previous layer to work on"))
    }
}
