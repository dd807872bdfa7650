//! `pipeline`: parse the command line, run the command, turn errors into exit codes
//! (2 bad input, 1 a failed stage).

use clap::Parser;

fn main() {
    let cli = virt_pipeline::cli::Cli::parse();
    if let Err(err) = virt_pipeline::commands::run(cli) {
        eprintln!("error: {}", virt_pipeline::engine::secrets::scrub(&format!("{err:#}")));
        std::process::exit(virt_pipeline::error::exit_code(&err));
    }
}
