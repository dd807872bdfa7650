//! Engine tests with a small test-only stage that writes a byte pattern into its layer with
//! qemu-io: real qcow2 chains, real cache, no appliance.

use super::*;
use crate::vm::Accel;
use std::cell::Cell;
use std::path::Path;
use std::process::Command;
use std::rc::Rc;

struct PatternStage {
    base: bool,
    pattern: u8,
    input: Option<PathBuf>,
    fail: bool,
    runs: Rc<Cell<usize>>,
    upstream: Vec<crate::upstream::Upstream>,
    /// Reports `upstream` from its run instead of declaring it (as customize does).
    found_in_run: bool,
}

impl Stage for PatternStage {
    fn kind(&self) -> &'static str {
        "pattern"
    }
    fn layer_kind(&self) -> LayerKind {
        if self.base {
            LayerKind::Base
        } else {
            LayerKind::Overlay
        }
    }
    fn config(&self) -> serde_json::Value {
        serde_json::json!({ "pattern": self.pattern })
    }
    fn inputs(&self) -> Vec<PathBuf> {
        self.input.iter().cloned().collect()
    }
    fn upstream(&self) -> Vec<crate::upstream::Upstream> {
        if self.found_in_run {
            vec![]
        } else {
            self.upstream.clone()
        }
    }
    fn upstream_found_in_run(&self) -> bool {
        self.found_in_run
    }
    fn run(&self, ctx: &mut StageContext) -> Result<stage::StageResult> {
        self.runs.set(self.runs.get() + 1);
        if self.base {
            qemu_img::create_blank(&ctx.output, "8M")?;
        }
        qemu_io(&ctx.output, &format!("write -P {} {} 64k", self.pattern, offset(self.pattern)))?;
        if self.fail {
            anyhow::bail!("the test stage fails on purpose");
        }
        let client = crate::upstream::Client::new()?;
        let upstream = match self.found_in_run {
            true => Some(self.upstream.iter().map(|u| Ok((u.clone(), u.probe(&client)?))).collect::<Result<_>>()?),
            false => None,
        };
        Ok(stage::StageResult { upstream, ..Default::default() })
    }
}

fn offset(pattern: u8) -> u64 {
    pattern as u64 * 65536
}

fn qemu_io(path: &Path, cmd: &str) -> Result<()> {
    let out = Command::new("qemu-io").args(["-f", "qcow2", "-c", cmd]).arg(path).output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success() && !text.contains("Pattern verification failed"), "qemu-io {cmd}: {text}");
    Ok(())
}

struct Fixture {
    dir: tempfile::TempDir,
    runs: Vec<Rc<Cell<usize>>>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture { dir: tempfile::tempdir().unwrap(), runs: (0..3).map(|_| Rc::new(Cell::new(0))).collect() }
    }
    fn input(&self) -> PathBuf {
        self.dir.path().join("script.sh")
    }
    fn stages(&self, fail_last: bool) -> Vec<Box<dyn Stage>> {
        (0..3)
            .map(|i| {
                Box::new(PatternStage {
                    base: i == 0,
                    pattern: i as u8 + 1,
                    input: (i == 1).then(|| self.input()),
                    fail: fail_last && i == 2,
                    runs: self.runs[i].clone(),
                    upstream: vec![],
                    found_in_run: false,
                }) as Box<dyn Stage>
            })
            .collect()
    }
    /// The stages, the middle one depending on a "release file" upstream.
    fn stages_with_upstream(&self, found_in_run: bool) -> Vec<Box<dyn Stage>> {
        let mut stages = self.stages(false);
        let release = self.dir.path().join("InRelease").display().to_string();
        stages[1] = Box::new(PatternStage {
            base: false,
            pattern: 2,
            input: None,
            fail: false,
            runs: self.runs[1].clone(),
            upstream: vec![crate::upstream::Upstream::Digest { urls: vec![release] }],
            found_in_run,
        });
        stages
    }
    fn engine<'a>(&self, ui: &'a Ui, options: EngineOptions) -> Engine<'a> {
        self.engine_offline(ui, options, true)
    }
    fn engine_offline<'a>(&self, ui: &'a Ui, options: EngineOptions, offline: bool) -> Engine<'a> {
        let settings = RunSettings {
            accel: Accel::Tcg,
            work_dir: self.dir.path().join("work"),
            offline,
            sign_key: None,
            verbose: false,
        };
        Engine::new(settings, options, ui).unwrap()
    }
    fn runs(&self) -> Vec<usize> {
        self.runs.iter().map(|r| r.get()).collect()
    }
}

#[test]
fn stages_chain_and_a_second_run_reuses_every_layer() {
    let f = Fixture::new();
    std::fs::write(f.input(), "echo one").unwrap();
    let ui = Ui::new();
    let engine = f.engine(&ui, EngineOptions::default());
    let last = engine.run("t", &f.stages(false), None).unwrap();
    assert_eq!(f.runs(), vec![1, 1, 1]);
    // The last layer sees every stage's write through its backing chain.
    for p in 1..=3u8 {
        qemu_io(&last.path, &format!("read -P {p} {} 64k", offset(p))).unwrap();
    }
    let info = qemu_img::info(&last.path).unwrap();
    assert!(info.backing_filename.is_some(), "an overlay has a backing file");
    assert!(engine.plan(&f.stages(false), None).unwrap().iter().all(|p| p.status == Status::Cached));
    let again = engine.run("t", &f.stages(false), None).unwrap();
    assert_eq!(f.runs(), vec![1, 1, 1]);
    assert_eq!(again.key, last.key);
}

#[test]
fn a_changed_input_file_reruns_its_stage_and_those_after() {
    let f = Fixture::new();
    std::fs::write(f.input(), "echo one").unwrap();
    let ui = Ui::new();
    let engine = f.engine(&ui, EngineOptions::default());
    let first = engine.run("t", &f.stages(false), None).unwrap();
    std::fs::write(f.input(), "echo two").unwrap();
    let plan = engine.plan(&f.stages(false), None).unwrap();
    let status: Vec<_> = plan.iter().map(|p| p.status).collect();
    assert_eq!(status, vec![Status::Cached, Status::ToRun, Status::ToRun]);
    let second = engine.run("t", &f.stages(false), None).unwrap();
    assert_eq!(f.runs(), vec![1, 2, 2]);
    assert_ne!(first.key, second.key);
}

#[test]
fn build_id_pins_keys_until_the_base_changes() {
    let f = Fixture::new();
    std::fs::write(f.input(), "echo one").unwrap();
    let ui = Ui::new();
    let options = EngineOptions { build_id: Some("nightly-1".into()), ..Default::default() };
    let engine = f.engine(&ui, options);
    engine.run("t", &f.stages(false), None).unwrap();
    std::fs::write(f.input(), "echo two").unwrap();
    engine.run("t", &f.stages(false), None).unwrap();
    assert_eq!(f.runs(), vec![1, 1, 1], "the build ID stands in for the changed input");
    // A different base layer invalidates everything on top of it, build ID or not.
    let other_base = Layer { key: "other".into(), path: engine.cache.layer_path("x") };
    let plan = engine.plan(&f.stages(false)[1..], Some(&other_base)).unwrap();
    assert!(plan.iter().all(|p| p.status == Status::ToRun));
}

#[test]
fn no_cache_rebuilds_every_stage() {
    let f = Fixture::new();
    std::fs::write(f.input(), "echo one").unwrap();
    let ui = Ui::new();
    f.engine(&ui, EngineOptions::default()).run("t", &f.stages(false), None).unwrap();
    let engine = f.engine(&ui, EngineOptions { no_cache: true, ..Default::default() });
    engine.run("t", &f.stages(false), None).unwrap();
    assert_eq!(f.runs(), vec![2, 2, 2]);
}

#[test]
fn a_failed_stage_leaves_nothing_in_the_cache() {
    let f = Fixture::new();
    std::fs::write(f.input(), "echo one").unwrap();
    let ui = Ui::new();
    let engine = f.engine(&ui, EngineOptions::default());
    let err = engine.run("t", &f.stages(true), None).unwrap_err();
    assert!(format!("{err:#}").contains("fails on purpose"));
    let plan = engine.plan(&f.stages(true), None).unwrap();
    assert_eq!(plan.iter().map(|p| p.status).collect::<Vec<_>>(), vec![Status::Cached, Status::Cached, Status::ToRun]);
    let leftovers: Vec<_> = std::fs::read_dir(&engine.cache.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&plan[2].key))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // gc (once the run is over) keeps recent layers and their ancestors, and what stages keep
    // beside them.
    let work = f.dir.path().join("work");
    let cache = Cache::open(&work).unwrap();
    drop(engine);
    let sidecar = crate::engine::cache::sidecar(&cache.layer_path(&plan[0].key), "packages");
    std::fs::write(&sidecar, b"[]").unwrap();
    assert!(cache.gc(&work, std::time::Duration::from_secs(3600)).unwrap().layers.is_empty());
    assert!(sidecar.exists(), "a kept layer keeps its sidecar");
    assert_eq!(cache.gc(&work, std::time::Duration::ZERO).unwrap().layers.len(), 2);
    assert!(!sidecar.exists(), "a removed layer's sidecar goes with it");
}

/// `--keep-failed`: the failed stage's layer is kept as it left it (its own writes on top of
/// its parent) outside the cache's layers, the error says where, and gc keeps it and the
/// layer under it until it is older than the keep time, then removes both.
#[test]
fn a_failed_layer_kept_holds_the_stages_writes_until_gc_ages_it_out() {
    use std::time::{Duration, SystemTime};
    let f = Fixture::new();
    std::fs::write(f.input(), "echo one").unwrap();
    let ui = Ui::new();
    let engine = f.engine(&ui, EngineOptions { keep_failed: true, ..Default::default() });
    let err = engine.run("t", &f.stages(true), None).unwrap_err();
    let failed = err.downcast_ref::<StageFailed>().expect("a StageFailed context");
    let kept = failed.kept.clone().expect("the layer is kept");
    let message = format!("{err:#}");
    assert!(message.contains(&format!("pipeline boot --disk {} --ssh", kept.display())), "{message}");
    // The stage's own pattern (3) and its parent's (2, through the backing file) are there.
    qemu_io(&kept, &format!("read -P 3 {} 64k", offset(3))).unwrap();
    qemu_io(&kept, &format!("read -P 2 {} 64k", offset(2))).unwrap();
    let plan = engine.plan(&f.stages(true), None).unwrap();
    assert_eq!(plan[2].status, Status::ToRun, "a kept failure is no cached layer");
    assert_eq!(engine.cache.list().unwrap().len(), 2);
    let record: crate::engine::cache::KeptFailure =
        serde_json::from_slice(&std::fs::read(kept.with_extension("json")).unwrap()).unwrap();
    assert_eq!((record.stage, record.kind.as_str(), record.parent.as_deref()), (3, "pattern", Some(&*plan[1].key)));
    assert!(record.log.ends_with("03-pattern.log") && record.log.exists(), "{record:?}");

    let work = f.dir.path().join("work");
    drop(engine);
    let cache = Cache::open(&work).unwrap();
    // Every layer is unused for longer than the keep time, but the kept failure is new: it and
    // the layers under it stay.
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for (meta, _, _) in cache.list().unwrap() {
        let json = cache.dir.join(format!("{}.json", meta.key));
        std::fs::File::options().append(true).open(json).unwrap().set_modified(hour_ago).unwrap();
    }
    let report = cache.gc(&work, Duration::from_secs(60)).unwrap();
    assert_eq!((report.layers.len(), report.failed), (0, 0), "{report:?}");
    assert!(kept.exists());
    // Once older than the keep time it goes, and then so do the layers it held.
    let record_path = kept.with_extension("json");
    std::fs::File::options().append(true).open(&record_path).unwrap().set_modified(hour_ago).unwrap();
    let report = cache.gc(&work, Duration::from_secs(60)).unwrap();
    assert_eq!((report.layers.len(), report.failed), (2, 1), "{report:?}");
    assert!(!kept.exists() && !record_path.exists());
}

/// Without `--keep-failed` nothing of a failed stage stays (see also
/// `a_failed_stage_leaves_nothing_in_the_cache`), and no failed directory is made.
#[test]
fn without_keep_failed_no_failed_layer_is_kept() {
    let f = Fixture::new();
    std::fs::write(f.input(), "echo one").unwrap();
    let ui = Ui::new();
    let engine = f.engine(&ui, EngineOptions::default());
    let err = engine.run("t", &f.stages(true), None).unwrap_err();
    let failed = err.downcast_ref::<StageFailed>().unwrap();
    assert!(failed.kept.is_none());
    assert!(!format!("{err:#}").contains("pipeline boot"));
    assert!(!engine.cache.dir.join("failed").exists());
}

/// gc sweeps what killed runs leave (scratch directories, temporary layers of dead
/// processes) and downloads and output records nobody used for the keep time, and nothing a
/// live run is using.
#[test]
fn gc_sweeps_leftovers_of_dead_runs_and_old_downloads() {
    use std::time::{Duration, SystemTime};
    let f = Fixture::new();
    let ui = Ui::new();
    let engine = f.engine(&ui, EngineOptions::default());
    let work = f.dir.path().join("work");
    // A pid that no longer exists: a child that has exited and been reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let live = std::process::id();
    let dead_scratch = work.join(format!("scratch-netboot-{dead}-abc"));
    let live_scratch = crate::base::scratch::dir(&work, "netboot").unwrap();
    std::fs::create_dir_all(dead_scratch.join("sub")).unwrap();
    let dead_temp = engine.cache.dir.join(format!(".tmp-{}-{dead}.qcow2", "a".repeat(64)));
    let live_temp = engine.cache.dir.join(format!(".tmp-{}-{live}.qcow2", "b".repeat(64)));
    std::fs::write(&dead_temp, b"x").unwrap();
    std::fs::write(&live_temp, b"x").unwrap();
    let downloads = work.join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let (old_download, new_download) = (downloads.join("old.iso"), downloads.join("new.iso"));
    std::fs::write(&old_download, b"x").unwrap();
    std::fs::write(&new_download, b"x").unwrap();
    let month_ago = SystemTime::now() - Duration::from_secs(30 * 86400);
    std::fs::File::options().append(true).open(&old_download).unwrap().set_modified(month_ago).unwrap();
    let old_output = engine.cache.dir.join("outputs").join(format!("{}.json", "c".repeat(64)));
    std::fs::write(&old_output, b"{}").unwrap();
    std::fs::File::options().append(true).open(&old_output).unwrap().set_modified(month_ago).unwrap();

    let cache = Cache::open(&work).unwrap();
    drop(engine);
    let report = cache.gc(&work, Duration::from_secs(14 * 86400)).unwrap();
    assert_eq!((report.scratch, report.downloads, report.outputs), (1, 1, 1), "{report:?}");
    assert!(!dead_scratch.exists() && !dead_temp.exists() && !old_download.exists() && !old_output.exists());
    assert!(live_scratch.path().exists() && live_temp.exists() && new_download.exists());
}

/// Two runs building one key: the layer committed first stays, byte for byte (overlays of the
/// first run may already name it), and the second run gets that layer back.
#[test]
fn the_first_layer_committed_for_a_key_stays() {
    let f = Fixture::new();
    let cache = Cache::open(&f.dir.path().join("work")).unwrap();
    let key = "d".repeat(64);
    let meta = |created: &str| LayerMeta {
        key: key.clone(),
        parent: None,
        pipeline: "t".into(),
        stage_index: 0,
        kind: "pattern".into(),
        created: created.into(),
        inspection: None,
        upstream: Vec::new(),
        origin: None,
    };
    let first = cache.dir.join(".tmp-first.qcow2");
    let second = cache.dir.join(".tmp-second.qcow2");
    std::fs::write(&first, b"first build").unwrap();
    std::fs::write(&second, b"second build").unwrap();
    let a = cache.commit(&first, &meta("1")).unwrap();
    let b = cache.commit(&second, &meta("2")).unwrap();
    assert_eq!(a.path, b.path);
    assert_eq!(std::fs::read(&a.path).unwrap(), b"first build");
    assert_eq!(cache.meta(&key).unwrap().created, "1");
    assert!(!first.exists() && !second.exists(), "no temporary layer is left");
}

/// A run holds the cache: gc refuses to sweep under it, and works once it has ended.
#[test]
fn gc_waits_for_no_run_and_removes_nothing_under_one() {
    let f = Fixture::new();
    std::fs::write(f.input(), "echo one").unwrap();
    let ui = Ui::new();
    let engine = f.engine(&ui, EngineOptions::default());
    engine.run("t", &f.stages(false), None).unwrap();
    let work = f.dir.path().join("work");
    let cache = Cache::open(&work).unwrap();
    let err = cache.gc(&work, std::time::Duration::ZERO).unwrap_err();
    assert!(format!("{err:#}").contains("a run is using this work directory"), "{err:#}");
    assert_eq!(cache.list().unwrap().len(), 3, "every layer of the run is there");
    drop(engine);
    assert_eq!(cache.gc(&work, std::time::Duration::ZERO).unwrap().layers.len(), 3);
}

#[test]
fn layers_above_a_rebuilt_one_are_rebuilt_too() {
    let f = Fixture::new();
    std::fs::write(f.input(), "echo one").unwrap();
    let ui = Ui::new();
    let engine = f.engine(&ui, EngineOptions::default());
    engine.run("t", &f.stages(false), None).unwrap();
    // The middle layer disappears (deleted by hand); the top one is still in the cache.
    let plan = engine.plan(&f.stages(false), None).unwrap();
    std::fs::remove_file(engine.cache.layer_path(&plan[1].key)).unwrap();
    let plan = engine.plan(&f.stages(false), None).unwrap();
    assert_eq!(plan.iter().map(|p| p.status).collect::<Vec<_>>(), vec![Status::Cached, Status::ToRun, Status::ToRun]);
    engine.run("t", &f.stages(false), None).unwrap();
    assert_eq!(f.runs(), vec![1, 2, 2]);
}

fn statuses(plan: &[PlannedStage]) -> Vec<Status> {
    plan.iter().map(|p| p.status).collect()
}

/// An upstream's state is part of the key: a change reruns its stage and those above it and
/// `plan` names it; the old state reuses the old layers; offline, the recorded state is used
/// and the upstream is not read at all.
#[test]
fn a_changed_upstream_reruns_its_stage_and_offline_uses_the_last_state() {
    for found_in_run in [false, true] {
        let f = Fixture::new();
        let release = f.dir.path().join("InRelease");
        std::fs::write(&release, "Date: Mon, 30 Nov 2026\n").unwrap();
        let ui = Ui::new();
        // Probing a local file needs no network: the engine is online, so it probes.
        let engine = f.engine_offline(&ui, EngineOptions::default(), false);
        let stages = f.stages_with_upstream(found_in_run);
        let first = engine.run("t", &stages, None).unwrap();
        assert_eq!(f.runs(), vec![1, 1, 1]);
        let engine = f.engine_offline(&ui, EngineOptions::default(), false);
        let plan = engine.plan(&stages, None).unwrap();
        assert_eq!(statuses(&plan), vec![Status::Cached; 3], "found in run: {found_in_run}");

        std::fs::write(&release, "Date: Tue, 01 Dec 2026\n").unwrap();
        let engine = f.engine_offline(&ui, EngineOptions::default(), false);
        let plan = engine.plan(&stages, None).unwrap();
        assert_eq!(statuses(&plan), vec![Status::Cached, Status::ToRun, Status::ToRun]);
        let reason = plan[1].reason.clone().unwrap_or_default();
        assert!(reason.contains("InRelease changed"), "{reason}");
        // Offline: the last build's state, so nothing to run, and the file is not read.
        std::fs::rename(&release, f.dir.path().join("moved")).unwrap();
        let plan = f.engine_offline(&ui, EngineOptions::default(), true).plan(&stages, None).unwrap();
        assert_eq!(statuses(&plan), vec![Status::Cached; 3]);
        std::fs::rename(f.dir.path().join("moved"), &release).unwrap();

        let second = f.engine_offline(&ui, EngineOptions::default(), false).run("t", &stages, None).unwrap();
        assert_eq!(f.runs(), vec![1, 2, 2]);
        assert_ne!(first.key, second.key);
        let plan = f.engine_offline(&ui, EngineOptions::default(), false).plan(&stages, None).unwrap();
        assert_eq!(statuses(&plan), vec![Status::Cached; 3], "the new layers are filed under the new state");
        assert_eq!(plan[2].key, second.key);

        // Back to the first state: the first build's layers are still there.
        std::fs::write(&release, "Date: Mon, 30 Nov 2026\n").unwrap();
        let plan = f.engine_offline(&ui, EngineOptions::default(), false).plan(&stages, None).unwrap();
        assert_eq!(statuses(&plan), vec![Status::Cached; 3]);
        assert_eq!(plan[2].key, first.key);
    }
}
