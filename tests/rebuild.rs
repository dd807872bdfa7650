//! `pipeline rebuild` on three local pipelines: a base published to a local repository and
//! two children built on it, each publishing its own entry, one through
//! `from = { pipeline }` and one through `from = { repo }` (a publish writes `repo/` in the
//! working directory, as `pipeline run` does; the child names it relative to its own file,
//! `../repo`). The first rebuild builds all, bases first; the second runs nothing; touching a
//! child rebuilds that child only; a new base rebuilds the base and both children; a failing
//! base skips both children and exits 1; a cycle is bad input; two rebuilds do not overlap.

mod common;

use common::*;
use std::path::Path;

/// The base: an image imported from images/base.qcow2 (a copy of the fake Debian disk; a
/// new night's base is a different file there) and published as entry `base`. Import needs
/// no appliance and publish one (its package list) per new layer, which keeps the five
/// rebuilds below cheap.
fn base_pipeline(dir: &Path, extra_steps: &str) {
    let stages = if extra_steps.is_empty() {
        String::new()
    } else {
        format!("[[stages]]\n[stages.customize]\nsteps = [{extra_steps}]\n")
    };
    write_file(
        dir,
        "base.toml",
        &format!(
            "version = 1\nfrom = {{ image = \"../images/base.qcow2\" }}\n[pipeline]\nname = \"base\"\n{stages}\
             [[stages]]\n[stages.publish]\nrepo = \"../repo\"\nname = \"base\"\nosinfo = \"debian12\"\nxz_level = 0\n"
        ),
    );
}

/// A child that publishes its own entry, with `notes` standing for its own inputs.
fn child_pipeline(dir: &Path, name: &str, from: &str, notes: &str) {
    write_file(
        dir,
        &format!("{name}.toml"),
        &format!(
            "version = 1\nfrom = {from}\n[pipeline]\nname = \"{name}\"\n[[stages]]\n[stages.publish]\n\
             repo = \"../repo\"\nname = \"{name}\"\nnotes = \"{notes}\"\nxz_level = 0\n"
        ),
    );
}

struct Rebuild {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    report: serde_json::Value,
}

fn rebuild(dir: &Path, extra: &[&str]) -> Rebuild {
    let gnupg = gnupg_home(dir);
    let report = dir.join("report.json");
    let _ = std::fs::remove_file(&report);
    let mut args = vec!["--work-dir", "work", "rebuild", "pipelines", "--report", report.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = pipeline(dir, &gnupg, &args);
    let report = std::fs::read(&report).map(|b| serde_json::from_slice(&b).unwrap()).unwrap_or(serde_json::Value::Null);
    Rebuild { code: out.status.code(), stdout: stdout(&out), stderr: stderr(&out), report }
}

impl Rebuild {
    /// (name, result, stages run) per pipeline, in the order they were taken.
    fn runs(&self) -> Vec<(String, String, u64)> {
        self.report["pipelines"]
            .as_array()
            .unwrap_or_else(|| panic!("no report: {}\n{}", self.stdout, self.stderr))
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_string(),
                    p["result"].as_str().unwrap().to_string(),
                    p["stages_run"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

fn runs(list: &[(&str, &str, u64)]) -> Vec<(String, String, u64)> {
    list.iter().map(|(n, r, s)| (n.to_string(), r.to_string(), *s)).collect()
}

#[test]
fn rebuild_builds_bases_first_and_only_what_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pipelines = dir.join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let base_image = dir.join("images/base.qcow2");
    std::fs::copy(&fake_images().debian, &base_image).unwrap();
    base_pipeline(&pipelines, "");
    child_pipeline(&pipelines, "child-pipeline", "{ pipeline = \"base.toml\" }", "1");
    child_pipeline(&pipelines, "child-repo", "{ repo = \"../repo\", name = \"base\" }", "1");

    let plan = rebuild(dir, &["--plan"]);
    assert_eq!(plan.code, Some(0), "{}", plan.stderr);
    // Each pipeline's heading: `NAME (FILE[, after BASES])`; its stages' lines follow.
    let order: Vec<&str> = plan.stdout.lines().filter(|l| l.contains(".toml") && l.ends_with(')')).collect();
    assert!(
        order[0].starts_with("base ") && order[1].starts_with("child-pipeline ") && order[2].starts_with("child-repo "),
        "{}",
        plan.stdout
    );
    assert!(order[2].contains("after base"), "{}", plan.stdout);
    assert!(!dir.join("repo").exists(), "--plan builds nothing");

    // First night: everything, the base first (import, publish).
    let first = rebuild(dir, &[]);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert_eq!(first.runs(), runs(&[("base", "ok", 2), ("child-pipeline", "ok", 1), ("child-repo", "ok", 2)]));
    assert_eq!(first.report["result"], "ok");
    let published = &first.report["pipelines"][0]["published"][0];
    assert_eq!((published["name"].as_str(), published["revision"].as_u64()), (Some("base"), Some(1)), "{published}");
    assert_eq!(published["sboms"], serde_json::json!(["base-r1.spdx.json", "base-r1.cdx.json"]), "{published}");
    assert!(first.stdout.contains("base r1"), "the summary names the revision: {}", first.stdout);

    // Nothing changed: nothing runs.
    let second = rebuild(dir, &[]);
    assert_eq!(second.code, Some(0), "{}", second.stderr);
    assert_eq!(second.runs(), runs(&[("base", "ok", 0), ("child-pipeline", "ok", 0), ("child-repo", "ok", 0)]));

    // A child's own input changed: that child only.
    child_pipeline(&pipelines, "child-repo", "{ repo = \"../repo\", name = \"base\" }", "2");
    let third = rebuild(dir, &[]);
    assert_eq!(third.runs(), runs(&[("base", "ok", 0), ("child-pipeline", "ok", 0), ("child-repo", "ok", 1)]));

    // A new base image: the base (import, publish revision 2), then both children (the
    // `{ repo }` child sees the entry's new checksum, so it imports again).
    std::fs::copy(&fake_images().debian_sector63, &base_image).unwrap();
    let fourth = rebuild(dir, &[]);
    assert_eq!(fourth.code, Some(0), "{}", fourth.stderr);
    assert_eq!(fourth.runs(), runs(&[("base", "ok", 2), ("child-pipeline", "ok", 1), ("child-repo", "ok", 2)]));
    assert_eq!(fourth.report["pipelines"][0]["published"][0]["revision"], 2);
    // Each publish reports its package manifest against the revision before.
    let packages = &fourth.report["pipelines"][0]["published"][0]["packages"];
    assert_eq!(packages["previous"], 1, "{packages}");
    assert_eq!(packages["count"], 2, "the fake Debian's two packages (base-files, libc6): {packages}");
    assert!(packages["added"].as_array().is_some_and(|a| a.is_empty()), "{packages}");

    // A failing base: both children skipped, the report says why, exit 1, and the
    // repository keeps revision 2.
    base_pipeline(&pipelines, "{ run_command = \"exit 7\" }");
    let failed = rebuild(dir, &[]);
    assert_eq!(failed.code, Some(1), "{}", failed.stderr);
    assert_eq!(
        failed.runs(),
        runs(&[("base", "failed", 0), ("child-pipeline", "skipped", 0), ("child-repo", "skipped", 0)])
    );
    assert_eq!(failed.report["result"], "failed");
    assert_eq!(failed.report["pipelines"][1]["reason"], "base base failed");
    // The report names the failed stage's log, which holds the command's failure.
    let log = failed.report["pipelines"][0]["log"].as_str().unwrap_or_else(|| panic!("{}", failed.report));
    assert!(log.starts_with(&dir.to_string_lossy().into_owned()) && log.ends_with("-customize.log"), "{log}");
    let log_text = std::fs::read_to_string(log).unwrap();
    assert!(log_text.contains("FAILED") && log_text.contains("exit 7"), "{log_text}");
    // Every rebuild keeps its report in WORK_DIR/reports (five rebuilds ran, the plan keeps none).
    assert_eq!(std::fs::read_dir(dir.join("work/reports")).unwrap().count(), 5);
    let index = std::fs::read_to_string(dir.join("repo/index")).unwrap();
    let base_entry = index.split("\n[").find(|e| e.trim_start_matches('[').starts_with("base]")).unwrap_or_default();
    assert!(base_entry.contains("\nrevision=2"), "{index}");
}

#[test]
fn a_cycle_is_bad_input_and_nothing_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pipelines = dir.join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    for (name, other) in [("one", "two"), ("two", "one")] {
        write_file(
            &pipelines,
            &format!("{name}.toml"),
            &format!(
                "version = 1\nfrom = {{ repo = \"../repo\", name = \"{other}\" }}\n[pipeline]\nname = \"{name}\"\n\
                 [[stages]]\n[stages.publish]\nrepo = \"../repo\"\nname = \"{name}\"\nxz_level = 0\n"
            ),
        );
    }
    let out = rebuild(dir, &[]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("cycle") && out.stderr.contains("one.toml -> ") && out.stderr.contains("two.toml"),
        "{}",
        out.stderr
    );
    assert!(!dir.join("work/layers").exists(), "nothing ran");
}

#[test]
fn a_second_rebuild_does_not_overlap_the_first() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pipelines = dir.join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    child_pipeline(&pipelines, "lone", &format!("{{ image = \"{}\" }}", fake_images().debian.display()), "1");
    // Another rebuild's lock, held by a process of the test's own.
    std::fs::create_dir_all(dir.join("work")).unwrap();
    let mut holder =
        std::process::Command::new("flock").arg(dir.join("work/rebuild.lock")).args(["sleep", "60"]).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = rebuild(dir, &[]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    // Exit 75 (EX_TEMPFAIL): a timer tells "still running" from a failed pipeline.
    assert_eq!(out.code, Some(75), "{}", out.stderr);
    assert!(out.stderr.contains("another rebuild is running") && out.stderr.contains("--wait"), "{}", out.stderr);
    assert!(!dir.join("work/layers").exists(), "nothing ran");
}

#[test]
fn paths_without_pipelines_are_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("pipelines/provision")).unwrap();
    // A Virter provisioning file is TOML too, but not a pipeline.
    write_file(
        &dir.join("pipelines/provision"),
        "steps.toml",
        "version = 1\n[[steps]]\nshell = { script = \"true\" }\n",
    );
    let empty = rebuild(dir, &[]);
    assert_eq!(empty.code, Some(2), "{}", empty.stderr);
    assert!(empty.stderr.contains("no pipeline files") && empty.stderr.contains("pipelines"), "{}", empty.stderr);
    let gnupg = gnupg_home(dir);
    let missing = pipeline(dir, &gnupg, &["--work-dir", "work", "rebuild", "nowhere"]);
    assert_eq!(missing.status.code(), Some(2), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("nowhere: no such file or directory"), "{}", stderr(&missing));
    assert!(!dir.join("work").exists(), "nothing was written");
}

/// A pipeline whose `required_values` are unset is reported and skipped, and so is one built
/// on it; the night still succeeds. `run` of it is bad input naming the value; with the
/// value set it plans.
#[test]
fn a_pipeline_not_configured_is_skipped_without_failing_the_night() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pipelines = dir.join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    write_file(
        &pipelines,
        "needs-server.toml",
        &format!(
            "version = 1\nfrom = {{ image = \"{}\" }}\n[pipeline]\nname = \"needs-server\"\n\
             required_values = [\"Server\"]\n[values]\nServer = \"\"\n[[stages]]\n[stages.customize]\n\
             steps = [{{ run_command = \"echo {{{{ Server }}}} > /etc/server\" }}]\n",
            fake_images().debian.display()
        ),
    );
    child_pipeline(&pipelines, "on-it", "{ pipeline = \"needs-server.toml\" }", "1");

    let night = rebuild(dir, &[]);
    assert_eq!(night.code, Some(0), "{}", night.stderr);
    assert_eq!(night.runs(), runs(&[("needs-server", "not-configured", 0), ("on-it", "not-configured", 0)]));
    // `--report -`: the report is standard output, the summary standard error.
    let gnupg = gnupg_home(dir);
    let out = pipeline(dir, &gnupg, &["--work-dir", "work", "rebuild", "pipelines", "--report", "-"]);
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["pipelines"][1]["result"], "not-configured", "{report}");
    assert!(stderr(&out).contains("not-configured"), "the summary: {}", stderr(&out));
    let reason = night.report["pipelines"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("`Server`") && reason.contains("--set values.Server="), "{reason}");
    assert_eq!(night.report["result"], "ok");
    let layers = std::fs::read_dir(dir.join("work/layers")).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>());
    assert!(
        layers.iter().flatten().all(|p| p.extension().is_none_or(|e| e != "qcow2")),
        "no layer was built: {layers:?}"
    );

    let run = pipeline(dir, &gnupg, &["--work-dir", "work", "run", "pipelines/on-it.toml"]);
    assert_eq!(run.status.code(), Some(2), "{}", stderr(&run));
    assert!(stderr(&run).contains("needs-server.toml") && stderr(&run).contains("`Server`"), "{}", stderr(&run));
    let set = ["--work-dir", "work", "plan", "pipelines/needs-server.toml", "--set", "values.Server=s.example.net"];
    let plan = pipeline(dir, &gnupg, &set);
    assert!(plan.status.success() && stdout(&plan).contains("customize"), "{}", stderr(&plan));
}

/// The checkout's own examples as one graph: the pipelines built on the default image come
/// after it, and the examples that need a Puppet server or a Rocky mirror say so.
#[test]
fn the_examples_plan_as_one_graph_after_the_default_image() {
    let tmp = tempfile::tempdir().unwrap();
    let gnupg = gnupg_home(tmp.path());
    let work = tmp.path().join("work");
    let args = ["--work-dir", work.to_str().unwrap(), "rebuild", "--plan", "--offline", "pipelines"];
    let out = pipeline(&repo_root(), &gnupg, &args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan = stdout(&out);
    let heading = |name: &str| {
        plan.lines()
            .position(|l| l.starts_with(&format!("{name} (")))
            .unwrap_or_else(|| panic!("no {name} in the plan:\n{plan}"))
    };
    let base = heading("debian-bookworm");
    for child in ["debian-bookworm-puppet", "debian-bookworm-targets"] {
        let at = heading(child);
        assert!(at > base, "{child} after debian-bookworm:\n{plan}");
        assert!(plan.lines().nth(at).unwrap().contains("after debian-bookworm"), "{plan}");
    }
    let puppet = plan.lines().nth(heading("debian-bookworm-puppet") + 1).unwrap();
    assert!(puppet.contains("not configured") && puppet.contains("PuppetServer"), "{plan}");
    let rocky = plan.lines().nth(heading("rocky-9") + 1).unwrap();
    assert!(rocky.contains("not configured") && rocky.contains("Mirror"), "{plan}");

    // The same graph as a picture: Graphviz's dot accepts it and draws the edges and labels.
    let mut args = args.to_vec();
    args.extend(["--format", "dot"]);
    let dot = pipeline(&repo_root(), &gnupg, &args);
    assert_eq!(dot.status.code(), Some(0), "{}", stderr(&dot));
    let source = stdout(&dot);
    assert!(source.contains("\"debian-bookworm\" -> \"debian-bookworm-puppet\";"), "{source}");
    let svg = tmp.path().join("graph.svg");
    let mut render = std::process::Command::new("dot")
        .args(["-Tsvg", "-o"])
        .arg(&svg)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("Graphviz's dot (scripts/install-deps --test installs graphviz)");
    use std::io::Write;
    render.stdin.take().unwrap().write_all(source.as_bytes()).unwrap();
    assert!(render.wait().unwrap().success(), "dot refused:\n{source}");
    let drawn = std::fs::read_to_string(&svg).unwrap();
    // SVG writes `-` as `&#45;` and `>` as `&gt;`: the edge's title names both ends.
    let edge = "<title>debian&#45;bookworm&#45;&gt;debian&#45;bookworm&#45;targets</title>";
    assert!(drawn.contains(edge) && drawn.contains("not configured: PuppetServer not set"), "{drawn}");
    args.pop();
    args.push("mermaid");
    let mermaid = stdout(&pipeline(&repo_root(), &gnupg, &args));
    assert!(
        mermaid.starts_with("flowchart LR") && mermaid.contains("debian_bookworm --> debian_bookworm_puppet"),
        "{mermaid}"
    );
    assert!(!work.join("layers").exists(), "a plan builds nothing");
}
