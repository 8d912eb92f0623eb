//! `broker-emulator`: runs the ActiveMQ Artemis 2.21 broker-management emulator on 127.0.0.1 until
//! SIGTERM/SIGINT.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use maas_e2e::broker::{BrokerConfig, BrokerEmulator, CostModel};

/// Emulates the `activemq.management` node of a stock ActiveMQ Artemis 2.21 broker (addresses, queues,
/// message counts) with the real broker's replies and error texts; SASL PLAIN only.
#[derive(Debug, Parser)]
#[command(name = "broker-emulator", version)]
struct Args {
    /// Address to listen on (loopback only).
    #[arg(long, env = "BROKER_EMULATOR_LISTEN", default_value = "127.0.0.1:5674")]
    listen: SocketAddr,
    /// SASL PLAIN user (with the `manage` role).
    #[arg(long, env = "BROKER_EMULATOR_USER", default_value = "admin")]
    user: String,
    /// File holding that user's password (default: the password `admin`).
    #[arg(long, env = "BROKER_EMULATOR_PASSWORD_FILE")]
    password_file: Option<PathBuf>,
    /// Busy time per management operation, in microseconds (one operation at a time).
    #[arg(long, env = "BROKER_EMULATOR_COST_US", default_value_t = 100)]
    cost_us: u64,
    /// Container id of the open frame (the broker name).
    #[arg(long, env = "BROKER_NAME", default_value = "0.0.0.0")]
    name: String,
    /// TLS certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "BROKER_EMULATOR_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); needs --tls-cert.
    #[arg(long, env = "BROKER_EMULATOR_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
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
    let password = match &args.password_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --password-file {}", path.display()))?
            .trim_end_matches(['\r', '\n'])
            .to_string(),
        None => "admin".to_string(),
    };
    let cfg = BrokerConfig {
        listen: args.listen,
        users: vec![(args.user, password)],
        cost_model: CostModel {
            per_operation: Duration::from_micros(args.cost_us),
        },
        name: args.name,
        tls: args.tls_cert.zip(args.tls_key),
        ..BrokerConfig::default()
    };
    let emulator = BrokerEmulator::start(cfg).await?;
    println!("listening on {}", emulator.url());
    shutdown_signal().await?;
    tracing::info!("signal received, stopping");
    tokio::time::timeout(Duration::from_secs(5), emulator.stop())
        .await
        .ok();
    Ok(())
}
