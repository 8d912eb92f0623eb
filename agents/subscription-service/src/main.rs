//! `subscription-service` binary: parse the command line, set up logging, run.
use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    maas_ops::init_tracing("subscription-service");
    let cli = subscription_service::args::Cli::parse();
    subscription_service::main_with(cli, maas_ops::shutdown_signal()).await
}
