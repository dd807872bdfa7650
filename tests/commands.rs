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

/// DIR/p.toml: pipeline `name` importing a small image (DIR/base.qcow2) and publishing it as
/// entry `x` of DIR/r: two stages that run in a second or two.
fn import_and_publish(dir: &Path, name: &str) -> std::path::PathBuf {
    small_image(dir);
    let body = format!(
        "version = 1\nfrom = {{ image = \"base.qcow2\" }}\n[pipeline]\nname = \"{name}\"\n\
         [[stages]]\n[stages.publish]\nrepo = \"r\"\nname = \"x\"\n"
    );
    write_file(dir, "p.toml", &body)
}

fn same_disk(a: &Path, b: &Path) -> bool {
    Command::new("qemu-img").args(["compare", "-q"]).arg(a).arg(b).status().unwrap().success()
}

/// A new install's GNUPGHOME (the system units put it under /var/lib/virt-pipeline) does not
/// exist before the first publish: making the repository's key creates it, private.
#[test]
fn the_first_key_creates_a_missing_gnupg_home() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = dir.join("state/gnupg");
    let init = pipeline(dir, &gnupg, &["repo", "init", "r", "--generate-key", "Site Images"]);
    assert!(init.status.success(), "{}", stderr(&init));
    assert_eq!(std::fs::metadata(&gnupg).unwrap().permissions().mode() & 0o777, 0o700);
    let list = pipeline(dir, &gnupg, &["repo", "list", "r"]);
    assert!(list.status.success(), "{}", stderr(&list));
}

#[test]
fn a_repository_from_init_to_remove() {
    use std::os::unix::fs::PermissionsExt;
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
    // Every file of the repository is readable by others: a server running as a user of its
    // own (the serve unit's) serves it.
    for entry in std::fs::read_dir(dir.join("r")).unwrap() {
        let path = entry.unwrap().path();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        let hidden = path.file_name().unwrap().to_string_lossy().starts_with('.');
        assert!(hidden || mode & 0o044 == 0o044, "{} has mode {mode:o}", path.display());
    }
    assert!(dir.join("r/small-r1.xz").is_file());
    // The same as JSON (docs/commands.md's schema): list and show.
    let list: serde_json::Value = serde_json::from_str(&run_ok(dir, &gnupg, &["repo", "list", "r", "--json"])).unwrap();
    assert_eq!((list[0]["name"].as_str(), list[0]["revision"].as_u64()), (Some("small"), Some(1)), "{list}");
    assert_eq!(list[0]["fields"]["file"], "small-r1.xz", "{list}");
    assert!(list[0]["fields"]["checksum[sha512]"].as_str().is_some_and(|c| c.len() == 128), "{list}");
    let shown: serde_json::Value =
        serde_json::from_str(&run_ok(dir, &gnupg, &["repo", "show", "r", "small", "--json"])).unwrap();
    assert_eq!(shown["fields"]["aliases"], "tiny mini", "{shown}");
    assert_eq!(shown["provenance"]["pipeline"], "t", "{shown}");
    // The SBOMs beside the image, named with their digests by the signed manifest.
    for doc in ["small-r1.spdx.json", "small-r1.cdx.json"] {
        let digest = shown["documents"][doc].as_str().unwrap_or_else(|| panic!("{doc} in {shown}"));
        let bytes = std::fs::read(dir.join("r").join(doc)).unwrap();
        assert_eq!(digest, hex::encode(<sha2::Sha512 as sha2::Digest>::digest(&bytes)), "{doc}");
    }
    let show = run_ok(dir, &gnupg, &["repo", "show", "r", "small"]);
    assert!(show.contains("aliases=tiny mini") && show.contains("revision=1"), "{show}");
    assert!(show.contains("sboms:     small-r1.cdx.json, small-r1.spdx.json"), "{show}");

    // prune --keep 0 would delete what the index names: bad input, nothing deleted (as on
    // object storage).
    let prune = pipeline(dir, &gnupg, &["repo", "prune", "r", "--keep", "0"]);
    assert_eq!(prune.status.code(), Some(2), "{}", stderr(&prune));
    assert!(stderr(&prune).contains("keep at least 1"), "{}", stderr(&prune));
    assert!(dir.join("r/small-r1.xz").exists());

    // remove: the entry and its image go, the index stays signed.
    let image_file = dir.join("r/small-r1.xz");
    assert!(image_file.exists());
    run_ok(dir, &gnupg, &["repo", "remove", "r", "small"]);
    assert!(!image_file.exists());
    assert!(!dir.join("r/small-r1.spdx.json").exists() && !dir.join("r/small-r1.cdx.json").exists(), "SBOMs go too");
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
    let file = import_and_publish(dir, "gc-test");
    let file = file.to_str().unwrap();
    run_ok(dir, &gnupg, &["--work-dir", "w", "run", file]);
    // Run again: the stages are reported cached, and with -q nothing but the result is printed.
    let again = pipeline(dir, &gnupg, &["--work-dir", "w", "run", file]);
    assert!(stderr(&again).contains("cached"), "{}", stderr(&again));
    let quiet = pipeline(dir, &gnupg, &["-q", "--work-dir", "w", "run", file]);
    assert!(quiet.status.success() && stderr(&quiet).is_empty(), "-q printed: {}", stderr(&quiet));
    assert_eq!(stdout(&quiet), stdout(&again), "the layer's path, as without -q");
    let ls = run_ok(dir, &gnupg, &["--work-dir", "w", "cache", "ls"]);
    let plan = run_ok(dir, &gnupg, &["--work-dir", "w", "plan", file]);
    let key = plan.lines().next().unwrap().split_whitespace().nth(2).unwrap().to_string();
    assert!(ls.lines().any(|l| l.starts_with(&key) && l.contains("gc-test") && l.contains("install")), "{ls}");
    // The same as JSON (docs/commands.md's schema): cache ls and plan.
    let layers: serde_json::Value =
        serde_json::from_str(&run_ok(dir, &gnupg, &["--work-dir", "w", "cache", "ls", "--json"])).unwrap();
    let layer = layers.as_array().unwrap().iter().find(|l| l["key"].as_str().unwrap().starts_with(&key)).unwrap();
    assert_eq!(
        (layer["pipeline"].as_str(), layer["stage"].as_u64(), layer["kind"].as_str()),
        (Some("gc-test"), Some(1), Some("install"))
    );
    assert!(layer["size"].as_u64().unwrap() > 0 && layer["last_used"].as_str().unwrap().ends_with('Z'), "{layer}");
    let planned: serde_json::Value =
        serde_json::from_str(&run_ok(dir, &gnupg, &["--work-dir", "w", "plan", file, "--json"])).unwrap();
    let kinds: Vec<(&str, &str)> = planned
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["kind"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds, [("install", "cached"), ("publish", "cached")], "{planned}");
    assert_eq!(planned[0]["key"], layer["key"], "{planned}");

    // Stage logs and rebuild reports older than the limit go, newer ones stay: the run's
    // own logs, beside an old run's directory and an old and a new report.
    let logs = dir.join("w/logs/gc-test");
    let new_run = std::fs::read_dir(&logs).unwrap().next().unwrap().unwrap().path();
    let old_run = logs.join("2026-01-01T000000Z");
    std::fs::create_dir_all(&old_run).unwrap();
    std::fs::write(old_run.join("01-install.log"), "old").unwrap();
    std::fs::create_dir_all(dir.join("w/reports")).unwrap();
    std::fs::write(dir.join("w/reports/old.json"), "{}").unwrap();
    std::fs::write(dir.join("w/reports/new.json"), "{}").unwrap();
    let age = |path: &std::path::Path| {
        let status = std::process::Command::new("touch").args(["-d", "20 days ago"]).arg(path).status().unwrap();
        assert!(status.success());
    };
    age(&old_run);
    age(&dir.join("w/reports/old.json"));

    // Layers used within the last 14 days stay; with 0 days nothing does.
    let gc = run_ok(dir, &gnupg, &["--work-dir", "w", "cache", "gc"]);
    assert!(gc.contains("1 stage log directories, 1 rebuild reports"), "{gc}");
    assert!(!old_run.exists() && new_run.join("01-install.log").exists(), "{gc}");
    assert!(!dir.join("w/reports/old.json").exists() && dir.join("w/reports/new.json").exists(), "{gc}");
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

/// `pipeline ARGS` with a GnuPG home and a config directory (the trust store) of the test's own.
fn pipeline_with(dir: &Path, gnupg: &Path, config: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env("GNUPGHOME", gnupg)
        .env("XDG_CONFIG_HOME", config)
        .output()
        .expect("run pipeline");
    eprintln!("$ pipeline {}\n--- stderr\n{}--- exit {:?}", args.join(" "), stderr(&out), out.status.code());
    out
}

fn gpg(gnupg: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new("gpg").args(["--batch", "--yes"]).args(args).env("GNUPGHOME", gnupg).output().unwrap();
    assert!(out.status.success(), "gpg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A second key in the keyring: its fingerprint.
fn another_key(gnupg: &Path, not: &str) -> String {
    gpg(gnupg, &["--passphrase", "", "--quick-gen-key", "Other <other@example.net>", "default", "default", "never"]);
    let keys = String::from_utf8_lossy(&gpg(gnupg, &["--with-colons", "--list-secret-keys"]).stdout).into_owned();
    keys.lines()
        .filter_map(|l| l.strip_prefix("fpr:").map(|f| f.trim_matches(':').to_string()))
        .find(|f| f != not)
        .expect("the second key's fingerprint")
}

/// A repository is checked against the key its user trusts and only it. Whoever can write
/// the repository can sign its index with another key (one the consumer's keyring even
/// holds) and name that key in the repository's `signing-key.fpr` and public key file: the
/// consumer still checks against the key `repo init` recorded outside the repository, and
/// refuses. Without a recorded key or a `fingerprint`, a local repository is bad input.
#[test]
fn an_index_signed_by_another_key_in_the_keyring_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    let config = dir.join("config");
    small_image(dir);
    let run = |args: &[&str]| pipeline_with(dir, &gnupg, &config, args);
    assert!(run(&["repo", "init", "r"]).status.success());
    let first = std::fs::read_to_string(dir.join("r/signing-key.fpr")).unwrap().trim().to_string();
    write_file(
        dir,
        "p.toml",
        "version = 1\nfrom = { image = \"base.qcow2\" }\n[pipeline]\nname = \"p\"\n[[stages]]\n[stages.publish]\nrepo = \"r\"\nname = \"small\"\n",
    );
    assert!(run(&["--work-dir", "w", "run", "p.toml"]).status.success());
    write_file(
        dir,
        "c.toml",
        "version = 1\nfrom = { repo = \"r\", name = \"small\" }\n[pipeline]\nname = \"c\"\n[[stages]]\n[stages.publish]\nrepo = \"r2\"\nname = \"copy\"\n",
    );
    let trusted = run(&["--work-dir", "w1", "run", "c.toml"]);
    assert!(trusted.status.success(), "the recorded key verifies the repository: {}", stderr(&trusted));

    // The repository taken over by another key of the same keyring.
    let other = another_key(&gnupg, &first);
    gpg(
        &gnupg,
        &[
            "--local-user",
            &other,
            "--output",
            dir.join("r/index.asc").to_str().unwrap(),
            "--clearsign",
            dir.join("r/index").to_str().unwrap(),
        ],
    );
    std::fs::write(dir.join("r/signing-key.fpr"), format!("{other}\n")).unwrap();
    let public = gpg(&gnupg, &["--armor", "--export", &other]).stdout;
    std::fs::write(dir.join("r/r.asc"), public).unwrap();
    let refused = run(&["--work-dir", "w2", "run", "c.toml"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("signature check failed") && stderr(&refused).contains(&first),
        "{}",
        stderr(&refused)
    );
    let layers = std::fs::read_dir(dir.join("w2/layers"))
        .map(|d| d.filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "qcow2")).count())
        .unwrap_or(0);
    assert_eq!(layers, 0, "nothing was imported");
    // The same when the key is pinned in the pipeline, for a served repository.
    let served = format!("http://{}", serve_in_background(virt_pipeline::repo::serve::router(&dir.join("r")).unwrap()));
    let pinned = write_file(
        dir,
        "u.toml",
        &format!("version = 1\nfrom = {{ repo = \"{served}/index.asc\", name = \"small\", fingerprint = \"{first}\" }}\n[pipeline]\nname = \"u\"\n[[stages]]\n[stages.publish]\nrepo = \"r3\"\nname = \"copy\"\n"),
    );
    let refused = run(&["--work-dir", "w3", "run", pinned.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("not the trusted key"), "{}", stderr(&refused));

    // Another user (no recorded key) must name the key.
    let stranger = pipeline_with(dir, &gnupg, &dir.join("config2"), &["--work-dir", "w4", "run", "c.toml"]);
    assert_eq!(stranger.status.code(), Some(2), "{}", stderr(&stranger));
    assert!(
        stderr(&stranger).contains("c.toml: from.fingerprint") && stderr(&stranger).contains("add fingerprint = "),
        "{}",
        stderr(&stranger)
    );
}

/// A pin is a whole fingerprint: a long key ID, another suffix or an empty string is bad
/// input, and a repository read over the network must have one.
#[test]
fn a_pin_is_a_full_fingerprint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    let fpr = "61A0D7D05F70F0F8E76E6E91E17F83535EEEE8D4";
    let from = |extra: &str| {
        write_file(
            dir,
            "p.toml",
            &format!("version = 1\nfrom = {{ repo = \"http://127.0.0.1:9/index.asc\", name = \"x\"{extra} }}\n[pipeline]\nname = \"p\"\n[[stages]]\n[stages.publish]\nrepo = \"r\"\nname = \"y\"\n"),
        );
        pipeline(dir, &gnupg, &["validate", "p.toml"])
    };
    for (pin, says) in [(&fpr[24..], "is a key ID"), (&fpr[4..], "is not a fingerprint"), ("", "is empty")] {
        let out = from(&format!(", fingerprint = \"{pin}\""));
        assert_eq!(out.status.code(), Some(2), "{pin}: {}", stderr(&out));
        assert!(stderr(&out).contains("p.toml: from.fingerprint") && stderr(&out).contains(says), "{}", stderr(&out));
    }
    let out = from("");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("p.toml: from.fingerprint") && stderr(&out).contains("add fingerprint"),
        "{}",
        stderr(&out)
    );
    assert!(from(&format!(", fingerprint = \"{}\"", fpr.to_lowercase())).status.success());

    run_ok(dir, &gnupg, &["repo", "init", "r"]);
    let out = pipeline(dir, &gnupg, &["repo", "verify", "r", "--fingerprint", &fpr[24..]]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// Publishing signs again only what the signed index says: a plain `index` edited beside it
/// is refused with a message that says what differs and how to recover, nothing changes,
/// and once the edit is gone publishing works again.
#[test]
fn a_tampered_plain_index_fails_the_next_publish() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    let config = dir.join("config");
    small_image(dir);
    let run = |args: &[&str]| pipeline_with(dir, &gnupg, &config, args);
    write_file(
        dir,
        "p.toml",
        "version = 1\nfrom = { image = \"base.qcow2\" }\n[pipeline]\nname = \"p\"\n[[stages]]\n[stages.publish]\nrepo = \"r\"\nname = \"small\"\n",
    );
    assert!(run(&["--work-dir", "w", "run", "p.toml"]).status.success());
    let signed = std::fs::read(dir.join("r/index.asc")).unwrap();
    let index = std::fs::read_to_string(dir.join("r/index")).unwrap();
    std::fs::write(dir.join("r/index"), format!("{index}\n[evil]\nfile=evil.xz\nrevision=1\n")).unwrap();

    let refused = run(&["--work-dir", "w", "run", "p.toml", "--set", "stages[0].publish.notes=again"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    let err = stderr(&refused);
    assert!(err.contains("r/index differs from the signed") && err.contains("[evil]"), "{err}");
    assert!(err.contains("edited outside pipeline") && err.contains("delete"), "{err}");
    assert_eq!(std::fs::read(dir.join("r/index.asc")).unwrap(), signed, "index.asc is unchanged");
    let removed = run(&["repo", "remove", "r", "small"]);
    assert_eq!(removed.status.code(), Some(1), "{}", stderr(&removed));
    assert!(dir.join("r/small-r1.xz").exists());

    std::fs::remove_file(dir.join("r/index")).unwrap();
    assert!(run(&["--work-dir", "w", "run", "p.toml", "--set", "stages[0].publish.notes=again"]).status.success());
    let index = std::fs::read_to_string(dir.join("r/index")).unwrap();
    assert!(index.contains("notes=again") && !index.contains("evil"), "{index}");
    assert!(run(&["repo", "verify", "r"]).status.success());
}

/// Every file under a directory, with its size and modification time.
fn file_list(dir: &Path) -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                todo.push(e.path());
            }
            out.push((e.path(), meta.len(), meta.modified().unwrap()));
        }
    }
    out.sort();
    out
}

/// `plan` reads upstream state (a served repository's signed index) to compute its keys,
/// and writes nothing: not a work directory, not a download cache entry. Its keys are the
/// ones a run uses (after the run, every stage is `cached`).
#[test]
fn plan_reads_the_network_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    small_image(dir);
    let file = write_file(
        dir,
        "p.toml",
        "version = 1\nfrom = { image = \"base.qcow2\" }\n[pipeline]\nname = \"p\"\n[[stages]]\n[stages.publish]\nrepo = \"r\"\nname = \"small\"\n",
    );
    run_ok(dir, &gnupg, &["--work-dir", "w0", "run", file.to_str().unwrap()]);
    let fpr = std::fs::read_to_string(dir.join("r/signing-key.fpr")).unwrap().trim().to_string();
    let url = format!("http://{}", serve_in_background(virt_pipeline::repo::serve::router(&dir.join("r")).unwrap()));
    let file = write_file(
        dir,
        "u.toml",
        &format!("version = 1\nfrom = {{ repo = \"{url}/index.asc\", name = \"small\", fingerprint = \"{fpr}\" }}\n[pipeline]\nname = \"u\"\n[[stages]]\n[stages.publish]\nrepo = \"r2\"\nname = \"copy\"\n"),
    );
    let file = file.to_str().unwrap();
    let work = dir.join("w");

    let plan = run_ok(dir, &gnupg, &["--work-dir", "w", "plan", file]);
    assert_eq!(plan.lines().filter(|l| l.contains("to run")).count(), 2, "{plan}");
    assert!(!work.exists(), "plan created the work directory");

    run_ok(dir, &gnupg, &["--work-dir", "w", "run", file]);
    let before = file_list(&work);
    let plan = run_ok(dir, &gnupg, &["--work-dir", "w", "plan", file]);
    assert_eq!(plan.lines().filter(|l| l.contains("cached")).count(), 2, "the run used plan's keys: {plan}");
    assert_eq!(file_list(&work), before, "plan changed the work directory");
}

/// Two repositories with the same directory name in one keyring (a nightly's scratch
/// repositories, say) each get a key of their own.
#[test]
fn repositories_of_the_same_name_get_their_own_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::create_dir_all(dir.join("b")).unwrap();
    run_ok(dir, &gnupg, &["repo", "init", "a/images"]);
    run_ok(dir, &gnupg, &["repo", "init", "b/images"]);
    let fpr = |d: &str| std::fs::read_to_string(dir.join(d).join("signing-key.fpr")).unwrap();
    assert_ne!(fpr("a/images"), fpr("b/images"));
}

/// A repository is found relative to the pipeline file, for `from = { repo }` as for a
/// publish stage's `repo`; one that is not there is named as missing (not its parent taken
/// for it), before anything is built.
#[test]
fn a_repository_is_relative_to_the_pipeline_file_and_a_missing_one_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    small_image(dir);
    let pipelines = dir.join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    let publish = write_file(
        &pipelines,
        "base.toml",
        "version = 1\nfrom = { image = \"../base.qcow2\" }\n[pipeline]\nname = \"base\"\n[[stages]]\n[stages.publish]\nrepo = \"../repo-index\"\nname = \"small\"\nxz_level = 0\n",
    );
    run_ok(dir, &gnupg, &["--work-dir", "w", "run", publish.to_str().unwrap()]);
    assert!(
        dir.join("repo-index/index.asc").is_file(),
        "../repo-index is beside pipelines/, not in the working directory's parent"
    );
    let from = |repo: &str| {
        write_file(
            &pipelines,
            "child.toml",
            &format!(
                "version = 1\nfrom = {{ repo = \"{repo}\", name = \"small\" }}\n[pipeline]\nname = \"child\"\n\
                 [[stages]]\n[stages.publish]\nrepo = \"../copies\"\nname = \"copy\"\nxz_level = 0\n"
            ),
        )
    };
    let child = from("../repo-index");
    let out = pipeline(dir, &gnupg, &["--work-dir", "w", "run", child.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("copies/index.asc").is_file(), "its publish wrote beside pipelines/ too");

    let child = from("repo-index");
    let out = pipeline(dir, &gnupg, &["--work-dir", "w2", "run", child.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("child.toml: from.repo") && err.contains("pipelines/repo-index does not exist"), "{err}");
    let layers = std::fs::read_dir(dir.join("w2/layers"))
        .map(|d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "qcow2")).count())
        .unwrap_or(0);
    assert_eq!(layers, 0, "nothing was built");
}

/// A loopback HTTP server for the download tests: a GET of `/flaky` is answered 503 twice,
/// then with the file; one of `/stall` gets the headers and 64 KiB of the file, then nothing
/// while the connection stays open; HEAD gets the headers. Returns its base URL and the
/// requests it had (`METHOD PATH`).
fn unreliable_server(file: std::path::PathBuf) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let request = String::from_utf8_lossy(&request).into_owned();
            let mut words = request.split_whitespace();
            let (method, path) = (words.next().unwrap_or("").to_string(), words.next().unwrap_or("").to_string());
            let earlier = {
                let mut seen = log.lock().unwrap();
                seen.push(format!("{method} {path}"));
                seen.iter().filter(|p| **p == format!("{method} {path}")).count() - 1
            };
            let body = std::fs::read(&file).unwrap();
            let header = |status: &str| {
                format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
            };
            if method == "HEAD" {
                // The upstream probe: the file's length, no body.
                let _ = stream.write_all(header("200 OK").as_bytes());
            } else if path.starts_with("/flaky") && earlier < 2 {
                let _ = stream.write_all(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            } else if path.starts_with("/stall") {
                let _ = stream.write_all(header("200 OK").as_bytes());
                let _ = stream.write_all(&body[..64 << 10]);
                // Held open, silent, until the test process ends.
                std::thread::spawn(move || {
                    let _keep = stream;
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                });
            } else {
                let _ = stream.write_all(header("200 OK").as_bytes());
                let _ = stream.write_all(&body);
            }
        }
    });
    (url, seen)
}

/// Every HTTP wait is bounded and a failure that may pass is tried again: a server that
/// answers 503 twice and then serves builds the layer; one that stops sending mid-body is
/// given up on after `--stall-timeout` and three attempts, naming the URL; and SIGTERM
/// during such a wait ends the run at once, not at the next byte.
#[test]
fn downloads_are_retried_bounded_in_time_and_stopped_by_a_signal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    let served = dir.join("served");
    std::fs::create_dir(&served).unwrap();
    let image = small_image(&served);
    // 2 MiB of data: 64 KiB are far from the whole file.
    let (url, seen) = unreliable_server(image.clone());
    let pipeline_from = |name: &str| {
        write_file(
            dir,
            &format!("{name}.toml"),
            &format!("version = 1\nfrom = {{ image = \"{url}/{name}.qcow2\" }}\n[pipeline]\nname = \"{name}\"\n[[stages]]\n[stages.publish]\nrepo = \"r\"\nname = \"{name}\"\nxz_level = 0\n"),
        )
    };

    let flaky = pipeline_from("flaky");
    let layer = run_ok(dir, &gnupg, &["--work-dir", "w", "run", flaky.to_str().unwrap()]);
    assert!(same_disk(&image, Path::new(layer.trim())), "the third answer is the image");
    assert_eq!(seen.lock().unwrap().iter().filter(|p| p.starts_with("GET /flaky")).count(), 3);

    let stall = pipeline_from("stall");
    let out = pipeline(dir, &gnupg, &["--work-dir", "w", "--stall-timeout", "1s", "run", stall.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("{url}/stall.qcow2: the server sent nothing for 1s")), "{err}");
    let attempts = seen.lock().unwrap().iter().filter(|p| p.starts_with("GET /stall")).count();
    assert_eq!(attempts, 3, "three attempts, then the failure");

    // The default stall timeout (60 s) is far off: the signal ends the wait.
    let mut child = pipeline_command(dir, &gnupg, &["--work-dir", "w2", "run", stall.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let asked = || seen.lock().unwrap().iter().filter(|p| p.starts_with("GET /stall")).count();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while asked() < 4 {
        assert!(std::time::Instant::now() < deadline, "the run never asked for the file");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    terminate(child.id());
    // A hang guard, not a timing check: a run that ignores the signal would wait 60 s a try.
    let ended = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(ended.elapsed() < std::time::Duration::from_secs(30), "SIGTERM did not end the run");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("SIGTERM") || err.contains("interrupted"), "{err}");
}

/// `pipeline serve` serves the file a name is, opened once and never through a link: while
/// a writer flips a name between a file and a link to a file outside the repository, a
/// burst of requests gets the file or a 404, never the outside file's bytes.
#[test]
fn serve_never_follows_a_name_flipped_to_a_link_out_of_the_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let outside = tmp.path().join("outside-secret");
    std::fs::write(&outside, "SECRET outside the repository\n").unwrap();
    // `serve` wants a repository: an index.asc is what makes one.
    std::fs::write(repo.join("index.asc"), "").unwrap();
    let name = repo.join("image.xz");
    std::fs::write(&name, "inside\n").unwrap();
    let (_server, url) = serve(&repo);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (stop, name, outside) = (stop.clone(), name.clone(), outside.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = std::fs::remove_file(&name);
                let _ = std::os::unix::fs::symlink(&outside, &name);
                let _ = std::fs::remove_file(&name);
                let _ = std::fs::write(&name, "inside\n");
            }
        })
    };
    let client = reqwest::blocking::Client::new();
    let (mut inside, mut missing) = (0, 0);
    for _ in 0..400 {
        let resp = client.get(format!("{url}/image.xz")).send().unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().unwrap();
        assert!(!body.contains("SECRET"), "served a file outside the repository");
        match status {
            200 if body == "inside\n" || body.is_empty() => inside += 1,
            404 => missing += 1,
            other => panic!("{other}: {body}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    flipper.join().unwrap();
    assert!(inside > 0, "the file itself was served ({missing} not found)");
}

/// Idle connections cannot starve the server: with its soft open-file limit lowered below
/// what 1000 connections need, `pipeline serve` raises it to what the system allows and
/// still answers a GET at once; idle clients are dropped after the header timeout.
#[test]
fn serve_answers_while_a_thousand_clients_sit_idle() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(repo.join("index.asc"), "").unwrap();
    std::fs::write(repo.join("index"), "[entry]\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -Sn 256 && exec '{}' serve '{}' --listen {addr}", bin().display(), repo.display()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _server = Server::from_child(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let idle: Vec<std::net::TcpStream> = (0..1000).map(|_| std::net::TcpStream::connect(&addr).unwrap()).collect();
    // A hang guard, not a timing check: a starved server would never answer.
    let client = reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(2)).build().unwrap();
    let resp = client.get(format!("http://{addr}/index")).send().expect("an answer while 1000 clients sit idle");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().unwrap(), "[entry]\n");
    drop(idle);
}

/// `run --until` stops after the named stage (by number or kind) and prints its layer; a
/// stage the pipeline does not have is bad input, naming its stages, with nothing written.
#[test]
fn until_stops_after_the_named_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    let file = import_and_publish(dir, "until");
    let file = file.to_str().unwrap();
    let bad = pipeline(dir, &gnupg, &["--work-dir", "w", "run", file, "--until", "check"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("--until check") && stderr(&bad).contains("1 install, 2 publish"),
        "{}",
        stderr(&bad)
    );
    let bad = pipeline(dir, &gnupg, &["--work-dir", "w", "run", file, "--until", "3"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(!dir.join("w").exists(), "nothing was written");

    for until in ["1", "install"] {
        let layer = run_ok(dir, &gnupg, &["--work-dir", "w", "run", file, "--until", until]);
        assert!(Path::new(layer.trim()).is_file(), "{layer}");
        assert!(!dir.join("r").exists(), "--until {until}: the publish did not run");
    }
    run_ok(dir, &gnupg, &["--work-dir", "w", "run", file, "--until", "publish"]);
    assert!(dir.join("r/index.asc").is_file(), "--until publish runs the publish");
}

/// `pipeline boot`'s bad input is refused before anything boots (exit 2, naming the option),
/// and a layer that is not built yet is named with the run that builds it (exit 1); no VM
/// is started by any of these.
#[test]
fn boot_refuses_what_it_cannot_boot_before_starting_a_vm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    let file = import_and_publish(dir, "boot");
    let file = file.to_str().unwrap();
    let raw = dir.join("disk.raw");
    std::fs::write(&raw, vec![0u8; 4096]).unwrap();
    let raw = raw.to_str().unwrap();
    for (args, needle) in [
        (vec!["boot"], "--disk"),
        (vec!["boot", file, "--stage", "check"], "--stage check"),
        (vec!["boot", "--disk", "missing.qcow2"], "--disk missing.qcow2"),
        (vec!["boot", "--disk", raw], "a raw image"),
        (vec!["boot", "--disk", raw, "--", "true"], "--ssh"),
        (vec!["boot", file, "--memory", "lots"], "--memory lots"),
        (vec!["boot", file, "--cpus", "0"], "--cpus 0"),
    ] {
        let out = pipeline(dir, &gnupg, &[&["--work-dir", "w"], &args[..]].concat());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    assert!(!dir.join("w").exists(), "nothing was written");

    let out = pipeline(dir, &gnupg, &["--work-dir", "w", "boot", file, "--stage", "install"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("build it with `pipeline run {file} --until install`")), "{}", stderr(&out));
    assert!(!dir.join("w/layers").exists(), "the cache was not created");
}
