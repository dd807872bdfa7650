//! Replace the guest's saved random seed with fresh random bytes from the host, so clones do not start from the same entropy. virt-sysprep 1.48 dropped this operation; the seed's command line still names it.

use crate::stages::sysprep::{OpContext, Operation};

pub const OPERATION: Operation = Operation {
    name: "random-seed",
    default: true,
    description: "Generate random seed for guest",
    run,
    on_devices: false,
};

fn run(c: &OpContext) -> anyhow::Result<()> {
    if !c.os.is_linux() {
        return Ok(());
    }
    use rand::RngCore;
    let mut seed = [0u8; 512];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let mut written = false;
    for file in [
        "/var/lib/random-seed",
        "/var/lib/urandom/random-seed",
        "/var/lib/systemd/random-seed",
        "/etc/random-seed",
        "/var/lib/misc/random-seed",
    ] {
        if c.g.is_file(file)? {
            c.g.write(file, &seed)?;
            written = true;
        }
    }
    // A systemd guest that never saved a seed gets one where systemd-random-seed reads it.
    if !written && c.g.is_dir("/var/lib/systemd")? {
        c.g.write("/var/lib/systemd/random-seed", &seed)?;
        c.g.chmod(0o600, "/var/lib/systemd/random-seed")?;
    }
    Ok(())
}
