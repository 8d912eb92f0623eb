//! `config-service`: parses [`config_service::Args`] and runs the service until SIGTERM/SIGINT.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = config_service::Args::parse();
    maas_ops::init_tracing("config-service");
    match config_service::run(args, maas_ops::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("config-service: {error}");
            ExitCode::FAILURE
        }
    }
}
