//! Test harness: real `ldx-node` processes on loopback port 0, each with its own temporary
//! directory and keys, readiness by polling, and stop, SIGKILL and restart on demand.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use ldx_node::staff::client::StaffChannel;
use ldx_proto::v1::registry_client::RegistryClient;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

pub mod bench;
pub mod cluster;
pub mod fault;
pub mod pair;
pub mod staff;

/// How long a node may take to start serving.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A federation salt shared by the nodes of one test.
pub struct Federation {
    dir: tempfile::TempDir,
}

impl Federation {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("ldx-test-").tempdir()?;
        ldx_node::crypto::write_new_key_file(&dir.path().join("federation.salt"), "test federation salt")?;
        Ok(Self { dir })
    }

    pub fn salt(&self) -> PathBuf {
        self.dir.path().join("federation.salt")
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}

/// One `ldx-node` process, initialised by its own `init` subcommand.
pub struct TestNode {
    bin: PathBuf,
    dir: PathBuf,
    pub division: String,
    child: Option<Child>,
    endpoint: Option<String>,
    /// The session token of the harness's staff account, once logged in.
    token: Option<String>,
}

impl TestNode {
    /// Runs `ldx-node init` for `division` in a fresh directory under the federation.
    pub fn init(bin: &str, federation: &Federation, division: &str) -> anyhow::Result<Self> {
        let dir = federation.root().join(division);
        let out = Command::new(bin)
            .args(["init", "--division", division, "--api-listen", "127.0.0.1:0", "--dir"])
            .arg(&dir)
            .arg("--federation-salt")
            .arg(federation.salt())
            .output()?;
        if !out.status.success() {
            bail!("ldx-node init failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let node =
            Self { bin: bin.into(), dir, division: division.to_owned(), child: None, endpoint: None, token: None };
        staff::provision(&node.config())?;
        Ok(node)
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("ldx-node.toml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    /// Starts `ldx-node run` and waits until its health check says SERVING.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        assert!(self.child.is_none(), "node {} is already running", self.division);
        let addr_file = self.data_dir().join("run").join("api.addr");
        // A node killed with SIGKILL leaves its address file behind.
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_file())?;
        let child = Command::new(&self.bin)
            .arg("run")
            .arg("--config")
            .arg(self.config())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().expect("just spawned").try_wait()? {
                self.child = None;
                bail!("node {} exited with {status} while starting; log:\n{}", self.division, self.log());
            }
            if let Ok(addr) = std::fs::read_to_string(&addr_file) {
                let endpoint = format!("http://{}", addr.trim());
                if serving(&endpoint).await {
                    if self.token.is_none() {
                        let token = staff::login(&endpoint).await?;
                        std::fs::write(self.token_file(), &token)?;
                        self.token = Some(token);
                    }
                    self.endpoint = Some(endpoint);
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("node {} did not become ready within {START_TIMEOUT:?}; log:\n{}", self.division, self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn endpoint(&self) -> &str {
        self.endpoint.as_deref().expect("node started")
    }

    /// The staff `Registry`, logged in as the harness's account.
    pub async fn registry(&self) -> anyhow::Result<RegistryClient<StaffChannel>> {
        Ok(RegistryClient::new(self.channel().await?))
    }

    /// A connection to the staff API carrying the harness account's session token.
    pub async fn channel(&self) -> anyhow::Result<StaffChannel> {
        let channel = Channel::from_shared(self.endpoint().to_owned())?.connect().await?;
        Ok(staff::authed(channel, self.token.as_deref().context("not logged in")?))
    }

    /// Where the harness account's session token is kept for the CLI (`LDX_TOKEN_FILE`).
    pub fn token_file(&self) -> PathBuf {
        self.dir.join("lab.session")
    }

    /// The exit status, once the process has ended by itself.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        self.endpoint = None;
        Some(status)
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("node not running")?;
        child.kill()?;
        child.wait()?;
        self.endpoint = None;
        Ok(())
    }

    /// SIGTERM, then waits for the process to exit; returns whether it exited cleanly.
    pub async fn stop(&mut self) -> anyhow::Result<bool> {
        let mut child = self.child.take().context("node not running")?;
        let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                self.endpoint = None;
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                child.kill()?;
                bail!("node {} ignored SIGTERM for 30 s", self.division);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs an `ldx-node` staff subcommand against this node through its config file.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .arg("--config")
            .arg(self.config())
            .env("LDX_TOKEN_FILE", self.token_file())
            .output()
            .expect("ldx-node runs")
    }

    /// `ldx-node login lab` through the CLI, as a clerk logs in (for nodes this harness
    /// did not start itself).
    pub fn login_cli(&self) -> Output {
        let password = staff::password_file(&self.config());
        let password = password.to_str().expect("a UTF-8 path");
        self.cli(&["login", staff::LAB_STAFF, "--password-file", password])
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn serving(endpoint: &str) -> bool {
    serving_service(endpoint, ldx_proto::service_names::REGISTRY).await
}

/// Whether a staff call failed only because its node was stopped, killed or restarting
/// mid-request, so the same call is worth repeating.
pub fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Internal
    )
}

/// Whether the gRPC health check of `service` at `endpoint` (plain HTTP/2) says SERVING.
pub async fn serving_service(endpoint: &str, service: &str) -> bool {
    let Ok(channel) = Channel::from_shared(endpoint.to_owned()) else { return false };
    let Ok(channel) = channel.connect().await else { return false };
    let mut health = HealthClient::new(channel);
    let request = HealthCheckRequest { service: service.to_owned() };
    matches!(
        health.check(request).await,
        Ok(resp) if resp.get_ref().status == ServingStatus::Serving as i32
    )
}

/// Every person registered at `node`, all pages.
pub async fn all_persons(node: &TestNode) -> Vec<ldx_proto::v1::Person> {
    let mut client = node.registry().await.unwrap();
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let request = ldx_proto::v1::ListPersonsRequest { page_size: 1000, page_token: token, ..Default::default() };
        let page = client.list_persons(request).await.unwrap().into_inner();
        out.extend(page.persons);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// Every file under `dir` that contains `needle`, for at-rest checks.
pub fn files_containing(dir: &Path, needle: &[u8]) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)?.windows(needle.len()).any(|w| w == needle) {
                found.push(path);
            }
        }
    }
    Ok(found)
}
