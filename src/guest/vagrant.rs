//! The `vagrant` account of a Vagrant base box, as Vagrant's base-box documentation
//! describes it: user `vagrant` with Vagrant's insecure public keys (or the operator's own),
//! `~/.ssh` 0700 and `authorized_keys` 0600, passwordless sudo without `requiretty`, and
//! sshd's `UseDNS no` (reverse lookups of the host make every `vagrant ssh` wait). Made in
//! a mounted guest; sudo is installed with the guest's package manager when it is missing.

use super::customize::{inject_ssh_key, StepRunner};
use super::Guest;
use crate::base::log::StageLog;
use crate::pipeline::CustomizeStep;
use anyhow::{bail, Context, Result};

pub const USER: &str = "vagrant";

/// Vagrant's insecure RSA public key: hashicorp/vagrant `keys/vagrant.pub.rsa` (the same key
/// as `keys/vagrant.pub` of Debian's vagrant 2.3.4 package). Vagrant before 2.3.8 tries only
/// this one.
pub const INSECURE_RSA_KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTkyrtvp9eWW6A8YVr+kz4TjGYe7gHzIw+niNltGEFHzD8+v1I2YJ6oXevct1YeS0o9HZyN1Q9qgCgzUFtdOKLv6IedplqoPkcmF0aYet2PkEDo3MlTBckFXPITAMzF8dJSIFo9D8HfdOV0IAdx4O7PtixWKn5y2hMNG0zQPyUecp4pzC6kivAIhyfHilFR61RGL+GPXQ2MWZWFYbAGjyiYJnAmCP3NOTd0jMZEnDkbUvxhMmBYSdETk1rRgm+R4LOzFUGaHqHDLKLX+FIPKcF96hrucXzcWyLbIbEgE98OHlnVYCzRdK8jlqm8tehUc9c9WhQ== vagrant insecure public key";

/// Vagrant's insecure ed25519 public key: hashicorp/vagrant `keys/vagrant.pub.ed25519`,
/// which Vagrant 2.3.8 and later offer first.
pub const INSECURE_ED25519_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN1YdxBpNlzxDqfJyw/QKow1F+wvG9hXGoqiysfJOn5Y vagrant insecure public key";

const SUDOERS_FILE: &str = "/etc/sudoers.d/vagrant";
const SUDOERS: &str = "# The vagrant account of a Vagrant base box: sudo without a password or a tty.\n\
                       Defaults:vagrant !requiretty\n\
                       vagrant ALL=(ALL) NOPASSWD: ALL\n";
const SSHD_DROP_IN: &str = "/etc/ssh/sshd_config.d/10-vagrant.conf";
const USE_DNS: &str = "# Vagrant base box: no reverse lookup of the connecting host.\nUseDNS no\n";

/// Makes the account in the mounted guest: `keys` are the authorized_keys lines; `runner`
/// installs sudo when the guest has none (it needs the appliance's network then).
pub fn make_account(g: &Guest, keys: &[String], runner: &StepRunner, log: &StageLog) -> Result<()> {
    if !["/usr/sbin/sshd", "/usr/bin/sshd", "/sbin/sshd"].iter().any(|b| g.exists(b).unwrap_or(false)) {
        bail!("the image has no SSH server (no /usr/sbin/sshd), which Vagrant logs in with: install it first, e.g. a customize stage with install = [\"openssh-server\"]");
    }
    add_user(g, log)?;
    let home = home_of(g, USER)?.context("useradd made no vagrant entry in /etc/passwd")?;
    let authorized = format!("{}/.ssh/authorized_keys", home.trim_end_matches('/'));
    for key in keys {
        let present = g.is_file(&authorized)? && g.read_string(&authorized)?.lines().any(|l| l.trim() == key.trim());
        if !present {
            inject_ssh_key(g, USER, key)?;
        }
    }
    log.line(format!("{authorized}: {} key(s), mode 0600 in a 0700 ~/.ssh", keys.len()));
    set_up_sudo(g, runner, log)?;
    turn_off_use_dns(g, log)?;
    Ok(())
}

fn home_of(g: &Guest, user: &str) -> Result<Option<String>> {
    let passwd = if g.is_file("/etc/passwd")? { g.read_string("/etc/passwd")? } else { String::new() };
    Ok(passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 6 && f[0] == user).then(|| f[5].to_string())
    }))
}

/// `useradd -m -U`, with bash where the guest has it. An existing vagrant user is kept as
/// it is. The new account has no password (`*`: not locked, so sshd still takes its keys
/// with or without PAM); Vagrant logs in with keys only.
fn add_user(g: &Guest, log: &StageLog) -> Result<()> {
    if home_of(g, USER)?.is_some() {
        log.line("user vagrant: exists, kept");
        return Ok(());
    }
    let shell = if g.is_file("/bin/bash")? { "/bin/bash" } else { "/bin/sh" };
    let cmd = format!("useradd -m -U -s {shell} {USER} && usermod -p '*' {USER}");
    log.line(format!("# {cmd}"));
    g.sh(&cmd).context("cannot create the vagrant user (does the guest have useradd?)")?;
    Ok(())
}

/// The sudoers drop-in, checked by the guest's own visudo; sudo is installed first when the
/// guest has none (debootstrap's minbase has none).
fn set_up_sudo(g: &Guest, runner: &StepRunner, log: &StageLog) -> Result<()> {
    let has_sudo = |g: &Guest| -> Result<bool> { Ok(g.exists("/usr/bin/sudo")? || g.exists("/bin/sudo")?) };
    if !has_sudo(g)? {
        log.line("the guest has no sudo: installing it with its package manager");
        runner.apply(&CustomizeStep::Install(vec!["sudo".into()])).context("cannot install sudo in the guest")?;
        if !has_sudo(g)? {
            bail!("installing sudo left no /usr/bin/sudo in the guest");
        }
    }
    if !g.is_file("/etc/sudoers")? {
        bail!("the guest has sudo but no /etc/sudoers");
    }
    let sudoers = g.read_string("/etc/sudoers")?;
    let includes = sudoers.lines().any(|l| {
        let l = l.trim();
        (l.starts_with("#includedir") || l.starts_with("@includedir")) && l.ends_with("/etc/sudoers.d")
    });
    if !includes {
        let mut text = sudoers;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str("#includedir /etc/sudoers.d\n");
        g.write("/etc/sudoers", text.as_bytes())?;
        log.line("/etc/sudoers: added #includedir /etc/sudoers.d");
    }
    g.mkdir_p("/etc/sudoers.d")?;
    g.write(SUDOERS_FILE, SUDOERS.as_bytes())?;
    g.chown(0, 0, SUDOERS_FILE)?;
    g.chmod(0o440, SUDOERS_FILE)?;
    if g.exists("/usr/sbin/visudo")? {
        g.sh(&format!("/usr/sbin/visudo -c -q -f {SUDOERS_FILE}"))
            .with_context(|| format!("the guest's visudo refuses {SUDOERS_FILE}"))?;
    }
    log.line(format!("{SUDOERS_FILE}: NOPASSWD, !requiretty (mode 0440)"));
    Ok(())
}

/// `UseDNS no`: a drop-in where sshd_config includes sshd_config.d (it wins over the main
/// file, whose Include comes first), else the first line of sshd_config (sshd takes the first
/// value it reads; a line at the end could land inside a Match block).
fn turn_off_use_dns(g: &Guest, log: &StageLog) -> Result<()> {
    let main = "/etc/ssh/sshd_config";
    let text = if g.is_file(main)? { g.read_string(main)? } else { String::new() };
    let includes_drop_ins = text.lines().any(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        words.first().is_some_and(|w| w.eq_ignore_ascii_case("include"))
            && words[1..].iter().any(|w| w.contains("sshd_config.d/"))
    });
    if includes_drop_ins {
        g.mkdir_p("/etc/ssh/sshd_config.d")?;
        g.write(SSHD_DROP_IN, USE_DNS.as_bytes())?;
        g.chmod(0o644, SSHD_DROP_IN)?;
        log.line(format!("{SSHD_DROP_IN}: UseDNS no"));
    } else {
        g.write(main, format!("{USE_DNS}{text}").as_bytes())?;
        log.line(format!("{main}: UseDNS no (first line)"));
    }
    Ok(())
}

/// The package of VirtualBox guest additions in the distribution's own archive, where it
/// has one. Debian has none since VirtualBox left it (bookworm included); RHEL and its
/// rebuilds have none either.
pub fn guest_additions_package(distro: &str) -> Option<&'static str> {
    match distro {
        "ubuntu" => Some("virtualbox-guest-utils"),
        "fedora" => Some("virtualbox-guest-additions"),
        _ => None,
    }
}

/// Installs the VirtualBox guest additions where the distribution packages them; says in
/// the log when it does not. Returns whether they were installed.
pub fn install_guest_additions(distro: &str, runner: &StepRunner, log: &StageLog) -> Result<bool> {
    match guest_additions_package(distro) {
        Some(package) => {
            runner
                .apply(&CustomizeStep::Install(vec![package.to_string()]))
                .with_context(|| format!("cannot install the VirtualBox guest additions ({package})"))?;
            log.line(format!("VirtualBox guest additions: installed {package}"));
            Ok(true)
        }
        None => {
            log.line(format!(
                "VirtualBox guest additions: {distro} has no package of them, so the virtualbox box has none \
                 (no vboxsf shared folders)"
            ));
            Ok(false)
        }
    }
}
