//! The ground floor: small pieces every layer uses, importing nothing from this crate
//! outside this folder. Atomic file replacement, digests and stream adapters (hashing,
//! counting, progress), the error kinds and exit codes, the HTTP client with its timeouts and
//! retries, external programs (`command` for one whose output is read, stage logs for a long
//! step), signals and the parent-death signal of child processes, secrets scrubbing, and the
//! terminal ui (indicatif), and gpg signing and verification against one pinned key (gpgme).

pub mod atomic;
pub mod command;
pub mod digest;
pub mod error;
pub mod http;
pub mod interrupt;
pub mod log;
pub mod overrides;
pub mod scratch;
pub mod secrets;
pub mod sign;
pub mod stream;
pub mod ui;
