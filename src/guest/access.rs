//! Root access for a run without leaving traces, two ways.
//!
//! First choice, no appliance: the key goes in as the systemd credential
//! `ssh.authorized_keys.root` (see [`credential`]); systemd >= 252 (Debian 12 on) creates
//! root's `.ssh/authorized_keys` from it at boot when root has none. The file made this way
//! held nothing before, so taking the key out is removing it again ([`CredentialKey`]).
//!
//! Otherwise (sshd refuses the key: root already has keys, an older systemd, sshd's
//! settings): in the appliance launch that prepares the boot, check that the image's sshd would let root in with a key (else say what to change,
//! before anything boots), authorise the run's ephemeral key for root and remember exactly
//! what `/root/.ssh` held; after the work, take the key out again.
//!
//! The key is taken out over SSH, just before the clean poweroff, rather than offline after
//! it: an offline edit needs a second appliance launch (~20 s under TCG, a third of the
//! boot), while the guest's own view of the file after a clean poweroff is what the disk
//! holds. The removal script verifies in the guest that the key is gone; a stage that fails
//! before it commits no layer at all, and a guest that has to be killed fails the stage.
//! What was there is restored byte for byte with mode, owner and mtime when no step changed
//! the file; when a step did (it added its own keys), only the run's line is removed.

use super::Guest;
use anyhow::{bail, Context, Result};

/// The systemd credential that makes root's authorized_keys hold `public_line` (and nothing
/// else) when root has none: systemd's tmpfiles.d/provision.conf writes it
/// (`f^ /root/.ssh/authorized_keys`, creating `/root/.ssh` with mode 0700 if missing).
pub fn credential(public_line: &str) -> (String, Vec<u8>) {
    (CREDENTIAL.to_string(), format!("{}\n", public_line.trim()).into_bytes())
}

const CREDENTIAL: &str = "ssh.authorized_keys.root";
const CREDENTIAL_DIR: &str = "/root/.ssh";
const CREDENTIAL_FILE: &str = "/root/.ssh/authorized_keys";

/// The run's key, let in by [`credential`] at this boot.
#[derive(Debug, Clone)]
pub struct CredentialKey {
    public_line: String,
}

impl CredentialKey {
    pub fn new(public_line: &str) -> CredentialKey {
        CredentialKey { public_line: public_line.trim().to_string() }
    }

    /// A script for the booted guest (run as root) that takes the key out and fails if it is
    /// still there afterwards. The file did not exist before this boot (else tmpfiles would
    /// not have written the fresh key): when it still holds only the key it is removed, and
    /// `/root/.ssh` too when it is empty and was born this boot (its birth time at or after
    /// the boot time; a filesystem that keeps no birth time keeps the directory). A step that
    /// added keys of its own keeps them; only the run's line goes.
    pub fn removal_script(&self) -> String {
        self.script_for(CREDENTIAL_DIR, CREDENTIAL_FILE)
    }

    fn script_for(&self, dir: &str, file: &str) -> String {
        use sha2::{Digest, Sha256};
        let q = crate::vm::ssh::shell_quote;
        let written = credential(&self.public_line).1;
        let mut s = String::from("set -e\n");
        s += &format!("F={}\nD={}\nK={}\n", q(file), q(dir), q(&self.public_line));
        s += &format!(
            "if [ -f \"$F\" ] && [ \"$(sha256sum < \"$F\" | cut -d ' ' -f 1)\" = {} ]; then\n  rm -f \"$F\"\n",
            q(&hex::encode(Sha256::digest(&written)))
        );
        s += "elif [ -f \"$F\" ]; then\n";
        s += "  grep -vxF -e \"$K\" \"$F\" > \"$F.virt-pipeline\" || true\n";
        s += "  cat \"$F.virt-pipeline\" > \"$F\"\n  rm -f \"$F.virt-pipeline\"\nfi\n";
        s += "if [ -d \"$D\" ] && [ -z \"$(ls -A \"$D\")\" ]; then\n";
        s += "  born=$(stat -c %W \"$D\")\n  booted=$(awk '$1 == \"btime\" { print $2 }' /proc/stat)\n";
        s +=
            "  if [ \"$born\" -gt 0 ] 2>/dev/null && [ \"$born\" -ge \"$booted\" ]; then\n    rmdir \"$D\"\n  fi\nfi\n";
        s += "if [ -f \"$F\" ] && grep -qxF -e \"$K\" \"$F\"; then\n  echo \"the run's key is still in $F\" >&2\n  exit 1\nfi\nsync\n";
        s
    }

    /// Takes the key out through the session (over SSH, like [`RootAccess::remove`]).
    pub fn remove(&self, session: &crate::vm::ssh::Session, log: &crate::base::log::StageLog) -> Result<()> {
        run_removal(session, &self.removal_script(), CREDENTIAL_FILE, log)
    }
}

/// What `/root/.ssh` held before the run's key was added.
#[derive(Debug, Clone)]
pub struct RootAccess {
    public_line: String,
    dir: String,
    file: String,
    dir_before: Option<Meta>,
    file_before: Option<(Vec<u8>, Meta)>,
    /// What the file held right after the key was added.
    written: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    uid: i64,
    gid: i64,
    mtime: (i64, i64),
}

fn meta(g: &Guest, path: &str) -> Result<Meta> {
    let mode = g.lstat_mode(path)? & 0o7777;
    let (uid, gid) = g.owner(path)?;
    Ok(Meta { mode, uid, gid, mtime: g.mtime(path)? })
}

/// With the guest's filesystems mounted read-write: checks that sshd would accept `public_line`
/// for root, then authorises it. Returns what to restore afterwards.
pub fn authorise_root(g: &Guest, public_line: &str) -> Result<RootAccess> {
    check_sshd(g)?;
    let home = root_home(g)?;
    let dir = format!("{}/.ssh", home.trim_end_matches('/'));
    let file = format!("{dir}/authorized_keys");
    let dir_before = if g.exists(&dir)? {
        if !g.is_dir(&dir)? {
            bail!(
                "{dir} in the image is not a directory (a symlink?); root's SSH keys cannot be authorised there safely"
            );
        }
        Some(meta(g, &dir)?)
    } else {
        None
    };
    let file_before = if g.exists(&file)? {
        if !g.is_file(&file)? {
            bail!("{file} in the image is not a regular file (a symlink?); the run's key cannot be added and removed safely");
        }
        Some((g.read_file(&file)?, meta(g, &file)?))
    } else {
        None
    };
    let mut written = file_before.as_ref().map(|(content, _)| content.clone()).unwrap_or_default();
    if !written.is_empty() && !written.ends_with(b"\n") {
        written.push(b'\n');
    }
    written.extend_from_slice(public_line.trim().as_bytes());
    written.push(b'\n');
    if dir_before.is_none() {
        g.mkdir_p(&dir)?;
        g.chmod(0o700, &dir)?;
        g.chown(0, 0, &dir)?;
    }
    g.write(&file, &written)?;
    if file_before.is_none() {
        g.chmod(0o600, &file)?;
        g.chown(0, 0, &file)?;
    }
    Ok(RootAccess { public_line: public_line.trim().to_string(), dir, file, dir_before, file_before, written })
}

impl RootAccess {
    pub fn authorized_keys_path(&self) -> &str {
        &self.file
    }

    /// A script for the booted guest (run as root) that takes the key out and fails if it is
    /// still there afterwards.
    pub fn removal_script(&self) -> String {
        use sha2::{Digest, Sha256};
        let q = crate::vm::ssh::shell_quote;
        let touch = |m: &Meta, var: &str| format!("touch -m -d @{}.{:09} \"${var}\"\n", m.mtime.0, m.mtime.1);
        let mut s = String::from("set -e\n");
        s += &format!("F={}\nD={}\nK={}\n", q(&self.file), q(&self.dir), q(&self.public_line));
        s += &format!(
            "if [ -f \"$F\" ] && [ \"$(sha256sum < \"$F\" | cut -d ' ' -f 1)\" = {} ]; then\n",
            q(&hex::encode(Sha256::digest(&self.written)))
        );
        // Untouched since the key was added: put back exactly what was there.
        match &self.file_before {
            Some((content, m)) => {
                use base64::Engine;
                let b64 = base64::engine::general_purpose::STANDARD.encode(content);
                s += &format!("  printf '%s' {} | base64 -d > \"$F\"\n", q(&b64));
                s += &format!("  chown {}:{} \"$F\"\n  chmod {:o} \"$F\"\n  ", m.uid, m.gid, m.mode);
                s += &touch(m, "F");
            }
            None => s += "  rm -f \"$F\"\n",
        }
        match &self.dir_before {
            Some(m) => s += &format!("  chmod {:o} \"$D\"\n  {}", m.mode, touch(m, "D")),
            None => s += "  rmdir \"$D\" 2>/dev/null || true\n",
        }
        // A step changed the file too: keep its changes, take out only the run's line.
        s += "elif [ -f \"$F\" ]; then\n";
        s += "  grep -vxF -e \"$K\" \"$F\" > \"$F.virt-pipeline\" || true\n";
        s += "  cat \"$F.virt-pipeline\" > \"$F\"\n  rm -f \"$F.virt-pipeline\"\nfi\n";
        s += "if [ -f \"$F\" ] && grep -qxF -e \"$K\" \"$F\"; then\n  echo \"the run's key is still in $F\" >&2\n  exit 1\nfi\nsync\n";
        s
    }

    /// Takes the key out through the session (see the module's comment for why over SSH).
    pub fn remove(&self, session: &crate::vm::ssh::Session, log: &crate::base::log::StageLog) -> Result<()> {
        run_removal(session, &self.removal_script(), &self.file, log)
    }
}

fn run_removal(
    session: &crate::vm::ssh::Session,
    script: &str,
    file: &str,
    log: &crate::base::log::StageLog,
) -> Result<()> {
    let mut output = String::new();
    let status = session
        .run_script(script, &Default::default(), &mut |line| {
            log.line(format!("key removal: {line}"));
            output.push_str(line);
            output.push('\n');
        })
        .context("cannot take the run's SSH key out of the guest")?;
    if status != 0 {
        bail!("taking the run's SSH key out of {file} failed (exit {status}): {}", output.trim());
    }
    Ok(())
}

fn root_home(g: &Guest) -> Result<String> {
    let passwd = if g.is_file("/etc/passwd")? { g.read_string("/etc/passwd")? } else { String::new() };
    Ok(passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 6 && f[0] == "root" && f[5].starts_with('/')).then(|| f[5].to_string())
        })
        .unwrap_or_else(|| "/root".to_string()))
}

/// The image's sshd settings that decide whether root may log in with the run's key.
#[derive(Debug, Default, PartialEq)]
struct SshdSettings {
    /// (value, file it came from): sshd takes the first value it reads.
    permit_root_login: Option<(String, String)>,
    pubkey_authentication: Option<(String, String)>,
    authorized_keys_file: Option<(Vec<String>, String)>,
    pubkey_accepted_algorithms: Option<(String, String)>,
    allow_users: Vec<String>,
    deny_users: Vec<String>,
}

const SSHD_CONFIG: &str = "/etc/ssh/sshd_config";

/// Fails before anything boots when the image has no sshd or its configuration would refuse
/// root with an ed25519 key, saying what to change.
pub fn check_sshd(g: &Guest) -> Result<()> {
    let binaries = ["/usr/sbin/sshd", "/usr/bin/sshd", "/sbin/sshd"];
    let mut found = false;
    for b in binaries {
        found |= g.exists(b)?;
    }
    if !found {
        bail!("the image has no SSH server (no /usr/sbin/sshd): install it first, e.g. a customize stage with install = [\"openssh-server\"]");
    }
    let mut settings = SshdSettings::default();
    if g.is_file(SSHD_CONFIG)? {
        read_config(g, SSHD_CONFIG, &mut settings, 0)?;
    }
    judge(&settings)
}

fn read_config(g: &Guest, path: &str, settings: &mut SshdSettings, depth: usize) -> Result<()> {
    if depth > 16 {
        bail!("{path}: Include nested too deeply");
    }
    let text = g.read_string(path)?;
    let mut in_match = false;
    for line in text.lines() {
        let words = split_words(line);
        let Some((keyword, args)) = words.split_first() else { continue };
        let keyword = keyword.to_ascii_lowercase();
        if keyword == "match" {
            // Settings under Match apply to some connections only; `Match all` ends that.
            in_match = !args.iter().all(|a| a.eq_ignore_ascii_case("all"));
            continue;
        }
        if in_match {
            continue;
        }
        let first = || Some((args.first().cloned().unwrap_or_default().to_ascii_lowercase(), path.to_string()));
        match keyword.as_str() {
            "include" => {
                for pattern in args {
                    let pattern =
                        if pattern.starts_with('/') { pattern.clone() } else { format!("/etc/ssh/{pattern}") };
                    let mut files = g.glob_expand(&pattern)?;
                    files.sort();
                    for f in files {
                        if g.is_file(&f)? {
                            read_config(g, &f, settings, depth + 1)?;
                        }
                    }
                }
            }
            "permitrootlogin" if settings.permit_root_login.is_none() => settings.permit_root_login = first(),
            "pubkeyauthentication" if settings.pubkey_authentication.is_none() => {
                settings.pubkey_authentication = first()
            }
            "authorizedkeysfile" if settings.authorized_keys_file.is_none() => {
                settings.authorized_keys_file = Some((args.to_vec(), path.to_string()))
            }
            "pubkeyacceptedalgorithms" | "pubkeyacceptedkeytypes" if settings.pubkey_accepted_algorithms.is_none() => {
                settings.pubkey_accepted_algorithms = Some((args.join(","), path.to_string()))
            }
            "allowusers" => settings.allow_users.extend(args.iter().cloned()),
            "denyusers" => settings.deny_users.extend(args.iter().cloned()),
            _ => {}
        }
    }
    Ok(())
}

/// sshd_config's word splitting: whitespace or one `=` between keyword and arguments,
/// double quotes around arguments, `#` starting a comment.
fn split_words(line: &str) -> Vec<String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Vec::new();
    }
    let (keyword, rest) = match line.find(|c: char| c.is_whitespace() || c == '=') {
        Some(i) => (&line[..i], line[i..].trim_start().trim_start_matches('=').trim_start()),
        None => (line, ""),
    };
    let mut words = vec![keyword.to_string()];
    let mut current = String::new();
    let mut quoted = false;
    let mut has_word = false;
    for c in rest.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                has_word = true;
            }
            '#' if !quoted && !has_word => break,
            c if c.is_whitespace() && !quoted => {
                if has_word {
                    words.push(std::mem::take(&mut current));
                    has_word = false;
                }
            }
            c => {
                current.push(c);
                has_word = true;
            }
        }
    }
    if has_word {
        words.push(current);
    }
    words
}

fn judge(s: &SshdSettings) -> Result<()> {
    let change = "change it in the image (for example a customize stage before this one with run_command = \"sed -i ... /etc/ssh/sshd_config\", or write a file under /etc/ssh/sshd_config.d/ that sets it first)";
    if let Some((value, file)) = &s.permit_root_login {
        if value == "no" || value == "forced-commands-only" {
            bail!("the image's sshd refuses root logins with a key (`PermitRootLogin {value}` in {file}); the stage needs `PermitRootLogin prohibit-password` (or `yes`): {change}");
        }
    }
    if let Some((value, file)) = &s.pubkey_authentication {
        if value == "no" {
            bail!("the image's sshd has public-key logins turned off (`PubkeyAuthentication no` in {file}); the stage needs `PubkeyAuthentication yes`: {change}");
        }
    }
    if let Some((files, file)) = &s.authorized_keys_file {
        let reads_home = files.iter().any(|f| {
            matches!(f.as_str(), ".ssh/authorized_keys" | "%h/.ssh/authorized_keys" | "/root/.ssh/authorized_keys")
        });
        if !reads_home {
            bail!("the image's sshd does not read ~/.ssh/authorized_keys (`AuthorizedKeysFile {}` in {file}); the stage needs `.ssh/authorized_keys` among them: {change}", files.join(" "));
        }
    }
    if let Some((value, file)) = &s.pubkey_accepted_algorithms {
        let refuses = if let Some(removed) = value.strip_prefix('-') {
            removed.split(',').any(|p| wildcard(p, "ssh-ed25519"))
        } else if value.starts_with('+') || value.starts_with('^') {
            false
        } else {
            !value.split(',').any(|p| wildcard(p, "ssh-ed25519"))
        };
        if refuses {
            bail!("the image's sshd does not accept ed25519 keys (`PubkeyAcceptedAlgorithms {value}` in {file}); the stage needs ssh-ed25519 accepted: {change}");
        }
    }
    let user_pattern = |p: &String| wildcard(p.split('@').next().unwrap_or(p), "root");
    if s.deny_users.iter().any(user_pattern) {
        bail!(
            "the image's sshd denies root (`DenyUsers {}`); the stage logs in as root: {change}",
            s.deny_users.join(" ")
        );
    }
    if !s.allow_users.is_empty() && !s.allow_users.iter().any(user_pattern) {
        bail!(
            "the image's sshd allows only other users (`AllowUsers {}`); the stage logs in as root: {change}",
            s.allow_users.join(" ")
        );
    }
    Ok(())
}

/// ssh's patterns: `*` any run of characters, `?` one.
fn wildcard(pattern: &str, text: &str) -> bool {
    fn m(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|i| m(rest, &t[i..])),
            Some(('?', rest)) => !t.is_empty() && m(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && m(rest, &t[1..]),
        }
    }
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    m(&p, &t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(lines: &[(&str, &str)]) -> SshdSettings {
        let mut s = SshdSettings::default();
        for (keyword, value) in lines {
            let v = || Some((value.to_string(), "/etc/ssh/sshd_config".to_string()));
            match *keyword {
                "PermitRootLogin" => s.permit_root_login = v(),
                "PubkeyAuthentication" => s.pubkey_authentication = v(),
                "AuthorizedKeysFile" => {
                    s.authorized_keys_file =
                        Some((value.split(' ').map(String::from).collect(), "/etc/ssh/sshd_config".into()))
                }
                "PubkeyAcceptedAlgorithms" => s.pubkey_accepted_algorithms = v(),
                "AllowUsers" => s.allow_users = value.split(' ').map(String::from).collect(),
                "DenyUsers" => s.deny_users = value.split(' ').map(String::from).collect(),
                _ => unreachable!(),
            }
        }
        s
    }

    #[test]
    fn refusals_say_what_to_change() {
        let err = judge(&settings(&[("PermitRootLogin", "no")])).unwrap_err().to_string();
        assert!(err.contains("PermitRootLogin no") && err.contains("prohibit-password"), "{err}");
        assert!(judge(&settings(&[("PubkeyAuthentication", "no")]))
            .unwrap_err()
            .to_string()
            .contains("PubkeyAuthentication yes"));
        assert!(judge(&settings(&[("AuthorizedKeysFile", "/etc/ssh/keys/%u")])).is_err());
        assert!(judge(&settings(&[("PubkeyAcceptedAlgorithms", "rsa-sha2-512")])).is_err());
        assert!(judge(&settings(&[("PubkeyAcceptedAlgorithms", "-ssh-ed*")])).is_err());
        assert!(judge(&settings(&[("DenyUsers", "ro*")])).is_err());
        assert!(judge(&settings(&[("AllowUsers", "alice bob@10.*")])).is_err());
    }

    #[test]
    fn usual_configurations_pass() {
        assert!(judge(&SshdSettings::default()).is_ok());
        assert!(judge(&settings(&[("PermitRootLogin", "prohibit-password")])).is_ok());
        assert!(judge(&settings(&[("PermitRootLogin", "without-password")])).is_ok());
        assert!(judge(&settings(&[("AuthorizedKeysFile", ".ssh/authorized_keys .ssh/authorized_keys2")])).is_ok());
        assert!(judge(&settings(&[("PubkeyAcceptedAlgorithms", "+ssh-rsa")])).is_ok());
        assert!(judge(&settings(&[("PubkeyAcceptedAlgorithms", "ssh-ed25519,rsa-sha2-512")])).is_ok());
        assert!(judge(&settings(&[("AllowUsers", "alice root@*")])).is_ok());
    }

    #[test]
    fn words_are_split_like_sshd() {
        assert_eq!(split_words("PermitRootLogin=no"), ["PermitRootLogin", "no"]);
        assert_eq!(split_words("  PermitRootLogin   no # comment"), ["PermitRootLogin", "no"]);
        assert_eq!(split_words("AuthorizedKeysFile \"/a b\" .ssh/k"), ["AuthorizedKeysFile", "/a b", ".ssh/k"]);
        assert!(split_words("# PermitRootLogin no").is_empty());
    }

    /// The removal script, run by a real sh on a directory standing in for /root/.ssh.
    #[test]
    fn removal_restores_exactly_or_removes_only_the_key() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample virt-pipeline-abc";
        let dir = tempfile::tempdir().unwrap();
        let ssh = dir.path().join(".ssh");
        std::fs::create_dir(&ssh).unwrap();
        let file = ssh.join("authorized_keys");
        let original = b"ssh-rsa AAAAold user@host".to_vec(); // no final newline
        std::fs::write(&file, &original).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let (uid, gid) =
            (std::fs::metadata(&file).unwrap().uid() as i64, std::fs::metadata(&file).unwrap().gid() as i64);
        let m = Meta { mode: 0o640, uid, gid, mtime: (1_600_000_000, 123_456_789) };
        let mut written = original.clone();
        written.extend_from_slice(format!("\n{key}\n").as_bytes());
        let access = RootAccess {
            public_line: key.into(),
            dir: ssh.display().to_string(),
            file: file.display().to_string(),
            dir_before: Some(Meta { mode: 0o700, ..m }),
            file_before: Some((original.clone(), m)),
            written: written.clone(),
        };
        let run = |script: String| std::process::Command::new("sh").arg("-c").arg(script).status().unwrap();

        // Untouched by the steps: restored byte for byte, with mode and mtime.
        std::fs::write(&file, &written).unwrap();
        assert!(run(access.removal_script()).success());
        assert_eq!(std::fs::read(&file).unwrap(), original);
        let md = std::fs::metadata(&file).unwrap();
        assert_eq!((md.mode() & 0o7777, md.mtime(), md.mtime_nsec()), (0o640, 1_600_000_000, 123_456_789));

        // A step added a key of its own: it stays, the run's goes.
        std::fs::write(&file, format!("{}\n{key}\nssh-ed25519 AAAAstep step@x\n", String::from_utf8_lossy(&original)))
            .unwrap();
        assert!(run(access.removal_script()).success());
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains(key) && text.contains("step@x") && text.contains("AAAAold"), "{text}");

        // Nothing was there before: file and directory go again.
        let fresh =
            RootAccess { dir_before: None, file_before: None, written: format!("{key}\n").into_bytes(), ..access };
        std::fs::remove_file(&file).unwrap();
        std::fs::write(&file, format!("{key}\n")).unwrap();
        assert!(run(fresh.removal_script()).success());
        assert!(!ssh.exists());
    }

    /// The credential's removal script, run by a real sh on a directory standing in for
    /// /root/.ssh.
    #[test]
    fn credential_key_removal_takes_out_what_the_boot_made() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample virt-pipeline-abc";
        let access = CredentialKey::new(key);
        let dir = tempfile::tempdir().unwrap();
        let ssh = dir.path().join(".ssh");
        let file = ssh.join("authorized_keys");
        let script = access.script_for(&ssh.display().to_string(), &file.display().to_string());
        let run = || std::process::Command::new("sh").arg("-c").arg(&script).status().unwrap();

        // Made at this boot (born after /proc/stat's btime) and untouched: both go.
        std::fs::create_dir(&ssh).unwrap();
        std::fs::write(&file, credential(key).1).unwrap();
        assert!(run().success());
        assert!(!ssh.exists(), "the directory made for the key is gone");

        // A step added a key of its own: it stays, the run's goes, the directory stays.
        std::fs::create_dir(&ssh).unwrap();
        std::fs::write(&file, format!("{key}\nssh-ed25519 AAAAstep step@x\n")).unwrap();
        assert!(run().success());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "ssh-ed25519 AAAAstep step@x\n");

        // Something else in the directory: it stays with its directory.
        std::fs::write(&file, credential(key).1).unwrap();
        std::fs::write(ssh.join("config"), "x").unwrap();
        assert!(run().success());
        assert!(!file.exists() && ssh.join("config").exists());
    }

    #[test]
    fn patterns() {
        assert!(wildcard("r*t", "root") && wildcard("r??t", "root") && wildcard("*", "root"));
        assert!(!wildcard("alice", "root") && !wildcard("r?t", "root"));
    }
}
