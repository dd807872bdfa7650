//! The export stage on the shared Debian fixture, each artifact checked by the client that
//! consumes it: podman (import and run with runc), skopeo and umoci for the OCI layout.
//! `scripts/test` runs it with the other booting tests, one at a time.

mod common;

use common::{
    debian_fixture, fixture_pipeline as pipeline_file, leftover_scratch, run_on_fixture as run, stderr, stdout,
};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::process::{Command, Output};

fn tool(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    eprintln!("$ {program} {}\n--- stdout\n{}--- stderr\n{}", args.join(" "), stdout(&out), stderr(&out));
    out
}

fn tool_ok(program: &str, args: &[&str]) -> String {
    let out = tool(program, args);
    assert!(out.status.success(), "{program} {} failed:\n{}", args.join(" "), stderr(&out));
    stdout(&out)
}

/// A podman image that is removed at the end of the test.
struct PodmanImage(String);

impl Drop for PodmanImage {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["image", "unmount", &self.0]).output();
        let _ = Command::new("podman").args(["rmi", "-f", &self.0]).output();
    }
}

fn podman_run(image: &str, script: &str) -> String {
    tool_ok(
        "podman",
        &[
            "run",
            "--rm",
            "--runtime",
            "runc",
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=32768:32768",
            "--network",
            "none",
            image,
            "sh",
            "-c",
            script,
        ],
    )
}

/// Objects whose metadata a naive copy loses, made in the guest before the export: a device
/// node, a directory and a file with other owners, and a hard link.
const SPECIAL_FILES: &str = r#"
[[stages]]
[stages.customize]
steps = [
  { run_command = "mknod -m 0620 /srv/tty9 c 4 9 && chown 0:5 /srv/tty9 && install -d -o 1234 -g 2345 -m 0750 /srv/owned && echo data > /srv/owned/file && chown 1234:2345 /srv/owned/file && ln /srv/owned/file /srv/owned/hardlink" },
]
"#;

#[test]
fn docker_export_runs_under_podman_and_its_oci_layout_is_accepted_by_skopeo_and_umoci() {
    let fixture = debian_fixture();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("docker");
    let stages = format!(
        "{SPECIAL_FILES}\n[[stages]]\n[stages.export]\ntarget = \"docker\"\ndest = \"{}\"\noci = true\ntag = \"12\"\n",
        dest.display()
    );
    let file = pipeline_file(dir.path(), &fixture, "export-docker", &stages);
    let epoch = [("SOURCE_DATE_EPOCH", "1700000000")];
    let out = run(&fixture, &file, &epoch);
    assert!(out.status.success(), "{}", stderr(&out));
    // The export passes the chain on: the last layer is the customize layer it exported.
    let layer_key = PathBuf::from(stdout(&out).trim()).file_stem().unwrap().to_string_lossy().into_owned();

    // podman imports the tar and runs it.
    let tarball = dest.join("rootfs.tar.gz");
    let name = format!("localhost/virt-pipeline-test-export-{}:1", std::process::id());
    let image = PodmanImage(name.clone());
    tool_ok("podman", &["import", "-q", tarball.to_str().unwrap(), &name]);
    let os_release = podman_run(&name, "cat /etc/os-release");
    assert!(os_release.contains("Debian GNU/Linux 12"), "{os_release}");

    // Ownership, modes, device nodes, hard links and symlinks came through the round trip.
    let stat = podman_run(
        &name,
        "stat -c '%F %t:%T %a %u:%g' /srv/tty9; stat -c '%a %u:%g' /srv/owned /usr/bin/passwd /etc/shadow; \
         stat -c '%i %h %u:%g' /srv/owned/file /srv/owned/hardlink; readlink /bin",
    );
    let lines: Vec<&str> = stat.lines().collect();
    assert_eq!(lines[0], "character special file 4:9 620 0:5", "{stat}");
    assert_eq!(lines[1], "750 1234:2345", "{stat}");
    assert_eq!(lines[2], "4755 0:0", "passwd keeps its setuid bit: {stat}");
    assert!(lines[3].starts_with("640 0:"), "shadow keeps its mode: {stat}");
    let (file_inode, link_inode) = (lines[4].split(' ').next(), lines[5].split(' ').next());
    assert_eq!(file_inode, link_inode, "a hard link is the same file: {stat}");
    assert!(lines[4].ends_with(" 2 1234:2345"), "{stat}");
    assert_eq!(lines[6], "usr/bin", "{stat}");

    // What a container base does not carry, and Debian's policy-rc.d.
    let left_out = podman_run(
        &name,
        "ls -A /boot /lib/modules /tmp /var/lib/apt/lists; ls /etc/ssh/ssh_host_* 2>/dev/null; \
         echo machine-id $(wc -c < /etc/machine-id); grep -v '^#' /etc/fstab; \
         /usr/sbin/policy-rc.d ssh start; echo policy $?",
    );
    let listed: Vec<&str> = left_out.lines().filter(|l| !l.is_empty() && !l.ends_with(':')).collect();
    assert_eq!(listed, ["machine-id 0", "policy 101"], "{left_out}");

    // The file capability survived into podman's storage.
    let mount = tool_ok("podman", &["image", "mount", &name]);
    let caps = tool_ok("getcap", &[&format!("{}/usr/bin/ping", mount.trim())]);
    assert!(caps.contains("cap_net_raw"), "{caps}");
    drop(image);

    // skopeo reads the OCI layout and its configuration.
    let layout = format!("oci:{}:12", dest.join("oci").display());
    let inspected: serde_json::Value = serde_json::from_str(&tool_ok("skopeo", &["inspect", &layout])).unwrap();
    assert_eq!(inspected["Architecture"], "amd64");
    assert_eq!(inspected["Os"], "linux");
    assert_eq!(inspected["Created"], "2023-11-14T22:13:20Z", "created follows SOURCE_DATE_EPOCH");
    assert_eq!(inspected["Labels"]["org.virt-pipeline.pipeline"], "export-docker");
    assert_eq!(inspected["Labels"]["org.virt-pipeline.layer"], layer_key.as_str());
    let config: serde_json::Value =
        serde_json::from_str(&tool_ok("skopeo", &["inspect", "--config", &layout])).unwrap();
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["/bin/bash"]));
    assert!(config["config"]["Env"][0].as_str().unwrap().starts_with("PATH="), "{config}");

    // umoci unpacks it, with the same metadata.
    let bundle = dir.path().join("bundle");
    tool_ok("umoci", &["unpack", "--image", &format!("{}:12", dest.join("oci").display()), bundle.to_str().unwrap()]);
    let rootfs = bundle.join("rootfs");
    assert!(std::fs::read_to_string(rootfs.join("etc/os-release")).unwrap().contains("Debian GNU/Linux 12"));
    let tty = std::fs::symlink_metadata(rootfs.join("srv/tty9")).unwrap();
    assert!(tty.file_type().is_char_device());
    assert_eq!(tty.rdev(), nix_makedev(4, 9));
    let (a, b) = (
        std::fs::metadata(rootfs.join("srv/owned/file")).unwrap(),
        std::fs::metadata(rootfs.join("srv/owned/hardlink")).unwrap(),
    );
    assert_eq!((a.ino(), a.uid(), a.gid()), (b.ino(), 1234, 2345));
    // The runtime supplies /dev; the image's own is empty.
    assert_eq!(std::fs::read_dir(rootfs.join("dev")).unwrap().count(), 0);
    let caps = tool_ok("getcap", &[rootfs.join("usr/bin/ping").to_str().unwrap()]);
    assert!(caps.contains("cap_net_raw"), "{caps}");

    // Unchanged inputs with the artifact in place: the export is skipped.
    let manifest = std::fs::read(dest.join("export.json")).unwrap();
    let again = run(&fixture, &file, &epoch);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stderr(&again).contains("export: cached"), "{}", stderr(&again));
    assert_eq!(std::fs::read(dest.join("export.json")).unwrap(), manifest);
}

/// Linux's encoding of a device number (glibc's makedev) for minor numbers below 256.
fn nix_makedev(major: u64, minor: u64) -> u64 {
    (major << 8) | minor
}

/// A tmpfs mounted for the test's life.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_failing_export_leaves_nothing_at_dest() {
    let fixture = debian_fixture();
    let dir = tempfile::tempdir().unwrap();

    // dest under a file: fails before the appliance starts.
    std::fs::write(dir.path().join("a-file"), "x").unwrap();
    let dest = dir.path().join("a-file/docker");
    let stages = format!("[[stages]]\n[stages.export]\ntarget = \"docker\"\ndest = \"{}\"\n", dest.display());
    let file = pipeline_file(dir.path(), &fixture, "export-under-a-file", &stages);
    let out = run(&fixture, &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("a-file"), "{}", stderr(&out));

    // dest on a filesystem that fills up halfway through the tar: the export fails and the
    // filesystem is left as it was, empty (no dest, no temporary sibling).
    assert_eq!(nix_uid(), 0, "this test mounts a tmpfs: run it as root");
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"]).arg(&small).status().unwrap();
    assert!(st.success());
    let _mounted = Tmpfs(small.clone());
    let dest = small.join("docker");
    let stages =
        format!("[[stages]]\n[stages.export]\ntarget = \"docker\"\ndest = \"{}\"\noci = true\n", dest.display());
    let file = pipeline_file(dir.path(), &fixture, "export-full-disk", &stages);
    let scratch_before = leftover_scratch(&fixture.dir.join("work"), &["export"]);
    let out = run(&fixture, &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("No space left on device"), "{}", stderr(&out));
    let left: Vec<_> = std::fs::read_dir(&small).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "the failed export left {left:?}");
    // Nor did it leave scratch files in the work directory.
    assert_eq!(leftover_scratch(&fixture.dir.join("work"), &["export"]), scratch_before);
}

fn nix_uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

#[test]
fn bad_export_input_is_refused_before_anything_runs() {
    let fixture = debian_fixture();
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        ("unknown-target", "target = \"floppy\"\ndest = \"out\"".into(), "`floppy` is not one of docker, ramdisk"),
        ("ramdisk-compression", "target = \"ramdisk\"\ndest = \"out\"\ncompression = \"bzip2\"".into(), ".compression"),
        (
            "cloud-seed-missing",
            "target = \"cloud\"\ndest = \"out\"\nseed = \"no-such-seed.toml\"".into(),
            "export.seed",
        ),
        (
            "cloud-seed-format",
            "target = \"cloud\"\ndest = \"out\"\nseed_format = \"configdrive\"".into(),
            "seed_format",
        ),
        ("cloud-user", "target = \"cloud\"\ndest = \"out\"\nuser = \"Root Admin\"".into(), ".user"),
        ("compression", "target = \"docker\"\ndest = \"out\"\ncompression = \"xz\"".into(), ".compression"),
        ("cmd-without-oci", "target = \"docker\"\ndest = \"out\"\ncmd = [\"/bin/sh\"]".into(), "oci = true"),
        ("bad-tag", "target = \"docker\"\ndest = \"out\"\noci = true\ntag = \"a:b\"".into(), ".tag"),
        ("unknown-key", "target = \"docker\"\ndest = \"out\"\nproviders = [\"libvirt\"]".into(), "providers"),
        (
            "in-layer-cache",
            format!("target = \"docker\"\ndest = \"{}\"", fixture.dir.join("work/layers/docker").display()),
            "layer cache",
        ),
        ("not-an-export", format!("target = \"docker\"\ndest = \"{}\"", fixture.dir.display()), "no export wrote"),
    ];
    for (name, keys, expected) in cases {
        let stages = format!("[[stages]]\n[stages.export]\n{keys}\n");
        let file = pipeline_file(dir.path(), &fixture, &format!("bad-{name}"), &stages);
        let out = run(&fixture, &file, &[]);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{name}: expected `{expected}` in: {}", stderr(&out));
        assert!(!stderr(&out).contains("export: running"), "{name}: {}", stderr(&out));
    }
    assert!(!fixture.dir.join("work/layers/docker").exists());
    assert!(!dir.path().join("out").exists());
}
