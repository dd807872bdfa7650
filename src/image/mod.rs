//! Disk images on the host: qemu-img helpers, reading a qcow2 chain, xz in blocks, initrd
//! injection and initramfs archives.

pub mod chain;
pub mod initramfs;
pub mod initrd;
pub mod qemu_img;
pub mod xz;
