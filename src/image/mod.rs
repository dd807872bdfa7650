//! Disk images on the host: qemu-img helpers, reading a qcow2 chain.

pub mod qemu_img;
