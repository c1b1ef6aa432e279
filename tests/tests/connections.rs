//! Idle and half-open connections. 300 idle connections per listener used to stay open for
//! good, and 1,100 half-open TLS connections at an fd limit of 1024 made the staff API time
//! out while the `/metrics` loop spun on `accept` errors. Now every listener keeps at most
//! 64 connections per client address (512 in all), closes the oldest one that has not
//! started talking when a new one needs room, closes a connection that sends nothing for
//! 10 s, and backs off on accept errors.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ldx_tests::cluster::{Cluster, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NODE: &str = "410103007";
const IDLE_PER_LISTENER: usize = 2_000;

/// Raises this test process's open-files limit: it holds thousands of client sockets.
fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum }).unwrap();
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    assert!(now >= 8 * IDLE_PER_LISTENER as u64, "hard open-files limit {now} too low for this test");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// `count` connections to `addr`; every tenth sends a few bytes and stops (half-sent).
async fn flood(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(count);
    for n in 0..count {
        match TcpStream::connect(addr).await {
            Ok(mut s) => {
                if n % 10 == 0 {
                    let _ = s.write_all(b"PRI * HTTP/2").await;
                }
                out.push(s);
            }
            // The listener's backlog may overflow for a moment; that is the point.
            Err(_) => continue,
        }
    }
    out
}

/// Whether the other end closed `socket`: reads (past any greeting it sent) end in end of
/// file or a reset; an open connection would keep the read waiting.
async fn closed_by_peer(socket: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_millis(100), socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_per_listener_leave_the_staff_api_answering() {
    raise_fd_limit();
    let cluster = Cluster::builder().nodes([NODE]).node_metrics(true).start().await.unwrap();
    let node = cluster.node(NODE);
    let pid = node.pid().unwrap();
    let baseline = open_fds(pid);
    let staff: SocketAddr = node.endpoint().unwrap().trim_start_matches("http://").parse().unwrap();
    let listeners = [("staff", staff), ("peer", node.peer_addr().unwrap()), ("metrics", node.metrics_addr().unwrap())];

    let mut held = Vec::new();
    for (name, addr) in listeners {
        let started = Instant::now();
        let sockets = flood(addr, IDLE_PER_LISTENER).await;
        println!("{name}: {} connections opened in {:.2?}", sockets.len(), started.elapsed());
        held.extend(sockets);
    }

    // A real client still gets answers, each within a second.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let mut monitor = tokio::time::timeout(Duration::from_secs(1), node.monitor()).await.unwrap().unwrap();
        let status = tokio::time::timeout(Duration::from_secs(1), monitor.status(ldx_proto::v1::StatusRequest {}))
            .await
            .expect("the staff API answers within 1 s")
            .unwrap();
        assert_eq!(status.into_inner().division, NODE);
        slowest = slowest.max(started.elapsed());
    }
    let during = open_fds(pid);
    println!("staff API answered 5 times, slowest {slowest:.2?}; node fds: {baseline} before, {during} during");
    // At most 64 per client address on each listener (16 on /metrics), and a few in flight.
    assert!(during <= baseline + 64 + 64 + 16 + 32, "the node holds {during} fds (baseline {baseline})");

    // Nobody talks: the node closes them all within the start deadline (10 s).
    let waited = wait_until(Duration::from_secs(30), "the node closed the idle connections", async || {
        open_fds(pid) <= baseline + 16
    })
    .await
    .unwrap();
    println!("idle connections closed by the node within {waited:.2?}");
    let (mut closed, mut sampled) = (0, 0);
    for s in held.iter_mut().step_by(30) {
        sampled += 1;
        if closed_by_peer(s).await {
            closed += 1;
        }
    }
    assert_eq!(closed, sampled, "of {sampled} sampled client sockets, the node closed {closed}");
    assert!(node.is_running());
}
