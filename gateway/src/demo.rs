//! `ldx-gateway demo`: a whole federation on this machine. A fresh PKI, the gateway serving
//! the signed directory, nodes with real division codes (Erqi district street offices and
//! the origin counties of their in-migrants) syncing over mutual TLS, synthetic people
//! registered at the street offices, and a steady stream of move-ins and move-outs. The
//! gateway collects every node's status and serves the dashboard; [`DemoControl`] stops
//! and restarts single nodes, so an outage can be watched (and tested) on the dashboard.

use std::collections::BTreeMap;
use std::{net::SocketAddr, path::Path, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use chrono::Days;
use ldx_node::clock::{Clock, SystemClock};
use ldx_node::config::Config;
use ldx_node::crypto::write_new_key_file;
use ldx_node::domain::Division;
use ldx_node::staff::client::StaffChannel;
use ldx_proto::v1 as pb;
use ldx_proto::v1::monitor_client::MonitorClient;
use ldx_proto::v1::registry_client::RegistryClient;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::history::{self, HistoryOptions};
use crate::{directory, pki, server, synthetic};

/// Destination street offices in Zhengzhou's Erqi district.
pub const DESTINATIONS: [&str; 4] = ["410103007", "410103003", "410103008", "410103012"];
/// Origin counties of the synthetic in-migrants.
pub const ORIGINS: [&str; 3] = ["411421", "411723", "411522"];
/// How long the seeded notices may take to reach their origins.
const SEED_SYNC_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a restarting node may wait for its stopped self to let go of its store and
/// its ports.
const RESTART_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the PKI and node directories go; a fresh temporary directory when `None`.
    pub dir: Option<PathBuf>,
    /// Synthetic in-migrants registered at each destination before the demo is ready.
    pub persons_per_node: u32,
    /// One new move-in (and now and then a move-out) this often; `None`: no stream.
    pub stream_every: Option<Duration>,
    /// Where the gateway serves the dashboard and `/metrics` (port 0: any free port).
    pub dashboard_listen: SocketAddr,
    /// How often the gateway asks every node for its status.
    pub collect_every: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            dir: None,
            persons_per_node: 50,
            stream_every: Some(Duration::from_secs(1)),
            dashboard_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            collect_every: Duration::from_secs(1),
        }
    }
}

/// One node of the running demo.
#[derive(Debug, Clone)]
pub struct DemoNode {
    pub division: Division,
    pub api: SocketAddr,
    pub peer: SocketAddr,
    pub config: PathBuf,
}

/// What the demo prints once it is ready.
#[derive(Debug, Clone)]
pub struct DemoReady {
    pub nodes: Vec<DemoNode>,
    pub root: PathBuf,
    /// The signed directory (gRPC).
    pub gateway: SocketAddr,
    /// The dashboard at `/` and Prometheus text at `/metrics` (HTTP).
    pub dashboard: SocketAddr,
    pub control: DemoControl,
}

/// A node of the demo: what restarts it, and what stops it.
#[derive(Debug)]
struct NodeRun {
    node: DemoNode,
    config: Config,
    stop: watch::Sender<bool>,
    /// `None` while the node is stopped.
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Stops and restarts single nodes of the running demo, e.g. to watch an outage on the
/// dashboard. A restarted node keeps its data, its staff API address and its peer address,
/// so the directory entry naming it stays right.
#[derive(Debug, Clone, Default)]
pub struct DemoControl {
    nodes: Arc<tokio::sync::Mutex<BTreeMap<String, NodeRun>>>,
}

impl DemoControl {
    /// Stops node `code` and waits until it has stopped; an error it stopped with is
    /// returned.
    pub async fn stop_node(&self, code: &str) -> anyhow::Result<()> {
        let mut nodes = self.nodes.lock().await;
        let run = nodes.get_mut(code).with_context(|| format!("division {code}: not a node of the demo"))?;
        let task = run.task.take().with_context(|| format!("node {code} is already stopped"))?;
        let _ = run.stop.send(true);
        task.await.with_context(|| format!("node {code}: task failed"))?
    }

    /// Starts node `code` again, on its old addresses and data, once the stopped node has
    /// released them.
    pub async fn start_node(&self, code: &str) -> anyhow::Result<()> {
        let mut nodes = self.nodes.lock().await;
        let run = nodes.get_mut(code).with_context(|| format!("division {code}: not a node of the demo"))?;
        anyhow::ensure!(run.task.is_none(), "node {code} is already running");
        let deadline = tokio::time::Instant::now() + RESTART_TIMEOUT;
        // RocksDB allows one opener: the stopped node's last tasks may still hold the store.
        let data_dir = run.config.data_dir.clone();
        let division = run.node.division.as_str().to_owned();
        retry_until(deadline, &format!("node {code}: its store is still open"), || {
            let (dir, division) = (data_dir.clone(), division.clone());
            async move {
                tokio::task::spawn_blocking(move || ldx_node::storage::Store::open(&dir, &division, false).map(drop))
                    .await?
                    .map_err(anyhow::Error::from)
            }
        })
        .await?;
        let (api_addr, peer_addr) = (run.node.api, run.node.peer);
        let api = retry_until(deadline, &format!("node {code}: cannot listen on {api_addr} again"), || async move {
            Ok(TcpListener::bind(api_addr).await?)
        })
        .await?;
        let peer = retry_until(deadline, &format!("node {code}: cannot listen on {peer_addr} again"), || async move {
            Ok(TcpListener::bind(peer_addr).await?)
        })
        .await?;
        let (stop, stop_rx) = watch::channel(false);
        run.task = Some(spawn_node(run.config.clone(), api, peer, stop_rx));
        run.stop = stop;
        Ok(())
    }

    /// Stops every running node and waits for them all; then the first error, if any.
    async fn stop_all(&self) -> anyhow::Result<()> {
        let mut nodes = self.nodes.lock().await;
        let mut first_error = None;
        for (code, run) in nodes.iter_mut() {
            let _ = run.stop.send(true);
            if let Some(task) = run.task.take() {
                let stopped = task.await.with_context(|| format!("node {code}: task failed")).and_then(|r| r);
                if let Err(e) = stopped {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Calls `attempt` until it succeeds or `deadline` passes (then its last error, with
/// `what`). For what a stopped node is still letting go of, which gives no signal.
async fn retry_until<T, F, Fut>(deadline: tokio::time::Instant, what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    loop {
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(e) if tokio::time::Instant::now() > deadline => return Err(e.context(what.to_owned())),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs the demo federation until `shutdown` resolves. `ready` is called once every node
/// serves, the synthetic records are in and their notices have reached the origins.
pub async fn run(
    options: DemoOptions,
    shutdown: impl std::future::Future<Output = ()>,
    ready: impl FnOnce(&DemoReady),
) -> anyhow::Result<()> {
    let temp;
    let root = match &options.dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new().prefix("ldx-demo-").tempdir()?;
            temp.path().to_owned()
        }
    };
    let pki_dir = root.join("pki");
    if !pki_dir.join(pki::CA_CERT).exists() {
        pki::init(&pki_dir)?;
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let gateway_listener = TcpListener::bind("127.0.0.1:0").await?;
    let gateway = gateway_listener.local_addr()?;
    let dashboard_listener = TcpListener::bind(options.dashboard_listen)
        .await
        .with_context(|| format!("--dashboard-listen {}: cannot listen", options.dashboard_listen))?;
    let dashboard = dashboard_listener.local_addr()?;
    let metrics = server::MetricsOptions {
        listener: dashboard_listener,
        collect_every: options.collect_every,
        history: Some(HistoryOptions { dir: root.join("gateway-data"), retention: history::DEFAULT_RETENTION }),
    };
    let gateway_task = tokio::spawn(server::run_with_metrics(
        pki_dir.clone(),
        gateway_listener,
        Some(metrics),
        stopped(stop_rx.clone()),
        |_| Ok(()),
    ));

    let control = DemoControl::default();
    let mut nodes = Vec::new();
    for code in DESTINATIONS.iter().chain(&ORIGINS) {
        let node = start_node(&root, &pki_dir, code, gateway, &control).await?;
        let issued = pki::node_dir(&pki_dir, code);
        directory::add(
            &pki_dir,
            code,
            &format!("https://{}", node.peer),
            &issued.join(pki::NODE_CERT),
            &issued.join(pki::SIGNING_PUB),
        )?;
        nodes.push(node);
    }

    seed(&nodes, options.persons_per_node).await?;
    wait_synced(&nodes).await?;
    ready(&DemoReady { nodes: nodes.clone(), root: root.clone(), gateway, dashboard, control: control.clone() });
    let stream = options.stream_every.map(|every| {
        let nodes = nodes.clone();
        let first = options.persons_per_node * DESTINATIONS.len() as u32;
        tokio::spawn(stream(nodes, first, every, stop_rx.clone()))
    });
    shutdown.await;
    let _ = stop_tx.send(true);
    if let Some(stream) = stream {
        stream.await??;
    }
    control.stop_all().await?;
    gateway_task.await??;
    Ok(())
}

/// Issues node `code` its certificate and config on first use, starts it on fresh ports
/// and hands it to `control`.
async fn start_node(
    root: &Path,
    pki_dir: &Path,
    code: &str,
    gateway: SocketAddr,
    control: &DemoControl,
) -> anyhow::Result<DemoNode> {
    let division = Division::parse_node_level("division", code)?;
    let issued = pki::node_dir(pki_dir, code);
    if !issued.exists() {
        pki::issue(pki_dir, code)?;
    }
    let dir = root.join(code);
    std::fs::create_dir_all(&dir)?;
    let config_path = dir.join("ldx-node.toml");
    if !config_path.exists() {
        write_new_key_file(&dir.join("data.key"), &format!("ldx data key of demo node {code}"))?;
        std::fs::write(&config_path, Config::starter(&division, "127.0.0.1:0"))?;
    }
    if !config_path.with_file_name("demo-staff.password").exists() {
        let mut first = Config::load(&config_path, std::iter::empty())?;
        first.federation_salt_file = pki_dir.join(pki::FEDERATION_SALT);
        let path = config_path.clone();
        tokio::task::spawn_blocking(move || add_demo_staff_with(&path, &first)).await??;
    }
    let mut config = Config::load(&config_path, std::iter::empty())?;
    config.federation_salt_file = pki_dir.join(pki::FEDERATION_SALT);
    config.storage.sync_writes = false;
    config.peer.listen = "127.0.0.1:0".into();
    config.peer.ca_file = pki_dir.join(pki::CA_CERT);
    config.peer.cert_file = issued.join(pki::NODE_CERT);
    config.peer.key_file = issued.join(pki::NODE_KEY);
    config.peer.signing_key_file = issued.join(pki::SIGNING_KEY);
    config.directory.gateway = format!("https://{gateway}");
    config.directory.federation_key_file = pki_dir.join(pki::FEDERATION_PUB);
    config.directory.poll_interval_ms = 500;
    config.exchange.backoff_initial_ms = 50;
    config.exchange.backoff_max_ms = 2_000;
    config.metrics.listen = "127.0.0.1:0".into();
    let api_listener = TcpListener::bind(config.api_addr()?).await?;
    let peer_listener = TcpListener::bind("127.0.0.1:0").await?;
    let (api, peer) = (api_listener.local_addr()?, peer_listener.local_addr()?);
    let node = DemoNode { division, api, peer, config: config_path };
    let (stop, stop_rx) = watch::channel(false);
    let task = Some(spawn_node(config.clone(), api_listener, peer_listener, stop_rx));
    control.nodes.lock().await.insert(code.to_owned(), NodeRun { node: node.clone(), config, stop, task });
    Ok(node)
}

fn spawn_node(
    config: Config,
    api: TcpListener,
    peer: TcpListener,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let code = config.division().as_str().to_owned();
    tokio::spawn(async move {
        ldx_node::node::run_with_peer(config, Arc::new(SystemClock), api, Some(peer), stopped(stop))
            .await
            .with_context(|| format!("node {code}"))
    })
}

fn is_destination(node: &DemoNode) -> bool {
    DESTINATIONS.contains(&node.division.as_str())
}

/// Registers synthetic in-migrants at each destination; their notices tell the origins.
async fn seed(nodes: &[DemoNode], per_node: u32) -> anyhow::Result<()> {
    let today = SystemClock.today();
    for (d, node) in nodes.iter().filter(|n| is_destination(n)).enumerate() {
        let mut client = RegistryClient::new(connect(node).await?);
        for i in 0..per_node {
            let n = u32::try_from(d)? * per_node + i;
            let origin = ORIGINS[(n as usize) % ORIGINS.len()];
            let moved_in = today - Days::new(u64::from(n % 300) + 1);
            let request =
                synthetic::person(origin, n).move_in(node.division.as_str(), moved_in, synthetic::category(n));
            client.register_move_in(request).await?;
        }
    }
    Ok(())
}

/// Waits until no node has an envelope its peer has not acknowledged.
async fn wait_synced(nodes: &[DemoNode]) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + SEED_SYNC_TIMEOUT;
    let mut monitors = Vec::new();
    for node in nodes {
        monitors.push(MonitorClient::new(connect(node).await?));
    }
    loop {
        let mut pending = 0;
        for monitor in &mut monitors {
            let status = monitor.status(pb::StatusRequest {}).await?.into_inner();
            pending += status.outbound.iter().map(|c| c.pending).sum::<u64>();
        }
        if pending == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("{pending} envelopes still unacknowledged after {SEED_SYNC_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A move-in at the next destination every `every`; every fifth tick, the oldest streamed
/// person moves on to the next street office; every other tick, the next seeded resident
/// gets her quarter's health check and report (see [`report_one`]).
async fn stream(
    nodes: Vec<DemoNode>,
    first: u32,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let destinations: Vec<_> = nodes.iter().filter(|n| is_destination(n)).collect();
    let mut clients = Vec::new();
    for node in &destinations {
        clients.push(RegistryClient::new(connect(node).await?));
    }
    let mut origins = Vec::new();
    for node in nodes.iter().filter(|n| !is_destination(n)) {
        origins.push((node.division.as_str().to_owned(), RegistryClient::new(connect(node).await?)));
    }
    let per_node = first / u32::try_from(destinations.len())?.max(1);
    let mut ticker = tokio::time::interval(every);
    let mut moved = first;
    let mut reported = 0;
    for n in first.. {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        let today = SystemClock.today();
        let d = (n as usize) % destinations.len();
        let origin = ORIGINS[(n as usize) % ORIGINS.len()];
        let request =
            synthetic::person(origin, n).move_in(destinations[d].division.as_str(), today, synthetic::category(n));
        if let Err(e) = clients[d].register_move_in(request).await {
            tracing::warn!(error = %e, "demo stream: move-in refused");
        }
        if n % 5 == 4 {
            let d = (moved as usize) % destinations.len();
            let person = synthetic::person(ORIGINS[(moved as usize) % ORIGINS.len()], moved);
            let next = destinations[(d + 1) % destinations.len()].division.as_str().to_owned();
            let request = pb::RegisterMoveOutRequest {
                id_number: person.id_number.clone(),
                date: today.to_string(),
                next_division: next,
            };
            if let Err(e) = clients[d].register_move_out(request).await {
                tracing::warn!(error = %e, "demo stream: move-out refused");
            }
            moved += 1;
        }
        if n % 2 == 0 && reported < first {
            let d = (reported / per_node.max(1)) as usize;
            if let Some(client) = clients.get_mut(d) {
                report_one(client, &mut origins, reported).await;
            }
            reported += 1;
        }
    }
    Ok(())
}

/// The quarter's round for seeded resident `n`: her photo filed at both ends (for every
/// seventh the origin's photo on file differs, so her report waits for an operator
/// there), a health check today, and her report issued for the current quarter.
async fn report_one(
    residence: &mut RegistryClient<StaffChannel>,
    origins: &mut [(String, RegistryClient<StaffChannel>)],
    n: u32,
) {
    if synthetic::category(n) == pb::Category::Organisation {
        return;
    }
    let origin = ORIGINS[(n as usize) % ORIGINS.len()];
    let person = synthetic::person(origin, n);
    let digest = |photo: String| {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(photo.as_bytes()))
    };
    let photo =
        pb::RecordPhotoRequest { id_number: person.id_number.clone(), photo_digest: digest(format!("photo {n}")) };
    let on_file = if n % 7 == 3 { digest(format!("old photo {n}")) } else { photo.photo_digest.clone() };
    let at_origin = pb::RecordPhotoRequest { photo_digest: on_file, ..photo.clone() };
    let check = pb::RecordServiceRequest {
        id_number: person.id_number.clone(),
        kind: pb::ServiceKind::HealthCheck as i32,
        date: SystemClock.today().to_string(),
        details: "季度健康检查".into(),
    };
    let issue = pb::IssueReportRequest { id_number: person.id_number.clone(), period: String::new() };
    let result = async {
        if let Some((_, client)) = origins.iter_mut().find(|(d, _)| d == origin) {
            client.record_photo(at_origin).await?;
        }
        residence.record_photo(photo).await?;
        residence.record_service(check).await?;
        residence.issue_report(issue).await?;
        Ok::<_, tonic::Status>(())
    };
    if let Err(e) = result.await {
        tracing::warn!(error = %e, "demo stream: report round refused");
    }
}

/// A connection to `node`'s staff API, logged in as the demo's staff account.
pub async fn connect(node: &DemoNode) -> anyhow::Result<StaffChannel> {
    // The node task may still be opening its store: the socket is already bound, so the
    // connection waits in its backlog until the server starts accepting.
    let channel = Channel::from_shared(format!("http://{}", node.api))?.connect().await?;
    let password = std::fs::read_to_string(node.staff_password_file())?;
    let token = ldx_node::staff::client::login(channel.clone(), DEMO_STAFF, password.trim())
        .await
        .with_context(|| format!("log-in of {DEMO_STAFF} at node {}", node.division))?;
    Ok(ldx_node::staff::client::with_token(channel, ldx_node::staff::client::Bearer::new(&token)?))
}

/// The demo's staff account at every node: every role, for trying each command.
pub const DEMO_STAFF: &str = "demo";

impl DemoNode {
    /// The password of [`DEMO_STAFF`] at this node (mode 0600, beside its config).
    pub fn staff_password_file(&self) -> PathBuf {
        self.config.with_file_name("demo-staff.password")
    }
}

/// Makes the demo's staff account on a new node's data directory, with a fresh password
/// kept beside the config.
fn add_demo_staff_with(config_path: &Path, config: &Config) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let password = ldx_node::registry::new_password();
    let new = ldx_node::registry::NewStaff {
        name: DEMO_STAFF.into(),
        roles: ["registrar", "verifier", "auditor", "admin"].map(String::from).to_vec(),
        password: password.clone(),
        ..Default::default()
    };
    ldx_node::cli::add_staff_offline_with(config, &new)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(config_path.with_file_name("demo-staff.password"))?;
    writeln!(file, "{password}")?;
    Ok(())
}
