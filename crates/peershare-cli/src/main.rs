//! The `peershare` binary: turns arguments into engine calls, shows
//! progress, and maps errors to one line on stderr and an exit status.

mod cli;
mod commands;
mod lan;
mod progress;
mod remote;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// Exit statuses (documented in the README).
pub mod exit {
    /// Anything not listed below.
    pub const FAILURE: u8 = 1;
    /// Bad command line (clap's own status).
    pub const USAGE: u8 = 2;
    /// No peer could be reached.
    pub const UNREACHABLE: u8 = 3;
    /// No peer has the file, or nothing matches.
    pub const NOT_FOUND: u8 = 4;
    /// Every source sent data that failed verification.
    pub const CORRUPT: u8 = 5;
    /// A local file problem: output exists, disk full, permission.
    pub const LOCAL: u8 = 6;
    /// The peer serves only nodes it trusts, and not this one.
    pub const REFUSED: u8 = 7;
    /// Interrupted (progress is kept; run again to resume).
    pub const INTERRUPTED: u8 = 130;
}

/// An error on its way to the user: one line and an exit status.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    pub fn new(code: u8, message: impl std::fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            code,
        }
    }
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging(cli.verbose, &cli.command);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return report(&Failure::new(exit::FAILURE, format!("cannot start: {e}"))),
    };
    let result = runtime.block_on(commands::run(cli));
    // A blocking-pool read stuck in the kernel (a hung network filesystem,
    // a FIFO put in place of a file) outlives `serve`'s shutdown; dropping
    // the runtime would wait for it forever. Everything else is done by now.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => report(&f),
    }
}

/// How long the process waits, on its way out, for blocking-pool work that
/// is still running (none, unless a read is stuck).
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(1);

fn report(f: &Failure) -> ExitCode {
    // One line, whatever the error's text holds (peers' words included).
    let line = commands::printable(&f.message);
    let _ = writeln!(std::io::stderr(), "peershare: error: {line}");
    ExitCode::from(f.code)
}

fn init_logging(verbose: u8, command: &cli::Command) {
    use tracing::Level;
    let level = match verbose {
        0 if matches!(command, cli::Command::Serve(_)) => Level::INFO,
        0 => Level::WARN,
        1 => Level::INFO,
        2 => Level::DEBUG,
        _ => Level::TRACE,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
