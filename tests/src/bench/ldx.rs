//! ldx node to node: a street office (the destination, where move-ins are registered) and
//! an origin county (the receiver of the move-in notices), real `ldx-node` processes with
//! `storage.sync_writes = true` (every commit fsync'd) talking mutual-TLS gRPC on loopback.
//!
//! - live: `clients` concurrent staff clients, one move-in per `Registry.RegisterMoveIn`,
//!   each answered only once its batch (record + outbox envelope) is durable; end to end
//!   is the first request → the origin's applied seq covering the last notice.
//! - bulk: one client, `Registry.RegisterMoveIns` of 1000 move-ins per request (what
//!   `ldx-node ledger import` sends), each answered once durable; end to end is the first
//!   request → the origin's applied seq covering the last notice.
//! - latency: move-ins at a fixed rate, open loop; per notice the time from the request to
//!   the `at_ms` of the origin's APPLIED log entry for her.
//! - catch-up: the origin is stopped while `catchup` notices queue (registered in batches),
//!   then restarted; drain time from the restart, wire batches of up to 1000.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use chrono::NaiveDate;
use ldx_gateway::synthetic;
use ldx_proto::v1::{self as pb, ListLogRequest, registry_client::RegistryClient};
use tokio::time::MissedTickBehavior;

use super::sys::{CpuUse, CpuWindow};
use super::{BenchConfig, ms, rate};
use crate::cluster::{Cluster, wait_until};

/// 大学路街道, Zhengzhou: where the move-ins are registered.
pub const DEST: &str = "410103007";
/// 民权县: the origin county the notices go to.
pub const ORIGIN: &str = "411421";
/// Longest wait for a channel to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1_800);
/// Move-ins of one `RegisterMoveIns` request in the bulk shape.
const BATCH: u64 = 1000;
/// Largest page of `Monitor.ListLog`.
const LOG_PAGE: u32 = 10_000;

#[derive(Debug, Clone, Default)]
pub struct LdxResults {
    /// Notices/s end to end of the live shape, one per repetition.
    pub live: Vec<f64>,
    /// Move-ins/s acknowledged (durable) at the source in the live shape.
    pub live_source: Vec<f64>,
    /// Every acknowledgement latency of the live shape, ms.
    pub live_ack_ms: Vec<f64>,
    pub live_cpu: Vec<CpuUse>,
    /// Notices/s end to end of the bulk shape (batches of 1000).
    pub bulk: Vec<f64>,
    /// Move-ins/s acknowledged (durable) at the source in the bulk shape.
    pub bulk_source: Vec<f64>,
    pub bulk_cpu: Vec<CpuUse>,
    /// At the configured rate, then (if set) at the lower rate.
    pub latency: Vec<Latency>,
    pub catchup: Option<Catchup>,
    pub ledger: Option<LedgerRun>,
    /// Mean bytes of a move-in notice envelope on the wire.
    pub envelope_bytes: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Latency {
    pub target_rate: u64,
    /// Move-ins per second actually issued.
    pub issued_rate: f64,
    /// Notices applied per second at the origin over the run.
    pub count: u64,
    /// Request → applied at the origin, ms, one per notice.
    pub end_to_end_ms: Vec<f64>,
    /// Request → acknowledged (durable at the source), ms.
    pub ack_ms: Vec<f64>,
    pub cpu: CpuUse,
}

/// `ldx-node ledger import` of a generated file at the street office.
#[derive(Debug, Clone, Default)]
pub struct LedgerRun {
    pub rows: u64,
    pub elapsed: Duration,
    /// Peak resident memory of the `ldx-node ledger import` process (`VmHWM`), KiB.
    pub cli_peak_kib: u64,
    /// Resident memory of the street office's node before and after, KiB.
    pub node_kib: (u64, u64),
}

#[derive(Debug, Clone, Default)]
pub struct Catchup {
    pub queued: u64,
    /// Move-ins/s committed at the source while the origin was down.
    pub queue_rate: f64,
    /// From the restart command to the last notice applied (includes process start).
    pub drain: Duration,
    /// Of which the origin took this long to serve again.
    pub restart: Duration,
    pub cpu: CpuUse,
}

fn date(n: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 1, 1).expect("valid") + chrono::Days::new(u64::from(n % 300))
}

/// The `n`th move-in: a woman from the origin county registering at the street office.
fn request(n: u32) -> pb::RegisterMoveInRequest {
    synthetic::person(ORIGIN, n).move_in(DEST, date(n), synthetic::category(n))
}

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

struct Bench {
    cluster: Cluster,
    /// Next person number: every move-in of the run is a different person.
    next: Arc<AtomicU32>,
    /// Index of the last origin log entry read.
    log_after: u64,
}

impl Bench {
    async fn start(config: &BenchConfig) -> anyhow::Result<Self> {
        let mut builder = Cluster::builder()
            .nodes([DEST, ORIGIN])
            .sync_writes(true)
            .log_filter(config.log_filter.clone())
            // A restarted peer is retried within 200 ms, so drain times measure the drain.
            .backoff(Duration::from_millis(20), Duration::from_millis(200));
        if let Some((node, gateway)) = &config.binaries {
            builder = builder.binaries(node, gateway);
        }
        let cluster = builder.start().await?;
        Ok(Self { cluster, next: Arc::new(AtomicU32::new(0)), log_after: 0 })
    }

    fn pid(&self, division: &str) -> u32 {
        self.cluster.node(division).pid().unwrap_or(0)
    }

    fn cpu(&self) -> CpuWindow {
        CpuWindow::start(&[
            ("source node", self.pid(DEST)),
            ("origin node", self.pid(ORIGIN)),
            ("bench client", std::process::id()),
        ])
    }

    async fn clients(
        &self,
        count: usize,
    ) -> anyhow::Result<Vec<RegistryClient<ldx_node::staff::client::StaffChannel>>> {
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            out.push(self.cluster.node(DEST).registry().await?);
        }
        Ok(out)
    }

    /// Seq of the last notice the origin applied from the street office.
    async fn applied(&self) -> anyhow::Result<u64> {
        let status = self.cluster.node(ORIGIN).status().await?;
        Ok(status.inbound.iter().find(|c| c.peer == DEST).map_or(0, |c| c.applied_seq))
    }

    /// The street office's outbound channel to the origin.
    async fn outbound(&self) -> anyhow::Result<pb::OutboundChannel> {
        let status = self.cluster.node(DEST).status().await?;
        Ok(status.outbound.into_iter().find(|c| c.peer == ORIGIN).unwrap_or_default())
    }

    async fn wait_applied(&self, seq: u64) -> anyhow::Result<Duration> {
        let what = format!("the origin applied notice seq {seq}");
        wait_until(DRAIN_TIMEOUT, &what, async || self.applied().await.is_ok_and(|a| a >= seq)).await
    }

    /// Registers `count` move-ins from `clients` concurrent clients, each waiting for its
    /// answer before the next: one per `RegisterMoveIn` when `per_request` is 1, else in
    /// `RegisterMoveIns` of `per_request`. Returns every request's latency in ms.
    async fn register(&self, clients: usize, count: u64, per_request: u64) -> anyhow::Result<Vec<f64>> {
        let issued = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for mut client in self.clients(clients).await? {
            let (issued, next) = (issued.clone(), self.next.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let take = per_request.min(count.saturating_sub(issued.fetch_add(per_request, Ordering::Relaxed)));
                    if take == 0 {
                        break;
                    }
                    let first = next.fetch_add(take as u32, Ordering::Relaxed);
                    let start = Instant::now();
                    let created: Vec<(bool, String)> = if per_request == 1 {
                        let resp = client.register_move_in(request(first)).await.context("RegisterMoveIn")?;
                        vec![(resp.into_inner().created, String::new())]
                    } else {
                        let move_ins = (first..first + take as u32).map(request).collect();
                        let resp = client
                            .register_move_ins(pb::RegisterMoveInsRequest { move_ins })
                            .await
                            .context("RegisterMoveIns")?;
                        resp.into_inner().results.into_iter().map(|r| (r.created, r.error)).collect()
                    };
                    latencies.push(ms(start.elapsed()));
                    ensure!(created.len() as u64 == take, "{} results for {take} move-ins", created.len());
                    if let Some((_, error)) = created.iter().find(|(c, _)| !c) {
                        anyhow::bail!("a move-in from {first} on was not created: {error:?}");
                    }
                }
                anyhow::Ok(latencies)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        Ok(all)
    }

    /// One repetition of the live shape.
    async fn live(&self, config: &BenchConfig, out: &mut LdxResults) -> anyhow::Result<()> {
        let cpu = self.cpu();
        let start = Instant::now();
        let acks = self.register(config.clients, config.live, 1).await?;
        let source = start.elapsed();
        let head = self.outbound().await?.head_seq;
        self.wait_applied(head).await?;
        let end_to_end = start.elapsed();
        let cpu = cpu.finish();
        let (r, s) = (rate(config.live, end_to_end), rate(config.live, source));
        eprintln!("   ldx live: {r:.0} notices/s end to end, {s:.0} move-ins/s acknowledged at the source; {cpu}");
        out.live.push(r);
        out.live_source.push(s);
        out.live_ack_ms.extend(acks);
        out.live_cpu.push(cpu);
        Ok(())
    }

    /// The origin down while `count` notices queue, then restarted: returns (queue rate,
    /// restart time, drain time from the restart, CPU during the drain).
    async fn catch_up(&mut self, count: u64) -> anyhow::Result<(f64, Duration, Duration, CpuUse)> {
        self.cluster.node_mut(ORIGIN).stop().await?;
        let start = Instant::now();
        self.register(2, count, BATCH).await?;
        let queue_rate = rate(count, start.elapsed());
        let head = self.outbound().await?.head_seq;
        let restart = Instant::now();
        self.cluster.node_mut(ORIGIN).restart().await?;
        let ready = restart.elapsed();
        let cpu = self.cpu();
        self.wait_applied(head).await?;
        Ok((queue_rate, ready, restart.elapsed(), cpu.finish()))
    }

    /// One repetition of the bulk shape.
    async fn bulk(&mut self, config: &BenchConfig, out: &mut LdxResults) -> anyhow::Result<()> {
        let cpu = self.cpu();
        let start = Instant::now();
        let requests = self.register(1, config.bulk, BATCH).await?;
        let source = start.elapsed();
        let head = self.outbound().await?.head_seq;
        self.wait_applied(head).await?;
        let end_to_end = start.elapsed();
        let cpu = cpu.finish();
        let (r, s) = (rate(config.bulk, end_to_end), rate(config.bulk, source));
        eprintln!(
            "   ldx bulk: {r:.0} notices/s end to end, {s:.0} move-ins/s acknowledged at the source \
             ({} requests of {BATCH}, median {:.1} ms); {cpu}",
            requests.len(),
            super::median(&requests)
        );
        out.bulk.push(r);
        out.bulk_source.push(s);
        out.bulk_cpu.push(cpu);
        Ok(())
    }

    /// Imports a ledger of `rows` new persons through the CLI, as a clerk would.
    async fn ledger(&self, rows: u64) -> anyhow::Result<LedgerRun> {
        let path = self.cluster.root().join("bench-ledger.csv");
        let file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut writer = ldx_node::ledger::Writer::new(file)?;
        let first = self.next.fetch_add(u32::try_from(rows)?, Ordering::Relaxed);
        for n in first..first + rows as u32 {
            let r = request(n);
            writer.person(&pb::Person {
                id_number: r.id_number,
                name: r.name,
                phone: r.phone,
                category: r.category,
                role: r.role,
                division: r.division,
                address: r.address,
                move_in_date: r.date,
                ..Default::default()
            })?;
        }
        std::io::Write::flush(&mut writer.finish()?)?;
        let node = self.pid(DEST);
        let node_before = super::sys::rss_kib(node).unwrap_or(0);
        let start = Instant::now();
        let path_arg = path.to_string_lossy().into_owned();
        let mut child = self
            .cluster
            .node(DEST)
            .cli_command(&["ledger", "import", &path_arg])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let mut peak = 0;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            peak = peak.max(super::sys::hwm_kib(child.id()).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let elapsed = start.elapsed();
        let output = child.wait_with_output()?;
        ensure!(
            status.success(),
            "ledger import failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let summary = String::from_utf8_lossy(&output.stdout);
        ensure!(summary.contains(&format!("{rows} rows: {rows} stored")), "ledger import: {summary}");
        std::fs::remove_file(&path)?;
        let node_after = super::sys::rss_kib(node).unwrap_or(0);
        Ok(LedgerRun { rows, elapsed, cli_peak_kib: peak, node_kib: (node_before, node_after) })
    }

    async fn new_log(&mut self) -> anyhow::Result<Vec<pb::LogEntry>> {
        let mut monitor = self.cluster.node(ORIGIN).monitor().await?;
        let mut entries = Vec::new();
        loop {
            let page =
                monitor.list_log(ListLogRequest { after: self.log_after, limit: LOG_PAGE }).await?.into_inner().entries;
            let Some(last) = page.last() else { return Ok(entries) };
            self.log_after = last.index;
            entries.extend(page);
        }
    }

    async fn latency(&mut self, config: &BenchConfig, per_sec: u64) -> anyhow::Result<Latency> {
        self.new_log().await?;
        let clients = self.clients(config.clients).await?;
        let total = per_sec * config.latency_secs;
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec as f64));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let cpu = self.cpu();
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(total as usize);
        for i in 0..total {
            ticker.tick().await;
            let mut client = clients[i as usize % clients.len()].clone();
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            tasks.push(tokio::spawn(async move {
                let sent = now_ms();
                let resp = client.register_move_in(request(n)).await.context("RegisterMoveIn")?.into_inner();
                let acked = now_ms();
                ensure!(resp.created, "move-in {n} was already registered");
                let key = resp.person.context("no person in the answer")?.person_key;
                anyhow::Ok((key, sent, acked))
            }));
        }
        let issued_rate = rate(total, start.elapsed());
        let mut sent = HashMap::new();
        let mut ack_ms = Vec::new();
        for t in tasks {
            let (key, at, acked) = t.await??;
            ack_ms.push(acked - at);
            sent.insert(key, at);
        }
        let head = self.outbound().await?.head_seq;
        self.wait_applied(head).await?;
        let cpu = cpu.finish();
        let mut end_to_end_ms = Vec::with_capacity(sent.len());
        for e in self.new_log().await? {
            let notice = e.direction == pb::Direction::Applied as i32 && e.peer == DEST && e.kind == "move_in_notice";
            if notice && let Some(at) = sent.remove(&e.person_key) {
                end_to_end_ms.push(e.at_ms as f64 - at);
            }
        }
        ensure!(sent.is_empty(), "{} notices have no APPLIED entry in the origin's log", sent.len());
        eprintln!(
            "   ldx latency at {per_sec}/s: issued {issued_rate:.0}/s, p50 {:.1} ms, p99 {:.1} ms; {cpu}",
            super::percentile(&end_to_end_ms, 50.0),
            super::percentile(&end_to_end_ms, 99.0)
        );
        Ok(Latency { target_rate: per_sec, issued_rate, count: total, end_to_end_ms, ack_ms, cpu })
    }
}

pub async fn run(config: &BenchConfig) -> anyhow::Result<LdxResults> {
    let mut bench = Bench::start(config).await?;
    let mut out = LdxResults::default();
    for _ in 0..config.reps {
        bench.live(config, &mut out).await?;
    }
    out.latency.push(bench.latency(config, config.rate).await?);
    if config.low_rate > 0 {
        out.latency.push(bench.latency(config, config.low_rate).await?);
    }
    for _ in 0..config.reps {
        bench.bulk(config, &mut out).await?;
    }
    let channel = bench.outbound().await?;
    out.envelope_bytes = channel.bytes_sent as f64 / channel.envelopes_sent.max(1) as f64;
    eprintln!("   ldx catch-up: queueing {} notices for the stopped origin", config.catchup);
    let (queue_rate, restart, drain, cpu) = bench.catch_up(config.catchup).await?;
    eprintln!(
        "   ldx catch-up: {} notices drained in {:.1} s after the restart ({:.2} s to serve); {cpu}",
        config.catchup,
        drain.as_secs_f64(),
        restart.as_secs_f64()
    );
    out.catchup = Some(Catchup { queued: config.catchup, queue_rate, drain, restart, cpu });
    if config.ledger_rows > 0 {
        let run = bench.ledger(config.ledger_rows).await?;
        eprintln!(
            "   ldx ledger import: {} rows in {:.1} s; CLI peak RSS {} MiB; node RSS {} → {} MiB",
            run.rows,
            run.elapsed.as_secs_f64(),
            run.cli_peak_kib / 1024,
            run.node_kib.0 / 1024,
            run.node_kib.1 / 1024
        );
        out.ledger = Some(run);
    }
    Ok(out)
}
