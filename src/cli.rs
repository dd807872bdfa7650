//! Command-line arguments (clap derive), and what is generated from them (completion
//! scripts, man pages); the work is in `commands`.

use crate::provision::PullPolicy;
use crate::seed::Format;
use crate::vm::AccelChoice;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// `pipeline --version`: the package version and the commit it was built from (build.rs).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (revision ", env!("VIRT_PIPELINE_REVISION"), ")");

/// Printed below every `--help`, and in the man pages.
const EXIT_CODES: &str = "Exit codes: 0 success; 1 a stage or pipeline failed; 2 bad input (nothing was written); \
a failed provisioning step's own status (run, exec); 75 another rebuild holds the work directory; \
130 or 143 stopped by SIGINT or SIGTERM.";

#[derive(Parser, Debug)]
#[command(
    name = "pipeline",
    version = VERSION,
    about = "Build VM images in layers: install, customize, sysprep, publish to a signed virt-builder repository",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Where layers, downloads and logs are kept.
    #[arg(long, global = true, env = "PIPELINE_WORK_DIR", default_value = ".pipeline")]
    pub work_dir: PathBuf,
    /// Accelerator for every VM and appliance: auto picks KVM only where it works.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub accel: AccelArg,
    /// More output.
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    pub verbose: bool,
    /// No progress and no messages on standard error but errors; a command's own output
    /// (standard output) and the stage logs are unchanged.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// When to colour errors, warnings and help: auto (on a terminal, unless the NO_COLOR
    /// environment variable is set; CLICOLOR_FORCE forces it), always or never.
    #[arg(long, global = true, value_enum, value_name = "WHEN", default_value = "auto")]
    pub color: clap::ColorChoice,
    /// A layer cache shared with other builders, s3://BUCKET/PREFIX: layers are fetched
    /// from it instead of built, and the layers built here are uploaded to it.
    #[arg(long, global = true, env = "PIPELINE_CACHE_REMOTE", value_name = "S3_URL")]
    pub cache_remote: Option<String>,
    /// The key (full fingerprint of a secret key in the keyring) that signs the records of
    /// the layers this builder uploads to --cache-remote. Without it nothing is uploaded.
    #[arg(long, global = true, env = "PIPELINE_CACHE_SIGN_KEY", value_name = "FPR")]
    pub cache_sign_key: Option<String>,
    /// The builders whose layers are fetched from --cache-remote: full fingerprints of their
    /// signing keys (public keys in the keyring), comma-separated. The --cache-sign-key is
    /// trusted too; a record signed by any other key is never used.
    #[arg(long, global = true, env = "PIPELINE_CACHE_TRUST", value_name = "FPR,...", value_delimiter = ',')]
    pub cache_trust: Vec<String>,
    /// How long an HTTP server may send nothing before the request is given up on (and,
    /// for a download, resumed: at most three attempts).
    #[arg(long, global = true, env = "PIPELINE_STALL_TIMEOUT", value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub stall_timeout: std::time::Duration,
}

/// Parses the command line. `--color` is read first, so that clap's own help and errors
/// follow it too (they are printed while parsing).
pub fn parse() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let color = color_in(&args);
    crate::base::ui::set_color(match color {
        clap::ColorChoice::Auto => anstream::ColorChoice::Auto,
        clap::ColorChoice::Always => anstream::ColorChoice::Always,
        clap::ColorChoice::Never => anstream::ColorChoice::Never,
    });
    let matches = Cli::command().color(color).get_matches_from(args);
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The last `--color WHEN` or `--color=WHEN` before a `--`; auto when there is none or it
/// is not a choice (clap then says so).
fn color_in(args: &[std::ffi::OsString]) -> clap::ColorChoice {
    use clap::ValueEnum;
    let mut color = clap::ColorChoice::Auto;
    let words: Vec<&str> =
        args.iter().skip(1).map(|a| a.to_str().unwrap_or_default()).take_while(|a| *a != "--").collect();
    for (i, word) in words.iter().enumerate() {
        let value = match word.strip_prefix("--color") {
            Some("") => words.get(i + 1).copied(),
            Some(rest) => rest.strip_prefix('='),
            None => None,
        };
        if let Some(choice) = value.and_then(|v| clap::ColorChoice::from_str(v, false).ok()) {
            color = choice;
        }
    }
    color
}

/// `--accel`, as clap parses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

impl From<AccelArg> for AccelChoice {
    fn from(arg: AccelArg) -> AccelChoice {
        match arg {
            AccelArg::Auto => AccelChoice::Auto,
            AccelArg::Kvm => AccelChoice::Kvm,
            AccelArg::Tcg => AccelChoice::Tcg,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct PipelineArgs {
    /// The pipeline file.
    pub file: PathBuf,
    /// Override a key of the file, e.g. --set values.Hostname=web1 --set stages[1].sysprep.fstrim=false
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a pipeline, reusing cached layers whose inputs did not change.
    Run {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// Rebuild every stage.
        #[arg(long)]
        no_cache: bool,
        /// Use this ID as every stage's cache key (a different base still invalidates it).
        #[arg(long)]
        build_id: Option<String>,
        /// Where each stage's full log goes (default: WORK_DIR/logs).
        #[arg(long)]
        log_dir: Option<PathBuf>,
        /// Also write the last layer as a standalone image (qcow2, or raw for .raw/.img).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Use only cached downloads.
        #[arg(long)]
        offline: bool,
        /// Fingerprint of the key that signs published indexes.
        #[arg(long)]
        sign_key: Option<String>,
        /// Stop after this stage of the pipeline: its number in `pipeline plan` (from 1) or
        /// its kind (the first stage of that kind); its layer's path is printed.
        #[arg(long, value_name = "N|KIND")]
        until: Option<String>,
        /// Keep a failed stage's layer as the stage left it (its VM's disk, for a stage that
        /// boots one) and print where; `pipeline boot --disk PATH` opens it, and `pipeline
        /// cache gc` removes it once it is older than its --keep-days.
        #[arg(long)]
        keep_failed: bool,
    },
    /// Boot a layer on a throwaway overlay, to look around in it (nothing of the boot is
    /// kept): the last layer of a pipeline, the layer a stage of it leaves (--stage), or a
    /// disk (--disk, such as a layer `run --keep-failed` kept). The serial console is on the
    /// terminal (Ctrl-A X quits); --ssh logs in as root over SSH instead, with a key made
    /// for this boot, and runs COMMAND there when one is given.
    Boot(BootArgs),
    /// Run every pipeline under PATHs (default: pipelines/) in dependency order, each once:
    /// bases first (`from = { pipeline }`, or a local repository entry another pipeline
    /// publishes); a failed pipeline skips those built on it, the others go on. Prints a
    /// summary; exits 1 when any pipeline failed or was skipped.
    Rebuild(RebuildArgs),
    /// Check a pipeline file without running anything.
    Validate {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// Print JSON instead of text (docs/commands.md documents the schema).
        #[arg(long)]
        json: bool,
    },
    /// Show each stage, its cache key, whether it is cached, and the files it reads.
    Plan {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// Plan with this ID as every stage's cache key (see `run --build-id`).
        #[arg(long)]
        build_id: Option<String>,
        /// Touch no network: upstream states are those the last build recorded.
        #[arg(long)]
        offline: bool,
        /// Print JSON instead of text (docs/commands.md documents the schema).
        #[arg(long)]
        json: bool,
    },
    /// Inspect a disk image: operating system, version, package manager, filesystems.
    Inspect {
        /// A disk image (qcow2 or raw).
        image: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Sysprep operations.
    Sysprep {
        /// List the operations: name, * when on by default, description.
        #[arg(long)]
        list_operations: bool,
    },
    /// The layer cache.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// virt-builder repositories.
    Repo {
        #[command(subcommand)]
        command: RepoCommand,
    },
    /// Run a Virter provisioning file on machines that already run, over SSH (Virter's
    /// `vm exec`); exits with a failed step's own exit status.
    Exec(ExecArgs),
    /// Write a cloud-init seed ISO (NoCloud or ConfigDrive) from a seed file: instance-id,
    /// hostname, SSH keys, user-data, files, mounts and network, in Virtlet's model.
    Seed(SeedArgs),
    /// Serve a repository over HTTP for virt-builder clients.
    Serve {
        /// The repository directory (read only).
        dir: PathBuf,
        /// ADDRESS:PORT to listen on.
        #[arg(long, env = "PIPELINE_SERVE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// Print the shell completion script for SHELL, e.g.
    /// `pipeline completions bash > /etc/bash_completion.d/pipeline`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write a man page for the tool and one per subcommand (pipeline.1, pipeline-run.1,
    /// pipeline-repo-init.1, ...) into DIR; the Debian package ships them.
    #[command(hide = true)]
    Manpages {
        /// An existing directory.
        dir: PathBuf,
    },
    /// Print the command-line reference as Markdown: every command's `--help` (docs/cli.md is
    /// its output).
    #[command(hide = true)]
    Reference,
}

#[derive(Args, Debug)]
pub struct RebuildArgs {
    /// Pipeline files, or directories searched for them (TOML files with a [pipeline] table).
    pub paths: Vec<PathBuf>,
    /// Show the order and each pipeline's plan; run nothing.
    #[arg(long)]
    pub plan: bool,
    /// With --plan: `text` (each pipeline's stages), or the graph of pipelines, each labelled
    /// with what a rebuild would do and why, as Graphviz's `dot` or a Mermaid flowchart.
    #[arg(long, value_enum, default_value = "text", requires = "plan")]
    pub format: PlanFormatArg,
    /// Also write what happened as JSON to FILE, or to standard output with `-` (the summary
    /// then goes to standard error; docs/nightly.md documents the schema); every rebuild also
    /// keeps its report in WORK_DIR/reports/.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    /// When another rebuild holds the work directory's lock, wait for it instead of exiting.
    #[arg(long)]
    pub wait: bool,
    /// Use only cached downloads.
    #[arg(long)]
    pub offline: bool,
    /// Fingerprint of the key that signs published indexes.
    #[arg(long)]
    pub sign_key: Option<String>,
    /// Where each stage's full log goes (default: WORK_DIR/logs).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Use this ID as every stage's cache key (see `run --build-id`).
    #[arg(long)]
    pub build_id: Option<String>,
    /// Build only this builder's share of the pipelines, I of N (each pipeline belongs to
    /// one shard, by its name); a base another builder builds is waited for through the
    /// remote cache (needs --cache-remote).
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// How long to wait for a base another shard builds before giving up on the pipelines
    /// standing on it.
    #[arg(long, value_name = "DURATION", default_value = "2h", value_parser = humantime::parse_duration)]
    pub base_timeout: std::time::Duration,
}

/// `rebuild --plan --format`, as clap parses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanFormatArg {
    Text,
    Dot,
    Mermaid,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// A Virter provisioning file (version = 1, [values], [env], [[steps]]).
    #[arg(short = 'p', long = "provision", value_name = "FILE")]
    pub provision: Option<PathBuf>,
    /// Override a key of the provisioning, e.g. --set values.Image=x --set env.foo=bar
    /// --set steps[0].shell.script=env (steps may come from --set alone).
    #[arg(short = 's', long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// The private key to log in with [default: the first of ~/.ssh/id_ed25519, id_ecdsa,
    /// id_rsa]; a file, since rsync and container steps use it too.
    #[arg(long, value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,
    /// Host keys to check the targets against [default: ~/.ssh/known_hosts]; a target it
    /// does not list is trusted for this run (its fingerprint is printed).
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Replaces the `pull` of every container step: Always, IfNotExist or Never.
    #[arg(long, value_name = "POLICY")]
    pub container_pull_policy: Option<PullPolicy>,
    /// The container engine for container steps: podman or docker (or a path).
    #[arg(long, value_name = "PROGRAM", env = "PIPELINE_CONTAINER_ENGINE", default_value = "podman")]
    pub container_engine: String,
    /// An option for every container's `create`, replacing the engine's defaults (podman:
    /// --runtime runc --ulimit nofile=20000:20000 --ulimit nproc=32768:32768); repeat it.
    #[arg(long = "container-create-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub container_create_args: Option<Vec<String>>,
    /// How long to keep trying to reach each target's sshd.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// The machines: HOST, USER@HOST, HOST:PORT or USER@HOST:PORT (user root, port 22 by
    /// default); every step runs on all of them before the next step starts.
    #[arg(required = true, value_name = "TARGET")]
    pub targets: Vec<String>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("layer").required(true).args(["file", "disk"])))]
pub struct BootArgs {
    /// The pipeline file whose layer boots (built before: `pipeline run`).
    pub file: Option<PathBuf>,
    /// Override a key of the file, as `run --set` does (the layer of that run boots).
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "file")]
    pub sets: Vec<String>,
    /// Boot the layer this stage leaves: its number in `pipeline plan` (from 1) or its kind
    /// (the first stage of that kind). Default: the last layer.
    #[arg(long, value_name = "N|KIND", requires = "file")]
    pub stage: Option<String>,
    /// Boot this qcow2 disk instead of a pipeline's layer (it is not written either).
    #[arg(long, value_name = "PATH")]
    pub disk: Option<PathBuf>,
    /// Log in as root over SSH (the guest's port 22 forwarded to 127.0.0.1) instead of
    /// showing the serial console; the guest is stopped when the session ends.
    #[arg(long)]
    pub ssh: bool,
    /// The VM's memory.
    #[arg(long, default_value = "1024M")]
    pub memory: String,
    /// The VM's virtual CPUs.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// How long the guest may take to answer SSH (--ssh).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub boot_timeout: Duration,
    /// With --ssh: a command to run as root in the guest instead of a shell; its exit status
    /// is the tool's. Give it after `--`.
    #[arg(last = true, requires = "ssh", value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct SeedArgs {
    /// The seed file (TOML); paths in it are relative to it.
    pub file: PathBuf,
    /// nocloud (volume cidata) or configdrive (volume config-2, OpenStack's layout).
    #[arg(long, value_name = "FORMAT", default_value = "nocloud")]
    pub format: Format,
    /// The ISO to write (replaced if it exists; nothing is left there on failure).
    #[arg(long, value_name = "ISO")]
    pub output: PathBuf,
    /// Override a key of the seed file, e.g. --set hostname=web1 --set user_data_mode=overwrite
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// List layers: key, size on disk, pipeline, stage, last use.
    Ls {
        /// Print JSON instead of text (docs/commands.md documents the schema).
        #[arg(long)]
        json: bool,
    },
    /// Remove what is older than N days: layers unused for that long (and not under a layer
    /// that stays), output and upstream records, downloads, stage logs under WORK_DIR/logs,
    /// rebuild reports under WORK_DIR/reports, failed layers `run --keep-failed` kept; and
    /// what dead runs left behind.
    Gc {
        /// Keep what was used or written within this many days.
        #[arg(long, default_value_t = 14)]
        keep_days: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum RepoCommand {
    /// Create a repository: signing key, public key, virt-builder .conf, empty signed index.
    Init {
        /// The repository to create: a directory, or s3://BUCKET/PREFIX.
        dir: PathBuf,
        /// Generate a new signing key with this user ID (default: when none is configured).
        #[arg(long)]
        generate_key: Option<String>,
        /// Sign with this existing key.
        #[arg(long)]
        sign_key: Option<String>,
        /// The URL clients will reach the repository at (default: a file:// URI).
        #[arg(long)]
        uri: Option<String>,
    },
    /// List the entries.
    List {
        /// The repository: a directory, or s3://BUCKET/PREFIX.
        dir: PathBuf,
        /// Print JSON instead of text (docs/commands.md documents the schema).
        #[arg(long)]
        json: bool,
    },
    /// Show one entry's fields, its package count and where it was built.
    Show {
        /// The repository: a directory, or s3://BUCKET/PREFIX.
        dir: PathBuf,
        /// The entry's name.
        name: String,
        /// Print JSON instead of text (docs/commands.md documents the schema).
        #[arg(long)]
        json: bool,
    },
    /// Packages added, removed and changed between two revisions of an entry (default: the
    /// revision before the latest, and the latest), from their signed manifests.
    Diff {
        /// The repository: a directory, or s3://BUCKET/PREFIX.
        dir: PathBuf,
        /// The entry's name.
        name: String,
        /// The older revision [default: the one before the latest].
        rev_a: Option<u64>,
        /// The newer revision [default: the latest].
        rev_b: Option<u64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove an entry and its image.
    Remove {
        /// The repository: a directory, or s3://BUCKET/PREFIX.
        dir: PathBuf,
        /// The entry's name.
        name: String,
        /// Fingerprint of the key that signs the index [default: the repository's own].
        #[arg(long)]
        sign_key: Option<String>,
    },
    /// Delete image files of older revisions, keeping the newest N per entry.
    Prune {
        /// The repository: a directory, or s3://BUCKET/PREFIX.
        dir: PathBuf,
        /// How many of the newest revisions of each entry keep their image files (at least 1).
        #[arg(long, default_value_t = 2)]
        keep: usize,
    },
    /// Check the signature, every checksum and size, every package manifest, and that every
    /// file exists.
    Verify {
        /// The repository: a directory, or s3://BUCKET/PREFIX.
        dir: PathBuf,
        /// Require the index to be signed by this key.
        #[arg(long)]
        fingerprint: Option<String>,
    },
}

/// Writes SHELL's completion script for the whole command line to `out`.
pub fn write_completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "pipeline", out);
}

/// Writes the command-line reference as Markdown: a section per command, with its long help.
pub fn write_reference(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap::CommandFactory;
    fn section(cmd: &mut clap::Command, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        if cmd.is_hide_set() || cmd.get_name() == "help" {
            return Ok(());
        }
        let name = cmd.get_bin_name().unwrap_or(cmd.get_name()).to_string();
        writeln!(
            out,
            "## {name}\n\n```text\n{}```\n",
            cmd.render_long_help().to_string().trim_end().to_string() + "\n"
        )?;
        for sub in cmd.get_subcommands_mut() {
            section(sub, out)?;
        }
        Ok(())
    }
    writeln!(
        out,
        "# Command-line reference\n\nEvery command's `--help`, generated from the same definitions as the help and the man\n\
         pages (`pipeline reference > docs/cli.md`; a test keeps this page current).\n"
    )?;
    // The page is the same whatever the environment of whoever makes it: no env values.
    fn without_env_values(cmd: clap::Command) -> clap::Command {
        cmd.mut_args(|a| a.hide_env_values(true)).mut_subcommands(without_env_values)
    }
    let mut cmd = without_env_values(Cli::command());
    cmd.build();
    section(&mut cmd, out)
}

/// Writes a man page for the tool and one per subcommand (pipeline.1, pipeline-repo-init.1,
/// ...) into `dir`.
pub fn write_manpages(dir: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    clap_mangen::generate_to(Cli::command(), dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every subcommand, argument and option says what it is for in `--help` and the man
    /// pages: a new one without a doc comment fails here, naming it.
    #[test]
    fn every_command_argument_and_option_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(name.clone());
                }
                walk(sub, &name, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "pipeline", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}
