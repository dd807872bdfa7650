//! Running qemu: the accelerator choice and the VM runner.

pub mod accel;
pub mod qemu;
pub use accel::{Accel, AccelChoice};
