//! The provision stage on the shared Debian fixture: a real boot under qemu, SSH with the
//! run's ephemeral key, steps run over it, the key taken out again. One boot per test; run
//! them under the VM lock (`flock /tmp/vm.lock cargo test --test provision -- --test-threads=1`).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A pipeline on top of the fixture, in a directory of its own under the fixture's (so the
/// shared work directory and its cached layers are used).
fn write_pipeline(fixture: &DebianFixture, name: &str, body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("provision-test-").tempdir_in(&fixture.dir).unwrap();
    let text = format!(
        "version = 1\nfrom = {{ pipeline = \"{}\" }}\n\n[pipeline]\nname = \"{name}\"\n\n{body}",
        fixture.pipeline.display()
    );
    let path = write_file(dir.path(), "pipeline.toml", &text);
    (dir, path)
}

fn nonce() -> String {
    use rand::RngCore;
    let mut b = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn backing_file(layer: &Path) -> PathBuf {
    let out = Command::new("qemu-img").args(["info", "--output=json", "-U"]).arg(layer).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    PathBuf::from(v["full-backing-filename"].as_str().expect("a layer has a backing file"))
}

fn layer_files(work: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(work.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".qcow2"))
        .collect();
    names.sort();
    names
}

fn scratch_dirs(work: &Path) -> Vec<String> {
    std::fs::read_dir(work)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("scratch-vm-") || n.starts_with("scratch-provision-"))
        .collect()
}

const EXISTING_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHByb3Zpc2lvbi10ZXN0LWV4aXN0aW5nLWtleS0wMDAwMDA existing@test";

/// (a) Shell steps run on the booted layer (a multi-line script, the pipeline's env, a
/// step's own env); their files are in the committed layer; root's authorized_keys is
/// exactly what the parent layer held: the run's key was authorised and taken out again.
#[test]
fn shell_steps_build_a_layer_that_keeps_no_trace_of_the_run_key() {
    let fixture = debian_fixture();
    let nonce = nonce();
    let body = format!(
        r#"[env]
GREETING = "hello from the pipeline"

[[stages]]
[stages.customize]
steps = [{{ ssh_inject = {{ user = "root", key = "{EXISTING_KEY}" }} }}]

[[stages]]
[stages.provision]
memory = "1024M"
boot_timeout = "5m"
timeout = "20m"

[[stages.provision.steps]]
shell = {{ script = """
mkdir -p /srv/proof
echo "$GREETING" > /srv/proof/env
for i in 1 2 3; do
  echo "line$i" >> /srv/proof/lines
done
false
echo {nonce} > /srv/proof/nonce
""" }}

[[stages.provision.steps]]
shell = {{ script = "echo \"$OWN\" > /srv/proof/own", env = {{ OWN = "the step's own" }} }}
"#
    );
    let (_dir, file) = write_pipeline(&fixture, "provision-shell", &body);
    let out = pipeline(&fixture.dir, &fixture.gnupg, &["--work-dir", "work", "run", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let layer = PathBuf::from(stdout(&out).trim().lines().last().unwrap());
    let parent = backing_file(&layer);

    let g = open_readonly(&[&parent, &layer]);
    mount_disk(&g, 0);
    let keys_before = g.read_string("/root/.ssh/authorized_keys").unwrap();
    let mode_before = g.lstat_mode("/root/.ssh/authorized_keys").unwrap();
    let dir_before = g.ls("/root/.ssh").unwrap();
    mount_disk(&g, 1);
    let keys_after = g.read_string("/root/.ssh/authorized_keys").unwrap();
    assert!(keys_before.contains("existing@test"), "{keys_before}");
    assert_eq!(keys_after, keys_before, "root's authorized_keys is restored exactly");
    assert!(!keys_after.contains("virt-pipeline-"), "the run's key is gone: {keys_after}");
    assert_eq!(g.lstat_mode("/root/.ssh/authorized_keys").unwrap(), mode_before);
    assert_eq!(g.ls("/root/.ssh").unwrap(), dir_before, "nothing else left in /root/.ssh");

    // The steps ran, in order, as Virter runs them (no `set -e`: `false` did not stop it).
    assert_eq!(g.read_string("/srv/proof/env").unwrap(), "hello from the pipeline\n");
    assert_eq!(g.read_string("/srv/proof/lines").unwrap(), "line1\nline2\nline3\n");
    assert_eq!(g.read_string("/srv/proof/nonce").unwrap(), format!("{nonce}\n"));
    assert_eq!(g.read_string("/srv/proof/own").unwrap(), "the step's own\n");
    drop(g);

    assert!(scratch_dirs(&fixture.dir.join("work")).is_empty(), "scratch files removed");
}

/// (b) A step exiting 7: `pipeline run` exits 7, as Virter does, and no layer is left.
#[test]
fn a_failing_step_gives_its_exit_code_and_leaves_no_layer() {
    let fixture = debian_fixture();
    let work = fixture.dir.join("work");
    let body = format!(
        r#"[[stages]]
[stages.provision]
boot_timeout = "5m"
timeout = "20m"
steps = [
  {{ shell = {{ script = "echo {} > /root/partial" }} }},
  {{ shell = {{ script = "echo failing on purpose >&2\nexit 7" }} }},
  {{ shell = {{ script = "echo never > /root/never" }} }},
]
"#,
        nonce()
    );
    let (_dir, file) = write_pipeline(&fixture, "provision-fail", &body);
    // Build the fixture's layers first, so that only this stage's layer can be new.
    let before = layer_files(&work);
    let out = pipeline(&fixture.dir, &fixture.gnupg, &["--work-dir", "work", "run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("steps[1]"), "the error names the step: {}", stderr(&out));
    assert_eq!(layer_files(&work), before, "no layer committed");
    let temps: Vec<_> = std::fs::read_dir(work.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(temps.is_empty(), "no temporary layer left: {temps:?}");
    assert!(scratch_dirs(&work).is_empty(), "scratch files removed");
}

/// Bad input for the stage's own keys: exit 2 before anything boots.
#[test]
fn bad_stage_keys_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let gnupg = gnupg_home(dir.path());
    write_file(dir.path(), "prov.toml", "version = 1\n[[steps]]\nshell = { script = \"true\" }\n");
    let disk = dir.path().join("disk.qcow2");
    assert!(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("64M")
        .status()
        .unwrap()
        .success());
    let cases: &[(&str, &str)] = &[
        ("file = \"prov.toml\"\nsteps = []", "both given"),
        ("memory = \"1024M\"", "no steps"),
        ("file = \"missing.toml\"", "does not exist"),
        ("file = \"prov.toml\"\nmemory = \"lots\"", "memory"),
        ("file = \"prov.toml\"\ncpus = 0", "cpus"),
        ("file = \"prov.toml\"\nboot_timeout = \"soon\"", "boot_timeout"),
        ("file = \"prov.toml\"\ntimeout = \"0s\"", "timeout"),
        ("file = \"prov.toml\"\npull = \"Sometimes\"", "pull"),
        ("file = \"prov.toml\"\nenv = { A = \"b\" }", "env"),
        ("file = \"prov.toml\"\nreboot = true", "reboot"),
    ];
    for (keys, expected) in cases {
        let text = format!(
            "version = 1\nfrom = {{ image = \"disk.qcow2\" }}\n[pipeline]\nname = \"bad\"\n[[stages]]\n[stages.provision]\n{keys}\n"
        );
        let file = write_file(dir.path(), "pipeline.toml", &text);
        let out = pipeline(dir.path(), &gnupg, &["validate", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{keys}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(expected) && err.contains("pipeline.toml"), "{keys}: {err}");
    }
}
