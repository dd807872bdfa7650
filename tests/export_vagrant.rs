//! The vagrant export on the shared Debian fixture, each artifact checked by its consumer:
//! Debian's vagrant (with vagrant-libvirt) adds both boxes and the catalogue offline, and the
//! libvirt box's disk, booted under qemu, lets `vagrant` in with Vagrant's insecure key and
//! gives it sudo without a password. An export stopped half-way leaves the earlier one.
//! `scripts/test` runs it with the other booting tests, one at a time.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use virt_pipeline::vm::qemu::{Vm, VmConfig};
use virt_pipeline::vm::ssh::{Endpoint, Session};

const VERSION: &str = "20231114.221320"; // SOURCE_DATE_EPOCH=1700000000

/// `vagrant ARGS` with a private VAGRANT_HOME, offline.
fn vagrant(home: &Path, args: &[&str]) -> Output {
    let out = Command::new("vagrant")
        .args(args)
        .env("VAGRANT_HOME", home)
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .output()
        .expect("vagrant is installed by scripts/install-deps");
    eprintln!("$ vagrant {}\n--- stdout\n{}--- stderr\n{}", args.join(" "), stdout(&out), stderr(&out));
    out
}

fn vagrant_ok(home: &Path, args: &[&str]) -> String {
    let out = vagrant(home, args);
    assert!(out.status.success(), "vagrant {} failed:\n{}{}", args.join(" "), stdout(&out), stderr(&out));
    stdout(&out)
}

/// Unpacks a .box (gzip tar) into `dir`.
fn unpack(file: &Path, dir: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(file).unwrap());
    let mut archive = tar::Archive::new(gz);
    let mut names = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        names.push(entry.path().unwrap().to_string_lossy().into_owned());
        entry.unpack_in(dir).unwrap();
    }
    names.sort();
    names
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn qemu_img_info(path: &Path, format: &str) -> serde_json::Value {
    let out = Command::new("qemu-img").args(["info", "--output=json", "-f", format]).arg(path).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The text between `before` and the next `"` after it.
fn attribute<'a>(text: &'a str, before: &str) -> &'a str {
    let start = text.find(before).unwrap_or_else(|| panic!("no {before} in:\n{text}")) + before.len();
    &text[start..start + text[start..].find('"').unwrap()]
}

/// Vagrant's insecure RSA private key, from Debian's vagrant package, copied with mode 0600.
fn insecure_private_key(dir: &Path) -> PathBuf {
    let found = glob::glob("/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant")
        .unwrap()
        .flatten()
        .next()
        .expect("Debian's vagrant package ships keys/vagrant");
    let key = dir.join("vagrant-insecure-key");
    std::fs::copy(found, &key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    key
}

fn export_stage(dest: &Path, extra: &str) -> String {
    format!(
        "[[stages]]\n[stages.export]\ntarget = \"vagrant\"\ndest = \"{}\"\nname = \"test/debian\"\n{extra}",
        dest.display()
    )
}

#[test]
fn vagrant_adds_both_boxes_and_the_catalogue_and_the_libvirt_disk_lets_vagrant_in() {
    let fixture = debian_fixture();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("boxes");
    let file = fixture_pipeline(dir.path(), &fixture, "export-vagrant", &export_stage(&dest, ""));
    let epoch = [("SOURCE_DATE_EPOCH", "1700000000")];
    let out = run_on_fixture(&fixture, &file, &epoch);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("has no VirtualBox guest additions"), "Debian 12 has none: said, not failed");
    let libvirt_box = dest.join(format!("libvirt-{VERSION}.box"));
    let vbox_box = dest.join(format!("virtualbox-{VERSION}.box"));

    // The catalogue: this version, both providers, file:// URLs of dest and the boxes' digests.
    let catalogue = json(&dest.join("box.json"));
    assert_eq!(catalogue["name"], "test/debian");
    assert_eq!(catalogue["versions"].as_array().unwrap().len(), 1, "{catalogue}");
    assert_eq!(catalogue["versions"][0]["version"], VERSION);
    for (i, (name, file)) in [("libvirt", &libvirt_box), ("virtualbox", &vbox_box)].into_iter().enumerate() {
        let p = &catalogue["versions"][0]["providers"][i];
        assert_eq!(p["name"], name);
        assert_eq!(p["url"], format!("file://{}", file.display()));
        assert_eq!(p["checksum_type"], "sha256");
        assert_eq!(p["checksum"], hex::encode(Sha256::digest(std::fs::read(file).unwrap())), "{name}");
    }

    // libvirt: box.img (qcow2, standalone) and metadata with an integer virtual_size in GiB.
    let libvirt = dir.path().join("libvirt");
    assert_eq!(unpack(&libvirt_box, &libvirt), ["Vagrantfile", "box.img", "info.json", "metadata.json"]);
    let metadata = json(&libvirt.join("metadata.json"));
    assert_eq!(metadata["provider"], "libvirt");
    assert_eq!(metadata["format"], "qcow2");
    assert!(metadata["virtual_size"].is_u64(), "an integer: {metadata}");
    let img = qemu_img_info(&libvirt.join("box.img"), "qcow2");
    assert!(img["backing-filename"].is_null(), "{img}");
    let bytes = img["virtual-size"].as_u64().unwrap();
    assert_eq!(metadata["virtual_size"].as_u64().unwrap(), bytes.div_ceil(1 << 30));
    assert!(std::fs::read_to_string(libvirt.join("Vagrantfile")).unwrap().contains("libvirt.driver = \"kvm\""));

    // virtualbox: the OVF names its disk by one UUID in both places, base_mac is its NAT
    // adapter's, and the disk is a streamOptimized VMDK of the same size.
    let vbox = dir.path().join("virtualbox");
    assert_eq!(unpack(&vbox_box, &vbox), ["Vagrantfile", "box-disk001.vmdk", "box.ovf", "info.json", "metadata.json"]);
    assert_eq!(json(&vbox.join("metadata.json"))["provider"], "virtualbox");
    let ovf = std::fs::read_to_string(vbox.join("box.ovf")).unwrap();
    let disk_uuid = attribute(&ovf, "vbox:uuid=\"");
    assert_eq!(attribute(&ovf, "<Image uuid=\""), format!("{{{disk_uuid}}}"), "{ovf}");
    assert_eq!(attribute(&ovf, "ovf:href=\""), "box-disk001.vmdk");
    assert_eq!(attribute(&ovf, "ovf:capacity=\""), bytes.to_string());
    let mac = attribute(&ovf, "MACAddress=\"");
    assert!(mac.starts_with("080027") && mac.len() == 12, "{mac}");
    let vagrantfile = std::fs::read_to_string(vbox.join("Vagrantfile")).unwrap();
    assert_eq!(attribute(&vagrantfile, "config.vm.base_mac = \""), mac);
    assert!(vagrantfile.contains("type: \"rsync\""), "no guest additions: /vagrant by rsync\n{vagrantfile}");
    let vmdk = qemu_img_info(&vbox.join("box-disk001.vmdk"), "vmdk");
    assert_eq!(vmdk["format-specific"]["data"]["create-type"], "streamOptimized", "{vmdk}");
    assert_eq!(vmdk["virtual-size"].as_u64().unwrap(), bytes);

    // Debian's vagrant adds each provider's box from the catalogue: it fetches each box file
    // the catalogue names, checks its checksum, unpacks it and reads its metadata.json (an add
    // by file name would only repeat the unpacking and the metadata check).
    let home = dir.path().join("vagrant-home");
    let catalogue_path = dest.join("box.json");
    for provider in ["libvirt", "virtualbox"] {
        vagrant_ok(&home, &["box", "add", "--provider", provider, catalogue_path.to_str().unwrap()]);
    }
    let list = vagrant_ok(&home, &["box", "list"]);
    for line in [format!("test/debian (libvirt, {VERSION})"), format!("test/debian (virtualbox, {VERSION})")] {
        // Vagrant pads the names into a column.
        assert!(
            list.lines().any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") == line),
            "`{line}` in:\n{list}"
        );
    }

    // The libvirt disk boots; vagrant logs in with the insecure RSA key (what Vagrant before
    // 2.3.8, Debian's included, offers) and has sudo without a password.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = VmConfig::new(accel());
    config.disks.push((libvirt.join("box.img"), "qcow2".into()));
    config.forwards.push((port, 22));
    config.rng = true;
    let mut vm = Vm::start(&config, &dir.path().join("console.log")).unwrap();
    let key = insecure_private_key(dir.path());
    let endpoint = Endpoint { name: "box".into(), host: "127.0.0.1".into(), port, user: "vagrant".into() };
    let session = Session::connect(&endpoint, &key, &dir.path().join("known_hosts"), Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e:#}\nconsole:\n{}", virt_pipeline::vm::qemu::tail(&vm.console_text(), 40)));
    let run = |cmd: &str| {
        let (status, output) = session.exec(cmd).unwrap();
        eprintln!("$ {cmd}\n{output}--- exit {status}");
        (status, output)
    };
    assert_eq!(run("sudo -n true").0, 0, "passwordless sudo");
    let (status, modes) = run("stat -c '%a %U' ~/.ssh ~/.ssh/authorized_keys");
    assert_eq!((status, modes.as_str()), (0, "700 vagrant\n600 vagrant\n"));
    let (_, keys) = run("cat ~/.ssh/authorized_keys");
    assert_eq!(keys.lines().count(), 2, "{keys}");
    assert!(keys.contains("ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTkyrtvp9eWW6A8YVr+kz4TjGYe7gHzIw+niNl"));
    assert!(keys.contains("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN1YdxBpNlzxDqfJyw/QKow1F+wvG9hXGoqiysfJOn5Y"));
    let (_, sshd) = run("sudo -n /usr/sbin/sshd -T");
    assert!(sshd.lines().any(|l| l == "usedns no"), "{sshd}");
    let (_, requiretty) = run("sudo -n -l");
    assert!(requiretty.contains("!requiretty") && requiretty.contains("NOPASSWD: ALL"), "{requiretty}");
    drop(session);
    vm.kill();

    // Another export into the same dest, stopped while it packs: the earlier export stays
    // as it was and nothing of the stopped one is left.
    let manifest_before = std::fs::read(dest.join("export.json")).unwrap();
    let file = fixture_pipeline(dir.path(), &fixture, "export-vagrant", &export_stage(&dest, "version = \"2\"\n"));
    let mut child = Command::new(bin())
        .args(["--work-dir", "work", "run", file.to_str().unwrap()])
        .current_dir(&fixture.dir)
        .env("GNUPGHOME", &fixture.gnupg)
        .env("XDG_CONFIG_HOME", fixture.dir.join("xdg-config"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let packing = |dir: &Path| {
        std::fs::read_dir(dir).unwrap().flatten().any(|e| {
            e.file_name().to_string_lossy().starts_with(".boxes.export-")
                && std::fs::read_dir(e.path())
                    .is_ok_and(|d| d.flatten().any(|f| f.metadata().is_ok_and(|m| m.len() > (1 << 20))))
        })
    };
    let started = std::time::Instant::now();
    while !packing(dir.path()) {
        assert!(child.try_wait().unwrap().is_none(), "the second export ended before it packed anything");
        assert!(started.elapsed() < Duration::from_secs(1200), "the second export never started packing");
        std::thread::sleep(Duration::from_millis(100));
    }
    terminate(child.id());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "stopped by SIGTERM");
    assert_eq!(std::fs::read(dest.join("export.json")).unwrap(), manifest_before, "the earlier export is intact");
    assert!(libvirt_box.is_file() && !dest.join("libvirt-2.box").exists());
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".boxes"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Bad settings: exit 2 before anything runs, naming the key, and nothing written.
#[test]
fn bad_vagrant_settings_exit_2_and_write_nothing() {
    let private = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n-----END OPENSSH PRIVATE KEY-----\n";
    let cases: &[(&str, &[&str])] = &[
        ("providers = [\"libvirt\", \"hyperv\"]", &["providers[1]", "`hyperv` is not a provider"]),
        ("providers = []", &["providers", "at least one"]),
        ("ssh_key = \"id_ed25519\"", &["ssh_key", "private key"]),
        ("ssh_key = \"not a key\"", &["ssh_key", "cannot read"]),
        ("ssh_key = \"ssh-ed25519 AAAAgarbage\"", &["ssh_key", "not an OpenSSH public key"]),
        ("version = \"1.2-beta\"", &["version", "not a box version"]),
        ("name = \"a/b/c\"", &["name", "not a box name"]),
        ("base_url = \"boxes.example.net\"", &["base_url", "not a URL"]),
        ("providers = [\"libvirt\"]\ncompression = \"zstd\"", &["compression"]),
    ];
    for (keys, expect) in cases {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(dir.path().join("base.qcow2"))
            .arg("16M")
            .status()
            .unwrap();
        assert!(st.success());
        write_file(dir.path(), "id_ed25519", private);
        let text = format!(
            "version = 1\nfrom = {{ image = \"base.qcow2\" }}\n[pipeline]\nname = \"t\"\n[[stages]]\n[stages.export]\ntarget = \"vagrant\"\ndest = \"out\"\n{keys}\n"
        );
        let file = write_file(dir.path(), "p.toml", &text);
        let out = pipeline(dir.path(), dir.path(), &["--work-dir", "work", "run", file.to_str().unwrap()]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{keys}: {err}");
        assert!(err.contains("p.toml"), "{err}");
        for piece in *expect {
            assert!(err.contains(piece), "{keys}: expected `{piece}` in: {err}");
        }
        assert!(!dir.path().join("out").exists() && !dir.path().join("work").exists(), "{keys}: something was written");
    }
}
