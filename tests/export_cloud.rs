//! The cloud export on the shared Debian fixture, checked by its consumer: cloud-init in the
//! booted image, given the NoCloud seed ISO the export writes beside it, takes the hostname
//! and the SSH key from it (we log in with that key and ask for the hostname). One boot: the
//! ConfigDrive format is read by cloud-init's own reader in tests/seed.rs
//! (`configdrive_iso_is_what_cloud_init_reads`), and the image's datasource list, which lets
//! cloud-init look for it, by the cloud target's unit test. `scripts/test` runs it with the
//! other booting tests, one at a time.

mod common;

use common::{debian_fixture, stderr, stdout, DebianFixture, SshKey};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};
use virt_pipeline::vm::qemu::{Vm, VmConfig};

fn pipeline(fixture: &DebianFixture, cwd: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--work-dir", "work"];
    all.extend_from_slice(args);
    let mut cmd = std::process::Command::new(common::bin());
    cmd.args(&all).current_dir(cwd).env("GNUPGHOME", &fixture.gnupg);
    let out = cmd.output().unwrap();
    eprintln!(
        "$ pipeline {}\n--- stdout\n{}--- stderr\n{}--- exit {:?}",
        all.join(" "),
        stdout(&out),
        stderr(&out),
        out.status.code()
    );
    out
}

fn seed_file(dir: &Path, name: &str, hostname: &str, key: &SshKey) -> PathBuf {
    common::write_file(
        dir,
        &format!("{name}.toml"),
        &format!("instance_id = \"{name}-1\"\nhostname = \"{hostname}\"\nssh_keys = [\"{}\"]\n", key.public.trim()),
    )
}

/// Boots the exported image with the seed ISO as a CD-ROM and waits until `user` can log in
/// with `key`; returns what `hostname` says in the guest.
fn boot_with_seed(disk: &Path, iso: &Path, key: &SshKey, user: &str, scratch: &Path) -> String {
    let overlay = scratch.join(format!("{}.qcow2", iso.file_stem().unwrap().to_string_lossy()));
    virt_pipeline::image::qemu_img::create_overlay(disk, &overlay, None).unwrap();
    let port = common::free_port();
    let mut config = VmConfig::new(common::accel());
    config.disks.push((overlay, "qcow2".into()));
    config.cdrom = Some(iso.to_path_buf());
    config.forwards.push((port, 22));
    config.rng = true;
    let mut vm = Vm::start(&config, &scratch.join(format!("{}.console", iso.display()))).unwrap();
    let started = Instant::now();
    let hostname = loop {
        let out = common::ssh(&key.private, port, user, "hostname; sudo -n true && echo sudo-ok");
        if out.status.success() {
            break stdout(&out);
        }
        assert!(vm.try_exit().unwrap().is_none(), "qemu exited: {}", vm.stderr());
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "{user} could not log in with the seed's key: {}\n{}",
            stderr(&out),
            virt_pipeline::vm::qemu::tail(&vm.console_text(), 60)
        );
        std::thread::sleep(Duration::from_secs(5));
    };
    vm.kill();
    hostname
}

#[test]
fn the_cloud_image_takes_hostname_and_key_from_its_nocloud_seed() {
    let fixture = debian_fixture();
    let dir = tempfile::tempdir().unwrap();
    let key = common::test_ssh_key("cloud-test");
    let dest = dir.path().join("cloud");
    let seed = seed_file(dir.path(), "nocloud", "cloud-nocloud", &key);
    let stages = format!(
        "[[stages]]\n[stages.export]\ntarget = \"cloud\"\ndest = \"{}\"\nuser = \"ops\"\nseed = \"{}\"\n",
        dest.display(),
        seed.display()
    );
    let file = common::write_file(
        dir.path(),
        "export-cloud.toml",
        &format!(
            "version = 1\nfrom = {{ pipeline = \"{}\" }}\n[pipeline]\nname = \"export-cloud\"\n{stages}",
            fixture.pipeline.display()
        ),
    );
    let out = pipeline(&fixture, &fixture.dir, &["run", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let disk = dest.join("disk.qcow2");
    let info = virt_pipeline::image::qemu_img::info_as(&disk, "qcow2").unwrap();
    assert!(info.backing_filename.is_none(), "a standalone image");
    let nocloud = dest.join("seed.iso");
    assert!(nocloud.is_file(), "the seed key writes an ISO beside the image");

    // The seed written beside the image: NoCloud.
    let scratch = tempfile::tempdir().unwrap();
    let report = boot_with_seed(&disk, &nocloud, &key, "ops", scratch.path());
    assert_eq!(report.lines().collect::<Vec<_>>(), ["cloud-nocloud", "sudo-ok"], "{report}");
}
