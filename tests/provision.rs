//! The provision stage on the shared Debian fixture: a real boot under qemu, SSH with the
//! run's ephemeral key, steps run over it, the key taken out again. One boot per test;
//! `scripts/test` runs them one at a time with the other booting tests.

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

/// The provision stage's log of the newest run of `name` under `logs`.
fn provision_log(logs: &Path, name: &str) -> String {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(logs.join(name)).unwrap().map(|e| e.unwrap().path()).collect();
    runs.sort();
    let log = std::fs::read_dir(runs.last().expect("a run's logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("-provision.log"))
        .expect("a provision log");
    std::fs::read_to_string(log).unwrap()
}

/// Runs a provisioning pipeline written by `write_pipeline` (logs in its directory) and
/// returns the new layer, its parent, and the provision stage's log.
fn build_layer(
    fixture: &DebianFixture,
    dir: &tempfile::TempDir,
    file: &Path,
    name: &str,
) -> (PathBuf, PathBuf, String) {
    let logs = dir.path().join("logs");
    let out = pipeline(
        &fixture.dir,
        &fixture.gnupg,
        &["--work-dir", "work", "run", file.to_str().unwrap(), "--log-dir", logs.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let layer = PathBuf::from(stdout(&out).trim().lines().last().unwrap());
    let parent = backing_file(&layer);
    (layer, parent, provision_log(&logs, name))
}

const EXISTING_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHByb3Zpc2lvbi10ZXN0LWV4aXN0aW5nLWtleS0wMDAwMDA existing@test";

/// (a) A Virter-shaped provisioning runs on the booted layer: `{{.X}}` templates with the
/// values (the pipeline's over the stage's defaults), the global `[env]` overridden by a
/// step's own, a multi-line script (no `set -e`), an rsync glob (Go rules) and a container
/// step on the host (podman with runc, a local image) with Virter's environment. Their files
/// are in the committed layer (the container's on the host, through `copy`), and root's
/// authorized_keys is exactly what the parent layer held: the run's key was authorised and
/// taken out again.
#[test]
fn a_virter_provisioning_builds_a_layer_that_keeps_no_trace_of_the_run_key() {
    let fixture = debian_fixture();
    // What killed runs of earlier test runs may have left in the kept fixture is theirs.
    let scratch_before = leftover_scratch(&fixture.dir.join("work"), &["vm", "provision"]);
    let image = busybox_image();
    let nonce = nonce();
    let body = format!(
        r#"[values]
Site = "from the pipeline"

[env]
GREETING = "hello from the pipeline"
WHO = "global"

[[stages]]
[stages.customize]
steps = [{{ ssh_inject = {{ user = "root", key = "{EXISTING_KEY}" }} }}]

[[stages]]
[stages.provision]
memory = "1024M"
boot_timeout = "5m"
timeout = "20m"
values = {{ Site = "overridden below", Colour = "blue" }}

[[stages.provision.steps]]
shell = {{ script = """
mkdir -p /srv/proof
echo "$GREETING $WHO" > /srv/proof/env
echo "$SITE" > /srv/proof/template
for i in 1 2 3; do
  echo "line$i" >> /srv/proof/lines
done
false
echo {nonce} > /srv/proof/nonce
""", env = {{ WHO = "the step's own", SITE = "{{{{.Site}}}} is {{{{ .Colour }}}}" }} }}

[[stages.provision.steps]]
rsync = {{ source = "files/*.conf", dest = "/srv/proof/" }}

[[stages.provision.steps]]
[stages.provision.steps.container]
image = "{image}"
pull = "Never"
command = ["sh", "-c", "echo \"targets=$TARGETS\" > /tmp/proof; head -c 35 /root/.ssh/id_rsa >> /tmp/proof; echo >> /tmp/proof; cat /etc/ssh/ssh_config.virter >> /tmp/proof; ls /virter/workspace >> /tmp/proof"]
copy = {{ source = "/tmp/proof", dest = "container-proof" }}
"#
    );
    let (dir, file) = write_pipeline(&fixture, "provision-virter", &body.replace("overridden below", "{{ Site }}"));
    std::fs::create_dir_all(dir.path().join("files/sub")).unwrap();
    for (f, text) in [("a.conf", "A"), ("b.conf", "B"), ("skip.txt", "no"), ("sub/c.conf", "nested")] {
        std::fs::write(dir.path().join("files").join(f), text).unwrap();
    }
    let (layer, parent, log) = build_layer(&fixture, &dir, &file, "provision-virter");
    // Root already had a key: the credential could not add the run's, the appliance did.
    assert!(log.contains("authorising it in the image instead"), "the fallback path was taken: {log}");

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
    assert_eq!(g.read_string("/srv/proof/env").unwrap(), "hello from the pipeline the step's own\n");
    assert_eq!(g.read_string("/srv/proof/template").unwrap(), "from the pipeline is blue\n");
    assert_eq!(g.read_string("/srv/proof/lines").unwrap(), "line1\nline2\nline3\n");
    assert_eq!(g.read_string("/srv/proof/nonce").unwrap(), format!("{nonce}\n"));
    let mut synced = g.ls("/srv/proof").unwrap();
    synced.retain(|f| f.ends_with(".conf") || f.ends_with(".txt") || f == "sub");
    synced.sort();
    assert_eq!(synced, ["a.conf", "b.conf"], "the glob took *.conf of files/ only");
    assert_eq!(g.read_string("/srv/proof/a.conf").unwrap(), "A");
    drop(g);

    let proof = std::fs::read_to_string(dir.path().join("container-proof")).expect("the container's copy");
    assert!(proof.contains("targets="), "{proof}");
    assert!(proof.contains("-----BEGIN OPENSSH PRIVATE KEY-----"), "the run's key is bound in: {proof}");
    assert!(proof.contains("HostName 127.0.0.1") && proof.contains("Port "), "ssh_config.virter: {proof}");
    assert!(proof.contains("pipeline.toml"), "the working directory is /virter/workspace: {proof}");
    assert_eq!(
        leftover_scratch(&fixture.dir.join("work"), &["vm", "provision"]),
        scratch_before,
        "scratch files removed"
    );
}

/// A systemd guest whose root has no authorized_keys (the fixture's) takes the run's key as
/// the `ssh.authorized_keys.root` credential: no appliance launch, and after the run root's
/// .ssh is what the parent layer held (nothing) while the steps' work is in the layer, on a
/// filesystem that was unmounted cleanly.
#[test]
fn the_key_comes_in_as_a_systemd_credential_and_leaves_no_trace() {
    let fixture = debian_fixture();
    // What killed runs of earlier test runs may have left in the kept fixture is theirs.
    let scratch_before = leftover_scratch(&fixture.dir.join("work"), &["vm", "provision"]);
    let nonce = nonce();
    let body = format!(
        r#"[[stages]]
[stages.provision]
boot_timeout = "5m"
timeout = "20m"
steps = [{{ shell = {{ script = "mkdir -p /srv/fast && echo {nonce} > /srv/fast/nonce" }} }}]
"#
    );
    let (dir, file) = write_pipeline(&fixture, "provision-credential", &body);
    let (layer, parent, log) = build_layer(&fixture, &dir, &file, "provision-credential");
    assert!(log.contains("the credential let the key in"), "the credential path was taken: {log}");
    assert!(!log.contains("authorising it in the image"), "no appliance launched: {log}");

    let g = open_readonly(&[&parent, &layer]);
    mount_disk(&g, 0);
    let ssh_before = g.is_dir("/root/.ssh").unwrap();
    let keys_before = if ssh_before { g.ls("/root/.ssh").unwrap() } else { Vec::new() };
    // The layer's filesystem was left clean (unmounted or remounted read-only, not just
    // synced): ext4 has no journal to replay. Checked before anything mounts it.
    let layer_fs = &g.list_partitions().unwrap()[1];
    let superblock = g.tune2fs_l(layer_fs).unwrap();
    let field = |name: &str| {
        let value = superblock.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        value.unwrap_or_else(|| panic!("tune2fs -l prints no {name:?}: {superblock:?}"))
    };
    assert_eq!(field("Filesystem state"), "clean", "{superblock:?}");
    let features = field("Filesystem features");
    assert!(features.contains("has_journal"), "an ext4 with a journal: {features}");
    assert!(!features.contains("needs_recovery"), "{superblock:?}");
    mount_disk(&g, 1);
    assert_eq!(g.read_string("/srv/fast/nonce").unwrap(), format!("{nonce}\n"), "the step ran");
    assert_eq!(g.is_dir("/root/.ssh").unwrap(), ssh_before, "/root/.ssh as the parent had it");
    if ssh_before {
        assert_eq!(g.ls("/root/.ssh").unwrap(), keys_before, "nothing added to /root/.ssh");
    }
    drop(g);
    assert_eq!(
        leftover_scratch(&fixture.dir.join("work"), &["vm", "provision"]),
        scratch_before,
        "scratch files removed"
    );
}

/// `pipeline exec` on a machine that already runs (Virter's `vm exec`): the test boots the
/// fixture with its own key authorised, and a Virter file's steps run on it over the
/// forwarded port; a failing step's status is the exit code.
#[test]
fn pipeline_exec_runs_a_virter_file_on_a_running_vm() {
    use std::time::Duration;
    use virt_pipeline::vm::qemu::{Vm, VmConfig};
    let fixture = debian_fixture();
    let tmp = tempfile::tempdir().unwrap();
    let SshKey { private: key, public } = test_ssh_key("exec-test");
    let body = format!(
        "[[stages]]\n[stages.customize]\nsteps = [{{ ssh_inject = {{ user = \"root\", key = \"{}\" }} }}]\n",
        public.trim()
    );
    let (_dir, file) = write_pipeline(&fixture, "exec-target", &body);
    let out = pipeline(&fixture.dir, &fixture.gnupg, &["--work-dir", "work", "run", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let layer = PathBuf::from(stdout(&out).trim().lines().last().unwrap());

    let disk = tmp.path().join("vm.qcow2");
    virt_pipeline::image::qemu_img::create_overlay(&layer, &disk, None).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = VmConfig::new(accel());
    config.disks.push((disk, "qcow2".into()));
    config.forwards.push((port, 22));
    let mut vm = Vm::start(&config, &tmp.path().join("console.log")).unwrap();
    vm.wait_for_console("login:", Duration::from_secs(480)).unwrap_or_else(|e| panic!("{e:#}"));

    let provisioning = write_file(
        tmp.path(),
        "exec.toml",
        "version = 1\n[values]\nName = \"exec\"\n[env]\nWHO = \"{{ .Name }}\"\n[[steps]]\n[steps.shell]\nscript = \"\"\"\necho \"ran by $WHO\" > /root/exec-proof\ncat /root/exec-proof\n\"\"\"\n",
    );
    let known_hosts = tmp.path().join("known_hosts");
    let target = format!("root@127.0.0.1:{port}");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> =
            ["--work-dir", "work", "exec", "--ssh-key", key.to_str().unwrap()].iter().map(|s| s.to_string()).collect();
        a.extend(["--known-hosts".to_string(), known_hosts.display().to_string()]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        pipeline(tmp.path(), &fixture.gnupg, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // sshd may still be starting after the login prompt: the connection retries.
    let out = run(&["-p", provisioning.to_str().unwrap(), &target]);
    assert!(out.status.success(), "{}", stderr(&out));
    let logs = std::fs::read_dir(tmp.path().join("work/logs/exec")).unwrap().count();
    assert!(logs > 0, "exec keeps a log");
    // The file the step wrote is there, read back by a second run with `--set` alone.
    let out =
        run(&["--set", "steps[0].shell.script=test \"$(cat /root/exec-proof)\" = \"ran by exec\" || exit 7", &target]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["--set", "steps[0].shell.script=exit 7", &target]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    vm.kill();
}

/// (b) A step exiting 7: `pipeline run` exits 7, as Virter does, and no layer is left.
#[test]
fn a_failing_step_gives_its_exit_code_and_leaves_no_layer() {
    let fixture = debian_fixture();
    // What killed runs of earlier test runs may have left in the kept fixture is theirs.
    let scratch_before = leftover_scratch(&fixture.dir.join("work"), &["vm", "provision"]);
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
    assert_eq!(leftover_scratch(&work, &["vm", "provision"]), scratch_before, "scratch files removed");
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
