//! `method = "script"`: install methods as user scripts of phase functions. Bad scripts are
//! refused before anything runs; a failing phase is named, cleanup still runs and no layer
//! is left; the host's `/` is read-only to the phases; a small tree goes onto a GPT/UEFI
//! disk with the script's own finish run in the guest, and the script's contents are in the
//! cache key; the example mmdebstrap pipeline builds an image that boots to a login prompt.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use virt_pipeline::vm::qemu::{Vm, VmConfig};

/// A pipeline whose only stage is the script install, in a fresh directory with the script.
fn script_pipeline(dir: &Path, script: &str, extra: &str) -> PathBuf {
    write_file(dir, "install.sh", script);
    write_file(
        dir,
        "pipeline.toml",
        &format!(
            "version = 1\n[pipeline]\nname = \"script-test\"\n[[stages]]\n[stages.install]\n\
             method = \"script\"\nscript = \"install.sh\"\ndisk_size = \"1G\"\n{extra}"
        ),
    )
}

fn run(dir: &Path, file: &Path) -> std::process::Output {
    let gnupg = gnupg_home(dir);
    pipeline(
        dir,
        &gnupg,
        &["--work-dir", "work", "run", file.to_str().unwrap(), "--log-dir", dir.join("logs").to_str().unwrap()],
    )
}

/// The layers and scratch directories a run left in the work directory.
fn leftovers(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for sub in ["work", "work/layers"] {
        if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
            for e in entries {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                if name.starts_with("scratch-") || name.ends_with(".qcow2") {
                    found.push(name);
                }
            }
        }
    }
    found
}

/// The install stage's log of the newest run.
fn install_log(dir: &Path) -> String {
    let runs = dir.join("logs/script-test");
    let mut all: Vec<PathBuf> = std::fs::read_dir(&runs).unwrap().map(|e| e.unwrap().path()).collect();
    all.sort();
    let log = std::fs::read_dir(all.last().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("-install.log"))
        .expect("an install log");
    std::fs::read_to_string(log).unwrap()
}

#[test]
fn bad_scripts_and_keys_are_refused_before_anything_runs() {
    let cases: &[(&str, &str, &str, &[&str])] = &[
        ("setup() { :; }\nfinish() { :; }\n", "", "no install", &["install.sh", "defines no `install` function"]),
        ("install() {\n  if then\n}\n", "", "syntax", &["install.sh", "is not valid bash"]),
        ("install() { :; }\nprepare() { :; }\n", "", "prepare", &["defines prepare()", "layout"]),
        ("install() { :; }\n", "[stages.install.args]\nx = { y = 1 }\n", "args", &["stages[0].install.args.x"]),
        ("install() { :; }\n", "timeout = \"soon\"\n", "timeout", &["stages[0].install.timeout"]),
        ("install() { :; }\n", "layout = \"zfs\"\n", "layout", &["layout", "mbr", "gpt-uefi"]),
        ("install() { :; }\n", "upstream = [\"dists/x/InRelease\"]\n", "upstream", &["install.upstream", "URL"]),
    ];
    for (script, extra, what, needles) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join("ran");
        // Top-level code would run if the tool sourced the script to check it.
        let script = format!("touch {}\n{script}", marker.display());
        let file = script_pipeline(tmp.path(), &script, extra);
        let out = run(tmp.path(), &file);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        for n in *needles {
            assert!(err.contains(n), "{what}: `{n}` in: {err}");
        }
        assert!(err.contains("pipeline.toml"), "{what}: names the file: {err}");
        assert!(!marker.exists(), "{what}: the script did not run");
        assert!(leftovers(tmp.path()).is_empty(), "{what}: {:?}", leftovers(tmp.path()));
    }
}

#[test]
fn a_failing_install_names_the_phase_runs_cleanup_and_leaves_no_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let script = "install() {\n  echo half > \"$TARGET/half-done\"\n  echo 'mirror unreachable' >&2\n  return 3\n}\n\
                  cleanup() {\n  echo \"cleanup saw: $(ls \"$TARGET\")\"\n  rm -f \"$TARGET/half-done\"\n}\n";
    let file = script_pipeline(tmp.path(), script, "");
    let out = run(tmp.path(), &file);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("phase `install` failed"), "{err}");
    assert!(err.contains("mirror unreachable"), "the script's own message: {err}");
    let log = install_log(tmp.path());
    assert!(
        log.contains("== cleanup") && log.contains("cleanup saw: half-done"),
        "cleanup ran after the failure: {log}"
    );
    assert!(leftovers(tmp.path()).is_empty(), "{:?}", leftovers(tmp.path()));
}

#[test]
fn a_script_that_writes_outside_target_fails_on_the_read_only_root() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("escaped");
    let script = "install() {\n  touch \"$TARGET/inside\"\n  touch \"$ARG_OUTSIDE\"\n}\n";
    let file =
        script_pipeline(tmp.path(), script, &format!("[stages.install.args]\noutside = \"{}\"\n", outside.display()));
    let out = run(tmp.path(), &file);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("phase `install` failed"), "{err}");
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!outside.exists(), "the host file was not created");
    assert!(leftovers(tmp.path()).is_empty(), "{:?}", leftovers(tmp.path()));
}

/// A tiny tree (busybox as /bin/sh) on a gpt-uefi disk, the script's finish run in the
/// guest with the disk's variables; then the plan: cached while the script and its upstream
/// release file are unchanged, to run naming the change when the release file changes (and
/// cached again when it is restored), to run once the script's text changes.
#[test]
fn a_tree_goes_onto_a_gpt_uefi_disk_and_the_script_is_part_of_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let script = "install() {\n  mkdir -p \"$TARGET/bin\" \"$TARGET/etc\"\n  cp /bin/busybox \"$TARGET/bin/\"\n\
                  ln -s busybox \"$TARGET/bin/sh\"\n  echo \"$ARG_WORD\" > \"$TARGET/etc/word\"\n}\n\
                  finish() {\n  echo \"$LAYOUT $DISK $ROOT_DEVICE $ESP_DEVICE $ROOT_UUID\" > /etc/finish-proof\n}\n";
    let (mirror, url) = Mirror::start();
    let release = "/debian/dists/tiny/InRelease";
    mirror.put(release, b"Date: Mon, 30 Nov 2026 08:00:00 UTC\n", None);
    let extra = format!(
        "layout = \"gpt-uefi\"\nhostname = \"tiny.example.net\"\nupstream = [\"{url}{release}\"]\n\
         [stages.install.args]\nword = \"hello\"\n"
    );
    let file = script_pipeline(tmp.path(), script, &extra);
    let out = run(tmp.path(), &file);
    assert!(out.status.success(), "{}", stderr(&out));
    let layer = PathBuf::from(stdout(&out).trim().lines().last().unwrap());

    let g = open_readonly(&[&layer]);
    let parts = g.list_partitions().unwrap();
    assert_eq!(parts, ["/dev/sda1", "/dev/sda2"]);
    assert_eq!(g.part_get_parttype("/dev/sda").unwrap(), "gpt");
    assert_eq!(g.vfs_type("/dev/sda1").unwrap(), "vfat", "the ESP");
    assert_eq!(g.vfs_type("/dev/sda2").unwrap(), "ext4");
    let root_uuid = g.vfs_uuid("/dev/sda2").unwrap();
    g.mount_ro("/dev/sda2", "/").unwrap();
    assert_eq!(g.read_string("/etc/word").unwrap(), "hello\n", "args reach the phases");
    assert_eq!(
        g.read_string("/etc/finish-proof").unwrap(),
        format!("gpt-uefi /dev/sda /dev/sda2 /dev/sda1 {root_uuid}\n"),
        "the script's finish ran in the guest"
    );
    assert_eq!(g.read_string("/etc/hostname").unwrap(), "tiny.example.net\n");
    assert!(!g.exists("/.virt-pipeline-install.sh").unwrap(), "the script copy is removed");
    assert!(!g.exists("/etc/fstab").unwrap(), "the default finish did not run");
    drop(g);

    let gnupg = gnupg_home(tmp.path());
    let plan = |label: &str| {
        let out = pipeline(tmp.path(), &gnupg, &["--work-dir", "work", "plan", file.to_str().unwrap()]);
        assert!(out.status.success(), "{label}: {}", stderr(&out));
        stdout(&out)
    };
    assert!(plan("unchanged").contains("cached"), "an unchanged script reuses the layer");
    mirror.put(release, b"Date: Tue, 01 Dec 2026 08:00:00 UTC\n", None);
    let moved = plan("mirror moved on");
    assert!(moved.contains("to run") && moved.contains(&format!("{url}{release} changed")), "{moved}");
    mirror.put(release, b"Date: Mon, 30 Nov 2026 08:00:00 UTC\n", None);
    assert!(plan("mirror restored").contains("cached"), "the restored release file finds the layer again");
    let path = tmp.path().join("install.sh");
    std::fs::write(&path, format!("{}# a changed comment\n", std::fs::read_to_string(&path).unwrap())).unwrap();
    let changed = plan("changed");
    assert!(changed.contains("to run") && !changed.contains("cached"), "a changed script rebuilds: {changed}");
}

/// The end-to-end check: pipelines/debian-bookworm-mmdebstrap.toml builds through
/// the example script and boots under TCG to a login prompt with its hostname.
#[test]
fn the_mmdebstrap_example_builds_an_image_that_boots() {
    let tmp = tempfile::tempdir().unwrap();
    let gnupg = gnupg_home(tmp.path());
    let example = "pipelines/debian-bookworm-mmdebstrap.toml";
    let file = repo_root().join(example);
    let logs = tmp.path().join("logs");
    // The work directory is a fixture kept between runs: the install is built when the
    // example, its script or the tool changed (or the mirror did), and the image boots each run.
    let (_, out) =
        cached_fixture("mmdebstrap-example", &[example, "pipelines/install-scripts/mmdebstrap.sh"], |work| {
            let args = ["--work-dir", work.to_str().unwrap(), "run", file.to_str().unwrap()];
            pipeline(tmp.path(), &gnupg, &[&args[..], &["--log-dir", logs.to_str().unwrap()]].concat())
        });
    assert!(out.status.success(), "{}", stderr(&out));
    let layer = PathBuf::from(stdout(&out).trim().lines().last().unwrap());

    let disk = tmp.path().join("boot.qcow2");
    virt_pipeline::image::qemu_img::create_overlay(&layer, &disk, None).unwrap();
    let mut config = VmConfig::new(accel());
    config.disks.push((disk, "qcow2".into()));
    let mut vm = Vm::start(&config, &tmp.path().join("console.log")).unwrap();
    let text = vm.wait_for_console("login:", Duration::from_secs(480)).unwrap_or_else(|e| panic!("{e:#}"));
    vm.kill();
    assert!(
        text.contains("Debian GNU/Linux 12 mmdebstrap.example.net ttyS0"),
        "{}",
        &text[text.len().saturating_sub(3000)..]
    );
}

/// The Rocky example cannot run here (no Rocky mirror, no dnf), but it must load: bash
/// parses the script, it defines install and finish, and the keys are the schema's. Planned
/// offline: its upstream repositories are not reachable from here.
#[test]
fn the_rocky_dnf_example_is_a_valid_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let gnupg = gnupg_home(tmp.path());
    let file = repo_root().join("pipelines/rocky-9-dnf.toml");
    let mirror = "values.Mirror=https://dl.rockylinux.org/pub/rocky/9";
    let args = ["--work-dir", "work", "plan", "--offline", file.to_str().unwrap(), "--set", mirror];
    let out = pipeline(tmp.path(), &gnupg, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = stdout(&out);
    assert!(plan.contains("install") && plan.contains("reads") && plan.contains("dnf-installroot.sh"), "{plan}");
}
