//! `target = "cloud"`: an image for OpenStack, libvirt with a seed ISO, or any cloud that
//! speaks cloud-init. In the export's throwaway overlay: cloud-init installed with the
//! guest's package manager when missing, its datasource list set wide (a narrow list is the
//! most common reason a seed is silently ignored), root without a password, and what makes
//! a machine this machine cleared so that cloud-init runs as on a first boot. Written as a
//! compressed qcow2 (`disk.qcow2`), optionally also raw (`disk.raw`).

use super::{Job, Target};
use crate::guest::customize::{set_root_password, StepRunner};
use crate::guest::Guest;
use crate::image::qemu_img;
use crate::pipeline::{CustomizeStep, Pipeline};
use crate::seed::{self, Format, Seed};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// `target = "cloud"`: cloud-init installed and configured, as a compressed qcow2.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CloudKeys {
    /// Also write `disk.raw`.
    #[serde(default)]
    pub raw: bool,
    /// cloud-init's default user (the one the seed's SSH keys go to); default: the
    /// distribution's own (`debian` on Debian).
    #[serde(default)]
    pub user: Option<String>,
    /// A seed file (`pipeline seed`'s format): `seed.iso` is written beside the image.
    #[serde(default)]
    pub seed: Option<String>,
    /// Of `seed.iso`: `nocloud` or `configdrive`.
    #[serde(default = "default_seed_format")]
    pub seed_format: Format,
}

fn default_seed_format() -> Format {
    Format::NoCloud
}

/// Reads the target's keys from the export table and checks them.
pub fn build(keys: &toml::Table, pipeline: &Pipeline, at: &str) -> Result<Box<dyn Target>> {
    Ok(Box::new(Cloud::new(&super::keys(keys, pipeline, at)?, pipeline, at)?))
}

pub struct Cloud {
    config: CloudKeys,
    /// The seed written beside the image, read and checked when the pipeline is loaded.
    seed: Option<Seed>,
    /// The pipeline's `[env]` (a proxy for the package manager, say).
    env: BTreeMap<String, String>,
    dir: PathBuf,
}

/// The configuration the export adds, under /etc/cloud/cloud.cfg.d/ (read after cloud.cfg).
const CONFIG_PATH: &str = "/etc/cloud/cloud.cfg.d/90_virt_pipeline.cfg";

/// What the image needs: (package, a program it installs).
const REQUIRED: &[(&str, &str)] = &[("cloud-init", "/usr/bin/cloud-init"), ("sudo", "/usr/bin/sudo")];

/// How long the guest's package manager may take to install cloud-init.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(3600);

/// What identifies one machine; cleared so that each clone gets its own. cloud-init's
/// state under /var/lib/cloud makes it skip the per-instance modules: without clearing it,
/// a seed would be ignored.
const MACHINE_STATE: &[&str] = &[
    "/var/lib/cloud/*",
    "/var/log/cloud-init*.log",
    "/etc/ssh/ssh_host_*",
    "/var/lib/dbus/machine-id",
    "/var/lib/systemd/random-seed",
    "/var/lib/dhcp/*.leases",
    "/var/lib/NetworkManager/*.lease",
];

impl Cloud {
    pub fn new(config: &CloudKeys, pipeline: &Pipeline, at: &str) -> Result<Cloud> {
        if let Some(user) = &config.user {
            if !valid_user_name(user) {
                return Err(crate::bad_input!(
                    "{}: {at}.user: `{user}` is not a user name (lower-case letters, digits, `_` and `-`, starting with a letter, up to 32)",
                    pipeline.path.display()
                ));
            }
        }
        if config.seed.is_none() && config.seed_format != Format::NoCloud {
            return Err(crate::bad_input!(
                "{}: {at}.seed_format: it is the format of the seed ISO; name the seed file with `seed`",
                pipeline.path.display()
            ));
        }
        let seed = match &config.seed {
            Some(file) => Some(
                Seed::load(&pipeline.resolve(file), &[])
                    .with_context(|| format!("{}: {at}.seed", pipeline.path.display()))?,
            ),
            None => None,
        };
        Ok(Cloud { config: config.clone(), seed, env: pipeline.file.env.clone(), dir: pipeline.dir.clone() })
    }
}

impl Target for Cloud {
    fn keys(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }

    fn inputs(&self) -> Vec<PathBuf> {
        self.seed.as_ref().map(Seed::inputs).unwrap_or_default()
    }

    fn export(&self, job: &mut Job) -> Result<()> {
        // The network only matters when cloud-init must be installed; an appliance cannot be
        // given one after its launch, and user-mode networking costs nothing when unused.
        let (g, os) = job.open_overlay(true)?;
        if !os.is_linux() {
            bail!("cloud-init runs on Linux guests; this is {}", os.summary());
        }
        let log = &job.ctx.log;
        // cloud-init, and sudo: with root's login off, the default user's sudo is the way in.
        let mut missing = Vec::new();
        for (package, program) in REQUIRED {
            if !g.exists(program)? {
                missing.push(package.to_string());
            }
        }
        if missing.is_empty() {
            log.line("cloud-init and sudo are installed");
        } else {
            job.ctx.bar.set_message(format!("installing {}", missing.join(", ")));
            let runner = StepRunner::new(&g, &os, &self.dir, &self.env, INSTALL_TIMEOUT, log);
            runner
                .apply(&CustomizeStep::Install(missing.clone()))
                .with_context(|| format!("cannot install {}", missing.join(", ")))?;
            if let Some((package, program)) = REQUIRED.iter().find(|(_, program)| !g.exists(program).unwrap_or(false)) {
                bail!("the guest's package manager installed `{package}` but {program} is missing");
            }
        }
        job.ctx.bar.set_message("configuring cloud-init");
        g.write(CONFIG_PATH, cloud_config(self.config.user.as_deref()).as_bytes())?;
        log.line(format!("{CONFIG_PATH}: datasources {}", DATASOURCES.join(", ")));
        set_root_password(&g, "disabled", &self.dir, log)?;
        log.line("root: no password (log in with the SSH keys the seed gives the default user)");
        clear_machine_state(&g, log)?;
        g.shutdown()?;
        drop(g);

        job.ctx.bar.set_message("writing the compressed qcow2");
        let overlay = job.overlay_path();
        let qcow2 = job.out.join("disk.qcow2");
        qemu_img::convert_compressed_qcow2(&overlay, "qcow2", &qcow2)?;
        log.line(format!("wrote {} (compressed qcow2)", qcow2.display()));
        if self.config.raw {
            job.ctx.bar.set_message("writing the raw image");
            let raw = job.out.join("disk.raw");
            qemu_img::convert_from(&overlay, "qcow2", &raw, "raw")?;
            log.line(format!("wrote {} (raw, sparse)", raw.display()));
        }
        if let Some(seed) = &self.seed {
            let iso = job.out.join("seed.iso");
            job.ctx.bar.set_message("writing the seed ISO");
            seed::write_iso_logged(seed, self.config.seed_format, &iso, log, &job.ctx.bar)?;
            log.line(format!(
                "wrote {} ({} seed, instance {})",
                iso.display(),
                self.config.seed_format,
                seed.instance_id()
            ));
        }
        Ok(())
    }
}

/// Every datasource a seed or a metadata service may come from, and None last so that an
/// image booted with no seed still comes up.
const DATASOURCES: &[&str] = &["NoCloud", "ConfigDrive", "OpenStack", "Ec2", "None"];

fn cloud_config(user: Option<&str>) -> String {
    let mut text = format!(
        "# Written by the virt-pipeline cloud export.\ndatasource_list: [{}]\ndisable_root: true\nssh_pwauth: false\n",
        DATASOURCES.join(", ")
    );
    if let Some(user) = user {
        text.push_str(&format!(
            "system_info:\n  default_user:\n    name: {user}\n    lock_passwd: true\n    gecos: Cloud user\n    \
             groups: [adm, sudo]\n    sudo: [\"ALL=(ALL) NOPASSWD:ALL\"]\n    shell: /bin/bash\n"
        ));
    }
    text
}

fn clear_machine_state(g: &Guest, log: &crate::base::log::StageLog) -> Result<()> {
    let mut cleared = Vec::new();
    for pattern in MACHINE_STATE {
        for path in g.glob_expand(pattern)? {
            g.rm_rf(&path)?;
            cleared.push(path);
        }
    }
    // Empty, not absent: systemd then makes a new ID on the first boot and treats it as one.
    if g.is_file("/etc/machine-id")? {
        g.truncate("/etc/machine-id")?;
        cleared.push("/etc/machine-id (emptied)".into());
    }
    log.line(format!("cleared: {}", if cleared.is_empty() { "nothing".into() } else { cleared.join(", ") }));
    Ok(())
}

/// useradd's portable names, which cloud-init passes on to it.
fn valid_user_name(name: &str) -> bool {
    name.len() <= 32
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_lists_every_datasource_and_the_user() {
        let text = cloud_config(Some("ops"));
        assert!(text.contains("datasource_list: [NoCloud, ConfigDrive, OpenStack, Ec2, None]"), "{text}");
        assert!(text.contains("    name: ops\n"), "{text}");
        assert!(!cloud_config(None).contains("default_user"));
    }

    #[test]
    fn user_names() {
        assert!(valid_user_name("debian") && valid_user_name("_svc-1"));
        assert!(!valid_user_name("Root") && !valid_user_name("a b") && !valid_user_name("1x") && !valid_user_name(""));
    }
}
