//! Publish into a signed repository, serve it, and let the real virt-builder judge it:
//! `--list`, a download with signature and sha512 checks, virt-index-validate; tampering
//! makes both `pipeline repo verify` and virt-builder refuse.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use virt_pipeline::repo::repository::NewImage;

/// virt-builder isolated from the system's repositories (unreachable here) and caches.
fn virt_builder(home: &Path, gnupg: &Path, args: &[&str]) -> std::process::Output {
    let empty = home.join("vb-empty");
    std::fs::create_dir_all(&empty).unwrap();
    accel();
    let out = Command::new("virt-builder")
        .args(args)
        .env("VIRT_BUILDER_DIRS", &empty)
        .env("XDG_CACHE_HOME", home.join("vb-cache"))
        .env("XDG_CONFIG_HOME", home.join("vb-config"))
        .env("GNUPGHOME", gnupg)
        .output()
        .unwrap();
    eprintln!(
        "$ virt-builder {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The SBOMs of fake-debian revision 1: SPDX 2.3 accepted by the SPDX project's validator,
/// CycloneDX 1.6 by CycloneDX's strict schema validation; both describe the image by the
/// index's sha512 and list its packages with version, purl, source package and the licences
/// of its DEP-5 copyright file. The signed manifest names their digests: `repo verify`
/// names an altered SBOM.
fn sboms_pass_their_validators_and_name_the_packages(repo: &Path, gnupg: &Path) {
    let python = sbom_validators().join("python");
    let (spdx_file, cdx_file) = (repo.join("fake-debian-r1.spdx.json"), repo.join("fake-debian-r1.cdx.json"));
    let out = Command::new(sbom_validators().join("pyspdxtools")).arg("-i").arg(&spdx_file).output().unwrap();
    assert!(
        out.status.success(),
        "pyspdxtools: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let script = "import sys\nfrom cyclonedx.schema import SchemaVersion\nfrom cyclonedx.validation.json import JsonStrictValidator\n\
                  e = JsonStrictValidator(SchemaVersion.V1_6).validate_str(open(sys.argv[1]).read())\n\
                  sys.exit(str(e) if e else 0)\n";
    let out = Command::new(&python).args(["-c", script]).arg(&cdx_file).output().unwrap();
    assert!(out.status.success(), "CycloneDX validation: {}", String::from_utf8_lossy(&out.stderr));

    let index = std::fs::read_to_string(repo.join("index")).unwrap();
    let checksum = index.lines().find_map(|l| l.strip_prefix("checksum[sha512]=")).unwrap().to_string();
    let spdx: serde_json::Value = serde_json::from_slice(&std::fs::read(&spdx_file).unwrap()).unwrap();
    let packages = spdx["packages"].as_array().unwrap();
    assert_eq!(packages[0]["checksums"][0]["checksumValue"], checksum.as_str());
    assert_eq!(packages[0]["packageFileName"], "fake-debian-r1.xz");
    let libc = packages.iter().find(|p| p["name"] == "libc6").expect("libc6 is listed");
    assert_eq!(libc["versionInfo"], "2.36-9+deb12u7");
    assert_eq!(
        libc["externalRefs"][0]["referenceLocator"],
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u7?arch=amd64&distro=debian-12"
    );
    assert_eq!(libc["sourceInfo"], "built from the source package glibc");
    assert_eq!(
        libc["licenseDeclared"],
        "LGPL-2.1-or-later AND (GPL-2.0-or-later OR Artistic-1.0-Perl) AND LicenseRef-Unicode-DFS-2016"
    );
    let base = packages.iter().find(|p| p["name"] == "base-files").expect("base-files is listed");
    assert_eq!(base["licenseDeclared"], "NOASSERTION", "a free-form copyright file names no licence");
    let cdx: serde_json::Value = serde_json::from_slice(&std::fs::read(&cdx_file).unwrap()).unwrap();
    assert_eq!(cdx["metadata"]["component"]["hashes"][0]["content"], checksum.as_str());
    let names: Vec<&str> = cdx["components"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["base-files", "libc6"]);
    let libc = &cdx["components"][1];
    assert_eq!(libc["licenses"][0]["license"]["id"], "LGPL-2.1-or-later");
    assert_eq!(libc["licenses"][1]["license"]["name"], "GPL-2+ or Artistic");

    // An altered SBOM is named by `repo verify`; put back, the repository verifies again.
    let original = std::fs::read(&cdx_file).unwrap();
    std::fs::write(&cdx_file, [&original[..], b" "].concat()).unwrap();
    let verify = pipeline(repo.parent().unwrap(), gnupg, &["repo", "verify", repo.to_str().unwrap()]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(stderr(&verify).contains("fake-debian-r1.cdx.json: sha512"), "{}", stderr(&verify));
    std::fs::write(&cdx_file, &original).unwrap();
    let verify = pipeline(repo.parent().unwrap(), gnupg, &["repo", "verify", repo.to_str().unwrap()]);
    assert!(verify.status.success(), "{}", stderr(&verify));
}

/// A pipeline that imports `image` and publishes it into `repo` at xz preset `xz_level`.
fn publish_pipeline(dir: &Path, image: &Path, repo: &Path, xz_level: u32) -> PathBuf {
    write_file(
        dir,
        "publish.toml",
        &format!(
            r#"version = 1
from = {{ image = "{}" }}
[pipeline]
name = "fake-debian-publish"
[[stages]]
[stages.publish]
repo = "{}"
name = "fake-debian"
long_name = "Fake Debian 12"
osinfo = "debian12"
expand = "/dev/sda1"
xz_level = {xz_level}
notes = """Test image.
Second line of notes."""
"#,
            image.display(),
            repo.display()
        ),
    )
}

#[test]
fn published_repository_served_and_accepted_by_virt_builder() {
    let images = fake_images();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    let repo = dir.join("repo");
    let work = dir.join("work");
    let file = publish_pipeline(dir, &images.debian, &repo, 1);
    let run = |extra: &[&str]| {
        let mut args = vec!["--work-dir", work.to_str().unwrap(), "run", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        pipeline(dir, &gnupg, &args)
    };
    let out = run(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let fpr = std::fs::read_to_string(repo.join("signing-key.fpr")).unwrap().trim().to_string();
    assert!(repo.join("repo.asc").exists() && repo.join("repo.conf").exists());
    let conf = std::fs::read_to_string(repo.join("repo.conf")).unwrap();
    assert!(conf.contains("uri=file://") && conf.contains("gpgkey=file://"), "{conf}");

    // Nothing changed: the publish stage is reused and the revision stays.
    let plan = pipeline(dir, &gnupg, &["--work-dir", work.to_str().unwrap(), "plan", file.to_str().unwrap()]);
    assert!(stdout(&plan).lines().all(|l| l.contains("cached")), "{}", stdout(&plan));
    let verify = pipeline(dir, &gnupg, &["repo", "verify", repo.to_str().unwrap()]);
    assert!(verify.status.success(), "{}", stderr(&verify));
    let index = std::fs::read_to_string(repo.join("index")).unwrap();
    assert!(index.contains("revision=1") && index.contains("file=fake-debian-r1.xz"), "{index}");
    assert!(index.contains("notes=Test image.\n Second line of notes."), "{index}");

    // The xz file is made of 16 MiB blocks xz itself reads.
    let st = Command::new("xz").args(["-t"]).arg(repo.join("fake-debian-r1.xz")).status().unwrap();
    assert!(st.success());
    let validate = Command::new("virt-index-validate").arg(repo.join("index")).output().unwrap();
    assert!(validate.status.success(), "{}", String::from_utf8_lossy(&validate.stderr));
    sboms_pass_their_validators_and_name_the_packages(&repo, &gnupg);

    let (_server, url) = serve(&repo);
    let index_url = format!("{url}/index.asc");
    let http = reqwest::blocking::Client::new();
    let resp = http.get(&index_url).send().unwrap();
    assert_eq!(resp.status(), 200);
    let etag = resp.headers()["etag"].to_str().unwrap().to_string();
    assert!(resp.headers().contains_key("last-modified"));
    let len: usize = resp.headers()["content-length"].to_str().unwrap().parse().unwrap();
    assert_eq!(len, resp.bytes().unwrap().len());
    let ranged = http.get(&index_url).header("Range", "bytes=0-9").send().unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.bytes().unwrap().len(), 10);
    let cached = http.get(&index_url).header("If-None-Match", &etag).send().unwrap();
    assert_eq!(cached.status(), 304);
    assert_eq!(http.head(&index_url).send().unwrap().status(), 200);
    for hidden in ["/.lock", "/../repo/index", "/%2e%2e/work", "/nothing-here/"] {
        assert_eq!(http.get(format!("{url}{hidden}")).send().unwrap().status(), 404, "{hidden}");
    }
    // People get a page (tested in a browser in tests/debian_e2e.rs).
    let page = http.get(format!("{url}/")).send().unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let text = page.text().unwrap();
    assert!(text.contains("Fake Debian 12"));
    // Each revision links its SBOMs, which the server serves.
    assert!(
        text.contains(
            r#"<a href="/fake-debian-r1.cdx.json">CycloneDX</a> · <a href="/fake-debian-r1.spdx.json">SPDX</a>"#
        ),
        "{text}"
    );
    let spdx = http.get(format!("{url}/fake-debian-r1.spdx.json")).send().unwrap();
    assert_eq!(spdx.status(), 200);
    let spdx: serde_json::Value = serde_json::from_slice(&spdx.bytes().unwrap()).unwrap();
    assert_eq!(spdx["spdxVersion"], "SPDX-2.3");

    let vb_home = dir.join("vb");
    // Downloads the entry into `out` with virt-builder, checking signature and sha512, and
    // grows it with the entry's expand= partition (virt-builder runs virt-resize for --size).
    let vb_download = |out: &Path| {
        let out = out.to_str().unwrap();
        let args = [
            "--source",
            &index_url,
            "--fingerprint",
            &fpr,
            "--no-cache",
            "fake-debian",
            "-o",
            out,
            "--format",
            "raw",
            "--size",
            "512M",
        ];
        virt_builder(&vb_home, &gnupg, &args)
    };
    let list = virt_builder(&vb_home, &gnupg, &["--source", &index_url, "--fingerprint", &fpr, "--list"]);
    assert!(list.status.success());
    assert!(String::from_utf8_lossy(&list.stdout).contains("fake-debian"), "the entry is listed");
    // The sources file the repository carries, installed as a client would: no --source, no
    // fingerprint, an empty keyring; the key comes from the file its gpgkey= names.
    let repos_d = vb_home.join("vb-config/virt-builder/repos.d");
    std::fs::create_dir_all(&repos_d).unwrap();
    std::fs::copy(repo.join("repo.conf"), repos_d.join("repo.conf")).unwrap();
    let no_keys = dir.join("no-keys");
    std::fs::create_dir_all(&no_keys).unwrap();
    std::fs::set_permissions(&no_keys, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let listed = virt_builder(&vb_home, &no_keys, &["--list"]);
    assert!(listed.status.success(), "virt-builder accepts the repository's sources file");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("fake-debian"));
    std::fs::remove_file(repos_d.join("repo.conf")).unwrap();
    let out_img = dir.join("out.img");
    let build = vb_download(&out_img);
    assert!(build.status.success(), "virt-builder accepts signature, checksum and xz");
    assert_eq!(std::fs::metadata(&out_img).unwrap().len(), 512 << 20, "--size with the entry's expand=");

    // Tampered image: one byte changed.
    let image_file = repo.join("fake-debian-r1.xz");
    let original = std::fs::read(&image_file).unwrap();
    let mut bad = original.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&image_file, &bad).unwrap();
    let verify = pipeline(dir, &gnupg, &["repo", "verify", repo.to_str().unwrap()]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(stderr(&verify).contains("sha512"), "{}", stderr(&verify));
    let refused = vb_download(&dir.join("bad.img"));
    assert!(!refused.status.success(), "virt-builder must refuse a tampered image");
    std::fs::write(&image_file, &original).unwrap();

    // Tampered index: the signed text changed.
    let asc = std::fs::read_to_string(repo.join("index.asc")).unwrap();
    std::fs::write(repo.join("index.asc"), asc.replace("revision=1", "revision=7")).unwrap();
    let verify = pipeline(dir, &gnupg, &["repo", "verify", repo.to_str().unwrap()]);
    assert!(!verify.status.success() && stderr(&verify).contains("signature"), "{}", stderr(&verify));
    let refused = virt_builder(&vb_home, &gnupg, &["--source", &index_url, "--fingerprint", &fpr, "--list"]);
    assert!(!refused.status.success(), "virt-builder must refuse a tampered index");
    std::fs::write(repo.join("index.asc"), asc).unwrap();

    // Missing file.
    std::fs::rename(&image_file, dir.join("moved.xz")).unwrap();
    let verify = pipeline(dir, &gnupg, &["repo", "verify", repo.to_str().unwrap()]);
    assert!(!verify.status.success() && stderr(&verify).contains("fake-debian-r1.xz"), "{}", stderr(&verify));
    std::fs::rename(dir.join("moved.xz"), &image_file).unwrap();

    // Republishing bumps the revision and keeps the old file until pruned.
    let out = run(&["--no-cache"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let index = std::fs::read_to_string(repo.join("index")).unwrap();
    assert!(index.contains("revision=2"), "{index}");
    assert!(repo.join("fake-debian-r1.xz").exists());
    let prune = pipeline(dir, &gnupg, &["repo", "prune", repo.to_str().unwrap(), "--keep", "1"]);
    assert!(prune.status.success());
    assert!(!repo.join("fake-debian-r1.xz").exists() && repo.join("fake-debian-r2.xz").exists());
    let list = pipeline(dir, &gnupg, &["repo", "list", repo.to_str().unwrap()]);
    assert!(stdout(&list).contains("fake-debian") && stdout(&list).contains("r2"));
    let remove = pipeline(dir, &gnupg, &["repo", "remove", repo.to_str().unwrap(), "fake-debian"]);
    assert!(remove.status.success());
    assert!(!repo.join("fake-debian-r2.xz").exists());
    let verify = pipeline(dir, &gnupg, &["repo", "verify", repo.to_str().unwrap()]);
    assert!(verify.status.success(), "an empty signed index verifies");
}

#[test]
fn bad_publish_input_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    let img = dir.join("x.qcow2");
    Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&img).arg("16M").status().unwrap();
    let cases = [
        ("name = \"../evil\"", "stages[0].publish.name"),
        ("name = \"ok\"\nxz_level = 10", "stages[0].publish.xz_level: 10 is not an xz preset"),
    ];
    for (keys, message) in cases {
        let file = write_file(
            dir,
            "p.toml",
            &format!("version = 1\nfrom = {{ image = \"{}\" }}\n[pipeline]\nname = \"p\"\n[[stages]]\n[stages.publish]\nrepo = \"repo\"\n{keys}\n", img.display()),
        );
        let out = pipeline(dir, &gnupg, &["--work-dir", "work", "run", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{keys}");
        assert!(stderr(&out).contains(message), "{}", stderr(&out));
        assert!(!dir.join("repo").exists(), "no repository was created");
        assert!(!dir.join("work").exists(), "nothing was written to the work directory");
    }
}

#[test]
fn a_published_entry_is_a_verified_starting_point_and_concurrent_publishers_both_land() {
    let images = fake_images();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    let repo = dir.join("repo");
    let file = publish_pipeline(dir, &images.debian, &repo, 1);
    let out = pipeline(dir, &gnupg, &["--work-dir", "work", "run", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    // from = { repo, name }: signature and sha512 checked, xz decompressed, imported; the
    // image written out with --output is the published disk.
    let second = write_file(
        dir,
        "from-repo.toml",
        &format!(
            "version = 1\nfrom = {{ repo = \"{}\", name = \"fake-debian\" }}\n[pipeline]\nname = \"from-repo\"\n[[stages]]\n[stages.publish]\nrepo = \"{}\"\nname = \"copy\"\nxz_level = 1\n",
            repo.display(),
            dir.join("repo2").display()
        ),
    );
    let raw = dir.join("copy.raw");
    let out = pipeline(
        dir,
        &gnupg,
        &["--work-dir", "work", "run", second.to_str().unwrap(), "--output", raw.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let original = dir.join("original.raw");
    let st =
        Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(&images.debian).arg(&original).status().unwrap();
    assert!(st.success());
    assert!(std::fs::read(&raw).unwrap() == std::fs::read(&original).unwrap(), "the round trip changed the disk");

    // The entry grown to a bigger disk: its `expand=` partition and the ext4 in it fill the
    // new size (virt-builder --size), and the files are still there.
    let grown = write_file(
        dir,
        "grown.toml",
        &format!(
            "version = 1\n[pipeline]\nname = \"grown\"\n[[stages]]\n[stages.install]\nmethod = \"image\"\nrepo = \"{}\"\nname = \"fake-debian\"\ndisk_size = \"1G\"\n",
            repo.display()
        ),
    );
    let out = pipeline(dir, &gnupg, &["--work-dir", "work", "run", grown.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let layer = stdout(&out).trim().to_string();
    let g = open_readonly(&[Path::new(&layer)]);
    let partition = g.blockdev_getsize64("/dev/sda1").unwrap();
    assert!(partition > 1000 << 20, "the partition fills the 1 GiB disk: {partition}");
    mount_disk(&g, 0);
    let fs = g.filesystem_size("/").unwrap();
    // statvfs leaves out ext4's own metadata (inode tables): a few per cent.
    assert!(fs > 900 << 20, "the filesystem fills the partition: {fs} of {partition}");
    assert!(g.is_file("/etc/debian_version").unwrap());
    g.shutdown().unwrap();
    drop(g);

    // A tampered image in the source repository is refused before anything is imported.
    let xz = repo.join("fake-debian-r1.xz");
    let mut bytes = std::fs::read(&xz).unwrap();
    let n = bytes.len() / 3;
    bytes[n] ^= 1;
    std::fs::write(&xz, &bytes).unwrap();
    let out = pipeline(dir, &gnupg, &["--work-dir", "work2", "run", second.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not match the signed index"), "{}", stderr(&out));

    // Two publishers at once: the repository lock serialises them and both entries land.
    let a = dir.join("a.xz");
    let b = dir.join("b.xz");
    std::fs::write(&a, b"not really xz a").unwrap();
    std::fs::write(&b, b"not really xz b").unwrap();
    std::env::set_var("GNUPGHOME", &gnupg);
    let r = virt_pipeline::repo::Repo::open(&repo).unwrap();
    std::thread::scope(|s| {
        for (name, f) in [("alpha", &a), ("beta", &b)] {
            let r = &r;
            s.spawn(move || {
                let tmp = r.new_temp_image(name).unwrap();
                std::fs::copy(f, &tmp).unwrap();
                let sum = virt_pipeline::repo::sha512_file(&tmp).unwrap();
                let new = NewImage {
                    name,
                    fields: vec![("size".into(), "1".into())],
                    image: &tmp,
                    checksum: &sum,
                    manifest: None,
                    blocks: None,
                };
                r.publish(new, None, &virt_pipeline::base::ui::Ui::new()).unwrap();
            });
        }
    });
    let index = r.index().unwrap();
    assert!(index.get("alpha").is_some() && index.get("beta").is_some() && index.get("fake-debian").is_some());
}

/// `from = { pipeline = "base.toml" }`: the base pipeline runs first and its last layer is the
/// starting point; `plan` shows both, and a second run reuses everything.
#[test]
fn a_pipeline_starts_from_another() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(dir.join("blank.qcow2"))
        .arg("32M")
        .status()
        .unwrap();
    assert!(st.success());
    write_file(
        dir,
        "base.toml",
        "version = 1\nfrom = { image = \"blank.qcow2\" }\n[pipeline]\nname = \"base\"\n[[stages]]\n[stages.publish]\nrepo = \"repo\"\nname = \"base\"\nxz_level = 1\n",
    );
    let top = write_file(
        dir,
        "top.toml",
        "version = 1\nfrom = { pipeline = \"base.toml\" }\n[pipeline]\nname = \"top\"\n[[stages]]\n[stages.publish]\nrepo = \"repo\"\nname = \"top\"\nxz_level = 1\n",
    );
    let plan = stdout(&pipeline(dir, &gnupg, &["--work-dir", "work", "plan", top.to_str().unwrap()]));
    assert!(
        plan.contains("base: 1  install") && plan.contains("base: 2  publish") && plan.contains(" 1  publish"),
        "{plan}"
    );
    let out = pipeline(dir, &gnupg, &["--work-dir", "work", "run", top.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let index = std::fs::read_to_string(dir.join("repo/index")).unwrap();
    assert!(index.contains("[base]") && index.contains("[top]"), "{index}");
    let plan = stdout(&pipeline(dir, &gnupg, &["--work-dir", "work", "plan", top.to_str().unwrap()]));
    assert_eq!(plan.lines().filter(|l| l.contains("cached")).count(), 3, "{plan}");
}

/// SIGKILL at any moment of a republish: the previous signed index stays valid and every
/// file it names complete (`repo verify` passes after each kill); `repo prune` then removes
/// what the killed writers left, and the next publish lands.
#[test]
fn a_publisher_killed_at_any_moment_leaves_the_repository_valid() {
    let images = fake_images();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    let repo = dir.join("repo");
    // The default preset (9): the publish must last long enough to be killed at many points.
    let file = publish_pipeline(dir, &images.debian, &repo, 9);
    let file = file.to_str().unwrap();
    let first = pipeline(dir, &gnupg, &["--work-dir", "work", "run", file]);
    assert!(first.status.success(), "{}", stderr(&first));

    // A republish (a changed note makes it run again) with the block maps gone encodes every
    // block, as the first publish did: that is what is killed, so time one.
    let republish = |notes: &str| {
        for entry in std::fs::read_dir(&repo).unwrap() {
            let path = entry.unwrap().path();
            if path.to_string_lossy().ends_with(".blocks") {
                std::fs::remove_file(path).unwrap();
            }
        }
        let mut cmd = Command::new(bin());
        cmd.args(["--work-dir", "work", "run", file, "--set", &format!("stages[0].publish.notes={notes}")])
            .current_dir(dir)
            .env("GNUPGHOME", &gnupg)
            .env("XDG_CONFIG_HOME", dir.join("xdg-config"));
        cmd
    };
    let started = std::time::Instant::now();
    let timed = republish("timed").output().unwrap();
    assert!(timed.status.success(), "{}", stderr(&timed));
    let publish_time = started.elapsed();

    // Kill points spread over the first 70 % of a republish; each must find it still running.
    let verify = || pipeline(dir, &gnupg, &["repo", "verify", repo.to_str().unwrap()]);
    for step in 0..8u32 {
        let mut child =
            republish(&format!("attempt {step}")).stderr(Stdio::null()).stdout(Stdio::null()).spawn().unwrap();
        std::thread::sleep(publish_time * step / 10 + std::time::Duration::from_millis(50));
        let exited = child.try_wait().unwrap();
        assert!(
            exited.is_none(),
            "the publisher ended ({exited:?}) before its kill at step {step} of {publish_time:?}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        let out = verify();
        assert!(out.status.success(), "after a kill at step {step}: {}", stderr(&out));
    }
    let prune = pipeline(dir, &gnupg, &["repo", "prune", "--keep", "1", repo.to_str().unwrap()]);
    assert!(prune.status.success(), "{}", stderr(&prune));
    let leftovers: Vec<_> = std::fs::read_dir(&repo)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-") || n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "prune removes crashed writes: {leftovers:?}");
    // The next publish lands; as a qcow2 entry this time, which decompresses to a
    // standalone qcow2 holding the same disk.
    let last = pipeline(
        dir,
        &gnupg,
        &[
            "--work-dir",
            "work",
            "run",
            file,
            "--set",
            "stages[0].publish.notes=final",
            "--set",
            "stages[0].publish.format=qcow2",
        ],
    );
    assert!(last.status.success(), "{}", stderr(&last));
    assert!(verify().status.success());
    let index = std::fs::read_to_string(repo.join("index")).unwrap();
    assert!(index.contains("notes=final") && index.contains("format=qcow2"), "{index}");
    let xz_file = index.lines().find_map(|l| l.strip_prefix("file=")).unwrap();
    let unpacked = dir.join("entry.qcow2");
    let xz = Command::new("xz").args(["-dc"]).arg(repo.join(xz_file)).output().unwrap();
    assert!(xz.status.success());
    std::fs::write(&unpacked, &xz.stdout).unwrap();
    let info = Command::new("qemu-img").args(["info", "--output=json"]).arg(&unpacked).output().unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert!(info["backing-filename"].is_null(), "a standalone image: {info}");
    let same = Command::new("qemu-img").args(["compare", "-q"]).arg(&images.debian).arg(&unpacked).status().unwrap();
    assert!(same.success(), "the qcow2 entry holds the published disk");
}

/// Republishing costs what changed: the same layer again reuses every block and writes the
/// same bytes; after a customize step that changes one file only the changed blocks are
/// encoded, and the file equals a full encode byte for byte; with every block map damaged
/// the publish encodes everything, with a warning, and still writes the same file.
#[test]
fn a_republish_reuses_unchanged_blocks_and_writes_what_a_full_encode_writes() {
    use virt_pipeline::image::{chain, xz};
    let images = fake_images();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gnupg = gnupg_home(dir);
    let repo = dir.join("repo");
    let head =
        format!("version = 1\nfrom = {{ image = \"{}\" }}\n[pipeline]\nname = \"reuse\"\n", images.debian.display());
    let publish = "[[stages]]\n[stages.publish]\nrepo = \"repo\"\nname = \"fake\"\n";
    let plain = write_file(dir, "plain.toml", &format!("{head}{publish}"));
    let changed = write_file(
        dir,
        "changed.toml",
        &format!("{head}[[stages]]\n[stages.customize]\nsteps = [{{ write = {{ path = \"/etc/motd\", content = \"changed\\n\" }} }}]\n{publish}"),
    );
    let run = |file: &Path, extra: &[&str]| {
        let mut args = vec!["--work-dir", "work", "run", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = pipeline(dir, &gnupg, &args);
        assert!(out.status.success(), "{}", stderr(&out));
        (stdout(&out).trim().to_string(), stderr(&out))
    };
    let counts = |log: &str| -> (u64, u64, u64, u64) {
        let line = log.lines().find(|l| l.starts_with("publish: ")).unwrap_or_else(|| panic!("{log}"));
        let n: Vec<u64> = line.split_whitespace().filter_map(|w| w.trim_end_matches(',').parse().ok()).collect();
        (n[0], n[1], n[2], n[3])
    };
    let image = |rev: u32| std::fs::read(repo.join(format!("fake-r{rev}.xz"))).unwrap();

    let (_, log) = run(&plain, &[]);
    let (total, reused, encoded, zero) = counts(&log);
    assert_eq!((total, reused), (16, 0), "{log}");
    assert!(encoded > 0 && encoded + zero == total, "{log}");
    let (_, log) = run(&plain, &["--no-cache"]);
    assert_eq!(counts(&log), (16, encoded, 0, zero), "every data block reused: {log}");
    assert!(image(2) == image(1), "the same layer republished is the same file");

    let (layer, log) = run(&changed, &[]);
    let (_, reused, changed_blocks, _) = counts(&log);
    assert!(changed_blocks >= 1 && changed_blocks < encoded && reused >= 1, "{log}");
    let full_encode = |layer: &str| {
        let mut full = Vec::new();
        let mut disk = chain::Qcow2Chain::open(Path::new(layer)).unwrap();
        let opts = xz::XzOptions::default();
        xz::compress(&mut disk, &mut full, &opts, &xz::EncodeAll, &indicatif::ProgressBar::hidden()).unwrap();
        full
    };
    assert!(image(3) == full_encode(&layer), "a republish with reuse equals a full encode byte for byte");
    let raw = dir.join("layer.raw");
    let st = Command::new("qemu-img").args(["convert", "-q", "-O", "raw", &layer]).arg(&raw).status().unwrap();
    assert!(st.success());
    let mut decoded = Vec::new();
    std::io::Read::read_to_end(&mut xz2::read::XzDecoder::new(&image(3)[..]), &mut decoded).unwrap();
    assert!(decoded == std::fs::read(&raw).unwrap(), "it decompresses to the new disk exactly");
    let verify = pipeline(dir, &gnupg, &["repo", "verify", "repo"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
    let validate = Command::new("virt-index-validate").arg(repo.join("index")).output().unwrap();
    assert!(validate.status.success(), "{}", String::from_utf8_lossy(&validate.stderr));
    // virt-builder checks the signature and sha512 and decompresses it.
    let fpr = std::fs::read_to_string(repo.join("signing-key.fpr")).unwrap().trim().to_string();
    let source = format!("file://{}/index.asc", repo.display());
    let out = dir.join("from-virt-builder.img");
    let args = ["--source", &source, "--fingerprint", &fpr, "--no-cache", "fake", "-o", out.to_str().unwrap()];
    let built = virt_builder(&dir.join("vb"), &gnupg, &[&args[..], &["--format", "raw"]].concat());
    assert!(built.status.success(), "virt-builder accepts the republished entry");

    for map in ["fake-r1.xz.blocks", "fake-r2.xz.blocks", "fake-r3.xz.blocks"] {
        std::fs::write(repo.join(map), b"\x00 not a block map").unwrap();
    }
    // (The customize step runs again: the layer differs from the last one in timestamps.)
    let (layer, log) = run(&changed, &["--no-cache"]);
    assert!(log.contains("unreadable block map"), "{log}");
    assert_eq!(counts(&log).1, 0, "nothing reused from damaged maps: {log}");
    assert!(image(4) == full_encode(&layer), "encoding everything writes what a full encode writes");
    let prune = pipeline(dir, &gnupg, &["repo", "prune", "repo", "--keep", "1"]);
    assert!(prune.status.success(), "{}", stderr(&prune));
    let left: Vec<String> =
        std::fs::read_dir(&repo).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.contains(&"fake-r4.xz.blocks".to_string()), "the kept revision keeps its map: {left:?}");
    assert!(!left.iter().any(|f| f.starts_with("fake-r1")), "a pruned revision takes its map along: {left:?}");
}
