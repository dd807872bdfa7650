//! `pipeline rebuild`: the pipelines under some paths as one graph — an edge from a pipeline
//! to each pipeline it is built on (`from = { pipeline }`, or a local repository entry that
//! the other pipeline's publish stage writes) — and the order that builds every base before
//! what stands on it. Running them, the lock and the report are in [`run`]. Several builders
//! split the graph with `--shard I/N` (see [`Shard`]).

pub mod draw;
pub mod run;

use crate::bad_input;
use crate::chain::{Chain, Loader};
use crate::pipeline::{InstallConfig, Pipeline, StageConfig};
use crate::repo::location::Location;
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One pipeline file, its chain, and the pipelines (indices into [`Graph::nodes`]) it is
/// built on.
pub struct Node {
    pub path: PathBuf,
    pub chain: Chain,
    pub bases: Vec<usize>,
}

impl Node {
    pub fn pipeline(&self) -> &Pipeline {
        self.chain.pipeline()
    }
}

pub struct Graph {
    pub nodes: Vec<Node>,
    /// Indices of `nodes`, every base before the pipelines built on it; ties by name.
    pub order: Vec<usize>,
}

/// One builder's share of the pipelines, `--shard I/N` (I from 1): a pipeline belongs to
/// the shard its name hashes to, so every builder agrees without talking to the others and a
/// pipeline stays with its builder from night to night.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    pub fn parse(text: &str) -> Result<Shard> {
        let parsed = text
            .split_once('/')
            .and_then(|(i, n)| Some((i.trim().parse::<u64>().ok()?, n.trim().parse::<u64>().ok()?)));
        match parsed {
            Some((index, count)) if (1..=count).contains(&index) => Ok(Shard { index, count }),
            _ => Err(bad_input!("--shard {text}: give I/N with 1 <= I <= N, e.g. --shard 2/3")),
        }
    }

    /// The shard (from 1) that builds the pipeline named `name`.
    pub fn of(name: &str, count: u64) -> u64 {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(name.as_bytes());
        u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % count + 1
    }

    pub fn owns(&self, name: &str) -> bool {
        Shard::of(name, self.count) == self.index
    }
}

/// The pipeline files under `paths`: files as given, directories searched recursively for
/// `.toml` files that have a `[pipeline]` table (provisioning and seed files do not).
pub fn find_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut found = BTreeSet::new();
    for path in paths {
        if path.is_file() {
            found.insert(canonical(path));
        } else if path.is_dir() {
            walk(path, &mut found)?;
        } else {
            return Err(bad_input!("rebuild: {}: no such file or directory", path.display()));
        }
    }
    if found.is_empty() {
        let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(bad_input!("rebuild: no pipeline files (TOML with a [pipeline] table) under {}", shown.join(", ")));
    }
    Ok(found.into_iter().collect())
}

fn walk(dir: &Path, found: &mut BTreeSet<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| bad_input!("rebuild: cannot read {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, found)?;
        } else if path.extension().is_some_and(|e| e == "toml") && is_pipeline_file(&path) {
            found.insert(canonical(&path));
        }
    }
    Ok(())
}

/// An existing file's path with symlinks resolved: how nodes and `from = { pipeline }` are compared.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A TOML file with a `[pipeline]` table; unreadable or invalid TOML counts as a pipeline
/// file, so that loading it reports what is wrong.
fn is_pipeline_file(path: &Path) -> bool {
    match std::fs::read_to_string(path).map(|t| t.parse::<toml::Table>()) {
        Ok(Ok(table)) => table.get("pipeline").is_some_and(toml::Value::is_table),
        _ => true,
    }
}

/// Loads every file and its chain, each file once (bad input in any of them stops
/// everything before anything runs), finds the edges, and orders the graph; a cycle is bad
/// input that names it.
pub fn graph(files: &[PathBuf]) -> Result<Graph> {
    let mut loader = Loader::lenient();
    let mut nodes = Vec::new();
    for path in files {
        nodes.push(Node { path: path.clone(), chain: loader.chain(path, &[])?, bases: Vec::new() });
    }
    let publishes: Vec<Vec<(Location, String)>> = nodes.iter().map(|n| published_entries(n.pipeline())).collect();
    for i in 0..nodes.len() {
        let mut bases = BTreeSet::new();
        let p = nodes[i].pipeline();
        if let Some(other) = p.file.from.as_ref().and_then(|f| f.pipeline.as_ref()) {
            let other = canonical(&p.resolve(other));
            if let Some(j) = nodes.iter().position(|n| n.path == other) {
                bases.insert(j);
            }
        }
        for (repo, name) in consumed_entries(p) {
            for (j, entries) in publishes.iter().enumerate() {
                if j != i && entries.iter().any(|(r, n)| *r == repo && *n == name) {
                    bases.insert(j);
                }
            }
        }
        nodes[i].bases = bases.into_iter().collect();
    }
    let order = order(&nodes)?;
    Ok(Graph { nodes, order })
}

/// The (repository, entry name) pairs a pipeline's publish stages write.
fn published_entries(p: &Pipeline) -> Vec<(Location, String)> {
    p.file
        .stages
        .iter()
        .filter_map(|s| match s {
            StageConfig::Publish(c) => Some((Location::parse(&c.repo, &p.dir).ok()?, c.name.clone())),
            _ => None,
        })
        .collect()
}

/// The repository entries a pipeline starts from (`from = { repo, name }`, or an install
/// with `method = "image"` and `repo`).
fn consumed_entries(p: &Pipeline) -> Vec<(Location, String)> {
    let mut out = Vec::new();
    let mut add = |repo: &Option<String>, name: &Option<String>| {
        if let (Some(repo), Some(name)) = (repo, name) {
            if let Ok(location) = Location::parse(repo, &p.dir) {
                out.push((location, name.clone()));
            }
        }
    };
    if let Some(from) = &p.file.from {
        add(&from.repo, &from.name);
    }
    for stage in &p.file.stages {
        if let StageConfig::Install(InstallConfig::Image(c)) = stage {
            add(&c.repo, &c.name);
        }
    }
    out
}

/// Kahn's algorithm, taking the ready pipeline with the smallest name first so that the
/// order is stable from night to night.
fn order(nodes: &[Node]) -> Result<Vec<usize>> {
    let mut waiting: Vec<usize> = nodes.iter().map(|n| n.bases.len()).collect();
    let mut done = vec![false; nodes.len()];
    let mut order = Vec::new();
    while order.len() < nodes.len() {
        let next = (0..nodes.len())
            .filter(|&i| !done[i] && waiting[i] == 0)
            .min_by(|&a, &b| nodes[a].pipeline().name().cmp(nodes[b].pipeline().name()).then(a.cmp(&b)));
        let Some(next) = next else {
            return Err(bad_input!("rebuild: the pipelines build on each other in a cycle: {}", cycle(nodes, &done)));
        };
        done[next] = true;
        order.push(next);
        for (i, n) in nodes.iter().enumerate() {
            if n.bases.contains(&next) {
                waiting[i] -= 1;
            }
        }
    }
    Ok(order)
}

/// One cycle among the pipelines not yet ordered, as `a -> b -> a` with file names.
fn cycle(nodes: &[Node], done: &[bool]) -> String {
    let start = (0..nodes.len()).find(|&i| !done[i]).unwrap_or(0);
    let mut path = vec![start];
    let mut current = start;
    // Every node left has a base that is left too, so this always finds one.
    while let Some(&base) = nodes[current].bases.iter().find(|&&b| !done[b]) {
        if let Some(at) = path.iter().position(|&p| p == base) {
            let names: Vec<String> =
                path[at..].iter().chain([&base]).map(|&i| nodes[i].path.display().to_string()).collect();
            return names.join(" -> ");
        }
        path.push(base);
        current = base;
    }
    nodes[start].path.display().to_string()
}

/// What a rebuild did, kept in WORK_DIR/reports/ and written to `--report FILE.json` (the
/// docs/nightly.md documents the schema).
#[derive(Debug, Serialize)]
pub struct Report {
    pub started: String,
    pub duration_seconds: f64,
    /// `ok` when every pipeline succeeded, else `failed`.
    pub result: String,
    pub pipelines: Vec<PipelineReport>,
}

#[derive(Debug, Serialize)]
pub struct PipelineReport {
    pub name: String,
    pub file: PathBuf,
    /// `ok`, `failed`, `skipped` (a base failed) or `not-configured`.
    pub result: String,
    /// Why it failed or was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The full log of the stage that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
    pub stages_cached: usize,
    pub stages_run: usize,
    pub published: Vec<serde_json::Value>,
    pub duration_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("version = 1\n{body}")).unwrap();
        path
    }

    /// A publish stage writing entry `name` into DIR/repo (a publish's `repo` is relative to
    /// the working directory, so the tests give it whole).
    fn publish(dir: &Path, name: &str) -> String {
        format!("[[stages]]\n[stages.publish]\nrepo = \"{}/repo\"\nname = \"{name}\"\n", dir.display())
    }
    const SYSPREP: &str = "[[stages]]\n[stages.sysprep]\n";

    #[test]
    fn bases_come_first_through_pipelines_and_repository_entries() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for image in ["x.qcow2", "y.qcow2"] {
            std::fs::write(d.join(image), b"").unwrap();
        }
        write(
            d,
            "base.toml",
            &format!("from = {{ image = \"x.qcow2\" }}\n[pipeline]\nname = \"base\"\n{}", publish(d, "base")),
        );
        write(
            d,
            "a-child.toml",
            &format!("from = {{ pipeline = \"base.toml\" }}\n[pipeline]\nname = \"a-child\"\n{SYSPREP}"),
        );
        write(
            d,
            "b-child.toml",
            &format!("from = {{ repo = \"repo\", name = \"base\" }}\n[pipeline]\nname = \"b-child\"\n{SYSPREP}"),
        );
        write(d, "lone.toml", &format!("from = {{ image = \"y.qcow2\" }}\n[pipeline]\nname = \"0-lone\"\n{SYSPREP}"));
        std::fs::write(d.join("not-a-pipeline.toml"), "version = 1\n[[steps]]\n").unwrap();
        let files = find_files(&[d.to_path_buf()]).unwrap();
        assert_eq!(files.len(), 4, "{files:?}");
        let g = graph(&files).unwrap();
        let names: Vec<&str> = g.order.iter().map(|&i| g.nodes[i].pipeline().name()).collect();
        assert_eq!(names, ["0-lone", "base", "a-child", "b-child"]);
    }

    #[test]
    fn shards_split_pipelines_by_name_and_bad_ones_are_bad_input() {
        let names: Vec<String> = (0..60).map(|i| format!("pipeline-{i}")).collect();
        let shards: Vec<Shard> = (1..=3).map(|i| Shard::parse(&format!("{i}/3")).unwrap()).collect();
        for name in &names {
            assert_eq!(shards.iter().filter(|s| s.owns(name)).count(), 1, "{name} has exactly one builder");
        }
        for s in &shards {
            assert!(names.iter().filter(|n| s.owns(n)).count() >= 10, "no shard is left nearly idle");
        }
        for bad in ["0/3", "4/3", "1/0", "x/2", "2"] {
            assert_eq!(crate::base::error::exit_code(&Shard::parse(bad).unwrap_err()), 2, "{bad}");
        }
    }

    #[test]
    fn a_cycle_is_bad_input_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "one.toml",
            &format!("from = {{ repo = \"repo\", name = \"two\" }}\n[pipeline]\nname = \"one\"\n{}", publish(d, "one")),
        );
        write(
            d,
            "two.toml",
            &format!("from = {{ repo = \"repo\", name = \"one\" }}\n[pipeline]\nname = \"two\"\n{}", publish(d, "two")),
        );
        let err = graph(&find_files(&[d.to_path_buf()]).unwrap()).err().unwrap();
        assert_eq!(crate::base::error::exit_code(&err), 2);
        let text = err.to_string();
        assert!(text.contains("cycle") && text.contains("one.toml") && text.contains("two.toml"), "{text}");
    }
}
