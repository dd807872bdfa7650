//! Each stage's full log: every command it ran with all of its output, appliance messages
//! and serial console lines. Commands stream into the log and show their last line on the
//! stage's progress spinner.

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct StageLog {
    path: PathBuf,
    file: Arc<Mutex<File>>,
    tail: Arc<Mutex<Vec<String>>>,
}

const TAIL_LINES: usize = 25;

impl StageLog {
    pub fn create(path: &Path) -> Result<StageLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create log directory {}", dir.display()))?;
        }
        let file = File::create(path).with_context(|| format!("cannot create log {}", path.display()))?;
        Ok(StageLog { path: path.to_path_buf(), file: Arc::new(Mutex::new(file)), tail: Default::default() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a line, scrubbed of registered secrets.
    pub fn line(&self, line: impl AsRef<str>) {
        let line = crate::base::secrets::scrub(line.as_ref());
        let line = line.as_ref();
        if let Ok(mut f) = self.file.lock() {
            let _ = writeln!(f, "{line}");
        }
        if let Ok(mut t) = self.tail.lock() {
            t.push(line.to_string());
            if t.len() > TAIL_LINES {
                t.remove(0);
            }
        }
    }

    /// The last lines logged, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let t = self.tail.lock().map(|t| t.clone()).unwrap_or_default();
        t[t.len().saturating_sub(n)..].join("\n")
    }

    /// Runs a command to completion, its stdout and stderr going to the log line by line and
    /// its latest line to `bar`. Returns the exit status; spawning failures are errors.
    pub fn run(&self, cmd: &mut Command, bar: &ProgressBar) -> Result<ExitStatus> {
        self.line(format!("$ {}", crate::base::secrets::describe_command(cmd)));
        crate::base::interrupt::dies_with_parent(cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
        let readers: Vec<_> = [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|stream| {
            let log = self.clone();
            let bar = bar.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                    let line = crate::base::secrets::scrub(String::from_utf8_lossy(&line).trim_end()).into_owned();
                    if !line.is_empty() {
                        bar.set_message(line.clone());
                    }
                    log.line(line);
                }
            })
        })
        .collect();
        let status = child.wait()?;
        for r in readers {
            let _ = r.join();
        }
        self.line(format!("[{status}]"));
        Ok(status)
    }

    /// Like [`run`](Self::run), but a non-zero exit is an error carrying the last lines.
    pub fn run_checked(&self, cmd: &mut Command, bar: &ProgressBar) -> Result<()> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let status = self.run(cmd, bar)?;
        if !status.success() {
            anyhow::bail!(
                "{program} failed ({status}); last lines:\n{}\n(full log: {})",
                self.tail(12),
                self.path.display()
            );
        }
        Ok(())
    }
}
