//! `[stages.install]`: how the first layer is made, one module per method: an installer
//! booted with an injected answers file (netboot, iso), debootstrap, a user's install script
//! (both through `tree`, the phases they share), or an existing image.

pub mod debootstrap;
pub mod expand;
pub mod image;
pub mod netboot;
pub mod script;
pub mod stall;
pub mod tree;

use crate::bad_input;
use crate::engine::stage::Stage;
use crate::pipeline::{InstallConfig, Pipeline, Source};
use anyhow::Result;
use image::{ImageSource, ImageStage};

pub fn build(config: &InstallConfig, pipeline: &Pipeline, at: &str) -> Result<Box<dyn Stage>> {
    let where_ = format!("{}: {at}", pipeline.path.display());
    Ok(match config {
        InstallConfig::Image(c) => {
            let source = match (&c.image, &c.repo, &c.name) {
                (Some(_), None, None) if c.fingerprint.is_some() => {
                    return Err(bad_input!(
                        "{where_}.fingerprint: a fingerprint checks a repository's signed index; `image` has none (use `repo` with `name`, or remove fingerprint)"
                    ))
                }
                (Some(img), None, None) => ImageSource::File(img.clone()),
                (None, Some(repo), Some(name)) => {
                    ImageSource::Repo { repo: repo.clone(), name: name.clone(), fingerprint: c.fingerprint.clone() }
                }
                _ => return Err(bad_input!("{where_}: method image takes `image`, or `repo` with `name`")),
            };
            let format = c.format.clone();
            Box::new(ImageStage::new(source, format, c.disk_size.clone(), c.expand.clone(), &pipeline.dir, &where_)?)
        }
        InstallConfig::Debootstrap(c) => {
            let mut c = c.clone();
            c.env = pipeline.stage_env(&c.env, &format!("{at}.env"))?;
            Box::new(debootstrap::DebootstrapStage::new(c, &pipeline.dir, &where_)?)
        }
        InstallConfig::Script(c) => Box::new(script::ScriptStage::new(c, pipeline, at)?),
        InstallConfig::Netboot(c) => Box::new(netboot::NetbootStage::new(c.into(), pipeline, at)?),
        InstallConfig::Iso(c) => Box::new(netboot::NetbootStage::new(c.into(), pipeline, at)?),
    })
}

/// The first layer named by `from = { image | repo }`.
pub fn from_source(from: &Source, pipeline: &Pipeline) -> Result<Box<dyn Stage>> {
    let where_ = format!("{}: from", pipeline.path.display());
    let source = match (&from.image, &from.repo, &from.name) {
        (Some(img), _, _) => ImageSource::File(img.clone()),
        (None, Some(repo), Some(name)) => {
            ImageSource::Repo { repo: repo.clone(), name: name.clone(), fingerprint: from.fingerprint.clone() }
        }
        _ => return Err(bad_input!("{where_}: give image, repo with name, or pipeline")),
    };
    Ok(Box::new(ImageStage::new(source, from.format.clone(), None, None, &pipeline.dir, &where_)?))
}
