//! Records the commit the binary is built from, for `pipeline --version`: the
//! VIRT_PIPELINE_REVISION environment variable when set (a build from a source tarball),
//! else `git rev-parse` of the checkout, else "unknown".

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=VIRT_PIPELINE_REVISION");
    // Built again when the checkout moves to another commit: HEAD, the branch it names, and
    // packed-refs (where a branch lives once git has packed it).
    // Only files that exist: cargo runs a build script whose watched file is missing on
    // every build, which would relink the binary under the tests that run it.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from) {
        let branch = git(&["symbolic-ref", "-q", "HEAD"]).map(|b| git_dir.join(b));
        for path in [Some(git_dir.join("HEAD")), Some(git_dir.join("packed-refs")), branch].into_iter().flatten() {
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    let revision = std::env::var("VIRT_PIPELINE_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=VIRT_PIPELINE_REVISION={revision}");
}
