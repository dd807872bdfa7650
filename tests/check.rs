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
