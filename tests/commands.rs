//! The commands around a run, on small images made with qemu-img (no appliance): repository
//! init/show/remove, `--output`, `cache ls`/`gc`, and `--offline` with the download cache.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// A 64 MiB qcow2 with 2 MiB of pattern data, the starting image of these pipelines.
fn small_image(dir: &Path) -> std::path::PathBuf {
    let image = dir.join("base.qcow2");
    let ok = |cmd: &mut Command| assert!(cmd.status().unwrap().success());
    ok(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&image).arg("64M"));
    ok(Command::new("qemu-io").args(["-f", "qcow2", "-c", "write -q -P 0x33 1M 2M"]).arg(&image));
    image
}

fn run_ok(dir: &Path, gnupg: &Path, args: &[&str]) -> String {
    let out = pipeline(dir, gnupg, args);
    assert!(out.status.success(), "pipeline {args:?} failed:\n{}", stderr(&out));
    stdout(&out)
}

fn same_disk(a: &Path, b: &Path) -> bool {
    Command::new("qemu-img").args(["compare", "-q"]).arg(a).arg(b).status().unwrap().success()
}

#[test]
fn a_repository_from_init_to_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    let image = small_image(dir);

    // init: a new key, the public key and a sources file naming the given URI.
    let init = pipeline(
        dir,
        &gnupg,
        &["repo", "init", "r", "--generate-key", "Test Images <img@example.net>", "--uri", "http://img.example.net/r"],
    );
    assert!(init.status.success(), "{}", stderr(&init));
    let fpr = std::fs::read_to_string(dir.join("r/signing-key.fpr")).unwrap();
    assert!(fpr.trim().len() == 40 && fpr.trim().chars().all(|c| c.is_ascii_hexdigit()), "{fpr}");
    let conf = std::fs::read_to_string(dir.join("r/r.conf")).unwrap();
    assert!(conf.contains("uri=http://img.example.net/r/index.asc"), "{conf}");
    // virt-builder reads the key only from a local file: where clients install it.
    assert!(conf.contains("gpgkey=file:///etc/virt-builder/repos.d/r.asc"), "{conf}");
    let key = std::fs::read_to_string(dir.join("r/r.asc")).unwrap();
    assert!(key.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"));
    run_ok(dir, &gnupg, &["repo", "verify", "r", "--fingerprint", fpr.trim()]);
    assert_eq!(run_ok(dir, &gnupg, &["repo", "list", "r"]).trim(), "", "a new repository is empty");

    // A publish with aliases, and the last layer written out as a standalone qcow2.
    let file = write_file(
        dir,
        "p.toml",
        "version = 1\nfrom = { image = \"base.qcow2\" }\n[pipeline]\nname = \"t\"\n[[stages]]\n[stages.publish]\nrepo = \"r\"\nname = \"small\"\naliases = [\"tiny\", \"mini\"]\n",
    );
    let out = dir.join("out.qcow2");
    run_ok(dir, &gnupg, &["--work-dir", "w", "run", file.to_str().unwrap(), "--output", out.to_str().unwrap()]);
    let info = Command::new("qemu-img").args(["info", "--output=json"]).arg(&out).output().unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert!(info["backing-filename"].is_null(), "--output is standalone: {info}");
    assert!(same_disk(&image, &out));
    assert!(run_ok(dir, &gnupg, &["repo", "list", "r"]).contains("small"));
    let show = run_ok(dir, &gnupg, &["repo", "show", "r", "small"]);
    assert!(show.contains("aliases=tiny mini") && show.contains("revision=1"), "{show}");

    // remove: the entry and its image go, the index stays signed.
    let image_file = dir.join("r/small-r1.xz");
    assert!(image_file.exists());
    run_ok(dir, &gnupg, &["repo", "remove", "r", "small"]);
    assert!(!image_file.exists());
    assert!(!run_ok(dir, &gnupg, &["repo", "list", "r"]).contains("small"));
    run_ok(dir, &gnupg, &["repo", "verify", "r", "--fingerprint", fpr.trim()]);
    let missing = pipeline(dir, &gnupg, &["repo", "show", "r", "small"]);
    assert!(!missing.status.success() && stderr(&missing).contains("small"), "{}", stderr(&missing));
}

#[test]
fn cache_ls_names_layers_and_gc_removes_unused_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    small_image(dir);
    let file = write_file(
        dir,
        "p.toml",
        "version = 1\nfrom = { image = \"base.qcow2\" }\n[pipeline]\nname = \"gc-test\"\n[[stages]]\n[stages.publish]\nrepo = \"r\"\nname = \"x\"\n",
    );
    let file = file.to_str().unwrap();
    run_ok(dir, &gnupg, &["--work-dir", "w", "run", file]);
    let ls = run_ok(dir, &gnupg, &["--work-dir", "w", "cache", "ls"]);
    let plan = run_ok(dir, &gnupg, &["--work-dir", "w", "plan", file]);
    let key = plan.lines().next().unwrap().split_whitespace().nth(2).unwrap().to_string();
    assert!(ls.lines().any(|l| l.starts_with(&key) && l.contains("gc-test") && l.contains("install")), "{ls}");

    // Layers used within the last 14 days stay; with 0 days nothing does.
    run_ok(dir, &gnupg, &["--work-dir", "w", "cache", "gc"]);
    assert!(run_ok(dir, &gnupg, &["--work-dir", "w", "plan", file]).lines().all(|l| l.contains("cached")));
    run_ok(dir, &gnupg, &["--work-dir", "w", "cache", "gc", "--keep-days", "0"]);
    assert_eq!(run_ok(dir, &gnupg, &["--work-dir", "w", "cache", "ls"]).trim(), "");
    let plan = run_ok(dir, &gnupg, &["--work-dir", "w", "plan", file]);
    assert!(plan.lines().all(|l| l.contains("to run")), "{plan}");
}

#[test]
fn offline_runs_use_only_the_download_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    let served = dir.join("served");
    std::fs::create_dir(&served).unwrap();
    let image = small_image(&served);
    let router = virt_pipeline::repo::serve::router(&served).unwrap();
    let url = format!("http://{}", serve_in_background(router));
    let file = write_file(
        dir,
        "p.toml",
        &format!("version = 1\nfrom = {{ image = \"{url}/base.qcow2\" }}\n[pipeline]\nname = \"off\"\n[[stages]]\n[stages.publish]\nrepo = \"r\"\nname = \"off\"\n"),
    );
    let file = file.to_str().unwrap();

    let refused = pipeline(dir, &gnupg, &["--work-dir", "w", "run", file, "--offline"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("not in the download cache"), "{}", stderr(&refused));

    run_ok(dir, &gnupg, &["--work-dir", "w", "run", file]);
    // The image is gone from the server; the cached download still builds the layer.
    std::fs::remove_file(&image).unwrap();
    let layer = run_ok(dir, &gnupg, &["--work-dir", "w", "run", file, "--offline", "--no-cache"]);
    let original = small_image(dir);
    assert!(same_disk(&original, Path::new(layer.trim())));
}

/// A key given for one publish must be the repository's own (clients trust only it): another
/// key, or one without a secret half, is bad input and nothing is written. `repo init
/// --sign-key` moves the repository to another key and signs its index again.
#[test]
fn publishing_with_another_key_is_refused_until_the_repository_moves_to_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    small_image(dir);
    run_ok(dir, &gnupg, &["repo", "init", "r"]);
    let first = std::fs::read_to_string(dir.join("r/signing-key.fpr")).unwrap().trim().to_string();
    let gpg = |args: &[&str]| Command::new("gpg").args(args).env("GNUPGHOME", &gnupg).output().unwrap();
    let made = gpg(&[
        "--batch",
        "--passphrase",
        "",
        "--quick-gen-key",
        "Other <other@example.net>",
        "default",
        "default",
        "never",
    ]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let keys = String::from_utf8_lossy(&gpg(&["--with-colons", "--list-secret-keys"]).stdout).into_owned();
    let other = keys
        .lines()
        .filter_map(|l| l.strip_prefix("fpr:").map(|f| f.trim_matches(':').to_string()))
        .find(|f| *f != first)
        .expect("the second key's fingerprint");
    let file = write_file(
        dir,
        "p.toml",
        "version = 1\nfrom = { image = \"base.qcow2\" }\n[pipeline]\nname = \"k\"\n[[stages]]\n[stages.publish]\nrepo = \"r\"\nname = \"keyed\"\n",
    );
    let file = file.to_str().unwrap();

    let refused = pipeline(dir, &gnupg, &["--work-dir", "w", "run", file, "--sign-key", &other]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("trust only that key") && stderr(&refused).contains("repo init"));
    assert!(!run_ok(dir, &gnupg, &["repo", "list", "r"]).contains("keyed"));
    let layers = std::fs::read_dir(dir.join("w/layers"))
        .map(|d| d.filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "qcow2")).count())
        .unwrap_or(0);
    assert_eq!(layers, 0, "nothing ran");
    let unknown = "0123456789ABCDEF0123456789ABCDEF01234567";
    let set = "stages[0].publish.repo=r2";
    let refused = pipeline(dir, &gnupg, &["--work-dir", "w", "run", file, "--set", set, "--sign-key", unknown]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("no secret key"), "{}", stderr(&refused));
    assert!(!dir.join("r2").exists());

    run_ok(dir, &gnupg, &["repo", "init", "r", "--sign-key", &other]);
    run_ok(dir, &gnupg, &["repo", "verify", "r", "--fingerprint", &other]);
    let moved = pipeline(dir, &gnupg, &["repo", "verify", "r", "--fingerprint", &first]);
    assert!(!moved.status.success(), "the index is no longer signed by the old key");
    run_ok(dir, &gnupg, &["--work-dir", "w", "run", file, "--sign-key", &other]);
    assert!(run_ok(dir, &gnupg, &["repo", "list", "r"]).contains("keyed"));
    run_ok(dir, &gnupg, &["repo", "verify", "r"]);
}
