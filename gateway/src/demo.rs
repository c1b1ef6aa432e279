//! `ldx-gateway demo`: a whole federation on this machine. Nodes with real division codes
//! (Erqi district street offices and the origin counties of their in-migrants), fresh keys
//! in a temporary directory, and synthetic people registered at both ends.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;
use chrono::Days;
use ldx_node::clock::{Clock, SystemClock};
use ldx_node::config::Config;
use ldx_node::crypto::write_new_key_file;
use ldx_node::domain::Division;
use ldx_proto::v1::registry_client::RegistryClient;
use tokio::sync::watch;

use crate::synthetic;

/// Destination street offices in Zhengzhou's Erqi district.
pub const DESTINATIONS: [&str; 4] = ["410103007", "410103003", "410103008", "410103012"];
/// Origin counties of the synthetic in-migrants.
pub const ORIGINS: [&str; 3] = ["411421", "411723", "410122"];

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where node directories go; a fresh temporary directory when `None`.
    pub dir: Option<PathBuf>,
    /// Synthetic in-migrants registered at each destination.
    pub persons_per_node: u32,
}

/// One node of the running demo.
#[derive(Debug, Clone)]
pub struct DemoNode {
    pub division: Division,
    pub api: SocketAddr,
    pub config: PathBuf,
}

/// Runs the demo federation until `shutdown` resolves. `ready` is called once every node
/// serves and the synthetic records are in.
pub async fn run(
    options: DemoOptions,
    shutdown: impl std::future::Future<Output = ()>,
    ready: impl FnOnce(&[DemoNode], &std::path::Path),
) -> anyhow::Result<()> {
    let temp;
    let root = match &options.dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new().prefix("ldx-demo-").tempdir()?;
            temp.path().to_owned()
        }
    };
    std::fs::create_dir_all(&root)?;
    let salt = root.join("federation.salt");
    if !salt.exists() {
        write_new_key_file(&salt, "ldx demo federation salt")?;
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut nodes = Vec::new();
    let mut tasks = Vec::new();
    for code in DESTINATIONS.iter().chain(&ORIGINS) {
        let (node, task) = start_node(&root, &salt, code, stop_rx.clone()).await?;
        nodes.push(node);
        tasks.push(task);
    }

    seed(&nodes, options.persons_per_node).await?;
    ready(&nodes, &root);
    shutdown.await;
    let _ = stop_tx.send(true);
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn start_node(
    root: &std::path::Path,
    salt: &std::path::Path,
    code: &str,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<(DemoNode, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let division = Division::parse_node_level("division", code)?;
    let dir = root.join(code);
    std::fs::create_dir_all(&dir)?;
    let config_path = dir.join("ldx-node.toml");
    if !config_path.exists() {
        write_new_key_file(&dir.join("data.key"), &format!("ldx data key of demo node {code}"))?;
        std::fs::copy(salt, dir.join("federation.salt"))?;
        std::fs::write(&config_path, Config::starter(&division, "127.0.0.1:0"))?;
    }
    let mut config = Config::load(&config_path, std::iter::empty())?;
    config.storage.sync_writes = false;
    let listener = tokio::net::TcpListener::bind(config.api_addr()?).await?;
    let api = listener.local_addr()?;
    let code = code.to_owned();
    let task = tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        ldx_node::node::run(config, Arc::new(SystemClock), listener, stopped)
            .await
            .with_context(|| format!("node {code}"))
    });
    Ok((DemoNode { division, api, config: config_path }, task))
}

/// Registers synthetic in-migrants at each destination and their out-migrant records at
/// their origin counties.
async fn seed(nodes: &[DemoNode], per_node: u32) -> anyhow::Result<()> {
    let today = SystemClock.today();
    let mut origin_clients = std::collections::HashMap::new();
    for node in nodes.iter().filter(|n| ORIGINS.contains(&n.division.as_str())) {
        origin_clients.insert(node.division.as_str().to_owned(), connect(node).await?);
    }
    for (d, node) in nodes.iter().filter(|n| DESTINATIONS.contains(&n.division.as_str())).enumerate() {
        let mut client = connect(node).await?;
        for i in 0..per_node {
            let n = u32::try_from(d)? * per_node + i;
            let origin = ORIGINS[(n as usize) % ORIGINS.len()];
            let person = synthetic::person(origin, n);
            let moved_in = today - Days::new(u64::from(n % 300) + 1);
            client.register_move_in(person.move_in(node.division.as_str(), moved_in, synthetic::category(n))).await?;
            let origin_client = origin_clients.get_mut(origin).context("origin node")?;
            origin_client.register_move_in(person.out_migrant(moved_in)).await?;
        }
    }
    Ok(())
}

async fn connect(node: &DemoNode) -> anyhow::Result<RegistryClient<tonic::transport::Channel>> {
    // The node task may still be opening its store: the socket is already bound, so the
    // connection waits in its backlog until the server starts accepting.
    Ok(RegistryClient::connect(format!("http://{}", node.api)).await?)
}
