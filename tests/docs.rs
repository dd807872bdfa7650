//! The manual's links: every relative link in README.md and docs/ names a file that exists
//! and, with `#anchor`, a heading of that file (GitHub's anchors: the heading in lower case,
//! punctuation but `-` and `_` dropped, spaces as `-`). Runs nothing else.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The lines of a Markdown file outside fenced code blocks.
fn prose(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut in_code = false;
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code {
            lines.push((n + 1, line.to_string()));
        }
    }
    lines
}

fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(path: &Path) -> Vec<String> {
    prose(path)
        .iter()
        .filter_map(|(_, l)| {
            let hashes = l.chars().take_while(|&c| c == '#').count();
            (1..=6).contains(&hashes).then(|| l[hashes..].strip_prefix(' ')).flatten().map(anchor)
        })
        .collect()
}

/// `](target)` link targets of a line.
fn links(line: &str) -> Vec<String> {
    line.match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &line[at + 2..];
            let end = rest.find(')')?;
            let target = &rest[..end];
            (!target.contains(char::is_whitespace)).then(|| target.to_string())
        })
        .collect()
}

#[test]
fn every_relative_link_and_anchor_of_the_manual_resolves() {
    let root = root();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    assert!(docs.len() >= 10, "docs/ has a page per topic: {docs:?}");
    files.extend(docs);
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        for (n, line) in prose(file) {
            for target in links(&line) {
                if target.starts_with("http://") || target.starts_with("https://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (path, fragment) = target.split_once('#').unwrap_or((&target, ""));
                let linked = if path.is_empty() { file.clone() } else { file.parent().unwrap().join(path) };
                if !linked.exists() {
                    broken.push(format!("{}:{n}: {target}: no such file", file.display()));
                } else if !fragment.is_empty()
                    && linked.extension().is_some_and(|e| e == "md")
                    && !anchors(&linked).contains(&fragment.to_string())
                {
                    broken.push(format!("{}:{n}: {target}: no such heading", file.display()));
                }
            }
        }
    }
    assert!(checked > 30, "only {checked} links found: the parser is broken");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn anchors_are_made_as_github_makes_them() {
    assert_eq!(anchor("Cloud-init seeds: `pipeline seed`"), "cloud-init-seeds-pipeline-seed");
    assert_eq!(anchor("--set"), "--set");
    assert_eq!(anchor("target = \"docker\""), "target--docker");
    assert_eq!(links("see [a](docs/x.md#y) and [b](https://e.org) [c](#z)"), ["docs/x.md#y", "https://e.org", "#z"]);
}

/// docs/cli.md is what `pipeline reference` prints: the help of every command, never stale.
#[test]
fn the_command_line_reference_is_current() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline")).arg("reference").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(root().join("docs/cli.md")).unwrap();
    let made = String::from_utf8(out.stdout).unwrap();
    assert!(made.contains("## pipeline repo init") && made.contains("--until <N|KIND>"), "{made}");
    assert!(page == made, "docs/cli.md is out of date: regenerate it with `pipeline reference > docs/cli.md`");
}
