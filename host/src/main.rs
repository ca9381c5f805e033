//! The `dazaar` command-line tool: wiring only; the work is done by the `dazaar` library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
