//! Running qemu: the accelerator choice, the VM runner and SSH to a running guest.

pub mod accel;
pub mod console;
pub mod qemu;
pub mod runner;
pub mod ssh;
pub use accel::{Accel, AccelChoice};

/// A TCP port on 127.0.0.1 that is free now (the OS picks it), for a forwarded guest port.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
