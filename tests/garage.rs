//! The repository and the layer cache on S3-compatible object storage, against a real
//! Garage cluster of three nodes on loopback (replication factor 3). Garage ignores
//! conditional writes, so these also show that nothing depends on them.

mod common;

use common::garage::Garage;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use virt_pipeline::s3::{Location, Store};

const BUCKET: &str = "images";

/// The tests set the S3 environment of their own cluster in this process: one at a time.
static ONE_CLUSTER: Mutex<()> = Mutex::new(());

/// `pipeline ARGS` in `cwd` with the cluster's S3 environment and `extra` on top.
fn pipeline_s3(cwd: &Path, gnupg: &Path, garage: &Garage, args: &[&str], extra: &[(&str, &str)]) -> Output {
    run_shown(command_s3(cwd, gnupg, garage, args, extra), args)
}

fn command_s3(cwd: &Path, gnupg: &Path, garage: &Garage, args: &[&str], extra: &[(&str, &str)]) -> Command {
    let mut cmd = pipeline_command(cwd, gnupg, args);
    cmd.envs(garage.env()).envs(extra.iter().copied());
    cmd
}

/// The cluster's client, as the tool configures it, for looking at (and damaging) objects.
fn store(garage: &Garage, url: &str) -> Store {
    for (k, v) in garage.env() {
        std::env::set_var(k, v);
    }
    Store::open(&Location::parse(url).unwrap()).unwrap()
}

/// A pipeline that imports `image` and publishes it as `name` into `repo` (xz preset 0: what
/// these tests are about is the storage, not the compression).
fn publish_pipeline(dir: &Path, file: &str, image: &Path, repo: &str, name: &str) -> PathBuf {
    write_file(
        dir,
        file,
        &format!(
            "version = 1\nfrom = {{ image = \"{}\" }}\n[pipeline]\nname = \"{name}\"\n[[stages]]\n[stages.publish]\n\
             repo = \"{repo}\"\nname = \"{name}\"\nformat = \"raw\"\nxz_level = 0\n",
            image.display()
        ),
    )
}

/// A raw disk of random bytes (no partition table: publish reads no package list).
fn random_disk(path: &Path, mib: u64) {
    let mut random = std::io::Read::take(std::fs::File::open("/dev/urandom").unwrap(), mib << 20);
    std::io::copy(&mut random, &mut std::fs::File::create(path).unwrap()).unwrap();
}

/// `repo init` on the cluster: the signing key's fingerprint.
fn init_repo(dir: &Path, gnupg: &Path, garage: &Garage, url: &str, uri: &str) -> String {
    let out = pipeline_s3(dir, gnupg, garage, &["repo", "init", url, "--uri", uri], &[]);
    assert!(out.status.success(), "repo init: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("ignores conditional writes"), "init tells what the server does with them: {text}");
    text.split_whitespace().find(|w| w.len() == 40 && w.chars().all(|c| c.is_ascii_hexdigit())).unwrap().to_string()
}

/// A new signing key without passphrase in `gnupg`, as a builder of the shared layer cache
/// has: its fingerprint.
fn builder_key(gnupg: &Path, name: &str) -> String {
    let made = Command::new("gpg")
        .env("GNUPGHOME", gnupg)
        .args(["--batch", "--passphrase", "", "--quick-gen-key", name, "default", "sign", "never"])
        .output()
        .unwrap();
    assert!(made.status.success(), "gpg --quick-gen-key: {}", String::from_utf8_lossy(&made.stderr));
    let listed = Command::new("gpg")
        .env("GNUPGHOME", gnupg)
        .args(["--batch", "--with-colons", "--list-secret-keys", name])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listed.stdout).into_owned();
    let fpr = text.lines().find_map(|l| l.strip_prefix("fpr:")).and_then(|l| l.split(':').nth(8)).map(str::to_string);
    fpr.unwrap_or_else(|| panic!("no fingerprint for {name}: {text}"))
}

fn verify_ok(dir: &Path, gnupg: &Path, garage: &Garage, url: &str) {
    let out = pipeline_s3(dir, gnupg, garage, &["repo", "verify", url], &[]);
    assert!(out.status.success(), "repo verify: {}", stderr(&out));
}

/// Garage answers 200 to a PUT with `If-None-Match: *` on an existing key and overwrites it
/// (its documentation: conditional writes need consensus, which it does not have). The
/// publish protocol must not rely on them; this keeps the hazard in view should a later
/// Garage start honouring them.
#[test]
fn garage_ignores_conditional_writes() {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let garage = Garage::start(tmp.path(), BUCKET);
    let s3 = store(&garage, "s3://images/probe");
    assert!(s3.put_if_absent("object", b"first".to_vec()).unwrap());
    let second = s3.put_if_absent("object", b"second".to_vec()).unwrap();
    assert!(second, "Garage now refuses a second If-None-Match: * write; conditional writes could be used");
    assert_eq!(s3.get("object", 100).unwrap().as_deref(), Some(&b"second"[..]), "and the object was overwritten");
    assert!(!s3.honours_conditional_put().unwrap(), "the probe the tool uses finds the same");
}

/// Bad input and bad weather: no credentials, no endpoint, a bucket that does not exist, a
/// repository never initialised. Then a publish lands, `repo verify` passes, and virt-builder
/// lists and builds the entry from the website endpoint with no credentials, while a node
/// killed in the middle of a second publish does not stop it (quorum of two).
#[test]
fn publish_to_garage_read_by_virt_builder_and_a_node_killed_mid_publish() {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    let mut garage = Garage::start(&dir.join("garage"), BUCKET);
    let url = "s3://images/repo";
    let web = format!("{}/repo", garage.web_url(0));

    let no_creds = pipeline_s3(dir, &gnupg, &garage, &["repo", "list", url], &[("AWS_ACCESS_KEY_ID", "")]);
    assert_eq!(no_creds.status.code(), Some(2));
    assert!(stderr(&no_creds).contains("AWS_ACCESS_KEY_ID"), "names the variable to set");
    let no_endpoint =
        pipeline_s3(dir, &gnupg, &garage, &["repo", "list", url], &[("AWS_ENDPOINT_URL", ""), ("AWS_REGION", "")]);
    assert_eq!(no_endpoint.status.code(), Some(2));
    assert!(stderr(&no_endpoint).contains("AWS_ENDPOINT_URL"), "names the variable to set");
    let no_bucket = pipeline_s3(dir, &gnupg, &garage, &["repo", "init", "s3://no-such-bucket/repo"], &[]);
    assert_eq!(no_bucket.status.code(), Some(1));
    assert!(stderr(&no_bucket).contains("does not exist"), "{}", stderr(&no_bucket));

    let image = fake_images().debian.clone();
    let pipeline_file = publish_pipeline(dir, "publish.toml", &image, url, "fake-debian");
    let uninitialised = pipeline_s3(dir, &gnupg, &garage, &["run", pipeline_file.to_str().unwrap()], &[]);
    assert_eq!(uninitialised.status.code(), Some(2));
    assert!(stderr(&uninitialised).contains("repo init"), "says what to do");
    assert!(store(&garage, url).list("").unwrap().is_empty(), "nothing was written");

    let fpr = init_repo(dir, &gnupg, &garage, url, &web);
    let run = pipeline_s3(dir, &gnupg, &garage, &["run", pipeline_file.to_str().unwrap()], &[]);
    assert!(run.status.success(), "publish: {}", stderr(&run));
    verify_ok(dir, &gnupg, &garage, url);
    let list = pipeline_s3(dir, &gnupg, &garage, &["repo", "list", url], &[]);
    assert!(stdout(&list).contains("fake-debian") && stdout(&list).contains("r1"), "{}", stdout(&list));
    // The SBOMs are objects beside the image, named after it, and `repo verify` checks them
    // against the signed record: an altered one is named.
    let objects: Vec<String> = store(&garage, url).list("").unwrap().into_iter().map(|o| o.name).collect();
    let stem = objects.iter().find_map(|o| o.strip_suffix(".xz")).unwrap().to_string();
    let cdx = format!("{stem}.cdx.json");
    assert!(objects.contains(&format!("{stem}.spdx.json")), "{objects:?}");
    let original = store(&garage, url).get(&cdx, 1 << 20).unwrap().expect("the CycloneDX SBOM is there");
    store(&garage, url).put(&cdx, [&original[..], b" "].concat()).unwrap();
    let verify = pipeline_s3(dir, &gnupg, &garage, &["repo", "verify", url], &[]);
    assert!(!verify.status.success() && stderr(&verify).contains(&format!("{cdx}: sha512")), "{}", stderr(&verify));
    store(&garage, url).put(&cdx, original).unwrap();
    verify_ok(dir, &gnupg, &garage, url);

    // Bad input, each exit 2 with nothing changed in the bucket: another machine (no pin)
    // reading or re-initialising without naming the key, and a prune that would keep nothing.
    let objects = store(&garage, url).list("").unwrap().len();
    let elsewhere = gnupg_home(&dir.join("elsewhere"));
    for args in [&["repo", "list", url][..], &["repo", "init", url], &["repo", "verify", url]] {
        let out = pipeline_s3(dir, &elsewhere, &garage, args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains("--sign-key"), "{args:?} says how to pin the key: {}", stderr(&out));
    }
    let prune = pipeline_s3(dir, &gnupg, &garage, &["repo", "prune", url, "--keep", "0"], &[]);
    assert_eq!(prune.status.code(), Some(2));
    assert!(stderr(&prune).contains("keep at least 1"), "{}", stderr(&prune));
    assert_eq!(store(&garage, url).list("").unwrap().len(), objects, "nothing was written or deleted");

    // The same through an AWS profile (config and credentials files) instead of variables.
    let (key_id, secret) = garage.credentials();
    let aws = dir.join("aws");
    std::fs::create_dir_all(&aws).unwrap();
    write_file(
        &aws,
        "config",
        &format!("[profile garage]\nregion = garage\nendpoint_url = {}\n", garage.s3_endpoint(0)),
    );
    write_file(
        &aws,
        "credentials",
        &format!("[garage]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"),
    );
    let (config, credentials) = (aws.join("config"), aws.join("credentials"));
    let from_profile = [
        ("AWS_ACCESS_KEY_ID", ""),
        ("AWS_SECRET_ACCESS_KEY", ""),
        ("AWS_ENDPOINT_URL", ""),
        ("AWS_REGION", ""),
        ("AWS_PROFILE", "garage"),
        ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
    ];
    let listed = pipeline_s3(dir, &gnupg, &garage, &["repo", "list", url], &from_profile);
    assert!(stdout(&listed).contains("fake-debian"), "the profile's endpoint and key reach the repository");

    // A record the repository's key did not sign stops a publish before it uploads anything.
    let other = dir.join("other-gnupg");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let gpg = |args: &[&str], input: &[u8]| {
        let mut child = Command::new("gpg")
            .args(["--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args)
            .env("GNUPGHOME", &other)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), input).unwrap();
        child.wait_with_output().unwrap().stdout
    };
    gpg(&["--quick-gen-key", "intruder", "default", "default", "never"], b"");
    let forged = gpg(&["--clearsign"], br#"{"action":"publish","entry":"fake-debian","id":"9","publisher":"x"}"#);
    let s3 = store(&garage, url);
    s3.put("records/fake-debian/9.asc", forged).unwrap();
    let objects = s3.list("").unwrap().len();
    let small = dir.join("small.raw");
    random_disk(&small, 1);
    let refused_file = publish_pipeline(dir, "refused.toml", &small, url, "fake-debian");
    let refused = pipeline_s3(dir, &gnupg, &garage, &["run", refused_file.to_str().unwrap()], &[]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("records/fake-debian/9.asc: signature check failed"), "names the record");
    assert!(stderr(&refused).contains("delete it"), "and what to do");
    assert_eq!(s3.list("").unwrap().len(), objects, "nothing was uploaded");
    s3.delete("records/fake-debian/9.asc").unwrap();

    // Clients: plain HTTP from the website endpoint, Range requests included.
    let http = reqwest::blocking::Client::new();
    let conf = http.get(format!("{web}/repo.conf")).send().unwrap().text().unwrap();
    assert!(conf.contains(&format!("uri={web}/index.asc")), "{conf}");
    let ranged = http.get(format!("{web}/index.asc")).header("Range", "bytes=0-9").send().unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.bytes().unwrap().len(), 10);
    let vb_home = dir.join("vb");
    let virt_builder = |args: &[&str]| {
        std::fs::create_dir_all(vb_home.join("empty")).unwrap();
        accel();
        let out = Command::new("virt-builder")
            .args(args)
            .env("VIRT_BUILDER_DIRS", vb_home.join("empty"))
            .env("XDG_CACHE_HOME", vb_home.join("cache"))
            .env("XDG_CONFIG_HOME", vb_home.join("config"))
            .env("GNUPGHOME", &gnupg)
            .output()
            .unwrap();
        eprintln!("$ virt-builder {}\n{}{}", args.join(" "), stdout(&out), stderr(&out));
        out
    };
    let index_url = format!("{web}/index.asc");
    let listed = virt_builder(&["--source", &index_url, "--fingerprint", &fpr, "--list"]);
    assert!(listed.status.success() && stdout(&listed).contains("fake-debian"), "virt-builder lists it");
    let out_img = dir.join("out.img");
    let source = ["--source", &index_url, "--fingerprint", &fpr, "--no-cache"];
    let built =
        virt_builder(&[&source[..], &["fake-debian", "-o", out_img.to_str().unwrap(), "--format", "raw"]].concat());
    assert!(built.status.success(), "virt-builder checks signature and sha512 and builds the entry");
    assert_eq!(std::fs::metadata(&out_img).unwrap().len(), qemu_virtual_size(&image));

    // A second publish of 128 MiB (eight parts; xz preset 0 keeps the compression
    // short) with node 2 killed as it uploads.
    let big = dir.join("big.raw");
    random_disk(&big, 128);
    let second = publish_pipeline(dir, "second.toml", &big, url, "fake-debian");
    let images_before = store(&garage, url).list("").unwrap().iter().filter(|o| o.name.ends_with(".xz")).count();
    let mut child = command_s3(dir, &gnupg, &garage, &["run", second.to_str().unwrap()], &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let mut said = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        said.push(line.clone());
        if line.contains("uploading") {
            break;
        }
    }
    let images_now = store(&garage, url).list("").unwrap().iter().filter(|o| o.name.ends_with(".xz")).count();
    assert_eq!(images_now, images_before, "the node is killed before the upload completes");
    garage.kill(2);
    said.extend(lines.map_while(Result::ok));
    let status = child.wait().unwrap();
    eprintln!("second publish:\n{}", said.join("\n"));
    assert!(said.iter().any(|l| l.contains("uploading")), "the upload was seen starting");
    assert!(status.success(), "the publish completes on a quorum of two");
    verify_ok(dir, &gnupg, &garage, url);
    let list = pipeline_s3(dir, &gnupg, &garage, &["repo", "list", url], &[]);
    assert!(stdout(&list).contains("r2"), "the second publish is revision 2: {}", stdout(&list));
    garage.restart(2);
    verify_ok(dir, &gnupg, &garage, url);

    // A pipeline starts from the entry (`from = { repo }`): its signed index read through
    // S3, the image downloaded and checked, imported as the first layer (and published into
    // a local directory, a stage that needs no appliance for a disk with no partitions).
    let from_repo = write_file(
        dir,
        "from-repo.toml",
        &format!(
            "version = 1\nfrom = {{ repo = \"{url}\", name = \"fake-debian\" }}\n[pipeline]\nname = \"from-repo\"\n\
             [[stages]]\n[stages.publish]\nrepo = \"local-copy\"\nname = \"copy\"\nxz_level = 0\n"
        ),
    );
    let run = pipeline_s3(dir, &gnupg, &garage, &["run", from_repo.to_str().unwrap()], &[]);
    assert!(run.status.success(), "from = {{ repo = s3://... }}: {}", stderr(&run));
    let layer = stdout(&run).trim().to_string();
    let same =
        Command::new("qemu-img").args(["compare", "-q", "-f", "raw", "-F", "qcow2"]).arg(&big).arg(&layer).status();
    assert!(same.unwrap().success(), "the layer holds the published disk");
}

fn qemu_virtual_size(image: &Path) -> u64 {
    let out = Command::new("qemu-img").args(["info", "--output=json"]).arg(image).output().unwrap();
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    info["virtual-size"].as_u64().unwrap()
}

/// Six publishers in separate processes, four of them on two names and two on two others,
/// ten times: every publish lands, each name's revisions are 1..n with no number given
/// twice, and the index is signed and names the newest image of every name. Then a record
/// deleted from the bucket: the next publish refuses to sign, and `repo verify` says why.
#[test]
fn racing_publishers_all_land_with_consistent_revisions() {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    let garage = Garage::start(&dir.join("garage"), BUCKET);
    let url = "s3://images/race";
    init_repo(dir, &gnupg, &garage, url, &format!("{}/race", garage.web_url(0)));
    let names = ["alpha", "alpha", "beta", "beta", "gamma", "delta"];
    let mut revisions: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    for round in 1..=10 {
        let children: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let work = dir.join(format!("work-{round}-{i}"));
                std::fs::create_dir_all(&work).unwrap();
                let disk = work.join("disk.raw");
                random_disk(&disk, 1);
                let file = publish_pipeline(&work, "p.toml", &disk, url, name);
                let child = command_s3(&work, &gnupg, &garage, &["run", file.to_str().unwrap()], &[])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                (*name, child)
            })
            .collect();
        for (name, child) in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "round {round}, {name}: {}", stderr(&out));
            let line = stdout(&out) + &stderr(&out);
            let revision: u64 = line
                .split(&format!("published {name} revision "))
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|r| r.parse().ok())
                .unwrap_or_else(|| panic!("round {round}, {name}: no revision reported in {line}"));
            revisions.entry(name).or_default().push(revision);
        }
        verify_ok(dir, &gnupg, &garage, url);
        let list = stdout(&pipeline_s3(dir, &gnupg, &garage, &["repo", "list", url], &[]));
        for (name, per_round) in [("alpha", 2), ("beta", 2), ("gamma", 1), ("delta", 1)] {
            let want = format!("r{}", per_round * round);
            let line = list.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} missing: {list}"));
            assert!(line.split_whitespace().any(|w| w == want), "round {round}: {name} is {want}: {line}");
        }
    }
    for (name, mut got) in revisions {
        got.sort();
        let n = got.len() as u64;
        assert_eq!(got, (1..=n).collect::<Vec<_>>(), "{name}: every revision given once");
    }

    // A rollback by deletion: whoever can delete objects removes alpha's newest record. The
    // next publish (of another entry) must not sign an index naming alpha's older image.
    let bucket = store(&garage, url);
    let newest = bucket.list("records/alpha/").unwrap().into_iter().map(|l| l.name).max().unwrap();
    bucket.delete(&newest).unwrap();
    let work = dir.join("after-rollback");
    std::fs::create_dir_all(&work).unwrap();
    random_disk(&work.join("disk.raw"), 1);
    let file = publish_pipeline(&work, "p.toml", &work.join("disk.raw"), url, "beta");
    let refused = pipeline_s3(&work, &gnupg, &garage, &["run", file.to_str().unwrap()], &[]);
    assert_eq!(refused.status.code(), Some(2), "refused as bad input: {}", stderr(&refused));
    assert!(
        stderr(&refused).contains("`alpha` is at revision 20 in the signed index but at 19 in its records"),
        "the message names the entry and both revisions: {}",
        stderr(&refused)
    );
    let list = stdout(&pipeline_s3(dir, &gnupg, &garage, &["repo", "list", url], &[]));
    let alpha = list.lines().find(|l| l.starts_with("alpha")).unwrap_or_else(|| panic!("alpha missing: {list}"));
    assert!(alpha.split_whitespace().any(|w| w == "r20"), "the signed index still names alpha's newest: {alpha}");
    assert!(list.lines().any(|l| l.starts_with("beta") && l.split_whitespace().any(|w| w == "r20")), "{list}");
    let verify = pipeline_s3(dir, &gnupg, &garage, &["repo", "verify", url], &[]);
    assert!(!verify.status.success(), "repo verify reports the rollback");
    assert!(
        stdout(&verify).contains("`alpha` is at revision 20") || stderr(&verify).contains("`alpha` is at revision 20")
    );
}

/// A second work directory builds a pipeline with every stage fetched from the remote cache
/// (no stage runs); a damaged remote layer is detected by its digest, built again and
/// replaced.
#[test]
fn layers_are_shared_through_the_remote_cache_and_a_damaged_one_is_rebuilt() {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    let garage = Garage::start(&dir.join("garage"), BUCKET);
    let cache = "s3://images/cache";
    let file = write_file(
        dir,
        "layers.toml",
        &format!(
            "version = 1\nfrom = {{ image = \"{}\" }}\n[pipeline]\nname = \"shared\"\n[[stages]]\n\
             [stages.customize]\nsteps = [{{ write = {{ path = \"/etc/motd\", content = \"built once\" }} }}]\n",
            fake_images().debian.display()
        ),
    );
    let file = file.to_str().unwrap();
    let builder = builder_key(&gnupg, "builder");
    let run = |work: &str| {
        let args = ["--work-dir", work, "--cache-remote", cache, "--cache-sign-key", &builder, "run", file];
        let out = pipeline_s3(dir, &gnupg, &garage, &args, &[]);
        assert!(out.status.success(), "{work}: {}", stderr(&out));
        stdout(&out) + &stderr(&out)
    };
    for (bad, says) in [("DEADBEEF", "is a key ID"), ("0123456789ABCDEF0123456789ABCDEF01234567", "no secret key")] {
        let out =
            pipeline_s3(dir, &gnupg, &garage, &["--cache-remote", cache, "--cache-sign-key", bad, "run", file], &[]);
        assert_eq!(out.status.code(), Some(2), "a signing key that cannot sign is bad input: {}", stderr(&out));
        assert!(stderr(&out).contains(says) && stderr(&out).contains("--cache-sign-key"), "{}", stderr(&out));
        assert!(!dir.join(".pipeline").exists(), "nothing written");
    }
    let first = run("builder-a");
    assert_eq!(first.matches(": running").count(), 2, "{first}");
    let second = run("builder-b");
    assert_eq!(second.matches("fetched from s3://images/cache").count(), 2, "{second}");
    assert!(!second.contains(": running"), "no stage runs: {second}");
    let layer = |work: &str| {
        let layers = std::fs::read_dir(dir.join(work).join("layers")).unwrap();
        let mut keys: Vec<String> = layers
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".qcow2").map(str::to_string))
            .filter(|k| !k.starts_with('.'))
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(layer("builder-a"), layer("builder-b"), "the same layers");
    let path = |work: &str, key: &str| dir.join(work).join("layers").join(format!("{key}.qcow2"));
    for key in layer("builder-a") {
        let (a, b) = (path("builder-a", &key), path("builder-b", &key));
        let same =
            Command::new("qemu-img").args(["compare", "-q", "-f", "qcow2", "-F", "qcow2"]).arg(&a).arg(&b).status();
        assert!(same.unwrap().success(), "{key}: the same disk content on both builders");
        let backing = Command::new("qemu-img").args(["info", "-U", "--output=json"]).arg(&b).output().unwrap();
        let backing: serde_json::Value = serde_json::from_slice(&backing.stdout).unwrap();
        if let Some(file) = backing["backing-filename"].as_str() {
            assert!(file.starts_with(dir.join("builder-b").to_str().unwrap()), "{key}: backed by builder-b's own copy");
        }
    }

    // Damage the customize layer (the one with a parent) in the bucket.
    std::env::set_var("GNUPGHOME", &gnupg);
    let s3 = store(&garage, cache);
    let signed_record = |name: &str| -> serde_json::Value {
        let signed = s3.get(name, 1 << 20).unwrap().unwrap();
        serde_json::from_slice(&virt_pipeline::base::sign::verify_pinned(&signed, &builder, None).unwrap()).unwrap()
    };
    let records: Vec<serde_json::Value> = s3
        .list("layers/")
        .unwrap()
        .iter()
        .filter(|o| o.name.ends_with(&format!(".{builder}.asc")))
        .map(|o| signed_record(&o.name))
        .collect();
    assert_eq!(records.len(), 2, "a record per layer, filed under the builder's key");
    let top = records.iter().find(|r| !r["meta"]["parent"].is_null()).expect("a layer with a parent").clone();
    let key = top["meta"]["key"].as_str().unwrap().to_string();
    let record_name = format!("layers/{key}.{builder}.asc");
    let image = top["image"].as_str().unwrap().to_string();
    let mut real = Vec::new();
    s3.download(&image, &mut real, &virt_pipeline::base::ui::Ui::new(), "test", 1 << 30).unwrap();
    let mut bytes = real.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    s3.put(&image, bytes).unwrap();
    let third = run("builder-c");
    assert_eq!(third.matches("fetched from s3://images/cache").count(), 1, "the base is fetched: {third}");
    assert!(third.contains("damaged or truncated"), "the damage is named: {third}");
    assert_eq!(third.matches(": running").count(), 1, "the damaged layer is built: {third}");
    let fourth = run("builder-d");
    assert_eq!(fourth.matches("fetched from s3://images/cache").count(), 2, "replaced in the bucket: {fourth}");

    // Forged layers whose record and digest agree, with other content (a byte of the real
    // layer changed): under an unsigned record; then signed by a key not trusted, filed both
    // under the trusted key's name and under its own. None is used; the layer is built.
    let forged = {
        let mut b = real.clone();
        b[mid] ^= 0x55;
        b
    };
    let mut forged_record = top.clone();
    forged_record["image"] = format!("layers/{key}-forged.qcow2").into();
    forged_record["size"] = forged.len().into();
    forged_record["sha256"] = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&forged)).into();
    s3.put(&format!("layers/{key}-forged.qcow2"), forged).unwrap();
    let forged_json = serde_json::to_vec_pretty(&forged_record).unwrap();
    let stranger = builder_key(&gnupg, "stranger");
    let by_stranger = virt_pipeline::base::sign::clearsign(&stranger, &forged_json).unwrap();
    let filed_under_stranger = format!("layers/{key}.{stranger}.asc");
    let cases = [
        vec![(record_name.clone(), forged_json.clone())],
        vec![(record_name.clone(), by_stranger.clone()), (filed_under_stranger, by_stranger.clone())],
    ];
    for (n, objects) in cases.into_iter().enumerate() {
        for (name, body) in objects {
            s3.put(&name, body).unwrap();
        }
        let out = run(&format!("forged-{n}"));
        assert_eq!(out.matches("fetched from s3://images/cache").count(), 1, "only the base is fetched: {out}");
        assert_eq!(out.matches(": running").count(), 1, "the forged layer is built instead: {out}");
        assert!(out.contains("not signed by the trusted key it is filed under"), "and says why: {out}");
    }
    // A builder with no signing key that trusts only the stranger: it uploads nothing and
    // takes none of the builder's layers.
    let trusting = pipeline_s3(
        dir,
        &gnupg,
        &garage,
        &["--work-dir", "trusting", "--cache-remote", cache, "--cache-trust", &stranger, "run", file],
        &[],
    );
    let trusting = stdout(&trusting) + &stderr(&trusting);
    assert!(trusting.contains("layers built here are not uploaded"), "no signing key, no upload: {trusting}");
    assert_eq!(trusting.matches(": running").count(), 2, "the builder's layers are not trusted by it: {trusting}");

    // A forged layer signed by the trusted key itself (an insider), backed by a host file:
    // refused all the same.
    let host_backed = dir.join("host-backed.qcow2");
    let created = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname"])
        .arg(&host_backed)
        .status()
        .unwrap();
    assert!(created.success());
    let bytes = std::fs::read(&host_backed).unwrap();
    let mut record = top.clone();
    record["image"] = format!("layers/{key}-host.qcow2").into();
    record["size"] = bytes.len().into();
    record["sha256"] = virt_pipeline::base::digest::file_hex::<sha2::Sha256>(&host_backed).unwrap().into();
    s3.put(&format!("layers/{key}-host.qcow2"), bytes).unwrap();
    let signed = virt_pipeline::base::sign::clearsign(&builder, &serde_json::to_vec(&record).unwrap()).unwrap();
    s3.put(&record_name, signed).unwrap();
    let last = run("builder-e");
    assert!(last.contains("not a layer of this cache"), "the foreign backing file is named: {last}");
    assert_eq!(last.matches(": running").count(), 1, "and the layer built instead: {last}");
}

/// Two builders split a base and the pipeline standing on it (`--shard 1/2`, `--shard 2/2`,
/// started together): the child's builder waits for the base's layer in the remote cache,
/// fetches it instead of building it again, and builds only the child. Alone, with no base
/// built anywhere, it gives up after `--base-timeout` and says why.
#[test]
fn sharded_rebuilds_wait_for_a_base_built_elsewhere() {
    use virt_pipeline::rebuild::Shard;
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    let garage = Garage::start(&dir.join("garage"), BUCKET);
    // Names that land in different shards of two.
    let pick =
        |prefix: &str, shard: u64| (0..).map(|i| format!("{prefix}-{i}")).find(|n| Shard::of(n, 2) == shard).unwrap();
    let (base, child) = (pick("base", 1), pick("child", 2));
    let pipelines = dir.join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    let customize = |text: &str| {
        format!("[[stages]]\n[stages.customize]\nsteps = [{{ write = {{ path = \"/etc/motd\", content = \"{text}\" }} }}]\n")
    };
    write_file(
        &pipelines,
        "base.toml",
        &format!(
            "version = 1\nfrom = {{ image = \"{}\" }}\n[pipeline]\nname = \"{base}\"\n{}",
            fake_images().debian.display(),
            customize("base")
        ),
    );
    write_file(
        &pipelines,
        "child.toml",
        &format!(
            "version = 1\nfrom = {{ pipeline = \"base.toml\" }}\n[pipeline]\nname = \"{child}\"\n{}",
            customize("child")
        ),
    );
    let builder = builder_key(&gnupg, "builder");
    let rebuild = |work: &str, cache: &str, extra: &[&str]| {
        let mut args = vec!["--work-dir", work, "--cache-remote", cache, "--cache-sign-key", &builder];
        args.extend_from_slice(&["rebuild", "pipelines"]);
        args.extend_from_slice(extra);
        command_s3(dir, &gnupg, &garage, &args, &[])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let no_cache = pipeline_s3(dir, &gnupg, &garage, &["rebuild", "pipelines", "--shard", "1/2"], &[]);
    assert_eq!(no_cache.status.code(), Some(2), "--shard without a remote cache is bad input");
    assert!(stderr(&no_cache).contains("--cache-remote"), "and says what is missing");
    let cache = "s3://images/shards";
    let first = rebuild("builder-1", cache, &["--shard", "1/2"]);
    let second = rebuild("builder-2", cache, &["--shard", "2/2"]);
    let said = |child: std::process::Child| {
        let out = child.wait_with_output().unwrap();
        let text = stdout(&out) + &stderr(&out);
        eprintln!("{text}");
        (out.status.success(), text)
    };
    let (ok1, text1) = said(first);
    let (ok2, text2) = said(second);
    assert!(ok1 && ok2, "both builders succeed");
    assert_eq!(text1.matches(": running").count(), 2, "builder 1 builds the base's two layers: {text1}");
    assert!(!text1.contains(&format!("== {child}")), "and not the child");
    assert!(text2.contains(&format!("waiting for {base}")), "builder 2 waits for the base: {text2}");
    assert_eq!(text2.matches("fetched from s3://images/shards").count(), 2, "fetches the base's layers: {text2}");
    assert_eq!(text2.matches(": running").count(), 1, "and builds only the child's layer: {text2}");

    let alone = rebuild("builder-3", "s3://images/empty", &["--shard", "2/2", "--base-timeout", "2s"]);
    let out = alone.wait_with_output().unwrap();
    let text = stdout(&out) + &stderr(&out);
    eprintln!("{text}");
    assert_eq!(out.status.code(), Some(1), "the child fails");
    assert!(text.contains(&format!("base {base} (built by shard 1)")) && text.contains("not built after 2s"), "{text}");
    assert!(!text.contains(": running"), "nothing is built twice");
}
