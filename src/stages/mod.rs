//! Stage kinds, one module each, all behind [`crate::engine::stage::Stage`]. `build` turns a
//! pipeline file's stage tables into stages, checking what the schema cannot (files exist,
//! operation names, sizes) so that bad input fails before anything runs.

pub mod check;
pub mod customize;
pub mod export;
pub mod firstboot;
pub mod install;
pub mod provision;
pub mod publish;
pub mod sysprep;

use crate::engine::stage::Stage;
use crate::pipeline::{Pipeline, StageConfig};
use anyhow::Result;

pub fn build(pipeline: &Pipeline) -> Result<Vec<Box<dyn Stage>>> {
    let mut stages: Vec<Box<dyn Stage>> = Vec::new();
    if let Some(from) = &pipeline.file.from {
        if from.pipeline.is_none() {
            stages.push(install::from_source(from, pipeline)?);
        }
    }
    for (i, config) in pipeline.file.stages.iter().enumerate() {
        let at = format!("stages[{i}].{}", config.kind());
        let stage: Box<dyn Stage> = match config {
            StageConfig::Install(c) => install::build(c, pipeline, &at)?,
            StageConfig::Customize(c) => Box::new(customize::CustomizeStage::new(c.clone(), pipeline, &at)?),
            StageConfig::Sysprep(c) => Box::new(sysprep::SysprepStage::new(c.clone(), pipeline, &at)?),
            StageConfig::Firstboot(c) => Box::new(firstboot::FirstbootStage::new(c.clone(), pipeline, &at)?),
            StageConfig::Publish(c) => Box::new(publish::PublishStage::new(c.clone(), pipeline, &at)?),
            StageConfig::Provision(c) => Box::new(provision::ProvisionStage::new(c.clone(), pipeline, &at)?),
            StageConfig::Export(c) => Box::new(export::ExportStage::new(c.clone(), pipeline, &at)?),
            StageConfig::Check(c) => Box::new(check::CheckStage::new(c.clone(), pipeline, &at)?),
        };
        stages.push(stage);
    }
    Ok(stages)
}
