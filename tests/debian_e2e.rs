//! The main job end to end: `pipeline run pipelines/debian-bookworm.toml` debootstraps
//! Debian 12, syspreps it and publishes it into repo-index/; the result boots under qemu to a
//! login prompt with sshd answering with a host key made on first boot (not the one the
//! install layer had), and a second run reuses every layer. A pipeline built on it applies
//! every customize action that needs a real guest (packages, run-command, run, timezone,
//! ssh-inject). The work directory is a shared fixture, so the debootstrap runs once per run.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;
use virt_pipeline::vm::qemu::{Vm, VmConfig};

/// The published revision's SBOMs list exactly the packages the image's own dpkg database
/// lists (the host's `dpkg-query` reading the image's status file; `g` has the published
/// layer mounted): name and version in SPDX, and the architecture too in CycloneDX.
fn sboms_list_what_dpkg_lists(g: &virt_pipeline::guest::Guest, base: &Path) {
    let admin = tempfile::tempdir().unwrap();
    g.download("/var/lib/dpkg/status", &admin.path().join("status")).unwrap();
    std::fs::create_dir_all(admin.path().join("updates")).unwrap();
    let out = std::process::Command::new("dpkg-query")
        .arg(format!("--admindir={}", admin.path().display()))
        .args(["-W", "-f", "${db:Status-Abbrev}|${Package}|${Version}|${Architecture}\n"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut dpkg: Vec<(String, String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("ii |"))
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (f[0].to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect();
    dpkg.sort();
    assert!(dpkg.len() > 100, "dpkg-query lists the installed system: {}", dpkg.len());

    let index = std::fs::read_to_string(base.join("repo-index/index")).unwrap();
    let image = index.lines().find_map(|l| l.strip_prefix("file=")).unwrap();
    let stem = image.strip_suffix(".xz").unwrap();
    let read = |suffix: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(base.join("repo-index").join(format!("{stem}{suffix}"))).unwrap())
            .unwrap()
    };
    let spdx = read(".spdx.json");
    let mut listed: Vec<(String, String)> = spdx["packages"].as_array().unwrap()[1..]
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p["versionInfo"].as_str().unwrap().to_string()))
        .collect();
    listed.sort();
    let names_versions: Vec<(String, String)> = dpkg.iter().map(|(n, v, _)| (n.clone(), v.clone())).collect();
    assert_eq!(listed, names_versions, "the SPDX document lists what dpkg-query lists");
    let cdx = read(".cdx.json");
    let mut components: Vec<(String, String, String)> = cdx["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let arch =
                c["properties"].as_array().unwrap().iter().find(|p| p["name"] == "virt-pipeline:package:arch").unwrap();
            (
                c["name"].as_str().unwrap().into(),
                c["version"].as_str().unwrap().into(),
                arch["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    components.sort();
    assert_eq!(components, dpkg, "the CycloneDX document lists what dpkg-query lists");
    // Debian's own packages name their sources and licences: some of each are there.
    let packages = spdx["packages"].as_array().unwrap();
    assert!(packages.iter().any(|p| p["name"] == "libc6" && p["sourceInfo"] == "built from the source package glibc"));
    let licensed = packages.iter().filter(|p| p["licenseDeclared"] != "NOASSERTION").count();
    assert!(licensed > packages.len() / 2, "most packages declare licences: {licensed} of {}", packages.len());
}

#[test]
fn debian_bookworm_pipeline_publishes_a_bootable_image() {
    let fixture = debian_fixture();
    let (base, gnupg) = (fixture.dir.clone(), fixture.gnupg.clone());
    let file = fixture.pipeline.to_str().unwrap();
    let layer = fixture.layer.to_string_lossy().into_owned();

    // Everything is cached now; a second run reuses all layers and republishes nothing.
    let plan = pipeline(&base, &gnupg, &["--work-dir", "work", "plan", file]);
    let plan = stdout(&plan);
    assert_eq!(plan.lines().filter(|l| l.contains("cached")).count(), 4, "{plan}");
    let again = pipeline(&base, &gnupg, &["--work-dir", "work", "run", file]);
    assert!(again.status.success());
    assert_eq!(stderr(&again).matches(": cached").count(), 4, "{}", stderr(&again));
    // The check stage booted the image before its publish and found no failed unit: only a
    // passed check leaves a record, which is what makes it `cached` here.
    assert!(plan.lines().any(|l| l.contains("  check ") && l.contains("cached")), "{plan}");
    assert_eq!(stdout(&again).trim(), layer);

    let verify = pipeline(&base, &gnupg, &["repo", "verify", "repo-index"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
    let index = std::fs::read_to_string(base.join("repo-index/index")).unwrap();
    assert!(index.contains("[debian-bookworm]") && index.contains("osinfo=debian12"), "{index}");

    // A derived image made with every customize action that needs a real guest: the
    // guest's apt through the appliance's network, its shell for run-command and run, its
    // zoneinfo and accounts.
    std::fs::create_dir_all(base.join("files/app/bin")).unwrap();
    std::fs::create_dir_all(base.join("keys")).unwrap();
    std::fs::write(base.join("files/app/bin/hello"), "#!/bin/sh\necho hello\n").unwrap();
    std::fs::write(base.join("keys/admin.pub"), "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2e admin@example\n").unwrap();
    std::fs::write(
        base.join("setup.sh"),
        "#!/bin/sh\nset -e\ndpkg-query -W -f='${Version}' openssh-server > /etc/openssh-version\n",
    )
    .unwrap();
    let derived = write_file(
        &base,
        "derived.toml",
        &format!(
            r#"version = 1
from = {{ pipeline = "{file}" }}
secrets = ["API_TOKEN"]
[pipeline]
name = "derived"
[values]
App = "app"
[env]
GREETING = "it's global"
API_TOKEN = "tok-5ecret-4711"
[[stages]]
[stages.customize]
env = {{ TARGET = "derived" }}
steps = [
  {{ hostname = "derived.example.net" }},
  {{ root_password = "password:Root-Pw-9931" }},
  {{ run_command = "echo \"token is $API_TOKEN\"; printf '%s' \"$API_TOKEN\" | wc -c > /etc/token-length" }},
  {{ install = ["tree", "less", "tzdata"] }},
  {{ uninstall = ["less"] }},
  {{ update = true }},
  {{ run_command = "apt-get -s upgrade | grep -c '^Inst' > /etc/upgradable || true" }},
  {{ timezone = "Europe/Oslo" }},
  {{ copy_in = {{ source = "files/{{{{ App }}}}", dest = "/opt" }} }},
  {{ run_command = "useradd -m -s /bin/sh deploy" }},
  {{ ssh_inject = {{ user = "deploy", key = "keys/admin.pub" }} }},
  {{ run = "setup.sh" }},
  {{ run_command = "printf '%s %s' \"$GREETING\" \"$TARGET\" > /etc/env-check" }},
]
"#
        ),
    );
    let out = pipeline(&base, &gnupg, &["--work-dir", "work", "run", derived.to_str().unwrap()]);
    assert!(out.status.success(), "the derived image failed:\n{}", stderr(&out));
    let derived_layer = stdout(&out).trim().to_string();
    // The secret reached the guest, its value no log: not the configuration dump, not the
    // traced libguestfs calls, not the command's own output.
    let derived_logs = walk_files(&base.join("work/logs/derived"));
    assert!(derived_logs.iter().any(|l| l.ends_with("01-customize.log")), "{derived_logs:?}");
    for log in &derived_logs {
        let text = std::fs::read_to_string(log).unwrap();
        for secret in ["tok-5ecret-4711", "Root-Pw-9931", "it's global"] {
            assert!(!text.contains(secret), "{secret} is in {}", log.display());
        }
        if log.ends_with("01-customize.log") {
            assert!(text.contains("token is [redacted]"), "the command's output is scrubbed, not dropped:\n{text}");
        }
    }

    let upgraded = derived_logs.iter().filter(|l| l.ends_with("01-customize.log")).any(|l| {
        let text = std::fs::read_to_string(l).unwrap();
        text.contains("force-confold upgrade") && text.contains(" upgraded, ")
    });
    assert!(upgraded, "update ran apt-get upgrade: {derived_logs:?}");
    // Steps that install packages are keyed by the guest's own package sources: planned
    // again, the layer is cached (the recorded sources, probed now, are unchanged).
    let out = pipeline(&base, &gnupg, &["--work-dir", "work", "plan", derived.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let derived_plan = stdout(&out);
    assert!(derived_plan.lines().last().unwrap().contains("cached"), "{derived_plan}");
    let derived_meta = std::fs::read_to_string(Path::new(&derived_layer).with_extension("json")).unwrap();

    // A guest command that never ends is stopped after the stage's timeout.
    let hangs = write_file(
        &base,
        "hangs.toml",
        &format!(
            "version = 1\nfrom = {{ pipeline = \"{file}\" }}\n[pipeline]\nname = \"hangs\"\n[[stages]]\n[stages.customize]\ntimeout = \"5s\"\nsteps = [ {{ run_command = \"sleep 3600\" }} ]\n"
        ),
    );
    let out = pipeline(&base, &gnupg, &["--work-dir", "work", "run", hangs.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("customize step 0 (run-command)") && err.contains("timed out after 5s"), "{err}");

    // Offline: the install layer had host keys; sysprep removed them and left machine-id
    // empty; the derived layer shows every customize action.
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(&layer).with_extension("json")).unwrap()).unwrap();
    let install_layer = Path::new(&layer).with_file_name(format!("{}.qcow2", record["parent"].as_str().unwrap()));
    let g = open_readonly(&[&install_layer, Path::new(&layer), Path::new(&derived_layer)]);
    mount_disk(&g, 0);
    let installed_key = g.read_string("/etc/ssh/ssh_host_ed25519_key.pub").unwrap();
    // debootstrap's file capabilities survive the copy onto the disk: ping keeps
    // cap_net_raw (security.capability: version 2, permitted bit 13) and works unprivileged.
    let cap = g.lgetxattr("/usr/bin/ping", "security.capability").expect("ping has file capabilities");
    assert!(cap.len() >= 8, "{cap:?}");
    let permitted = u32::from_le_bytes(cap[4..8].try_into().unwrap());
    assert!(permitted & (1 << 13) != 0, "cap_net_raw is permitted: {cap:?}");
    mount_disk(&g, 1);
    assert!(g.glob_expand("/etc/ssh/ssh_host_*").unwrap().is_empty(), "sysprep removes the host keys");
    assert_eq!(g.read_string("/etc/machine-id").unwrap(), "", "machine-id is left empty");
    sboms_list_what_dpkg_lists(&g, &base);
    assert!(!g.exists("/usr/bin/tree").unwrap());
    mount_disk(&g, 2);
    assert!(g.is_file("/usr/bin/tree").unwrap(), "install put tree into the guest");
    assert!(!g.exists("/usr/bin/less").unwrap(), "uninstall removed less");
    let status = g.read_string("/var/lib/dpkg/status").unwrap();
    assert!(status.contains("Package: tree\nStatus: install ok installed"), "dpkg knows tree");
    assert_eq!(g.read_string("/etc/hostname").unwrap(), "derived.example.net\n");
    assert_eq!(g.read_string("/etc/timezone").unwrap(), "Europe/Oslo\n");
    assert_eq!(g.read_string("/etc/upgradable").unwrap(), "0\n", "update left nothing to upgrade");
    // The record holds the digest of the very InRelease the guest's apt installed from.
    let lists = g.glob_expand("/var/lib/apt/lists/*_dists_bookworm_InRelease").unwrap();
    assert_eq!(lists.len(), 1, "{lists:?}");
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(g.read_file(&lists[0]).unwrap()));
    assert!(
        derived_meta.contains("\"suite\": \"bookworm\"") && derived_meta.contains(&digest),
        "the layer's upstream states do not hold {digest}: {derived_meta}"
    );
    assert!(g.is_symlink("/etc/localtime").unwrap());
    assert_eq!(g.read_string("/opt/app/bin/hello").unwrap(), "#!/bin/sh\necho hello\n", "copy-in, templated path");
    let passwd = g.read_string("/etc/passwd").unwrap();
    let deploy = passwd.lines().find(|l| l.starts_with("deploy:")).expect("run-command added the user");
    let uid: i64 = deploy.split(':').nth(2).unwrap().parse().unwrap();
    let keys = "/home/deploy/.ssh/authorized_keys";
    assert!(g.read_string(keys).unwrap().contains("admin@example"), "ssh-inject");
    assert_eq!(g.lstat_mode(keys).unwrap() & 0o777, 0o600);
    assert_eq!(g.owner(keys).unwrap().0, uid, "the key belongs to its user");
    assert!(g.read_string("/etc/openssh-version").unwrap().starts_with("1:9."), "run executed the script in the guest");
    assert_eq!(g.read_string("/etc/env-check").unwrap(), "it's global derived", "[env] and the stage's env");
    assert_eq!(g.read_string("/etc/token-length").unwrap().trim(), "15", "the secret reached the command");
    let shadow = g.read_string("/etc/shadow").unwrap();
    assert!(shadow.starts_with("root:$6$"), "root-password set a SHA-512 hash");
    g.shutdown().unwrap();
    drop(g);

    // Boot a throwaway overlay of the last layer with BIOS and GRUB, as a user would, with
    // the guest's port 22 forwarded so sshd can be asked for its host key.
    let scratch = tempfile::tempdir().unwrap();
    let disk = scratch.path().join("boot.qcow2");
    virt_pipeline::image::qemu_img::create_overlay(Path::new(&layer), &disk, None).unwrap();
    let ssh_port = free_port();
    let mut config = VmConfig::new(accel());
    config.disks.push((disk, "qcow2".into()));
    config.forwards.push((ssh_port, 22));
    let console = scratch.path().join("console.log");
    let mut vm = Vm::start(&config, &console).unwrap();
    let text = vm.wait_for_console("login:", Duration::from_secs(480)).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(text.contains("Debian GNU/Linux 12 base-image.example.net ttyS0"), "the hostname is set:\n{}", tail(&text));
    // The console stops showing unit status once getty owns it, so sshd is asked directly:
    // it answers only with host keys, which the first boot must have made afresh.
    let booted_key = wait_for_host_key(&mut vm, ssh_port, Duration::from_secs(540));
    vm.kill();
    let key_of = |line: &str| line.split_whitespace().nth(1).map(str::to_string);
    assert_ne!(key_of(&booted_key), key_of(&installed_key), "the clone has its own host key");
    assert!(!vm.console_text().contains("Failed to start ssh"), "{}", tail(&vm.console_text()));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The guest's ed25519 host key as `ssh-keyscan` reports it (`host ssh-ed25519 AAAA...`).
fn wait_for_host_key(vm: &mut Vm, port: u16, timeout: Duration) -> String {
    loop {
        let out = std::process::Command::new("ssh-keyscan")
            .args(["-T", "5", "-t", "ed25519", "-p", &port.to_string(), "127.0.0.1"])
            .output()
            .expect("ssh-keyscan (openssh-client) is installed by scripts/install-deps");
        let found =
            String::from_utf8_lossy(&out.stdout).lines().find(|l| l.contains("ssh-ed25519")).map(str::to_string);
        if let Some(line) = found {
            return line;
        }
        assert!(vm.try_exit().unwrap().is_none(), "qemu exited: {}", vm.stderr());
        assert!(
            vm.started.elapsed() < timeout,
            "sshd did not answer on the forwarded port within {}s; console:\n{}",
            timeout.as_secs(),
            tail(&vm.console_text())
        );
        std::thread::sleep(Duration::from_secs(3));
    }
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn tail(text: &str) -> String {
    virt_pipeline::vm::qemu::tail(text, 40)
}

/// Every published revision says what it contains: on the Debian image, a second revision
/// with one package installed and one removed is exactly that to `repo diff`; `repo show`
/// counts the packages; a tampered manifest fails `repo verify`; and the repository's page,
/// loaded by headless Chromium from `pipeline serve`, shows the entry, both revisions and the
/// diff, with notes holding markup rendered as text.
#[test]
fn manifests_repo_diff_and_the_page_show_what_changed() {
    let fixture = debian_fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let repo = dir.join("repo");
    let publish = format!(
        "[[stages]]\n[stages.publish]\nrepo = \"{}\"\nname = \"debian\"\nlong_name = \"Debian 12 (test)\"\n\
         osinfo = \"debian12\"\nxz_level = 1\n\
         notes = \"\"\"Nightly Debian 12.\n<script>document.title='pwned'</script> & <b>not bold</b>\"\"\"\n",
        repo.display()
    );
    let base = fixture_pipeline(dir, &fixture, "base", &publish);
    let out = run_on_fixture(&fixture, &base, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let changed = fixture_pipeline(
        dir,
        &fixture,
        "changed",
        &format!("[[stages]]\n[stages.customize]\nsteps = [{{ install = [\"tree\"] }}, {{ uninstall = [\"rsync\"] }}]\n{publish}"),
    );
    let out = run_on_fixture(&fixture, &changed, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reused = stderr(&out)
        .lines()
        .find_map(|l| l.strip_prefix("publish: ")?.split(" reused").next()?.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(reused > 0, "the second revision reuses the first one's unchanged blocks: {}", stderr(&out));

    let cmd = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(args)
            .current_dir(dir)
            .env("GNUPGHOME", &fixture.gnupg)
            .env("XDG_CONFIG_HOME", fixture.dir.join("xdg-config"))
            .output()
            .unwrap();
        (out.status.code(), stdout(&out), stderr(&out))
    };
    let repo_arg = repo.to_str().unwrap();
    let (code, json, err) = cmd(&["repo", "diff", repo_arg, "debian", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let diff: serde_json::Value = serde_json::from_str(&json).unwrap();
    let names = |k: &str| -> Vec<String> {
        diff[k].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!((diff["from"].as_u64(), diff["to"].as_u64()), (Some(1), Some(2)), "{json}");
    assert_eq!(names("added"), ["tree"], "{json}");
    assert_eq!(names("removed"), ["rsync"], "{json}");
    assert!(diff["changed"].as_array().unwrap().is_empty(), "{json}");
    let (_, text, _) = cmd(&["repo", "diff", repo_arg, "debian", "1", "2"]);
    assert!(
        text.contains("+ tree ") && text.contains("- rsync ") && text.contains("1 added, 1 removed, 0 changed"),
        "{text}"
    );
    let (code, _, err) = cmd(&["repo", "diff", repo_arg, "debian", "1", "7"]);
    assert_eq!(code, Some(2), "a revision with no manifest is bad input: {err}");
    assert!(err.contains("revision 7") && err.contains("1, 2"), "{err}");
    let (code, shown, err) = cmd(&["repo", "show", repo_arg, "debian"]);
    assert_eq!(code, Some(0), "{err}");
    let count = shown.lines().find_map(|l| l.strip_prefix("packages:")).map(|n| n.trim().parse::<u64>().unwrap());
    assert!(count.is_some_and(|n| n > 100), "{shown}");
    assert!(shown.contains("pipeline:  changed") && shown.contains("tool:      virt-pipeline"), "{shown}");

    // The page, as a browser renders it.
    let (_server, url) = serve(&repo);
    let chromium = |args: &[&str]| {
        let out = std::process::Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            .args(args)
            .env("HOME", dir)
            .output()
            .expect("chromium is installed by scripts/install-deps");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = chromium(&["--dump-dom", &format!("{url}/")]);
    assert!(dom.contains("<a href=\"/debian/\">Debian 12 (test)</a>"), "{dom}");
    assert!(dom.contains("data-revision=\"2\"") && dom.contains("data-revision=\"1\""), "{dom}");
    assert!(dom.contains("2 (current)"), "{dom}");
    assert!(dom.contains("Changes since revision 1: 1 added, 1 removed, 0 changed"), "{dom}");
    assert!(dom.contains("<li class=\"added\">+ tree ") && dom.contains("<li class=\"removed\">− rsync "), "{dom}");
    assert!(
        dom.contains("&lt;script&gt;document.title='pwned'&lt;/script&gt; &amp; &lt;b&gt;not bold&lt;/b&gt;"),
        "{dom}"
    );
    assert!(!dom.contains("pwned</title>") && !dom.contains("<b>not bold</b>"), "notes are text, not markup: {dom}");
    assert!(dom.contains("virt-builder --source http://") && dom.contains("/index.asc --fingerprint "), "{dom}");
    let one = chromium(&["--dump-dom", &format!("{url}/debian/")]);
    assert!(one.contains("All images") && one.contains("data-revision=\"2\""), "{one}");
    let screenshot = dir.join("page.png");
    chromium(&[&format!("--screenshot={}", screenshot.display()), "--window-size=900,1100", &format!("{url}/")]);
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000);
    // Kept for a look at the page; docs/repository-page.png is the default image's entry, served
    // by `pipeline serve` and taken with the same headless Chromium.
    std::fs::copy(&screenshot, Path::new(env!("CARGO_TARGET_TMPDIR")).join("repository-page.png")).unwrap();

    // A manifest edited after signing fails verification.
    let file = repo.join("debian-r2.manifest.asc");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("\"tree\"", "\"treX\"", 1)).unwrap();
    let (code, _, err) = cmd(&["repo", "verify", repo_arg]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("debian-r2.manifest.asc") && err.contains("signature"), "{err}");
}
