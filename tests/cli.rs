//! Bad input through the real CLI: each case exits 2 with a message naming the file and the
//! key, and writes nothing (no work directory, no layer, no repository). Also: every example
//! pipeline validates, `--set` with indexes reaches the stages, and exit codes.

mod common;

use common::*;
use std::path::Path;

const GOOD: &str = r#"version = 1
from = { image = "base.qcow2" }

[pipeline]
name = "t"

[values]
Host = "web1"

[[stages]]
[stages.sysprep]
hostname = "{{ Host }}"
fstrim = true

[[stages]]
[stages.publish]
repo = "repo"
name = "t"
"#;

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(dir.path().join("base.qcow2"))
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    dir
}

/// Runs `pipeline run` on `text` with `sets`; asserts exit 2, nothing written, and that
/// the message contains every `expect`ed piece.
fn rejected(text: &str, sets: &[&str], expect: &[&str]) {
    let dir = setup();
    let file = write_file(dir.path(), "p.toml", text);
    let mut args = vec!["--work-dir", "work", "run", file.to_str().unwrap()];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = pipeline(dir.path(), dir.path(), &args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for piece in expect {
        assert!(err.contains(piece), "expected `{piece}` in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(!dir.path().join("work").exists(), "the work directory was created");
    assert!(!dir.path().join("repo").exists(), "a repository was created");
}

/// The appliance's environment variables are checked before anything runs.
#[test]
fn bad_appliance_settings_in_the_environment_are_bad_input() {
    for (name, value) in [("PIPELINE_LAUNCH_TIMEOUT", "soon"), ("PIPELINE_APPLIANCE", "fast")] {
        let dir = setup();
        let file = write_file(dir.path(), "p.toml", GOOD);
        let out = pipeline_command(dir.path(), dir.path(), &["--work-dir", "work", "run", file.to_str().unwrap()])
            .env(name, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(&format!("{name}=\"{value}\"")), "{}", stderr(&out));
        assert!(!dir.path().join("work").exists(), "the work directory was created");
    }
}

#[test]
fn toml_syntax_error_names_line_and_column() {
    rejected(&GOOD.replace("[pipeline]", "[pipeline"), &[], &["p.toml", "line 4", "column"]);
}

#[test]
fn unknown_stage_kind() {
    rejected(
        &GOOD.replace("[stages.sysprep]", "[stages.sysprap]"),
        &[],
        &["p.toml", "stages[0]", "sysprap", "sysprep"],
    );
    rejected(
        &GOOD.replace("[stages.sysprep]\nhostname = \"{{ Host }}\"\nfstrim = true", "[stages.provision]\nsteps = []"),
        &[],
        &["stages[0].provision", "no steps"],
    );
}

#[test]
fn unknown_key() {
    rejected(&GOOD.replace("fstrim = true", "fstrin = true"), &[], &["p.toml", "stages[0].sysprep", "fstrin"]);
}

#[test]
fn wrong_type() {
    rejected(
        &GOOD.replace("fstrim = true", "fstrim = \"yes\""),
        &[],
        &["p.toml", "stages[0].sysprep.fstrim", "boolean"],
    );
}

#[test]
fn undefined_template_name() {
    rejected(
        &GOOD.replace("{{ Host }}", "{{ Hots }}"),
        &[],
        &["p.toml", "stages[0].sysprep.hostname", "`Hots`", "--set values.Hots"],
    );
}

#[test]
fn set_path_outside_the_schema() {
    rejected(GOOD, &["stages[0].sysprep.nonsense=1"], &["--set stages[0].sysprep.nonsense", "no such key"]);
    rejected(GOOD, &["stages[7].sysprep.fstrim=true"], &["--set stages[7].sysprep.fstrim", "out of range"]);
    rejected(GOOD, &["stages[0].sysprep.fstrim=perhaps"], &["expected true or false"]);
}

#[test]
fn missing_files() {
    rejected(&GOOD.replace("base.qcow2", "missing.qcow2"), &[], &["p.toml", "from", "missing.qcow2", "does not exist"]);
    let netboot = r#"version = 1
[pipeline]
name = "n"
[[stages]]
[stages.install]
method = "netboot"
kernel = "vmlinuz"
initrd = "initrd.gz"
preseed = "nope.cfg"
"#;
    rejected(netboot, &[], &["p.toml", "stages[0].install.preseed", "nope.cfg"]);
    let customize = GOOD.replace(
        "[stages.sysprep]\nhostname = \"{{ Host }}\"\nfstrim = true",
        "[stages.customize]\nsteps = [{ copy_in = { source = \"tree\", dest = \"/opt\" } }]",
    );
    rejected(&customize, &[], &["p.toml", "stages[0].customize.steps[0]", "tree", "does not exist"]);
}

#[test]
fn unknown_sysprep_operation_and_bad_values() {
    rejected(
        &GOOD.replace("fstrim = true", "enable = [\"tmp-files\", \"hostnam\"]"),
        &[],
        &["stages[0].sysprep", "`hostnam` is not a known operation"],
    );
    rejected(
        &GOOD.replace("repo = \"repo\"\nname = \"t\"", "repo = \"repo\"\nname = \"t/../x\""),
        &[],
        &["stages[1].publish.name"],
    );
}

#[test]
fn image_expand_needs_a_partition_and_a_size() {
    let install = |keys: &str| {
        GOOD.replace(
            "from = { image = \"base.qcow2\" }\n",
            "",
        )
        .replace(
            "[[stages]]\n[stages.sysprep]",
            &format!("[[stages]]\n[stages.install]\nmethod = \"image\"\nimage = \"base.qcow2\"\n{keys}\n[[stages]]\n[stages.sysprep]"),
        )
    };
    rejected(&install("expand = \"/dev/sda1\""), &[], &["stages[0]", "expand needs disk_size"]);
    rejected(&install("disk_size = \"2G\"\nexpand = \"sda1\""), &[], &["stages[0]", "`sda1` is not a partition"]);
}

#[test]
fn environment_names_must_be_shell_names() {
    rejected(
        &GOOD.replace("[values]", "[env]\n\"bad-name\" = \"x\"\n\n[values]"),
        &[],
        &["p.toml", "env", "`bad-name` is not an environment variable name"],
    );
    rejected(
        &GOOD.replace("fstrim = true", "fstrim = true\nenv = { 1ST = \"x\" }"),
        &[],
        &["stages[0].sysprep.env", "`1ST`"],
    );
}

#[test]
fn first_layer_must_come_from_somewhere() {
    rejected(&GOOD.replace("from = { image = \"base.qcow2\" }\n", ""), &[], &["stages[0]", "install", "from"]);
}

#[test]
fn nonexistent_pipeline_file() {
    let dir = setup();
    let out = pipeline(dir.path(), dir.path(), &["--work-dir", "work", "run", "nope.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("nope.toml"));
    assert!(!dir.path().join("work").exists());
}

#[test]
fn set_with_indexes_reaches_the_stage_and_types_follow_the_schema() {
    let dir = setup();
    let file = write_file(dir.path(), "p.toml", GOOD);
    let plan = |sets: &[&str]| {
        let mut args = vec!["--work-dir", "work", "plan", file.to_str().unwrap()];
        for s in sets {
            args.extend(["--set", s]);
        }
        stdout(&pipeline(dir.path(), dir.path(), &args))
    };
    let key = |text: &str, n: usize| text.lines().nth(n).unwrap().split_whitespace().nth(2).unwrap().to_string();
    let base = plan(&[]);
    let changed = plan(&["stages[0].sysprep.fstrim=false"]);
    let renamed = plan(&["values.Host=web2"]);
    assert_eq!(key(&base, 0), key(&changed, 0), "the import is unchanged");
    assert_ne!(key(&base, 1), key(&changed, 1), "the sysprep key follows its configuration");
    assert_ne!(key(&base, 1), key(&renamed, 1), "values reach the templates");
    // A number-looking value for a string key is a string.
    assert!(!plan(&["stages[0].sysprep.hostname=1234"]).is_empty());
}

/// Every example validates; one with `required_values` only once they are set, and until
/// then `validate` exits 2 naming each of them and how to set it.
#[test]
fn example_pipelines_validate() {
    let dir = repo_root().join("pipelines");
    let (mut n, mut with_required) = (0, 0);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let file: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
            let required: Vec<String> = file["pipeline"]
                .get("required_values")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            let mut args = vec!["validate".to_string(), path.to_str().unwrap().to_string()];
            if !required.is_empty() {
                with_required += 1;
                let out =
                    pipeline(Path::new("."), Path::new("/tmp"), &args.iter().map(String::as_str).collect::<Vec<_>>());
                assert_eq!(out.status.code(), Some(2), "{}: {}", path.display(), stderr(&out));
                for name in &required {
                    assert!(stderr(&out).contains(&format!("`{name}`")), "{}: {}", path.display(), stderr(&out));
                }
                assert!(stderr(&out).contains("--set values."), "{}", stderr(&out));
                for name in &required {
                    args.extend(["--set".to_string(), format!("values.{name}=https://set.example.net/{name}")]);
                }
            }
            args.push("--json".into());
            let out = pipeline(Path::new("."), Path::new("/tmp"), &args.iter().map(String::as_str).collect::<Vec<_>>());
            assert!(out.status.success(), "{}: {}", path.display(), stderr(&out));
            let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
            assert_eq!(report["ok"], true, "{report}");
            assert_eq!(report["pipeline"].as_str(), file["pipeline"]["name"].as_str(), "{report}");
            assert!(report["stages"].as_u64().is_some_and(|n| n >= 1), "{report}");
            n += 1;
        }
    }
    assert!(n >= 4, "the example pipelines");
    assert!(with_required >= 3, "the Puppet and the two Rocky examples name what they need");
}

#[test]
fn preseed_is_rendered_through_the_templates() {
    let p = virt_pipeline::pipeline::load(
        &repo_root().join("pipelines/debian-bookworm-netinst.toml"),
        &["values.Hostname=db1.lab.example.org".into()],
    )
    .unwrap();
    let text = p.render_file("preseed/debian-bookworm.cfg", "preseed").unwrap();
    assert!(text.contains("d-i netcfg/get_hostname string db1\n"), "{text}");
    assert!(text.contains("d-i netcfg/get_domain string lab.example.org\n"), "{text}");
}

#[test]
fn a_cycle_of_pipelines_is_bad_input_naming_the_cycle() {
    let dir = setup();
    let a = "version = 1\nfrom = { pipeline = \"b.toml\" }\n[pipeline]\nname = \"a\"\n[[stages]]\n[stages.sysprep]\n";
    let b = "version = 1\nfrom = { pipeline = \"a.toml\" }\n[pipeline]\nname = \"b\"\n[[stages]]\n[stages.sysprep]\n";
    write_file(dir.path(), "a.toml", a);
    write_file(dir.path(), "b.toml", b);
    for cmd in ["validate", "plan", "run"] {
        let out = pipeline(dir.path(), dir.path(), &["--work-dir", "work", cmd, "a.toml"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        assert!(err.contains("cycle") && err.contains("a.toml -> ") && err.contains("b.toml -> "), "{cmd}: {err}");
        assert!(!err.contains("overflow"), "{err}");
    }
    assert!(!dir.path().join("work").exists(), "the work directory was created");
}

#[test]
fn secrets_must_name_an_env_variable_or_a_value() {
    rejected(&GOOD.replace("[pipeline]", "secrets = [\"Nope\"]\n[pipeline]"), &[], &["secrets[0]", "`Nope`"]);
}

#[test]
fn pipeline_name_must_be_safe_as_a_directory_name() {
    // The name is a directory under the log directory; `..` would write logs elsewhere.
    rejected(
        &GOOD.replace("[pipeline]\nname = \"t\"", "[pipeline]\nname = \"../../x\""),
        &[],
        &["p.toml", "pipeline.name", "`../../x`"],
    );
    rejected(&GOOD.replace("[pipeline]\nname = \"t\"", "[pipeline]\nname = \".t\""), &[], &["pipeline.name"]);
}

#[test]
fn cache_ls_survives_a_damaged_metadata_file() {
    let dir = setup();
    let layers = dir.path().join("work/layers");
    std::fs::create_dir_all(&layers).unwrap();
    std::fs::copy(dir.path().join("base.qcow2"), layers.join("abc.qcow2")).unwrap();
    std::fs::write(
        layers.join("abc.json"),
        r#"{"key": "abc", "pipeline": "p", "stage_index": 0, "kind": "install", "created": "2026-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    let out = pipeline(dir.path(), dir.path(), &["--work-dir", "work", "cache", "ls"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("abc "), "{}", stdout(&out));
}

/// A pipeline whose only stage is `[stages.install]` with `keys`.
fn install_only(keys: &str) -> String {
    format!("version = 1\n[pipeline]\nname = \"i\"\n[[stages]]\n[stages.install]\n{keys}\n")
}

#[test]
fn keys_a_method_would_ignore_are_errors() {
    // Netboot and iso no longer share one table: each refuses the other's key.
    rejected(
        &install_only("method = \"netboot\"\nlocation = \"tree\"\niso = \"x.iso\""),
        &[],
        &["p.toml", "stages[0].install", "unknown field `iso`"],
    );
    rejected(
        &install_only("method = \"iso\"\niso = \"base.qcow2\"\nlocation = \"tree\""),
        &[],
        &["p.toml", "stages[0].install", "unknown field `location`"],
    );
    rejected(&install_only("method = \"iso\""), &[], &["stages[0].install", "missing field `iso`"]);
    // A kernel without its initrd (or the reverse) would be ignored for the ISO's own.
    rejected(
        &install_only("method = \"iso\"\niso = \"base.qcow2\"\nkernel = \"/install.amd/vmlinuz\""),
        &[],
        &["p.toml", "stages[0].install.kernel", "needs `initrd`"],
    );
    rejected(
        &install_only("method = \"iso\"\niso = \"base.qcow2\"\ninitrd = \"/install.amd/initrd.gz\""),
        &[],
        &["p.toml", "stages[0].install.initrd", "needs `kernel`"],
    );
    // Netboot with both a tree and the two files would ignore the tree.
    rejected(
        &install_only("method = \"netboot\"\nlocation = \"tree\"\nkernel = \"base.qcow2\"\ninitrd = \"base.qcow2\""),
        &[],
        &["p.toml", "stages[0].install.location", "not both"],
    );
    // A fingerprint checks a repository's index; a plain image has none to check.
    rejected(
        &install_only(
            "method = \"image\"\nimage = \"base.qcow2\"\nfingerprint = \"61A0D7D05F70F0F8E76E6E91E17F83535EEEE8D4\"",
        ),
        &[],
        &["p.toml", "stages[0].install.fingerprint"],
    );
    rejected(
        &GOOD.replace(
            "{ image = \"base.qcow2\" }",
            "{ image = \"base.qcow2\", fingerprint = \"61A0D7D05F70F0F8E76E6E91E17F83535EEEE8D4\" }",
        ),
        &[],
        &["p.toml", "from.fingerprint"],
    );
    // format is the format of `image`; a repository entry's comes from its signed index.
    rejected(
        &install_only("method = \"image\"\nimage = \"base.qcow2\"\nformat = \"vmdk\""),
        &[],
        &["p.toml", "stages[0].install", "format `vmdk`", "\"raw\" or \"qcow2\""],
    );
    rejected(
        &install_only("method = \"image\"\nrepo = \"repo\"\nname = \"x\"\nformat = \"raw\""),
        &[],
        &["p.toml", "stages[0].install", "format goes with `image`"],
    );
    rejected(
        &GOOD.replace("{ image = \"base.qcow2\" }", "{ repo = \"repo\", name = \"x\", format = \"raw\" }"),
        &[],
        &["p.toml", "from.format"],
    );
}

#[test]
fn package_names_with_shell_characters_are_refused() {
    let customize = |pkgs: &str| {
        GOOD.replace(
            "[stages.sysprep]\nhostname = \"{{ Host }}\"\nfstrim = true",
            &format!("[stages.customize]\nsteps = [{{ hostname = \"h\" }}, {{ install = {pkgs} }}]"),
        )
    };
    rejected(
        &customize("[\"vim\", \"curl; touch /pwned\"]"),
        &[],
        &["p.toml", "stages[0].customize.steps[1].install[1]", "`curl; touch /pwned` is not a package name"],
    );
    rejected(&customize("[\"--allow-unauthenticated\"]"), &[], &["steps[1].install[0]", "not a package name"]);
    let uninstall = GOOD.replace(
        "[stages.sysprep]\nhostname = \"{{ Host }}\"\nfstrim = true",
        "[stages.sysprep]\ncustomize = [{ uninstall = [\"$(reboot)\"] }]",
    );
    rejected(&uninstall, &[], &["stages[0].sysprep.customize[0].uninstall[0]", "not a package name"]);
}

#[test]
fn sysprep_keys_of_an_operation_that_does_not_run_are_errors() {
    for (key, value) in
        [("scripts", "[\"base.qcow2\"]"), ("customize", "[{ mkdir = \"/x\" }]"), ("hostname", "\"web1\"")]
    {
        let text = GOOD
            .replace("hostname = \"{{ Host }}\"\nfstrim = true", &format!("enable = [\"tmp-files\"]\n{key} = {value}"));
        rejected(&text, &[], &[&format!("stages[0].sysprep.{key}"), "operation is not selected"]);
    }
}

#[test]
fn inline_virter_steps_keep_their_go_templates() {
    let dir = setup();
    let text = "version = 1\nfrom = { image = \"base.qcow2\" }\n[pipeline]\nname = \"p\"\n[values]\nGreeting = \"hi\"\n[[stages]]\n[stages.provision]\n[[stages.provision.steps]]\nshell = { script = \"echo $G\", env = { G = \"{{.Greeting}}\" } }\n";
    write_file(dir.path(), "p.toml", text);
    let out = pipeline(dir.path(), dir.path(), &["validate", "p.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = text.replace("{{.Greeting}}", "{{.Missing}}");
    write_file(dir.path(), "p.toml", &text);
    let out = pipeline(dir.path(), dir.path(), &["validate", "p.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("Missing"), "{}", stderr(&out));
}

/// The generated extras: a completion script per shell, and man pages only into a directory
/// that exists (bad input otherwise, writing nothing).
#[test]
fn completions_and_man_pages_come_from_the_command_line_definition() {
    let out = pipeline(Path::new("."), Path::new("/tmp"), &["completions", "bash"]);
    assert!(out.status.success() && stdout(&out).contains("complete -F _pipeline"), "{}", stderr(&out));
    let unknown = pipeline(Path::new("."), Path::new("/tmp"), &["completions", "tcsh"]);
    assert_eq!(unknown.status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("man");
    let out = pipeline(Path::new("."), Path::new("/tmp"), &["manpages", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not a directory") && !missing.exists(), "{}", stderr(&out));
    let out = pipeline(Path::new("."), Path::new("/tmp"), &["manpages", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for page in ["pipeline.1", "pipeline-rebuild.1", "pipeline-repo-init.1", "pipeline-completions.1"] {
        assert!(dir.path().join(page).is_file(), "{page}");
    }
    assert!(!dir.path().join("pipeline-manpages.1").exists(), "the hidden command has no page");
}

/// `--color` and the environment: the error's `error:` (and clap's help) are coloured on
/// `always` and CLICOLOR_FORCE, never on `never` or NO_COLOR (which beats CLICOLOR_FORCE but
/// not an explicit `--color always`); the message itself is the same either way.
#[test]
fn colour_follows_the_color_option_no_color_and_clicolor_force() {
    let tmp = tempfile::tempdir().unwrap();
    // (options, environment, whether colour is expected)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], bool);
    let cases: &[Case] = &[
        (&[], &[], false),
        (&["--color", "always"], &[], true),
        (&["--color=always"], &[("NO_COLOR", "1")], true),
        (&[], &[("CLICOLOR_FORCE", "1")], true),
        (&[], &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")], false),
        (&["--color", "never"], &[("CLICOLOR_FORCE", "1")], false),
    ];
    for (options, env, coloured) in cases {
        for command in [&["validate", "missing.toml"][..], &["--help"][..]] {
            let mut cmd = std::process::Command::new(bin());
            cmd.args(*options)
                .args(command)
                .current_dir(tmp.path())
                .env_remove("NO_COLOR")
                .env_remove("CLICOLOR_FORCE");
            for (k, v) in *env {
                cmd.env(k, v);
            }
            let out = cmd.output().unwrap();
            let text = if command[0] == "--help" { stdout(&out) } else { stderr(&out) };
            assert_eq!(text.contains('\x1b'), *coloured, "{options:?} {env:?} {command:?}: {text:?}");
            if command[0] == "validate" {
                assert_eq!(out.status.code(), Some(2));
                let plain = text.replace("\x1b[1m\x1b[31m", "").replace("\x1b[0m", "");
                assert!(plain.starts_with("error: cannot read pipeline file missing.toml"), "{text:?}");
            }
        }
    }
    let out = std::process::Command::new(bin()).args(["--color", "sometimes", "validate", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("[possible values: auto, always, never]"), "{}", stderr(&out));
}
