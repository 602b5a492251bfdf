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

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is called (not when first
/// polled), so call it before announcing the listening address: a signal that arrives right after the
/// announcement must drain, not kill. Must be called inside the runtime.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait(term) => {}
            _ = wait(int) => {}
        }
        tracing::info!("shutdown signal received: draining");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `args:` lists of containers whose command is glmfleet, from a rendered manifest.
    fn chart_argvs(yaml: &str) -> Vec<Vec<String>> {
        let lines: Vec<&str> = yaml.lines().collect();
        let mut out = vec![];
        for (i, l) in lines.iter().enumerate() {
            if l.trim() != "command: [glmfleet]"
                || lines.get(i + 1).is_none_or(|n| n.trim() != "args:")
            {
                continue;
            }
            let mut argv = vec!["glmfleet".to_string()];
            for a in &lines[i + 2..] {
                let Some(item) = a.trim().strip_prefix("- ") else {
                    break;
                };
                argv.push(item.trim_matches('"').to_string());
            }
            out.push(argv);
        }
        out
    }

    /// The Helm chart and the binary agree: every rendered golden manifest's command line parses, and
    /// its settings pass validation (the mounted config file stands in as an empty TOML file).
    #[test]
    fn chart_command_lines_are_accepted() {
        let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../charts/glmfleet/tests/golden");
        let empty =
            std::env::temp_dir().join(format!("glmfleet-empty-{}.toml", std::process::id()));
        std::fs::write(&empty, "").unwrap();
        let mut seen = 0;
        for entry in std::fs::read_dir(&golden).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            for mut argv in chart_argvs(&std::fs::read_to_string(&path).unwrap()) {
                for a in argv.iter_mut() {
                    if a.starts_with("--config=") {
                        *a = format!("--config={}", empty.display());
                    }
                }
                let cli = Cli::try_parse_from(&argv)
                    .unwrap_or_else(|e| panic!("{}: {argv:?}: {e}", path.display()));
                match cli.cmd {
                    Cmd::Serve(a) => {
                        replica::load_config(&a)
                            .unwrap_or_else(|e| panic!("{}: {argv:?}: {e}", path.display()));
                    }
                    Cmd::Router(a) => {
                        router::load_config(a)
                            .unwrap_or_else(|e| panic!("{}: {argv:?}: {e}", path.display()));
                    }
                    _ => panic!("{}: unexpected subcommand in {argv:?}", path.display()),
                }
                seen += 1;
            }
        }
        assert!(
            seen >= 2,
            "expected router and replica command lines in the golden manifests"
        );
    }
}
