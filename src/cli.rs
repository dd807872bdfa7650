//! Command-line arguments (clap derive) and nothing else; the work is in `commands`.

use crate::vm::AccelChoice;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "pipeline",
    version,
    about = "Build VM images in layers: install, customize, sysprep, publish to a signed virt-builder repository"
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
    pub accel: AccelChoice,
    /// More output.
    #[arg(short, long, global = true)]
    pub verbose: bool,
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
    },
    /// Check a pipeline file without running anything.
    Validate {
        #[command(flatten)]
        pipeline: PipelineArgs,
    },
    /// Show each stage, its cache key, whether it is cached, and the files it reads.
    Plan {
        #[command(flatten)]
        pipeline: PipelineArgs,
        #[arg(long)]
        build_id: Option<String>,
    },
    /// Inspect a disk image: operating system, version, package manager, filesystems.
    Inspect {
        image: PathBuf,
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
    /// Serve a repository over HTTP for virt-builder clients.
    Serve {
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// List layers: key, size on disk, pipeline, stage, last use.
    Ls,
    /// Remove layers unused for N days (and not under a layer that stays).
    Gc {
        #[arg(long, default_value_t = 14)]
        keep_days: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum RepoCommand {
    /// Create a repository: signing key, public key, virt-builder .conf, empty signed index.
    Init {
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
    List { dir: PathBuf },
    /// Show one entry's fields.
    Show { dir: PathBuf, name: String },
    /// Remove an entry and its image.
    Remove {
        dir: PathBuf,
        name: String,
        #[arg(long)]
        sign_key: Option<String>,
    },
    /// Delete image files of older revisions, keeping the newest N per entry.
    Prune {
        dir: PathBuf,
        #[arg(long, default_value_t = 2)]
        keep: usize,
    },
    /// Check the signature, every checksum and size, and that every file exists.
    Verify {
        dir: PathBuf,
        /// Require the index to be signed by this key.
        #[arg(long)]
        fingerprint: Option<String>,
    },
}
