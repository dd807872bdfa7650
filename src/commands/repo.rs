//! `pipeline repo ...`: a signed repository, local or on object storage, through the one
//! repository interface.

use crate::bad_input;
use crate::base::ui::{human_bytes, Ui};
use crate::cli::RepoCommand;
use crate::repo::location::Location;
use crate::repo::repository::{self, Repository};
use anyhow::{Context, Result};
use std::path::Path;

/// A repository argument: a directory relative to the working directory, or a URL.
fn location(arg: &Path) -> Result<Location> {
    let text = arg.to_str().ok_or_else(|| bad_input!("{}: not a UTF-8 path", arg.display()))?;
    Location::parse(text, Path::new(".")).map_err(|e| bad_input!("{e:#}"))
}

pub fn repo(command: RepoCommand) -> Result<()> {
    match command {
        RepoCommand::Init { dir, generate_key, sign_key, uri } => {
            let at = location(&dir)?;
            let made = repository::init(&at, sign_key.as_deref(), generate_key.as_deref(), uri.as_deref())?;
            println!("repository {} signed by {}", dir.display(), made.fingerprint);
            for note in made.notes {
                println!("{note}");
            }
        }
        RepoCommand::List { dir, json } => {
            let index = repository::open(&location(&dir)?)?.index()?;
            if json {
                let entries: Vec<serde_json::Value> = index.entries.iter().map(entry_json).collect();
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print_entries(&index);
            }
        }
        RepoCommand::Show { dir, name, json } => {
            let repo = repository::open(&location(&dir)?)?;
            let index = repo.index()?;
            let e = index.get(&name).ok_or_else(|| bad_input!("{}: no entry `{name}`", dir.display()))?;
            if json {
                let mut out = entry_json(e);
                match repo.manifest(&name, e.revision()) {
                    Ok(m) => {
                        out["packages"] = serde_json::json!(m.package_list().map(|l| l.len()));
                        out["provenance"] = serde_json::to_value(&m.provenance)?;
                        out["documents"] = serde_json::to_value(&m.documents)?;
                    }
                    Err(err) => out["manifest_error"] = serde_json::json!(format!("{err:#}")),
                }
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(());
            }
            println!("[{}]", e.id);
            for (k, v) in &e.fields {
                println!("{k}={}", v.replace('\n', "\n "));
            }
            match repo.manifest(&name, e.revision()) {
                Ok(m) => print_manifest(&m),
                Err(err) => println!("\nno package manifest: {err:#}"),
            }
        }
        RepoCommand::Diff { dir, name, rev_a, rev_b, json } => {
            repo_diff(repository::open(&location(&dir)?)?.as_ref(), &name, rev_a, rev_b, json)?
        }
        RepoCommand::Remove { dir, name, sign_key } => {
            let e = repository::open(&location(&dir)?)?.remove(&name, sign_key.as_deref())?;
            println!("removed {} (revision {})", e.id, e.revision());
        }
        RepoCommand::Prune { dir, keep } => {
            for removed in repository::open(&location(&dir)?)?.prune(keep)? {
                println!("removed {removed}");
            }
        }
        RepoCommand::Verify { dir, fingerprint } => {
            let ui = Ui::new();
            let repo = repository::open(&location(&dir)?)?;
            let problems = repo.verify(fingerprint.as_deref(), &ui).context("cannot verify")?;
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
    if !m.documents.is_empty() {
        println!("sboms:     {}", m.documents.keys().cloned().collect::<Vec<_>>().join(", "));
    }
}

/// An index entry as `repo list --json` and `repo show --json` print it: its name, revision
/// and every field of the index as written (`checksum[sha512]`, `size`, `notes`, ...).
fn entry_json(e: &crate::repo::index::Entry) -> serde_json::Value {
    let fields: serde_json::Map<String, serde_json::Value> =
        e.fields.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    serde_json::json!({ "name": e.id, "revision": e.revision(), "fields": fields })
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
fn repo_diff(repo: &dyn Repository, name: &str, rev_a: Option<u64>, rev_b: Option<u64>, json: bool) -> Result<()> {
    let c = crate::repo::changes::compare(repo, name, rev_a, rev_b)?;
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
