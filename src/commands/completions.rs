//! `pipeline completions SHELL`: the completion script derived from the command-line
//! definition, so it never lags behind it.

use anyhow::Result;

pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    crate::cli::write_completions(shell, &mut std::io::stdout());
    Ok(())
}
