//! The two kinds of failure the CLI distinguishes: bad input (exit 2, nothing written) and a
//! stage that failed while running (exit 1).

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

/// Shorthand for returning a [`BadInput`] error with a formatted message.
#[macro_export]
macro_rules! bad_input {
    ($($arg:tt)*) => {
        anyhow::Error::new($crate::error::BadInput(format!($($arg)*)))
    };
}

/// The process exit code for an error: 2 for bad input, 1 for anything else.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err.chain().any(|cause| cause.downcast_ref::<BadInput>().is_some()) {
        2
    } else {
        1
    }
}
