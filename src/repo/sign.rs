//! Signing and verifying the index with gpgme. GNUPGHOME is honoured (gpgme passes it on to
//! gpg); keys are chosen by fingerprint.

use anyhow::{anyhow, bail, Context as _, Result};
use gpgme::{Context, CreateKeyFlags, ExportMode, Protocol};

fn context() -> Result<Context> {
    let mut ctx = Context::from_protocol(Protocol::OpenPgp).context("cannot start gpgme (is gnupg installed?)")?;
    ctx.set_armor(true);
    Ok(ctx)
}

/// A new signing key without passphrase, for unattended nightly signing. Returns its fingerprint.
pub fn generate_key(user_id: &str) -> Result<String> {
    let mut ctx = context()?;
    let flags = CreateKeyFlags::SIGN | CreateKeyFlags::NOPASSWD | CreateKeyFlags::NOEXPIRE;
    let result = ctx
        .create_key_with_flags(user_id, "default", std::time::Duration::ZERO, flags)
        .with_context(|| format!("cannot generate a signing key for `{user_id}`"))?;
    Ok(result.fingerprint().map_err(|_| anyhow!("gpg returned no fingerprint for the new key"))?.to_string())
}

/// Whether two ways of naming a key (fingerprints, with or without spaces, or a long key ID
/// as the fingerprint's tail) name the same key.
pub fn same_key(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_uppercase();
    let (a, b) = (norm(a), norm(b));
    a.len() >= 16 && b.len() >= 16 && (a.ends_with(&b) || b.ends_with(&a))
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

/// Checks a clearsigned text: it must carry a good signature, by `fingerprint` when given.
/// Returns the signed text.
pub fn verify_clearsigned(signed: &[u8], fingerprint: Option<&str>) -> Result<Vec<u8>> {
    let mut ctx = context()?;
    let mut plain = Vec::new();
    let result = ctx.verify_opaque(signed, &mut plain).context("cannot read the signature")?;
    let mut signers = Vec::new();
    for sig in result.signatures() {
        let fpr = sig.fingerprint().unwrap_or("").to_string();
        if sig.status().is_ok() {
            signers.push(fpr);
        } else {
            bail!("bad signature by {fpr}: {:?}", sig.status().err());
        }
    }
    if signers.is_empty() {
        bail!("no good signature");
    }
    if let Some(want) = fingerprint {
        let want = want.replace(' ', "").to_uppercase();
        if !signers.iter().any(|s| s.to_uppercase().ends_with(&want)) {
            bail!("signed by {} and not by the expected key {want}", signers.join(", "));
        }
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::same_key;

    #[test]
    fn a_key_is_named_by_fingerprint_or_long_id() {
        let fpr = "61A0D7D05F70F0F8E76E6E91E17F83535EEEE8D4";
        assert!(same_key(fpr, "61a0 d7d0 5f70 f0f8 e76e  6e91 e17f 8353 5eee e8d4"));
        assert!(same_key(fpr, "E17F83535EEEE8D4"));
        assert!(!same_key(fpr, "5EEEE8D4"), "short IDs are ambiguous");
        assert!(!same_key(fpr, "0123456789ABCDEF0123456789ABCDEF01234567"));
    }
}
