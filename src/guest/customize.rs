//! The customize vocabulary (virt-customize's actions) applied to a mounted guest, shared by
//! the customize stage and sysprep's `customize` operation; and the guest edits other stages
//! make with it (hostname, root password, SSH keys, commands in the guest).

use crate::bad_input;
use crate::base::log::StageLog;
use crate::guest::inspect::Inspection;
use crate::guest::Guest;
use crate::pipeline::{CustomizeStep, Pipeline};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Checks steps before anything runs; returns the host files they read (for the cache key).
pub fn check_steps(steps: &[CustomizeStep], pipeline: &Pipeline, at: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let key = format!("{at}[{i}]");
        let host_file = match step {
            CustomizeStep::CopyIn { source, .. } => Some(source.as_str()),
            CustomizeStep::Run(script) => Some(script.as_str()),
            CustomizeStep::RootPassword(spec) => spec.strip_prefix("file:"),
            CustomizeStep::SshInject { key, .. } if !key.starts_with("ssh-") && !key.starts_with("ecdsa-") => {
                Some(key.as_str())
            }
            CustomizeStep::Chmod { mode, .. } => {
                u32::from_str_radix(mode, 8).map_err(|_| {
                    bad_input!(
                        "{}: {key}.chmod.mode: `{mode}` is not an octal mode such as 0644",
                        pipeline.path.display()
                    )
                })?;
                None
            }
            _ => None,
        };
        if let Some(f) = host_file {
            let path = pipeline.resolve(f);
            if !path.exists() {
                return Err(bad_input!("{}: {key}: file {} does not exist", pipeline.path.display(), path.display()));
            }
            files.push(path);
        }
        if let CustomizeStep::Install(pkgs) | CustomizeStep::Uninstall(pkgs) = step {
            let what = if matches!(step, CustomizeStep::Install(_)) { "install" } else { "uninstall" };
            if let Some((j, bad)) = pkgs.iter().enumerate().find(|(_, p)| !is_package_name(p)) {
                return Err(bad_input!(
                    "{}: {key}.{what}[{j}]: `{bad}` is not a package name (letters, digits and `+._-`, optionally `:arch` and `=version`)",
                    pipeline.path.display()
                ));
            }
        }
        if let CustomizeStep::RootPassword(spec) = step {
            check_password_spec(spec)
                .map_err(|e| bad_input!("{}: {key}.root_password: {e}", pipeline.path.display()))?;
        }
    }
    Ok(files)
}

/// The step's name as virt-customize spells the option, for messages and logs.
pub fn step_name(step: &CustomizeStep) -> &'static str {
    match step {
        CustomizeStep::Hostname(_) => "hostname",
        CustomizeStep::RootPassword(_) => "root-password",
        CustomizeStep::Timezone(_) => "timezone",
        CustomizeStep::Mkdir(_) => "mkdir",
        CustomizeStep::Write { .. } => "write",
        CustomizeStep::AppendLine { .. } => "append-line",
        CustomizeStep::CopyIn { .. } => "copy-in",
        CustomizeStep::Chmod { .. } => "chmod",
        CustomizeStep::Delete(_) => "delete",
        CustomizeStep::Link { .. } => "link",
        CustomizeStep::RunCommand(_) => "run-command",
        CustomizeStep::Run(_) => "run",
        CustomizeStep::Install(_) => "install",
        CustomizeStep::Uninstall(_) => "uninstall",
        CustomizeStep::Update(_) => "update",
        CustomizeStep::SshInject { .. } => "ssh-inject",
    }
}

/// Whether a step runs the guest's package manager (and so needs the appliance network).
pub fn uses_package_manager(step: &CustomizeStep) -> bool {
    matches!(step, CustomizeStep::Install(_) | CustomizeStep::Uninstall(_) | CustomizeStep::Update(true))
}

/// Applies steps to a mounted guest, in one appliance launch; host paths resolve against
/// `dir`. It remembers whether the package lists were refreshed, so several install steps
/// download the lists once.
pub struct StepRunner<'a> {
    g: &'a Guest,
    os: &'a Inspection,
    dir: &'a std::path::Path,
    env: &'a BTreeMap<String, String>,
    timeout: std::time::Duration,
    log: &'a StageLog,
    lists_refreshed: std::cell::Cell<bool>,
}

impl<'a> StepRunner<'a> {
    pub fn new(
        g: &'a Guest,
        os: &'a Inspection,
        dir: &'a std::path::Path,
        env: &'a BTreeMap<String, String>,
        timeout: std::time::Duration,
        log: &'a StageLog,
    ) -> StepRunner<'a> {
        StepRunner { g, os, dir, env, timeout, log, lists_refreshed: std::cell::Cell::new(false) }
    }

    /// A shell command in the guest, with the stage's environment.
    fn shell(&self, cmd: &str) -> Result<()> {
        run_in_guest(self.g, cmd, self.env, self.timeout, self.log)
    }

    /// The package lists, downloaded once per launch.
    fn refresh_lists(&self) -> Result<()> {
        if !self.lists_refreshed.get() {
            if let Some(cmd) = refresh_command(self.os) {
                self.shell(cmd)?;
            }
            self.lists_refreshed.set(true);
        }
        Ok(())
    }

    pub fn apply(&self, step: &CustomizeStep) -> Result<()> {
        let (g, os, dir, log) = (self.g, self.os, self.dir, self.log);
        match step {
            CustomizeStep::Hostname(name) => set_hostname(g, name, os.is_debian_family())?,
            CustomizeStep::RootPassword(spec) => set_root_password(g, spec, dir, log)?,
            CustomizeStep::Timezone(tz) => {
                let zone = format!("/usr/share/zoneinfo/{tz}");
                if !g.exists(&zone)? {
                    bail!("timezone {tz}: the guest has no {zone}");
                }
                g.ln_sf(&zone, "/etc/localtime")?;
                if os.is_debian_family() {
                    g.write("/etc/timezone", format!("{tz}\n").as_bytes())?;
                }
            }
            CustomizeStep::Mkdir(dir) => g.mkdir_p(dir)?,
            CustomizeStep::Write { path, content } => g.write(path, content.as_bytes())?,
            CustomizeStep::AppendLine { path, line } => {
                let mut text = if g.exists(path)? { g.read_string(path)? } else { String::new() };
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(line);
                text.push('\n');
                g.write(path, text.as_bytes())?;
            }
            CustomizeStep::CopyIn { source, dest } => {
                g.mkdir_p(dest)?;
                g.copy_in(&resolve(dir, source), dest)?;
            }
            CustomizeStep::Chmod { mode, path } => g.chmod(u32::from_str_radix(mode, 8)?, path)?,
            CustomizeStep::Delete(path) => g.rm_rf(path)?,
            CustomizeStep::Link { target, link } => g.ln_sf(target, link)?,
            CustomizeStep::RunCommand(cmd) => self.shell(cmd)?,
            CustomizeStep::Run(script) => {
                let remote = "/tmp/virt-pipeline-run.sh";
                g.upload(&resolve(dir, script), remote)?;
                g.chmod(0o755, remote)?;
                let result = self.shell(remote);
                g.rm_f(remote)?;
                result?;
            }
            CustomizeStep::Install(pkgs) => {
                self.refresh_lists()?;
                self.shell(&package_command(os, "install", pkgs)?)?
            }
            CustomizeStep::Update(false) => {}
            CustomizeStep::Update(true) => {
                self.refresh_lists()?;
                self.shell(upgrade_command(os)?)?
            }
            CustomizeStep::Uninstall(pkgs) => self.shell(&package_command(os, "remove", pkgs)?)?,
            CustomizeStep::SshInject { user, key } => {
                let key_text = if key.starts_with("ssh-") || key.starts_with("ecdsa-") {
                    key.clone()
                } else {
                    std::fs::read_to_string(resolve(dir, key))?
                };
                inject_ssh_key(g, user, &key_text)?;
            }
        }
        Ok(())
    }
}

fn resolve(dir: &std::path::Path, path: &str) -> PathBuf {
    let p = std::path::Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// Runs a shell command inside the guest with `env` exported, stopped after `timeout` (by the
/// guest's `timeout` command, where it has one: a command waiting for input or looping would
/// otherwise hold the appliance forever); its output goes to the log, a failure carries the
/// guest's own error text.
pub fn run_in_guest(
    g: &Guest,
    cmd: &str,
    env: &BTreeMap<String, String>,
    timeout: std::time::Duration,
    log: &StageLog,
) -> Result<()> {
    // The log names the variables but not their values, which may hold credentials.
    if env.is_empty() {
        log.line(format!("# {cmd}"));
    } else {
        log.line(format!("# {cmd}   (env: {})", env.keys().cloned().collect::<Vec<_>>().join(", ")));
    }
    // Untraced when it exports variables: the trace would log their values.
    let script = format!("{}{}", shell_exports(env), with_timeout(cmd, timeout));
    let out = if env.is_empty() { g.sh(&script)? } else { g.untraced(|g| g.sh(&script))? };
    for line in out.lines() {
        log.line(line);
    }
    Ok(())
}

/// `cmd` under the guest's `timeout` (SIGTERM, then SIGKILL 10 s later), saying on stderr
/// when it ran out of time; unlimited in a guest without `timeout`.
fn with_timeout(cmd: &str, timeout: std::time::Duration) -> String {
    let secs = timeout.as_secs().max(1);
    let quoted = format!("'{}'", cmd.replace('\'', r"'\''"));
    format!(
        "if command -v timeout >/dev/null 2>&1; then timeout -k 10 {secs} /bin/sh -c {quoted}; rc=$?; \
         if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo 'virt-pipeline: the command timed out after {human}' >&2; fi; \
         exit $rc; else exec /bin/sh -c {quoted}; fi",
        human = humantime::format_duration(std::time::Duration::from_secs(secs))
    )
}

/// `export NAME='value'; ` for each variable, single-quoted for the shell.
pub fn shell_exports(env: &BTreeMap<String, String>) -> String {
    env.iter().map(|(k, v)| format!("export {k}='{}'; ", v.replace('\'', r"'\''"))).collect()
}

/// The command that refreshes the guest's package lists before installs, where the package
/// manager needs one (dnf, yum and zypper refresh by themselves).
fn refresh_command(os: &Inspection) -> Option<&'static str> {
    match os.package_management.as_str() {
        "apt" => Some("DEBIAN_FRONTEND=noninteractive apt-get -y -q update"),
        _ => None,
    }
}

/// A Debian or RPM package name, optionally `:arch` and `=version` (apt's syntax). The
/// names go into a shell command line, so nothing else passes: no shell metacharacters, no
/// spaces, and no leading `-` that the package manager would read as an option.
pub fn is_package_name(spec: &str) -> bool {
    let (rest, version) = match spec.split_once('=') {
        Some((r, v)) => (r, Some(v)),
        None => (spec, None),
    };
    let (name, arch) = match rest.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (rest, None),
    };
    let name_ok = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "+._-".contains(c));
    let arch_ok =
        arch.is_none_or(|a| !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)));
    let version_ok = version.is_none_or(|v| {
        v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && v.chars().all(|c| c.is_ascii_alphanumeric() || "+.~:_-".contains(c))
    });
    name_ok && arch_ok && version_ok
}

/// Upgrades every package, as virt-customize --update does (apt keeps the guest's changed
/// configuration files rather than prompting).
fn upgrade_command(os: &Inspection) -> Result<&'static str> {
    Ok(match os.package_management.as_str() {
        "apt" => "DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold upgrade",
        "dnf" => "dnf -y --best upgrade",
        "yum" => "yum -y update",
        "zypper" => "zypper -n update",
        other => bail!("cannot update packages: the guest's package manager is `{other}`"),
    })
}

fn package_command(os: &Inspection, action: &str, pkgs: &[String]) -> Result<String> {
    // Checked when the pipeline was loaded; checked again here because this is a shell line.
    if let Some(bad) = pkgs.iter().find(|p| !is_package_name(p)) {
        bail!("`{bad}` is not a package name");
    }
    let list = pkgs.join(" ");
    Ok(match os.package_management.as_str() {
        "apt" => format!("DEBIAN_FRONTEND=noninteractive apt-get -y -q {action} {list}"),
        "dnf" => format!("dnf -y {action} {list}"),
        "yum" => format!("yum -y {action} {list}"),
        "zypper" => format!("zypper -n {} {list}", if action == "install" { "install" } else { "remove" }),
        other => bail!("cannot {action} packages: the guest's package manager is `{other}`"),
    })
}

/// Sets the hostname as virt-customize --hostname does: /etc/hostname, the `127.0.1.1`
/// alias in /etc/hosts (replaced, or added on Debian-family guests where `debian_alias`),
/// and HOSTNAME= in /etc/sysconfig/network on older Red Hat releases.
pub fn set_hostname(g: &Guest, name: &str, debian_alias: bool) -> Result<()> {
    let short = name.split('.').next().unwrap_or(name);
    g.write("/etc/hostname", format!("{name}\n").as_bytes())?;
    if g.is_file("/etc/hosts")? {
        let hosts = g.read_string("/etc/hosts")?;
        let alias = if short == name { format!("127.0.1.1\t{name}") } else { format!("127.0.1.1\t{name} {short}") };
        let mut lines: Vec<String> = hosts.lines().map(str::to_string).collect();
        match lines.iter_mut().find(|l| l.starts_with("127.0.1.1")) {
            Some(line) => *line = alias,
            None if debian_alias => lines.push(alias),
            None => {}
        }
        g.write("/etc/hosts", format!("{}\n", lines.join("\n")).as_bytes())?;
    }
    if g.is_file("/etc/sysconfig/network")? {
        let text = g.read_string("/etc/sysconfig/network")?;
        let mut lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("HOSTNAME=")).collect();
        let entry = format!("HOSTNAME={name}");
        lines.push(&entry);
        g.write("/etc/sysconfig/network", format!("{}\n", lines.join("\n")).as_bytes())?;
    }
    Ok(())
}

fn check_password_spec(spec: &str) -> std::result::Result<(), String> {
    let ok = spec == "random"
        || spec == "disabled"
        || spec.starts_with("password:")
        || spec.starts_with("file:")
        || spec.starts_with("locked:");
    if ok {
        Ok(())
    } else {
        Err(format!("`{spec}` is not one of password:SECRET, file:PATH, random, disabled, locked:password:SECRET"))
    }
}

/// virt-customize's --root-password: `password:S`, `file:PATH` (first line), `random`
/// (printed to the log), `disabled`, `locked:...`. Stored as a SHA-512 crypt hash.
pub fn set_root_password(g: &Guest, spec: &str, dir: &std::path::Path, log: &StageLog) -> Result<()> {
    let (locked, spec) = match spec.strip_prefix("locked:") {
        Some(rest) => (true, rest),
        None => (false, spec),
    };
    let field = if spec == "disabled" {
        "*".to_string()
    } else {
        let password = if let Some(p) = spec.strip_prefix("password:") {
            p.to_string()
        } else if let Some(f) = spec.strip_prefix("file:") {
            std::fs::read_to_string(resolve(dir, f))?.lines().next().unwrap_or_default().to_string()
        } else if spec == "random" {
            use rand::distributions::{Alphanumeric, DistString};
            let p = Alphanumeric.sample_string(&mut rand::rngs::OsRng, 16);
            // For the operator, like virt-customize: on the terminal, never in the log.
            crate::base::secrets::register(&p);
            eprintln!("random root password: {p}");
            log.line("random root password: generated (shown on the terminal only)");
            p
        } else {
            bail!("root password: unknown form `{spec}`");
        };
        let params = sha_crypt::Sha512Params::new(5000).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        sha_crypt::sha512_simple(&password, &params).map_err(|e| anyhow::anyhow!("cannot hash the password: {e:?}"))?
    };
    let field = if locked { format!("!{field}") } else { field };
    let shadow = g.read_string("/etc/shadow").context("the guest has no /etc/shadow")?;
    let mut found = false;
    let lines: Vec<String> = shadow
        .lines()
        .map(|l| {
            let mut parts: Vec<&str> = l.split(':').collect();
            if parts.first() == Some(&"root") && parts.len() > 2 {
                found = true;
                parts[1] = &field;
                parts.join(":")
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        bail!("root password: /etc/shadow has no root entry");
    }
    // Untraced: the trace would log the password's hash.
    g.untraced(|g| g.write("/etc/shadow", format!("{}\n", lines.join("\n")).as_bytes()))?;
    Ok(())
}

/// Appends a public key to the user's authorized_keys with the permissions sshd requires.
pub fn inject_ssh_key(g: &Guest, user: &str, key: &str) -> Result<()> {
    // The account's home and ids come from the guest's /etc/passwd, as virt-customize does.
    let passwd = if g.is_file("/etc/passwd")? { g.read_string("/etc/passwd")? } else { String::new() };
    let Some((uid, gid, home)) = passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 6 && f[0] == user).then(|| (f[2].parse::<i32>().ok(), f[3].parse::<i32>().ok(), f[5].to_string()))
    }) else {
        bail!("ssh-inject: the guest's /etc/passwd has no user `{user}`");
    };
    if !g.is_dir(&home)? {
        bail!("ssh-inject: user {user} has no home directory {home} in the guest");
    }
    let dir = format!("{}/.ssh", home.trim_end_matches('/'));
    let file = format!("{dir}/authorized_keys");
    g.mkdir_p(&dir)?;
    g.chmod(0o700, &dir)?;
    let mut text = if g.exists(&file)? { g.read_string(&file)? } else { String::new() };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(key.trim());
    text.push('\n');
    g.write(&file, text.as_bytes())?;
    g.chmod(0o600, &file)?;
    if let (Some(uid), Some(gid)) = (uid, gid) {
        g.chown(uid, gid, &dir)?;
        g.chown(uid, gid, &file)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{is_package_name, shell_exports};
    use std::collections::BTreeMap;

    #[test]
    fn exported_values_reach_the_shell_unchanged() {
        let tricky = "it's $HOME `id` \"q\" \\ ;";
        let env = BTreeMap::from([("A".to_string(), tricky.to_string()), ("B".to_string(), String::new())]);
        let script = format!("{}printf '%s|%s' \"$A\" \"$B\"", shell_exports(&env));
        let out = std::process::Command::new("sh").arg("-c").arg(script).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{tricky}|"));
    }

    #[test]
    fn package_names_are_names_only() {
        for good in [
            "openssh-server",
            "libstdc++6",
            "python3.11",
            "g++",
            "NetworkManager",
            "vim:amd64",
            "curl=7.88.1-10+deb12u5",
            "bash:i386=5.2.15-2",
            "kernel-6.1.0",
            "epoch=1:2.0~rc1",
        ] {
            assert!(is_package_name(good), "{good}");
        }
        for bad in [
            "vim; rm -rf /",
            "a b",
            "-y",
            "--allow-downgrades",
            "$(id)",
            "x`id`",
            "pkg|sh",
            "",
            "a:",
            "a=",
            "a>b",
            "*",
            "pkg\nid",
        ] {
            assert!(!is_package_name(bad), "{bad}");
        }
    }
}
