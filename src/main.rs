//! `pipeline`: parse the command line, run the command, turn errors into exit codes
//! (2 bad input, 1 a failed stage, 75 a work directory another rebuild holds, 128 + the signal
//! for a run stopped by one).

fn main() {
    let cli = virt_pipeline::cli::parse();
    if let Err(err) = virt_pipeline::commands::run(cli) {
        virt_pipeline::base::ui::print_error(&virt_pipeline::base::secrets::scrub(&format!("{err:#}")));
        // A run stopped by SIGINT/SIGTERM says so in its exit code (130/143), as shells do.
        let code =
            virt_pipeline::base::interrupt::exit_code().unwrap_or_else(|| virt_pipeline::base::error::exit_code(&err));
        std::process::exit(code);
    }
}
