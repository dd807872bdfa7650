//! Signing and verifying the index with gpgme. GNUPGHOME is honoured (gpgme passes it on to
//! gpg); keys are chosen by fingerprint.

use anyhow::{anyhow, bail, Context as _, Result};
use gpgme::{Context, CreateKeyFlags, ExportMode, Protocol};

fn context() -> Result<Context> {
    let mut ctx = Context::from_protocol(Protocol::OpenPgp).context("cannot start gpgme (is gnupg installed?)")?;
    ctx.set_armor(true);
    Ok(ctx)
}

/// Creates GNUPGHOME (mode 0700, as gpg itself would) when it names a directory that does
/// not exist yet: gpg run through gpgme does not, and a new install's first publish would
/// fail for want of it (the system units point it into /var/lib/virt-pipeline).
fn ensure_gnupg_home() -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let Some(home) = std::env::var_os("GNUPGHOME").filter(|h| !h.is_empty()) else {
        return Ok(());
    };
    let home = std::path::Path::new(&home);
    if !home.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(home)
            .with_context(|| format!("cannot create GNUPGHOME {}", home.display()))?;
    }
    Ok(())
}

/// A new signing key without passphrase, for unattended nightly signing. Returns its
/// fingerprint. A key with the same user ID may exist already (another repository of the same
/// name in this keyring): the new key is made anyway, and its fingerprint tells them apart.
pub fn generate_key(user_id: &str) -> Result<String> {
    ensure_gnupg_home()?;
    let mut ctx = context()?;
    let flags = CreateKeyFlags::SIGN | CreateKeyFlags::NOPASSWD | CreateKeyFlags::NOEXPIRE | CreateKeyFlags::FORCE;
    let result = ctx
        .create_key_with_flags(user_id, "default", std::time::Duration::ZERO, flags)
        .with_context(|| format!("cannot generate a signing key for `{user_id}`"))?;
    Ok(result.fingerprint().map_err(|_| anyhow!("gpg returned no fingerprint for the new key"))?.to_string())
}

/// A key named for trust: the 40 hex digits of a full fingerprint (spaces allowed, any
/// case), returned in gpg's form. Key IDs and other suffixes are refused: a 64-bit ID can be
/// forged with a key of one's own, so only the whole fingerprint names a key.
pub fn parse_fingerprint(s: &str) -> std::result::Result<String, String> {
    let norm: String = s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_uppercase();
    if norm.len() == 40 && norm.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(norm);
    }
    let what = if norm.is_empty() {
        "is empty".to_string()
    } else if norm.chars().all(|c| c.is_ascii_hexdigit()) && (norm.len() == 8 || norm.len() == 16) {
        format!("`{s}` is a key ID, not a fingerprint")
    } else {
        format!("`{s}` is not a fingerprint")
    };
    Err(format!(
        "{what}: give the key's full 40-digit fingerprint (`gpg --fingerprint KEY` or `gpg --show-keys FILE.asc` shows it)"
    ))
}

/// Whether two fingerprints name the same key: both full, equal but for spaces and case.
pub fn same_key(a: &str, b: &str) -> bool {
    matches!((parse_fingerprint(a), parse_fingerprint(b)), (Ok(a), Ok(b)) if a == b)
}

/// True when the keyring has a secret key with this fingerprint.
pub fn has_secret_key(fingerprint: &str) -> bool {
    context().and_then(|mut c| c.get_secret_key(fingerprint).map_err(Into::into)).is_ok()
}

/// The armored public key.
pub fn export_public_key(fingerprint: &str) -> Result<Vec<u8>> {
    let mut ctx = context()?;
    let key = ctx.get_key(fingerprint).with_context(|| format!("no key {fingerprint} in the keyring"))?;
    let mut out = Vec::new();
    ctx.export_keys(&[key], ExportMode::empty(), &mut out)?;
    if out.is_empty() {
        bail!("gpg exported nothing for key {fingerprint}");
    }
    Ok(out)
}

/// A clearsigned copy of `text`, signed by the key `fingerprint`.
pub fn clearsign(fingerprint: &str, text: &[u8]) -> Result<Vec<u8>> {
    let mut ctx = context()?;
    let key = ctx.get_secret_key(fingerprint).with_context(|| {
        format!("no secret key {fingerprint} in the keyring (GNUPGHOME); pass --sign-key or set sign_key")
    })?;
    ctx.add_signer(&key)?;
    let mut out = Vec::new();
    ctx.sign_clear(text, &mut out).with_context(|| format!("cannot sign with key {fingerprint}"))?;
    Ok(out)
}

/// Checks a clearsigned text against one trusted key and only it: the signature is checked
/// in a keyring of its own (a private GNUPGHOME that is removed afterwards) holding nothing
/// but the key `pin`, so no other key of the user's keyring (nor one a repository publishes
/// beside its own) can vouch for it. The key's public half comes from the user's keyring
/// (exported by exact fingerprint) or else from `published` (a repository's `NAME.asc`);
/// either way it must be exactly the pinned key. Returns the signed text.
pub fn verify_pinned(signed: &[u8], pin: &str, published: Option<&[u8]>) -> Result<Vec<u8>> {
    PinnedVerifier::new(pin, published)?.verify(signed)
}

/// `verify_pinned` for many texts: one private keyring for all of them (a repository on
/// object storage checks every entry record at each publish).
pub struct PinnedVerifier {
    pin: String,
    ctx: gpgme::Context,
    /// The key and its subkeys: those that may have made a signature.
    allowed: Vec<String>,
    home: tempfile::TempDir,
}

impl PinnedVerifier {
    pub fn new(pin: &str, published: Option<&[u8]>) -> Result<PinnedVerifier> {
        let pin = parse_fingerprint(pin).map_err(|e| anyhow!("trusted key: {e}"))?;
        let material = match export_exact(&pin) {
            Some(k) => k,
            None => published.map(<[u8]>::to_vec).ok_or_else(|| {
                anyhow!(
                    "the trusted key {pin} is not in your keyring (GNUPGHOME); import the repository's public key \
                     (`gpg --import NAME.asc`) after checking that `gpg --show-keys NAME.asc` shows that fingerprint"
                )
            })?,
        };
        let home = tempfile::Builder::new().prefix("pipeline-gpg-").tempdir().context("cannot create a keyring")?;
        let mut ctx = context()?;
        let home_str = home.path().to_str().context("the temporary keyring's path is not UTF-8")?;
        ctx.set_engine_home_dir(home_str).context("cannot use a private keyring")?;
        ctx.import(&material).context("cannot read the trusted key's public half")?;
        let keys: Vec<gpgme::Key> = ctx.keys()?.filter_map(|k| k.ok()).collect();
        let found: Vec<String> = keys.iter().filter_map(|k| k.fingerprint().ok().map(str::to_string)).collect();
        if found != [pin.as_str()] {
            bail!("the public key material holds {} instead of exactly the trusted key {pin}", describe(&found));
        }
        let allowed = keys[0].subkeys().filter_map(|s| s.fingerprint().ok().map(str::to_ascii_uppercase)).collect();
        Ok(PinnedVerifier { pin, ctx, allowed, home })
    }

    /// The signed text, if `signed` carries a good signature by the pinned key.
    pub fn verify(&mut self, signed: &[u8]) -> Result<Vec<u8>> {
        let mut plain = Vec::new();
        let result = self.ctx.verify_opaque(signed, &mut plain).context("cannot read the signature")?;
        let mut good = false;
        for sig in result.signatures() {
            let fpr = sig.fingerprint().unwrap_or("?").to_ascii_uppercase();
            if !self.allowed.contains(&fpr) {
                bail!("signed by {fpr}, which is not the trusted key {}", self.pin);
            }
            if let Err(e) = sig.status() {
                bail!("bad signature by {fpr}: {e}");
            }
            good = true;
        }
        if !good {
            bail!("no signature by the trusted key {}", self.pin);
        }
        Ok(plain)
    }
}

impl Drop for PinnedVerifier {
    fn drop(&mut self) {
        // gpg starts no agent for public keys; make sure none outlives the keyring all the same.
        let _ = std::process::Command::new("gpgconf")
            .args(["--homedir"])
            .arg(self.home.path())
            .args(["--kill", "all"])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The public key with exactly this (primary key) fingerprint from the user's keyring.
fn export_exact(pin: &str) -> Option<Vec<u8>> {
    let mut ctx = context().ok()?;
    let key = ctx.get_key(pin).ok()?;
    if key.fingerprint().ok()? != pin {
        return None;
    }
    let mut out = Vec::new();
    ctx.export_keys(&[key], ExportMode::MINIMAL, &mut out).ok()?;
    (!out.is_empty()).then_some(out)
}

fn describe(fprs: &[String]) -> String {
    match fprs {
        [] => "no key".into(),
        _ => format!("key(s) {}", fprs.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_fingerprint, same_key};

    #[test]
    fn only_a_full_fingerprint_names_a_key() {
        let fpr = "61A0D7D05F70F0F8E76E6E91E17F83535EEEE8D4";
        assert!(same_key(fpr, "61a0 d7d0 5f70 f0f8 e76e  6e91 e17f 8353 5eee e8d4"));
        assert!(!same_key(fpr, "E17F83535EEEE8D4"), "a long key ID is not a pin");
        assert!(!same_key(fpr, "5EEEE8D4"), "nor a short one");
        assert!(!same_key(fpr, "0123456789ABCDEF0123456789ABCDEF01234567"));
        assert_eq!(parse_fingerprint("61a0 d7d0 5f70 f0f8 e76e  6e91 e17f 8353 5eee e8d4").unwrap(), fpr);
        for bad in ["", "   ", "E17F83535EEEE8D4", "5EEEE8D4", "F0F8E76E6E91E17F83535EEEE8D4", &format!("{fpr}00")] {
            let err = parse_fingerprint(bad).unwrap_err();
            assert!(err.contains("40-digit fingerprint"), "{bad}: {err}");
        }
        assert!(parse_fingerprint("E17F83535EEEE8D4").unwrap_err().contains("key ID"));
    }
}
