//! Shared helpers for the integration tests: the `pipeline` binary, a private GnuPG home,
//! and small disk images built once per test run with real libguestfs (a fake Debian and a
//! fake Fedora tree that inspection recognises), and `pipeline serve` in the background.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use virt_pipeline::guest::{Drive, Guest};
use virt_pipeline::vm::{Accel, AccelChoice};

pub mod garage;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pipeline"))
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where fixtures are kept between runs on this machine, outside the clone:
/// VIRT_PIPELINE_FIXTURE_CACHE, by default virt-pipeline/test-fixtures under $XDG_CACHE_HOME
/// or ~/.cache (`scripts/test --fresh` points it at an empty directory).
pub fn fixture_cache() -> PathBuf {
    let dir = std::env::var_os("VIRT_PIPELINE_FIXTURE_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
            .unwrap_or_else(|| PathBuf::from("/var/tmp"));
        cache.join("virt-pipeline/test-fixtures")
    });
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What shapes every fixture: the tool's sources, the locked dependencies and the helpers
/// that make fixtures. A fixture adds its own inputs (a pipeline file, a host binary).
const FIXTURE_SOURCES: &[&str] = &["Cargo.toml", "Cargo.lock", "src", "tests/common/mod.rs"];

/// A fixture of another key unused this long is removed (one in use by a run of other sources
/// on this machine, or by the run that read the sources before an edit, is left alone).
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// A digest of files and directory trees (paths relative to the checkout, or absolute), by
/// name and content, in a fixed order.
pub fn digest_of(paths: &[&str]) -> String {
    fn add(hash: &mut Sha256, root: &Path, path: &Path) {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path).unwrap().map(|e| e.unwrap().path()).collect();
            entries.sort();
            for entry in entries {
                add(hash, root, &entry);
            }
        } else {
            let name = path.strip_prefix(root).unwrap_or(path);
            hash.update(name.as_os_str().as_encoded_bytes());
            hash.update([0]);
            let content = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            hash.update((content.len() as u64).to_le_bytes());
            hash.update(content);
        }
    }
    let root = repo_root();
    let mut hash = Sha256::new();
    for path in paths {
        add(&mut hash, &root, &root.join(path));
    }
    hex::encode(hash.finalize())
}

/// A fixture kept between runs: the directory `<cache>/NAME-KEY`, where KEY digests
/// `FIXTURE_SOURCES` and `inputs`, so a fixture made by other code or from other inputs is
/// never taken for it. `prepare` runs on it under an exclusive lock on the fixture's name, so
/// two test processes never build one fixture at once; it must leave the fixture complete
/// (or finish what an interrupted build left). The directories of other keys of the same
/// name are removed once unused for `STALE_AFTER`. Returns the directory and what `prepare`
/// returned.
pub fn cached_fixture<T>(name: &str, inputs: &[&str], prepare: impl FnOnce(&Path) -> T) -> (PathBuf, T) {
    use nix::fcntl::{Flock, FlockArg};
    let cache = fixture_cache();
    let key = &digest_of(&[FIXTURE_SOURCES, inputs].concat())[..16];
    let lock = std::fs::File::create(cache.join(format!("{name}.lock"))).unwrap();
    let _lock = Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| e).unwrap();
    let dir = cache.join(format!("{name}-{key}"));
    for entry in std::fs::read_dir(&cache).unwrap() {
        let path = entry.unwrap().path();
        let stale = path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .strip_prefix(&format!("{name}-"))
            .is_some_and(|k| k.len() == key.len() && k.chars().all(|c| c.is_ascii_hexdigit()) && k != key);
        let unused = |dir: &Path| {
            let used = std::fs::metadata(dir.join(".used")).and_then(|m| m.modified());
            used.map_or(true, |t| t.elapsed().unwrap_or_default() > STALE_AFTER)
        };
        if stale && path.is_dir() && unused(&path) {
            std::fs::remove_dir_all(&path).unwrap();
        }
    }
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".used"), "").unwrap();
    let made = prepare(&dir);
    (dir, made)
}

pub fn accel() -> Accel {
    let a = Accel::choose(AccelChoice::Auto).unwrap();
    a.export_to_environment();
    a
}

/// A GnuPG home of the test's own, with the permissions gpg insists on.
pub fn gnupg_home(dir: &Path) -> PathBuf {
    let home = dir.join("gnupg");
    std::fs::create_dir_all(&home).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    home
}

/// Runs `pipeline ARGS` in `cwd` with a GnuPG home and returns its output.
pub fn pipeline(cwd: &Path, gnupg: &Path, args: &[&str]) -> Output {
    run_shown(pipeline_command(cwd, gnupg, args), args)
}

/// `pipeline ARGS` in `cwd` with a GnuPG home, to run.
pub fn pipeline_command(cwd: &Path, gnupg: &Path, args: &[&str]) -> Command {
    // The trust store of repository pins lives in the user's config directory: one per test.
    let config = gnupg.parent().unwrap_or(gnupg).join("xdg-config");
    let mut cmd = Command::new(bin());
    cmd.args(args).current_dir(cwd).env("GNUPGHOME", gnupg).env("XDG_CONFIG_HOME", config);
    cmd
}

/// Runs a `pipeline ARGS` command and shows what it printed (in the test's output).
pub fn run_shown(mut cmd: Command, args: &[&str]) -> Output {
    let out = cmd.output().expect("run pipeline");
    eprintln!(
        "$ pipeline {}\n--- stdout\n{}--- stderr\n{}--- exit {:?}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code()
    );
    out
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Files of the fake Debian tree: (path, content). Directories are made as needed.
pub const DEBIAN_FILES: &[(&str, &str)] = &[
    ("/etc/os-release", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nID=debian\n"),
    ("/etc/debian_version", "12.5\n"),
    ("/etc/fstab", "/dev/sda1 / ext4 defaults 0 1\n"),
    ("/etc/hostname", "old-name\n"),
    ("/etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\told-name\n"),
    ("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nu:x:1000:1000::/home/u:/bin/sh\n"),
    ("/etc/passwd-", "root:x:0:0:root:/root:/bin/sh\n"),
    ("/etc/shadow", "root:*:19000:0:99999:7:::\nu:*:19000:0:99999:7:::\n"),
    ("/etc/group", "root:x:0:\n"),
    ("/etc/foo.conf.bak", "backup\n"),
    ("/etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
    ("/etc/blkid.tab", "tab\n"),
    ("/etc/ssh/sshd_config", "PermitRootLogin no\n"),
    ("/etc/ssh/ssh_host_rsa_key", "private\n"),
    ("/etc/ssh/ssh_host_rsa_key.pub", "public\n"),
    ("/etc/ssh/ssh_host_ed25519_key", "private\n"),
    ("/etc/udev/rules.d/70-persistent-net.rules", "rules\n"),
    ("/etc/systemd/system/.keep", ""),
    ("/root/.bash_history", "rm -rf /\n"),
    ("/root/.ssh/authorized_keys", "ssh-ed25519 AAAA test\n"),
    ("/home/u/.bash_history", "ls\n"),
    ("/home/u/.profile", "PATH=/bin\n"),
    ("/var/spool/abrt/crash1", "x\n"),
    ("/var/crash/core.1", "x\n"),
    ("/var/spool/cron/crontabs/root", "* * * * * true\n"),
    ("/var/spool/cron/atjobs/.SEQ", "00042\n"),
    ("/var/lib/dhcp/dhclient.leases", "lease\n"),
    (
        "/var/lib/dpkg/status",
        "Package: base-files\nStatus: install ok installed\nVersion: 12.4\nArchitecture: amd64\n\n\
         Package: libc6\nStatus: install ok installed\nVersion: 2.36-9+deb12u7\nArchitecture: amd64\nSource: glibc\n\n",
    ),
    // A machine-readable (DEP-5) copyright file, and a free-form one naming no licence.
    (
        "/usr/share/doc/libc6/copyright",
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: glibc\n\n\
         Files: *\nCopyright: 1991-2023 Free Software Foundation, Inc.\nLicense: LGPL-2.1+\n\n\
         Files: debian/*\nLicense: GPL-2+ or Artistic\n\nFiles: locale/*\nLicense: Unicode-DFS-2016\n",
    ),
    ("/usr/share/doc/base-files/copyright", "This is the Debian prepackaged version of base-files.\n"),
    ("/var/log/syslog", "log\n"),
    ("/var/log/apt/history.log", "log\n"),
    ("/var/log/journal/abc/system.journal", "journal\n"),
    ("/var/log/account/pacct", "acct\n"),
    ("/var/log/puppet/puppet.log", "log\n"),
    ("/var/mail/root", "mail\n"),
    ("/var/cache/apt/archives/foo_1.0_amd64.deb", "deb\n"),
    ("/var/cache/apt/archives/partial/.keep", ""),
    ("/var/lib/systemd/random-seed", ""),
    ("/var/run/utmp", "utmp\n"),
    ("/tmp/t", "t\n"),
    ("/tmp/.hidden", "h\n"),
    ("/var/tmp/v", "v\n"),
];

/// A RHEL 7 tree for the operations that act on RHEL or yum only.
pub const RHEL_FILES: &[(&str, &str)] = &[
    ("/etc/os-release", "NAME=\"Red Hat Enterprise Linux Server\"\nVERSION=\"7.9 (Maipo)\"\nID=\"rhel\"\nID_LIKE=\"fedora\"\nVERSION_ID=\"7.9\"\nPRETTY_NAME=\"Red Hat Enterprise Linux Server 7.9 (Maipo)\"\n"),
    ("/etc/redhat-release", "Red Hat Enterprise Linux Server release 7.9 (Maipo)\n"),
    ("/etc/fstab", "/dev/mapper/rhel-root / ext4 defaults 0 0\n"),
    ("/etc/hostname", "old-name\n"),
    ("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
    ("/etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
    ("/usr/bin/yum", "#!/usr/bin/python\n"),
    ("/etc/pki/consumer/cert.pem", "cert\n"),
    ("/etc/pki/entitlement/1.pem", "ent\n"),
    ("/etc/sysconfig/rhn/systemid", "id\n"),
    ("/etc/sysconfig/rhn/osad-auth.conf", "auth\n"),
    ("/etc/sysconfig/rhn/up2date", "serverURL=https://rhn.example.net/XMLRPC\n"),
    ("/var/lib/yum/uuid", "uuid\n"),
    ("/var/cache/yum/x86_64/7/base/repomd.xml", "cache\n"),
];

pub const FEDORA_FILES: &[(&str, &str)] = &[
    ("/etc/os-release", "NAME=\"Fedora Linux\"\nVERSION=\"39 (Server Edition)\"\nID=fedora\nVERSION_ID=39\nPRETTY_NAME=\"Fedora Linux 39 (Server Edition)\"\n"),
    ("/etc/fedora-release", "Fedora release 39 (Thirty Nine)\n"),
    ("/etc/redhat-release", "Fedora release 39 (Thirty Nine)\n"),
    ("/etc/fstab", "/dev/sda1 / ext4 defaults 0 1\n"),
    ("/etc/hostname", "old-name\n"),
    ("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
    ("/etc/passwd-", "root:x:0:0:root:/root:/bin/sh\n"),
    ("/etc/shadow", "root:*:19000:0:99999:7:::\n"),
    ("/etc/shadow-", "root:*:19000:0:99999:7:::\n"),
    ("/etc/foo.conf.bak", "backup\n"),
    ("/etc/sysconfig/network-scripts/ifcfg-eth0", "DEVICE=eth0\nHWADDR=52:54:00:12:34:56\nHOSTNAME=old\nDHCP_HOSTNAME=old\nBOOTPROTO=dhcp\nONBOOT=yes\n"),
    ("/etc/NetworkManager/system-connections/eth0.nmconnection", "[connection]\n"),
    ("/etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
    ("/root/.ssh/authorized_keys", "ssh-ed25519 AAAA test\n"),
    ("/usr/bin/dnf", "#!/usr/bin/python3\n"),
    ("/var/lib/rpm/__db.001", "db\n"),
    ("/var/lib/rpm/rpmdb.sqlite", "rpmdb\n"),
    ("/var/account/pacct", "acct\n"),
    ("/var/cache/dnf/metadata.solv", "cache\n"),
    ("/var/log/messages", "log\n"),
    ("/var/log/audit/audit.log", "log\n"),
    ("/var/log/anaconda/anaconda.log", "log\n"),
    ("/root/anaconda-ks.cfg", "ks\n"),
    ("/tmp/t", "t\n"),
    // What the Red Hat-family operations of the default set remove.
    ("/etc/smolt/uuid", "uuid\n"),
    ("/var/log/sssd/sssd.log", "log\n"),
    ("/var/lib/sss/db/cache_example.ldb", "db\n"),
    ("/etc/ipa/default.conf", "ipa\n"),
    ("/var/lib/ipa-client/sysrestore/sysrestore.index", "ipa\n"),
    ("/etc/pki/ca-trust/source/anchors/ipa-ca.crt", "ca\n"),
    ("/etc/krb5.keytab", "keytab\n"),
    ("/etc/krb5.conf", "[libdefaults]\n"),
    ("/var/log/samba/log.smbd", "log\n"),
    ("/var/lib/samba/private/secrets.tdb", "tdb\n"),
    ("/var/lib/dovecot/instances", "x\n"),
    ("/var/lib/dhcpd/dhcpd.leases", "lease\n"),
    ("/var/lib/dhclient/dhclient-eth0.leases", "lease\n"),
    ("/var/run/faillock/root", "x\n"),
    ("/etc/lvm/devices/system.devices", "devices\n"),
    ("/var/spool/abrt/ccpp-1/coredump", "core\n"),
    ("/var/spool/mail/root", "mail\n"),
];

/// One 4 KiB block of the marker data in /big: a deleted file's blocks are found on the
/// raw disk by comparing 4 KiB-aligned blocks with it.
pub fn marker_block() -> Vec<u8> {
    b"VIRT-PIPELINE-DELETED-DATA-MARKER\n".iter().cycle().take(4096).copied().collect()
}

/// Writes a tree into a fresh 256 MiB qcow2 disk (MBR, one ext4 partition), plus
/// `marker_mb` MiB of marker blocks in /big, through an already launched handle's drive.
fn fill_disk(g: &Guest, device: &str, files: &[(&str, &str)], marker_mb: usize, block_size: Option<u32>) {
    g.part_disk(device, "mbr").unwrap();
    write_tree(g, &format!("{device}1"), files, marker_mb, block_size);
}

/// As `fill_disk`, with the root filesystem on a logical volume `VG/root` filling the disk,
/// as RHEL installs it.
fn fill_lvm_disk(g: &Guest, device: &str, vg: &str, files: &[(&str, &str)]) {
    g.part_disk(device, "mbr").unwrap();
    let pv = format!("{device}1");
    g.pvcreate(&pv).unwrap();
    g.vgcreate(vg, &[&pv]).unwrap();
    g.lvcreate_free("root", vg, 100).unwrap();
    write_tree(g, &format!("/dev/{vg}/root"), files, 0, None);
}

/// As `fill_disk`, with the partition at sector 63, where old MBR tools put it: its 4 KiB
/// filesystem blocks straddle the layer's 4 KiB clusters.
fn fill_misaligned_disk(g: &Guest, device: &str, files: &[(&str, &str)], marker_mb: usize) {
    g.part_init(device, "msdos").unwrap();
    g.part_add(device, "p", 63, -1).unwrap();
    write_tree(g, &format!("{device}1"), files, marker_mb, Some(4096));
}

fn fill_gpt_disk(g: &Guest, device: &str) {
    g.part_init(device, "gpt").unwrap();
    // 128 MiB of 512-byte sectors; the backup table takes the last 33.
    let sectors: i64 = 128 << 11;
    g.part_add(device, "p", 2048, 34815).unwrap();
    g.part_add(device, "p", 34816, sectors - 34).unwrap();
    g.mkfs("ext4", &format!("{device}1")).unwrap();
    g.mkfs("ext4", &format!("{device}2")).unwrap();
    g.mount(&format!("{device}2"), "/").unwrap();
    g.write("/hello", b"hello\n").unwrap();
    g.umount_all().unwrap();
}

fn write_tree(g: &Guest, root: &str, files: &[(&str, &str)], marker_mb: usize, block_size: Option<u32>) {
    g.mkfs_with_block_size("ext4", root, block_size).unwrap();
    g.mount(root, "/").unwrap();
    for dir in ["/bin", "/usr/bin", "/etc", "/root", "/tmp", "/var/tmp"] {
        g.mkdir_p(dir).unwrap();
    }
    for (path, content) in files {
        let dir = &path[..path.rfind('/').unwrap()];
        if !dir.is_empty() {
            g.mkdir_p(dir).unwrap();
        }
        g.write(path, content.as_bytes()).unwrap();
    }
    if marker_mb > 0 {
        let data: Vec<u8> = marker_block().iter().cycle().take(marker_mb << 20).copied().collect();
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), &data).unwrap();
        g.upload(tmp.path(), "/big").unwrap();
    }
    g.umount_all().unwrap();
}

pub struct FakeImages {
    pub debian: PathBuf,
    pub fedora: PathBuf,
    /// Root on LVM: the volume group `rhel`, whose PV and VG UUIDs are `rhel_lvm_uuids`.
    pub rhel: PathBuf,
    pub rhel_lvm_uuids: (String, String),
    /// 128 MiB GPT: a 16 MiB ext4 partition, then an ext4 root (partition 2) holding /hello.
    pub gpt: PathBuf,
    /// The fake Debian with its partition at sector 63 and 8 MiB of marker blocks in /big.
    pub debian_sector63: PathBuf,
}

/// The fake Debian (with 64 MiB of marker blocks in /big), Fedora, RHEL and GPT disks, built in one
/// appliance launch when the fixture cache has none made by this code.
pub fn fake_images() -> &'static FakeImages {
    static IMAGES: OnceLock<FakeImages> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let (dir, uuids) = cached_fixture("fake-images", &[], |dir| {
            let uuids_file = dir.join("fake-rhel.lvm-uuids");
            let done = dir.join("done");
            if !done.exists() {
                build_fake_images(dir, &uuids_file);
                std::fs::write(&done, "").unwrap();
            }
            std::fs::read_to_string(&uuids_file).unwrap()
        });
        let (pv, vg) = uuids.trim().split_once(' ').unwrap();
        FakeImages {
            debian: dir.join("fake-debian.qcow2"),
            fedora: dir.join("fake-fedora.qcow2"),
            rhel: dir.join("fake-rhel.qcow2"),
            rhel_lvm_uuids: (pv.to_string(), vg.to_string()),
            gpt: dir.join("fake-gpt.qcow2"),
            debian_sector63: dir.join("fake-debian-sector63.qcow2"),
        }
    })
}

fn build_fake_images(dir: &Path, uuids_file: &Path) {
    let disks = ["fake-debian", "fake-fedora", "fake-rhel", "fake-gpt", "fake-debian-sector63"]
        .map(|name| dir.join(format!("{name}.qcow2")));
    for p in &disks {
        let size = if p.ends_with("fake-gpt.qcow2") { "128M" } else { "256M" };
        let st = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(p).arg(size).status().unwrap();
        assert!(st.success());
    }
    let g = Guest::new(accel(), None, false).unwrap();
    for p in &disks {
        g.add_drive(Drive { path: p, format: "qcow2", readonly: false, discard: false }).unwrap();
    }
    g.launch().unwrap();
    let devices = g.list_devices().unwrap();
    // Debian: 4 KiB blocks as on real systems; Fedora: the 1 KiB blocks mke2fs picks for
    // a disk this small, so both of sysprep's zero-fill paths are exercised.
    fill_disk(&g, &devices[0], DEBIAN_FILES, 64, Some(4096));
    fill_disk(&g, &devices[1], FEDORA_FILES, 0, None);
    fill_lvm_disk(&g, &devices[2], "rhel", RHEL_FILES);
    fill_gpt_disk(&g, &devices[3]);
    fill_misaligned_disk(&g, &devices[4], DEBIAN_FILES, 8);
    let uuids = format!("{} {}", g.pvuuid(&format!("{}1", devices[2])).unwrap(), g.vguuid("rhel").unwrap());
    g.shutdown().unwrap();
    std::fs::write(uuids_file, uuids).unwrap();
}

/// The debootstrapped Debian 12 of `pipelines/debian-bookworm.toml` (publishing at xz preset 0),
/// kept in the fixture cache and shared by every test that needs a real, bootable guest: tests
/// run their pipelines in `dir` with `--work-dir work` and `GNUPGHOME=gnupg`, and start from
/// it with `from = { pipeline = "<pipeline>" }` (all of its layers are then cached). Its
/// layers stay current the way any work directory's do: a new mirror release rebuilds them.
pub struct DebianFixture {
    pub dir: PathBuf,
    pub gnupg: PathBuf,
    pub pipeline: PathBuf,
    /// The last layer (after sysprep).
    pub layer: PathBuf,
}

pub fn debian_fixture() -> DebianFixture {
    let shipped = "pipelines/debian-bookworm.toml";
    let (dir, (gnupg, file, out)) = cached_fixture("debian-bookworm", &[shipped], |dir| {
        let gnupg = gnupg_home(dir);
        // The shipped pipeline with one key changed: the fixture's publish compresses at the
        // fastest preset (what compression costs is measured by the benchmarks, and the
        // presets are tested on small disks).
        let text = std::fs::read_to_string(repo_root().join(shipped)).unwrap();
        assert!(text.trim_end().rsplit("[[stages]]").next().unwrap().contains("[stages.publish]"));
        // Where it is in the checkout, so that its repository (`../repo-index`, relative to
        // the file) is DIR/repo-index.
        std::fs::create_dir_all(dir.join("pipelines")).unwrap();
        let file = write_file(&dir.join("pipelines"), "debian-bookworm.toml", &format!("{text}xz_level = 0\n"));
        let out = pipeline(dir, &gnupg, &["--work-dir", "work", "run", file.to_str().unwrap()]);
        (gnupg, file, out)
    });
    assert!(out.status.success(), "the Debian fixture failed to build:\n{}", stderr(&out));
    let layer = PathBuf::from(stdout(&out).trim());
    DebianFixture { dir, gnupg, pipeline: file, layer }
}

/// A container image of busybox-static and its links, imported into podman (no registry
/// here); its name. Tagged with the digest of what makes it, so an image made by other code
/// or from another busybox is never used; older tags are removed.
pub fn busybox_image() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let (_, name) = cached_fixture("busybox-image", &["/bin/busybox"], |dir| {
            let key = dir.file_name().unwrap().to_string_lossy().rsplit('-').next().unwrap().to_string();
            let repository = "local/virt-pipeline-provision-test";
            let name = format!("{repository}:{key}");
            let exists = Command::new("podman").args(["image", "exists", &name]).status().expect("podman is installed");
            if exists.success() {
                return name;
            }
            let root = tempfile::tempdir().unwrap();
            let bin = root.path().join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::create_dir_all(root.path().join("tmp")).unwrap();
            std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is installed");
            for tool in ["sh", "echo", "cat", "ls", "mkdir", "env", "head", "grep", "test", "wc", "sleep"] {
                std::os::unix::fs::symlink("busybox", bin.join(tool)).unwrap();
            }
            let old = Command::new("podman")
                .args(["images", "--format", "{{.Repository}}:{{.Tag}}", repository])
                .output()
                .unwrap();
            for stale in String::from_utf8_lossy(&old.stdout).lines() {
                let _ = Command::new("podman").args(["rmi", "--force", stale]).output();
            }
            let status = Command::new("sh")
                .arg("-c")
                .arg(format!("tar -C '{}' -c . | podman import - {name} >/dev/null", root.path().display()))
                .status()
                .unwrap();
            assert!(status.success(), "podman import");
            name
        });
        name
    })
}

/// Opens disk images read-only in one appliance, mounted by inspection, to check results.
pub fn open_readonly(images: &[&Path]) -> Guest {
    let g = Guest::new(accel(), None, false).unwrap();
    for p in images {
        g.add_drive(Drive { path: p, format: "qcow2", readonly: true, discard: false }).unwrap();
    }
    g.launch().unwrap();
    g
}

/// Mounts the filesystem of one of several disks at / (after unmounting whatever was).
pub fn mount_disk(g: &Guest, index: usize) {
    g.umount_all().unwrap();
    let parts = g.list_partitions().unwrap();
    g.mount_ro(&parts[index], "/").unwrap();
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Bytes allocated in a qcow2 chain (what a conversion would need to store).
pub fn required_bytes(image: &Path) -> u64 {
    let out = Command::new("qemu-img").args(["measure", "--output=json", "-O", "qcow2"]).arg(image).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["required"].as_u64().unwrap()
}

/// Whether any 512-byte-aligned piece of the image's guest data is marker data (a
/// filesystem block may start on any sector).
pub fn holds_marker(image: &Path) -> bool {
    let raw = tempfile::NamedTempFile::new().unwrap();
    let st = Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(image).arg(raw.path()).status().unwrap();
    assert!(st.success());
    let data = std::fs::read(raw.path()).unwrap();
    let marker = marker_block();
    let pieces: Vec<&[u8]> = marker.chunks(512).collect();
    data.chunks(512).any(|c| pieces.contains(&c))
}

/// `pipeline serve` in the background; SIGTERM on drop (it must shut down cleanly on it).
pub struct Server(std::process::Child);

impl Server {
    /// A server started some other way (under a shell's `ulimit`).
    pub fn from_child(child: std::process::Child) -> Server {
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM: the server must shut down cleanly on it.
        terminate(self.0.id());
        let _ = self.0.wait();
    }
}

pub fn terminate(pid: u32) {
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
}

/// Serves `dir` with `pipeline serve` on a free port; the server and its base URL.
pub fn serve(dir: &Path) -> (Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(bin())
        .args(["serve", dir.to_str().unwrap(), "--listen", &addr])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    (Server(child), format!("http://{addr}"))
}

/// Serves `router` on a free port of 127.0.0.1 from a thread of its own, for the test's life.
pub fn serve_in_background(router: axum::Router) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, router).await.unwrap();
        });
    });
    addr
}

/// A passphrase-less ed25519 key pair made by ssh-keygen.
pub struct SshKey {
    pub private: PathBuf,
    /// The public key line.
    pub public: String,
}

/// The test key named `comment`, made by ssh-keygen once and kept with the fixtures: a
/// customize step that authorises it makes the same layer every run, so the layer is cached.
/// Where the key itself is under test, a test makes its own.
pub fn test_ssh_key(comment: &str) -> SshKey {
    let (dir, ()) = cached_fixture(&format!("ssh-key-{comment}"), &[], |dir| {
        let private = dir.join("id_ed25519");
        if !private.with_extension("pub").exists() {
            let _ = std::fs::remove_file(&private);
            let st = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                .arg(&private)
                .status()
                .expect("ssh-keygen (openssh-client) is installed by scripts/install-deps");
            assert!(st.success());
        }
    });
    let private = dir.join("id_ed25519");
    let public = std::fs::read_to_string(private.with_extension("pub")).unwrap();
    SshKey { private, public }
}

/// Scratch directories (`scratch-PURPOSE-PID-…`) in a work directory that a finished
/// process left behind: those of running processes belong to other tests' runs in the same
/// work directory (tests run side by side on the shared fixture).
pub fn leftover_scratch(work: &Path, purposes: &[&str]) -> Vec<String> {
    let mut left: Vec<String> = std::fs::read_dir(work)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| {
            let Some((purpose, rest)) = name.strip_prefix("scratch-").and_then(|r| r.split_once('-')) else {
                return false;
            };
            let pid = rest.split('-').next().unwrap_or_default();
            purposes.contains(&purpose) && !Path::new("/proc").join(pid).exists()
        })
        .collect();
    left.sort();
    left
}

/// The virtual environment's `bin/` holding the SBOM validators of the SPDX and CycloneDX
/// projects (`scripts/install-deps --test` installs them).
pub fn sbom_validators() -> PathBuf {
    let bin = PathBuf::from("/usr/local/lib/virt-pipeline/sbom-validators/bin");
    assert!(bin.join("pyspdxtools").exists(), "{} has no pyspdxtools: run scripts/install-deps --test", bin.display());
    bin
}

/// A free TCP port on 127.0.0.1 for a guest's forwarded port.
pub fn free_port() -> u16 {
    virt_pipeline::vm::free_port().unwrap()
}

/// One command over SSH with OpenSSH's client on a guest's forwarded port; the guest's host
/// key is new on every boot, so it is not checked.
pub fn ssh(key: &Path, port: u16, user: &str, command: &str) -> Output {
    std::process::Command::new("ssh")
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
        .args(["-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "-i"])
        .arg(key)
        .args(["-p", &port.to_string(), &format!("{user}@127.0.0.1"), command])
        .output()
        .expect("ssh (openssh-client) is installed by scripts/install-deps")
}

/// `pipeline --work-dir work run FILE` in the Debian fixture's directory, with `env` added
/// (and SOURCE_DATE_EPOCH only when `env` sets it).
pub fn run_on_fixture(fixture: &DebianFixture, file: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(["--work-dir", "work", "run", file.to_str().unwrap()])
        .current_dir(&fixture.dir)
        .env("GNUPGHOME", &fixture.gnupg)
        .env("XDG_CONFIG_HOME", fixture.dir.join("xdg-config"))
        .env_remove("SOURCE_DATE_EPOCH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run pipeline");
    eprintln!(
        "$ pipeline run {}\n--- stdout\n{}--- stderr\n{}--- exit {:?}",
        file.display(),
        stdout(&out),
        stderr(&out),
        out.status.code()
    );
    out
}

/// A pipeline file in `dir` on top of the Debian fixture: `stages` is the TOML of its
/// [[stages]] entries.
pub fn fixture_pipeline(dir: &Path, fixture: &DebianFixture, name: &str, stages: &str) -> PathBuf {
    let text = format!(
        "version = 1\nfrom = {{ pipeline = \"{}\" }}\n[pipeline]\nname = \"{name}\"\n{stages}",
        fixture.pipeline.display()
    );
    write_file(dir, &format!("{name}.toml"), &text)
}

/// A served file: its body and optional ETag, by path.
type MirrorFiles = std::collections::HashMap<String, (Vec<u8>, Option<String>)>;

/// Files served by path, each with an optional ETag; every request is counted.
#[derive(Clone, Default)]
pub struct Mirror {
    files: std::sync::Arc<std::sync::Mutex<MirrorFiles>>,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Mirror {
    pub fn start() -> (Mirror, String) {
        let mirror = Mirror::default();
        let state = mirror.clone();
        let router = axum::Router::new().fallback(
            move |method: axum::http::Method, uri: axum::http::Uri, headers: axum::http::HeaderMap| {
                let state = state.clone();
                async move { state.answer(&method, uri.path(), &headers) }
            },
        );
        let addr = serve_in_background(router);
        (mirror, format!("http://{addr}"))
    }

    pub fn put(&self, path: &str, body: &[u8], etag: Option<&str>) {
        self.files.lock().unwrap().insert(path.to_string(), (body.to_vec(), etag.map(str::to_string)));
    }

    pub fn remove(&self, path: &str) {
        self.files.lock().unwrap().remove(path);
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    fn answer(
        &self,
        method: &axum::http::Method,
        path: &str,
        headers: &axum::http::HeaderMap,
    ) -> axum::response::Response {
        self.requests.lock().unwrap().push(format!("{method} {path}"));
        let files = self.files.lock().unwrap();
        let Some((body, etag)) = files.get(path) else {
            return axum::response::Response::builder()
                .status(axum::http::StatusCode::NOT_FOUND)
                .body(axum::body::Body::empty())
                .unwrap();
        };
        let mut resp = axum::response::Response::builder().header(axum::http::header::CONTENT_LENGTH, body.len());
        if let Some(etag) = etag {
            resp = resp.header(axum::http::header::ETAG, etag.as_str());
            if headers.get(axum::http::header::IF_NONE_MATCH).is_some_and(|v| v.to_str().unwrap() == etag) {
                return resp.status(axum::http::StatusCode::NOT_MODIFIED).body(axum::body::Body::empty()).unwrap();
            }
        }
        let body = if method == axum::http::Method::HEAD { Vec::new() } else { body.clone() };
        resp.body(axum::body::Body::from(body)).unwrap()
    }
}
