//! Reading a pipeline file: TOML syntax, `--set` overrides, templates, then the typed schema.
//! Every failure here is bad input (exit 2) and names the file and the key.

pub mod schema;
pub mod template;

use crate::bad_input;
use crate::base::overrides;
use anyhow::Result;
pub use schema::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A loaded, rendered and type-checked pipeline file.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The file as given on the command line.
    pub path: PathBuf,
    /// Relative paths in the file resolve against this directory.
    pub dir: PathBuf,
    pub file: PipelineFile,
}

impl Pipeline {
    pub fn name(&self) -> &str {
        &self.file.pipeline.name
    }

    /// A path named in the file, resolved against the file's directory.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    /// The `required_values` that are not set: missing from `[values]`, or empty.
    pub fn unset_required_values(&self) -> Vec<&str> {
        let f = &self.file;
        f.pipeline
            .required_values
            .iter()
            .filter(|name| match f.values.get(name.as_str()) {
                None => true,
                Some(toml::Value::String(s)) => s.trim().is_empty(),
                Some(_) => false,
            })
            .map(String::as_str)
            .collect()
    }

    /// Why the pipeline cannot run as it stands, when required values are unset: names the
    /// file, the values and how to set them.
    pub fn not_configured(&self) -> Option<String> {
        let unset = self.unset_required_values();
        let first = unset.first()?;
        Some(format!(
            "{}: not configured: pipeline.required_values {} not set; set {} under [values], or pass --set values.{first}=VALUE",
            self.path.display(),
            if unset.len() == 1 { format!("`{first}` is") } else { format!("`{}` are", unset.join("`, `")) },
            if unset.len() == 1 { "it" } else { "them" },
        ))
    }

    /// A duration key (`30m`, `2h`), checked as bad input naming the key at `at`; zero is
    /// refused too, since every duration here is a limit on something.
    pub fn duration(&self, text: &str, at: &str) -> Result<std::time::Duration> {
        match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => Ok(d),
            _ => Err(bad_input!("{}: {at}: `{text}` is not a duration such as 30m or 2h", self.path.display())),
        }
    }

    /// A VM's `memory` (a size, at least 128M) and `cpus` (1 to 256), checked as bad input
    /// naming the keys under `at`.
    pub fn check_vm_size(&self, memory: &str, cpus: u32, at: &str) -> Result<()> {
        let shown = self.path.display();
        if crate::image::qemu_img::parse_size(memory).is_none_or(|m| m < 128 << 20) {
            return Err(bad_input!(
                "{shown}: {at}.memory: `{memory}` is not a memory size such as 1024M or 2G (at least 128M)"
            ));
        }
        if !(1..=256).contains(&cpus) {
            return Err(bad_input!("{shown}: {at}.cpus: {cpus} is not a number of CPUs from 1 to 256"));
        }
        Ok(())
    }

    /// The environment a stage's commands run with: the file's `[env]` with the stage's own
    /// `env` (at `at`) over it. Names must be shell variable names.
    pub fn stage_env(&self, own: &BTreeMap<String, String>, at: &str) -> Result<BTreeMap<String, String>> {
        let mut env = self.file.env.clone();
        env.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
        for name in env.keys() {
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                let key = if own.contains_key(name) { at } else { "env" };
                return Err(bad_input!(
                    "{}: {key}: `{name}` is not an environment variable name (letters, digits and _, not starting with a digit)",
                    self.path.display()
                ));
            }
        }
        Ok(env)
    }

    /// A file the pipeline names (a preseed, a kickstart), rendered through the templates
    /// like every string of the pipeline file. `at` names the key, for errors.
    pub fn render_file(&self, path: &str, at: &str) -> Result<String> {
        let full = self.resolve(path);
        let text = std::fs::read_to_string(&full)
            .map_err(|e| bad_input!("{}: {at}: cannot read {}: {e}", self.path.display(), full.display()))?;
        let values = toml::Value::Table(self.file.values.clone());
        let env = toml::Value::try_from(&self.file.env).unwrap_or(toml::Value::Table(Default::default()));
        template::Context::new(&values, &env)
            .render(&text, &format!("{at} ({})", full.display()))
            .map_err(|e| bad_input!("{}: {e}", self.path.display()))
    }
}

pub fn load(path: &Path, sets: &[String]) -> Result<Pipeline> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| bad_input!("cannot read pipeline file {shown}: {e}"))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| bad_input!("{shown}: {}", e.to_string().trim_end()))?;
    let origin = shown.to_string();
    let document = overrides::Document { origin: &origin, schema: "the pipeline schema", hint };
    let file: PipelineFile =
        overrides::deserialize_with_sets(&toml::Value::Table(table), sets, &document, template::render_document)?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    let pipeline = Pipeline { path: path.to_path_buf(), dir, file };
    check(&pipeline)?;
    register_secrets(&pipeline)?;
    Ok(pipeline)
}

fn hint(msg: &str) -> &'static str {
    if msg.contains("unknown variant") && msg.contains("install") {
        "; each [[stages]] entry holds exactly one stage table such as [stages.sysprep]"
    } else if msg.contains("unknown field") {
        "; check the spelling against the key reference in docs/pipeline-file.md and docs/stages.md"
    } else {
        ""
    }
}

/// Checks that the schema cannot express: the version and how the first layer is made.
/// Marks the pipeline's secrets for scrubbing from every log: the `[env]` and `[values]`
/// entries named in `secrets`, and root passwords. (Answers files register their passwords
/// when their stage renders them.)
fn register_secrets(p: &Pipeline) -> Result<()> {
    use crate::base::secrets;
    let f = &p.file;
    for (i, name) in f.secrets.iter().enumerate() {
        let mut found = false;
        if let Some(v) = f.env.get(name) {
            secrets::register(v);
            found = true;
        }
        if let Some(v) = f.values.get(name) {
            match v {
                toml::Value::String(s) => secrets::register(s),
                other => secrets::register(&other.to_string()),
            }
            found = true;
        }
        if !found {
            return Err(bad_input!(
                "{}: secrets[{i}]: `{name}` is neither an [env] variable nor a [values] entry of this file",
                p.path.display()
            ));
        }
    }
    let steps = f.stages.iter().flat_map(|s| match s {
        StageConfig::Customize(c) => c.steps.iter().collect::<Vec<_>>(),
        StageConfig::Sysprep(c) => c.customize.iter().collect(),
        _ => Vec::new(),
    });
    for step in steps {
        if let crate::pipeline::CustomizeStep::RootPassword(spec) = step {
            secrets::register_password_spec(spec, &p.dir);
        }
    }
    for stage in &f.stages {
        let password = match stage {
            StageConfig::Install(InstallConfig::Debootstrap(d)) => d.root_password.as_ref(),
            StageConfig::Install(InstallConfig::Script(s)) => s.root_password.as_ref(),
            _ => None,
        };
        if let Some(spec) = password {
            secrets::register_password_spec(spec, &p.dir);
        }
    }
    Ok(())
}

fn check(p: &Pipeline) -> Result<()> {
    let shown = p.path.display();
    let f = &p.file;
    if f.version != 1 {
        return Err(bad_input!("{shown}: version: this tool reads version 1 pipeline files, not {}", f.version));
    }
    // The name becomes a directory of the logs and is printed in listings.
    let name = &f.pipeline.name;
    let name_ok = !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        return Err(bad_input!(
            "{shown}: pipeline.name: `{name}` is not a pipeline name (letters, digits, `-`, `_` and `.`, not starting with `.`)"
        ));
    }
    if f.stages.is_empty() {
        return Err(bad_input!("{shown}: stages: a pipeline needs at least one [[stages]] entry"));
    }
    let starts_with_install = matches!(f.stages[0], StageConfig::Install(_));
    match (&f.from, starts_with_install) {
        (Some(_), true) => {
            return Err(bad_input!("{shown}: from: a pipeline whose first stage is an install takes no `from`"))
        }
        (None, false) => {
            return Err(bad_input!(
                "{shown}: stages[0]: the first layer must come from somewhere: start with [stages.install] or set from = {{ image = \"...\" }}"
            ))
        }
        _ => {}
    }
    if let Some(i) = f.stages.iter().skip(1).position(|s| matches!(s, StageConfig::Install(_))) {
        return Err(bad_input!("{shown}: stages[{}]: install can only be the first stage", i + 1));
    }
    if let Some(from) = &f.from {
        let given = [&from.image, &from.repo, &from.pipeline].iter().filter(|v| v.is_some()).count();
        if given != 1 {
            return Err(bad_input!("{shown}: from: give exactly one of image, repo (with name) or pipeline"));
        }
        if from.repo.is_some() != from.name.is_some() {
            return Err(bad_input!("{shown}: from: repo and name go together"));
        }
        // Keys that only one kind of source reads would otherwise be silently ignored.
        if from.fingerprint.is_some() && from.repo.is_none() {
            return Err(bad_input!(
                "{shown}: from.fingerprint: a fingerprint checks a repository's signed index; it goes with `repo` and `name`"
            ));
        }
        if from.format.is_some() && from.image.is_none() {
            return Err(bad_input!(
                "{shown}: from.format: format goes with `image` (a repository entry's format is the one its index declares)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("p.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    const BASE: &str = "version = 1\nfrom = { image = \"x.qcow2\" }\n[pipeline]\nname = \"t\"\n[values]\nHost = \"h\"\n[[stages]]\n[stages.sysprep]\nfstrim = true\nhostname = \"{{ Host }}\"\n";

    fn err(text: &str, sets: &[&str]) -> String {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), text);
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let e = load(&p, &sets).unwrap_err();
        assert_eq!(crate::base::error::exit_code(&e), 2);
        format!("{e:#}")
    }

    #[test]
    fn loads_renders_and_overrides() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), BASE);
        let pl = load(&p, &["values.Host=web1".into(), "stages[0].sysprep.fstrim=false".into()]).unwrap();
        match &pl.file.stages[0] {
            StageConfig::Sysprep(s) => {
                assert_eq!(s.hostname(), "web1");
                assert!(!s.fstrim);
            }
            other => panic!("{other:?}"),
        }
        // A number-looking value for a string key stays a string.
        let pl = load(&p, &["stages[0].sysprep.hostname=1234".into()]).unwrap();
        assert!(matches!(&pl.file.stages[0], StageConfig::Sysprep(s) if s.hostname() == "1234"));
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let e = err("version = 1\n[pipeline\n", &[]);
        assert!(e.contains("p.toml") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn unknown_stage_kind_and_key_are_errors() {
        let e = err(&BASE.replace("[stages.sysprep]", "[stages.sysprap]"), &[]);
        assert!(e.contains("stages[0]") && e.contains("sysprap"), "{e}");
        let e = err(&BASE.replace("fstrim = true", "fstrin = true"), &[]);
        assert!(e.contains("stages[0].sysprep") && e.contains("fstrin"), "{e}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let e = err(&BASE.replace("fstrim = true", "fstrim = \"yes\""), &[]);
        assert!(e.contains("stages[0].sysprep.fstrim") && e.contains("boolean"), "{e}");
    }

    #[test]
    fn undefined_template_names_are_errors() {
        let e = err(&BASE.replace("{{ Host }}", "{{ Hots }}"), &[]);
        assert!(e.contains("`Hots`") && e.contains("stages[0].sysprep.hostname"), "{e}");
    }

    #[test]
    fn set_paths_outside_the_schema_are_errors() {
        let e = err(BASE, &["stages[0].sysprep.nonsense=1"]);
        assert!(e.contains("--set stages[0].sysprep.nonsense") && e.contains("no such key"), "{e}");
        let e = err(BASE, &["stages[0].sysprep.fstrim=perhaps"]);
        assert!(e.contains("expected true or false"), "{e}");
    }

    #[test]
    fn pipeline_names_are_safe_as_directory_names() {
        for bad in ["../../x", "a/b", ".hidden", "", "web 1", "x\n"] {
            let e = err(&BASE.replace("name = \"t\"", &format!("name = {bad:?}")), &[]);
            assert!(e.contains("pipeline.name") && e.contains("is not a pipeline name"), "{bad}: {e}");
        }
        let d = tempfile::tempdir().unwrap();
        load(&write(d.path(), &BASE.replace("name = \"t\"", "name = \"web-1_v2.0\"")), &[]).unwrap();
    }

    #[test]
    fn missing_file_is_bad_input() {
        let e = load(Path::new("/nonexistent/p.toml"), &[]).unwrap_err();
        assert_eq!(crate::base::error::exit_code(&e), 2);
        assert!(format!("{e}").contains("/nonexistent/p.toml"));
    }
}
