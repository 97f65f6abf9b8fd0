//! The `scopegate` binary: see `scopegate --help`.
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    scopegate::cli::Cli::run().await
}
