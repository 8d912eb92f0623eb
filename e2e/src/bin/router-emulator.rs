//! `router-emulator`: runs the qdrouterd 1.19.0 management emulator on 127.0.0.1 until SIGTERM/SIGINT.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use maas_e2e::router::{EmulatorConfig, RouterEmulator};

/// Emulates the AMQP management node of a stock qdrouterd 1.19.0 (router.config.address/linkRoute/autoLink,
/// connector, listener), with the real router's status texts, cost shape and restart behaviour.
#[derive(Debug, Parser)]
#[command(name = "router-emulator", version)]
struct Args {
    /// Address to listen on (loopback only).
    #[arg(long, env = "ROUTER_EMULATOR_LISTEN", default_value = "127.0.0.1:5672")]
    listen: SocketAddr,
    /// Router id: container-id of the open frame and part of dynamic reply addresses.
    #[arg(long, env = "ROUTER_ID", default_value = "Router.A")]
    router_id: String,
    /// Answer instantly instead of reproducing the real router's management costs.
    #[arg(long, env = "ROUTER_EMULATOR_NO_COST_MODEL")]
    no_cost_model: bool,
    /// Extra latency added to every reply, in milliseconds.
    #[arg(long, env = "ROUTER_EMULATOR_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// Credit granted on each $management link (qdrouterd's link capacity).
    #[arg(long, env = "ROUTER_EMULATOR_MANAGEMENT_CREDIT", default_value_t = 250)]
    management_credit: u32,
    /// Emulate an edge router (`mode: edge`) instead of an interior one.
    #[arg(long, env = "ROUTER_EMULATOR_EDGE")]
    edge: bool,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging();
    if !args.listen.ip().is_loopback() {
        anyhow::bail!("--listen must be a loopback address, got {}", args.listen);
    }
    let cfg = EmulatorConfig {
        listen: args.listen,
        router_id: args.router_id,
        cost_model: !args.no_cost_model,
        latency: Duration::from_millis(args.latency_ms),
        management_credit: args.management_credit,
        mode: if args.edge {
            maas_e2e::router::Mode::Edge
        } else {
            maas_e2e::router::Mode::Interior
        },
    };
    let emulator = RouterEmulator::start(cfg).await?;
    println!("listening on {}", emulator.url());
    shutdown_signal().await?;
    tracing::info!("signal received, stopping");
    tokio::time::timeout(Duration::from_secs(5), emulator.stop())
        .await
        .ok();
    Ok(())
}
