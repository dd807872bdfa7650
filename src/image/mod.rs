//! Disk images on the host: qemu-img helpers, reading a qcow2 chain, xz in blocks.

pub mod chain;
pub mod initrd;
pub mod qemu_img;
pub mod xz;
