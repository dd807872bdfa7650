//! The stage engine: computes each stage's cache key, reuses cached layers, runs the rest in
//! order, each on an overlay of the previous layer, and keeps a full log per stage.

pub mod cache;
pub mod log;
pub mod secrets;
pub mod stage;
pub mod ui;

use crate::image::qemu_img;
use anyhow::{Context, Result};
use cache::{Cache, KeyHasher, Layer, LayerMeta};
use stage::{LayerKind, RunSettings, Stage, StageContext};
use std::path::PathBuf;
use ui::Ui;

/// The options of one run that the engine itself uses.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub no_cache: bool,
    pub build_id: Option<String>,
    pub log_dir: Option<PathBuf>,
}

/// A stage with its key, as `plan` shows it.
pub struct PlannedStage {
    pub index: usize,
    pub kind: &'static str,
    pub key: String,
    pub status: Status,
    pub inputs: Vec<PathBuf>,
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
    pub outcomes: std::cell::RefCell<Vec<StageOutcome>>,
}

impl<'a> Engine<'a> {
    pub fn new(settings: RunSettings, options: EngineOptions, ui: &'a Ui) -> Result<Engine<'a>> {
        Ok(Engine { cache: Cache::open(&settings.work_dir)?, settings, options, ui, outcomes: Default::default() })
    }

    /// An engine that only plans: it creates nothing in the work directory.
    pub fn read_only(settings: RunSettings, options: EngineOptions, ui: &'a Ui) -> Result<Engine<'a>> {
        Ok(Engine {
            cache: Cache::open_read_only(&settings.work_dir)?,
            settings,
            options,
            ui,
            outcomes: Default::default(),
        })
    }

    /// Resolves every stage's upstream inputs (see `Stage::resolve`); call once before `plan`.
    pub fn resolve(&self, stages: &[Box<dyn Stage>], read_only: bool) -> Result<()> {
        let ctx = stage::ResolveContext { settings: &self.settings, ui: self.ui, read_only };
        for stage in stages {
            stage.resolve(&ctx)?;
        }
        Ok(())
    }

    /// Each stage's key and whether a run would reuse it. Pure: stages must be resolved.
    pub fn plan(&self, stages: &[Box<dyn Stage>], base: Option<&Layer>) -> Result<Vec<PlannedStage>> {
        let mut parent_key = base.map(|l| l.key.clone());
        let mut planned = Vec::new();
        // Once a layer is rebuilt, everything above it is too: an overlay made on the old
        // layer must not be stacked on a new one, even under the same key.
        let mut rebuilt_below = false;
        for (index, stage) in stages.iter().enumerate() {
            let key = self.key(stage.as_ref(), index, parent_key.as_deref())?;
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
                status: if cached { Status::Cached } else { Status::ToRun },
                inputs: stage.inputs(),
            });
        }
        Ok(planned)
    }

    fn key(&self, stage: &dyn Stage, index: usize, parent: Option<&str>) -> Result<String> {
        let mut h = KeyHasher::new(parent, stage.kind());
        match &self.options.build_id {
            // Virter's --build-id: the ID stands in for the stage's own inputs; a different
            // parent still changes the key.
            Some(id) => {
                h.part("build-id", id.as_bytes());
                h.part("index", index.to_string().as_bytes());
            }
            None => {
                h.part("config", serde_json::to_string(&stage.config())?.as_bytes());
                for input in stage.inputs() {
                    h.path(&input)?;
                }
            }
        }
        Ok(h.finish())
    }

    /// Runs the stages on top of `base` (or from nothing, when the first is an install) and
    /// returns the last layer.
    pub fn run(&self, pipeline_name: &str, stages: &[Box<dyn Stage>], base: Option<Layer>) -> Result<Layer> {
        for stage in stages {
            stage.preflight(&self.settings)?;
        }
        self.resolve(stages, false)?;
        let plan = self.plan(stages, base.as_ref())?;
        let log_dir = self.log_dir(pipeline_name);
        let total = stages.len();
        let mut current = base;
        for (stage, planned) in stages.iter().zip(&plan) {
            crate::interrupt::check()?;
            let n = planned.index + 1;
            let label = format!("[{n}/{total}] {}", stage.kind());
            let short = &planned.key[..12];
            if planned.status == Status::Cached {
                if stage.layer_kind() == LayerKind::Output {
                    self.cache.touch_output(&planned.key);
                } else {
                    self.cache.touch(&planned.key);
                    current = self.cache.get(&planned.key);
                }
                self.ui.line(format!("{label}: cached ({short})"));
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
                        current = Some(next);
                    }
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&temp);
                    if let Some(signal) = crate::interrupt::stopped_by() {
                        // What failed after the signal (a killed appliance) is its effect, not news.
                        log.line(format!("STOPPED by {signal}: {e:#}"));
                        anyhow::bail!(
                            "stage {n} ({}) stopped by {signal}; its temporary layer was removed (log: {})",
                            stage.kind(),
                            log_path.display()
                        );
                    }
                    log.line(format!("FAILED: {e:#}"));
                    return Err(e.context(format!(
                        "stage {n} ({}) failed; full log: {}",
                        stage.kind(),
                        log_path.display()
                    )));
                }
            }
        }
        current.context("the pipeline produced no layer")
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
        let meta = LayerMeta {
            key: planned.key.clone(),
            parent: parent.map(|p| p.key.clone()),
            pipeline: pipeline_name.to_string(),
            stage_index: planned.index,
            kind: stage.kind().to_string(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            inspection: result.inspection,
        };
        Ok(Some(self.cache.commit(temp, &meta)?))
    }

    fn log_dir(&self, pipeline_name: &str) -> PathBuf {
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(':', "");
        match &self.options.log_dir {
            Some(dir) => dir.join(pipeline_name).join(stamp),
            None => self.settings.work_dir.join("logs").join(pipeline_name).join(stamp),
        }
    }
}

fn round(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(d.as_secs())
}

#[cfg(test)]
mod tests;
