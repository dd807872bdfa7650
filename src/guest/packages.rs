//! What a Debian-family guest's own files say about its installed packages beyond what
//! libguestfs lists: the source package (dpkg's status file) and the licences (the
//! machine-readable `/usr/share/doc/PACKAGE/copyright` files, DEP-5). Read through the
//! appliance with the guest's filesystems mounted; no guest code runs. Both are data from the
//! image: bounded, parsed leniently, and a file that cannot be read only leaves a field empty.

use super::{Guest, Package};
use std::collections::HashMap;

/// dpkg's database of installed packages.
const DPKG_STATUS: &str = "/var/lib/dpkg/status";
/// At most this much of the status file is read (a large desktop system's is about 5 MiB).
const STATUS_LIMIT: u64 = 64 << 20;

/// Fills `source` and `licenses` of `packages` from the guest's dpkg status file and
/// copyright files. `scratch` is a host directory for the status file.
pub fn add_debian_details(g: &Guest, packages: &mut [Package], scratch: &std::path::Path) {
    let sources = match read_status(g, scratch) {
        Some(status) => sources(&status),
        None => HashMap::new(),
    };
    let copyrights: std::collections::HashSet<String> =
        g.glob_expand("/usr/share/doc/*/copyright").unwrap_or_default().into_iter().collect();
    for p in packages.iter_mut() {
        if let Some(source) = sources.get(&(p.name.clone(), p.arch.clone())) {
            p.source = Some(source.clone()).filter(|s| s != &p.name);
        }
        let file = format!("/usr/share/doc/{}/copyright", p.name);
        if copyrights.contains(&file) {
            // libguestfs refuses a file larger than its message limit (4 MiB): bounded.
            if let Ok(text) = g.read_file(&file) {
                p.licenses = dep5_licenses(&String::from_utf8_lossy(&text));
            }
        }
    }
}

fn read_status(g: &Guest, scratch: &std::path::Path) -> Option<String> {
    use std::io::Read;
    let local = scratch.join("dpkg-status");
    g.download(DPKG_STATUS, &local).ok()?;
    let mut text = String::new();
    std::fs::File::open(&local).ok()?.take(STATUS_LIMIT).read_to_string(&mut text).ok()?;
    let _ = std::fs::remove_file(&local);
    Some(text)
}

/// (package, architecture) → source package name, for installed packages whose stanza names
/// one (`Source: NAME` or `Source: NAME (VERSION)`); a package without a `Source:` field is
/// its own source.
fn sources(status: &str) -> HashMap<(String, String), String> {
    let mut out = HashMap::new();
    for stanza in status.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(str::trim))
        };
        let (Some(package), Some(arch)) = (field("Package"), field("Architecture")) else { continue };
        if !field("Status").is_some_and(|s| s.ends_with(" installed")) {
            continue;
        }
        let source = field("Source").and_then(|s| s.split_whitespace().next()).unwrap_or(package);
        out.insert((package.to_string(), arch.to_string()), source.to_string());
    }
    out
}

/// The `License:` names of a DEP-5 copyright file (its first line is `Format: ...` naming
/// the copyright-format specification), each once, in the order they appear; nothing for a
/// free-form file.
pub fn dep5_licenses(text: &str) -> Vec<String> {
    let first = text.lines().next().unwrap_or_default();
    if !(first.starts_with("Format:") && first.contains("copyright-format")) {
        return Vec::new();
    }
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let Some(name) = line.strip_prefix("License:").map(str::trim) else { continue };
        if !name.is_empty() && name.len() <= 200 && !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_come_from_installed_stanzas_and_default_to_the_package() {
        let status = "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc\nVersion: 2.36-9\n\n\
                      Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b2\n\n\
                      Package: libssl3\nStatus: install ok installed\nArchitecture: amd64\nSource: openssl (3.0.15-1~deb12u1)\n\n\
                      Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nSource: other\n";
        let s = sources(status);
        assert_eq!(s[&("libc6".into(), "amd64".into())], "glibc");
        assert_eq!(s[&("bash".into(), "amd64".into())], "bash");
        assert_eq!(s[&("libssl3".into(), "amd64".into())], "openssl");
        assert!(!s.contains_key(&("gone".into(), "amd64".into())), "only installed packages");
    }

    #[test]
    fn licences_are_read_from_machine_readable_copyright_files_only() {
        let dep5 =
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: bash\n\n\
                    Files: *\nCopyright: 1987-2022 Free Software Foundation, Inc.\nLicense: GPL-3+\n\n\
                    Files: lib/glob/*\nLicense: GPL-3+\n\nFiles: support/*\nLicense: GPL-2+ or Artistic\n\n\
                    License: GPL-3+\n This program is free software...\n";
        assert_eq!(dep5_licenses(dep5), vec!["GPL-3+", "GPL-2+ or Artistic"]);
        assert!(dep5_licenses("This is the Debian prepackaged version of zlib.\nLicense: zlib\n").is_empty());
    }
}
