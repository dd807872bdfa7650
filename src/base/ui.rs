//! Progress on the terminal (indicatif) and plain lines when stderr is not a terminal, so
//! nightly runs under systemd or CI keep a readable log.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// `-q`: no progress and no lines for the user, only errors (printed by `main`) and a
/// command's own output on standard output. Set once, before any [`Ui`] is made.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
}

/// `--color`: when errors and warnings on standard error are coloured (anstream decides
/// "auto" from the terminal, NO_COLOR and CLICOLOR_FORCE).
pub fn set_color(choice: anstream::ColorChoice) {
    choice.write_global();
}

const ERROR: anstyle::Style = anstyle::AnsiColor::Red.on_default().bold();
const WARNING: anstyle::Style = anstyle::AnsiColor::Yellow.on_default().bold();

/// `text` with `prefix` (such as `error:`) in `style` when standard error takes colour.
fn styled(style: anstyle::Style, prefix: &str, text: &str) -> String {
    match anstream::AutoStream::choice(&std::io::stderr()) {
        anstream::ColorChoice::Never => format!("{prefix}{text}"),
        _ => format!("{style}{prefix}{style:#}{text}"),
    }
}

/// The tool's last word on a failed command: `error: MESSAGE` on standard error.
pub fn print_error(message: &str) {
    eprintln!("{}", styled(ERROR, "error:", &format!(" {message}")));
}

#[derive(Clone)]
pub struct Ui {
    multi: MultiProgress,
    tty: bool,
    quiet: bool,
}

impl Default for Ui {
    fn default() -> Ui {
        Ui::new()
    }
}

impl Ui {
    pub fn new() -> Ui {
        let quiet = QUIET.load(std::sync::atomic::Ordering::Relaxed);
        let tty = std::io::stderr().is_terminal() && !quiet;
        let target = if tty { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        Ui { multi: MultiProgress::with_draw_target(target), tty, quiet }
    }

    /// A line for the user, printed above any progress bars (nothing with `-q`; the stage
    /// log keeps everything).
    pub fn line(&self, msg: impl AsRef<str>) {
        if self.quiet {
            return;
        }
        let msg = crate::base::secrets::scrub(msg.as_ref());
        // A warning anywhere in the line (`[2/4] publish: warning: ...`) is marked.
        let msg = match msg.split_once("warning:") {
            Some((before, after)) => std::borrow::Cow::Owned(format!("{before}{}", styled(WARNING, "warning:", after))),
            None => msg,
        };
        if self.tty {
            let _ = self.multi.println(msg.as_ref());
        } else {
            eprintln!("{msg}");
        }
    }

    /// A spinner with elapsed time for work of unknown length (VM runs, appliance work);
    /// its message is the latest output line.
    pub fn spinner(&self, prefix: &str) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} [{elapsed_precise}] {wide_msg}").expect("valid template"),
        );
        bar.set_prefix(prefix.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    /// A byte-counting bar for copies, downloads and compression.
    pub fn bytes(&self, prefix: &str, total: u64) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {wide_msg}",
            )
            .expect("valid template"),
        );
        bar.set_prefix(prefix.to_string());
        bar
    }
}

/// 1.2 GiB, 310.0 MiB: sizes as people read them (plain bytes below 1 KiB).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_as_people_read_them() {
        assert_eq!(super::human_bytes(512), "512 B");
        assert_eq!(super::human_bytes(4 << 30), "4.0 GiB");
        assert_eq!(super::human_bytes(310 << 20), "310.0 MiB");
    }
}
