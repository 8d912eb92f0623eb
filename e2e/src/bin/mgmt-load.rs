//! `mgmt-load`: the minimal pipelined management client the router-agent bench compares the agent with. It reads
//! entities (JSON lines `[full type, name, {attributes}]`), connects to a router's `$management`, CREATEs them all
//! with a bounded window through the shared client, and prints one JSON line `{"created", "failed", "seconds"}`
//! (the time from the first request to the last reply). A separate process, like the agent it is compared with.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use maas_amqp::options::ConnectOptions;
use maas_amqp::router::{ClientConfig, RouterClient};
use serde_json::{Map, Value};

/// Create entities on a router as fast as a pipelined client can.
#[derive(Debug, Parser)]
#[command(name = "mgmt-load", version, about)]
struct Args {
    /// The router's AMQP URL.
    #[arg(long, env = "ROUTER_URL", default_value = "amqp://127.0.0.1:5672")]
    router_url: String,
    /// JSON lines: `[full type name, entity name, {attributes}]`.
    #[arg(long, env = "ENTITIES_FILE")]
    entities: PathBuf,
    /// Requests in flight at once.
    #[arg(long, env = "MGMT_WINDOW", default_value_t = 250)]
    window: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mgmt-load: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let text = std::fs::read_to_string(&args.entities)
        .map_err(|e| format!("--entities {}: {e}", args.entities.display()))?;
    let mut entities: Vec<(String, String, Map<String, Value>)> = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let (t, n, a): (String, String, Map<String, Value>) =
            serde_json::from_str(line).map_err(|e| format!("--entities line {}: {e}", i + 1))?;
        entities.push((t, n, a));
    }
    let opts =
        ConnectOptions::from_url(&args.router_url).map_err(|e| format!("--router-url: {e}"))?;
    let client = RouterClient::connect(
        &opts,
        ClientConfig {
            window: args.window,
            ..ClientConfig::default()
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut pending = entities.into_iter().map(|(t, n, a)| {
        let c = client.clone();
        async move { c.create(&t, &n, a).await }
    });
    let mut in_flight = FuturesUnordered::new();
    let (mut created, mut failed) = (0u64, 0u64);
    loop {
        while in_flight.len() < args.window.max(1) {
            match pending.next() {
                Some(f) => in_flight.push(f),
                None => break,
            }
        }
        match in_flight.next().await {
            Some(Ok(_)) => created += 1,
            Some(Err(_)) => failed += 1,
            None => break,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    client.close().await;
    println!(
        "{}",
        serde_json::json!({"created": created, "failed": failed, "seconds": seconds})
    );
    Ok(())
}
