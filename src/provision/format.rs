//! Virter's provisioning file, read as Virter writes it: `version = 1`, `[values]`, `[env]`
//! and `[[steps]]` tables of exactly one of `shell`, `rsync`, `container`. Values come from
//! the file, then the pipeline's `[values]`, then `--set` (any key: `values.X=..`,
//! `env.X=..`, `steps[0].shell.script=..`). The global env is merged under each step's own,
//! then the fields Virter templates are rendered as Go templates, here at load time, so an
//! undefined value is bad input before anything runs.

use super::gotemplate;
use crate::bad_input;
use crate::base::overrides;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The provisioning format version this tool reads (Virter's current one).
pub const VERSION: i64 = 1;

/// When a container step pulls its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotExist,
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;
    /// Case-insensitive, as Virter reads it.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "always" => Ok(PullPolicy::Always),
            "ifnotexist" => Ok(PullPolicy::IfNotExist),
            "never" => Ok(PullPolicy::Never),
            _ => Err(format!("`{s}` is not a pull policy: use Always, IfNotExist or Never")),
        }
    }
}

impl<'de> Deserialize<'de> for PullPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl PullPolicy {
    /// The name Virter's files and `--container-pull-policy` use.
    pub fn name(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotExist => "IfNotExist",
            PullPolicy::Never => "Never",
        }
    }

    /// The value of podman's and docker's `--pull`.
    pub fn engine_value(self) -> &'static str {
        match self {
            PullPolicy::Always => "always",
            PullPolicy::IfNotExist => "missing",
            PullPolicy::Never => "never",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    version: Option<i64>,
    #[serde(default)]
    values: toml::Table,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    steps: Vec<RawStep>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    #[serde(default)]
    shell: Option<ShellStep>,
    #[serde(default)]
    rsync: Option<RsyncStep>,
    #[serde(default)]
    container: Option<RawContainer>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContainer {
    image: String,
    #[serde(default)]
    pull: Option<PullPolicy>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    copy: Option<CopyStep>,
}

/// `[steps.shell]`: `script` runs in one shell session on each target, `env` exported first.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShellStep {
    pub script: String,
    /// The global env with the step's own over it, values rendered.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// `[steps.rsync]`: host files matching `source` (a Go glob inside the working directory)
/// copied to `dest` on each target.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RsyncStep {
    pub source: String,
    pub dest: String,
}

/// `[steps.container]`: a container on the host that reaches the targets over SSH.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ContainerStep {
    pub image: String,
    pub pull: PullPolicy,
    /// The global env with the step's own over it, values rendered.
    pub env: BTreeMap<String, String>,
    pub command: Vec<String>,
    pub copy: Option<CopyStep>,
}

/// `[steps.container.copy]`: `source` in the container copied to `dest` on the host (inside
/// the working directory) after the container ends, whether it succeeded or not.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CopyStep {
    pub source: String,
    pub dest: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    Shell(ShellStep),
    Rsync(RsyncStep),
    Container(ContainerStep),
}

impl Step {
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Shell(_) => "shell",
            Step::Rsync(_) => "rsync",
            Step::Container(_) => "container",
        }
    }
}

/// A loaded provisioning: its steps with env merged and templates rendered.
#[derive(Debug, Clone, Serialize)]
pub struct Provisioning {
    /// Where it came from, for messages: a file, or a pipeline key holding inline steps.
    pub origin: String,
    /// The values after every override (template data).
    pub values: toml::Table,
    /// The global `[env]` after overrides (already merged into each step).
    pub env: BTreeMap<String, String>,
    pub steps: Vec<Step>,
}

impl Provisioning {
    pub fn needs_containers(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::Container(_)))
    }
}

/// Where the steps are.
#[derive(Debug, Clone)]
pub enum Source {
    /// A Virter provisioning file, used unchanged (`-p FILE`, `file = "..."`).
    File(PathBuf),
    /// Steps written inline in a pipeline (`[stages.provision] steps = [...]`); `origin`
    /// names the key for messages, e.g. `pipeline.toml: stages[2].provision.steps`.
    Inline { steps: Vec<toml::Value>, env: BTreeMap<String, String>, origin: String },
    /// Nothing: the steps come from `--set` alone (`--set steps[0].shell.script=env`).
    Empty,
}

/// How the loaded provisioning is adjusted.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Values over the file's (a pipeline's `[values]`).
    pub values: toml::Table,
    /// `--set KEY=VALUE` overrides, last.
    pub sets: Vec<String>,
    /// The pull policy of steps that name none (Virter's default: IfNotExist).
    pub default_pull: PullPolicy,
    /// `--container-pull-policy`: replaces every step's.
    pub pull_override: Option<PullPolicy>,
}

/// Reads, overrides, checks and renders a provisioning. Every failure is bad input naming
/// the file (or pipeline key) and the key.
pub fn load(source: &Source, opts: &LoadOptions) -> Result<Provisioning> {
    let (doc, origin, needs_version) = match source {
        Source::File(path) => {
            let shown = path.display();
            let text =
                std::fs::read_to_string(path).map_err(|e| bad_input!("cannot read provisioning file {shown}: {e}"))?;
            let table: toml::Table = toml::from_str(&text)
                .map_err(|e| bad_input!("{shown}: not a provisioning file: {}", e.to_string().trim_end()))?;
            (table, shown.to_string(), true)
        }
        Source::Inline { steps, env, origin } => {
            let mut t = toml::Table::new();
            t.insert("steps".into(), toml::Value::Array(steps.clone()));
            if !env.is_empty() {
                let env = env.iter().map(|(k, v)| (k.clone(), toml::Value::String(v.clone()))).collect();
                t.insert("env".into(), toml::Value::Table(env));
            }
            (t, origin.clone(), false)
        }
        Source::Empty => (toml::Table::new(), "--set".to_string(), false),
    };
    let mut doc = toml::Value::Table(doc);
    if !opts.values.is_empty() {
        let table = doc.as_table_mut().expect("a table");
        let values = table.entry("values").or_insert_with(|| toml::Value::Table(Default::default()));
        let values = values.as_table_mut().ok_or_else(|| bad_input!("{origin}: values: must be a table"))?;
        values.extend(opts.values.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let raw = apply_sets(doc, &origin, &opts.sets)?;
    match raw.version {
        Some(VERSION) => {}
        None if !needs_version => {}
        None => {
            return Err(bad_input!(
                "{origin}: version: a provisioning file starts with `version = {VERSION}` (Virter's format version)"
            ))
        }
        Some(v) => {
            return Err(bad_input!("{origin}: version: this tool reads provisioning version {VERSION}, not {v}"))
        }
    }
    check_env_names(&raw.env, &origin, "env")?;
    let data = gotemplate::data(&raw.values);
    let render =
        |text: &str, at: String| gotemplate::render(text, &data).map_err(|e| bad_input!("{origin}: {at}: {e}"));
    let mut steps = Vec::new();
    for (i, step) in raw.steps.iter().enumerate() {
        let given = [step.shell.is_some(), step.rsync.is_some(), step.container.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(bad_input!(
                "{origin}: steps[{i}]: each step holds exactly one of [steps.shell], [steps.rsync] or [steps.container]"
            ));
        }
        let merged = |own: &BTreeMap<String, String>, at: &str| -> Result<BTreeMap<String, String>> {
            check_env_names(own, &origin, &format!("steps[{i}].{at}.env"))?;
            let mut env = raw.env.clone();
            env.extend(own.clone());
            let mut out = BTreeMap::new();
            for (k, v) in env {
                let key = if own.contains_key(&k) { format!("steps[{i}].{at}.env.{k}") } else { format!("env.{k}") };
                out.insert(k, render(&v, key)?);
            }
            Ok(out)
        };
        if let Some(s) = &step.shell {
            steps.push(Step::Shell(ShellStep { script: s.script.clone(), env: merged(&s.env, "shell")? }));
        } else if let Some(r) = &step.rsync {
            let source = render(&r.source, format!("steps[{i}].rsync.source"))?;
            if source.is_empty() || r.dest.is_empty() {
                return Err(bad_input!("{origin}: steps[{i}].rsync: source and dest must not be empty"));
            }
            super::goglob::matches(&source, "").map_err(|_| {
                bad_input!("{origin}: steps[{i}].rsync.source: `{source}` is not a valid Go filepath.Match pattern")
            })?;
            steps.push(Step::Rsync(RsyncStep { source, dest: r.dest.clone() }));
        } else if let Some(c) = &step.container {
            let image = render(&c.image, format!("steps[{i}].container.image"))?;
            super::container::check_image_reference(&image)
                .map_err(|e| bad_input!("{origin}: steps[{i}].container.image: {e}"))?;
            let command = c
                .command
                .iter()
                .enumerate()
                .map(|(j, item)| render(item, format!("steps[{i}].container.command[{j}]")))
                .collect::<Result<Vec<_>>>()?;
            let copy = match &c.copy {
                Some(copy) => Some(CopyStep {
                    source: copy.source.clone(),
                    dest: render(&copy.dest, format!("steps[{i}].container.copy.dest"))?,
                }),
                None => None,
            };
            let pull = opts.pull_override.or(c.pull).unwrap_or(opts.default_pull);
            steps.push(Step::Container(ContainerStep {
                image,
                pull,
                env: merged(&c.env, "container")?,
                command,
                copy,
            }));
        }
    }
    Ok(Provisioning { origin, values: raw.values, env: raw.env, steps })
}

/// Applies the `--set`s and reads the result into the raw format.
fn apply_sets(doc: toml::Value, origin: &str, sets: &[String]) -> Result<RawFile> {
    fn hint(msg: &str) -> &'static str {
        if msg.contains("expected one of `shell`, `rsync`, `container`") {
            "; this tool runs Virter's step types: [steps.shell], [steps.rsync] and [steps.container]"
        } else if msg.contains("unknown field") || msg.contains("unknown variant") {
            "; check the spelling against Virter's provisioning format (docs/provisioning.md)"
        } else {
            ""
        }
    }
    let document = overrides::Document { origin, schema: "a provisioning file", hint };
    overrides::deserialize_with_sets(&doc, sets, &document, |_| Ok(()))
}

fn check_env_names(env: &BTreeMap<String, String>, origin: &str, at: &str) -> Result<()> {
    for name in env.keys() {
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(bad_input!(
                "{origin}: {at}: `{name}` is not an environment variable name (letters, digits and _, not starting with a digit)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Virter's own example file (doc/provisioning.md), unchanged.
    pub const VIRTER_EXAMPLE: &str = r#"version = 1

[values]
Image = "virter-hello-text"

[env]
foo = "rck"

[[steps]]
[steps.container]
# Go templating can be used for many values
image = "{{.Image}}"
[steps.container.env]
TEXT = "foo"
VAR_BAR = "hi"
[steps.container.copy]
source = "/tmp/somefile"
dest = "."

[[steps]]
[steps.shell]
script = "env && touch /tmp/$foo"
[steps.shell.env]
# this overrides the global env variable foo
foo = "rck"

[[steps]]
[steps.shell]
script = """
yum remove -y make
yum install -y make
"""

[[steps]]
[steps.rsync]
source = "/tmp/*.rpm"
dest = "/root/rpms"
"#;

    fn file(text: &str) -> (tempfile::TempDir, Source) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("provisioning.toml");
        std::fs::write(&p, text).unwrap();
        (d, Source::File(p))
    }

    fn err(text: &str, sets: &[&str]) -> String {
        let (_d, src) = file(text);
        let opts = LoadOptions { sets: sets.iter().map(|s| s.to_string()).collect(), ..Default::default() };
        let e = load(&src, &opts).unwrap_err();
        assert_eq!(crate::base::error::exit_code(&e), 2, "{e:#}");
        format!("{e:#}")
    }

    #[test]
    fn virters_example_loads_as_written() {
        let (_d, src) = file(VIRTER_EXAMPLE);
        let p = load(&src, &LoadOptions::default()).unwrap();
        assert_eq!(p.steps.len(), 4);
        match &p.steps[0] {
            Step::Container(c) => {
                assert_eq!(c.image, "virter-hello-text");
                assert_eq!(c.pull, PullPolicy::IfNotExist);
                assert_eq!(c.env.get("foo").map(String::as_str), Some("rck"), "global env merged in");
                assert_eq!(c.env.get("TEXT").map(String::as_str), Some("foo"));
                assert_eq!(c.copy, Some(CopyStep { source: "/tmp/somefile".into(), dest: ".".into() }));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&p.steps[2], Step::Shell(s) if s.script == "yum remove -y make\nyum install -y make\n"));
        assert!(matches!(&p.steps[3], Step::Rsync(r) if r.source == "/tmp/*.rpm" && r.dest == "/root/rpms"));
    }

    #[test]
    fn values_come_from_file_then_pipeline_then_set() {
        let text = "version = 1\n[values]\nA = \"file\"\nB = \"file\"\nC = \"file\"\n[env]\nG = \"{{.A}}\"\n[[steps]]\n[steps.shell]\nscript = \"x {{.A}}\"\nenv = { S = \"{{.B}}-{{.C}}\", G = \"own {{ .C }}\" }\n";
        let (_d, src) = file(text);
        let mut values = toml::Table::new();
        values.insert("B".into(), "pipeline".into());
        values.insert("C".into(), "pipeline".into());
        let opts = LoadOptions { values, sets: vec!["values.C=set".into()], ..Default::default() };
        let p = load(&src, &opts).unwrap();
        let Step::Shell(s) = &p.steps[0] else { panic!() };
        // Scripts are not templates in Virter; env values are.
        assert_eq!(s.script, "x {{.A}}");
        assert_eq!(s.env["S"], "pipeline-set");
        assert_eq!(s.env["G"], "own set", "the step's env is over the global one");
        let p = load(&src, &LoadOptions { sets: vec!["env.G=from-set".into()], ..Default::default() }).unwrap();
        let Step::Shell(s) = &p.steps[0] else { panic!() };
        assert_eq!(s.env["G"], "own file");
        assert_eq!(p.env["G"], "from-set");
    }

    #[test]
    fn steps_from_set_alone_and_from_a_pipeline() {
        let opts = LoadOptions { sets: vec!["steps[0].shell.script=env".into()], ..Default::default() };
        let p = load(&Source::Empty, &opts).unwrap();
        assert_eq!(p.steps, vec![Step::Shell(ShellStep { script: "env".into(), env: BTreeMap::new() })]);
        // A number-looking script stays a string.
        let opts = LoadOptions { sets: vec!["steps[0].shell.script=42".into()], ..Default::default() };
        assert!(matches!(&load(&Source::Empty, &opts).unwrap().steps[0], Step::Shell(s) if s.script == "42"));

        let steps: toml::Table =
            toml::from_str("steps = [{ rsync = { source = \"files/{{.Dir}}/*\", dest = \"/srv\" } }]").unwrap();
        let steps = steps["steps"].as_array().unwrap().clone();
        let mut values = toml::Table::new();
        values.insert("Dir".into(), "web".into());
        let src = Source::Inline { steps, env: BTreeMap::new(), origin: "p.toml: stages[1].provision.steps".into() };
        let p = load(&src, &LoadOptions { values, ..Default::default() }).unwrap();
        assert_eq!(p.steps, vec![Step::Rsync(RsyncStep { source: "files/web/*".into(), dest: "/srv".into() })]);
    }

    #[test]
    fn container_fields_virter_templates_are_rendered_and_pull_is_overridden() {
        let text = "version = 1\n[values]\nTag = \"2\"\nOut = \"out\"\n[[steps]]\n[steps.container]\nimage = \"local/x:{{.Tag}}\"\npull = \"Never\"\ncommand = [\"sh\", \"-c\", \"echo {{.Tag}}\"]\ncopy = { source = \"/{{.Tag}}\", dest = \"{{.Out}}/\" }\n";
        let (_d, src) = file(text);
        let p = load(&src, &LoadOptions::default()).unwrap();
        let Step::Container(c) = &p.steps[0] else { panic!() };
        assert_eq!(c.image, "local/x:2");
        assert_eq!(c.command, vec!["sh", "-c", "echo 2"]);
        assert_eq!(c.copy.as_ref().unwrap().source, "/{{.Tag}}", "copy.source is not a template in Virter");
        assert_eq!(c.copy.as_ref().unwrap().dest, "out/");
        assert_eq!(c.pull, PullPolicy::Never);
        let p = load(&src, &LoadOptions { pull_override: Some(PullPolicy::Always), ..Default::default() }).unwrap();
        assert!(matches!(&p.steps[0], Step::Container(c) if c.pull == PullPolicy::Always));
        assert_eq!("ifnotexist".parse::<PullPolicy>(), Ok(PullPolicy::IfNotExist));
    }

    #[test]
    fn bad_input_names_file_and_key() {
        let e = err("version = 1\n[[steps]]\n[steps.ansible]\nplaybook = \"x\"\n", &[]);
        assert!(e.contains("provisioning.toml") && e.contains("steps[0]") && e.contains("ansible"), "{e}");
        let e = err("version = 1\n[[steps]]\n[steps.shell]\nscirpt = \"x\"\n", &[]);
        assert!(e.contains("steps[0].shell") && e.contains("scirpt"), "{e}");
        let e = err(
            "version = 1\n[[steps]]\n[steps.shell]\nscript = \"x\"\n[steps.rsync]\nsource = \"a\"\ndest = \"b\"\n",
            &[],
        );
        assert!(e.contains("steps[0]") && e.contains("exactly one"), "{e}");
        let e = err("version = 1\n[[steps]\n", &[]);
        assert!(e.contains("provisioning.toml") && e.contains("line 2"), "{e}");
        let e = err("[[steps]]\n[steps.shell]\nscript = \"x\"\n", &[]);
        assert!(e.contains("version"), "{e}");
        let e = err("version = 2\n", &[]);
        assert!(e.contains("version 1, not 2"), "{e}");
        let e = err("version = 1\n[[steps]]\n[steps.container]\nimage = \"{{.Image}}\"\n", &[]);
        assert!(e.contains("steps[0].container.image") && e.contains("`Image`") && e.contains("not defined"), "{e}");
        let e = err("version = 1\n[env]\nX = \"{{.Nope}}\"\n[[steps]]\n[steps.shell]\nscript = \"x\"\n", &[]);
        assert!(e.contains("env.X") && e.contains("`Nope`"), "{e}");
        let e = err(
            "version = 1\n[[steps]]\n[steps.container]\nimage = \"--privileged\"\ncommand = [\"-v\", \"/:/host\"]\n",
            &[],
        );
        assert!(
            e.contains("steps[0].container.image") && e.contains("`--privileged` is not a container image reference"),
            "{e}"
        );
        let e = err("version = 1\n[[steps]]\n[steps.container]\nimage = \"x\"\npull = \"Sometimes\"\n", &[]);
        assert!(e.contains("steps[0].container.pull") && e.contains("Sometimes"), "{e}");
        let e = err("version = 1\n[[steps]]\n[steps.rsync]\nsource = \"a[\"\ndest = \"/x\"\n", &[]);
        assert!(e.contains("steps[0].rsync.source") && e.contains("pattern"), "{e}");
        let e = err("version = 1\n", &["steps[0].shell.nonsense=1"]);
        assert!(e.contains("--set steps[0].shell.nonsense") && e.contains("no such key"), "{e}");
        let e = err("version = 1\n[env]\n\"A-B\" = \"x\"\n", &[]);
        assert!(e.contains("A-B"), "{e}");
    }
}
