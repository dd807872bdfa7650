//! The package sources a guest names (apt's sources.list and deb822 `.sources`, dnf/yum's
//! `.repo` files), read through libguestfs, as upstreams whose state keys a layer that
//! installed or updated packages.

use super::Guest;
use crate::upstream::{Client, States, Upstream};
use anyhow::Result;
use sha2::{Digest, Sha256};

/// Every enabled `deb` source in one-line format: (URI, suite). `deb-src` is not installed
/// from, so it is not an input.
pub fn parse_sources_list(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut rest: Vec<&str> = words.collect();
        // Options: `[arch=amd64 signed-by=...]`, possibly spread over several words.
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let close = rest.iter().position(|w| w.ends_with(']')).unwrap_or(rest.len() - 1);
            rest.drain(..=close);
        }
        if let [uri, suite, ..] = rest.as_slice() {
            out.push((uri.to_string(), suite.to_string()));
        }
    }
    out
}

/// Every enabled `deb` source in deb822 format (`.sources`): each URI with each suite.
pub fn parse_deb822(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: std::collections::HashMap<String, String> = Default::default();
        let mut last: Option<String> = None;
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with(' ') || line.starts_with('\t') {
                // A continuation line (a multi-line Signed-By key, for one).
                if let Some(v) = last.as_ref().and_then(|k| fields.get_mut(k)) {
                    v.push(' ');
                    v.push_str(line.trim());
                }
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                fields.insert(k.clone(), v.trim().to_string());
                last = Some(k);
            }
        }
        let has = |k: &str, word: &str| fields.get(k).is_some_and(|v| v.split_whitespace().any(|w| w == word));
        if !has("types", "deb") || fields.get("enabled").is_some_and(|v| v.eq_ignore_ascii_case("no")) {
            continue;
        }
        let words = |k: &str| fields.get(k).map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>());
        for uri in words("uris").unwrap_or_default() {
            for suite in words("suites").unwrap_or_default() {
                out.push((uri.clone(), suite));
            }
        }
    }
    out
}

/// Every enabled repository's `baseurl` in a `.repo` file (the first, when several are
/// given). Repositories reached only through `metalink` or `mirrorlist` name no fixed
/// server and are left out: the caller logs them.
pub fn parse_repo_file(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut baseurls, mut untracked) = (Vec::new(), Vec::new());
    let mut section: Option<(String, Option<String>, bool)> = None;
    let mut flush = |s: Option<(String, Option<String>, bool)>| {
        if let Some((name, baseurl, enabled)) = s {
            match (enabled, baseurl) {
                (false, _) => {}
                (true, Some(b)) => baseurls.push(b),
                (true, None) => untracked.push(name),
            }
        }
    };
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            flush(section.take());
            section = Some((name.to_string(), None, true));
        } else if let (Some((k, v)), Some(s)) = (line.split_once('='), section.as_mut()) {
            match k.trim() {
                "baseurl" if s.1.is_none() => s.1 = v.split_whitespace().next().map(str::to_string),
                "enabled" => s.2 = v.trim() != "0",
                _ => {}
            }
        }
    }
    flush(section);
    (baseurls, untracked)
}

/// apt's name for a downloaded index under /var/lib/apt/lists (`URItoFileName`): the URI
/// without scheme and credentials, special characters %-quoted, `/` turned into `_`.
pub fn apt_list_file_name(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = match rest.split_once('/') {
        Some((authority, path)) => {
            format!("{}/{path}", authority.rsplit_once('@').map(|(_, host)| host).unwrap_or(authority))
        }
        None => rest.to_string(),
    };
    let mut out = String::new();
    for c in rest.chars() {
        if "\\|{}[]<>\"^~_=!@#$%^&*".contains(c) || c.is_ascii_control() || c == ' ' || !c.is_ascii() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02x}"));
            }
        } else if c == '/' {
            out.push('_');
        } else {
            out.push(c);
        }
    }
    out
}

/// The guest's apt sources, read from its files.
pub fn apt_sources(g: &Guest) -> Result<Vec<Upstream>> {
    let mut pairs = Vec::new();
    if g.is_file("/etc/apt/sources.list")? {
        pairs.extend(parse_sources_list(&g.read_string("/etc/apt/sources.list")?));
    }
    if g.is_dir("/etc/apt/sources.list.d")? {
        for name in g.ls("/etc/apt/sources.list.d")? {
            let path = format!("/etc/apt/sources.list.d/{name}");
            if name.ends_with(".list") && g.is_file(&path)? {
                pairs.extend(parse_sources_list(&g.read_string(&path)?));
            } else if name.ends_with(".sources") && g.is_file(&path)? {
                pairs.extend(parse_deb822(&g.read_string(&path)?));
            }
        }
    }
    let mut out: Vec<Upstream> =
        pairs.into_iter().map(|(mirror, suite)| Upstream::AptSuite { mirror, suite }).collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// The guest's dnf/yum repositories with a fixed `baseurl`, and the names of those without.
fn rpm_sources(g: &Guest) -> Result<(Vec<Upstream>, Vec<String>)> {
    let (mut found, mut untracked) = (Vec::new(), Vec::new());
    if g.is_dir("/etc/yum.repos.d")? {
        for name in g.ls("/etc/yum.repos.d")? {
            let path = format!("/etc/yum.repos.d/{name}");
            if name.ends_with(".repo") && g.is_file(&path)? {
                let (b, u) = parse_repo_file(&g.read_string(&path)?);
                found.extend(b.into_iter().map(|baseurl| Upstream::RpmRepo { baseurl }));
                untracked.extend(u);
            }
        }
    }
    found.sort();
    found.dedup();
    Ok((found, untracked))
}

/// The states of the guest's dnf/yum repositories, probed on the host (`None`: offline, the
/// states are unknown), and the repositories that name no fixed server. dnf keeps no copy
/// as plain as apt's, so call this before the packages are installed: a repository that
/// moves on during the run then makes the record older than the packages, never newer.
pub fn rpm_states(g: &Guest, client: Option<&Client>) -> Result<(States, Vec<String>)> {
    let (sources, untracked) = rpm_sources(g)?;
    let mut out = Vec::new();
    for source in sources {
        let state = probe_or_unknown(&source, client)?;
        out.push((source, state));
    }
    Ok((out, untracked))
}

fn probe_or_unknown(source: &Upstream, client: Option<&Client>) -> Result<String> {
    match client {
        Some(c) => source.probe(c),
        None => Ok("unknown (offline, never checked)".to_string()),
    }
}

/// The states of the guest's apt sources as the guest's own apt last saw them: the digest
/// of each release file under /var/lib/apt/lists, which is the exact file apt installed
/// from, so a mirror that moves on during the run cannot make the record newer than the
/// packages. A suite with no release file there (apt never updated it) is probed on the host
/// (`client`; `None`: offline, its state is unknown).
pub fn apt_states(g: &Guest, sources: &[Upstream], client: Option<&Client>) -> Result<States> {
    let mut out = Vec::new();
    for source in sources {
        let mut state = None;
        for url in source.release_urls() {
            let path = format!("/var/lib/apt/lists/{}", apt_list_file_name(&url));
            if g.is_file(&path)? {
                let name = url.rsplit('/').next().unwrap_or_default().to_string();
                state = Some(format!("{name} sha256:{}", hex::encode(Sha256::digest(g.read_file(&path)?))));
                break;
            }
        }
        let state = match state {
            Some(s) => s,
            None => probe_or_unknown(source, client)?,
        };
        out.push((source.clone(), state));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_sources_are_read_with_options_and_comments() {
        let text = "# comment\n\
                    deb http://deb.debian.org/debian bookworm main\n\
                    deb-src http://deb.debian.org/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://security.debian.org/debian-security bookworm-security main # x\n\
                    deb [trusted=yes] file:/srv/repo ./\n\
                    #deb http://old bookworm main\n";
        assert_eq!(
            parse_sources_list(text),
            [
                ("http://deb.debian.org/debian".to_string(), "bookworm".to_string()),
                ("http://security.debian.org/debian-security".into(), "bookworm-security".into()),
                ("file:/srv/repo".into(), "./".into()),
            ]
        );
    }

    #[test]
    fn deb822_sources_expand_uris_and_suites() {
        let text = "Types: deb deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n\
                    Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                    Types: deb\nURIs: http://security.debian.org/debian-security\nSuites: bookworm-security\n\
                    Enabled: no\n\nTypes: deb-src\nURIs: http://src\nSuites: x\n";
        assert_eq!(
            parse_deb822(text),
            [
                ("http://deb.debian.org/debian".to_string(), "bookworm".to_string()),
                ("http://deb.debian.org/debian".into(), "bookworm-updates".into()),
            ]
        );
    }

    #[test]
    fn repo_files_give_baseurls_and_name_the_rest() {
        let text = "[baseos]\nname=BaseOS\nbaseurl=http://m/9/BaseOS/x86_64/os/ http://n/\nenabled=1\n\n\
                    [appstream]\nmirrorlist=https://mirrors/list\n\n[debug]\nbaseurl=http://d/\nenabled=0\n";
        assert_eq!(parse_repo_file(text), (vec!["http://m/9/BaseOS/x86_64/os/".to_string()], vec!["appstream".into()]));
    }

    #[test]
    fn list_file_names_match_apt() {
        // As apt names them on a Debian 12 system.
        assert_eq!(
            apt_list_file_name("http://deb.debian.org/debian/dists/bookworm/InRelease"),
            "deb.debian.org_debian_dists_bookworm_InRelease"
        );
        assert_eq!(
            apt_list_file_name("http://user:pw@127.0.0.1:8080/debian/dists/bookworm-updates/InRelease"),
            "127.0.0.1:8080_debian_dists_bookworm-updates_InRelease"
        );
        assert_eq!(apt_list_file_name("http://m/a_b/dists/x/InRelease"), "m_a%5fb_dists_x_InRelease");
    }
}
