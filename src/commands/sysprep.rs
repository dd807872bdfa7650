//! `pipeline sysprep --list-operations`: sysprep itself runs as a pipeline stage.

use crate::bad_input;
use crate::stages;
use anyhow::Result;

pub fn sysprep(list_operations: bool) -> Result<()> {
    if !list_operations {
        return Err(bad_input!("sysprep: use --list-operations (sysprep runs as a pipeline stage)"));
    }
    print!("{}", stages::sysprep::list_operations());
    Ok(())
}
