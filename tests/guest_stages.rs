//! The customize and sysprep stages on small disks with fake Debian and Fedora trees, with
//! real libguestfs: what each operation removes and keeps, zero-fill/fstrim freeing space,
//! and `pipeline inspect`. Appliance launches are grouped; tests run one at a time.

mod common;

use common::*;
use std::path::Path;

const SEED_OPERATIONS: &str = "[\"abrt-data\", \"bash-history\", \"blkid-tab\", \"crash-data\", \"cron-spool\", \"dhcp-client-state\", \"hostname\", \"logfiles\", \"machine-id\", \"mail-spool\", \"net-hostname\", \"net-hwaddr\", \"pacct-log\", \"package-manager-cache\", \"puppet-data-log\", \"random-seed\", \"rpm-db\", \"ssh-hostkeys\", \"tmp-files\", \"udev-persistent-net\", \"utmp\", \"yum-uuid\"]";

fn run_ok(dir: &Path, gnupg: &Path, args: &[&str]) -> String {
    let out = pipeline(dir, gnupg, args);
    assert!(out.status.success(), "pipeline {args:?} failed:\n{}", stderr(&out));
    stdout(&out).trim().to_string()
}

#[test]
fn sysprep_and_customize_on_fake_debian_fedora_and_rhel() {
    let images = fake_images();
    let dir = tempfile::tempdir().unwrap();
    let gnupg = gnupg_home(dir.path());
    let work = dir.path().join("work");
    let work = work.to_str().unwrap();

    // Debian: customize (delete the 64 MiB file, write, append, mkdir, link, chmod,
    // run-command, root password), then the seed's operation list with zero-fill and fstrim.
    let debian = write_file(
        dir.path(),
        "debian.toml",
        &format!(
            r#"version = 1
from = {{ image = "{}" }}
[pipeline]
name = "fake-debian"
[values]
Host = "web1.example.net"
[[stages]]
[stages.customize]
steps = [
  {{ delete = "/big" }},
  {{ mkdir = "/opt/app" }},
  {{ write = {{ path = "/opt/app/motd", content = "hello {{{{ Host }}}}\n" }} }},
  {{ append_line = {{ path = "/etc/hosts", line = "10.0.0.1 db" }} }},
  {{ link = {{ target = "/opt/app/motd", link = "/etc/motd" }} }},
  {{ chmod = {{ mode = "0600", path = "/opt/app/motd" }} }},
  {{ root_password = "password:s3cret" }},
]
[[stages]]
[stages.sysprep]
enable = {SEED_OPERATIONS}
hostname = "{{{{ Host }}}}"
zero_free_space = true
fstrim = true
"#,
            images.debian.display()
        ),
    );
    let debian_layer = run_ok(dir.path(), &gnupg, &["--work-dir", work, "run", debian.to_str().unwrap()]);

    // Fedora: the default operation set; its 1 KiB-block filesystem is zero-filled the
    // classic way before the trim.
    let fedora = write_file(
        dir.path(),
        "fedora.toml",
        &format!(
            "version = 1\nfrom = {{ image = \"{}\" }}\n[pipeline]\nname = \"fake-fedora\"\n[[stages]]\n[stages.sysprep]\nzero_free_space = true\nfstrim = true\n",
            images.fedora.display()
        ),
    );
    let logs = dir.path().join("logs");
    let fedora_layer = run_ok(
        dir.path(),
        &gnupg,
        &["--work-dir", work, "run", fedora.to_str().unwrap(), "--log-dir", logs.to_str().unwrap()],
    );
    let fedora_log =
        std::fs::read_dir(logs.join("fake-fedora")).unwrap().next().unwrap().unwrap().path().join("02-sysprep.log");
    let fedora_log = std::fs::read_to_string(fedora_log).unwrap();
    assert!(fedora_log.contains("zero-free-space / (ext4, 1024-byte blocks)"), "small blocks are zero-filled");
    assert!(fedora_log.contains("fstrim / (ext4, 1024-byte blocks)"));

    // RHEL 7: the default set, for the operations that act on RHEL or yum only.
    let rhel = write_file(
        dir.path(),
        "rhel.toml",
        &format!(
            "version = 1\nfrom = {{ image = \"{}\" }}\n[pipeline]\nname = \"fake-rhel\"\n[[stages]]\n[stages.sysprep]\n",
            images.rhel.display()
        ),
    );
    let rhel_layer = run_ok(dir.path(), &gnupg, &["--work-dir", work, "run", rhel.to_str().unwrap()]);

    // The customize layer still holds /big's blocks; after sysprep's zero-fill + fstrim they
    // read as zeros and take no space.
    let plan = run_ok(dir.path(), &gnupg, &["--work-dir", work, "plan", debian.to_str().unwrap()]);
    assert!(plan.lines().all(|l| l.contains("cached")), "{plan}");
    let customize_key = plan.lines().nth(1).unwrap().split_whitespace().nth(2).unwrap().to_string();
    let customize_layer = std::fs::read_dir(Path::new(work).join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name().unwrap().to_string_lossy().starts_with(&customize_key) && p.extension().unwrap() == "qcow2"
        })
        .unwrap();
    let before = required_bytes(&customize_layer);
    let after = required_bytes(Path::new(&debian_layer));
    assert!(after + (48 << 20) < before, "zero-fill+fstrim should free the deleted 64 MiB: {before} -> {after}");
    assert!(holds_marker(&customize_layer), "the deleted file's data is still on disk before sysprep");
    assert!(!holds_marker(Path::new(&debian_layer)), "zero-free-space left deleted data readable");

    let g = open_readonly(&[Path::new(&debian_layer), Path::new(&fedora_layer), Path::new(&rhel_layer)]);
    mount_disk(&g, 0);
    let exists = |p: &str| g.exists(p).unwrap();
    let read = |p: &str| g.read_string(p).unwrap();
    for gone in [
        "/big",
        "/var/spool/abrt/crash1",
        "/root/.bash_history",
        "/home/u/.bash_history",
        "/etc/blkid.tab",
        "/var/crash/core.1",
        "/var/spool/cron/crontabs/root",
        "/var/lib/dhcp/dhclient.leases",
        "/var/log/syslog",
        "/var/log/apt/history.log",
        "/var/log/journal/abc",
        "/var/mail/root",
        "/var/log/puppet/puppet.log",
        "/var/cache/apt/archives/foo_1.0_amd64.deb",
        "/etc/ssh/ssh_host_rsa_key",
        "/etc/ssh/ssh_host_rsa_key.pub",
        "/etc/ssh/ssh_host_ed25519_key",
        "/etc/udev/rules.d/70-persistent-net.rules",
        "/var/run/utmp",
        "/tmp/t",
        "/tmp/.hidden",
        "/var/tmp/v",
    ] {
        assert!(!exists(gone), "{gone} should have been removed");
    }
    // Kept: what the seed's list does not name, and what the operations must not touch.
    for kept in [
        "/etc/passwd",
        "/etc/passwd-",
        "/etc/foo.conf.bak",
        "/etc/ssh/sshd_config",
        "/home/u/.profile",
        "/root/.ssh/authorized_keys",
        "/var/cache/apt/archives/partial",
        "/var/log/apt",
        "/tmp",
    ] {
        assert!(exists(kept), "{kept} should have been kept");
    }
    assert_eq!(read("/var/spool/cron/atjobs/.SEQ"), "00000\n");
    assert_eq!(read("/var/log/account/pacct"), "", "pacct is emptied, not removed");
    assert_eq!(read("/etc/machine-id"), "", "machine-id stays empty so clones differ");
    assert_eq!(read("/etc/hostname"), "web1.example.net\n");
    assert!(read("/etc/hosts").contains("127.0.1.1\tweb1.example.net web1"), "{}", read("/etc/hosts"));
    let seed = g.read_file("/var/lib/systemd/random-seed").unwrap();
    assert_eq!(seed.len(), 512);
    assert!(seed.iter().any(|&b| b != 0));
    assert!(read("/etc/systemd/system/regenerate-ssh-host-keys.service").contains("ssh-keygen -A"));
    assert!(g.is_symlink("/etc/systemd/system/multi-user.target.wants/regenerate-ssh-host-keys.service").unwrap());
    // The customize steps, in order.
    assert_eq!(read("/opt/app/motd"), "hello web1.example.net\n");
    assert!(read("/etc/hosts").ends_with("10.0.0.1 db\n"));
    assert!(g.is_symlink("/etc/motd").unwrap());
    assert_eq!(g.lstat_mode("/opt/app/motd").unwrap() & 0o777, 0o600);
    let root = read("/etc/shadow").lines().next().unwrap().to_string();
    assert!(root.starts_with("root:$6$"), "{root}");

    // Fedora with the default set.
    mount_disk(&g, 1);
    let ifcfg = g.read_string("/etc/sysconfig/network-scripts/ifcfg-eth0").unwrap();
    assert!(!ifcfg.contains("HWADDR") && !ifcfg.contains("HOSTNAME"), "{ifcfg}");
    assert!(ifcfg.contains("BOOTPROTO=dhcp") && ifcfg.contains("DEVICE=eth0"), "{ifcfg}");
    for gone in [
        "/etc/NetworkManager/system-connections/eth0.nmconnection",
        "/var/lib/rpm/__db.001",
        "/root/.ssh",
        "/etc/passwd-",
        "/etc/shadow-",
        "/etc/foo.conf.bak",
        "/var/cache/dnf/metadata.solv",
        "/var/log/messages",
        "/var/log/audit/audit.log",
        "/var/log/anaconda/anaconda.log",
        "/root/anaconda-ks.cfg",
        "/tmp/t",
        "/etc/pki/consumer/cert.pem",
        "/etc/pki/entitlement/1.pem",
        "/etc/sysconfig/rhn/systemid",
        "/etc/sysconfig/rhn/osad-auth.conf",
        "/var/lib/yum/uuid",
        "/etc/smolt/uuid",
        "/var/log/sssd/sssd.log",
        "/var/lib/sss/db/cache_example.ldb",
        "/etc/ipa/default.conf",
        "/var/lib/ipa-client/sysrestore/sysrestore.index",
        "/etc/pki/ca-trust/source/anchors/ipa-ca.crt",
        "/etc/krb5.keytab",
        "/var/log/samba/log.smbd",
        "/var/lib/samba/private/secrets.tdb",
        "/var/lib/dovecot/instances",
        "/var/lib/dhcpd/dhcpd.leases",
        "/var/lib/dhclient/dhclient-eth0.leases",
        "/var/run/faillock/root",
        "/etc/lvm/devices/system.devices",
        "/var/spool/abrt/ccpp-1",
        "/var/spool/mail/root",
    ] {
        assert!(!g.exists(gone).unwrap(), "fedora: {gone} should have been removed");
    }
    for kept in [
        "/var/lib/rpm/rpmdb.sqlite",
        "/etc/passwd",
        "/etc/shadow",
        "/etc/krb5.conf",
        "/var/lib/samba/private",
        "/var/log/audit",
    ] {
        assert!(g.exists(kept).unwrap(), "fedora: {kept} should have been kept");
    }
    assert_eq!(g.read_string("/etc/machine-id").unwrap(), "");
    assert_eq!(g.read_string("/var/account/pacct").unwrap(), "");
    assert_eq!(g.read_string("/etc/hostname").unwrap(), "localhost.localdomain\n");

    // RHEL 7 with the default set; its root is on LVM, whose UUIDs are new.
    let (pv_uuid, vg_uuid) = &images.rhel_lvm_uuids;
    assert_ne!(&g.pvuuid("/dev/sdc1").unwrap(), pv_uuid, "lvm-uuids gives the PV a new UUID");
    assert_ne!(&g.vguuid("rhel").unwrap(), vg_uuid, "lvm-uuids gives the VG a new UUID");
    g.umount_all().unwrap();
    g.mount_ro("/dev/rhel/root", "/").unwrap();
    for gone in [
        "/etc/pki/consumer/cert.pem",
        "/etc/pki/entitlement/1.pem",
        "/etc/sysconfig/rhn/systemid",
        "/etc/sysconfig/rhn/osad-auth.conf",
        "/var/lib/yum/uuid",
        "/var/cache/yum/x86_64/7/base/repomd.xml",
    ] {
        assert!(!g.exists(gone).unwrap(), "rhel: {gone} should have been removed");
    }
    for kept in
        ["/etc/pki/consumer", "/etc/pki/entitlement", "/etc/sysconfig/rhn/up2date", "/var/cache/yum/x86_64/7/base"]
    {
        assert!(g.exists(kept).unwrap(), "rhel: {kept} should have been kept");
    }
    g.shutdown().unwrap();
}

/// A step the guest refuses fails the stage with the guest's own error text, names the step,
/// and leaves no layer for it.
#[test]
fn a_failing_customize_step_reports_the_guest_error() {
    let images = fake_images();
    let dir = tempfile::tempdir().unwrap();
    let gnupg = gnupg_home(dir.path());
    let file = write_file(
        dir.path(),
        "p.toml",
        &format!(
            "version = 1\nfrom = {{ image = \"{}\" }}\n[pipeline]\nname = \"fails\"\n[[stages]]\n[stages.customize]\nsteps = [\n  {{ mkdir = \"/opt/ok\" }},\n  {{ chmod = {{ mode = \"0600\", path = \"/no/such/file\" }} }},\n]\n",
            images.debian.display()
        ),
    );
    let out = pipeline(dir.path(), &gnupg, &["--work-dir", "work", "run", file.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("customize step 1 (chmod)"), "{err}");
    assert!(err.contains("No such file or directory"), "the guest's error text: {err}");
    let layers: Vec<_> = std::fs::read_dir(dir.path().join("work/layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".qcow2") || n.contains("tmp"))
        .collect();
    assert_eq!(layers.len(), 1, "only the imported image is kept: {layers:?}");
}

/// `method = "image"` with `disk_size` and `expand`: the last partition of a GPT disk and its
/// ext4 fill the grown disk, the backup GPT moves to the new end (sfdisk checks the table
/// from the host), the first partition and the files stay; an LVM physical volume (the fake
/// RHEL's root) grows, leaving the new space free in its volume group.
#[test]
fn an_image_grows_its_last_partition() {
    let images = fake_images();
    let dir = tempfile::tempdir().unwrap();
    let gnupg = gnupg_home(dir.path());
    let grow = |name: &str, image: &Path| {
        let file = write_file(
            dir.path(),
            &format!("{name}.toml"),
            &format!(
                "version = 1\n[pipeline]\nname = \"{name}\"\n[[stages]]\n[stages.install]\nmethod = \"image\"\nimage = \"{}\"\ndisk_size = \"512M\"\nexpand = \"{}\"\n",
                image.display(),
                if name == "gpt" { "/dev/sda2" } else { "/dev/sda1" }
            ),
        );
        run_ok(dir.path(), &gnupg, &["--work-dir", "work", "run", file.to_str().unwrap()])
    };
    let gpt_layer = grow("gpt", &images.gpt);
    let lvm_layer = grow("lvm", &images.rhel);

    let raw = dir.path().join("grown.raw");
    let st =
        std::process::Command::new("qemu-img").args(["convert", "-O", "raw", &gpt_layer]).arg(&raw).status().unwrap();
    assert!(st.success());
    let verify = std::process::Command::new("sfdisk").arg("--verify").arg(&raw).output().unwrap();
    let report = String::from_utf8_lossy(&verify.stdout).to_string() + &String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && !report.contains("corrupt"), "sfdisk --verify: {report}");
    let dump = std::process::Command::new("sfdisk").arg("--json").arg(&raw).output().unwrap();
    let table: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
    let table = &table["partitiontable"];
    let sectors = 512u64 << 11;
    assert_eq!(table["lastlba"], sectors - 34, "the GPT's usable area reaches the new end: {table}");
    let parts = table["partitions"].as_array().unwrap();
    assert_eq!((parts[0]["start"].as_u64(), parts[0]["size"].as_u64()), (Some(2048), Some(32768)), "{table}");
    let end = parts[1]["start"].as_u64().unwrap() + parts[1]["size"].as_u64().unwrap() - 1;
    assert_eq!(end, sectors - 34, "the last partition fills the disk: {table}");

    let g = open_readonly(&[Path::new(&gpt_layer), Path::new(&lvm_layer)]);
    g.mount_ro("/dev/sda2", "/").unwrap();
    let fs = g.filesystem_size("/").unwrap();
    assert!(fs > 400 << 20, "ext4 grew with its partition: {fs}");
    assert_eq!(g.read_string("/hello").unwrap(), "hello\n");
    let vgs = g.vgs_full().unwrap();
    let (_, size, free) = vgs.iter().find(|vg| vg.0 == "rhel").expect("the rhel volume group");
    assert!(*size > 500 << 20 && *free > 250 << 20, "the PV grew into the disk: size {size}, free {free}");
    g.umount_all().unwrap();
    g.mount_ro("/dev/rhel/root", "/").unwrap();
    assert!(g.is_file("/etc/redhat-release").unwrap());
    g.shutdown().unwrap();
}

/// Also a hung appliance: the first launch's qemu is started paused (`-S`, as a guest whose
/// kernel never comes up), so the launch outlasts its timeout; the appliance is killed and
/// launched again, and the command still answers.
#[test]
fn inspect_reports_the_distribution_even_after_a_hung_launch() {
    let images = fake_images();
    let dir = tempfile::tempdir().unwrap();
    let gnupg = gnupg_home(dir.path());
    let hv = write_file(
        dir.path(),
        "qemu-hangs-once",
        &format!(
            "#!/bin/sh\ncase \"$*\" in *guestfsd.sock*) mkdir {0}/hung 2>/dev/null && exec qemu-system-x86_64 \"$@\" -S ;; esac\n\
             exec qemu-system-x86_64 \"$@\"\n",
            dir.path().display()
        ),
    );
    std::fs::set_permissions(&hv, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = pipeline_command(dir.path(), &gnupg, &["inspect", "--json", images.fedora.to_str().unwrap()])
        .env("LIBGUESTFS_HV", &hv)
        .env("PIPELINE_LAUNCH_TIMEOUT", "20s")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.path().join("hung").is_dir(), "the first launch hung");
    assert!(
        stderr(&out).contains("did not come up within 20 s and was stopped; launching it again"),
        "{}",
        stderr(&out)
    );
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["distro"], "fedora");
    assert_eq!(v["major_version"], 39);
    assert_eq!(v["package_format"], "rpm");
    assert_eq!(v["mountpoints"][0][0], "/");
}

#[test]
fn list_operations_covers_virt_sysprep_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_ok(dir.path(), dir.path(), &["sysprep", "--list-operations"]);
    // virt-sysprep --list-operations is the reference where it is installed.
    let reference = std::process::Command::new("virt-sysprep").arg("--list-operations").output();
    let reference = match reference {
        Ok(r) if r.status.success() => String::from_utf8_lossy(&r.stdout).into_owned(),
        _ => panic!("virt-sysprep is needed as the reference (scripts/install-deps installs it)"),
    };
    for line in reference.lines() {
        let mut parts = line.split_whitespace();
        let (name, marker) = (parts.next().unwrap(), parts.next().unwrap());
        if marker == "*" && name != "customize" && name != "script" {
            assert!(out.lines().any(|l| l.starts_with(&format!("{name} *"))), "default operation {name} is missing");
        }
    }
    for seed_only in ["hostname *", "random-seed *"] {
        assert!(out.contains(seed_only), "{seed_only}");
    }
}

/// zero-free-space + fstrim on a partition at sector 63: its 4 KiB blocks straddle the
/// layer's clusters, so discards alone would leave a deleted file's data readable; the
/// classic zero-fill runs instead and none of it survives in the flattened image.
#[test]
fn zero_fill_by_discard_only_where_exact() {
    let images = fake_images();
    let dir = tempfile::tempdir().unwrap();
    let gnupg = gnupg_home(dir.path());
    let file = write_file(
        dir.path(),
        "p.toml",
        &format!(
            "version = 1\nfrom = {{ image = \"{}\" }}\n[pipeline]\nname = \"sector63\"\n[[stages]]\n[stages.customize]\nsteps = [ {{ delete = \"/big\" }} ]\n[[stages]]\n[stages.sysprep]\nenable = []\nzero_free_space = true\nfstrim = true\n",
            images.debian_sector63.display()
        ),
    );
    let logs = dir.path().join("logs");
    let out = pipeline(
        dir.path(),
        &gnupg,
        &[
            "--work-dir",
            "work",
            "run",
            file.to_str().unwrap(),
            "--log-dir",
            logs.to_str().unwrap(),
            "--output",
            "flat.raw",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let log_dir = std::fs::read_dir(logs.join("sector63")).unwrap().next().unwrap().unwrap().path();
    let customize_log = std::fs::read_to_string(log_dir.join("02-customize.log")).unwrap();
    assert!(customize_log.contains("rm_rf"), "{customize_log}");
    assert!(holds_marker(&images.debian_sector63), "the fixture holds the marker before the delete");
    assert!(!holds_marker(&dir.path().join("flat.raw")), "the deleted file's data survived in the flattened layer");
    let sysprep_log = std::fs::read_to_string(log_dir.join("03-sysprep.log")).unwrap();
    assert!(sysprep_log.contains("zero-free-space / (ext4, 4096-byte blocks)"), "{sysprep_log}");
}
