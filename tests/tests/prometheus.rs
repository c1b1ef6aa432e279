//! The shipped Prometheus scrape config against a running federation: Debian's real
//! Prometheus server finds every node through the gateway's `/api/sd`, scrapes each as a
//! healthy target with its division, name and role, and has `ldx_channel_pending` for
//! every channel the gateway knows of, all checked through Prometheus's own HTTP API.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use chrono::NaiveDate;
use ldx_gateway::synthetic;
use ldx_tests::cluster::{Cluster, wait_until};
use serde_json::Value;

const STREETS: [&str; 2] = ["410103007", "410103003"];
const COUNTIES: [&str; 2] = ["411421", "411723"];
const PROMETHEUS: &str = "/usr/bin/prometheus";
/// Where the shipped scrape config and alert rules live, from this crate.
const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus");
/// The gateway's address as the shipped config names it.
const SHIPPED_GATEWAY: &str = "gateway:9300";
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Long enough for the first scrape of every target whatever offset Prometheus gives it
/// within the shipped scrape interval, and a second one.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(150);

/// A Prometheus server on loopback, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with `config` (a scrape config's text) on a free loopback port
    /// and waits until `/-/ready` answers.
    async fn start(config: &str, rules: Option<&Path>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("ldx-prometheus-").tempdir()?;
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        if let Some(rules) = rules {
            std::fs::copy(rules, dir.path().join("alerts.yml"))?;
        }
        let addr = free_port()?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {PROMETHEUS} (apt-get install prometheus)"))?;
        let mut prometheus = Self { child, addr, dir };
        let p = &prometheus;
        let ready = wait_until(START_TIMEOUT, "Prometheus answers /-/ready", async || {
            http_get(p.addr, "/-/ready").await.is_ok_and(|(code, _)| code == 200)
        })
        .await;
        if let Err(e) = ready {
            let exited = prometheus.child.try_wait()?;
            bail!("{e} (exited: {exited:?}); its log:\n{}", prometheus.log());
        }
        Ok(prometheus)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `data` of an API answer whose `status` is `success`.
    async fn api(&self, path: &str) -> anyhow::Result<Value> {
        let (code, body) = http_get(self.addr, path).await?;
        ensure!(code == 200, "{path} answered {code}: {body}");
        let answer: Value = serde_json::from_str(&body).with_context(|| format!("{path}: {body}"))?;
        ensure!(answer["status"] == "success", "{path}: {body}");
        Ok(answer["data"].clone())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address nothing listens on: bound to port 0, then released for Prometheus.
fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// `GET path` over HTTP/1.0, so the answer comes whole rather than in chunks: the status
/// code and the body.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.0\r\nhost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8(response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP response")?;
    let code = head.split(' ').nth(1).context("no status code")?.parse()?;
    ensure!(
        !head.to_ascii_lowercase().contains("transfer-encoding: chunked"),
        "{path}: chunked answers are not read here"
    );
    Ok((code, body.to_owned()))
}

/// The shipped scrape config pointed at `gateway`, and the alert rules beside it if they
/// ship; without them the config's `rule_files` is dropped.
fn shipped_config(gateway: SocketAddr) -> anyhow::Result<(String, Option<PathBuf>)> {
    let path = Path::new(DEPLOY).join("prometheus.yml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("the shipped {}", path.display()))?;
    ensure!(text.contains(SHIPPED_GATEWAY), "{} names no {SHIPPED_GATEWAY}", path.display());
    ensure!(text.contains("/api/sd"), "{} discovers no nodes through /api/sd", path.display());
    let text = text.replace(SHIPPED_GATEWAY, &gateway.to_string());
    let rules = Path::new(DEPLOY).join("alerts.yml");
    if rules.exists() {
        return Ok((text, Some(rules)));
    }
    let mut kept = Vec::new();
    let mut in_rule_files = false;
    for line in text.lines() {
        if line.starts_with("rule_files:") {
            in_rule_files = true;
            continue;
        }
        if in_rule_files && (line.trim_start().starts_with('-') && line.starts_with(' ')) {
            continue;
        }
        in_rule_files = false;
        kept.push(line);
    }
    Ok((kept.join("\n") + "\n", None))
}

async fn register(cluster: &Cluster) -> anyhow::Result<()> {
    let date = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
    let mut n = 0;
    for street in STREETS {
        let mut client = cluster.node(street).registry().await?;
        for county in COUNTIES {
            for _ in 0..3 {
                let request = synthetic::person(county, n).move_in(street, date, synthetic::category(n));
                client.register_move_in(request).await?;
                n += 1;
            }
        }
    }
    Ok(())
}

fn role(division: &str) -> &'static str {
    if division.len() == 9 { "street-office" } else { "county" }
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_every_node_found_through_the_gateway() -> anyhow::Result<()> {
    let divisions: Vec<&str> = STREETS.iter().chain(&COUNTIES).copied().collect();
    let cluster = Cluster::builder().nodes(divisions.clone()).node_metrics(true).start().await?;
    register(&cluster).await?;

    // Prometheus reads the discovery document once at start and then only every refresh
    // interval, so it starts once the gateway lists every node and knows every channel.
    let c = &cluster;
    let (mut sd, mut status) = (Value::Null, Value::Null);
    wait_until(Duration::from_secs(60), "the gateway lists every node in /api/sd and sees every channel", async || {
        let (Ok(s), Ok(st)) = (c.gateway_get("/api/sd").await, c.gateway_get("/api/status").await) else {
            return false;
        };
        let (Ok(s), Ok(st)) = (serde_json::from_str::<Value>(&s), serde_json::from_str::<Value>(&st)) else {
            return false;
        };
        let listed = s.as_array().map_or(0, Vec::len);
        let channels = st["channels"].as_array().map_or(0, Vec::len);
        (sd, status) = (s, st);
        listed == divisions.len() && channels >= STREETS.len() * COUNTIES.len()
    })
    .await
    .with_context(|| format!("sd {sd}, status {status}\n{}", cluster.log_tails(20)))?;
    for node in cluster.nodes() {
        let group = sd
            .as_array()
            .into_iter()
            .flatten()
            .find(|g| g["labels"]["division"] == node.division())
            .with_context(|| format!("{} missing from {sd}", node.division()))?;
        let addr = node.metrics_addr().context("the node serves /metrics")?;
        assert_eq!(group["targets"], serde_json::json!([addr.to_string()]), "{sd}");
    }
    let channels: BTreeSet<(String, String)> = status["channels"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| (c["from"].as_str().unwrap_or_default().to_owned(), c["to"].as_str().unwrap_or_default().to_owned()))
        .collect();

    let (config, rules) = shipped_config(cluster.gateway_http_addr()?)?;
    let prometheus = Prometheus::start(&config, rules.as_deref()).await?;

    let p = &prometheus;
    let (mut targets, mut error) = (Value::Null, String::new());
    let healthy = wait_until(SCRAPE_TIMEOUT, "Prometheus has every node and the gateway up", async || {
        let data = match p.api("/api/v1/targets?state=active").await {
            Ok(data) => data,
            Err(e) => {
                error = format!("{e:#}");
                return false;
            }
        };
        targets = data["activeTargets"].clone();
        let up = |t: &&Value| t["health"] == "up";
        let nodes_up =
            targets.as_array().into_iter().flatten().filter(|t| t["labels"]["job"] == "ldx-nodes").filter(up);
        let gateway_up =
            targets.as_array().into_iter().flatten().any(|t| t["labels"]["job"] == "ldx-gateway" && up(&t));
        nodes_up.count() == divisions.len() && gateway_up
    })
    .await;
    healthy.with_context(|| {
        format!(
            "targets: {targets:#}\nlast API error: {error}\nconfig:\n{config}\nprometheus log:\n{}",
            prometheus.log()
        )
    })?;
    for node in cluster.nodes() {
        let division = node.division();
        let target = targets
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["labels"]["job"] == "ldx-nodes" && t["labels"]["division"] == division)
            .with_context(|| format!("no target of {division}: {targets:#}"))?;
        let name = ldx_gateway::directory::division_name(division);
        assert!(!name.is_empty(), "{division} is in the division table");
        assert_eq!(target["labels"]["name"], name, "{target:#}");
        assert_eq!(target["labels"]["role"], role(division), "{target:#}");
        assert_eq!(target["labels"]["instance"], node.metrics_addr().context("metrics")?.to_string(), "{target:#}");
        assert_eq!(target["health"], "up", "{target:#}");
    }

    let (mut seen, mut error) = (BTreeSet::new(), String::new());
    let query = "/api/v1/query?query=ldx_channel_pending";
    wait_until(SCRAPE_TIMEOUT, "ldx_channel_pending for every channel, from the nodes and the gateway", async || {
        let data = match p.api(query).await {
            Ok(data) => data,
            Err(e) => {
                error = format!("{e:#}");
                return false;
            }
        };
        seen.clear();
        for sample in data["result"].as_array().into_iter().flatten() {
            let m = &sample["metric"];
            let job = m["job"].as_str().unwrap_or_default().to_owned();
            let channel =
                (m["node"].as_str().unwrap_or_default().to_owned(), m["peer"].as_str().unwrap_or_default().to_owned());
            seen.insert((job, channel));
        }
        channels.iter().all(|c| {
            seen.contains(&("ldx-nodes".to_owned(), c.clone())) && seen.contains(&("ldx-gateway".to_owned(), c.clone()))
        })
    })
    .await
    .with_context(|| format!("channels {channels:?}, Prometheus has {seen:?}; last API error: {error}"))?;
    eprintln!(
        "Prometheus scrapes {} nodes and has ldx_channel_pending for {} channels",
        divisions.len(),
        channels.len()
    );

    // The counters and histograms recorded in the nodes reach Prometheus too: every county
    // applied notices, and every node synced its WAL (group commit).
    let instances = |data: &Value| -> BTreeMap<String, f64> {
        data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["metric"]["job"] == "ldx-nodes")
            .map(|s| {
                let division = s["metric"]["division"].as_str().unwrap_or_default().to_owned();
                (division, s["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN))
            })
            .collect()
    };
    for (query, who) in [
        ("ldx_envelopes_applied_total", &COUNTIES[..]),
        ("ldx_wal_sync_seconds_count", &divisions[..]),
        ("ldx_commit_group_size_count", &divisions[..]),
        ("ldx_commit_seconds_count", &divisions[..]),
    ] {
        let mut last = BTreeMap::new();
        wait_until(SCRAPE_TIMEOUT, &format!("{query} above 0 at {who:?}"), async || {
            let Ok(data) = p.api(&format!("/api/v1/query?query={query}")).await else { return false };
            last = instances(&data);
            who.iter().all(|d| last.get(*d).is_some_and(|v| *v > 0.0))
        })
        .await
        .with_context(|| format!("{query}: Prometheus has {last:?}"))?;
        eprintln!("{query}: {last:?}");
    }
    let buckets = p.api("/api/v1/query?query=ldx_wal_sync_seconds_bucket").await?;
    assert!(
        buckets["result"].as_array().is_some_and(|r| r.iter().any(|s| s["metric"]["le"] == "0.001")),
        "the WAL sync histogram has its buckets: {buckets:#}"
    );
    Ok(())
}
