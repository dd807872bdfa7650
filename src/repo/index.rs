//! The virt-builder index format: `[id]` sections of `key=value` lines; a value continues on
//! lines that start with a space (notes).

use std::fmt::Write;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    pub id: String,
    /// Keys in file order; `checksum[sha512]` and the like are kept as written.
    pub fields: Vec<(String, String)>,
}

impl Entry {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some(f) => f.1 = value,
            None => self.fields.push((key.to_string(), value)),
        }
    }

    pub fn revision(&self) -> u64 {
        self.get("revision").and_then(|r| r.parse().ok()).unwrap_or(1)
    }

    pub fn file(&self) -> Option<&str> {
        self.get("file")
    }

    pub fn checksum(&self) -> Option<&str> {
        self.get("checksum[sha512]").or_else(|| self.get("checksum"))
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Index {
    pub entries: Vec<Entry>,
}

impl Index {
    pub fn parse(text: &str) -> Result<Index, String> {
        let mut entries: Vec<Entry> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if let Some(id) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                entries.push(Entry { id: id.to_string(), fields: Vec::new() });
                continue;
            }
            let entry = entries.last_mut().ok_or_else(|| format!("line {n}: a field before any [section]"))?;
            if let Some(more) = line.strip_prefix(' ') {
                let last =
                    entry.fields.last_mut().ok_or_else(|| format!("line {n}: a continuation line with no field"))?;
                last.1.push('\n');
                last.1.push_str(more);
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| format!("line {n}: expected key=value, got `{line}`"))?;
            entry.fields.push((k.to_string(), v.to_string()));
        }
        Ok(Index { entries })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            let _ = writeln!(out, "[{}]", e.id);
            for (k, v) in &e.fields {
                let _ = writeln!(out, "{k}={}", v.replace('\n', "\n "));
            }
        }
        out
    }

    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.id == id || e.get("aliases").is_some_and(|a| a.split_whitespace().any(|x| x == id)))
    }

    /// Adds the entry, or replaces the one with the same id in place.
    pub fn upsert(&mut self, entry: Entry) {
        match self.entries.iter_mut().find(|e| e.id == entry.id) {
            Some(e) => *e = entry,
            None => self.entries.push(entry),
        }
    }

    pub fn remove(&mut self, id: &str) -> Option<Entry> {
        let pos = self.entries.iter().position(|e| e.id == id)?;
        Some(self.entries.remove(pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "[debian-12]\nname=Debian 12\nosinfo=debian12\narch=x86_64\nfile=debian-12-r2.xz\nrevision=2\nchecksum[sha512]=abc\nformat=raw\nsize=4294967296\ncompressed_size=123\nexpand=/dev/sda1\nnotes=first line\n second line\n\n[other]\nfile=o.xz\n";

    #[test]
    fn round_trips_with_multiline_notes() {
        let idx = Index::parse(SAMPLE).unwrap();
        assert_eq!(idx.entries.len(), 2);
        let e = idx.get("debian-12").unwrap();
        assert_eq!(e.revision(), 2);
        assert_eq!(e.checksum(), Some("abc"));
        assert_eq!(e.get("notes"), Some("first line\nsecond line"));
        assert_eq!(idx.render(), SAMPLE);
    }

    #[test]
    fn upsert_replaces_in_place() {
        let mut idx = Index::parse(SAMPLE).unwrap();
        let mut e = idx.get("debian-12").unwrap().clone();
        e.set("revision", "3");
        idx.upsert(e);
        assert_eq!(idx.entries[0].revision(), 3);
        assert_eq!(idx.entries.len(), 2);
        assert!(Index::parse("key=value\n").is_err());
    }
}
