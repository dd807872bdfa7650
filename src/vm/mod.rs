//! Running qemu: the accelerator choice.

pub mod accel;
pub use accel::{Accel, AccelChoice};
