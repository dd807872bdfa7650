//! The stage engine: computes each stage's cache key, reuses cached layers, runs the rest in
//! order, each on an overlay of the previous layer, and keeps a full log per stage.

pub mod cache;
pub mod remote_cache;
pub mod stage;

use crate::base::ui::Ui;
use crate::base::{log, secrets};
use crate::image::qemu_img;
use crate::upstream::{self, States, Upstream};
use anyhow::{Context, Result};
use cache::{Cache, KeyHasher, Layer, LayerMeta};
use stage::{LayerKind, RunSettings, Stage, StageContext};
use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;

/// The context of a stage's failure: which stage, and where its full log is (a rebuild's
/// report names it).
#[derive(Debug, thiserror::Error)]
#[error("stage {stage} ({kind}) failed; full log: {}{}", log.display(), kept_note(kept.as_deref()))]
pub struct StageFailed {
    /// 1-based, as the plan numbers stages.
    pub stage: usize,
    pub kind: &'static str,
    pub log: PathBuf,
    /// Where `run --keep-failed` kept the stage's layer.
    pub kept: Option<PathBuf>,
}

fn kept_note(kept: Option<&std::path::Path>) -> String {
    match kept {
        Some(path) => format!(
            "; its layer as the stage left it is kept at {0}: look inside with `pipeline boot --disk {0} --ssh` \
             (`pipeline cache gc` removes it)",
            path.display()
        ),
        None => String::new(),
    }
}

/// The options of one run that the engine itself uses.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub no_cache: bool,
    pub build_id: Option<String>,
    pub log_dir: Option<PathBuf>,
    /// A layer cache shared with other builders.
    pub cache_remote: Option<remote_cache::RemoteCacheOptions>,
    /// Keep a failed stage's layer (`run --keep-failed`) instead of removing it.
    pub keep_failed: bool,
}

/// A stage with its key, as `plan` shows it.
pub struct PlannedStage {
    pub index: usize,
    pub kind: &'static str,
    pub key: String,
    /// The key before upstream states: what the stage's upstream record is filed under.
    pub identity: String,
    pub status: Status,
    pub inputs: Vec<PathBuf>,
    /// The upstream states in the key.
    pub upstream: States,
    /// Why a stage that was built before runs again, when upstream is why.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Cached,
    ToRun,
}

/// What happened to one stage in a run, for summaries (`pipeline rebuild`).
#[derive(Debug, Clone)]
pub struct StageOutcome {
    pub pipeline: String,
    pub kind: &'static str,
    pub status: Status,
    /// An output stage's record (a publish names its repository, entry and revision).
    pub record: Option<serde_json::Value>,
}

pub struct Engine<'a> {
    pub cache: Cache,
    pub settings: RunSettings,
    pub options: EngineOptions,
    pub ui: &'a Ui,
    /// Every stage this engine ran or found cached, in order.
    pub outcomes: RefCell<Vec<StageOutcome>>,
    /// Upstream states probed by this engine: each upstream is asked once per run.
    probed: RefCell<HashMap<Upstream, String>>,
    client: OnceCell<upstream::Client>,
    remote: Option<remote_cache::RemoteCache>,
    /// Layers whose remote copy was damaged: uploaded again once built.
    damaged_remote: RefCell<std::collections::HashSet<String>>,
    /// The cache's run lock, held shared while this engine lives (none when it only plans).
    _in_use: Option<nix::fcntl::Flock<std::fs::File>>,
}

impl<'a> Engine<'a> {
    pub fn new(settings: RunSettings, options: EngineOptions, ui: &'a Ui) -> Result<Engine<'a>> {
        let remote = options.cache_remote.as_ref().map(remote_cache::RemoteCache::open).transpose()?;
        if let Some(why) = remote.as_ref().and_then(|r| r.not_uploading()) {
            ui.line(why);
        }
        let cache = Cache::open(&settings.work_dir)?;
        let in_use = cache.hold_for_run()?;
        let mut engine = Engine::with_cache(cache, settings, options, ui);
        engine.remote = remote;
        engine._in_use = Some(in_use);
        Ok(engine)
    }

    /// An engine that only plans: it creates nothing in the work directory.
    pub fn read_only(settings: RunSettings, options: EngineOptions, ui: &'a Ui) -> Result<Engine<'a>> {
        Ok(Engine::with_cache(Cache::open_read_only(&settings.work_dir)?, settings, options, ui))
    }

    fn with_cache(cache: Cache, settings: RunSettings, options: EngineOptions, ui: &'a Ui) -> Engine<'a> {
        Engine {
            cache,
            settings,
            options,
            ui,
            outcomes: Default::default(),
            probed: Default::default(),
            client: OnceCell::new(),
            remote: None,
            damaged_remote: Default::default(),
            _in_use: None,
        }
    }

    /// Resolves every stage's upstream inputs (see `Stage::resolve`); call once before `plan`.
    pub fn resolve(&self, stages: &[Box<dyn Stage>], read_only: bool) -> Result<()> {
        let ctx = stage::ResolveContext { settings: &self.settings, ui: self.ui, read_only };
        for stage in stages {
            stage.resolve(&ctx)?;
        }
        Ok(())
    }

    /// Each stage's key and whether a run would reuse it. Stages must be resolved; upstream
    /// states are probed here (each once per engine), or read from the records offline.
    pub fn plan(&self, stages: &[Box<dyn Stage>], base: Option<&Layer>) -> Result<Vec<PlannedStage>> {
        let mut parent_key = base.map(|l| l.key.clone());
        let mut planned = Vec::new();
        // Once a layer is rebuilt, everything above it is too: an overlay made on the old
        // layer must not be stacked on a new one, even under the same key.
        let mut rebuilt_below = false;
        for (index, stage) in stages.iter().enumerate() {
            let identity = self.identity(stage.as_ref(), index, parent_key.as_deref())?;
            let (key, upstream, reason) = self.upstream_key(stage.as_ref(), &identity)?;
            let cached = !self.options.no_cache
                && !rebuilt_below
                && match stage.layer_kind() {
                    LayerKind::Output => self.cache.output_record(&key).is_some_and(|r| stage.output_current(&r)),
                    _ => self.cache.get(&key).is_some(),
                };
            if stage.layer_kind() != LayerKind::Output {
                parent_key = Some(key.clone());
                rebuilt_below |= !cached;
            }
            planned.push(PlannedStage {
                index,
                kind: stage.kind(),
                key,
                identity,
                status: if cached { Status::Cached } else { Status::ToRun },
                inputs: stage.inputs(),
                upstream,
                reason: if cached { None } else { reason },
            });
        }
        Ok(planned)
    }

    /// The key of the stage's own inputs on its parent: configuration and files, or the
    /// build ID.
    fn identity(&self, stage: &dyn Stage, index: usize, parent: Option<&str>) -> Result<String> {
        let mut h = KeyHasher::new(parent, stage.kind());
        match &self.options.build_id {
            // Virter's --build-id: the ID stands in for the stage's own inputs; a different
            // parent still changes the key.
            Some(id) => {
                h.part("build-id", id.as_bytes());
                h.part("index", index.to_string().as_bytes());
            }
            None => {
                let config = secrets::keyed_config(&stage.config(), &self.cache.key_secret()?);
                h.part("config", serde_json::to_string(&config)?.as_bytes());
                for input in stage.inputs() {
                    h.path(&input)?;
                }
            }
        }
        Ok(h.finish())
    }

    /// The stage's key: its identity, and the current states of its upstreams when it has
    /// any; also those states and, when they differ from the last build's, what changed.
    fn upstream_key(&self, stage: &dyn Stage, identity: &str) -> Result<(String, States, Option<String>)> {
        if self.options.build_id.is_some() {
            return Ok((identity.to_string(), Vec::new(), None));
        }
        let record = self.cache.upstream_record(identity);
        let from_run = stage.upstream_found_in_run();
        let upstreams = match (&record, from_run) {
            (Some(r), true) => r.iter().map(|(u, _)| u.clone()).collect(),
            // Never built: the run finds the upstreams and the layer is filed under them.
            (None, true) => return Ok((upstream_keyed(identity, None), Vec::new(), None)),
            (_, false) => stage.upstream(),
        };
        if upstreams.is_empty() && !from_run {
            return Ok((identity.to_string(), Vec::new(), None));
        }
        let mut states = Vec::new();
        for u in upstreams {
            let state = self.upstream_state(&u, record.as_ref())?;
            states.push((u, state));
        }
        states.sort();
        let reason =
            record.as_ref().map(|r| upstream::changes(r, &states)).filter(|c| !c.is_empty()).map(|c| c.join("; "));
        Ok((upstream_keyed(identity, Some(&states)), states, reason))
    }

    /// One upstream's state: probed (once per engine), or offline the recorded one.
    fn upstream_state(&self, u: &Upstream, record: Option<&States>) -> Result<String> {
        if let Upstream::Resolved { state, .. } = u {
            return Ok(state.clone());
        }
        if self.settings.offline {
            let known = record.and_then(|r| r.iter().find(|(r, _)| r == u)).map(|(_, s)| s.clone());
            return Ok(known.unwrap_or_else(|| "unknown (offline, never checked)".to_string()));
        }
        if let Some(state) = self.probed.borrow().get(u) {
            return Ok(state.clone());
        }
        let client = match self.client.get() {
            Some(c) => c,
            None => {
                let _ = self.client.set(upstream::Client::new()?);
                self.client.get().context("no HTTP client")?
            }
        };
        self.ui.line(format!("checking {u}"));
        let state = u.probe(client).with_context(|| {
            format!("cannot check {u} for changes (with --offline the state of the last build is used)")
        })?;
        self.probed.borrow_mut().insert(u.clone(), state.clone());
        Ok(state)
    }

    /// Checks the stages against the run's settings (see `Stage::preflight`); call before
    /// `run`, for every pipeline of a chain before the first runs.
    pub fn preflight(&self, stages: &[Box<dyn Stage>]) -> Result<()> {
        stages.iter().try_for_each(|stage| stage.preflight(&self.settings))
    }

    /// Runs the preflighted stages on top of `base` (or from nothing, when the first is an
    /// install) and returns the last layer.
    pub fn run(&self, pipeline_name: &str, stages: &[Box<dyn Stage>], base: Option<Layer>) -> Result<Layer> {
        self.resolve(stages, false)?;
        let mut plan = self.plan(stages, base.as_ref())?;
        let log_dir = self.log_dir(pipeline_name);
        let total = stages.len();
        let mut current = base;
        // Layers are fetched from the remote cache only on layers that came from a cache:
        // one built here differs block by block from another builder's of the same key.
        let mut built_here = false;
        for i in 0..stages.len() {
            let (stage, planned) = (&stages[i], &plan[i]);
            crate::base::interrupt::check()?;
            let n = planned.index + 1;
            let label = format!("[{n}/{total}] {}", stage.kind());
            let short = &planned.key[..12];
            let fetched = match planned.status {
                Status::ToRun if stage.layer_kind() != LayerKind::Output && !built_here && !self.options.no_cache => {
                    self.fetch_remote(&planned.key, current.as_ref(), &label)
                }
                _ => None,
            };
            // A fetch cut short by a signal is no reason to build the layer.
            crate::base::interrupt::check()?;
            if planned.status == Status::Cached || fetched.is_some() {
                if stage.layer_kind() == LayerKind::Output {
                    self.cache.touch_output(&planned.key);
                } else {
                    self.cache.touch(&planned.key);
                    current = self.cache.get(&planned.key);
                    if fetched.is_none() {
                        self.share(current.as_ref(), &label);
                    }
                }
                self.cache.touch_upstream_record(&planned.identity);
                match &fetched {
                    Some(remote) => self.ui.line(format!("{label}: fetched from {remote} ({short})")),
                    None => self.ui.line(format!("{label}: cached ({short})")),
                }
                let record =
                    (stage.layer_kind() == LayerKind::Output).then(|| self.cache.output_record(&planned.key)).flatten();
                self.outcomes.borrow_mut().push(StageOutcome {
                    pipeline: pipeline_name.into(),
                    kind: stage.kind(),
                    status: Status::Cached,
                    record,
                });
                continue;
            }
            let log_path = log_dir.join(format!("{n:02}-{}.log", stage.kind()));
            let log = log::StageLog::create(&log_path)?;
            log.line(format!("stage {n} of {total}: {} key {}", stage.kind(), planned.key));
            log.line(format!(
                "configuration: {}",
                serde_json::to_string_pretty(&secrets::redact_config(&stage.config()))?
            ));
            if !planned.upstream.is_empty() {
                log.line(format!("upstream: {}", describe(&planned.upstream)));
            }
            if let Some(reason) = &planned.reason {
                log.line(format!("runs because {reason}"));
                self.ui.line(format!("{label}: {reason}"));
            }
            self.ui.line(format!("{label}: running ({short}), log {}", log_path.display()));
            let started = std::time::Instant::now();
            let temp = self.cache.temp_path(&planned.key);
            let outcome = self.run_one(pipeline_name, stage.as_ref(), planned, current.as_ref(), &temp, log.clone());
            match outcome {
                Ok(next) => {
                    self.ui.line(format!("{label}: done in {}", humantime::format_duration(round(started.elapsed()))));
                    let record = (stage.layer_kind() == LayerKind::Output)
                        .then(|| self.cache.output_record(&planned.key))
                        .flatten();
                    self.outcomes.borrow_mut().push(StageOutcome {
                        pipeline: pipeline_name.into(),
                        kind: stage.kind(),
                        status: Status::ToRun,
                        record,
                    });
                    if let Some(next) = next {
                        // A stage that found its upstreams as it ran is filed under them: the
                        // stages above it are keyed on that.
                        if next.key != planned.key {
                            self.rekey(stages, &mut plan, i + 1, &next.key)?;
                        }
                        built_here = true;
                        self.share(Some(&next), &label);
                        current = Some(next);
                    }
                }
                Err(e) => {
                    let stopped = crate::base::interrupt::stopped_by();
                    let kept = match self.options.keep_failed && stopped.is_none() && temp.exists() {
                        true => self.keep_failed(pipeline_name, stage.as_ref(), n, current.as_ref(), &temp, &log),
                        false => None,
                    };
                    let _ = std::fs::remove_file(&temp);
                    if let Some(signal) = stopped {
                        // What failed after the signal (a killed appliance) is its effect, not news.
                        log.line(format!("STOPPED by {signal}: {e:#}"));
                        anyhow::bail!(
                            "stage {n} ({}) stopped by {signal}; its temporary layer was removed (log: {})",
                            stage.kind(),
                            log_path.display()
                        );
                    }
                    log.line(format!("FAILED: {e:#}"));
                    return Err(e.context(StageFailed { stage: n, kind: stage.kind(), log: log_path, kept }));
                }
            }
        }
        current.context("the pipeline produced no layer")
    }

    /// Moves a failed stage's temporary layer to the cache's kept failures: where it went,
    /// or none (said in the log) when it cannot be kept.
    fn keep_failed(
        &self,
        pipeline_name: &str,
        stage: &dyn Stage,
        n: usize,
        parent: Option<&Layer>,
        temp: &std::path::Path,
        log: &log::StageLog,
    ) -> Option<PathBuf> {
        let record = cache::KeptFailure {
            pipeline: pipeline_name.to_string(),
            stage: n,
            kind: stage.kind().to_string(),
            parent: parent.map(|p| p.key.clone()),
            log: log.path().to_path_buf(),
            failed: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        match self.cache.keep_failed(temp, &record) {
            Ok(kept) => {
                log.line(format!("the failed layer is kept at {}", kept.display()));
                Some(kept)
            }
            Err(e) => {
                log.line(format!("the failed layer could not be kept: {e:#}"));
                None
            }
        }
    }

    /// The layer `key` from the remote cache into the local one, when it has it: the remote
    /// cache's URL. A damaged copy is named and the stage runs (and uploads its layer anew).
    fn fetch_remote(&self, key: &str, parent: Option<&Layer>, label: &str) -> Option<String> {
        let remote = self.remote.as_ref()?;
        match remote.fetch(&self.cache, key, parent, self.ui) {
            Ok(remote_cache::Fetched::Layer(_)) => Some(remote.url()),
            Ok(remote_cache::Fetched::Absent) => None,
            Ok(remote_cache::Fetched::OtherParent) => {
                self.ui.line(format!(
                    "{label}: the remote cache's copy was built on another build of the layer below; building it"
                ));
                None
            }
            Ok(remote_cache::Fetched::Damaged(why)) => {
                self.ui.line(format!("{label}: not using the remote cache's copy: {why}; building it"));
                self.damaged_remote.borrow_mut().insert(key.to_string());
                None
            }
            Err(e) => {
                self.ui.line(format!("{label}: cannot read the remote cache: {e:#}; building it"));
                None
            }
        }
    }

    /// Whether the remote cache (if any) has the layer `key`.
    pub fn remote_has(&self, key: &str) -> Result<bool> {
        match &self.remote {
            Some(remote) => remote.has(key),
            None => Ok(false),
        }
    }

    /// Uploads a layer to the remote cache, if there is one and it lacks the layer. The
    /// build does not depend on it: a failure is a warning.
    fn share(&self, layer: Option<&Layer>, label: &str) {
        let (Some(remote), Some(layer)) = (&self.remote, layer) else { return };
        let replace = self.damaged_remote.borrow().contains(&layer.key);
        if let Err(e) = remote.upload(&self.cache, layer, self.ui, replace) {
            self.ui.line(format!("{label}: warning: cannot upload the layer to {}: {e:#}", remote.url()));
        }
    }

    /// Recomputes the keys of `plan[from..]` on a parent key other than the planned one. They
    /// all run (a layer below them was just built), so only the keys change.
    fn rekey(&self, stages: &[Box<dyn Stage>], plan: &mut [PlannedStage], from: usize, parent: &str) -> Result<()> {
        let mut parent = parent.to_string();
        for i in from..stages.len() {
            let stage = stages[i].as_ref();
            let identity = self.identity(stage, i, Some(&parent))?;
            let (key, upstream, _) = self.upstream_key(stage, &identity)?;
            if stage.layer_kind() != LayerKind::Output {
                parent = key.clone();
            }
            plan[i] = PlannedStage { key, identity, upstream, reason: None, inputs: stage.inputs(), ..plan[i] };
        }
        Ok(())
    }

    fn run_one(
        &self,
        pipeline_name: &str,
        stage: &dyn Stage,
        planned: &PlannedStage,
        parent: Option<&Layer>,
        temp: &std::path::Path,
        log: log::StageLog,
    ) -> Result<Option<Layer>> {
        let _ = std::fs::remove_file(temp);
        if stage.layer_kind() == LayerKind::Overlay {
            let parent = parent.context("this stage needs a previous layer")?;
            qemu_img::create_overlay(&parent.path, temp, stage.overlay_cluster_size())?;
        }
        let bar = self.ui.spinner(&format!("{} {}", planned.index + 1, stage.kind()));
        let mut ctx = StageContext {
            parent,
            output: temp.to_path_buf(),
            log,
            bar: bar.clone(),
            ui: self.ui,
            settings: &self.settings,
        };
        let result = stage.run(&mut ctx);
        bar.finish_and_clear();
        let result = result?;
        if stage.layer_kind() == LayerKind::Output {
            self.cache.save_output_record(&planned.key, &result.record.unwrap_or(serde_json::Value::Null))?;
            return Ok(None);
        }
        let (key, upstream) = match (stage.upstream_found_in_run(), result.upstream) {
            (true, Some(mut states)) if self.options.build_id.is_none() => {
                states.sort();
                ctx.log.line(format!("upstream: {}", describe(&states)));
                self.cache.save_upstream_record(&planned.identity, &states)?;
                (upstream_keyed(&planned.identity, Some(&states)), states)
            }
            _ => {
                // Offline, the states are the recorded ones (or unknown): nothing new to keep.
                if !planned.upstream.is_empty() && !self.settings.offline {
                    self.cache.save_upstream_record(&planned.identity, &planned.upstream)?;
                }
                (planned.key.clone(), planned.upstream.clone())
            }
        };
        let meta = LayerMeta {
            key,
            parent: parent.map(|p| p.key.clone()),
            pipeline: pipeline_name.to_string(),
            stage_index: planned.index,
            kind: stage.kind().to_string(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            inspection: result.inspection,
            upstream,
            origin: Some(format!("{:032x}", rand::random::<u128>())),
        };
        // --no-cache asks for this build, even over one that is there.
        let layer =
            if self.options.no_cache { self.cache.replace(temp, &meta)? } else { self.cache.commit(temp, &meta)? };
        Ok(Some(layer))
    }

    fn log_dir(&self, pipeline_name: &str) -> PathBuf {
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(':', "");
        match &self.options.log_dir {
            Some(dir) => dir.join(pipeline_name).join(stamp),
            None => self.settings.work_dir.join("logs").join(pipeline_name).join(stamp),
        }
    }
}

/// States as one log line: `upstream state, upstream state`.
fn describe(states: &States) -> String {
    states.iter().map(|(u, s)| format!("{u} {s}")).collect::<Vec<_>>().join(", ")
}

/// A key that also holds upstream states (`None`: a stage that finds its upstreams as it
/// runs and has not run yet).
fn upstream_keyed(identity: &str, states: Option<&States>) -> String {
    let mut h = KeyHasher::new(Some(identity), "upstream");
    match states {
        Some(states) => {
            for (u, state) in states {
                h.part("upstream", serde_json::to_string(u).unwrap_or_default().as_bytes());
                h.part("state", state.as_bytes());
            }
        }
        None => h.part("upstream", b"found by the run"),
    }
    h.finish()
}

fn round(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(d.as_secs())
}

#[cfg(test)]
mod tests;
