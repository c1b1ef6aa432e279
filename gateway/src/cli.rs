//! The `ldx-gateway` command line.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::demo;

#[derive(Debug, Parser)]
#[command(name = "ldx-gateway", version, about = "ldx district gateway")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a whole federation on this machine with synthetic records; Ctrl-C stops it.
    Demo {
        /// Keep the nodes' files here instead of a temporary directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Synthetic in-migrants registered at each destination node.
        #[arg(long, default_value_t = 50)]
        persons: u32,
    },
}

/// Entry point of the `ldx-gateway` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    ldx_node::cli::init_tracing("warn,ldx_gateway=info");
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo { dir, persons } => {
                let options = demo::DemoOptions { dir, persons_per_node: persons };
                demo::run(options, ldx_node::cli::shutdown_signal(), print_ready).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_ready(nodes: &[demo::DemoNode], root: &std::path::Path) {
    println!("ldx demo federation: {} nodes, files in {}", nodes.len(), root.display());
    println!();
    println!("{:<10} {:<12} {:<22} NAME", "DIVISION", "ROLE", "STAFF API");
    for node in nodes {
        let role = if demo::DESTINATIONS.contains(&node.division.as_str()) { "destination" } else { "origin" };
        println!("{:<10} {:<12} {:<22} {}", node.division, role, format!("http://{}", node.api), node.division.name());
    }
    if let Some(first) = nodes.first() {
        println!();
        println!("try, in another terminal:");
        println!("  cargo run -p ldx-node -- person list --config {}", first.config.display());
        println!("  grpcurl -plaintext {} list", first.api);
    }
    println!();
    println!("demo federation ready; Ctrl-C stops it");
}
