//! Running an external program whose output is read here: one that answers at once (qemu-img
//! info, xorriso extracting a file, `bash -n`). A long step's program runs through
//! [`super::log::StageLog::run`] instead, which streams its output into the stage log.

use anyhow::{bail, Context, Result};
use std::process::{Command, Output};

/// Runs `cmd` to its end with its output captured. A program that is not installed is named
/// with the Debian `package` that provides it.
pub fn output(cmd: &mut Command, package: &str) -> Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.output().with_context(|| format!("cannot run {program} (install {package})"))
}

/// As [`output`]; a non-zero exit is an error quoting the program's own message.
pub fn checked(cmd: &mut Command, package: &str) -> Result<Output> {
    let out = output(cmd, package)?;
    if !out.status.success() {
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        bail!(
            "{} {} failed ({}): {}",
            cmd.get_program().to_string_lossy(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_names_its_package_and_a_failure_its_message() {
        let err = output(&mut Command::new("virt-pipeline-no-such-program"), "some-package").unwrap_err();
        assert_eq!(err.to_string(), "cannot run virt-pipeline-no-such-program (install some-package)");
        let err = checked(Command::new("sh").args(["-c", "echo broken >&2; exit 3"]), "dash").unwrap_err();
        assert_eq!(err.to_string(), "sh -c echo broken >&2; exit 3 failed (exit status: 3): broken");
        let out = checked(Command::new("sh").args(["-c", "echo fine"]), "dash").unwrap();
        assert_eq!(out.stdout, b"fine\n");
    }
}
