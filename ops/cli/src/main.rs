//! `glmfleet`: one binary for the whole fleet. Subcommands mirror vLLM where users know it:
//! `generate` (one prompt), `serve` (a replica), `router`, `up` (router + N replicas on this machine),
//! `bench serve` / `bench sweep`. Errors print as one line and exit non-zero.

mod demo;
mod generate;
mod model_source;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "glmfleet", version, about = "Serve GLM-4.x MoE models: replicas, router, benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate from one prompt on this machine.
    Generate(generate::GenerateArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Generate(a) => generate::run(a),
    };
    if let Err(e) = result {
        // one line: the error and its causes
        let msg = e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ");
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}
