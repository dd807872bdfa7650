//! virt-pipeline: build VM disk images in layers from a pipeline file.

pub mod base;
pub mod chain;
pub mod cli;
pub mod commands;
pub mod download;
pub mod engine;
pub mod guest;
pub mod image;
pub mod pipeline;
pub mod provision;
pub mod rebuild;
pub mod repo;
pub mod s3;
pub mod seed;
pub mod stages;
pub mod upstream;
pub mod vm;
