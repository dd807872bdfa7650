//! Inspection: what operating system a disk holds, and mounting its filesystems where the
//! guest mounts them. Recorded in each layer's metadata and used by the operations.

use super::{Drive, Guest, GuestError, InspectField, Result};
use crate::base::log::StageLog;
use crate::vm::Accel;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Inspection {
    pub root: String,
    pub os_type: String,
    pub distro: String,
    pub major_version: i32,
    pub minor_version: i32,
    pub arch: String,
    pub package_management: String,
    pub package_format: String,
    pub hostname: String,
    pub product_name: String,
    /// (mountpoint, device), shortest mountpoint first: the order to mount them in.
    pub mountpoints: Vec<(String, String)>,
    /// (device, filesystem type) of every filesystem on the disk.
    pub filesystems: Vec<(String, String)>,
}

impl Inspection {
    pub fn is_linux(&self) -> bool {
        self.os_type == "linux"
    }

    /// Unix-like guests (not Windows): what most sysprep operations act on.
    pub fn is_unix_like(&self) -> bool {
        self.os_type != "windows"
    }

    /// Fedora, RHEL and their rebuilds: the distributions with ifcfg files.
    pub fn is_redhat_family(&self) -> bool {
        matches!(
            self.distro.as_str(),
            "fedora"
                | "rhel"
                | "centos"
                | "scientificlinux"
                | "oraclelinux"
                | "redhat-based"
                | "rocky"
                | "almalinux"
                | "circle"
        )
    }

    pub fn is_debian_family(&self) -> bool {
        matches!(self.distro.as_str(), "debian" | "ubuntu" | "kalilinux" | "linuxmint")
    }

    pub fn summary(&self) -> String {
        format!(
            "{} {}.{} ({}, {}, packages: {}) on {}",
            self.distro,
            self.major_version,
            self.minor_version,
            self.os_type,
            self.arch,
            self.package_management,
            self.root
        )
    }
}

/// The operating system on an image file given by the user (what `pipeline inspect` shows):
/// its format from its first bytes, never qemu's probe (see qemu_img).
pub fn inspect_file(accel: Accel, image: &Path) -> anyhow::Result<Inspection> {
    use crate::image::qemu_img;
    use anyhow::Context;
    if !image.exists() {
        return Err(crate::bad_input!("{}: no such image", image.display()));
    }
    let format = match qemu_img::detect_format(image)? {
        qemu_img::Detected::Xz => {
            return Err(crate::bad_input!("{}: decompress the image first (xz)", image.display()))
        }
        other => other.as_str(),
    };
    inspect_image(accel, image, format, None, false).with_context(|| format!("cannot inspect {}", image.display()))
}

impl Guest {
    /// Inspects the launched appliance's disks and mounts the single operating system's
    /// filesystems (read-only if asked).
    pub fn inspect_and_mount(&self, readonly: bool) -> Result<Inspection> {
        let os = self.inspect()?;
        self.mount_inspected(&os, readonly)?;
        Ok(os)
    }

    /// Mounts the inspected system's filesystems where the guest mounts them.
    pub fn mount_inspected(&self, os: &Inspection, readonly: bool) -> Result<()> {
        for (mp, dev) in &os.mountpoints {
            let result = if readonly { self.mount_ro(dev, mp) } else { self.mount(dev, mp) };
            // Be lenient below the root, as the virt-* tools are: an fstab entry may name
            // something this disk does not hold.
            if let Err(e) = result {
                if mp == "/" {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Finds the single operating system on the launched appliance's disks.
    pub fn inspect(&self) -> Result<Inspection> {
        let roots = self.inspect_os()?;
        let root = match roots.as_slice() {
            [root] => root.clone(),
            [] => {
                return Err(GuestError {
                    call: "inspect_os".into(),
                    message: "no operating system was found on the disk".into(),
                })
            }
            many => {
                return Err(GuestError {
                    call: "inspect_os".into(),
                    message: format!("the disk holds several operating systems ({}); one is expected", many.join(", ")),
                })
            }
        };
        let get = |f| self.inspect_get(f, &root).unwrap_or_else(|_| "unknown".into());
        let (major_version, minor_version) = self.inspect_get_version(&root).unwrap_or((0, 0));
        let mut mountpoints = self.inspect_get_mountpoints(&root)?;
        mountpoints.sort_by_key(|(mp, _)| mp.len());
        Ok(Inspection {
            os_type: get(InspectField::Type),
            distro: get(InspectField::Distro),
            arch: get(InspectField::Arch),
            package_management: get(InspectField::PackageManagement),
            package_format: get(InspectField::PackageFormat),
            hostname: get(InspectField::Hostname),
            product_name: get(InspectField::ProductName),
            major_version,
            minor_version,
            filesystems: self.list_filesystems()?,
            mountpoints,
            root,
        })
    }
}

/// Inspects one disk image in an appliance of its own (read-only): the single operating
/// system it holds, or an error saying none (or several) was found.
pub fn inspect_image(
    accel: Accel,
    path: &Path,
    format: &str,
    log: Option<&StageLog>,
    verbose: bool,
) -> Result<Inspection> {
    let g = Guest::new(accel, log.cloned(), verbose)?;
    g.add_drive(Drive { path, format, readonly: true, discard: false })?;
    g.launch()?;
    let os = g.inspect()?;
    g.shutdown()?;
    Ok(os)
}

/// The packages installed in the single operating system of a disk image, read in an
/// appliance of its own (read-only, no guest code runs), sorted by name and architecture.
pub fn installed_packages(
    accel: Accel,
    path: &Path,
    format: &str,
    log: &StageLog,
    verbose: bool,
) -> Result<(Inspection, Vec<super::Package>)> {
    let g = Guest::new(accel, Some(log.clone()), verbose)?;
    g.add_drive(Drive { path, format, readonly: true, discard: false })?;
    g.launch()?;
    let os = g.inspect_and_mount(true)?;
    // Untraced: a Debian system lists hundreds of packages.
    let mut packages = g.untraced(|g| g.inspect_list_applications(&os.root))?;
    if os.package_format == "deb" {
        let started = std::time::Instant::now();
        let scratch = tempfile::tempdir().map_err(|e| GuestError { call: "tempdir".into(), message: e.to_string() })?;
        g.untraced(|g| super::packages::add_debian_details(g, &mut packages, scratch.path()));
        log.line(format!("packages: sources and licences read in {:.1}s", started.elapsed().as_secs_f64()));
    }
    packages.sort();
    g.umount_all()?;
    g.shutdown()?;
    Ok((os, packages))
}
