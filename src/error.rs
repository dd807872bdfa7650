//! The two kinds of failure the CLI distinguishes: bad input (exit 2, nothing written) and a
//! stage that failed while running (exit 1, or the failing step's own exit code).

use std::fmt;

/// The user's input is wrong: a pipeline file, a --set, a path on the command line.
/// Raised before anything is written to the cache or a repository.
#[derive(Debug)]
pub struct BadInput(pub String);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// A command or step inside a stage exited non-zero; its code becomes the tool's exit code,
/// as Virter does for provisioning steps.
#[derive(Debug)]
pub struct StepFailed {
    pub message: String,
    pub exit_code: i32,
}

impl fmt::Display for StepFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StepFailed {}

/// Shorthand for returning a [`BadInput`] error with a formatted message.
#[macro_export]
macro_rules! bad_input {
    ($($arg:tt)*) => {
        anyhow::Error::new($crate::error::BadInput(format!($($arg)*)))
    };
}

/// The process exit code for an error: 2 for bad input, the step's code for a failed step,
/// 1 for anything else.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if cause.downcast_ref::<BadInput>().is_some() {
            return 2;
        }
        if let Some(step) = cause.downcast_ref::<StepFailed>() {
            return if step.exit_code > 0 { step.exit_code } else { 1 };
        }
    }
    1
}
