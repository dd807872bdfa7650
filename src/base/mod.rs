//! The ground floor: small pieces every layer uses, importing nothing from this crate
//! outside this folder. Atomic file replacement, digests and hashing adapters, the error
//! kinds and exit codes, signals and the parent-death signal of child processes, secrets
//! scrubbing, the terminal ui (indicatif) and stage logs (every external command run and
//! logged one way).

pub mod atomic;
pub mod digest;
pub mod error;
pub mod interrupt;
pub mod log;
pub mod overrides;
pub mod scratch;
pub mod secrets;
pub mod ui;
