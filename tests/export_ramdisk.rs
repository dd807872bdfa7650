//! The ramdisk export on the shared Debian fixture, checked by its consumer: qemu boots the
//! kernel and the cpio with no disk attached, to a login prompt, and sshd lets us in to a
//! root filesystem in a tmpfs.
//! `scripts/test` runs it with the other booting tests, one at a time.

mod common;

use common::{debian_fixture, stderr, stdout};
use std::time::{Duration, Instant};
use virt_pipeline::vm::qemu::{Vm, VmConfig};

#[test]
fn the_ramdisk_boots_from_memory_with_no_disk_and_sshd_answers() {
    let fixture = debian_fixture();
    let dir = tempfile::tempdir().unwrap();
    let key = common::test_ssh_key("ramdisk-test");
    let dest = dir.path().join("ramdisk");
    let stages = format!(
        "[[stages]]\n[stages.customize]\nsteps = [{{ ssh_inject = {{ user = \"root\", key = \"{}\" }} }}]\n\
         [[stages]]\n[stages.export]\ntarget = \"ramdisk\"\ndest = \"{}\"\n",
        key.public.trim(),
        dest.display()
    );
    let file = common::fixture_pipeline(dir.path(), &fixture, "export-ramdisk", &stages);
    let out = common::run_on_fixture(&fixture, &file, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let kernel = dest.join("vmlinuz");
    let initrd = dest.join("rootfs.cpio.zst");
    assert!(kernel.is_file() && initrd.is_file(), "{:?}", std::fs::read_dir(&dest).unwrap().collect::<Vec<_>>());
    // The export says how much memory the guest needs; boot it with that much.
    let text = stderr(&out);
    let memory: u64 = text
        .split("give the VM at least ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no memory figure in: {text}"));

    let port = common::free_port();
    let mut config = VmConfig::new(common::accel());
    config.memory = format!("{memory}M");
    // A kernel panic (an archive that does not fit, a missing init) ends qemu at once.
    config.kernel = Some((kernel, initrd, "console=ttyS0 panic=-1".into()));
    config.no_reboot = true;
    config.forwards.push((port, 22));
    config.rng = true;
    assert!(config.disks.is_empty() && config.cdrom.is_none(), "no disk at all");
    let mut vm = Vm::start(&config, &dir.path().join("console.log")).unwrap();
    let console = vm.wait_for_console("login:", Duration::from_secs(600)).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!console.contains("virt-pipeline ramdisk:"), "the ramdisk's /init failed:\n{}", tail(&console));

    // sshd answers, and the root filesystem is the tmpfs /init made, not the kernel's rootfs.
    let started = Instant::now();
    let report = loop {
        let out = common::ssh(&key.private, port, "root", "findmnt -n -o FSTYPE,SOURCE /; df -k / | tail -1; ls /dev/vd* 2>&1; grep -c '^#ramdisk# ' /etc/fstab; test -e /init || echo no-init");
        if out.status.success() {
            break stdout(&out);
        }
        assert!(vm.try_exit().unwrap().is_none(), "qemu exited: {}", vm.stderr());
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "sshd did not let us in: {}\n{}",
            stderr(&out),
            tail(&vm.console_text())
        );
        std::thread::sleep(Duration::from_secs(5));
    };
    vm.kill();
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["tmpfs", "ramdisk-root"], "{report}");
    assert!(lines[1].starts_with("ramdisk-root"), "df / works: {report}");
    assert!(lines[2].contains("No such file"), "no disk in the guest: {report}");
    assert!(lines[3].parse::<u32>().unwrap() >= 1, "the fstab's disk entries are off: {report}");
    assert_eq!(lines[4], "no-init", "/init stays behind in the initramfs: {report}");
}

fn tail(text: &str) -> String {
    virt_pipeline::vm::qemu::tail(text, 40)
}
