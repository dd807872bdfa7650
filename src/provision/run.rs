//! Running a provisioning's steps against targets, as Virter's `vm exec` does: steps in
//! order, each on every target before the next begins (shell steps on all targets at once);
//! the first failing step stops the run, and the error carries the step's exit status
//! ([`crate::base::error::StepFailed`]) so the tool exits with it.

use super::container::{self, ContainerEngine, ContainerRun};
use super::format::{ContainerStep, Provisioning, RsyncStep, ShellStep, Step};
use super::goglob;
use crate::bad_input;
use crate::base::error::StepFailed;
use crate::base::log::StageLog;
use crate::base::ui::Ui;
use crate::vm::ssh::{Endpoint, Session};
use anyhow::{Context, Result};
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// One machine the steps run on: where it is and an open session to it.
pub struct Target {
    pub endpoint: Endpoint,
    pub session: Session,
}

/// What the steps run with.
pub struct RunContext<'a> {
    /// Relative rsync sources and container copy destinations resolve here, and it is the
    /// container's `/virter/workspace` (Virter: its working directory).
    pub workdir: &'a Path,
    /// A private directory for the files container steps bind (removed by the caller).
    pub scratch: &'a Path,
    /// The private key that opened the sessions, for rsync and containers.
    pub key: &'a Path,
    /// A known_hosts holding the targets' host keys (`Session::connect` records them).
    pub known_hosts: &'a Path,
    /// `VIRTER_ACCESS_NETWORK`: the host's address as the targets reach it, in CIDR form.
    pub access_network: String,
    pub engine: &'a ContainerEngine,
    pub log: &'a StageLog,
    pub bar: &'a ProgressBar,
    /// Also show the steps' output on the terminal (`pipeline exec`).
    pub echo: Option<&'a Ui>,
}

/// How long rsync may go without moving data before it gives up (`--timeout`).
const RSYNC_IO_TIMEOUT: Duration = Duration::from_secs(300);
/// How long ssh (under rsync) may take to connect.
const SSH_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks what can be checked before any target is touched, as bad input: every rsync
/// source and copy destination lies inside `workdir`; a container engine is installed when a
/// step needs one; the key file is readable when rsync or container steps need it.
pub fn check(p: &Provisioning, workdir: &Path, engine: &ContainerEngine) -> Result<()> {
    let origin = &p.origin;
    for (i, step) in p.steps.iter().enumerate() {
        match step {
            Step::Rsync(r) => {
                let prefix = goglob::literal_prefix(&r.source);
                if let Err(outside) = goglob::inside(workdir, &prefix) {
                    return Err(bad_input!(
                        "{origin}: steps[{i}].rsync.source: `{}` lies outside the working directory {} (it resolves to {}); rsync sources must be inside it, as with Virter",
                        r.source,
                        workdir.display(),
                        outside.display()
                    ));
                }
            }
            Step::Container(c) => {
                if let Some(copy) = &c.copy {
                    if let Err(outside) = goglob::inside(workdir, &copy.dest) {
                        return Err(bad_input!(
                            "{origin}: steps[{i}].container.copy.dest: `{}` lies outside the working directory {} (it resolves to {}); copy destinations must be inside it, as with Virter",
                            copy.dest,
                            workdir.display(),
                            outside.display()
                        ));
                    }
                }
            }
            Step::Shell(_) => {}
        }
    }
    if p.needs_containers() {
        engine.check_installed(origin)?;
    }
    Ok(())
}

/// The host files the rsync steps would send now (for cache keys): every match of every
/// source, resolved.
pub fn inputs(p: &Provisioning, workdir: &Path) -> Vec<PathBuf> {
    p.steps
        .iter()
        .filter_map(|s| match s {
            Step::Rsync(r) => rsync_sources(&p.origin, r, workdir, 0).ok(),
            _ => None,
        })
        .flatten()
        .map(PathBuf::from)
        .collect()
}

/// Runs every step on every target, in order.
pub fn run(p: &Provisioning, targets: &[Target], ctx: &RunContext) -> Result<()> {
    check(p, ctx.workdir, ctx.engine)?;
    let names: Vec<&str> = targets.iter().map(|t| t.endpoint.name.as_str()).collect();
    for (i, step) in p.steps.iter().enumerate() {
        crate::base::interrupt::check()?;
        let what = format!("steps[{i}] ({})", step.kind());
        ctx.log.line(format!("=== {what} on {}", names.join(", ")));
        ctx.bar.set_message(what.clone());
        if let Some(ui) = ctx.echo {
            ui.line(format!("{what} on {}", names.join(", ")));
        }
        match step {
            Step::Shell(s) => shell(p, i, s, targets, ctx)?,
            Step::Rsync(r) => rsync(p, i, r, targets, ctx)?,
            Step::Container(c) => run_container(p, i, c, targets, ctx)?,
        }
    }
    Ok(())
}

fn failed(code: i32, message: String) -> anyhow::Error {
    anyhow::Error::new(StepFailed { code, message })
}

fn shell(p: &Provisioning, i: usize, step: &ShellStep, targets: &[Target], ctx: &RunContext) -> Result<()> {
    // Virter runs a shell step on all targets at once and reports the first failure.
    let results: Vec<Result<i32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| {
                scope.spawn(move || {
                    let name = &t.endpoint.name;
                    t.session.run_script(&step.script, &step.env, &mut |line| {
                        ctx.log.line(format!("{name}: {line}"));
                        ctx.bar.set_message(format!("{name}: {line}"));
                        if let Some(ui) = ctx.echo {
                            ui.line(format!("{name}: {line}"));
                        }
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the step's thread failed"))))
            .collect()
    });
    for (t, result) in targets.iter().zip(results) {
        let name = &t.endpoint.name;
        let status = result.with_context(|| format!("{}: steps[{i}] (shell) on {name}", p.origin))?;
        ctx.log.line(format!("[{name}: exit status {status}]"));
        if status != 0 {
            return Err(failed(
                status,
                format!(
                    "{}: steps[{i}] (shell) on {name} exited with status {status}; last lines:\n{}\n(full log: {})",
                    p.origin,
                    ctx.log.tail(12),
                    ctx.log.path().display()
                ),
            ));
        }
    }
    Ok(())
}

/// The source's matches as rsync gets them: Go glob rules, each resolved (symlinks) and
/// inside the working directory, a trailing `/` kept (rsync: the contents, not the directory).
fn rsync_sources(origin: &str, step: &RsyncStep, workdir: &Path, i: usize) -> Result<Vec<String>> {
    let at = format!("{origin}: steps[{i}].rsync.source");
    let matches = goglob::glob(workdir, &step.source)
        .map_err(|_| bad_input!("{at}: `{}` is not a valid Go filepath.Match pattern", step.source))?;
    let mut out = Vec::new();
    for m in matches {
        let mut real = goglob::inside(workdir, &m)
            .map_err(|outside| {
                bad_input!(
                    "{at}: {m} resolves to {}, outside the working directory {}",
                    outside.display(),
                    workdir.display()
                )
            })?
            .display()
            .to_string();
        if m.ends_with('/') && !real.ends_with('/') {
            real.push('/');
        }
        out.push(real);
    }
    Ok(out)
}

/// One word of rsync's `-e` command: rsync splits it at spaces and honours quotes.
fn rsh_word(s: &str) -> String {
    if !s.is_empty() && !s.contains([' ', '\'', '"']) {
        s.to_string()
    } else if !s.contains('\'') {
        format!("'{s}'")
    } else {
        format!("\"{s}\"")
    }
}

/// `rsync --recursive --perms --times --protect-args -e "ssh ..." SOURCES user@host:DEST`
/// with the run's key and known_hosts, checked strictly.
pub fn rsync_command(sources: &[String], dest: &str, target: &Endpoint, key: &Path, known_hosts: &Path) -> Command {
    let rsh = [
        "ssh".to_string(),
        "-i".into(),
        rsh_word(&key.display().to_string()),
        "-p".into(),
        target.port.to_string(),
        "-o".into(),
        rsh_word(&format!("UserKnownHostsFile={}", known_hosts.display())),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        format!("ConnectTimeout={}", SSH_CONNECT_TIMEOUT.as_secs()),
    ]
    .join(" ");
    let host = if target.host.contains(':') { format!("[{}]", target.host) } else { target.host.clone() };
    let mut cmd = Command::new("rsync");
    cmd.args(["--recursive", "--perms", "--times", "--protect-args"])
        .arg(format!("--timeout={}", RSYNC_IO_TIMEOUT.as_secs()))
        .arg("-e")
        .arg(rsh)
        .args(sources)
        .arg(format!("{}@{host}:{dest}", target.user));
    cmd
}

fn rsync(p: &Provisioning, i: usize, step: &RsyncStep, targets: &[Target], ctx: &RunContext) -> Result<()> {
    let sources = rsync_sources(&p.origin, step, ctx.workdir, i)?;
    if sources.is_empty() {
        // Virter copies nothing then, and goes on.
        ctx.log.line(format!("nothing matches {} in {}; nothing copied", step.source, ctx.workdir.display()));
        return Ok(());
    }
    for t in targets {
        crate::base::interrupt::check()?;
        let mut cmd = rsync_command(&sources, &step.dest, &t.endpoint, ctx.key, ctx.known_hosts);
        cmd.current_dir(ctx.workdir);
        let status = ctx.log.run(&mut cmd, ctx.bar)?;
        if !status.success() {
            // Virter exits 1 for a failed rsync (only shell and container steps pass their
            // status on); the message keeps rsync's own.
            anyhow::bail!(
                "{}: steps[{i}] (rsync) to {}:{} failed ({status}); last lines:\n{}\n(full log: {})",
                p.origin,
                t.endpoint.name,
                step.dest,
                ctx.log.tail(12),
                ctx.log.path().display()
            );
        }
    }
    Ok(())
}

fn run_container(p: &Provisioning, i: usize, step: &ContainerStep, targets: &[Target], ctx: &RunContext) -> Result<()> {
    let endpoints: Vec<Endpoint> = targets.iter().map(|t| t.endpoint.clone()).collect();
    let dir = ctx.scratch.join(format!("container-{i}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let files = container::write_files(&dir, ctx.known_hosts, &endpoints)?;
    let key_text =
        std::fs::read_to_string(ctx.key).with_context(|| format!("cannot read the SSH key {}", ctx.key.display()))?;
    crate::base::secrets::register(&key_text);
    let workdir = std::fs::canonicalize(ctx.workdir).unwrap_or_else(|_| ctx.workdir.to_path_buf());
    let run = ContainerRun {
        engine: ctx.engine,
        name: container::container_name(&endpoints),
        targets: &endpoints,
        workdir: &workdir,
        key: ctx.key,
        key_text,
        access_network: &ctx.access_network,
        files: &files,
    };
    let result = container_steps(p, i, step, &run, ctx);
    // The container goes whatever happened; a failure to remove it is only logged.
    let status = ctx.log.run(&mut container::remove_command(ctx.engine, &run.name), ctx.bar);
    if !matches!(status, Ok(s) if s.success()) {
        ctx.log.line(format!("could not remove container {}", run.name));
    }
    result
}

fn container_steps(
    p: &Provisioning,
    i: usize,
    step: &ContainerStep,
    run: &ContainerRun,
    ctx: &RunContext,
) -> Result<()> {
    let origin = &p.origin;
    let status = ctx.log.run(&mut container::create_command(step, run), ctx.bar)?;
    if !status.success() {
        anyhow::bail!(
            "{origin}: steps[{i}] (container): cannot create a container of {} ({status}); last lines:\n{}\n(full log: {})",
            step.image,
            ctx.log.tail(12),
            ctx.log.path().display()
        );
    }
    let started = ctx.log.run(&mut container::start_command(ctx.engine, &run.name), ctx.bar);
    // Copy out even when the container failed: its files may explain why (Virter does too).
    let copied = match &step.copy {
        Some(copy) => copy_out(p, i, run, &copy.source, &copy.dest, ctx),
        None => Ok(()),
    };
    let status = started?;
    if !status.success() {
        let code = status.code().unwrap_or(1);
        return Err(failed(
            code,
            format!(
                "{origin}: steps[{i}] (container {}) exited with status {code}; last lines:\n{}\n(full log: {})",
                step.image,
                ctx.log.tail(12),
                ctx.log.path().display()
            ),
        ));
    }
    copied
}

fn copy_out(p: &Provisioning, i: usize, run: &ContainerRun, source: &str, dest: &str, ctx: &RunContext) -> Result<()> {
    // Checked again now: an earlier step may have made a symlink on the way.
    let real = goglob::inside(ctx.workdir, dest).map_err(|outside| {
        bad_input!(
            "{}: steps[{i}].container.copy.dest: `{dest}` resolves to {}, outside the working directory {}",
            p.origin,
            outside.display(),
            ctx.workdir.display()
        )
    })?;
    let status = ctx.log.run(&mut container::copy_command(ctx.engine, &run.name, source, &real), ctx.bar)?;
    if !status.success() {
        anyhow::bail!(
            "{}: steps[{i}].container.copy: cannot copy {source} out of the container to {} ({status}); last lines:\n{}",
            p.origin,
            real.display(),
            ctx.log.tail(8)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::format::{load, LoadOptions, Source};

    fn endpoint() -> Endpoint {
        Endpoint { name: "web1".into(), host: "127.0.0.1".into(), port: 2222, user: "root".into() }
    }

    #[test]
    fn rsync_command_line_is_virters_over_our_key() {
        let cmd = rsync_command(
            &["/w/a.rpm".into(), "/w/dir/".into()],
            "/root/rpms",
            &endpoint(),
            Path::new("/keys/my key"),
            Path::new("/keys/known_hosts"),
        );
        let args = container::args(&cmd);
        assert_eq!(&args[..5], ["--recursive", "--perms", "--times", "--protect-args", "--timeout=300"]);
        assert_eq!(args[5], "-e");
        assert_eq!(
            args[6],
            "ssh -i '/keys/my key' -p 2222 -o UserKnownHostsFile=/keys/known_hosts -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o BatchMode=yes -o ConnectTimeout=30"
        );
        assert_eq!(&args[7..], ["/w/a.rpm", "/w/dir/", "root@127.0.0.1:/root/rpms"]);
        let v6 = Endpoint { host: "::1".into(), ..endpoint() };
        let cmd = rsync_command(&["a".into()], "/d", &v6, Path::new("k"), Path::new("kh"));
        assert_eq!(container::args(&cmd).last().unwrap(), "root@[::1]:/d");
    }

    fn provisioning(text: &str, dir: &Path) -> Provisioning {
        let path = dir.join("prov.toml");
        std::fs::write(&path, text).unwrap();
        load(&Source::File(path), &LoadOptions::default()).unwrap()
    }

    #[test]
    fn sources_and_destinations_outside_the_working_directory_are_bad_input() {
        let d = tempfile::tempdir().unwrap();
        let work = d.path().join("work");
        std::fs::create_dir_all(work.join("files")).unwrap();
        std::fs::write(work.join("files/a.txt"), "a").unwrap();
        std::fs::write(work.join("files/b.txt"), "b").unwrap();
        std::fs::write(d.path().join("secret.txt"), "s").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret.txt"), work.join("files/link.txt")).unwrap();
        let engine = ContainerEngine::named("sh");
        for (source, ok) in
            [("files/*.txt", true), ("../*.txt", false), ("/etc/*", false), ("files/../../secret.txt", false)]
        {
            let p = provisioning(
                &format!("version = 1\n[[steps]]\n[steps.rsync]\nsource = \"{source}\"\ndest = \"/d\"\n"),
                d.path(),
            );
            let r = check(&p, &work, &engine);
            assert_eq!(r.is_ok(), ok, "{source}: {r:?}");
            if let Err(e) = r {
                assert_eq!(crate::base::error::exit_code(&e), 2);
                assert!(format!("{e}").contains("steps[0].rsync.source"), "{e}");
            }
        }
        // A match that is a symlink out of the working directory is refused when globbed.
        let p =
            provisioning("version = 1\n[[steps]]\n[steps.rsync]\nsource = \"files/*.txt\"\ndest = \"/d\"\n", d.path());
        let Step::Rsync(r) = &p.steps[0] else { panic!() };
        let e = rsync_sources(&p.origin, r, &work, 0).unwrap_err();
        assert!(format!("{e}").contains("link.txt"), "{e}");
        std::fs::remove_file(work.join("files/link.txt")).unwrap();
        let real = std::fs::canonicalize(&work).unwrap();
        assert_eq!(
            rsync_sources(&p.origin, r, &work, 0).unwrap(),
            vec![format!("{}/files/a.txt", real.display()), format!("{}/files/b.txt", real.display())]
        );
        assert_eq!(inputs(&p, &work).len(), 2);

        let p = provisioning(
            "version = 1\n[[steps]]\n[steps.container]\nimage = \"x\"\ncopy = { source = \"/o\", dest = \"../out\" }\n",
            d.path(),
        );
        let e = check(&p, &work, &engine).unwrap_err();
        assert!(format!("{e}").contains("steps[0].container.copy.dest"), "{e}");
        let p = provisioning("version = 1\n[[steps]]\n[steps.container]\nimage = \"x\"\n", d.path());
        let e = check(&p, &work, &ContainerEngine::named("no-such-engine-here")).unwrap_err();
        assert_eq!(crate::base::error::exit_code(&e), 2);
        assert!(format!("{e}").contains("no-such-engine-here"), "{e}");
    }

    #[test]
    fn the_example_provisioning_file_loads_and_checks() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
        let mut values = toml::Table::new();
        values.insert("Motd".into(), "from the pipeline".into());
        let p =
            load(&Source::File(dir.join("provision/web.toml")), &LoadOptions { values, ..Default::default() }).unwrap();
        assert!(matches!(&p.steps[0], Step::Shell(s) if s.env["MOTD"] == "from the pipeline (web1.example.net)"));
        check(&p, &dir, &ContainerEngine::default()).unwrap();
        let sent = inputs(&p, &dir);
        assert!(sent.iter().any(|f| f.ends_with("provision/files/index.html")), "{sent:?}");
    }
}
