//! Virter's provisioning: the file format (`version = 1`, `[values]`, `[env]`, `[[steps]]`
//! of `shell`, `rsync`, `container`), its Go templates, and running the steps over SSH
//! against one or more targets. Used by `pipeline exec` (machines that already run) and by
//! the provision stage (a VM booted from a layer).
//!
//! Use: [`load`] (bad input before anything runs), [`check`] against the working directory
//! and container engine, then [`run`] with open [`Target`]s.

pub mod container;
pub mod exec;
pub mod format;
pub mod goglob;
pub mod gotemplate;
pub mod run;

pub use container::ContainerEngine;
pub use format::{load, LoadOptions, Provisioning, PullPolicy, Source, Step};
pub use run::{check, inputs, run, RunContext, Target};
