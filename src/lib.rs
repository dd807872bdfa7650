//! virt-pipeline: build VM disk images in layers from a pipeline file.

pub mod engine;
pub mod error;
pub mod image;
pub mod pipeline;
pub mod vm;
