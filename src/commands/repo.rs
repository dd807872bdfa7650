//! `pipeline repo ...`: a signed repository, local or on object storage.

use crate::bad_input;
use crate::cli::RepoCommand;
use crate::engine::ui::{human_bytes, Ui};
use crate::repo::Repo;
use anyhow::{Context, Result};
use std::path::Path;

/// The repository URL when a repository argument names object storage.
fn remote_url(dir: &Path) -> Option<&str> {
    dir.to_str().filter(|d| crate::s3::is_s3(d))
}

pub fn repo(command: RepoCommand) -> Result<()> {
    let remote = match &command {
        RepoCommand::Init { dir, .. }
        | RepoCommand::List { dir }
        | RepoCommand::Show { dir, .. }
        | RepoCommand::Diff { dir, .. }
        | RepoCommand::Remove { dir, .. }
        | RepoCommand::Prune { dir, .. }
        | RepoCommand::Verify { dir, .. } => remote_url(dir).map(str::to_string),
    };
    if let Some(url) = remote {
        return remote_repo_command(&url, command);
    }
    match command {
        RepoCommand::Init { dir, generate_key, sign_key, uri } => {
            let (repo, fpr) = Repo::init(&dir, sign_key.as_deref(), generate_key.as_deref(), uri.as_deref())?;
            println!("repository {} signed by {fpr}", dir.display());
            println!("public key: {}", repo.public_key_path().display());
            if uri.is_some() {
                println!(
                    "virt-builder sources file: {} (clients: copy it and {} to {})",
                    repo.conf_path().display(),
                    repo.public_key_path().display(),
                    crate::repo::CLIENT_REPOS_D
                );
            } else {
                println!(
                    "virt-builder sources file: {} (copy it to ~/.config/virt-builder/repos.d/)",
                    repo.conf_path().display()
                );
            }
        }
        RepoCommand::List { dir } => print_entries(&Repo::open(&dir)?.index()?),
        RepoCommand::Show { dir, name } => {
            let index = Repo::open(&dir)?.index()?;
            let e = index.get(&name).ok_or_else(|| bad_input!("{}: no entry `{name}`", dir.display()))?;
            println!("[{}]", e.id);
            for (k, v) in &e.fields {
                println!("{k}={}", v.replace('\n', "\n "));
            }
            let repo = Repo::open(&dir)?;
            match repo.manifest(&name, e.revision()) {
                Ok(m) => print_manifest(&m),
                Err(err) => println!("\nno package manifest: {err:#}"),
            }
        }
        RepoCommand::Diff { dir, name, rev_a, rev_b, json } => repo_diff(&dir, &name, rev_a, rev_b, json)?,
        RepoCommand::Remove { dir, name, sign_key } => {
            let e = Repo::open(&dir)?.remove(&name, sign_key.as_deref())?;
            println!("removed {} (revision {})", e.id, e.revision());
        }
        RepoCommand::Prune { dir, keep } => {
            for p in Repo::open(&dir)?.prune(keep)? {
                println!("removed {}", p.display());
            }
        }
        RepoCommand::Verify { dir, fingerprint } => {
            let problems = Repo::open(&dir)?.verify(fingerprint.as_deref()).context("cannot verify")?;
            if problems.is_empty() {
                println!("{}: ok", dir.display());
            } else {
                for p in &problems {
                    eprintln!("{}: {p}", dir.display());
                }
                anyhow::bail!("{}: {} problem(s)", dir.display(), problems.len());
            }
        }
    }
    Ok(())
}

/// `repo` commands on a repository on object storage.
fn remote_repo_command(url: &str, command: RepoCommand) -> Result<()> {
    use crate::repo::remote::RemoteRepo;
    match command {
        RepoCommand::Init { generate_key, sign_key, uri, .. } => {
            let (repo, fpr) = RemoteRepo::init(url, sign_key.as_deref(), generate_key.as_deref(), uri.as_deref())?;
            println!("repository {url} signed by {fpr}");
            // Only for the operator's information: publishing never depends on it.
            match repo.store.honours_conditional_put() {
                Ok(true) => println!("{}: honours conditional writes (an extra guard on records)", repo.store.endpoint),
                Ok(false) => println!(
                    "{}: ignores conditional writes (as Garage does); publishing does not need them",
                    repo.store.endpoint
                ),
                Err(e) => {
                    println!("{}: could not tell whether it honours conditional writes: {e:#}", repo.store.endpoint)
                }
            }
            let name = repo.name();
            println!("public key: {}", repo.store.url(&format!("{name}.asc")));
            println!(
                "virt-builder sources file: {} (clients: copy it and {name}.asc to {})",
                repo.store.url(&format!("{name}.conf")),
                crate::repo::CLIENT_REPOS_D
            );
        }
        RepoCommand::List { .. } => print_entries(&RemoteRepo::connect(url)?.index()?),
        RepoCommand::Show { name, .. } => {
            let repo = RemoteRepo::connect(url)?;
            let index = repo.index()?;
            let e = index.get(&name).ok_or_else(|| bad_input!("{url}: no entry `{name}`"))?;
            println!("[{}]", e.id);
            for (k, v) in &e.fields {
                println!("{k}={}", v.replace('\n', "\n "));
            }
            let manifests = repo.manifests(&name)?;
            if let Some(m) = manifests.get(&e.revision()) {
                print_manifest(m);
            }
        }
        RepoCommand::Diff { dir, name, rev_a, rev_b, json } => repo_diff(&dir, &name, rev_a, rev_b, json)?,
        RepoCommand::Remove { name, sign_key, .. } => {
            let e = RemoteRepo::connect(url)?.remove(&name, sign_key.as_deref())?;
            println!("removed {} (revision {})", e.id, e.revision());
        }
        RepoCommand::Prune { keep, .. } => {
            for p in RemoteRepo::connect(url)?.prune(keep)? {
                println!("removed {p}");
            }
        }
        RepoCommand::Verify { fingerprint, .. } => {
            let ui = Ui::new();
            let problems = RemoteRepo::connect(url)?.verify(fingerprint.as_deref(), &ui).context("cannot verify")?;
            if problems.is_empty() {
                println!("{url}: ok");
            } else {
                for p in &problems {
                    eprintln!("{url}: {p}");
                }
                anyhow::bail!("{url}: {} problem(s)", problems.len());
            }
        }
    }
    Ok(())
}

fn print_manifest(m: &crate::repo::manifest::Manifest) {
    println!();
    match m.package_list() {
        Some(list) => println!("packages:  {}", list.len()),
        None => println!("packages:  unknown ({})", m.packages_unreadable.as_deref().unwrap_or("")),
    }
    println!("pipeline:  {}", m.provenance.pipeline);
    println!("layer:     {}", m.provenance.layer);
    println!("tool:      {}", m.provenance.tool);
    println!("built:     {}", m.provenance.built);
}

fn print_entries(index: &crate::repo::index::Index) {
    for e in &index.entries {
        println!(
            "{:<24} r{:<4} {:<10} {:<8} {}",
            e.id,
            e.revision(),
            e.get("osinfo").unwrap_or("-"),
            e.get("arch").unwrap_or("-"),
            e.get("compressed_size").and_then(|s| s.parse().ok()).map(human_bytes).unwrap_or_default()
        );
    }
}

/// `repo diff`: the two revisions' manifests, verified, compared.
fn repo_diff(dir: &Path, name: &str, rev_a: Option<u64>, rev_b: Option<u64>, json: bool) -> Result<()> {
    let c = crate::repo::changes::compare(dir, name, rev_a, rev_b)?;
    let d = &c.diff;
    if json {
        let out = serde_json::json!({ "name": name, "from": c.from, "to": c.to, "added": d.added, "removed": d.removed, "changed": d.changed });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{name}: revision {} -> {}", c.from, c.to);
    for p in &d.added {
        println!("+ {} {} ({})", p.name, p.version, p.arch);
    }
    for p in &d.removed {
        println!("- {} {} ({})", p.name, p.version, p.arch);
    }
    for c in &d.changed {
        println!("~ {} {} -> {} ({})", c.name, c.old, c.new, c.arch);
    }
    println!("{} added, {} removed, {} changed", d.added.len(), d.removed.len(), d.changed.len());
    Ok(())
}
