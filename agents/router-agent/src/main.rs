//! `router-agent` binary: parse the command line, set up logging, run.
use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    maas_ops::init_tracing("router-agent");
    let cli = router_agent::args::Cli::parse();
    router_agent::main_with(cli, maas_ops::shutdown_signal()).await
}
