//! `glmfleet`: one binary for the whole fleet. Subcommands mirror vLLM where users know it:
//! `serve` (a replica), `router`, `up` (router + N replicas on this machine), `generate` (one prompt),
//! `bench serve` / `bench sweep`. Errors print as one line and exit non-zero.

mod demo;
mod generate;
mod model_source;
mod router_cmd;
mod serve;
mod up;

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "glmfleet",
    version,
    about = "Serve GLM-4.x MoE models: replicas, router, benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// parsed once at start-up: variant size differences do not matter
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Serve one model replica (OpenAI-compatible API).
    Serve(replica::ServeArgs),
    /// Route requests over replicas by prompt prefix, with bounded load.
    Router(router::RouterArgs),
    /// Start N replicas and the router on this machine (default: the embedded demo model).
    Up(up::UpArgs),
    /// Generate from one prompt on this machine.
    Generate(generate::GenerateArgs),
    /// Benchmark a running server (the `vllm bench serve` client) or sweep the guide's workload grid.
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
}

#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum BenchCmd {
    /// Load-test one OpenAI-compatible endpoint; prints vLLM's report.
    Serve(bench::ServeArgs),
    /// Run the guide's grid (prompt-heavy, decode-heavy, balanced x concurrencies); CSV, JSON, PNG plots.
    Sweep(bench::SweepArgs),
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received: draining");
}

/// One machine-readable line on stdout when a server listens (how `up` and tests find ephemeral ports).
fn announce(component: &str, addr: SocketAddr) {
    use std::io::Write;
    let line =
        serde_json::json!({"event": "listening", "component": component, "addr": addr.to_string()});
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    tracing::info!("{component} listening on http://{addr}");
}

fn parse_announce(line: &str, component: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    (v["event"] == "listening" && v["component"] == component)
        .then(|| v["addr"].as_str()?.parse().ok())?
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve(a) => serve::run(a),
        Cmd::Router(a) => router_cmd::run(a),
        Cmd::Up(a) => up::run(a),
        Cmd::Generate(a) => generate::run(a),
        Cmd::Bench {
            cmd: BenchCmd::Serve(a),
        } => runtime().and_then(|rt| {
            rt.block_on(bench::run_serve(a))
                .map(|_| ())
                .map_err(Into::into)
        }),
        Cmd::Bench {
            cmd: BenchCmd::Sweep(a),
        } => runtime().and_then(|rt| rt.block_on(bench::run_sweep(a)).map_err(Into::into)),
    };
    if let Err(e) = result {
        // one line: the error and its causes
        let msg = e
            .chain()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(": ");
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}
