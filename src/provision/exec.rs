//! What `pipeline exec` needs beyond the steps: targets as written on the command line, the
//! user's key, the host keys checked against the user's known_hosts, and the host's address
//! as the targets see it (`VIRTER_ACCESS_NETWORK`).

use crate::bad_input;
use crate::vm::ssh::Endpoint;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Parses `HOST`, `USER@HOST`, `HOST:PORT`, `USER@HOST:PORT` (`[v6addr]:PORT`); the user
/// defaults to root and the port to 22. The name is filled in by [`name_targets`].
pub fn parse_target(text: &str) -> Result<Endpoint> {
    let bad = |why: &str| bad_input!("target `{text}`: {why} (write HOST, USER@HOST, HOST:PORT or USER@HOST:PORT)");
    let (user, rest) = match text.rsplit_once('@') {
        Some((u, r)) => (u.to_string(), r),
        None => ("root".to_string(), text),
    };
    if user.is_empty() || user.contains([':', '/', ' ']) {
        return Err(bad("the user name is empty or not a user name"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("an unclosed `[`"))?;
        match after {
            "" => (host.to_string(), None),
            p => (host.to_string(), Some(p.strip_prefix(':').ok_or_else(|| bad("text after `]`"))?)),
        }
    } else if rest.matches(':').count() > 1 {
        // A bare IPv6 address: no port.
        (rest.to_string(), None)
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    if host.is_empty() || host.contains(['/', ' ', '@']) {
        return Err(bad("the host is empty or not a host name"));
    }
    let port = match port {
        None => 22,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| bad("the port is not a number 1-65535"))?,
    };
    Ok(Endpoint { name: String::new(), host, port, user })
}

/// Names targets for steps and containers (`TARGETS`, `ssh -F /etc/ssh/ssh_config.virter
/// NAME`): the host, or `HOST-PORT` when two targets share a host (forwarded ports).
pub fn name_targets(targets: &mut [Endpoint]) {
    let hosts: Vec<String> = targets.iter().map(|t| t.host.clone()).collect();
    for t in targets.iter_mut() {
        let shared = hosts.iter().filter(|h| **h == t.host).count() > 1;
        t.name = if shared { format!("{}-{}", t.host, t.port) } else { t.host.clone() };
    }
}

/// The key to log in with: the given one, else the first of ~/.ssh/id_ed25519, id_ecdsa,
/// id_rsa. (An agent is not enough: rsync and container steps need the key as a file.)
pub fn user_key(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(key) = given {
        if std::fs::File::open(key).is_err() {
            return Err(bad_input!("--ssh-key {}: cannot read the key file", key.display()));
        }
        return Ok(key.to_path_buf());
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|n| home.join(".ssh").join(n))
        .find(|p| std::fs::File::open(p).is_ok())
        .ok_or_else(|| {
            bad_input!(
                "no SSH key: none of ~/.ssh/id_ed25519, id_ecdsa, id_rsa exists; give one with --ssh-key (an unencrypted key file: rsync and container steps use it too)"
            )
        })
}

/// The user's known_hosts: the given file, else ~/.ssh/known_hosts (which may not exist).
pub fn user_known_hosts(given: Option<&Path>) -> PathBuf {
    given.map(Path::to_path_buf).unwrap_or_else(|| {
        std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".ssh").join("known_hosts")
    })
}

/// `SHA256:...` as ssh-keygen prints a key's fingerprint.
fn fingerprint(blob_base64: &str) -> String {
    use base64::Engine;
    let blob = base64::engine::general_purpose::STANDARD.decode(blob_base64).unwrap_or_default();
    let digest = Sha256::digest(blob);
    format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest))
}

/// Checks the host key a session recorded for `target` (in the run's `recorded` known_hosts)
/// against the user's known_hosts, hashed entries included (`ssh-keygen -F`): a key of the
/// same type that differs is an error, as with ssh; a host the file does not know is
/// accepted for this run and reported (the returned note names its fingerprint).
pub fn verify_host_key(target: &Endpoint, recorded: &Path, user_known_hosts: &Path) -> Result<Option<String>> {
    let name = target.known_hosts_name();
    let text = std::fs::read_to_string(recorded).unwrap_or_default();
    let Some((kind, blob)) = text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some(name.as_str()))
            .then(|| (f.next().unwrap_or("").to_string(), f.next().unwrap_or("").to_string()))
    }) else {
        anyhow::bail!("no host key was recorded for {name}");
    };
    let known: Vec<(String, String)> = if user_known_hosts.exists() {
        let out = crate::base::command::output(
            Command::new("ssh-keygen").arg("-F").arg(&name).arg("-f").arg(user_known_hosts),
            "openssh-client",
        )
        .with_context(|| format!("cannot read {}", user_known_hosts.display()))?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // A marker (@cert-authority, @revoked) shifts the fields; such lines are not plain keys.
                (f.len() >= 3 && !f[0].starts_with('@')).then(|| (f[1].to_string(), f[2].to_string()))
            })
            .collect()
    } else {
        Vec::new()
    };
    if known.iter().any(|(k, b)| *k == kind && *b == blob) {
        return Ok(None);
    }
    if known.iter().any(|(k, _)| *k == kind) {
        anyhow::bail!(
            "the host key of {} ({name}: {kind} {}) differs from the one in {}: someone may be in between, or the machine was reinstalled; check it, then fix the entry (ssh-keygen -R '{name}')",
            target.name,
            fingerprint(&blob),
            user_known_hosts.display()
        );
    }
    Ok(Some(format!(
        "{} ({name}) is not in {}; trusting its host key for this run: {kind} {}",
        target.name,
        user_known_hosts.display(),
        fingerprint(&blob)
    )))
}

/// `VIRTER_ACCESS_NETWORK` for a target: the host's address towards it with its prefix
/// length (`192.168.122.1/24`, `127.0.0.1/8` for a loopback target). No packet is sent: a
/// UDP socket's `connect` only picks the route.
pub fn access_network(target: &Endpoint) -> String {
    let Some(addr) = (target.host.as_str(), target.port).to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        return String::new();
    };
    let bind = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let Some(local) = UdpSocket::bind(bind).and_then(|s| s.connect(addr).and_then(|_| s.local_addr())).ok() else {
        return String::new();
    };
    let ip = local.ip();
    prefix_of(ip).map(|len| format!("{ip}/{len}")).unwrap_or_else(|| {
        if ip.is_ipv4() {
            format!("{ip}/32")
        } else {
            format!("{ip}/128")
        }
    })
}

/// The prefix length of a local address, from `ip -o addr show`.
fn prefix_of(ip: IpAddr) -> Option<u8> {
    let out = crate::base::command::output(Command::new("ip").args(["-o", "addr", "show"]), "iproute2").ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|line| {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == "inet" || w == "inet6" {
                let (a, len) = words.next()?.split_once('/')?;
                if a.parse::<IpAddr>().ok()? == ip {
                    return len.parse().ok();
                }
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> (String, String, u16) {
        let e = parse_target(text).unwrap();
        (e.user, e.host, e.port)
    }

    #[test]
    fn targets_parse_like_ssh_destinations() {
        assert_eq!(t("web1"), ("root".into(), "web1".into(), 22));
        assert_eq!(t("root@10.0.0.5"), ("root".into(), "10.0.0.5".into(), 22));
        assert_eq!(t("127.0.0.1:2222"), ("root".into(), "127.0.0.1".into(), 2222));
        assert_eq!(t("debian@host:2200"), ("debian".into(), "host".into(), 2200));
        assert_eq!(t("[::1]:2222"), ("root".into(), "::1".into(), 2222));
        assert_eq!(t("u@::1"), ("u".into(), "::1".into(), 22));
        for bad in ["", "@host", "host:", "host:0", "host:99999", "host:x", "[::1", "a b"] {
            let e = parse_target(bad).unwrap_err();
            assert_eq!(crate::base::error::exit_code(&e), 2, "{bad}");
        }
        let mut ts = vec![
            parse_target("127.0.0.1:2222").unwrap(),
            parse_target("127.0.0.1:2223").unwrap(),
            parse_target("web1").unwrap(),
        ];
        name_targets(&mut ts);
        let names: Vec<&str> = ts.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["127.0.0.1-2222", "127.0.0.1-2223", "web1"]);
    }

    #[test]
    fn loopback_targets_are_reached_from_the_loopback_network() {
        let e = Endpoint { name: "l".into(), host: "127.0.0.1".into(), port: 2222, user: "root".into() };
        assert_eq!(access_network(&e), "127.0.0.1/8");
    }

    #[test]
    fn host_keys_are_checked_against_the_users_known_hosts() {
        let d = tempfile::tempdir().unwrap();
        let e = Endpoint { name: "web".into(), host: "127.0.0.1".into(), port: 2222, user: "root".into() };
        let recorded = d.path().join("recorded");
        std::fs::write(
            &recorded,
            "[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOnlyThisKey0000000000000000000000000000000\n",
        )
        .unwrap();
        let user = d.path().join("known_hosts");
        // Unknown host: accepted, with a note.
        let note = verify_host_key(&e, &recorded, &user).unwrap().unwrap();
        assert!(note.contains("trusting") && note.contains("SHA256:"), "{note}");
        // Known and equal: nothing to say.
        std::fs::copy(&recorded, &user).unwrap();
        assert_eq!(verify_host_key(&e, &recorded, &user).unwrap(), None);
        // Known with another key of that type: refused.
        std::fs::write(
            &user,
            "[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAnotherKey000000000000000000000000000000000\n",
        )
        .unwrap();
        let err = verify_host_key(&e, &recorded, &user).unwrap_err();
        assert!(format!("{err}").contains("differs"), "{err}");
    }
}
