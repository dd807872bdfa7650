//! `[stages.check]` before a publish: the Debian fixture with a unit that fails at boot
//! fails the pipeline, the message names the unit and its error, and the publish after it
//! never runs (the repository is not even created). That the fixture itself passes is
//! checked by tests/debian_e2e.rs: pipelines/debian-bookworm.toml checks before it publishes.

mod common;

use common::*;

const CHECK: &str = "[[stages]]\n[stages.check]\nboot_timeout = \"8m\"\n";

#[test]
fn a_unit_failing_at_boot_stops_the_pipeline_before_publish() {
    let fixture = debian_fixture();
    let tmp = tempfile::tempdir_in(&fixture.dir).unwrap();
    let repo = tmp.path().join("repo");
    let unit = "[Unit]\\nDescription=Broken on purpose\\n[Service]\\nType=oneshot\\n\
                ExecStart=/bin/sh -c 'echo cannot reach the licence server >&2; exit 3'\\n\
                [Install]\\nWantedBy=multi-user.target\\n";
    let stages = format!(
        "[[stages]]\n[stages.customize]\nsteps = [\n\
         {{ write = {{ path = \"/etc/systemd/system/broken-on-purpose.service\", content = \"{unit}\" }} }},\n\
         {{ link = {{ target = \"/etc/systemd/system/broken-on-purpose.service\", \
         link = \"/etc/systemd/system/multi-user.target.wants/broken-on-purpose.service\" }} }},\n]\n\
         {CHECK}[[stages]]\n[stages.publish]\nrepo = \"{}\"\nname = \"broken\"\n",
        repo.display()
    );
    let file = fixture_pipeline(tmp.path(), &fixture, "check-fail", &stages);
    let out = run_on_fixture(&fixture, &file, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("stage 2 (check) failed"), "{err}");
    assert!(err.contains("broken-on-purpose.service failed"), "names the unit: {err}");
    assert!(err.contains("cannot reach the licence server"), "with its own message: {err}");
    assert!(!repo.exists(), "nothing was published");
}

#[test]
fn bad_check_keys_are_refused_before_anything_runs() {
    let image = &fake_images().debian;
    for (keys, needle) in [
        ("memory = \"lots\"", "stages[0].check.memory"),
        ("cpus = 0", "stages[0].check.cpus"),
        ("settle_timeout = \"0s\"", "stages[0].check.settle_timeout"),
        ("allow_failed = [\"x; reboot\"]", "stages[0].check.allow_failed"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let file = write_file(
            tmp.path(),
            "check.toml",
            &format!(
                "version = 1\nfrom = {{ image = \"{}\" }}\n[pipeline]\nname = \"check-bad\"\n[[stages]]\n[stages.check]\n{keys}\n",
                image.display()
            ),
        );
        let gnupg = gnupg_home(tmp.path());
        let out = pipeline(tmp.path(), &gnupg, &["--work-dir", "work", "run", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{keys}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{keys}: {}", stderr(&out));
        assert!(!tmp.path().join("work/layers").exists(), "{keys}: nothing ran");
    }
}

/// The files of the layer cache with their sizes and modification times: what a boot must
/// leave as it found it.
fn cache_state(work: &std::path::Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut files = Vec::new();
    let mut dirs = vec![work.join("layers")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap()) {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                files.push((entry.path().display().to_string(), meta.len(), meta.modified().unwrap()));
            }
        }
    }
    files.sort();
    files
}

/// `run --keep-failed` keeps the layer of a stage that failed, as the stage left it, and
/// `pipeline boot --disk` opens it: over SSH a command runs as root in the booted copy, sees
/// what the stage wrote before it failed, and its exit status is the tool's; the cache is
/// the same before and after the boot. One appliance launch (the customize) and one boot.
#[test]
fn a_failed_stage_kept_by_keep_failed_boots_and_a_command_runs_in_it() {
    let fixture = debian_fixture();
    let tmp = tempfile::tempdir_in(&fixture.dir).unwrap();
    let stages = "[[stages]]\n[stages.customize]\nsteps = [\n\
                  { write = { path = \"/etc/kept-marker\", content = \"written before the failure\\n\" } },\n\
                  { run_command = \"echo this step fails on purpose >&2; exit 4\" },\n]\n";
    let file = fixture_pipeline(tmp.path(), &fixture, "keep-failed", stages);
    let file = file.to_str().unwrap();
    let out = pipeline(&fixture.dir, &fixture.gnupg, &["--work-dir", "work", "run", "--keep-failed", file]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("stage 1 (customize) failed"), "{err}");
    let kept = err
        .split("is kept at ")
        .nth(1)
        .and_then(|rest| rest.split(": look inside").next())
        .unwrap_or_else(|| panic!("the message names the kept layer: {err}"));
    assert!(err.contains(&format!("pipeline boot --disk {kept} --ssh")), "{err}");
    let kept_path = std::path::Path::new(kept);
    assert!(kept_path.starts_with(fixture.dir.join("work")) || kept_path.is_relative(), "{kept}");

    let work = fixture.dir.join("work");
    let before = cache_state(&work);
    let scratch_before = leftover_scratch(&work, &["boot", "vm"]);
    let out = pipeline(
        &fixture.dir,
        &fixture.gnupg,
        &["--work-dir", "work", "boot", "--disk", kept, "--ssh", "--", "cat /etc/kept-marker && exit 7"],
    );
    assert_eq!(out.status.code(), Some(7), "the command's own status: {}", stderr(&out));
    assert_eq!(stdout(&out), "written before the failure\n");
    assert!(stderr(&out).contains(&format!("booting {kept} on a throwaway overlay")), "{}", stderr(&out));
    assert_eq!(cache_state(&work), before, "the boot changed nothing in the cache");
    assert_eq!(leftover_scratch(&work, &["boot", "vm"]), scratch_before, "no scratch left behind");

    // gc removes the kept failure once it is older than the keep time; nothing else here is.
    let record = kept_path.with_extension("json");
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 86400);
    std::fs::File::options().append(true).open(&record).unwrap().set_modified(old).unwrap();
    let out = pipeline(&fixture.dir, &fixture.gnupg, &["--work-dir", "work", "cache", "gc", "--keep-days", "2"]);
    assert!(stdout(&out).contains("1 kept failed layers"), "{}", stdout(&out));
    assert!(!kept_path.exists() && !record.exists());
}

/// `pipeline boot FILE --stage KIND` boots the layer that stage left with the serial console
/// on standard input and output; Ctrl-A X quits qemu and the command with it, a copy of the
/// console is in the boot's log directory, and nothing is left in the work directory. The
/// guest only starts: a few seconds of TCG.
#[test]
fn boot_on_the_console_opens_the_named_stages_layer_and_ctrl_a_x_quits() {
    use std::io::{Read, Write};
    let fixture = debian_fixture();
    let work = fixture.dir.join("work");
    let scratch_before = leftover_scratch(&work, &["boot"]);
    let file = fixture.pipeline.to_str().unwrap();
    let mut child =
        pipeline_command(&fixture.dir, &fixture.gnupg, &["--work-dir", "work", "boot", file, "--stage", "sysprep"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    let mut console = child.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = console.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let start = std::time::Instant::now();
    while seen.lock().unwrap().len() < 200 && start.elapsed() < std::time::Duration::from_secs(300) {
        assert!(child.try_wait().unwrap().is_none(), "boot ended before the guest wrote to its console");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    child.stdin.as_mut().unwrap().write_all(b"\x01x").unwrap();
    let out = child.wait_with_output().unwrap();
    reader.join().unwrap();
    let err = stderr(&out);
    let console = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    eprintln!("--- stderr\n{err}--- console\n{console}");
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(console.len() >= 200, "the guest's console reached standard output: {console}");
    assert!(
        err.contains(&format!("booting stage 2 (sysprep) of debian-bookworm: {}", fixture.layer.display())),
        "names the stage's layer ({}): {err}",
        fixture.layer.display()
    );
    let logs: Vec<_> = std::fs::read_dir(work.join("logs/boot")).unwrap().map(|e| e.unwrap().path()).collect();
    let copy = logs
        .iter()
        .filter(|p| p.to_string_lossy().ends_with("-console.log"))
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .find(|text| !text.is_empty() && console.contains(text.lines().next().unwrap_or("-")))
        .is_some();
    assert!(copy, "a copy of the console is kept beside the boot's log: {logs:?}");
    assert_eq!(leftover_scratch(&work, &["boot"]), scratch_before, "no scratch left behind");
}
