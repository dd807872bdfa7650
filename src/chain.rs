//! A pipeline and the pipelines it starts from (`from = { pipeline }`): each file loaded, its
//! stages built (which checks its files, names and sizes) and the whole chain cycle-checked
//! once per command. `run`, `plan`, `validate` and `rebuild` all work on a [`Chain`].

use crate::bad_input;
use crate::engine::cache::{short_key, Layer};
use crate::engine::stage::{LayerKind, Stage};
use crate::engine::{Engine, PlannedStage, Status};
use crate::pipeline::{self, Pipeline};
use crate::stages;
use anyhow::Result;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// One pipeline file of a chain, loaded and built.
pub struct Link {
    pub pipeline: Pipeline,
    /// Empty when the pipeline is not configured (see [`Loader::lenient`]).
    pub stages: Vec<Box<dyn Stage>>,
    /// Why the pipeline cannot run as it stands: its required values are unset.
    pub not_configured: Option<String>,
}

/// A pipeline and its bases: the first link starts from an install, an image or a
/// repository entry; each next one from the last layer of the link before it.
pub struct Chain {
    links: Vec<Rc<Link>>,
    /// `run --until`: how many of the last pipeline's stages run (all when `None`).
    until: Option<usize>,
}

/// Loads chains, each file once however many chains it is part of (a rebuild's pipelines
/// share their bases).
#[derive(Default)]
pub struct Loader {
    loaded: HashMap<PathBuf, Rc<Link>>,
    /// Load pipelines whose required values are unset (not building their stages) instead
    /// of refusing them: a rebuild reports and skips them.
    lenient: bool,
}

impl Loader {
    /// A loader for a rebuild: a pipeline that is not configured is loaded, not refused.
    pub fn lenient() -> Loader {
        Loader { lenient: true, ..Default::default() }
    }

    /// The chain that ends with `file`; `sets` (`--set KEY=VALUE`) apply to that file only.
    /// A chain that comes back to a file already in it is bad input naming the cycle.
    pub fn chain(&mut self, file: &Path, sets: &[String]) -> Result<Chain> {
        let mut seen: Vec<PathBuf> = Vec::new();
        let mut links = Vec::new();
        let mut next = Some(file.to_path_buf());
        while let Some(path) = next {
            let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            if let Some(start) = seen.iter().position(|c| c == &canonical) {
                let names: Vec<String> =
                    seen[start..].iter().chain([&canonical]).map(|c| c.display().to_string()).collect();
                return Err(bad_input!(
                    "{}: from = {{ pipeline }} makes a cycle: {}; a pipeline cannot start from itself",
                    file.display(),
                    names.join(" -> ")
                ));
            }
            let sets = if links.is_empty() { sets } else { &[] };
            let link = self.link(&path, &canonical, sets)?;
            next = link.pipeline.file.from.as_ref().and_then(|f| f.pipeline.as_ref()).map(|b| link.pipeline.resolve(b));
            seen.push(canonical);
            links.push(link);
        }
        links.reverse();
        Ok(Chain { links, until: None })
    }

    fn link(&mut self, path: &Path, canonical: &Path, sets: &[String]) -> Result<Rc<Link>> {
        // A file loaded with `--set` differs from the file on disk: never shared.
        if sets.is_empty() {
            if let Some(link) = self.loaded.get(canonical) {
                return Ok(link.clone());
            }
        }
        let pipeline = pipeline::load(path, sets)?;
        // Unset values would only make the stages fail to build, with a less helpful message.
        let not_configured = pipeline.not_configured();
        let stages = match &not_configured {
            Some(why) if !self.lenient => return Err(bad_input!("{why}")),
            Some(_) => Vec::new(),
            None => stages::build(&pipeline)?,
        };
        let link = Rc::new(Link { pipeline, stages, not_configured });
        if sets.is_empty() {
            self.loaded.insert(canonical.to_path_buf(), link.clone());
        }
        Ok(link)
    }
}

/// One stage of a plan, with the pipeline it belongs to.
pub struct PlannedLink<'c> {
    pub pipeline: &'c Pipeline,
    /// 0 for the pipeline the chain ends with, 1 for its base, and so on.
    pub depth: usize,
    pub stages: Vec<PlannedStage>,
}

impl PlannedLink<'_> {
    /// The plan as `pipeline plan --json` prints it: an object per stage (docs/commands.md
    /// documents the fields).
    pub fn json(&self) -> Vec<serde_json::Value> {
        self.stages
            .iter()
            .map(|s| {
                let upstream: Vec<serde_json::Value> = s
                    .upstream
                    .iter()
                    .map(|(u, state)| serde_json::json!({ "upstream": u.to_string(), "state": state }))
                    .collect();
                serde_json::json!({
                    "pipeline": self.pipeline.name(),
                    "depth": self.depth,
                    "stage": s.index + 1,
                    "kind": s.kind,
                    "key": s.key,
                    "status": match s.status { Status::Cached => "cached", Status::ToRun => "to-run" },
                    "reason": s.reason,
                    "inputs": s.inputs,
                    "upstream": upstream,
                })
            })
            .collect()
    }

    /// The plan as `pipeline plan` prints it: a line per stage with its number, kind, short
    /// key, status and why; stages of a base pipeline prefixed with its name.
    pub fn lines(&self) -> Vec<String> {
        let name = if self.depth > 0 { format!("{}:", self.pipeline.name()) } else { String::new() };
        self.stages
            .iter()
            .map(|s| {
                let status = match s.status {
                    Status::Cached => "cached",
                    Status::ToRun => "to run",
                };
                let mut notes = Vec::new();
                if let Some(reason) = &s.reason {
                    notes.push(reason.clone());
                }
                if !s.inputs.is_empty() {
                    let inputs: Vec<String> = s.inputs.iter().map(|i| i.display().to_string()).collect();
                    notes.push(format!("reads {}", inputs.join(", ")));
                }
                format!(
                    "{name}{:>2}  {:<10} {}  {:<7} {}",
                    s.index + 1,
                    s.kind,
                    short_key(&s.key),
                    status,
                    notes.join("; ")
                )
            })
            .collect()
    }
}

impl Chain {
    pub fn load(file: &Path, sets: &[String]) -> Result<Chain> {
        Loader::default().chain(file, sets)
    }

    /// The pipeline the chain ends with (the one named on the command line).
    pub fn pipeline(&self) -> &Pipeline {
        &self.links.last().expect("a chain has a link").pipeline
    }

    pub fn links(&self) -> impl Iterator<Item = &Link> {
        self.links.iter().map(|l| l.as_ref())
    }

    /// Why the chain cannot run: a pipeline of it (its own or a base's) is not configured.
    /// Only a [`Loader::lenient`] loads such a chain.
    pub fn not_configured(&self) -> Option<&str> {
        self.links().find_map(|l| l.not_configured.as_deref())
    }

    /// Checks every stage against the run's settings before any of them runs, so bad input
    /// in the last pipeline writes nothing.
    pub fn preflight(&self, engine: &Engine) -> Result<()> {
        self.links().try_for_each(|link| engine.preflight(&link.stages))
    }

    /// Runs each pipeline on the last layer of the one before; returns the last layer.
    /// [`Chain::preflight`] first.
    pub fn run(&self, engine: &Engine) -> Result<Layer> {
        let mut base = None;
        for (i, link) in self.links.iter().enumerate() {
            if i > 0 {
                let on = &self.links[i - 1].pipeline;
                engine.ui.line(format!("{}: starting from pipeline {}", link.pipeline.name(), on.name()));
            }
            base = Some(engine.run(link.pipeline.name(), self.stages(i), base)?);
        }
        Ok(base.expect("a chain has a link"))
    }

    /// The stages of link `i` that run: all, but for [`Chain::stop_after`] on the last.
    fn stages(&self, i: usize) -> &[Box<dyn Stage>] {
        let stages = &self.links[i].stages[..];
        match self.until {
            Some(n) if i + 1 == self.links.len() => &stages[..n],
            _ => stages,
        }
    }

    /// `run --until STAGE` (and `boot --stage`, named by `option`): the chain ends after
    /// that stage of the pipeline named on the command line, given by its number in
    /// `pipeline plan` (from 1) or by its kind (the first stage of that kind); `run` and
    /// `plan` stop there. Naming no stage is bad input listing them.
    pub fn stop_after(&mut self, stage: &str, option: &str) -> Result<()> {
        let link = self.links.last().expect("a chain has a link");
        let found = match stage.parse::<usize>() {
            Ok(n) => (1..=link.stages.len()).contains(&n).then_some(n),
            Err(_) => link.stages.iter().position(|s| s.kind() == stage).map(|i| i + 1),
        };
        let Some(n) = found else {
            let stages: Vec<String> =
                link.stages.iter().enumerate().map(|(i, s)| format!("{} {}", i + 1, s.kind())).collect();
            return Err(bad_input!(
                "{option} {stage}: {} has no such stage; give a number or a kind of its stages: {}",
                link.pipeline.path.display(),
                stages.join(", ")
            ));
        };
        self.until = Some(n);
        Ok(())
    }

    /// What a run would do, base first, without building anything; and the key of the
    /// chain's last layer (none when it makes none).
    pub fn plan(&self, engine: &Engine) -> Result<(Vec<PlannedLink<'_>>, Option<String>)> {
        let mut planned = Vec::new();
        let mut last: Option<String> = None;
        for (i, link) in self.links.iter().enumerate() {
            let base = last.clone().map(|key| Layer { path: engine.cache.layer_path(&key), key });
            engine.resolve(self.stages(i), true)?;
            let stages = engine.plan(self.stages(i), base.as_ref())?;
            for (s, stage) in stages.iter().zip(self.stages(i)) {
                if stage.layer_kind() != LayerKind::Output {
                    last = Some(s.key.clone());
                }
            }
            planned.push(PlannedLink { pipeline: &link.pipeline, depth: self.links.len() - 1 - i, stages });
        }
        Ok((planned, last))
    }
}
