//! Choosing the accelerator. KVM only when it can work: /dev/kvm opens read-write AND the CPU
//! advertises vmx or svm; a /dev/kvm without them hangs guests, so TCG is chosen instead.

use crate::bad_input;
use anyhow::Result;

/// What the user asked for: `Auto` takes KVM only where it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn choose(choice: AccelChoice) -> Result<Accel> {
        match choice {
            AccelChoice::Tcg => Ok(Accel::Tcg),
            AccelChoice::Auto => Ok(if kvm_usable() { Accel::Kvm } else { Accel::Tcg }),
            AccelChoice::Kvm if kvm_usable() => Ok(Accel::Kvm),
            AccelChoice::Kvm => Err(bad_input!(
                "--accel kvm: KVM is not usable here (/dev/kvm must open read-write and /proc/cpuinfo must list vmx or svm); use --accel tcg or auto"
            )),
        }
    }

    /// The `-machine accel=...` value for qemu.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// libguestfs's backend settings for this choice: it would otherwise try KVM and hang.
    pub fn libguestfs_settings(self) -> &'static [&'static str] {
        match self {
            Accel::Kvm => &[],
            Accel::Tcg => &["force_tcg"],
        }
    }

    /// Passes the choice to child processes that start libguestfs themselves (virt-* tools).
    pub fn export_to_environment(self) {
        if self == Accel::Tcg {
            std::env::set_var("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg");
        }
    }
}

pub fn kvm_usable() -> bool {
    let opens = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    opens && cpu_has_virtualization(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
}

fn cpu_has_virtualization(cpuinfo: &str) -> bool {
    cpuinfo.lines().filter(|l| l.starts_with("flags")).any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_decide() {
        assert!(cpu_has_virtualization("flags\t: fpu vmx sse\n"));
        assert!(cpu_has_virtualization("flags\t: fpu svm\n"));
        assert!(!cpu_has_virtualization("flags\t: fpu sse hypervisor\n"));
    }

    #[test]
    fn auto_picks_tcg_without_cpu_flags() {
        // On machines whose CPU lacks vmx/svm (the project's CI), auto must be TCG.
        let flags = cpu_has_virtualization(&std::fs::read_to_string("/proc/cpuinfo").unwrap());
        if !flags {
            assert_eq!(Accel::choose(AccelChoice::Auto).unwrap(), Accel::Tcg);
            assert!(Accel::choose(AccelChoice::Kvm).is_err());
        }
    }
}
