//! Upstream-aware cache keys against a local HTTP server standing in for a Debian mirror and
//! an image server: a changed `InRelease` or ETag flips `plan` from cached to "to run" naming
//! the change, and back when restored; `--offline` sends no request at all.

mod common;

use common::*;
use std::path::Path;

fn plan(dir: &Path, file: &Path, extra: &[&str]) -> (bool, String, String) {
    let gnupg = gnupg_home(dir);
    let mut args = vec!["--work-dir", "work", "plan", file.to_str().unwrap()];
    args.extend(extra);
    let out = pipeline(dir, &gnupg, &args);
    (out.status.success(), stdout(&out), stderr(&out))
}

/// A 1 MiB qcow2 disk whose first 64 KiB hold `pattern`.
fn disk(dir: &Path, pattern: u8) -> Vec<u8> {
    let path = dir.join(format!("disk-{pattern}.qcow2"));
    let st = std::process::Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&path).arg("1M").status();
    assert!(st.unwrap().success());
    let st = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", &format!("write -P {pattern} 0 64k")])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .status();
    assert!(st.unwrap().success());
    std::fs::read(path).unwrap()
}

/// The first byte of the disk's content, read through qemu-io's pattern check.
fn holds_pattern(layer: &Path, pattern: u8) -> bool {
    let out = std::process::Command::new("qemu-io")
        .args(["-r", "-f", "qcow2", "-c", &format!("read -P {pattern} 0 64k")])
        .arg(layer)
        .output()
        .unwrap();
    out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("Pattern verification failed")
}

/// An image URL: its ETag is part of the key; a new ETag reruns the import with the new image
/// downloaded again (the cached copy is revalidated), the old ETag finds the old layer.
#[test]
fn an_image_url_is_rebuilt_when_its_etag_changes_and_offline_asks_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    let (mirror, url) = Mirror::start();
    let (v1, v2) = (disk(dir, 1), disk(dir, 2));
    mirror.put("/images/disk.qcow2", &v1, Some("\"v1\""));
    let file = write_file(
        dir,
        "p.toml",
        &format!(
            "version = 1\n[pipeline]\nname = \"u\"\n[[stages]]\n[stages.install]\nmethod = \"image\"\n\
             image = \"{url}/images/disk.qcow2\"\nformat = \"qcow2\"\n"
        ),
    );
    let output = |name: &str| dir.join(name);
    let run = |name: &str| {
        let out = pipeline(
            dir,
            &gnupg,
            &["--work-dir", "work", "run", file.to_str().unwrap(), "--output", output(name).to_str().unwrap()],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        stderr(&out)
    };
    run("first.qcow2");
    assert!(holds_pattern(&output("first.qcow2"), 1));
    let (ok, text, err) = plan(dir, &file, &[]);
    assert!(ok, "{err}");
    assert!(text.contains("cached"), "{text}");

    mirror.put("/images/disk.qcow2", &v2, Some("\"v2\""));
    let (ok, text, err) = plan(dir, &file, &[]);
    assert!(ok, "{err}");
    assert!(text.contains("to run") && text.contains("disk.qcow2 (ETag/Last-Modified) changed"), "{text}");
    let gets_before = mirror.requests().iter().filter(|r| r.starts_with("GET /images/")).count();
    let log = run("second.qcow2");
    assert!(log.contains("another version than the cached one"), "{log}");
    assert!(holds_pattern(&output("second.qcow2"), 2), "the new image was downloaded and imported");
    let gets = mirror.requests().iter().filter(|r| r.starts_with("GET /images/")).count();
    assert_eq!(gets, gets_before + 1, "one conditional GET that brought the new version");

    mirror.put("/images/disk.qcow2", &v1, Some("\"v1\""));
    let (_, text, _) = plan(dir, &file, &[]);
    assert!(text.contains("cached") && !text.contains("to run"), "the first layer is found again: {text}");

    // Offline: the state the last build recorded (v2 was built last, so its layer), no request.
    let before = mirror.requests().len();
    let (ok, text, err) = plan(dir, &file, &["--offline"]);
    assert!(ok, "{err}");
    assert!(text.contains("cached"), "{text}");
    assert_eq!(mirror.requests().len(), before, "--offline sent a request: {:?}", &mirror.requests()[before..]);
}

/// A debootstrap mirror: the digest of the suite's InRelease (Release where there is none) is
/// in the key, so a changed mirror changes the key and a restored one restores it; a suite the
/// mirror does not have is an error that names the files looked for.
#[test]
fn a_debootstrap_key_follows_the_mirrors_release_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mirror, url) = Mirror::start();
    mirror.put("/debian/dists/bookworm/InRelease", b"Date: Mon, 30 Nov 2026 08:00:00 UTC\n", None);
    let file = write_file(
        dir,
        "p.toml",
        &format!(
            "version = 1\n[pipeline]\nname = \"d\"\n[[stages]]\n[stages.install]\nmethod = \"debootstrap\"\n\
             suite = \"bookworm\"\nmirror = \"{url}/debian\"\n"
        ),
    );
    let key = |extra: &[&str]| {
        let (ok, text, err) = plan(dir, &file, extra);
        assert!(ok, "{err}");
        text.split_whitespace().nth(2).unwrap().to_string()
    };
    let first = key(&[]);
    mirror.put("/debian/dists/bookworm/InRelease", b"Date: Tue, 01 Dec 2026 08:00:00 UTC\n", None);
    let second = key(&[]);
    assert_ne!(first, second, "a new InRelease is a new key");
    mirror.put("/debian/dists/bookworm/InRelease", b"Date: Mon, 30 Nov 2026 08:00:00 UTC\n", None);
    assert_eq!(key(&[]), first, "the old InRelease is the old key");

    mirror.remove("/debian/dists/bookworm/InRelease");
    mirror.put("/debian/dists/bookworm/Release", b"Suite: bookworm\n", None);
    let release = key(&[]);
    assert!(release != first && release != second);
    assert!(mirror.requests().contains(&"GET /debian/dists/bookworm/Release".to_string()));

    mirror.remove("/debian/dists/bookworm/Release");
    let (ok, _, err) = plan(dir, &file, &[]);
    assert!(!ok);
    assert!(err.contains("dists/bookworm/InRelease") && err.contains("--offline"), "{err}");

    let before = mirror.requests().len();
    let (ok, text, err) = plan(dir, &file, &["--offline"]);
    assert!(ok, "{err}");
    assert!(text.contains("to run"), "never built: {text}");
    assert_eq!(mirror.requests().len(), before, "--offline sent a request");
}
