//! `storage-controller` binary: parse the command line, set up logging, run.
use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    maas_ops::init_tracing("storage-controller");
    let cli = storage_controller::args::Cli::parse();
    storage_controller::main_with(cli, maas_ops::shutdown_signal()).await
}
