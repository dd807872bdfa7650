//! Go's `path/filepath` `Match` and `Glob`, which Virter's rsync step uses for `source`.
//! The `glob` crate differs on purpose-relevant points (`**` crosses directories, `[!x]`
//! negates, `*` skips dot files by option), so a Virter file would copy other files; this is
//! a port of Go's rules: `*` any run of non-`/` bytes (dot files included), `?` one non-`/`
//! character, `[...]` a class with `^` negation and `lo-hi` ranges, `\` escapes; a malformed
//! pattern is an error even when nothing is tried against it.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPattern;

impl std::fmt::Display for BadPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("syntax error in pattern")
    }
}

/// Go's `filepath.Match(pattern, name)` on Unix.
pub fn matches(pattern: &str, name: &str) -> Result<bool, BadPattern> {
    let mut pattern = pattern.as_bytes();
    let mut name = name.as_bytes();
    'pattern: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            // A trailing * matches the rest of the name unless it has a `/`.
            return Ok(!name.contains(&b'/'));
        }
        // A match at the current position, if it leaves nothing or more chunks follow.
        let (t, ok, err) = match_chunk(chunk, name);
        if ok && (t.is_empty() || !pattern.is_empty()) {
            name = t;
            continue;
        }
        if let Some(e) = err {
            return Err(e);
        }
        if star {
            // Skip i+1 bytes of the name, never a `/`.
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                let (t, ok, err) = match_chunk(chunk, &name[i + 1..]);
                if ok {
                    // The last chunk must use up the name.
                    if pattern.is_empty() && !t.is_empty() {
                        i += 1;
                        continue;
                    }
                    name = t;
                    continue 'pattern;
                }
                if let Some(e) = err {
                    return Err(e);
                }
                i += 1;
            }
        }
        // No match: still report a malformed rest of the pattern.
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            if let (_, _, Some(e)) = match_chunk(chunk, b"") {
                return Err(e);
            }
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

/// Leading stars, then the chunk up to the next star outside a class.
fn scan_chunk(mut pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut star = false;
    while pattern.first() == Some(&b'*') {
        pattern = &pattern[1..];
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' if i + 1 < pattern.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &pattern[..i], &pattern[i..])
}

/// One UTF-8 character at the start of `s`: (code point, bytes), or (U+FFFD, 1) when invalid.
fn decode(s: &[u8]) -> (u32, usize) {
    for n in 1..=s.len().min(4) {
        if let Ok(text) = std::str::from_utf8(&s[..n]) {
            if let Some(c) = text.chars().next() {
                return (c as u32, n);
            }
        }
    }
    (0xFFFD, 1)
}

/// Matches a chunk (no stars) at the start of `s`: (rest of s, matched, pattern error).
fn match_chunk<'a>(mut chunk: &[u8], mut s: &'a [u8]) -> (&'a [u8], bool, Option<BadPattern>) {
    // After a failure the chunk is still read to the end, to check its syntax.
    let mut failed = false;
    while !chunk.is_empty() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match chunk[0] {
            b'[' => {
                let mut r = 0;
                if !failed {
                    let (c, n) = decode(s);
                    r = c;
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let negated = chunk.first() == Some(&b'^');
                if negated {
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut ranges = 0;
                loop {
                    if chunk.first() == Some(&b']') && ranges > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let lo;
                    (lo, chunk) = match get_esc(chunk) {
                        Ok(v) => v,
                        Err(e) => return (b"", false, Some(e)),
                    };
                    let mut hi = lo;
                    if chunk[0] == b'-' {
                        (hi, chunk) = match get_esc(&chunk[1..]) {
                            Ok(v) => v,
                            Err(e) => return (b"", false, Some(e)),
                        };
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    ranges += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == b'/' {
                        failed = true;
                    }
                    let (_, n) = decode(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
            }
            c => {
                let c = if c == b'\\' {
                    chunk = &chunk[1..];
                    match chunk.first() {
                        Some(&c) => c,
                        None => return (b"", false, Some(BadPattern)),
                    }
                } else {
                    c
                };
                if !failed {
                    if c != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    if failed {
        (b"", false, None)
    } else {
        (s, true, None)
    }
}

/// One possibly escaped character of a class; the class must go on after it.
fn get_esc(mut chunk: &[u8]) -> Result<(u32, &[u8]), BadPattern> {
    if chunk.is_empty() || chunk[0] == b'-' || chunk[0] == b']' {
        return Err(BadPattern);
    }
    if chunk[0] == b'\\' {
        chunk = &chunk[1..];
        if chunk.is_empty() {
            return Err(BadPattern);
        }
    }
    let (r, n) = decode(chunk);
    if r == 0xFFFD && n == 1 {
        return Err(BadPattern);
    }
    let rest = &chunk[n..];
    if rest.is_empty() {
        return Err(BadPattern);
    }
    Ok((r, rest))
}

fn has_meta(path: &str) -> bool {
    path.contains(['*', '?', '[', '\\'])
}

/// Go's `filepath.Glob(pattern)` with relative patterns read against `base` (Go reads them
/// against the process's working directory). Names come back as Go prints them (relative
/// patterns give relative names, joined and cleaned like `filepath.Join`), sorted per
/// directory; unreadable directories are skipped, as Go does.
pub fn glob(base: &Path, pattern: &str) -> Result<Vec<String>, BadPattern> {
    glob_depth(base, pattern, 0)
}

fn glob_depth(base: &Path, pattern: &str, depth: usize) -> Result<Vec<String>, BadPattern> {
    // Go limits the recursion in the same way (its `pathSeparatorsLimit`).
    if depth > 10_000 {
        return Err(BadPattern);
    }
    matches(pattern, "")?;
    if !has_meta(pattern) {
        return Ok(if std::fs::symlink_metadata(base.join(pattern)).is_ok() {
            vec![pattern.to_string()]
        } else {
            vec![]
        });
    }
    let (dir, file) = match pattern.rfind('/') {
        Some(i) => (&pattern[..=i], &pattern[i + 1..]),
        None => ("", pattern),
    };
    let dir = match dir {
        "" => ".",
        "/" => "/",
        d => &d[..d.len() - 1],
    };
    if !has_meta(dir) {
        return read_matches(base, dir, file, Vec::new());
    }
    if dir == pattern {
        return Err(BadPattern);
    }
    let mut found = Vec::new();
    for d in glob_depth(base, dir, depth + 1)? {
        found = read_matches(base, &d, file, found)?;
    }
    Ok(found)
}

fn read_matches(base: &Path, dir: &str, pattern: &str, mut found: Vec<String>) -> Result<Vec<String>, BadPattern> {
    let full = base.join(dir);
    if !std::fs::metadata(&full).is_ok_and(|m| m.is_dir()) {
        return Ok(found);
    }
    let Ok(entries) = std::fs::read_dir(&full) else { return Ok(found) };
    let mut names: Vec<String> = entries.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).collect();
    names.sort();
    for name in names {
        if matches(pattern, &name)? {
            found.push(join_clean(dir, &name));
        }
    }
    Ok(found)
}

/// Go's `filepath.Join(dir, name)`: joined, then cleaned lexically.
fn join_clean(dir: &str, name: &str) -> String {
    clean(&format!("{dir}/{name}"))
}

/// Go's `filepath.Clean`.
pub fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".into();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// The part of a pattern before its first component with a glob character, as Virter
/// checks it (so a pattern pointing outside the working directory is refused even when
/// nothing matches): `/home/u/*.txt` -> `/home/u`, `foo/*/bar` -> `foo`, `*.rpm` -> `.`.
pub fn literal_prefix(pattern: &str) -> String {
    let mut prefix = Vec::new();
    for part in pattern.split('/') {
        if part.contains(['*', '?', '[']) {
            break;
        }
        prefix.push(part);
    }
    let joined = prefix.join("/");
    if joined.is_empty() {
        if pattern.starts_with('/') {
            "/".into()
        } else {
            ".".into()
        }
    } else {
        joined
    }
}

/// `path` (relative to `workdir`) made absolute, its symlinks resolved as far as it exists
/// and `..` removed, if that lies inside `workdir` (itself resolved); otherwise the path it
/// resolves to, as the error.
pub fn inside(workdir: &Path, path: &str) -> Result<PathBuf, PathBuf> {
    let root = std::fs::canonicalize(workdir).unwrap_or_else(|_| workdir.to_path_buf());
    let resolved = resolve(&root, path);
    if resolved.starts_with(&root) {
        Ok(resolved)
    } else {
        Err(resolved)
    }
}

/// Resolves symlinks of the longest existing ancestor and cleans the rest lexically.
fn resolve(root: &Path, path: &str) -> PathBuf {
    let joined = if path.starts_with('/') {
        PathBuf::from(clean(path))
    } else {
        PathBuf::from(clean(&format!("{}/{path}", root.display())))
    };
    let mut existing = joined.clone();
    let mut tail = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            let mut out = real;
            for part in tail.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => return joined,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Cases from Go's own match_test.go (those that apply on Unix).
    #[test]
    fn go_match_cases() {
        let cases: &[(&str, &str, Result<bool, BadPattern>)] = &[
            ("abc", "abc", Ok(true)),
            ("*", "abc", Ok(true)),
            ("*c", "abc", Ok(true)),
            ("a*", "a", Ok(true)),
            ("a*", "abc", Ok(true)),
            ("a*", "ab/c", Ok(false)),
            ("a*/b", "abc/b", Ok(true)),
            ("a*/b", "a/c/b", Ok(false)),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", Ok(true)),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", Ok(true)),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", Ok(false)),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", Ok(false)),
            ("a*b?c*x", "abxbbxdbxebxczzx", Ok(true)),
            ("a*b?c*x", "abxbbxdbxebxczzy", Ok(false)),
            ("ab[c]", "abc", Ok(true)),
            ("ab[b-d]", "abc", Ok(true)),
            ("ab[e-g]", "abc", Ok(false)),
            ("ab[^c]", "abc", Ok(false)),
            ("ab[^b-d]", "abc", Ok(false)),
            ("ab[^e-g]", "abc", Ok(true)),
            ("a\\*b", "a*b", Ok(true)),
            ("a\\*b", "ab", Ok(false)),
            ("a?b", "a☺b", Ok(true)),
            ("a[^a]b", "a☺b", Ok(true)),
            ("a???b", "a☺b", Ok(false)),
            ("a[^a][^a][^a]b", "a☺b", Ok(false)),
            ("[a-ζ]*", "α", Ok(true)),
            ("*[a-ζ]", "A", Ok(false)),
            ("a?b", "a/b", Ok(false)),
            ("a*b", "a/b", Ok(false)),
            ("[\\]a]", "]", Ok(true)),
            ("[\\-]", "-", Ok(true)),
            ("[x\\-]", "x", Ok(true)),
            ("[x\\-]", "-", Ok(true)),
            ("[x\\-]", "z", Ok(false)),
            ("[\\-x]", "x", Ok(true)),
            ("[\\-x]", "-", Ok(true)),
            ("[\\-x]", "a", Ok(false)),
            ("[]a]", "]", Err(BadPattern)),
            ("[-]", "-", Err(BadPattern)),
            ("[x-]", "x", Err(BadPattern)),
            ("[x-]", "-", Err(BadPattern)),
            ("[x-]", "z", Err(BadPattern)),
            ("[-x]", "x", Err(BadPattern)),
            ("[-x]", "-", Err(BadPattern)),
            ("[-x]", "a", Err(BadPattern)),
            ("\\", "a", Err(BadPattern)),
            ("[a-b-c]", "a", Err(BadPattern)),
            ("[", "a", Err(BadPattern)),
            ("[^", "a", Err(BadPattern)),
            ("[^bc", "a", Err(BadPattern)),
            ("a[", "a", Err(BadPattern)),
            ("a[", "ab", Err(BadPattern)),
            ("a[", "x", Err(BadPattern)),
            ("a/b[", "x", Err(BadPattern)),
            ("*x", "xxx", Ok(true)),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(&matches(pattern, name), want, "Match({pattern:?}, {name:?})");
        }
    }

    #[test]
    fn go_semantics_where_shell_globs_differ() {
        // `!` does not negate in Go; `^` does.
        assert_eq!(matches("[!x]", "!"), Ok(true));
        assert_eq!(matches("[!x]", "y"), Ok(false));
        // `**` is just two stars: never across a `/`.
        assert_eq!(matches("**.rpm", "a/b.rpm"), Ok(false));
        assert_eq!(matches("**.rpm", "b.rpm"), Ok(true));
        // Dot files match `*`.
        assert_eq!(matches("*", ".hidden"), Ok(true));
    }

    #[test]
    fn glob_reads_directories_like_go() {
        let d = tempfile::tempdir().unwrap();
        for f in ["a.rpm", "b.rpm", ".c.rpm", "x.txt", "sub/d.rpm", "sub/e.txt", "sub2/f.rpm"] {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, f).unwrap();
        }
        assert_eq!(glob(d.path(), "*.rpm").unwrap(), vec![".c.rpm", "a.rpm", "b.rpm"]);
        assert_eq!(glob(d.path(), "sub*/*.rpm").unwrap(), vec!["sub/d.rpm", "sub2/f.rpm"]);
        assert_eq!(glob(d.path(), "./sub/[d-e].*").unwrap(), vec!["sub/d.rpm", "sub/e.txt"]);
        assert_eq!(glob(d.path(), "**/*.txt").unwrap(), vec!["sub/e.txt"]);
        assert_eq!(glob(d.path(), "x.txt").unwrap(), vec!["x.txt"]);
        assert_eq!(glob(d.path(), "sub/").unwrap(), vec!["sub/"]);
        assert!(glob(d.path(), "nothing*").unwrap().is_empty());
        assert!(glob(d.path(), "missing").unwrap().is_empty());
        assert_eq!(glob(d.path(), "a[").unwrap_err(), BadPattern);
        let abs = format!("{}/s*/d.rpm", d.path().display());
        assert_eq!(glob(Path::new("/nonexistent"), &abs).unwrap(), vec![format!("{}/sub/d.rpm", d.path().display())]);
    }

    #[test]
    fn prefixes_and_workdir_containment() {
        assert_eq!(literal_prefix("/home/u/*.txt"), "/home/u");
        assert_eq!(literal_prefix("foo/*/bar.txt"), "foo");
        assert_eq!(literal_prefix("*.rpm"), ".");
        assert_eq!(literal_prefix("/*"), "/");
        assert_eq!(clean("./a/../b//c/"), "b/c");
        assert_eq!(clean("/../a"), "/a");
        assert_eq!(clean("../a"), "../a");
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("in")).unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("escape")).unwrap();
        assert!(inside(d.path(), "in/x").is_ok());
        assert!(inside(d.path(), ".").is_ok());
        assert!(inside(d.path(), "not-yet/there").is_ok());
        assert!(inside(d.path(), "../x").is_err());
        assert!(inside(d.path(), "/etc").is_err());
        assert!(inside(d.path(), "in/../../x").is_err());
        assert_eq!(inside(d.path(), "escape/passwd").unwrap_err(), PathBuf::from("/etc/passwd"));
        let own = format!("{}/in", d.path().display());
        assert!(inside(d.path(), &own).is_ok());
    }
}
