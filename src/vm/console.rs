//! The serial console of a VM: read incrementally from the file qemu writes, with the
//! recent text kept for error messages (shared by every stage that boots something).

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Removes ANSI escape sequences and carriage returns.
pub fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    while let Some(&n) = chars.peek() {
                        chars.next();
                        if n.is_ascii_alphabetic() || n == '~' {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// The console's last 15 lines, reaching back (at most 40) to a kernel panic's first line,
/// whose call trace would otherwise hide the reason.
pub fn last_lines(console: &str) -> String {
    let lines: Vec<&str> = console.lines().collect();
    let mut start = lines.len().saturating_sub(15);
    if let Some(panic) = lines.iter().rposition(|l| l.contains("Kernel panic")) {
        start = start.min(panic.max(lines.len().saturating_sub(40)));
    }
    lines[start..].join("\n")
}

/// How much of the console the watcher keeps: enough for a full installer screen with its
/// escape sequences (the stall detector looks at the last 25 lines).
pub const CONSOLE_TAIL: usize = 64 << 10;

/// Reads a growing console file incrementally: one open handle, only the bytes added since
/// the last read, complete lines handed out once, and a bounded tail of recent text.
pub struct ConsoleReader {
    path: PathBuf,
    file: Option<std::fs::File>,
    /// Bytes after the last newline, waiting for the rest of their line.
    partial: Vec<u8>,
    /// The most recent bytes, at most `limit` of them.
    recent: std::collections::VecDeque<u8>,
    limit: usize,
}

impl ConsoleReader {
    pub fn new(path: &Path, limit: usize) -> ConsoleReader {
        ConsoleReader {
            path: path.to_path_buf(),
            file: None,
            partial: Vec::new(),
            recent: std::collections::VecDeque::new(),
            limit,
        }
    }

    /// The complete lines written since the last call (a file not yet created has none).
    pub fn poll(&mut self) -> Result<Vec<String>> {
        use std::io::Read;
        if self.file.is_none() {
            match std::fs::File::open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", self.path.display())),
            }
        }
        let mut buf = [0u8; 64 << 10];
        let mut lines = Vec::new();
        loop {
            let file = self.file.as_mut().expect("opened above");
            let n = file.read(&mut buf).with_context(|| format!("cannot read {}", self.path.display()))?;
            if n == 0 {
                break;
            }
            let new = &buf[..n];
            self.recent.extend(new);
            let excess = self.recent.len().saturating_sub(self.limit);
            self.recent.drain(..excess);
            self.partial.extend_from_slice(new);
            if let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') {
                let rest = self.partial.split_off(end + 1);
                let done = std::mem::replace(&mut self.partial, rest);
                lines.extend(String::from_utf8_lossy(&done).lines().map(str::to_string));
            } else if self.partial.len() > self.limit {
                // A console that never ends its line is still logged, in pieces.
                lines.extend(self.flush());
            }
        }
        Ok(lines)
    }

    /// The unfinished last line, as a line of its own (once the writer is gone).
    pub fn flush(&mut self) -> Vec<String> {
        let rest = std::mem::take(&mut self.partial);
        String::from_utf8_lossy(&rest).lines().map(str::to_string).collect()
    }

    /// The recent text, unfinished line included (a waiting prompt has no newline).
    pub fn tail(&self) -> String {
        let (a, b) = self.recent.as_slices();
        let mut bytes = Vec::with_capacity(a.len() + b.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_panic_is_quoted_from_its_first_line() {
        let mut console = String::from("booting\nKernel panic - not syncing: VFS: Unable to mount root fs\n");
        for i in 0..20 {
            console.push_str(&format!("trace {i}\n"));
        }
        let quoted = last_lines(&console);
        assert!(quoted.starts_with("Kernel panic") && quoted.ends_with("trace 19"), "{quoted}");
        let quiet: String = (0..30).map(|i| format!("line {i}\n")).collect();
        assert!(last_lines(&quiet).starts_with("line 15\n"));
    }
    use std::io::Write;

    #[test]
    fn only_new_complete_lines_are_returned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut reader = ConsoleReader::new(&path, 1 << 10);
        assert!(reader.poll().unwrap().is_empty(), "no file yet");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"one\ntw").unwrap();
        assert_eq!(reader.poll().unwrap(), ["one"]);
        assert!(reader.poll().unwrap().is_empty(), "nothing new, nothing returned");
        f.write_all(b"o\nthree\nPrompt: '?' for help>").unwrap();
        assert_eq!(reader.poll().unwrap(), ["two", "three"]);
        assert!(reader.tail().ends_with("three\nPrompt: '?' for help>"), "the tail keeps the open line");
        assert_eq!(reader.flush(), ["Prompt: '?' for help>"]);
    }

    #[test]
    fn the_tail_is_bounded_and_multibyte_text_survives_splits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut f = std::fs::File::create(&path).unwrap();
        let mut reader = ConsoleReader::new(&path, 100);
        // A character split across two writes comes out whole.
        f.write_all(&"é\n".as_bytes()[..1]).unwrap();
        assert!(reader.poll().unwrap().is_empty());
        f.write_all(&"é\n".as_bytes()[1..]).unwrap();
        assert_eq!(reader.poll().unwrap(), ["é"]);
        for i in 0..1000 {
            writeln!(f, "line {i}").unwrap();
        }
        let lines = reader.poll().unwrap();
        assert_eq!(lines.len(), 1000);
        assert_eq!(lines[999], "line 999");
        let tail = reader.tail();
        assert!(tail.len() <= 100 && tail.ends_with("line 999\n"), "{tail}");
    }
}
