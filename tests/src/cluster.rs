//! The cluster harness: a federation of real `ldx-node` processes and one `ldx-gateway` on
//! loopback port 0, with certificates from a test CA and a signed directory; readiness by
//! polling, and SIGTERM, SIGKILL and restart of any process on demand. With
//! [`ClusterBuilder::fault_proxies`] every node is reached through a [`FaultProxy`].
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use ldx_tests::cluster::Cluster;
//! let mut cluster = Cluster::builder().nodes(["410103007", "411421"]).start().await?;
//! let status = cluster.node("410103007").status().await?;
//! cluster.node_mut("411421").kill()?;
//! cluster.node_mut("411421").restart().await?;
//! # Ok(()) }
//! ```

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use ldx_gateway::{directory, pki};
use ldx_node::staff::client::StaffChannel;
use ldx_proto::v1::{
    self as pb, ListLogRequest, LogEntry, StatusRequest, StatusResponse, monitor_client::MonitorClient,
    registry_client::RegistryClient,
};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::fault::FaultProxy;
use crate::serving_service;

/// How long a process may take to start serving.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long every node may take to take the directory the harness published.
pub const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often [`wait_until`] and the readiness checks poll.
pub const POLL: Duration = Duration::from_millis(20);

const NODE_BIN: &str = "ldx-node-harness";
const GATEWAY_BIN: &str = "ldx-gateway-harness";
/// Largest page `Monitor.ListLog` gives.
const LOG_PAGE: u32 = 10_000;
/// Largest page `Registry.ListPersons` gives.
const PERSON_PAGE: u32 = 1_000;

/// Polls `done` every [`POLL`] until it says true; returns how long that took, or fails
/// naming `what` and the time waited.
pub async fn wait_until(
    timeout: Duration,
    what: &str,
    mut done: impl AsyncFnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if done().await {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("timed out after {:.1?} waiting until {what}", start.elapsed());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Options of a cluster; [`ClusterBuilder::start`] brings it up.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    divisions: Vec<String>,
    node_bin: Option<PathBuf>,
    gateway_bin: Option<PathBuf>,
    sync_writes: bool,
    log_filter: String,
    poll_interval_ms: u64,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
    fault_proxies: bool,
    node_metrics: bool,
}

impl ClusterBuilder {
    /// The divisions of the nodes, one node each.
    pub fn nodes<S: Into<String>>(mut self, divisions: impl IntoIterator<Item = S>) -> Self {
        self.divisions = divisions.into_iter().map(Into::into).collect();
        self
    }

    /// The `ldx-node` and `ldx-gateway` binaries (in an integration test:
    /// `env!("CARGO_BIN_EXE_ldx-node-harness")` and `env!("CARGO_BIN_EXE_ldx-gateway-harness")`).
    /// Without this the harness takes the ones cargo built next to the test binary.
    pub fn binaries(mut self, node: impl Into<PathBuf>, gateway: impl Into<PathBuf>) -> Self {
        self.node_bin = Some(node.into());
        self.gateway_bin = Some(gateway.into());
        self
    }

    /// `storage.sync_writes` of every node (default true, as shipped).
    pub fn sync_writes(mut self, on: bool) -> Self {
        self.sync_writes = on;
        self
    }

    /// `RUST_LOG` of every process (default `info`).
    pub fn log_filter(mut self, filter: impl Into<String>) -> Self {
        self.log_filter = filter.into();
        self
    }

    /// Puts a [`FaultProxy`] in front of every node's peer port and publishes the proxy's
    /// address in the directory, so all traffic between nodes passes through the proxies
    /// ([`Cluster::proxy`]). TLS runs end to end through them.
    pub fn fault_proxies(mut self, on: bool) -> Self {
        self.fault_proxies = on;
        self
    }

    /// Every node serves `/metrics` on `127.0.0.1:0` (`metrics.listen`; default off), and so
    /// names that address in its Status ([`ClusterNode::metrics_addr`]).
    pub fn node_metrics(mut self, on: bool) -> Self {
        self.node_metrics = on;
        self
    }

    /// `exchange.backoff_initial_ms` and `exchange.backoff_max_ms` of every node (default
    /// 50 and 1000).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial_ms = u64::try_from(initial.as_millis()).unwrap_or(u64::MAX);
        self.backoff_max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Starts the gateway and every node, publishes every node in the directory and waits
    /// until each node uses that version.
    pub async fn start(self) -> anyhow::Result<Cluster> {
        ensure!(!self.divisions.is_empty(), "a cluster needs at least one node");
        let node_bin = match self.node_bin.clone() {
            Some(bin) => bin,
            None => sibling_binary(NODE_BIN)?,
        };
        let gateway_bin = match self.gateway_bin.clone() {
            Some(bin) => bin,
            None => sibling_binary(GATEWAY_BIN)?,
        };
        let root = tempfile::Builder::new().prefix("ldx-cluster-").tempdir()?;
        let pki_dir = root.path().join("pki");
        pki::init(&pki_dir).context("pki init")?;
        let mut issued = Vec::new();
        for division in &self.divisions {
            issued.push(pki::issue(&pki_dir, division).with_context(|| format!("pki issue {division}"))?);
        }

        let mut gateway = Gateway {
            bin: gateway_bin,
            pki: pki_dir.clone(),
            dir: root.path().join("gateway"),
            log_filter: self.log_filter.clone(),
            addr: None,
            child: None,
        };
        std::fs::create_dir_all(&gateway.dir)?;
        gateway.start().await?;
        // Over TLS, as deployed: the gateway's certificate against the federation CA.
        let gateway_url = format!("https://{}", gateway.addr.context("gateway started")?);

        let mut nodes = BTreeMap::new();
        for node in issued {
            let dir = root.path().join("nodes").join(&node.division);
            std::fs::create_dir_all(&dir)?;
            ldx_node::crypto::write_new_key_file(
                &dir.join("data.key"),
                &format!("data key of test node {}", node.division),
            )?;
            let settings = NodeSettings {
                division: node.division.clone(),
                pki: pki_dir.clone(),
                gateway: gateway_url.clone(),
                sync_writes: self.sync_writes,
                poll_interval_ms: self.poll_interval_ms,
                backoff_initial_ms: self.backoff_initial_ms,
                backoff_max_ms: self.backoff_max_ms,
                metrics: self.node_metrics,
            };
            let (endpoint, _) = watch::channel(None);
            let cluster_node = ClusterNode {
                division: node.division.clone(),
                bin: node_bin.clone(),
                dir,
                log_filter: self.log_filter.clone(),
                settings,
                issued: node,
                peer_addr: None,
                child: None,
                starts: 0,
                endpoint,
                monitor: None,
                token: None,
            };
            nodes.insert(cluster_node.division.clone(), cluster_node);
        }
        // Spawn every node first and then wait for each, so they open their stores in parallel.
        for node in nodes.values_mut() {
            node.spawn()?;
        }
        for node in nodes.values_mut() {
            node.wait_ready().await?;
        }

        let mut version = 0;
        let mut proxies = BTreeMap::new();
        for node in nodes.values() {
            let mut peer = node.peer_addr.context("node started")?;
            if self.fault_proxies {
                let proxy = FaultProxy::start(peer).await.context("start a fault proxy")?;
                peer = proxy.addr();
                proxies.insert(node.division.clone(), proxy);
            }
            let endpoint = format!("https://{peer}");
            let published = directory::add(
                &pki_dir,
                &node.division,
                &endpoint,
                &node.issued.cert_path,
                &node.issued.signing_pub_path,
            )
            .with_context(|| format!("directory add {}", node.division))?;
            version = published.version();
        }
        let cluster = Cluster { nodes, proxies, gateway, directory_version: version, pki: pki_dir, root };
        cluster.wait_for_directory(version).await?;
        Ok(cluster)
    }
}

/// A federation on loopback. Dropping it kills every process it started and removes its
/// files (set `LDX_TEST_KEEP=1` to keep them).
pub struct Cluster {
    nodes: BTreeMap<String, ClusterNode>,
    /// By division, when the cluster was built with fault proxies.
    proxies: BTreeMap<String, FaultProxy>,
    gateway: Gateway,
    directory_version: u64,
    pki: PathBuf,
    // Last, so that it is removed after every process is dead.
    root: tempfile::TempDir,
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            divisions: Vec::new(),
            node_bin: None,
            gateway_bin: None,
            sync_writes: true,
            log_filter: "info".into(),
            poll_interval_ms: 200,
            backoff_initial_ms: 50,
            backoff_max_ms: 1_000,
            fault_proxies: false,
            node_metrics: false,
        }
    }

    /// The node of `division`; panics when the cluster has none.
    pub fn node(&self, division: &str) -> &ClusterNode {
        self.nodes.get(division).unwrap_or_else(|| panic!("the cluster has no node {division}"))
    }

    pub fn node_mut(&mut self, division: &str) -> &mut ClusterNode {
        self.nodes.get_mut(division).unwrap_or_else(|| panic!("the cluster has no node {division}"))
    }

    pub fn nodes(&self) -> impl Iterator<Item = &ClusterNode> {
        self.nodes.values()
    }

    /// The fault proxy in front of `division`'s peer port; panics unless the cluster was
    /// built with [`ClusterBuilder::fault_proxies`].
    pub fn proxy(&self, division: &str) -> FaultProxy {
        self.proxies.get(division).cloned().unwrap_or_else(|| panic!("the cluster has no fault proxy for {division}"))
    }

    /// Every fault proxy, by division (empty without [`ClusterBuilder::fault_proxies`]).
    pub fn proxies(&self) -> impl Iterator<Item = (&str, &FaultProxy)> {
        self.proxies.iter().map(|(d, p)| (d.as_str(), p))
    }

    /// The directory version the harness published last.
    pub fn directory_version(&self) -> u64 {
        self.directory_version
    }

    /// The PKI directory: CA, federation key and salt, `directory.bin`, `nodes/CODE/`.
    pub fn pki_dir(&self) -> &Path {
        &self.pki
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// `https://ADDR` of the gateway's directory while it runs (it answers plain HTTP/2
    /// on the same address too).
    pub fn gateway_endpoint(&self) -> Option<String> {
        self.gateway.child.as_ref().and(self.gateway.addr).map(|a| format!("https://{a}"))
    }

    /// SIGTERM to the gateway; fails unless it exits cleanly.
    pub async fn stop_gateway(&mut self) -> anyhow::Result<()> {
        self.gateway.stop().await
    }

    /// Starts the gateway again on the port it had, which is the one in every node's config.
    pub async fn start_gateway(&mut self) -> anyhow::Result<()> {
        self.gateway.start().await
    }

    /// The address of the gateway's HTTP side (`/metrics`, `/api/sd`, the dashboard).
    pub fn gateway_http_addr(&self) -> anyhow::Result<SocketAddr> {
        read_addr(&self.gateway.dir.join("metrics.addr")).context("the gateway serves no HTTP side")
    }

    /// The gateway's `GET /metrics` body (it gathers every node's status over mutual TLS).
    pub async fn gateway_metrics(&self) -> anyhow::Result<String> {
        self.gateway_get("/metrics").await
    }

    /// The body of `GET path` on the gateway's HTTP side; an error unless it answers 200.
    pub async fn gateway_get(&self, path: &str) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.gateway_http_addr()?;
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let (head, body) = response.split_once("\r\n\r\n").context("no HTTP response")?;
        ensure!(head.starts_with("HTTP/1.1 200"), "{path} answered {head}");
        Ok(body.to_owned())
    }

    pub fn gateway_log(&self) -> String {
        std::fs::read_to_string(self.gateway.log_file()).unwrap_or_default()
    }

    /// Waits until every running node uses directory `version`.
    pub async fn wait_for_directory(&self, version: u64) -> anyhow::Result<Duration> {
        let what = format!("every node uses directory version {version}");
        let waited = wait_until(DIRECTORY_TIMEOUT, &what, async || {
            for node in self.nodes.values().filter(|n| n.is_running()) {
                match node.status().await {
                    Ok(s) if s.directory_version == version => {}
                    _ => return false,
                }
            }
            true
        })
        .await;
        waited.with_context(|| self.log_tails(20))
    }

    /// The last `lines` lines of every node's log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in self.nodes.values() {
            let _ = writeln!(out, "--- {} log (last {lines} lines) ---\n{}", node.division, node.log_tail(lines));
        }
        let _ = writeln!(out, "--- gateway log (last {lines} lines) ---\n{}", tail(&self.gateway_log(), lines));
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("cluster in {} failed; process logs follow", self.root.path().display());
            eprintln!("{}", self.log_tails(40));
        }
        if std::env::var_os("LDX_TEST_KEEP").is_some() {
            let root = std::mem::replace(&mut self.root, tempfile::tempdir().expect("a temporary directory"));
            eprintln!("cluster files kept in {}", root.keep().display());
        }
    }
}

/// What goes into a node's config file.
#[derive(Debug, Clone)]
struct NodeSettings {
    division: String,
    pki: PathBuf,
    gateway: String,
    sync_writes: bool,
    poll_interval_ms: u64,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
    /// Serve `/metrics` on `127.0.0.1:0`.
    metrics: bool,
}

/// One `ldx-node` process of a cluster, in `ROOT/nodes/CODE/`: `ldx-node.toml`,
/// `data.key`, `data/` and `node.log` (every start appends to it).
pub struct ClusterNode {
    division: String,
    bin: PathBuf,
    dir: PathBuf,
    log_filter: String,
    settings: NodeSettings,
    issued: pki::IssuedNode,
    /// The peer address the node got on its first start; later starts reuse it, so the
    /// directory entry stays valid.
    peer_addr: Option<SocketAddr>,
    child: Option<Child>,
    starts: u32,
    endpoint: watch::Sender<Option<String>>,
    monitor: Option<StaffChannel>,
    /// The session token of the harness's staff account (see [`crate::staff`]), once
    /// logged in: sessions outlive restarts.
    token: Option<String>,
}

impl ClusterNode {
    pub fn division(&self) -> &str {
        &self.division
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("ldx-node.toml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    /// The node's certificate and keys as the PKI issued them.
    pub fn issued(&self) -> &pki::IssuedNode {
        &self.issued
    }

    /// The peer API address (fixed for the life of the cluster).
    /// Where the running node serves `/metrics` (see [`ClusterBuilder::node_metrics`]).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        read_addr(&self.run_dir().join("metrics.addr")).filter(|_| self.child.is_some())
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `http://ADDR` of the staff API while running; it changes on every start.
    pub fn endpoint(&self) -> anyhow::Result<String> {
        self.endpoint.borrow().clone().with_context(|| format!("node {} is not running", self.division))
    }

    /// Sees the staff API endpoint change: `None` while the node is down, the new address
    /// once a restart is ready. For clients that must outlive a restart.
    pub fn endpoint_watch(&self) -> watch::Receiver<Option<String>> {
        self.endpoint.subscribe()
    }

    /// A fresh connection to the staff `Registry`, logged in as the harness's account.
    pub async fn registry(&self) -> anyhow::Result<RegistryClient<StaffChannel>> {
        Ok(RegistryClient::new(self.channel().await?))
    }

    /// A fresh connection to the staff API carrying the harness account's token.
    pub async fn channel(&self) -> anyhow::Result<StaffChannel> {
        let endpoint = self.endpoint()?;
        let channel =
            Channel::from_shared(endpoint.clone())?.connect().await.with_context(|| format!("connect {endpoint}"))?;
        Ok(crate::staff::authed(channel, self.token()?))
    }

    /// The harness account's session token at this node.
    pub fn token(&self) -> anyhow::Result<&str> {
        self.token.as_deref().with_context(|| format!("node {} was never started", self.division))
    }

    /// Where the token is kept for the CLI (`LDX_TOKEN_FILE` of [`cli_command`](Self::cli_command)).
    pub fn token_file(&self) -> PathBuf {
        self.dir.join("lab.session")
    }

    /// The `Monitor` of the staff API, on a connection kept for the life of the process.
    pub async fn monitor(&self) -> anyhow::Result<MonitorClient<StaffChannel>> {
        let channel = self.monitor.clone().with_context(|| format!("node {} is not running", self.division))?;
        Ok(MonitorClient::new(channel))
    }

    pub async fn status(&self) -> anyhow::Result<StatusResponse> {
        let status = self.monitor().await?.status(StatusRequest {}).await;
        Ok(status.with_context(|| format!("Monitor.Status of {}", self.division))?.into_inner())
    }

    /// The whole message log, every page.
    pub async fn log_entries(&self) -> anyhow::Result<Vec<LogEntry>> {
        let mut monitor = self.monitor().await?;
        let mut entries = Vec::new();
        loop {
            let after = entries.last().map_or(0, |e: &LogEntry| e.index);
            let page = monitor
                .list_log(ListLogRequest { after, limit: LOG_PAGE })
                .await
                .with_context(|| format!("Monitor.ListLog of {} after {after}", self.division))?
                .into_inner()
                .entries;
            if page.is_empty() {
                return Ok(entries);
            }
            entries.extend(page);
        }
    }

    /// Every person registered at the node, every page.
    pub async fn list_persons(&self) -> anyhow::Result<Vec<pb::Person>> {
        let mut client = self.registry().await?;
        let mut persons = Vec::new();
        let mut token = String::new();
        loop {
            let page = client
                .list_persons(pb::ListPersonsRequest {
                    page_size: PERSON_PAGE,
                    page_token: token,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("Registry.ListPersons of {}", self.division))?
                .into_inner();
            persons.extend(page.persons);
            if page.next_page_token.is_empty() {
                return Ok(persons);
            }
            token = page.next_page_token;
        }
    }

    /// One person's record at this node, `None` when the node holds none.
    pub async fn person(&self, id_number: &str) -> anyhow::Result<Option<pb::Person>> {
        let mut client = self.registry().await?;
        match client.get_person(pb::GetPersonRequest { id_number: id_number.to_owned() }).await {
            Ok(resp) => Ok(resp.into_inner().person),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(anyhow::Error::new(status).context(format!("Registry.GetPerson at {}", self.division))),
        }
    }

    /// SIGKILL: no chance to flush or clean up. Waits until the process is gone.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().with_context(|| format!("node {} is not running", self.division))?;
        self.endpoint.send_replace(None);
        self.monitor = None;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// SIGTERM; waits for the process to exit and fails unless it exits with status 0.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let child = self.child.take().with_context(|| format!("node {} is not running", self.division))?;
        self.endpoint.send_replace(None);
        self.monitor = None;
        let what = format!("node {}", self.division);
        terminate(child, &what).await.with_context(|| self.log_tail(30))
    }

    /// Starts the node again (stopping it first with SIGTERM if it runs): the same peer
    /// port, a fresh staff API port, and ready when it serves.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            self.stop().await?;
        }
        self.spawn()?;
        self.wait_ready().await
    }

    /// Runs an `ldx-node` subcommand against this node through its config file, as an
    /// operator would; `--config FILE` is appended to `args`.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_command(args).output().expect("ldx-node runs")
    }

    /// The command [`cli`](Self::cli) runs, for callers that run it elsewhere (e.g. in
    /// `spawn_blocking`).
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command.args(args).arg("--config").arg(self.config_path());
        without_ldx_env(&mut command);
        command.env("LDX_TOKEN_FILE", self.token_file());
        command
    }

    /// The node's log: every start appends to it.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    fn run_dir(&self) -> PathBuf {
        self.data_dir().join("run")
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let s = &self.settings;
        let peer_listen = self.peer_addr.map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
        let node = pki::node_dir(&s.pki, &s.division);
        let text = format!(
            "# Written by the ldx-tests cluster harness.\n\
             division = {division}\n\
             data_dir = \"data\"\n\
             data_key_file = \"data.key\"\n\
             federation_salt_file = {salt}\n\
             \n[api]\nlisten = \"127.0.0.1:0\"\n\
             \n[storage]\nsync_writes = {sync}\n\
             \n[log]\nlevel = {level}\n\
             \n[peer]\nlisten = {peer}\nca_file = {ca}\ncert_file = {cert}\nkey_file = {key}\nsigning_key_file = {signing}\n\
             \n[directory]\ngateway = {gateway}\nfederation_key_file = {federation}\npoll_interval_ms = {poll}\n\
             \n[exchange]\nbackoff_initial_ms = {backoff_initial}\nbackoff_max_ms = {backoff_max}\n\
             \n[metrics]\nlisten = {metrics}\n",
            division = toml_string(&s.division),
            salt = toml_path(&s.pki.join(pki::FEDERATION_SALT)),
            sync = s.sync_writes,
            level = toml_string(&self.log_filter),
            peer = toml_string(&peer_listen),
            ca = toml_path(&s.pki.join(pki::CA_CERT)),
            cert = toml_path(&node.join(pki::NODE_CERT)),
            key = toml_path(&node.join(pki::NODE_KEY)),
            signing = toml_path(&node.join(pki::SIGNING_KEY)),
            gateway = toml_string(&s.gateway),
            federation = toml_path(&s.pki.join(pki::FEDERATION_PUB)),
            poll = s.poll_interval_ms,
            backoff_initial = s.backoff_initial_ms,
            backoff_max = s.backoff_max_ms,
            metrics = toml_string(if s.metrics { "127.0.0.1:0" } else { "" }),
        );
        std::fs::write(self.config_path(), text)?;
        Ok(())
    }

    /// Writes the config and starts `ldx-node run`; [`wait_ready`](Self::wait_ready) waits
    /// for it to serve.
    fn spawn(&mut self) -> anyhow::Result<()> {
        ensure!(self.child.is_none(), "node {} is already running", self.division);
        // A node killed with SIGKILL leaves its address files behind.
        for file in ["api.addr", "peer.addr", "metrics.addr"] {
            let _ = std::fs::remove_file(self.run_dir().join(file));
        }
        self.write_config()?;
        crate::staff::provision(&self.config_path())?;
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_file())?;
        std::io::Write::write_all(
            &mut log,
            format!("==== cluster harness: start #{} of node {} ====\n", self.starts, self.division).as_bytes(),
        )?;
        let mut command = Command::new(&self.bin);
        without_ldx_env(&mut command);
        let child = command
            .arg("run")
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until both address files exist and the staff API health check says SERVING.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let (api_file, peer_file) = (self.run_dir().join("api.addr"), self.run_dir().join("peer.addr"));
        loop {
            let child = self.child.as_mut().with_context(|| format!("node {} was not started", self.division))?;
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!("node {} exited with {status} while starting; log:\n{}", self.division, self.log_tail(40));
            }
            if let (Some(api), Some(peer)) = (read_addr(&api_file), read_addr(&peer_file)) {
                let endpoint = format!("http://{api}");
                if serving_service(&endpoint, ldx_proto::service_names::REGISTRY).await {
                    if let Some(first) = self.peer_addr {
                        ensure!(
                            first == peer,
                            "node {} came back on peer address {peer} instead of {first}",
                            self.division
                        );
                    }
                    self.peer_addr = Some(peer);
                    if self.token.is_none() {
                        let token = crate::staff::login(&endpoint).await?;
                        std::fs::write(self.token_file(), &token)?;
                        self.token = Some(token);
                    }
                    let lazy = Channel::from_shared(endpoint.clone())?.connect_lazy();
                    self.monitor = Some(crate::staff::authed(lazy, self.token()?));
                    self.endpoint.send_replace(Some(endpoint));
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} did not become ready within {START_TIMEOUT:?}; log:\n{}",
                    self.division,
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `ldx-gateway run` process, in `ROOT/gateway/`.
struct Gateway {
    bin: PathBuf,
    pki: PathBuf,
    dir: PathBuf,
    log_filter: String,
    /// The address it got on its first start; later starts reuse it.
    addr: Option<SocketAddr>,
    child: Option<Child>,
}

impl Gateway {
    fn log_file(&self) -> PathBuf {
        self.dir.join("gateway.log")
    }

    async fn start(&mut self) -> anyhow::Result<()> {
        ensure!(self.child.is_none(), "the gateway is already running");
        let addr_file = self.dir.join("gateway.addr");
        let _ = std::fs::remove_file(&addr_file);
        let listen = self.addr.map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_file())?;
        let mut command = Command::new(&self.bin);
        without_ldx_env(&mut command);
        let child = command
            .arg("run")
            .arg("--pki")
            .arg(&self.pki)
            .args(["--listen", &listen, "--addr-file"])
            .arg(&addr_file)
            .args(["--metrics-listen", "127.0.0.1:0", "--collect-interval-ms", "200", "--metrics-addr-file"])
            .arg(self.dir.join("metrics.addr"))
            .env("RUST_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("just spawned");
            if let Some(status) = child.try_wait()? {
                self.child = None;
                let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
                bail!("the gateway exited with {status} while starting; log:\n{}", tail(&log, 40));
            }
            if let Some(addr) = read_addr(&addr_file)
                && serving_service(&format!("http://{addr}"), ldx_proto::service_names::DIRECTORY).await
            {
                self.addr = Some(addr);
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the gateway did not become ready within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        let child = self.child.take().context("the gateway is not running")?;
        terminate(child, "the gateway").await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGTERM, then waits for the exit; fails unless the exit status is 0.
async fn terminate(mut child: Child, what: &str) -> anyhow::Result<()> {
    let sent = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status()?;
    ensure!(sent.success(), "kill -TERM {} failed", child.id());
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            ensure!(status.success(), "{what} exited with {status} after SIGTERM");
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} ignored SIGTERM for {STOP_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Keeps the test's own `LDX_…` variables (`LDX_TEST_KEEP`, `LDX_FAULT_CYCLES`…) away from
/// a process the harness configures: nodes take every `LDX_…` variable as a config key and
/// refuse unknown ones, and the harness passes everything through files and arguments.
fn without_ldx_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LDX_") {
            command.env_remove(name);
        }
    }
}

fn read_addr(path: &Path) -> Option<SocketAddr> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A binary cargo built into the target directory of the running executable: next to it
/// (another binary, `target/debug/NAME`) or one level up (a test binary,
/// `target/debug/deps/TEST` → `target/debug/NAME`).
fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the running executable has no directory")?;
    let candidates = [Some(dir), dir.parent()];
    let found = candidates.into_iter().flatten().map(|d| d.join(name)).find(|p| p.exists());
    found.with_context(|| {
        format!(
            "{name} not found next to {}: build it (cargo test builds it) or pass ClusterBuilder::binaries",
            exe.display()
        )
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_path(path: &Path) -> String {
    toml_string(&path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(toml_string("x\ny"), r#""x\u000Ay""#);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
