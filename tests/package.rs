//! The Debian package as an operator meets it: `scripts/package` builds it (from the dev
//! build the tests already have, so no release build), lintian finds no error in it, `apt-get
//! install` installs it on this machine, and what it installed works: `/usr/bin/pipeline
//! --version` names the commit, `man` shows a generated page, the bash completion registers,
//! `systemd-analyze verify` accepts the units without a warning, and the site directory's
//! default pipeline plans with its repository under /var/lib/virt-pipeline. The package is
//! purged afterwards. Needs root (apt-get), as the whole suite does.

mod common;

use common::*;
use std::process::{Command, Output};

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    eprintln!("$ {cmd:?}\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

/// Purges the package however the test ends.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("apt-get")
            .args(["purge", "-y", "-qq", "virt-pipeline"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
}

#[test]
fn the_debian_package_installs_a_working_tool_man_pages_completions_and_units() {
    assert!(nix::unistd::Uid::effective().is_root(), "installing a package needs root, as scripts/test does");
    let root = repo_root();
    let built = run(Command::new(root.join("scripts/package")).args(["--profile", "dev", "--fast"]).current_dir(&root));
    assert!(built.status.success(), "scripts/package failed");
    let deb = String::from_utf8_lossy(&built.stdout).lines().rev().find(|l| l.ends_with(".deb")).unwrap().to_string();
    assert!(deb.ends_with("_amd64.deb") && std::path::Path::new(&deb).is_file(), "{deb}");

    // Errors are what lintian reports as E:; its warnings are named in docs/install.md.
    let lint = run(Command::new("lintian").arg(&deb));
    let report = String::from_utf8_lossy(&lint.stdout).into_owned();
    assert!(!report.lines().any(|l| l.starts_with("E:")), "lintian errors:\n{report}");

    let _installed = Installed;
    let install =
        run(Command::new("apt-get").args(["install", "-y", "-qq"]).arg(&deb).env("DEBIAN_FRONTEND", "noninteractive"));
    assert!(install.status.success(), "apt-get install failed");

    let version = run(Command::new("/usr/bin/pipeline").arg("--version"));
    let head = run(Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(&root));
    let revision = String::from_utf8_lossy(&head.stdout).trim().to_string();
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    assert!(version.starts_with("pipeline 0.") && version.contains(&format!("(revision {revision})")), "{version}");

    let man = run(Command::new("man").args(["-l", "/usr/share/man/man1/pipeline-rebuild.1.gz"]).env("MANPAGER", "cat"));
    let page = String::from_utf8_lossy(&man.stdout).into_owned();
    assert!(man.status.success() && page.contains("pipeline-rebuild") && page.contains("--base-timeout"), "{page}");

    let completion = run(Command::new("bash")
        .args(["-c", "source /usr/share/bash-completion/completions/pipeline && complete -p pipeline"]));
    let completion = String::from_utf8_lossy(&completion.stdout).into_owned();
    assert!(completion.contains("-F _pipeline pipeline"), "{completion}");

    // verify exits 0 on a unit it only warns about, so a warning fails the test too.
    let units = ["virt-pipeline-nightly.service", "virt-pipeline-nightly.timer", "virt-pipeline-serve.service"];
    let verify =
        run(Command::new("systemd-analyze").arg("verify").args(units.map(|u| format!("/usr/lib/systemd/system/{u}"))));
    assert!(verify.status.success() && verify.stderr.is_empty() && verify.stdout.is_empty(), "systemd-analyze verify");

    // The site directory holds the default pipeline only, publishing into the system's
    // repository; the nightly's command plans it.
    let site: Vec<_> =
        std::fs::read_dir("/etc/virt-pipeline/pipelines").unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(site, ["debian-bookworm.toml"]);
    let tmp = tempfile::tempdir().unwrap();
    let gnupg = gnupg_home(tmp.path());
    let work = tmp.path().join("work");
    let plan = run(Command::new("/usr/bin/pipeline")
        .args(["--work-dir", work.to_str().unwrap(), "rebuild", "--plan", "--offline", "/etc/virt-pipeline/pipelines"])
        .env("GNUPGHOME", &gnupg));
    assert!(plan.status.success(), "rebuild --plan of the site directory");
    let text = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(
        text.starts_with("debian-bookworm (/etc/virt-pipeline/pipelines/debian-bookworm.toml)")
            && text.contains("publish"),
        "{text}"
    );
    let site_file = std::fs::read_to_string("/etc/virt-pipeline/pipelines/debian-bookworm.toml").unwrap();
    assert!(site_file.contains("repo = \"/var/lib/virt-pipeline/repo-index\""), "{site_file}");
}
