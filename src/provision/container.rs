//! Container steps, as Virter runs them: a container on the host (podman, or docker), on the
//! host's network, with Virter's environment (`TARGETS`, `SSH_PRIVATE_KEY`,
//! `VIRTER_ACCESS_NETWORK`) and binds (the working directory read-only at
//! `/virter/workspace`, the key at `/root/.ssh/id_rsa`, a prefilled `known_hosts`, and
//! `/etc/ssh/ssh_config.virter` naming each target's address, port and user), the image
//! pulled by the step's policy, and `copy` run after the container ends, failed or not.
//! The container is created under a name, started attached, copied from, and removed.

use super::format::ContainerStep;
use crate::bad_input;
use crate::vm::ssh::Endpoint;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The program that runs container steps, and the options every `create` gets.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerEngine {
    /// `podman` or `docker` (or a path to one).
    pub program: String,
    /// Options added to every container's `create`. Default for podman:
    /// [`PODMAN_DEFAULT_ARGS`]; for docker: none.
    pub create_args: Vec<String>,
}

/// podman's options on hosts like this project's (Debian 12 with hybrid cgroups): crun
/// cannot start containers there, runc can, and only with these explicit ulimits.
pub const PODMAN_DEFAULT_ARGS: &[&str] =
    &["--runtime", "runc", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"];

impl Default for ContainerEngine {
    fn default() -> Self {
        ContainerEngine::named("podman")
    }
}

impl ContainerEngine {
    /// The engine with its default options (podman's above, none for docker).
    pub fn named(program: &str) -> ContainerEngine {
        let base = Path::new(program).file_name().and_then(|n| n.to_str()).unwrap_or(program);
        let create_args =
            if base == "podman" { PODMAN_DEFAULT_ARGS.iter().map(|s| s.to_string()).collect() } else { Vec::new() };
        ContainerEngine { program: program.to_string(), create_args }
    }

    /// Bad input when the engine's program is not installed: checked before anything runs,
    /// so a missing podman never fails a run after a VM has booted.
    pub fn check_installed(&self, origin: &str) -> Result<PathBuf> {
        find_program(&self.program).ok_or_else(|| {
            bad_input!(
                "{origin}: a container step needs a container engine, and `{}` is not installed (install podman and runc, or docker, and choose it with --container-engine)",
                self.program
            )
        })
    }
}

/// The program's path: as given when it has a `/`, else the first match on PATH.
pub fn find_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(program)).find(|p| executable(p))
}

/// Files a container step binds, written into a scratch directory.
pub struct ContainerFiles {
    pub known_hosts: PathBuf,
    pub ssh_config: PathBuf,
}

/// `/etc/ssh/ssh_config.virter`: each target's name mapped to its address, port and user, so
/// `ssh -F /etc/ssh/ssh_config.virter NAME` works even behind forwarded ports.
pub fn ssh_config(targets: &[Endpoint]) -> String {
    let mut out = String::new();
    for t in targets {
        out.push_str(&format!("Host {}\n\tHostName {}\n\tPort {}\n\tUser {}\n\n", t.name, t.host, t.port, t.user));
    }
    out
}

/// Writes the known_hosts copy (the container may append to it) and the ssh config.
pub fn write_files(dir: &Path, known_hosts: &Path, targets: &[Endpoint]) -> Result<ContainerFiles> {
    let files = ContainerFiles { known_hosts: dir.join("known_hosts"), ssh_config: dir.join("ssh_config.virter") };
    let hosts = std::fs::read(known_hosts)
        .map_err(|e| anyhow::anyhow!("cannot read known_hosts {}: {e}", known_hosts.display()))?;
    std::fs::write(&files.known_hosts, hosts)?;
    std::fs::write(&files.ssh_config, ssh_config(targets))?;
    Ok(files)
}

/// Everything one container run needs besides the step.
pub struct ContainerRun<'a> {
    pub engine: &'a ContainerEngine,
    /// The container's name (`virter-TARGETS-RANDOM`).
    pub name: String,
    pub targets: &'a [Endpoint],
    pub workdir: &'a Path,
    pub key: &'a Path,
    /// The private key's text, for `SSH_PRIVATE_KEY`.
    pub key_text: String,
    pub access_network: &'a str,
    pub files: &'a ContainerFiles,
}

fn bind(host: &Path, container: &str, read_only: bool) -> String {
    format!("{}:{container}{}", host.display(), if read_only { ":ro" } else { "" })
}

/// `ENGINE create ...`: the environment travels in the process's environment (`-e NAME`
/// without a value), so neither the key nor step values appear on a command line or in a
/// log.
pub fn create_command(step: &ContainerStep, run: &ContainerRun) -> Command {
    let mut cmd = Command::new(&run.engine.program);
    cmd.arg("create").arg("--name").arg(&run.name).args(["--network", "host"]);
    cmd.arg(format!("--pull={}", step.pull.engine_value()));
    cmd.args(&run.engine.create_args);
    let mut env: Vec<(String, String)> = step.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    // Virter sets these over the step's own.
    let names: Vec<&str> = run.targets.iter().map(|t| t.name.as_str()).collect();
    env.retain(|(k, _)| !matches!(k.as_str(), "TARGETS" | "SSH_PRIVATE_KEY" | "VIRTER_ACCESS_NETWORK"));
    env.push(("TARGETS".into(), names.join(",")));
    env.push(("SSH_PRIVATE_KEY".into(), run.key_text.clone()));
    env.push(("VIRTER_ACCESS_NETWORK".into(), run.access_network.to_string()));
    // `--env=NAME` and `--` before the image: no value of the file's can be read as an option.
    for (k, v) in &env {
        cmd.arg(format!("--env={k}"));
        cmd.env(k, v);
    }
    cmd.arg("-v").arg(bind(run.workdir, "/virter/workspace", true));
    cmd.arg("-v").arg(bind(run.key, "/root/.ssh/id_rsa", true));
    cmd.arg("-v").arg(bind(&run.files.known_hosts, "/root/.ssh/known_hosts", false));
    cmd.arg("-v").arg(bind(&run.files.ssh_config, "/etc/ssh/ssh_config.virter", true));
    cmd.arg("--").arg(&step.image);
    cmd.args(&step.command);
    cmd
}

/// Whether `text` is a container image reference as the engines read one
/// (`[HOST[:PORT]/]PATH[:TAG][@ALGORITHM:HEX]`, the grammar of distribution/reference), so
/// that nothing else — an option such as `--privileged` — is ever given as one.
pub fn check_image_reference(text: &str) -> std::result::Result<(), String> {
    let bad = |why: &str| Err(format!("`{text}` is not a container image reference ({why})"));
    let (rest, digest) = match text.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (text, None),
    };
    if let Some(digest) = digest {
        let Some((algorithm, hex)) = digest.split_once(':') else { return bad("a digest is ALGORITHM:HEX") };
        let algorithm_ok = !algorithm.is_empty()
            && algorithm
                .split(['+', '.', '_', '-'])
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        if !algorithm_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad("a digest is ALGORITHM:HEX, such as sha256: and 64 hex digits");
        }
    }
    // A tag follows the last `:` after the last `/` (an earlier `:` is a registry's port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let ok = tag.len() <= 128
            && tag.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            return bad("a tag is letters, digits, `_`, `.` and `-`, at most 128, not starting with `.` or `-`");
        }
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 && (components[0].contains(['.', ':']) || components[0] == "localhost") {
        let host = components.remove(0);
        let (host, port) = match host.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        };
        let labels_ok = host.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        if !labels_ok || port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
            return bad("a registry is HOST or HOST:PORT");
        }
    }
    // Each path component: lowercase letters and digits, joined by `.`, `_`, `__` or dashes.
    let component_ok = |c: &str| {
        let bytes = c.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return false;
        }
        let mut i = 0;
        while i < bytes.len() {
            if alnum(bytes[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && !alnum(bytes[i]) {
                i += 1;
            }
            let separator = &c[start..i];
            if !(separator == "." || separator == "_" || separator == "__" || separator.bytes().all(|b| b == b'-')) {
                return false;
            }
        }
        true
    };
    if components.is_empty() || !components.iter().all(|c| component_ok(c)) {
        return bad("a name is lowercase letters and digits, with `.`, `_`, `__` or `-` between them, in components joined by `/`");
    }
    if text.len() > 512 {
        return bad("longer than 512 characters");
    }
    Ok(())
}

/// `ENGINE start --attach NAME`: the container's output streams, and its exit status is
/// the command's.
pub fn start_command(engine: &ContainerEngine, name: &str) -> Command {
    let mut cmd = Command::new(&engine.program);
    cmd.args(["start", "--attach", name]);
    cmd
}

/// `ENGINE cp NAME:SOURCE DEST`.
pub fn copy_command(engine: &ContainerEngine, name: &str, source: &str, dest: &Path) -> Command {
    let mut cmd = Command::new(&engine.program);
    cmd.arg("cp").arg(format!("{name}:{source}")).arg(dest);
    cmd
}

/// `ENGINE rm --force NAME`.
pub fn remove_command(engine: &ContainerEngine, name: &str) -> Command {
    let mut cmd = Command::new(&engine.program);
    cmd.args(["rm", "--force", name]);
    cmd
}

/// A container name for the targets: Virter's `virter-NAME-NAME`, made safe for the engine
/// and unique per run.
pub fn container_name(targets: &[Endpoint]) -> String {
    let names: Vec<String> = targets
        .iter()
        .map(|t| t.name.chars().map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '-' }).collect())
        .collect();
    let mut base = format!("virter-{}", names.join("-"));
    base.truncate(100);
    let suffix: u32 = rand::random();
    format!("{base}-{suffix:08x}")
}

/// The program's arguments, for tests.
#[cfg(test)]
pub(crate) fn args(cmd: &Command) -> Vec<String> {
    cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect()
}

/// The environment variables a command sets, with their values, for tests.
#[cfg(test)]
pub(crate) fn env_of(cmd: &Command) -> Vec<(String, String)> {
    cmd.get_envs()
        .filter_map(|(k, v)| Some((k.to_string_lossy().into_owned(), v?.to_string_lossy().into_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::PullPolicy;
    use std::collections::BTreeMap;

    #[test]
    fn image_references_are_checked_and_options_refused() {
        for ok in [
            "busybox",
            "local/virt-pipeline-provision-test:1c6804c1f592484c",
            "docker.io/library/alpine:3.19",
            "localhost:5000/team/app_v2__x--y:v1.0-rc_1",
            "registry.example.net/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "quay.io/x/y:tag@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(check_image_reference(ok), Ok(()), "{ok}");
        }
        for bad in [
            "--privileged",
            "-v",
            "Busybox",
            "alpine:",
            "alpine:-x",
            "a//b",
            "a/b/",
            "x y",
            "example.com:port/x",
            "alpine@sha256:abc",
            "alpine@md5",
            "",
        ] {
            assert!(check_image_reference(bad).is_err(), "{bad}");
        }
    }

    fn endpoint(name: &str, port: u16) -> Endpoint {
        Endpoint { name: name.into(), host: "127.0.0.1".into(), port, user: "root".into() }
    }

    #[test]
    fn create_has_virters_env_binds_and_the_engine_settings() {
        let targets = [endpoint("web1", 2222), endpoint("web2", 2223)];
        let files = ContainerFiles { known_hosts: "/s/known_hosts".into(), ssh_config: "/s/ssh_config.virter".into() };
        let engine = ContainerEngine::default();
        let run = ContainerRun {
            engine: &engine,
            name: "virter-web1-web2-1".into(),
            targets: &targets,
            workdir: Path::new("/work dir"),
            key: Path::new("/k/id"),
            key_text: "-----BEGIN OPENSSH PRIVATE KEY-----\nxyz\n".into(),
            access_network: "10.0.2.2/24",
            files: &files,
        };
        let mut env = BTreeMap::new();
        env.insert("TEXT".to_string(), "hello".to_string());
        env.insert("TARGETS".to_string(), "overridden".to_string());
        let step = ContainerStep {
            image: "local/x:1".into(),
            pull: PullPolicy::Never,
            env,
            command: vec!["sh".into(), "-c".into(), "echo $TEXT".into()],
            copy: None,
        };
        let cmd = create_command(&step, &run);
        assert_eq!(cmd.get_program(), "podman");
        let a = args(&cmd);
        let want: Vec<String> = [
            "create",
            "--name",
            "virter-web1-web2-1",
            "--network",
            "host",
            "--pull=never",
            "--runtime",
            "runc",
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=32768:32768",
            "--env=TEXT",
            "--env=TARGETS",
            "--env=SSH_PRIVATE_KEY",
            "--env=VIRTER_ACCESS_NETWORK",
            "-v",
            "/work dir:/virter/workspace:ro",
            "-v",
            "/k/id:/root/.ssh/id_rsa:ro",
            "-v",
            "/s/known_hosts:/root/.ssh/known_hosts",
            "-v",
            "/s/ssh_config.virter:/etc/ssh/ssh_config.virter:ro",
            "--",
            "local/x:1",
            "sh",
            "-c",
            "echo $TEXT",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(a, want);
        let env: BTreeMap<_, _> = env_of(&cmd).into_iter().collect();
        assert_eq!(env["TARGETS"], "web1,web2");
        assert_eq!(env["TEXT"], "hello");
        assert_eq!(env["VIRTER_ACCESS_NETWORK"], "10.0.2.2/24");
        assert!(env["SSH_PRIVATE_KEY"].starts_with("-----BEGIN"));
        // The key is never on the command line, so never in a log.
        let shown = crate::base::secrets::describe_command(&cmd);
        assert!(!shown.contains("xyz") && shown.contains("SSH_PRIVATE_KEY"), "{shown}");

        let docker = ContainerEngine::named("docker");
        assert!(docker.create_args.is_empty());
        let run = ContainerRun { engine: &docker, ..run };
        let a = args(&create_command(&step, &run));
        assert!(!a.contains(&"runc".to_string()), "{a:?}");
        assert_eq!(args(&start_command(&docker, "n")), ["start", "--attach", "n"]);
        assert_eq!(args(&copy_command(&docker, "n", "/tmp/out", Path::new("./d"))), ["cp", "n:/tmp/out", "./d"]);
        assert_eq!(args(&remove_command(&docker, "n")), ["rm", "--force", "n"]);
    }

    #[test]
    fn ssh_config_maps_names_to_forwarded_ports() {
        let cfg = ssh_config(&[endpoint("web1", 2222)]);
        assert_eq!(cfg, "Host web1\n\tHostName 127.0.0.1\n\tPort 2222\n\tUser root\n\n");
        let name = container_name(&[endpoint("root@h:22", 22), endpoint("b", 1)]);
        assert!(name.starts_with("virter-root-h-22-b-"), "{name}");
    }

    #[test]
    fn a_missing_engine_is_bad_input() {
        let e = ContainerEngine::named("no-such-container-engine").check_installed("p.toml").unwrap_err();
        assert_eq!(crate::base::error::exit_code(&e), 2);
        assert!(format!("{e}").contains("no-such-container-engine"), "{e}");
        assert!(ContainerEngine::named("sh").check_installed("p.toml").is_ok());
    }
}
