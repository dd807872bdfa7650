//! `pipeline inspect IMAGE`: the operating system on a disk, as text or JSON.

use crate::cli::GlobalArgs;
use crate::guest::inspect::inspect_file;
use crate::vm::Accel;
use anyhow::Result;
use std::path::Path;

pub fn inspect(g: &GlobalArgs, image: &Path, json: bool) -> Result<()> {
    let os = inspect_file(Accel::choose(g.accel.into())?, image)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&os)?);
        return Ok(());
    }
    println!("root:               {}", os.root);
    println!("type:               {}", os.os_type);
    println!("distro:             {}", os.distro);
    println!("version:            {}.{}", os.major_version, os.minor_version);
    println!("product:            {}", os.product_name);
    println!("arch:               {}", os.arch);
    println!("package management: {} ({})", os.package_management, os.package_format);
    println!("hostname:           {}", os.hostname);
    for (mp, dev) in &os.mountpoints {
        println!("mountpoint:         {mp} {dev}");
    }
    for (dev, fs) in &os.filesystems {
        println!("filesystem:         {dev} {fs}");
    }
    Ok(())
}
