//! Signals during a run, as an operator (Ctrl-C) or systemd (SIGTERM on stop) sends them:
//! the run stops within seconds, qemu and the libguestfs appliance are gone, the stage's
//! temporary layer and scratch files are removed, and the exit code is 128 + the signal. A
//! SIGKILLed run cannot clean up, but its VM dies with it and `cache gc` sweeps what it left.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use virt_pipeline::base::interrupt::descendants;

/// The d-i netboot kernel and initrd Debian packages: a VM that boots without a network.
const DI: &str = "/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64";

fn spawn(dir: &Path, file: &Path) -> Child {
    Command::new(bin())
        .args(["--work-dir", "work", "run", file.to_str().unwrap()])
        .current_dir(dir)
        .env("GNUPGHOME", gnupg_home(dir))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the run has a qemu process below it (appliance or VM) and has been in the
/// stage for `settle`; returns every process below the run at that moment.
fn wait_for_qemu(child: &Child, settle: Duration) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "no qemu started below the run");
        if descendants(child.id()).iter().any(|&p| is_qemu(p)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(settle);
    let pids = descendants(child.id());
    assert!(pids.iter().any(|&p| is_qemu(p)), "qemu exited by itself");
    pids
}

fn is_qemu(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("qemu-system"))
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"))
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().unwrap().success());
}

/// Waits for the run to exit (a hang guard, not a timing assertion); its exit code and stderr.
fn finish(mut child: Child) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            eprintln!("--- stderr of the run\n{err}");
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the run did not stop after the signal");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a stopped run must not leave: temporary layers, scratch directories, processes.
fn assert_clean(dir: &Path, before: &[u32]) {
    let left: Vec<PathBuf> = std::fs::read_dir(dir.join("work/layers"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(left.is_empty(), "temporary layers left: {left:?}");
    let scratch: Vec<PathBuf> = std::fs::read_dir(dir.join("work"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("scratch-"))
        .collect();
    assert!(scratch.is_empty(), "scratch directories left: {scratch:?}");
    // Processes get a moment to be reaped by init after their parent exited.
    let deadline = Instant::now() + Duration::from_secs(10);
    while before.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let running: Vec<u32> = before.iter().copied().filter(|&p| alive(p)).collect();
    assert!(running.is_empty(), "processes of the run still running: {running:?}");
}

#[test]
fn sigterm_and_a_double_ctrl_c_during_an_appliance_stage_clean_up() {
    let images = fake_images();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = write_file(
        dir,
        "p.toml",
        &format!(
            "version = 1\nfrom = {{ image = \"{}\" }}\n[pipeline]\nname = \"stopped\"\n[[stages]]\n[stages.sysprep]\nzero_free_space = true\n",
            images.debian.display()
        ),
    );

    // SIGTERM (systemd stopping the nightly unit) while the appliance works.
    let child = spawn(dir, &file);
    let pids = wait_for_qemu(&child, Duration::from_secs(3));
    signal(child.id(), "TERM");
    let (code, err) = finish(child);
    assert_eq!(code, Some(143), "{err}");
    assert!(err.contains("stage 2 (sysprep) stopped by SIGTERM"), "{err}");
    assert_clean(dir, &pids);

    // Ctrl-C twice in a row: the second one must not skip the cleanup.
    let child = spawn(dir, &file);
    let pids = wait_for_qemu(&child, Duration::from_secs(3));
    signal(child.id(), "INT");
    signal(child.id(), "INT");
    let (code, err) = finish(child);
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("stage 2 (sysprep) stopped by SIGINT"), "{err}");
    assert_clean(dir, &pids);

    // Only the imported image is a layer: the interrupted sysprep left none.
    let layers = std::fs::read_dir(dir.join("work/layers"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "qcow2"))
        .count();
    assert_eq!(layers, 1);
}

#[test]
fn a_vm_stage_stops_on_sigterm_and_its_vm_dies_with_a_killed_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = write_file(
        dir,
        "p.toml",
        &format!(
            "version = 1\n[pipeline]\nname = \"vm\"\n[[stages]]\n[stages.install]\nmethod = \"netboot\"\nkernel = \"{DI}/linux\"\ninitrd = \"{DI}/initrd.gz\"\ndisk_size = \"1G\"\nmemory = \"256M\"\ncpus = 1\n"
        ),
    );

    let child = spawn(dir, &file);
    let pids = wait_for_qemu(&child, Duration::from_secs(2));
    signal(child.id(), "TERM");
    let (code, err) = finish(child);
    assert_eq!(code, Some(143), "{err}");
    assert_clean(dir, &pids);

    // SIGKILL: no cleanup can run, but qemu gets its parent-death signal...
    let mut child = spawn(dir, &file);
    let pids = wait_for_qemu(&child, Duration::from_secs(2));
    let qemu: Vec<u32> = pids.iter().copied().filter(|&p| is_qemu(p)).collect();
    signal(child.id(), "KILL");
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while qemu.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!qemu.iter().any(|&p| alive(p)), "qemu outlived the killed run");
    // ...and gc sweeps the temporary layer and the scratch directory the run left.
    let leftovers = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("work"))
            .unwrap()
            .flatten()
            .chain(std::fs::read_dir(dir.join("work/layers")).unwrap().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("scratch-") || n.starts_with(".tmp-"))
            .collect();
        names.sort();
        names
    };
    assert_eq!(leftovers(dir).len(), 2, "{:?}", leftovers(dir));
    let gnupg = gnupg_home(dir);
    let out = pipeline(dir, &gnupg, &["--work-dir", "work", "cache", "gc"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("1 scratch directories"), "{}", stdout(&out));
    assert!(leftovers(dir).is_empty(), "{:?}", leftovers(dir));
}
