//! Fault injection between nodes: a TCP proxy in front of a node's peer port that a test
//! can tell to delay, drop every connection, or black-hole traffic (a partition) and heal
//! again. It relays bytes only, so the mutual-TLS session between the nodes runs through
//! it untouched: the directory pins certificate fingerprints and the dialer checks the
//! division's DNS name, never the address it dialled.
//!
//! A proxy sits in front of one node, so it cuts every channel *to* that node (notices
//! and their acks alike); the node's own channels run through its peers' proxies.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ldx_gateway::synthetic;
use ldx_proto::v1::{self as pb, Direction, LogEntry, registry_client::RegistryClient};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::{Cluster, wait_until};

/// What the proxy does to traffic right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Mode {
    /// Held before each chunk is passed on, in both directions.
    delay: Duration,
    /// Nothing passes: connections stay open, bytes wait in the kernel's buffers (the
    /// sender's window fills as in a real partition), new connections are accepted but
    /// not connected upstream. Healing lets everything flow again.
    black_hole: bool,
    /// Bumped to drop every open connection.
    epoch: u64,
}

/// Counters of one proxy.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub connections: AtomicU64,
    pub dropped: AtomicU64,
    pub bytes: AtomicU64,
}

/// What the accept loop and the test share; connection tasks see it weakly, so they end
/// once the proxy is dropped.
struct Shared {
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    stats: ProxyStats,
}

struct Inner {
    listen: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The accept loop holds the other strong reference: once it is gone, so is the mode
        // sender, and every connection task ends.
        self.accept.abort();
    }
}

/// A fault-injecting TCP relay from a loopback port to `upstream`. Cheap to clone: every
/// clone controls the same proxy, which runs until the last clone is dropped.
#[derive(Clone)]
pub struct FaultProxy(Arc<Inner>);

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("listen", &self.0.listen)
            .field("upstream", &self.0.shared.upstream)
            .field("mode", &*self.0.shared.mode.borrow())
            .finish()
    }
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and relays every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let listen = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::default());
        let shared = Arc::new(Shared { upstream, mode, stats: ProxyStats::default() });
        let accepting = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                let client = match listener.accept().await {
                    Ok((client, _)) => client,
                    // Out of descriptors or similar: try again shortly rather than spin.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                accepting.stats.connections.fetch_add(1, Ordering::Relaxed);
                let mode = accepting.mode.subscribe();
                tokio::spawn(relay(client, upstream, mode, Arc::downgrade(&accepting)));
            }
        });
        Ok(Self(Arc::new(Inner { listen, shared, accept })))
    }

    /// Where clients connect: the address to publish in the directory.
    pub fn addr(&self) -> SocketAddr {
        self.0.listen
    }

    pub fn upstream(&self) -> SocketAddr {
        self.0.shared.upstream
    }

    pub fn stats(&self) -> &ProxyStats {
        &self.0.shared.stats
    }

    /// Holds every chunk for `delay` before passing it on (zero: no delay).
    pub fn set_delay(&self, delay: Duration) {
        self.0.shared.mode.send_modify(|m| m.delay = delay);
    }

    /// Drops every open connection now (both ends see the socket close); new ones pass.
    pub fn drop_connections(&self) {
        self.0.shared.mode.send_modify(|m| m.epoch += 1);
    }

    /// Black-holes all traffic until [`heal`](Self::heal).
    pub fn partition(&self) {
        self.0.shared.mode.send_modify(|m| m.black_hole = true);
    }

    /// Ends a partition: held connections go on, new ones connect upstream.
    pub fn heal(&self) {
        self.0.shared.mode.send_modify(|m| m.black_hole = false);
    }

    /// Heals and clears the delay.
    pub fn clear(&self) {
        self.0.shared.mode.send_modify(|m| {
            m.black_hole = false;
            m.delay = Duration::ZERO;
        });
    }

    pub fn is_partitioned(&self) -> bool {
        self.0.shared.mode.borrow().black_hole
    }
}

/// The connection is to be dropped: the test said so, or the proxy is gone.
struct Dropped;

/// Waits until traffic may flow and returns the delay to apply.
async fn flowing(mode: &mut watch::Receiver<Mode>, epoch: u64) -> Result<Duration, Dropped> {
    loop {
        let now = *mode.borrow_and_update();
        if now.epoch != epoch {
            return Err(Dropped);
        }
        if !now.black_hole {
            return Ok(now.delay);
        }
        mode.changed().await.map_err(|_| Dropped)?;
    }
}

/// Runs `fut` unless the connection is dropped meanwhile.
async fn unless_dropped<T>(
    mode: &mut watch::Receiver<Mode>,
    epoch: u64,
    fut: impl Future<Output = T>,
) -> Result<T, Dropped> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return Ok(out),
            changed = mode.changed() => {
                if changed.is_err() || mode.borrow_and_update().epoch != epoch {
                    return Err(Dropped);
                }
            }
        }
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>, proxy: Weak<Shared>) {
    let epoch = mode.borrow().epoch;
    // In a partition a new connection gets no further than the accept.
    if flowing(&mut mode, epoch).await.is_err() {
        return;
    }
    let Ok(Ok(server)) = unless_dropped(&mut mode, epoch, TcpStream::connect(upstream)).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pipe(client_read, server_write, mode.clone(), epoch, proxy.clone());
    let down = pipe(server_read, client_write, mode, epoch, proxy.clone());
    // Each direction ends on its own (a closed side is passed on as a shutdown); a drop
    // ends both at once.
    let (up, down) = tokio::join!(up, down);
    if (up.is_err() || down.is_err())
        && let Some(inner) = proxy.upgrade()
    {
        inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Copies one direction chunk by chunk, obeying the mode before each chunk: a chunk read
/// as a partition starts waits for the heal, so no byte is lost or reordered.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    epoch: u64,
    proxy: Weak<Shared>,
) -> Result<(), Dropped> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        flowing(&mut mode, epoch).await?;
        let n = match unless_dropped(&mut mode, epoch, from.read(&mut buf)).await? {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return Ok(());
            }
            Ok(n) => n,
        };
        let delay = flowing(&mut mode, epoch).await?;
        if !delay.is_zero() {
            unless_dropped(&mut mode, epoch, tokio::time::sleep(delay)).await?;
            // A partition may have begun during the delay.
            flowing(&mut mode, epoch).await?;
        }
        if unless_dropped(&mut mode, epoch, to.write_all(&buf[..n])).await?.is_err() {
            return Ok(());
        }
        if let Some(inner) = proxy.upgrade() {
            inner.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// A small seeded generator (SplitMix64): the same seed gives the same fault schedule.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform duration in `lo..=hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Destinations of a fault run: 大学路街道 and 铭功路街道 (Zhengzhou, Erqi district).
pub const DESTINATIONS: [&str; 2] = ["410103007", "410103003"];
/// Origin counties of a fault run: 民权县 and 平舆县.
pub const ORIGINS: [&str; 2] = ["411421", "411723"];

/// Options of a fault run ([`run`]).
#[derive(Debug, Clone)]
pub struct FaultRun {
    /// Fault cycles; each SIGKILLs one node and restarts it, with a proxy fault around it.
    pub cycles: u32,
    pub seed: u64,
    /// One long partition of an origin, halfway through (zero: none).
    pub partition: Duration,
    /// Concurrent staff clients registering move-ins at each destination.
    pub clients: usize,
    /// Pause of each client between two move-ins.
    pub pause: Duration,
    /// The node and gateway binaries; `None`: the ones next to the running executable.
    pub binaries: Option<(PathBuf, PathBuf)>,
    /// Which nodes are killed, and whether their traffic is faulted too.
    pub kill: Kill,
}

/// The faults of a run's cycles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    /// Any node is SIGKILLed, and any node's traffic dropped, delayed or black-holed.
    Any,
    /// Only the destinations (the sources of the notices, where the clients write) are
    /// SIGKILLed, with no other fault: what a kill does to acknowledged writes.
    Sources,
}

impl Default for FaultRun {
    fn default() -> Self {
        Self {
            cycles: 3,
            seed: 1,
            partition: Duration::from_secs(2),
            clients: 2,
            pause: Duration::from_millis(10),
            binaries: None,
            kill: Kill::Any,
        }
    }
}

/// What a fault run did and what the invariant checker found.
#[derive(Debug, Clone, Default)]
pub struct FaultReport {
    pub seed: u64,
    pub cycles: u32,
    pub elapsed: Duration,
    pub kills: u32,
    pub drops: u32,
    pub delays: u32,
    pub partitions: u32,
    /// The long partition: which node, how long, and how many envelopes waited for it
    /// when it healed.
    pub long_partition: Option<(String, Duration, u64)>,
    pub proxied_connections: u64,
    pub registered: u64,
    pub retried: u64,
    /// SIGKILLs of a destination while one of its clients had a request on the wire.
    pub kills_mid_request: u32,
    /// Failed attempts by gRPC code, each retried until it succeeded.
    pub failures: BTreeMap<String, u64>,
    pub drain: Duration,
    pub channels: Vec<ChannelCheck>,
    pub persons: PersonCheck,
    /// Audit entries of every node, checked as a chain once the nodes stopped.
    pub audit_entries: u64,
    /// Nodes whose audit chain does not verify, with the first fault found.
    pub audit_broken: Vec<(String, String)>,
}

impl FaultReport {
    pub fn lost(&self) -> u64 {
        self.channels.iter().map(|c| c.lost).sum::<u64>()
            + self.persons.not_noticed
            + self.persons.not_answered
            + self.persons.acked_missing
    }

    pub fn duplicated(&self) -> u64 {
        self.channels.iter().map(|c| c.duplicated).sum::<u64>()
            + self.persons.noticed_twice
            + self.persons.answered_twice
    }

    pub fn out_of_order(&self) -> u64 {
        self.channels.iter().map(|c| c.out_of_order).sum()
    }

    /// Applied without a matching SENT entry, refused, or a sender's own log broken.
    pub fn other(&self) -> u64 {
        self.channels.iter().map(|c| c.not_sent + c.refused + c.sender_broken).sum::<u64>()
            + self.persons.unknown
            + self.persons.misrouted
            + self.persons.stored_unacked
            + self.audit_broken.len() as u64
    }

    pub fn is_clean(&self) -> bool {
        self.lost() == 0 && self.duplicated() == 0 && self.out_of_order() == 0 && self.other() == 0
    }
}

impl std::fmt::Display for FaultReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "fault run: seed {}, {} cycles in {:.1?}: {} SIGKILLs with restart, {} connection drops, {} delays, \
             {} short partitions, {} proxied connections",
            self.seed,
            self.cycles,
            self.elapsed,
            self.kills,
            self.drops,
            self.delays,
            self.partitions,
            self.proxied_connections
        )?;
        if let Some((node, length, queued)) = &self.long_partition {
            writeln!(
                f,
                "long partition: {node} black-holed for {length:.0?}, {queued} envelopes queued for it at the heal"
            )?;
        }
        writeln!(
            f,
            "traffic: {} move-ins registered at {} destinations ({} retried across kills, {} kills with a request on the \
             wire, failed attempts {:?}); every channel drained {:.1?} after the last fault",
            self.registered,
            DESTINATIONS.len(),
            self.retried,
            self.kills_mid_request,
            self.failures,
            self.drain
        )?;
        for c in &self.channels {
            writeln!(f, "  {c}")?;
        }
        writeln!(f, "  {}", self.persons)?;
        writeln!(f, "  audit: {} entries on every node's chain; broken {:?}", self.audit_entries, self.audit_broken)?;
        write!(
            f,
            "lost {}, duplicated {}, out of order {} (applied but not sent, refused or broken: {})",
            self.lost(),
            self.duplicated(),
            self.out_of_order(),
            self.other()
        )
    }
}

/// One channel as both ends logged it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelCheck {
    pub from: String,
    pub to: String,
    /// SENT entries at the sender.
    pub sent: u64,
    /// APPLIED entries at the receiver.
    pub applied: u64,
    /// Sent seqs the receiver never applied.
    pub lost: u64,
    /// Entries for a seq the receiver had applied already.
    pub duplicated: u64,
    /// Entries whose seq does not follow the highest applied before it.
    pub out_of_order: u64,
    /// Entries with no SENT entry of the same seq, kind and person.
    pub not_sent: u64,
    pub refused: u64,
    /// Sender log entries that are not seq 1..=N in log order.
    pub sender_broken: u64,
}

impl std::fmt::Display for ChannelCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {}: sent {}, applied {}; lost {}, duplicated {}, out of order {}, not sent {}, refused {}, sender log broken {}",
            self.from,
            self.to,
            self.sent,
            self.applied,
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.not_sent,
            self.refused,
            self.sender_broken
        )
    }
}

/// Checks channel `from -> to` from the sender's and the receiver's message logs: the
/// receiver must have consumed seq 1..=N of the sender's SENT entries exactly once, in
/// order, each with the kind and person that was sent, and refused none.
pub fn check_channel(from: &str, to: &str, from_log: &[LogEntry], to_log: &[LogEntry]) -> ChannelCheck {
    let mut check = ChannelCheck { from: from.to_owned(), to: to.to_owned(), ..Default::default() };
    let mut sent = BTreeMap::new();
    for e in from_log.iter().filter(|e| e.direction == Direction::Sent as i32 && e.peer == to) {
        check.sent += 1;
        if e.seq != check.sent || sent.insert(e.seq, (e.kind.as_str(), e.person_key.as_str())).is_some() {
            check.sender_broken += 1;
        }
    }
    let mut seen = BTreeSet::new();
    let mut highest = 0;
    for e in to_log.iter().filter(|e| e.peer == from) {
        if e.direction == Direction::Refused as i32 {
            check.refused += 1;
        } else if e.direction == Direction::Applied as i32 {
            check.applied += 1;
        } else {
            continue;
        }
        if !seen.insert(e.seq) {
            check.duplicated += 1;
            continue;
        }
        if e.seq != highest + 1 {
            check.out_of_order += 1;
        }
        highest = highest.max(e.seq);
        if sent.get(&e.seq) != Some(&(e.kind.as_str(), e.person_key.as_str())) {
            check.not_sent += 1;
        }
    }
    check.lost = sent.keys().filter(|seq| !seen.contains(seq)).count() as u64;
    check
}

/// Every person registered at a destination, end to end: her notice applied once at
/// her origin, the origin's feedback applied once back at the destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersonCheck {
    pub registered: u64,
    pub noticed: u64,
    pub answered: u64,
    pub not_noticed: u64,
    pub noticed_twice: u64,
    pub not_answered: u64,
    pub answered_twice: u64,
    /// Notices or feedback about persons no destination registered.
    pub unknown: u64,
    /// Notices applied at an origin that is not hers, or feedback from one.
    pub misrouted: u64,
    /// Move-ins a client was told succeeded that the destination does not hold.
    pub acked_missing: u64,
    /// Persons the destination holds that no client was told about.
    pub stored_unacked: u64,
}

impl std::fmt::Display for PersonCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "persons: {} acknowledged to clients, {} noticed at her own origin, {} answered with feedback; \
             acknowledged but not stored {}, stored but not acknowledged {}, not noticed {}, noticed twice {}, \
             not answered {}, answered twice {}, at another origin {}, unknown {}",
            self.registered,
            self.noticed,
            self.answered,
            self.acked_missing,
            self.stored_unacked,
            self.not_noticed,
            self.noticed_twice,
            self.not_answered,
            self.answered_twice,
            self.misrouted,
            self.unknown
        )
    }
}

/// `acked`: destination → hex person key → her origin, as the clients were told
/// (`RegisterMoveIn` succeeded); `stored`: destination → the person keys it holds;
/// `logs`: every node's message log. Each person is checked at her own origin only.
pub fn check_persons(
    acked: &BTreeMap<String, BTreeMap<String, String>>,
    stored: &BTreeMap<String, BTreeSet<String>>,
    logs: &BTreeMap<String, Vec<LogEntry>>,
) -> PersonCheck {
    let mut check = PersonCheck::default();
    let applied = |node: &str, kind: &str, peer: &str| -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for e in logs.get(node).into_iter().flatten() {
            if e.direction == Direction::Applied as i32 && e.kind == kind && e.peer == peer {
                *counts.entry(e.person_key.clone()).or_insert(0) += 1;
            }
        }
        counts
    };
    let none = BTreeSet::new();
    for (destination, persons) in acked {
        check.registered += persons.len() as u64;
        let held = stored.get(destination).unwrap_or(&none);
        check.acked_missing += persons.keys().filter(|p| !held.contains(*p)).count() as u64;
        check.stored_unacked += held.iter().filter(|p| !persons.contains_key(*p)).count() as u64;
        for origin in ORIGINS {
            let notices = applied(origin, "move_in_notice", destination);
            let feedback = applied(destination, "move_in_feedback", origin);
            for (counts, once, missing, twice) in [
                (&notices, &mut check.noticed, &mut check.not_noticed, &mut check.noticed_twice),
                (&feedback, &mut check.answered, &mut check.not_answered, &mut check.answered_twice),
            ] {
                for (person, _) in persons.iter().filter(|(_, o)| o.as_str() == origin) {
                    match counts.get(person).copied().unwrap_or(0) {
                        0 => *missing += 1,
                        1 => *once += 1,
                        _ => *twice += 1,
                    }
                }
                for person in counts.keys() {
                    match persons.get(person) {
                        None => check.unknown += 1,
                        Some(hers) if hers != origin => check.misrouted += 1,
                        Some(_) => {}
                    }
                }
            }
        }
    }
    for (destination, held) in stored {
        if !acked.contains_key(destination) {
            check.stored_unacked += held.len() as u64;
        }
    }
    check
}

/// How long the channels may take to drain once the faults stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

/// Move-ins registered by the load, and how many needed a retry.
#[derive(Debug, Default)]
struct Load {
    registered: AtomicU64,
    retried: AtomicU64,
    /// Person numbers handed out, per destination.
    next: [AtomicU64; DESTINATIONS.len()],
    /// Requests on the wire now, per destination.
    in_flight: [AtomicU64; DESTINATIONS.len()],
    /// Per destination: hex person key → origin, for every move-in a client was told
    /// succeeded.
    acked: std::sync::Mutex<BTreeMap<String, BTreeMap<String, String>>>,
    /// Failed attempts by gRPC code (retried while the node restarts).
    failures: std::sync::Mutex<BTreeMap<String, u64>>,
}

/// The `k`th move-in at destination `d`: numbers interleave so no person registers at
/// two destinations, and origins alternate.
fn load_request(d: usize, k: u64) -> pb::RegisterMoveInRequest {
    let n = u32::try_from(k * DESTINATIONS.len() as u64 + d as u64).expect("fewer than 4 billion move-ins");
    let origin = ORIGINS[(k % ORIGINS.len() as u64) as usize];
    let date = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("valid") + chrono::Days::new(u64::from(n % 300));
    synthetic::person(origin, n).move_in(DESTINATIONS[d], date, synthetic::category(n))
}

/// One staff client at destination `d`: registers move-ins until `stop`, each retried
/// until it succeeds across kills of its node (the same move-in again is idempotent).
async fn load_client(
    d: usize,
    mut endpoint: watch::Receiver<Option<String>>,
    token: String,
    load: Arc<Load>,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut client: Option<RegistryClient<ldx_node::staff::client::StaffChannel>> = None;
    while !stop.load(Ordering::Relaxed) {
        let request = load_request(d, load.next[d].fetch_add(1, Ordering::Relaxed));
        let give_up = Instant::now() + Duration::from_secs(120);
        let mut attempts = 0u32;
        loop {
            if client.is_none() {
                let url = endpoint.wait_for(Option::is_some).await?.clone().expect("some");
                match crate::staff::registry_at(&url, &token).await {
                    Ok(c) => client = Some(c),
                    // The address was read before the node died; its restart brings a new one.
                    Err(_) if Instant::now() < give_up => {
                        attempts += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    Err(e) => return Err(e).with_context(|| format!("connect {url}")),
                }
            }
            load.in_flight[d].fetch_add(1, Ordering::SeqCst);
            let answer = client.as_mut().expect("connected").register_move_in(request.clone()).await;
            load.in_flight[d].fetch_sub(1, Ordering::SeqCst);
            match answer {
                Ok(response) => {
                    let person = response.into_inner().person.context("RegisterMoveIn answered no person")?;
                    let mut acked = load.acked.lock().expect("not poisoned");
                    acked
                        .entry(DESTINATIONS[d].to_owned())
                        .or_default()
                        .insert(person.person_key, request.id_number[..6].to_owned());
                    break;
                }
                Err(status) if Instant::now() < give_up && crate::transient(&status) => {
                    *load.failures.lock().expect("not poisoned").entry(format!("{:?}", status.code())).or_insert(0) +=
                        1;
                    attempts += 1;
                    client = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(status) => {
                    bail!("RegisterMoveIn at {} failed after {attempts} retries: {status:?}", DESTINATIONS[d])
                }
            }
        }
        load.registered.fetch_add(1, Ordering::Relaxed);
        load.retried.fetch_add(u64::from(attempts > 0), Ordering::Relaxed);
        tokio::time::sleep(pause).await;
    }
    Ok(())
}

/// Whether every channel between running nodes is drained: nothing pending at the sender
/// and the receiver applied up to the sender's head.
async fn drained(cluster: &Cluster) -> bool {
    let mut statuses = BTreeMap::new();
    for node in cluster.nodes() {
        let Ok(status) = node.status().await else { return false };
        statuses.insert(node.division().to_owned(), status);
    }
    statuses.iter().all(|(division, status)| {
        status.outbound.iter().all(|out| {
            let applied = statuses
                .get(&out.peer)
                .and_then(|s| s.inbound.iter().find(|i| &i.peer == division))
                .map_or(0, |i| i.applied_seq);
            out.pending == 0 && applied == out.head_seq
        })
    })
}

/// Envelopes waiting at the senders for `peer`.
async fn pending_for(cluster: &Cluster, peer: &str) -> u64 {
    let mut pending = 0;
    for node in cluster.nodes() {
        if let Ok(status) = node.status().await {
            pending += status.outbound.iter().filter(|c| c.peer == peer).map(|c| c.pending).sum::<u64>();
        }
    }
    pending
}

/// Runs a federation of two destinations and two origins behind fault proxies, registers
/// move-ins continuously at the destinations while `cycles` seeded fault cycles SIGKILL
/// and restart nodes and drop, delay and black-hole their traffic (with one long partition
/// halfway), then lets every channel drain and checks every node's message log.
pub async fn run(opts: &FaultRun) -> anyhow::Result<FaultReport> {
    let started = Instant::now();
    let mut rng = Rng::new(opts.seed);
    let mut builder = Cluster::builder().nodes(DESTINATIONS.iter().chain(&ORIGINS).copied()).fault_proxies(true);
    if let Some((node, gateway)) = &opts.binaries {
        builder = builder.binaries(node, gateway);
    }
    let mut cluster = builder.start().await?;
    let all: Vec<String> = cluster.nodes().map(|n| n.division().to_owned()).collect();
    eprintln!(
        "fault run: seed {}, {} cycles; cluster of {} nodes behind fault proxies ready in {:.1?}",
        opts.seed,
        opts.cycles,
        all.len(),
        started.elapsed()
    );

    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for (d, destination) in DESTINATIONS.iter().enumerate() {
        for _ in 0..opts.clients {
            let endpoint = cluster.node(destination).endpoint_watch();
            let token = cluster.node(destination).token()?.to_owned();
            clients.push(tokio::spawn(load_client(d, endpoint, token, load.clone(), opts.pause, stop.clone())));
        }
    }

    let mut report = FaultReport { seed: opts.seed, cycles: opts.cycles, ..Default::default() };
    let faults = async {
        for cycle in 1..=opts.cycles {
            tokio::time::sleep(rng.millis(200, 1_500)).await;
            let target = rng.pick(&all).clone();
            let proxy = cluster.proxy(&target);
            let victim = match opts.kill {
                Kill::Any => rng.pick(&all).clone(),
                Kill::Sources => (*rng.pick(&DESTINATIONS)).to_owned(),
            };
            let fault = match if opts.kill == Kill::Any { rng.below(4) } else { 3 } {
                0 => {
                    proxy.drop_connections();
                    report.drops += 1;
                    "connections dropped".to_owned()
                }
                1 => {
                    let delay = rng.millis(5, 100);
                    proxy.set_delay(delay);
                    report.delays += 1;
                    format!("delayed {delay:?}")
                }
                2 => {
                    proxy.partition();
                    report.partitions += 1;
                    "partitioned".to_owned()
                }
                _ => "untouched".to_owned(),
            };
            let mid_request = DESTINATIONS
                .iter()
                .position(|d| *d == victim)
                .is_some_and(|d| load.in_flight[d].load(Ordering::SeqCst) > 0);
            cluster.node_mut(&victim).kill()?;
            report.kills += 1;
            report.kills_mid_request += u32::from(mid_request);
            let down = rng.millis(0, 1_000);
            tokio::time::sleep(down).await;
            cluster.node_mut(&victim).restart().await?;
            tokio::time::sleep(rng.millis(0, 1_000)).await;
            proxy.clear();
            eprintln!(
                "cycle {cycle}/{}: {target} {fault}; SIGKILL {victim}, down {down:?}; {} move-ins so far",
                opts.cycles,
                load.registered.load(Ordering::Relaxed)
            );
            if cycle == opts.cycles.div_ceil(2) && !opts.partition.is_zero() {
                let origin = (*rng.pick(&ORIGINS)).to_owned();
                let proxy = cluster.proxy(&origin);
                eprintln!("long partition: {origin} black-holed for {:?}", opts.partition);
                proxy.partition();
                let until = Instant::now() + opts.partition;
                while Instant::now() < until {
                    tokio::time::sleep(until.saturating_duration_since(Instant::now()).min(Duration::from_secs(30)))
                        .await;
                    eprintln!(
                        "  {:.0?} left; {} envelopes queued for {origin}",
                        until.saturating_duration_since(Instant::now()),
                        pending_for(&cluster, &origin).await
                    );
                }
                let queued = pending_for(&cluster, &origin).await;
                proxy.heal();
                eprintln!("long partition healed: {queued} envelopes queued for {origin}");
                report.long_partition = Some((origin, opts.partition, queued));
            }
        }
        anyhow::Ok(())
    };
    let faulted = faults.await;
    stop.store(true, Ordering::Relaxed);
    for (_, proxy) in cluster.proxies() {
        proxy.clear();
    }
    for client in clients {
        client.await??;
    }
    faulted.with_context(|| cluster.log_tails(30))?;
    report.registered = load.registered.load(Ordering::Relaxed);
    report.retried = load.retried.load(Ordering::Relaxed);
    report.proxied_connections = cluster.proxies().map(|(_, p)| p.stats().connections.load(Ordering::Relaxed)).sum();

    report.drain = wait_until(DRAIN_TIMEOUT, "every channel is drained", async || drained(&cluster).await)
        .await
        .with_context(|| cluster.log_tails(30))?;

    let mut logs = BTreeMap::new();
    for node in cluster.nodes() {
        logs.insert(node.division().to_owned(), node.log_entries().await?);
    }
    for from in &all {
        for to in &all {
            let check = check_channel(from, to, &logs[from], &logs[to]);
            if check.sent + check.applied + check.refused > 0 {
                report.channels.push(check);
            }
        }
    }
    let mut stored = BTreeMap::new();
    for destination in DESTINATIONS {
        let persons = cluster.node(destination).list_persons().await?;
        stored.insert(destination.to_owned(), persons.into_iter().map(|p| p.person_key).collect());
    }
    let acked = std::mem::take(&mut *load.acked.lock().expect("not poisoned"));
    report.failures = std::mem::take(&mut *load.failures.lock().expect("not poisoned"));
    report.persons = check_persons(&acked, &stored, &logs);
    for division in &all {
        let node = cluster.node_mut(division);
        node.stop().await?;
        let store = ldx_node::storage::Store::open(&node.data_dir(), division, false)?;
        match ldx_node::registry::verify_audit_chain(&store) {
            Ok(entries) => report.audit_entries += entries,
            Err(fault) => report.audit_broken.push((division.clone(), fault)),
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(direction: Direction, peer: &str, seq: u64, person: &str) -> LogEntry {
        LogEntry {
            direction: direction as i32,
            peer: peer.into(),
            seq,
            kind: "move_in_notice".into(),
            person_key: person.into(),
            ..Default::default()
        }
    }

    fn sent(seqs: &[u64]) -> Vec<LogEntry> {
        seqs.iter().map(|&s| entry(Direction::Sent, "B", s, &format!("p{s}"))).collect()
    }

    fn applied(seqs: &[u64]) -> Vec<LogEntry> {
        seqs.iter().map(|&s| entry(Direction::Applied, "A", s, &format!("p{s}"))).collect()
    }

    #[test]
    fn a_clean_channel_passes() {
        let check = check_channel("A", "B", &sent(&[1, 2, 3]), &applied(&[1, 2, 3]));
        assert_eq!((check.sent, check.applied), (3, 3));
        assert_eq!(
            (check.lost, check.duplicated, check.out_of_order, check.not_sent, check.refused, check.sender_broken),
            (0, 0, 0, 0, 0, 0)
        );
    }

    #[test]
    fn the_checker_counts_every_kind_of_violation() {
        let from = sent(&[1, 2, 3, 4, 5]);
        assert_eq!(check_channel("A", "B", &from, &applied(&[1, 2, 4])).lost, 2, "3 and 5 lost");
        assert_eq!(check_channel("A", "B", &from, &applied(&[1, 2, 2, 3, 4, 5])).duplicated, 1);
        let reordered = check_channel("A", "B", &from, &applied(&[1, 3, 2, 4, 5]));
        assert_eq!((reordered.out_of_order, reordered.lost, reordered.duplicated), (2, 0, 0));
        let mut forged = applied(&[1, 2, 3, 4, 5]);
        forged[2].person_key = "someone else".into();
        assert_eq!(check_channel("A", "B", &from, &forged).not_sent, 1);
        assert_eq!(check_channel("A", "B", &from, &applied(&[1, 2, 3, 4, 5, 6])).not_sent, 1, "never sent");
        let mut refused = applied(&[1, 2, 3, 4, 5]);
        refused[4].direction = Direction::Refused as i32;
        assert_eq!(check_channel("A", "B", &from, &refused).refused, 1);
        assert_eq!(check_channel("A", "B", &sent(&[1, 3, 4]), &applied(&[1, 3, 4])).sender_broken, 2);
        // Entries of other peers and channels do not count.
        let mut other = applied(&[1, 2, 3, 4, 5]);
        other.push(entry(Direction::Applied, "C", 1, "p1"));
        assert_eq!(check_channel("A", "B", &from, &other), check_channel("A", "B", &from, &applied(&[1, 2, 3, 4, 5])));
    }

    #[test]
    fn the_person_check_finds_missing_and_repeated_notices() {
        let (d, o, other) = (DESTINATIONS[0], ORIGINS[0], ORIGINS[1]);
        let notice = |peer: &str, kind: &str, person: &str| LogEntry {
            direction: Direction::Applied as i32,
            peer: peer.into(),
            kind: kind.into(),
            person_key: person.into(),
            ..Default::default()
        };
        let logs = BTreeMap::from([
            (
                o.to_owned(),
                vec![
                    notice(d, "move_in_notice", "a"),
                    notice(d, "move_in_notice", "b"),
                    notice(d, "move_in_notice", "b"),
                    notice(d, "move_in_notice", "x"),
                ],
            ),
            // Her notice at the other origin: once at each origin is not once at hers.
            (other.to_owned(), vec![notice(d, "move_in_notice", "a")]),
            (d.to_owned(), vec![notice(o, "move_in_feedback", "a"), notice(o, "move_in_feedback", "b")]),
        ]);
        let hers = |p: &str| (p.to_owned(), o.to_owned());
        let acked = BTreeMap::from([(d.to_owned(), BTreeMap::from([hers("a"), hers("b"), hers("c"), hers("lost")]))]);
        let stored =
            BTreeMap::from([(d.to_owned(), BTreeSet::from(["a".to_owned(), "b".into(), "c".into(), "stray".into()]))]);
        let check = check_persons(&acked, &stored, &logs);
        assert_eq!((check.registered, check.noticed, check.noticed_twice, check.not_noticed), (4, 1, 1, 2));
        assert_eq!((check.answered, check.not_answered, check.unknown, check.misrouted), (2, 2, 1, 1));
        assert_eq!((check.acked_missing, check.stored_unacked), (1, 1));
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let draws: Vec<_> = (0..100).map(|_| a.below(10)).collect();
        assert_eq!(draws, (0..100).map(|_| b.below(10)).collect::<Vec<_>>());
        assert!(draws.iter().any(|&d| d != draws[0]), "{draws:?}");
        assert_ne!(Rng::new(8).next_u64(), Rng::new(7).next_u64());
    }

    /// An echo server on loopback port 0.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(message).await?;
        let mut buf = vec![0u8; message.len()];
        stream.read_exact(&mut buf).await?;
        Ok(buf)
    }

    const PATIENCE: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn the_proxy_relays_delays_partitions_heals_and_drops() {
        let proxy = FaultProxy::start(echo().await).await.unwrap();
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"hello").await.unwrap(), b"hello");

        proxy.set_delay(Duration::from_millis(50));
        let t = Instant::now();
        assert_eq!(round_trip(&mut stream, b"slow").await.unwrap(), b"slow");
        assert!(t.elapsed() >= Duration::from_millis(100), "two delayed hops took only {:?}", t.elapsed());
        proxy.set_delay(Duration::ZERO);

        proxy.partition();
        assert!(proxy.is_partitioned());
        let held = tokio::time::timeout(PATIENCE, round_trip(&mut stream, b"held")).await;
        assert!(held.is_err(), "bytes crossed a partition");
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(
            tokio::time::timeout(PATIENCE, round_trip(&mut fresh, b"new")).await.is_err(),
            "a new connection crossed"
        );
        proxy.heal();
        // What waited during the partition arrives, in order, on both connections.
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"held");
        let mut buf = [0u8; 3];
        fresh.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"new");

        proxy.drop_connections();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.expect("dropped promptly");
        assert!(matches!(read, Ok(0) | Err(_)), "the connection survived the drop: {read:?}");
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut again, b"after").await.unwrap(), b"after", "new connections pass after a drop");
        assert!(proxy.stats().connections.load(Ordering::Relaxed) >= 3);
        assert!(proxy.stats().dropped.load(Ordering::Relaxed) >= 1);
    }
}
