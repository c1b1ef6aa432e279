//! The `ldx-gateway` command line. It is the binary's user interface, so it prints.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::{demo, directory, pki, server};

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
        /// A new move-in this often, in milliseconds (every fifth tick a move-out too);
        /// 0 stops the stream.
        #[arg(long, default_value_t = 1000)]
        stream_interval_ms: u64,
        /// Serve the dashboard (and /metrics) here; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:0")]
        dashboard_listen: SocketAddr,
        /// How often the gateway asks every node for its status, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        collect_interval_ms: u64,
    },
    /// Serve the signed directory (gRPC `ldx.v1.Directory`) until SIGTERM or Ctrl-C.
    Run {
        #[command(flatten)]
        pki: PkiDir,
        /// Address to listen on (plain HTTP/2: the directory is signed, not secret).
        #[arg(long, env = "LDX_GATEWAY_LISTEN", default_value = "127.0.0.1:7300")]
        listen: SocketAddr,
        /// Write the bound address here once listening (useful with port 0).
        #[arg(long)]
        addr_file: Option<PathBuf>,
        /// Serve the dashboard (/) and Prometheus /metrics here over HTTP, gathered from
        /// every node's status over mutual TLS.
        #[arg(long, visible_alias = "dashboard-listen", env = "LDX_GATEWAY_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        /// Write the bound dashboard and /metrics address here once listening.
        #[arg(long)]
        metrics_addr_file: Option<PathBuf>,
        /// How often to ask every node for its status, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        collect_interval_ms: u64,
        /// The gateway's own data (the history of collected statuses) [default: PKI/gateway-data].
        #[arg(long = "data", env = "LDX_GATEWAY_DATA", value_name = "DIR")]
        data: Option<PathBuf>,
        /// Keep this many hours of status history for the dashboard's chart.
        #[arg(long, default_value_t = 24)]
        history_hours: u64,
    },
    /// The two-way assessment (双向考核) of a quarter: every node's signed statements side by
    /// side per pair of regions, disagreements flagged, and each region's score of 1000.
    Assess {
        #[command(flatten)]
        pki: PkiDir,
        /// Quarter, e.g. 2026Q4 (default: the current quarter, China Standard Time).
        #[arg(long)]
        period: Option<String>,
        /// Print CSV instead of tables.
        #[arg(long)]
        csv: bool,
        /// Indicator weights: `indicator = points` lines (default: 1000 points per side).
        #[arg(long)]
        weights: Option<PathBuf>,
    },
    /// The federation CA, federation key and salt, and node certificates.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// The signed directory of nodes: who serves which division, where, with which keys.
    Directory {
        #[command(subcommand)]
        command: DirectoryCommand,
    },
}

/// The PKI directory made by `pki init`.
#[derive(Debug, Args)]
pub struct PkiDir {
    /// PKI directory (holds ca.crt, federation.pub, directory.bin and nodes/).
    #[arg(long = "pki", env = "LDX_PKI", value_name = "DIR")]
    pub dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create the federation CA, federation signing key and federation salt.
    Init {
        #[command(flatten)]
        pki: PkiDir,
    },
    /// Issue a node's TLS certificate and signing key into DIR/nodes/CODE/.
    Issue {
        #[command(flatten)]
        pki: PkiDir,
        /// Division code of the node: 6 digits (county) or 9 (street office or township).
        #[arg(long)]
        division: String,
        /// Also write everything the node needs into this one file (mode 0600), for
        /// `ldx-node init --division CODE --join FILE` at the node.
        #[arg(long, value_name = "FILE", requires = "gateway")]
        bundle: Option<PathBuf>,
        /// The directory address the node is to poll, written into the bundle, e.g.
        /// http://10.0.0.1:7300.
        #[arg(long, value_name = "URL", requires = "bundle")]
        gateway: Option<String>,
    },
    /// Revoke a node's certificate: its entry leaves the directory, its fingerprint joins
    /// the signed revocation list (refused by every node from their next directory poll),
    /// and DIR/nodes/CODE/ is moved aside so `pki issue` can give the node a new one.
    Revoke {
        #[command(flatten)]
        pki: PkiDir,
        /// Division code of the node.
        #[arg(long)]
        division: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DirectoryCommand {
    /// Add a node, or replace its entry.
    Add {
        #[command(flatten)]
        pki: PkiDir,
        /// Division code the node serves.
        #[arg(long)]
        division: String,
        /// The node's peer API, e.g. https://10.0.0.7:7302.
        #[arg(long)]
        endpoint: String,
        /// The node's certificate (PEM) [default: DIR/nodes/CODE/node.crt].
        #[arg(long)]
        cert: Option<PathBuf>,
        /// The node's Ed25519 public key [default: DIR/nodes/CODE/signing.pub].
        #[arg(long)]
        signing_pub: Option<PathBuf>,
    },
    /// Remove a node.
    Remove {
        #[command(flatten)]
        pki: PkiDir,
        /// Division code of the node.
        #[arg(long)]
        division: String,
    },
    /// Show the current version and entries.
    List {
        #[command(flatten)]
        pki: PkiDir,
    },
    /// Sign the same entries again as the next version, valid for another 7 days. The
    /// running gateway does this by itself when it holds federation.key; without it, run
    /// this where the key is kept (e.g. daily from a timer) and copy directory.bin over.
    Refresh {
        #[command(flatten)]
        pki: PkiDir,
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
            Command::Demo { dir, persons, stream_interval_ms, dashboard_listen, collect_interval_ms } => {
                anyhow::ensure!(collect_interval_ms > 0, "--collect-interval-ms: 0 must be at least 1");
                let stream_every =
                    (stream_interval_ms > 0).then(|| std::time::Duration::from_millis(stream_interval_ms));
                let options = demo::DemoOptions {
                    dir,
                    persons_per_node: persons,
                    stream_every,
                    dashboard_listen,
                    collect_every: std::time::Duration::from_millis(collect_interval_ms),
                };
                demo::run(options, ldx_node::cli::shutdown_signal(), print_ready).await
            }
            Command::Run {
                pki,
                listen,
                addr_file,
                metrics_listen,
                metrics_addr_file,
                collect_interval_ms,
                data,
                history_hours,
            } => {
                let data = data.unwrap_or_else(|| pki.dir.join("gateway-data"));
                let metrics = MetricsArgs {
                    listen: metrics_listen,
                    addr_file: metrics_addr_file,
                    collect_interval_ms,
                    data,
                    history_hours,
                };
                run_gateway(pki.dir, listen, addr_file, metrics).await
            }
            Command::Assess { pki, period, csv, weights } => assess(&pki.dir, period, csv, weights).await,
            Command::Pki { command } => pki_command(command),
            Command::Directory { command } => directory_command(command),
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

async fn assess(pki: &Path, period: Option<String>, csv: bool, weights: Option<PathBuf>) -> anyhow::Result<()> {
    use ldx_node::clock::Clock as _;
    let period = match period {
        Some(raw) => ldx_node::domain::Period::parse("--period", &raw)?,
        None => ldx_node::domain::Period::of(ldx_node::clock::SystemClock.today()),
    };
    let weights = match weights {
        Some(path) => crate::assess::Weights::load(&path)?,
        None => crate::assess::Weights::default(),
    };
    let period = period.to_string();
    let (statements, unavailable) = crate::assess::gather(pki, &period, crate::assess::ASK_TIMEOUT).await?;
    let mut rollup = crate::assess::rollup(&period, &statements, &weights);
    rollup.unavailable = unavailable;
    if csv {
        print!("{}", crate::assess::render_csv(&rollup));
    } else {
        print!("{}", crate::assess::render_text(&rollup));
    }
    for (node, why) in rollup.unavailable.iter().filter(|_| csv) {
        eprintln!("warning: no statement from {node}: {why}");
    }
    Ok(())
}

fn print_ready(ready: &demo::DemoReady) {
    let nodes = &ready.nodes;
    println!("ldx demo federation: {} nodes, files in {}", nodes.len(), ready.root.display());
    println!("gateway (signed directory, TLS): https://{}", ready.gateway);
    println!("dashboard: http://{}/", ready.dashboard);
    println!("metrics:   http://{}/metrics", ready.dashboard);
    println!();
    println!("{:<10} {:<12} {:<22} {:<24} NAME", "DIVISION", "ROLE", "STAFF API", "PEER API (mTLS)");
    for node in nodes {
        let role = if demo::DESTINATIONS.contains(&node.division.as_str()) { "destination" } else { "origin" };
        println!(
            "{:<10} {:<12} {:<22} {:<24} {}",
            node.division,
            role,
            format!("http://{}", node.api),
            format!("https://{}", node.peer),
            node.division.name()
        );
    }
    if let Some(first) = nodes.first() {
        println!();
        let node_cli = node_binary();
        println!("try, in another terminal:");
        if !node_cli.exists() {
            println!("  cargo build -p ldx-node    # once; it writes {}", node_cli.display());
        }
        println!(
            "  {} login {} --password-file {} --config {}",
            node_cli.display(),
            crate::demo::DEMO_STAFF,
            first.staff_password_file().display(),
            first.config.display()
        );
        println!("  {} status --config {}", node_cli.display(), first.config.display());
        println!("  {} person list --config {}", node_cli.display(), first.config.display());
        println!("  grpcurl -plaintext {} list", first.api);
    }
    println!();
    println!("demo federation ready; Ctrl-C stops it");
}

/// Where `ldx-node` is, or will be once built: beside this binary (both are built into one
/// target directory), so the hints the demo prints start no further build.
fn node_binary() -> PathBuf {
    let name = format!("ldx-node{}", std::env::consts::EXE_SUFFIX);
    std::env::current_exe().map_or_else(|_| PathBuf::from(&name), |exe| exe.with_file_name(&name))
}

/// The `/metrics` and dashboard flags of `run`.
#[derive(Debug)]
struct MetricsArgs {
    listen: Option<SocketAddr>,
    addr_file: Option<PathBuf>,
    collect_interval_ms: u64,
    data: PathBuf,
    history_hours: u64,
}

async fn run_gateway(
    pki_dir: PathBuf,
    listen: SocketAddr,
    addr_file: Option<PathBuf>,
    metrics: MetricsArgs,
) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("--listen {listen}: cannot listen"))?;
    let metrics_options = match metrics.listen {
        Some(addr) => {
            anyhow::ensure!(metrics.collect_interval_ms > 0, "--collect-interval-ms: 0 must be at least 1");
            anyhow::ensure!(metrics.history_hours > 0, "--history-hours: 0 must be at least 1");
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics-listen {addr}: cannot listen"))?;
            if let Some(file) = &metrics.addr_file {
                write_atomically(file, &format!("{}\n", listener.local_addr()?))?;
            }
            Some(server::MetricsOptions {
                listener,
                collect_every: std::time::Duration::from_millis(metrics.collect_interval_ms),
                history: Some(crate::history::HistoryOptions {
                    dir: metrics.data.join("history"),
                    retention: std::time::Duration::from_secs(metrics.history_hours.saturating_mul(3600)),
                }),
            })
        }
        None => None,
    };
    let ready = |addr: SocketAddr| match &addr_file {
        Some(file) => write_atomically(file, &format!("{addr}\n")),
        None => Ok(()),
    };
    let served =
        server::run_with_metrics(pki_dir, listener, metrics_options, ldx_node::cli::shutdown_signal(), ready).await;
    for file in addr_file.iter().chain(&metrics.addr_file) {
        let _ = std::fs::remove_file(file);
    }
    Ok(served?)
}

/// Writes via a temporary file and a rename, so a poller never reads half an address.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| std::io::Error::new(e.kind(), format!("--addr-file {}: cannot write: {e}", path.display())))
}

fn pki_command(command: PkiCommand) -> anyhow::Result<()> {
    match command {
        PkiCommand::Revoke { pki, division } => {
            let (directory, fingerprint) = directory::revoke(&pki.dir, &division)?;
            println!(
                "directory version {}: {division} revoked (cert sha256 {})",
                directory.version(),
                hex::encode(fingerprint)
            );
            let node = pki::node_dir(&pki.dir, &division);
            if node.exists() {
                let aside = node.with_file_name(format!("{division}.revoked-v{}", directory.version()));
                std::fs::rename(&node, &aside)
                    .with_context(|| format!("cannot move {} to {}", node.display(), aside.display()))?;
                println!("  its files moved to {}", aside.display());
            }
            println!("every node refuses the certificate once it has fetched this version (one poll)");
            println!(
                "to give the node a new certificate: ldx-gateway pki issue --pki {} --division {division}, then directory add",
                pki.dir.display()
            );
        }
        PkiCommand::Init { pki } => {
            pki::init(&pki.dir)?;
            println!("federation created in {}", pki.dir.display());
            for file in [pki::CA_CERT, pki::CA_KEY, pki::FEDERATION_KEY, pki::FEDERATION_PUB, pki::FEDERATION_SALT] {
                println!("  {}", pki.dir.join(file).display());
            }
            println!();
            println!("keep ca.key offline; give every node ca.crt, federation.pub and federation.salt");
            println!(
                "federation.key signs the directory: left beside the running gateway it keeps the directory fresh \
                 (nodes refuse a directory older than 7 days); kept offline, run `ldx-gateway directory refresh` daily"
            );
            println!("next: ldx-gateway pki issue --pki {} --division CODE", pki.dir.display());
        }
        PkiCommand::Issue { pki, division, bundle, gateway } => {
            let issued = match (&bundle, &gateway) {
                (Some(bundle), Some(gateway)) => pki::issue_with_bundle(&pki.dir, &division, bundle, gateway)?,
                _ => pki::issue(&pki.dir, &division)?,
            };
            println!("issued {division} into {}", issued.dir.display());
            println!("  certificate  {}", issued.cert_path.display());
            println!("  tls key      {}", issued.key_path.display());
            println!("  signing key  {}", issued.signing_key_path.display());
            println!("  cert sha256  {}", hex::encode(issued.cert_sha256));
            println!("  signing pub  {}", issued.signing_pub);
            if let Some(bundle) = &bundle {
                println!(
                    "  join bundle  {} (holds private keys: hand it over safely, then delete it)",
                    bundle.display()
                );
                println!("at the node: ldx-node init --division {division} --join {}", bundle.display());
            }
            println!();
            println!(
                "next: ldx-gateway directory add --pki {} --division {division} --endpoint https://HOST:PORT",
                pki.dir.display()
            );
        }
    }
    Ok(())
}

fn directory_command(command: DirectoryCommand) -> anyhow::Result<()> {
    match command {
        DirectoryCommand::Add { pki, division, endpoint, cert, signing_pub } => {
            let node = pki::node_dir(&pki.dir, &division);
            let cert = cert.unwrap_or_else(|| node.join(pki::NODE_CERT));
            let signing_pub = signing_pub.unwrap_or_else(|| node.join(pki::SIGNING_PUB));
            let directory = directory::add(&pki.dir, &division, &endpoint, &cert, &signing_pub)?;
            println!("directory version {}: {division} at {endpoint}", directory.version());
        }
        DirectoryCommand::Remove { pki, division } => {
            let directory = directory::remove(&pki.dir, &division)?;
            println!("directory version {}: {division} removed", directory.version());
        }
        DirectoryCommand::List { pki } => print_directory(directory::load(&pki.dir)?.as_ref()),
        DirectoryCommand::Refresh { pki } => {
            let directory = directory::refresh(&pki.dir)?;
            println!("directory version {}: valid until {}", directory.version(), rfc3339(directory.not_after_ms()));
        }
    }
    Ok(())
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(|| ms.to_string(), |t| t.to_rfc3339())
}

fn print_directory(directory: Option<&ldx_proto::directory::Directory>) {
    let Some(directory) = directory else {
        println!("directory version 0: no entries yet");
        return;
    };
    println!(
        "directory version {}, issued {}, valid until {}; {} certificate(s) revoked",
        directory.version(),
        rfc3339(directory.issued_at_ms()),
        rfc3339(directory.not_after_ms()),
        directory.revoked().count()
    );
    println!();
    // The name goes last: its Chinese characters are two columns wide each.
    println!("{:<10} {:<30} {:<17} {:<17} NAME", "DIVISION", "ENDPOINT", "CERT SHA256", "SIGNING KEY");
    for entry in directory.entries() {
        let name = ldx_node::domain::Division::parse("division", &entry.division).map_or("", |d| d.name());
        println!(
            "{:<10} {:<30} {:<17} {:<17} {name}",
            entry.division,
            entry.endpoint,
            prefix_hex(&entry.tls_cert_sha256),
            prefix_hex(&entry.signing_key),
        );
    }
}

/// The first 8 bytes in hex and an ellipsis: enough to compare by eye.
fn prefix_hex(bytes: &[u8]) -> String {
    format!("{}…", hex::encode(&bytes[..bytes.len().min(8)]))
}
