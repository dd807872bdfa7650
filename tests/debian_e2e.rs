//! The README's main job end to end: `pipeline run pipelines/debian-bookworm.toml` debootstraps
//! Debian 12, syspreps it and publishes it into repo-index/; the result boots under qemu to a
//! login prompt with sshd running (its host keys regenerated on first boot), and a second
//! run reuses every layer. The work directory is a shared fixture, so the debootstrap runs
//! once per test run.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;
use virt_pipeline::vm::qemu::{Vm, VmConfig};

#[test]
fn debian_bookworm_pipeline_publishes_a_bootable_image() {
    let base = fixture_dir().join("debian-bookworm");
    std::fs::create_dir_all(&base).unwrap();
    let gnupg = gnupg_home(&base);
    let file = repo_root().join("pipelines/debian-bookworm.toml");
    let file = file.to_str().unwrap();

    let out = pipeline(&base, &gnupg, &["--work-dir", "work", "run", file]);
    assert!(out.status.success(), "the main job failed:\n{}", stderr(&out));
    let layer = stdout(&out).trim().to_string();

    // Everything is cached now; a second run reuses all layers and republishes nothing.
    let plan = pipeline(&base, &gnupg, &["--work-dir", "work", "plan", file]);
    let plan = stdout(&plan);
    assert_eq!(plan.lines().filter(|l| l.contains("cached")).count(), 3, "{plan}");
    let again = pipeline(&base, &gnupg, &["--work-dir", "work", "run", file]);
    assert!(again.status.success());
    assert_eq!(stderr(&again).matches(": cached").count(), 3, "{}", stderr(&again));
    assert_eq!(stdout(&again).trim(), layer);

    let verify = pipeline(&base, &gnupg, &["repo", "verify", "repo-index"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
    let index = std::fs::read_to_string(base.join("repo-index/index")).unwrap();
    assert!(index.contains("[debian-bookworm]") && index.contains("osinfo=debian12"), "{index}");

    // Boot a throwaway overlay of the last layer with BIOS and GRUB, as a user would.
    let scratch = tempfile::tempdir().unwrap();
    let disk = scratch.path().join("boot.qcow2");
    virt_pipeline::image::qemu_img::create_overlay(Path::new(&layer), &disk, None).unwrap();
    let mut config = VmConfig::new(accel());
    config.disks.push((disk, "qcow2".into()));
    let console = scratch.path().join("console.log");
    let mut vm = Vm::start(&config, &console).unwrap();
    vm.wait_for_console("login:", Duration::from_secs(480)).unwrap_or_else(|e| panic!("{e:#}"));
    // Boot messages are not ordered: sshd may report after the login prompt.
    let text = vm
        .wait_for_console("OpenBSD Secure Shell server", Duration::from_secs(540))
        .unwrap_or_else(|e| panic!("sshd: {e:#}"));
    vm.kill();
    assert!(text.contains("Debian GNU/Linux 12 base-image.example.net ttyS0"), "the hostname is set:\n{}", tail(&text));
    assert!(text.contains("base-image login:"), "{}", tail(&text));
    assert!(
        text.contains("Regenerate SSH host keys") || text.contains("regenerate-ssh-ho"),
        "host keys are made on first boot"
    );
    assert!(text.contains("OpenBSD Secure Shell server"), "sshd starts:\n{}", tail(&text));
    assert!(!text.contains("Failed to start ssh"), "sshd must have host keys:\n{}", tail(&text));
}

fn tail(text: &str) -> String {
    virt_pipeline::vm::qemu::tail(text, 40)
}
