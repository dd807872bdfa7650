//! The kinds of failure the CLI distinguishes: bad input (exit 2, nothing written), a
//! provisioning step that failed (exit with the step's own code, as Virter does), a work
//! directory another run holds (exit 75, so a timer can tell it from a failure), and a
//! stage that failed while running (exit 1).

/// The user's input is wrong: a pipeline file, a --set, a path on the command line.
/// Raised before anything is written to the cache or a repository.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// Shorthand for returning a [`BadInput`] error with a formatted message.
#[macro_export]
macro_rules! bad_input {
    ($($arg:tt)*) => {
        anyhow::Error::new($crate::base::error::BadInput(format!($($arg)*)))
    };
}

/// A provisioning step (a shell script over SSH, a container, rsync) exited non-zero. The
/// tool exits with `code`, so scripts that call `pipeline run`/`pipeline exec` see the
/// step's status, as with Virter.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StepFailed {
    /// The step's exit status (1-255).
    pub code: i32,
    /// What failed: "steps[2] (shell) on web1: exit status 7; last lines: ...".
    pub message: String,
}

/// Another run holds what this one needs (the rebuild lock): nothing was done, and trying
/// again later is the remedy. Exit code 75, sysexits' EX_TEMPFAIL.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Busy(pub String);

/// The exit code of a [`Busy`] error.
pub const EXIT_BUSY: i32 = 75;

/// The process exit code for an error: 2 for bad input, 75 when another run holds the work
/// directory, a failed step's own exit status, 1 for anything else.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err.chain().any(|cause| cause.downcast_ref::<BadInput>().is_some()) {
        return 2;
    }
    if err.chain().any(|cause| cause.downcast_ref::<Busy>().is_some()) {
        return EXIT_BUSY;
    }
    match err.chain().find_map(|cause| cause.downcast_ref::<StepFailed>()) {
        // A status outside 1..=255 (a signal, an unknown status) cannot be an exit code.
        Some(step) if (1..=255).contains(&step.code) => step.code,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_failed_step_gives_its_own_exit_code_through_context() {
        let err = anyhow::Error::new(StepFailed { code: 7, message: "steps[0] exited 7".into() });
        let err = Err::<(), _>(err).context("stage provision failed").unwrap_err();
        assert_eq!(exit_code(&err), 7);
        let odd = anyhow::Error::new(StepFailed { code: -1, message: "killed by a signal".into() });
        assert_eq!(exit_code(&odd), 1);
        assert_eq!(exit_code(&crate::bad_input!("x")), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("other")), 1);
        let busy = Err::<(), _>(anyhow::Error::new(Busy("held".into()))).context("rebuild").unwrap_err();
        assert_eq!(exit_code(&busy), 75);
    }
}
