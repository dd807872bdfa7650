//! Telling an installer that works from one that waits for an answer nobody will give. The
//! serial console is the evidence: d-i's text frontend ends a question with a `Prompt:` line,
//! anaconda's text mode with "Please make a selection" or "Please respond".

/// Markers that the console's last lines show a question waiting for input.
const PROMPTS: &[&str] =
    &["Prompt: '?' for help", "Please make a selection from the above", "Please respond 'yes' or 'no'"];

/// The question on screen, if the console ends waiting at one: the lines from its title
/// (d-i underlines it with dashes; newt screens use `[!!]`-style headings) to the prompt,
/// cleaned of terminal escapes.
pub fn waiting_question(console: &str) -> Option<String> {
    let clean = strip_escapes(console);
    let lines: Vec<&str> = clean.lines().map(str::trim_end).filter(|l| !is_status_bar(l)).collect();
    let last = lines.iter().rposition(|l| !l.trim().is_empty())?;
    if !PROMPTS.iter().any(|p| lines[last].contains(p)) {
        return None;
    }
    let start = lines[..last]
        .iter()
        .rposition(|l| {
            let t = l.trim();
            let underline = t.len() >= 3 && t.chars().all(|c| c == '-');
            underline || t.starts_with("[!!]") || t.starts_with("[!]") || t.starts_with("[?]")
        })
        .map(|i| i.saturating_sub(1))
        .unwrap_or(last.saturating_sub(12))
        .max(last.saturating_sub(25));
    let screen: Vec<&str> = lines[start..=last].iter().map(|l| l.trim()).filter(|l| !l.is_empty()).collect();
    Some(screen.join("\n"))
}

/// d-i runs its text frontend inside GNU screen, whose status bar (`[ 0 start (1*installer)
/// ... ][ Nov 22  3:05 ]`) is redrawn every minute; it is not the installer's output.
fn is_status_bar(line: &str) -> bool {
    let t = line.trim();
    t.starts_with('[') && t.ends_with(']') && t.contains("][") && !t.starts_with("[!") && !t.starts_with("[?]")
}

/// How many questions the console shows in all.
pub fn questions_asked(console: &str) -> usize {
    strip_escapes(console).lines().filter(|l| PROMPTS.iter().any(|p| l.contains(p))).count()
}

pub use crate::vm::console::strip_escapes;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_installer_is_not_waiting() {
        let log = "Loading additional components\nRetrieving anna 1.87\nSetting up the clock\n";
        assert_eq!(waiting_question(log), None);
    }

    #[test]
    fn the_question_and_its_heading_are_reported() {
        let log = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/d-i-download-failed.log"))
            .expect("recorded d-i console");
        let q = waiting_question(&log).expect("d-i waits at a question");
        assert!(q.starts_with("Download installer components"), "{q}");
        assert!(q.contains("Downloading a file failed"), "{q}");
        assert!(q.ends_with("Prompt: '?' for help, default=1>"), "{q}");
        assert!(!q.contains('\u{1b}') && !q.contains("Nov 22"), "escapes and the status bar are gone: {q}");
        assert_eq!(questions_asked(&log), 1, "no question before the download failure");
    }

    #[test]
    fn anaconda_prompts_are_recognised() {
        let log = "Installation\n\n1) [x] Language settings\n2) [!] Root password\n\nPlease make a selection from the above ['b' to begin installation, 'q' to quit, 'r' to refresh]: ";
        assert!(waiting_question(log).unwrap().contains("Root password"));
    }

    #[test]
    fn escapes_are_stripped() {
        assert_eq!(strip_escapes("\u{1b}[1;31mred\u{1b}[0m\r\n"), "red\n");
    }
}
