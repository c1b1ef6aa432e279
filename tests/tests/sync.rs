//! Sync between real node processes: every flow across five nodes, exactly-once in-order
//! delivery when the receiver or the sender is killed mid-stream, a stopped node catching
//! up, and nodes syncing on their cached directory while the gateway is down.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use chrono::NaiveDate;
use ldx_gateway::synthetic;
use ldx_proto::v1 as pb;
use ldx_tests::cluster::{Cluster, ClusterBuilder, ClusterNode, wait_until};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const NODE: &str = env!("CARGO_BIN_EXE_ldx-node-harness");
const GATEWAY: &str = env!("CARGO_BIN_EXE_ldx-gateway-harness");

/// Zhengzhou, Erqi district: 大学路街道, 铭功路街道, 建中街街道 (destinations).
const DAXUELU: &str = "410103007";
const MINGGONGLU: &str = "410103003";
const JIANZHONGJIE: &str = "410103008";
/// 民权县 and 平舆县 (origin counties).
const MINQUAN: &str = "411421";
const PINGYU: &str = "411723";

const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

fn cluster(divisions: &[&str]) -> ClusterBuilder {
    Cluster::builder().binaries(NODE, GATEWAY).nodes(divisions.iter().copied())
}

fn date(n: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + chrono::Days::new(u64::from(n % 300))
}

/// The `n`th synthetic woman from `origin` moving in at `division`.
fn move_in(division: &str, origin: &str, n: u32) -> pb::RegisterMoveInRequest {
    synthetic::person(origin, n).move_in(division, date(n), synthetic::category(n))
}

fn outbound(status: &pb::StatusResponse, peer: &str) -> pb::OutboundChannel {
    status.outbound.iter().find(|c| c.peer == peer).cloned().unwrap_or_default()
}

fn inbound(status: &pb::StatusResponse, peer: &str) -> pb::InboundChannel {
    status.inbound.iter().find(|c| c.peer == peer).cloned().unwrap_or_default()
}

/// Seq the node has applied on the channel from `peer` (0 when unreachable).
async fn applied(node: &ClusterNode, peer: &str) -> u64 {
    node.status().await.map_or(0, |s| inbound(&s, peer).applied_seq)
}

/// Whether `from` has sent `count` envelopes to `to`, `to` acked them all and applied them.
async fn drained(from: &ClusterNode, to: &ClusterNode, count: u64) -> bool {
    let (Ok(sent), Ok(received)) = (from.status().await, to.status().await) else { return false };
    let out = outbound(&sent, to.division());
    out.head_seq == count && out.pending == 0 && inbound(&received, from.division()).applied_seq == count
}

fn direction(d: i32) -> &'static str {
    match pb::Direction::try_from(d) {
        Ok(pb::Direction::Sent) => "sent",
        Ok(pb::Direction::Applied) => "applied",
        Ok(pb::Direction::Refused) => "refused",
        _ => "unknown",
    }
}

fn show(entries: &[&pb::LogEntry]) -> String {
    entries
        .iter()
        .map(|e| {
            format!(
                "{} {} {} to={} seq={} {} {} {}",
                e.index,
                direction(e.direction),
                e.peer,
                e.to,
                e.seq,
                e.kind,
                e.person_key,
                e.reason
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The node's log entries about one person.
async fn person_log(node: &ClusterNode, person_key: &str) -> anyhow::Result<Vec<pb::LogEntry>> {
    Ok(node.log_entries().await?.into_iter().filter(|e| e.person_key == person_key).collect())
}

/// Asserts that `log` (one person's) holds an entry `direction` `kind` with `peer`.
fn assert_logged(log: &[pb::LogEntry], who: &str, dir: pb::Direction, peer: &str, kind: &str) {
    let found = log.iter().any(|e| e.direction == dir as i32 && e.peer == peer && e.kind == kind);
    assert!(
        found,
        "{who}: no {} {kind} with peer {peer} in\n{}",
        direction(dir as i32),
        show(&log.iter().collect::<Vec<_>>())
    );
}

/// Polls `node` for the person until `done` holds; returns her record and the time waited.
async fn wait_person(
    node: &ClusterNode,
    id_number: &str,
    what: &str,
    done: impl Fn(&pb::Person) -> bool,
) -> anyhow::Result<(pb::Person, Duration)> {
    let mut last = None;
    let what = format!("{what} at {}", node.division());
    let waited = wait_until(SYNC_TIMEOUT, &what, async || {
        last = node.person(id_number).await.ok().flatten();
        last.as_ref().is_some_and(&done)
    })
    .await
    .with_context(|| format!("last seen: {last:#?}\nlog:\n{}", node.log_tail(20)))?;
    Ok((last.expect("seen"), waited))
}

fn sync(p: &pb::Person) -> pb::SyncState {
    p.sync.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn five_nodes_run_every_flow() -> anyhow::Result<()> {
    let started = Instant::now();
    let cluster = cluster(&[DAXUELU, MINGGONGLU, JIANZHONGJIE, MINQUAN, PINGYU]).start().await?;
    eprintln!(
        "five nodes and the gateway ready in {:.2?}, directory version {}",
        started.elapsed(),
        cluster.directory_version()
    );
    let daxuelu = cluster.node(DAXUELU);
    let minggonglu = cluster.node(MINGGONGLU);
    let jianzhongjie = cluster.node(JIANZHONGJIE);
    let minquan = cluster.node(MINQUAN);
    let pingyu = cluster.node(PINGYU);

    // 1. Move-in at a residence → notice to her origin county → feedback back.
    let alice = synthetic::person(MINQUAN, 1);
    let req = alice.move_in(DAXUELU, NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(), pb::Category::MixedCommunity);
    let t = Instant::now();
    let resp = daxuelu.registry().await?.register_move_in(req.clone()).await?.into_inner();
    assert!(resp.created);
    let registered = resp.person.context("person")?;
    let key = registered.person_key.clone();
    assert_eq!(registered.role, pb::Role::Residence as i32);
    assert_eq!(sync(&registered).feedback, "awaiting");
    assert!(!sync(&registered).feedback_due.is_empty());
    let (at_destination, _) =
        wait_person(daxuelu, &alice.id_number, "feedback received", |p| sync(p).feedback == "received").await?;
    eprintln!("move-in notice → feedback round trip {DAXUELU} ⇄ {MINQUAN}: {:.0?}", t.elapsed());
    assert_eq!(at_destination.status, pb::PersonStatus::Active as i32);
    assert_eq!(sync(&at_destination).certificate, pb::CertificateStatus::None as i32);
    let at_origin = minquan.person(&alice.id_number).await?.context("no origin record")?;
    assert_eq!((at_origin.role, at_origin.category), (pb::Role::Origin as i32, pb::Category::OutMigrant as i32));
    assert_eq!(at_origin.status, pb::PersonStatus::Active as i32);
    assert_eq!((at_origin.division.as_str(), at_origin.origin_division.as_str()), (MINQUAN, MINQUAN));
    assert_eq!((at_origin.name.as_str(), at_origin.address.as_str()), (alice.name.as_str(), req.address.as_str()));
    assert_eq!(at_origin.person_key, key);
    assert_eq!(
        (sync(&at_origin).notified_by.as_str(), sync(&at_origin).notified_division.as_str()),
        (DAXUELU, DAXUELU)
    );
    let log = person_log(daxuelu, &key).await?;
    assert_logged(&log, DAXUELU, pb::Direction::Sent, MINQUAN, "move_in_notice");
    assert_logged(&log, DAXUELU, pb::Direction::Applied, MINQUAN, "move_in_feedback");
    let log = person_log(minquan, &key).await?;
    assert_logged(&log, MINQUAN, pb::Direction::Applied, DAXUELU, "move_in_notice");
    assert_logged(&log, MINQUAN, pb::Direction::Sent, DAXUELU, "move_in_feedback");

    // 2. Move-out with the next division known → notices to her origin and to the next node.
    let t = Instant::now();
    let moved = daxuelu
        .registry()
        .await?
        .register_move_out(pb::RegisterMoveOutRequest {
            id_number: alice.id_number.clone(),
            date: "2026-10-31".into(),
            next_division: MINGGONGLU.into(),
        })
        .await?
        .into_inner()
        .person
        .context("person")?;
    assert_eq!(moved.status, pb::PersonStatus::MovedOut as i32);
    assert_eq!((moved.move_out_date.as_str(), moved.next_division.as_str()), ("2026-10-31", MINGGONGLU));
    let (at_origin, _) =
        wait_person(minquan, &alice.id_number, "move-out applied", |p| sync(p).notified_by.is_empty()).await?;
    eprintln!("move-out notice {DAXUELU} → {MINQUAN}: {:.0?}", t.elapsed());
    assert_eq!(at_origin.next_division, MINGGONGLU);
    assert!(sync(&at_origin).notified_division.is_empty());
    assert_eq!(at_origin.role, pb::Role::Origin as i32);
    wait_until(SYNC_TIMEOUT, "the next node applied the move-out notice", async || {
        person_log(minggonglu, &key).await.is_ok_and(|log| {
            log.iter().any(|e| e.direction == pb::Direction::Applied as i32 && e.kind == "move_out_notice")
        })
    })
    .await?;
    let log = person_log(minggonglu, &key).await?;
    assert_logged(&log, MINGGONGLU, pb::Direction::Applied, DAXUELU, "move_out_notice");
    assert!(log.iter().all(|e| e.to == MINGGONGLU), "{log:?}");
    assert!(minggonglu.person(&alice.id_number).await?.is_none(), "a heads-up stores nothing until she registers");
    let log = person_log(daxuelu, &key).await?;
    assert_logged(&log, DAXUELU, pb::Direction::Sent, MINQUAN, "move_out_notice");
    assert_logged(&log, DAXUELU, pb::Direction::Sent, MINGGONGLU, "move_out_notice");
    let log = person_log(minquan, &key).await?;
    assert_logged(&log, MINQUAN, pb::Direction::Applied, DAXUELU, "move_out_notice");

    // 3. Transfer: she works at 铭功路 (with a health check there) and lives at 建中街; her
    // employer's node hands the archive over to her residence.
    let bea = synthetic::person(PINGYU, 2);
    let work = bea.move_in(MINGGONGLU, NaiveDate::from_ymd_opt(2026, 2, 1).unwrap(), pb::Category::Organisation);
    assert_eq!(work.role, pb::Role::Workplace as i32);
    let resp = minggonglu.registry().await?.register_move_in(work).await?.into_inner();
    assert!(resp.created);
    let bea_key = resp.person.context("person")?.person_key;
    let details = "季度健康检查（从业地）";
    minggonglu
        .registry()
        .await?
        .record_service(pb::RecordServiceRequest {
            id_number: bea.id_number.clone(),
            kind: pb::ServiceKind::HealthCheck as i32,
            date: "2026-04-10".into(),
            details: details.into(),
        })
        .await?;
    wait_person(minggonglu, &bea.id_number, "workplace feedback received", |p| sync(p).feedback == "received").await?;
    let home = bea.move_in(JIANZHONGJIE, NaiveDate::from_ymd_opt(2026, 2, 15).unwrap(), pb::Category::ClosedCommunity);
    assert_eq!(home.role, pb::Role::Residence as i32);
    assert!(jianzhongjie.registry().await?.register_move_in(home).await?.into_inner().created);
    wait_person(jianzhongjie, &bea.id_number, "residence feedback received", |p| sync(p).feedback == "received")
        .await?;
    let at_origin = pingyu.person(&bea.id_number).await?.context("no origin record")?;
    assert_eq!(
        (sync(&at_origin).notified_by.as_str(), sync(&at_origin).notified_division.as_str()),
        (JIANZHONGJIE, JIANZHONGJIE),
        "the last move-in notice names her residence"
    );

    let t = Instant::now();
    let requested = minggonglu
        .registry()
        .await?
        .transfer_archive(pb::TransferArchiveRequest {
            id_number: bea.id_number.clone(),
            residence_division: JIANZHONGJIE.into(),
            separation_date: "2026-09-30".into(),
        })
        .await?
        .into_inner()
        .person
        .context("person")?;
    assert_eq!(
        (sync(&requested).transfer.as_str(), sync(&requested).transfer_peer.as_str()),
        ("requested", JIANZHONGJIE)
    );
    let (workplace, _) =
        wait_person(minggonglu, &bea.id_number, "transfer accepted", |p| sync(p).transfer == "accepted").await?;
    eprintln!("transfer request → accept round trip {MINGGONGLU} ⇄ {JIANZHONGJIE}: {:.0?}", t.elapsed());
    assert_eq!(workplace.role, pb::Role::Workplace as i32);
    assert_eq!(workplace.status, pb::PersonStatus::MovedOut as i32);
    assert_eq!(sync(&workplace).transfer_peer, JIANZHONGJIE);
    assert_eq!((workplace.move_out_date.as_str(), workplace.next_division.as_str()), ("2026-09-30", JIANZHONGJIE));
    let residence = jianzhongjie.person(&bea.id_number).await?.context("no residence record")?;
    assert_eq!((residence.role, residence.status), (pb::Role::Residence as i32, pb::PersonStatus::Active as i32));
    assert_eq!((sync(&residence).transfer.as_str(), sync(&residence).transfer_peer.as_str()), ("received", MINGGONGLU));
    assert_eq!(
        residence.services,
        vec![pb::Service {
            kind: pb::ServiceKind::HealthCheck as i32,
            date: "2026-04-10".into(),
            details: details.into()
        }],
        "the workplace's services are merged into the residence archive"
    );
    let log = person_log(minggonglu, &bea_key).await?;
    assert_logged(&log, MINGGONGLU, pb::Direction::Sent, JIANZHONGJIE, "transfer_request");
    assert_logged(&log, MINGGONGLU, pb::Direction::Applied, JIANZHONGJIE, "transfer_accept");
    let log = person_log(jianzhongjie, &bea_key).await?;
    assert_logged(&log, JIANZHONGJIE, pb::Direction::Applied, MINGGONGLU, "transfer_request");
    assert_logged(&log, JIANZHONGJIE, pb::Direction::Sent, MINGGONGLU, "transfer_accept");

    // 4. Certificate: her residence asks her origin to issue one.
    let t = Instant::now();
    jianzhongjie
        .registry()
        .await?
        .query_certificate(pb::QueryCertificateRequest { id_number: bea.id_number.clone(), issue: true })
        .await?;
    let (residence, _) = wait_person(jianzhongjie, &bea.id_number, "certificate answered", |p| {
        sync(p).certificate == pb::CertificateStatus::Valid as i32
    })
    .await?;
    eprintln!("certificate query → answer round trip {JIANZHONGJIE} ⇄ {PINGYU}: {:.0?}", t.elapsed());
    let number = sync(&residence).certificate_number;
    assert!(number.starts_with(&format!("{PINGYU}-")), "{number}");
    assert!(!sync(&residence).certificate_valid_until.is_empty());
    let at_origin = pingyu.person(&bea.id_number).await?.context("no origin record")?;
    assert_eq!(sync(&at_origin).certificate, pb::CertificateStatus::Valid as i32);
    assert_eq!(sync(&at_origin).certificate_number, number);
    assert_eq!(sync(&at_origin).certificate_valid_until, sync(&residence).certificate_valid_until);
    let log = person_log(jianzhongjie, &bea_key).await?;
    assert_logged(&log, JIANZHONGJIE, pb::Direction::Sent, PINGYU, "certificate_query");
    assert_logged(&log, JIANZHONGJIE, pb::Direction::Applied, PINGYU, "certificate_answer");
    let log = person_log(pingyu, &bea_key).await?;
    assert_logged(&log, PINGYU, pb::Direction::Applied, JIANZHONGJIE, "certificate_query");
    assert_logged(&log, PINGYU, pb::Direction::Sent, JIANZHONGJIE, "certificate_answer");

    // Her former workplace is no longer the node that notified her: its query is refused.
    minggonglu
        .registry()
        .await?
        .query_certificate(pb::QueryCertificateRequest { id_number: bea.id_number.clone(), issue: true })
        .await?;
    wait_until(SYNC_TIMEOUT, "the origin refused the former workplace's query", async || {
        pingyu.status().await.is_ok_and(|s| inbound(&s, MINGGONGLU).refused == 1)
    })
    .await?;
    let log = person_log(pingyu, &bea_key).await?;
    let refused: Vec<_> = log.iter().filter(|e| e.direction == pb::Direction::Refused as i32).collect();
    assert_eq!(refused.len(), 1, "{}", show(&refused));
    assert_eq!((refused[0].peer.as_str(), refused[0].kind.as_str()), (MINGGONGLU, "certificate_query"));
    assert!(refused[0].reason.contains("not the node that notified"), "{}", refused[0].reason);
    let workplace = minggonglu.person(&bea.id_number).await?.context("workplace record")?;
    assert_eq!(sync(&workplace).certificate, pb::CertificateStatus::None as i32, "no answer to a refused query");

    // Every channel is drained and nothing else was refused.
    wait_until(SYNC_TIMEOUT, "every channel is drained", async || {
        for node in cluster.nodes() {
            match node.status().await {
                Ok(s) if s.outbound.iter().all(|c| c.pending == 0) => {}
                _ => return false,
            }
        }
        true
    })
    .await?;
    for node in cluster.nodes() {
        let s = node.status().await?;
        for c in &s.outbound {
            eprintln!(
                "  {} → {}: head {} acked {} sent {} envelopes ({} B)",
                s.division, c.peer, c.head_seq, c.acked_seq, c.envelopes_sent, c.bytes_sent
            );
        }
        let refused: u64 = s.inbound.iter().map(|c| c.refused).sum();
        assert_eq!(refused, u64::from(s.division == PINGYU), "{}: {:?}", s.division, s.inbound);
    }
    eprintln!("every flow done in {:.2?}", started.elapsed());
    Ok(())
}

/// What a load of registrations did.
#[derive(Debug, Default, Clone, Copy)]
struct Load {
    /// Answered `created`.
    created: u64,
    /// Answered as already registered: a retry of a request the node had made durable
    /// before it died.
    repeated: u64,
    /// Requests sent more than once because the node went away.
    retried: u64,
    elapsed: Duration,
}

/// Registers `requests` at the node behind `endpoint` from `clients` concurrent clients,
/// each on its own connection. With `retry`, a request that fails because the node went
/// away is sent again once it is back (the same move-in again is idempotent).
fn spawn_load(
    node: &ldx_tests::cluster::ClusterNode,
    requests: Vec<pb::RegisterMoveInRequest>,
    clients: usize,
    retry: bool,
) -> JoinHandle<anyhow::Result<Load>> {
    let mut shares = vec![Vec::new(); clients];
    for (i, req) in requests.into_iter().enumerate() {
        shares[i % clients].push(req);
    }
    let started = Instant::now();
    let endpoint = node.endpoint_watch();
    let token = node.token().expect("started").to_owned();
    let workers: Vec<_> = shares
        .into_iter()
        .map(|share| tokio::spawn(load_worker(endpoint.clone(), token.clone(), share, retry)))
        .collect();
    tokio::spawn(async move {
        let mut total = Load::default();
        for worker in workers {
            let load = worker.await??;
            total.created += load.created;
            total.repeated += load.repeated;
            total.retried += load.retried;
        }
        total.elapsed = started.elapsed();
        Ok(total)
    })
}

async fn load_worker(
    mut endpoint: watch::Receiver<Option<String>>,
    token: String,
    requests: Vec<pb::RegisterMoveInRequest>,
    retry: bool,
) -> anyhow::Result<Load> {
    let mut load = Load::default();
    let mut client = None;
    for req in requests {
        let mut attempts = 0u32;
        loop {
            if client.is_none() {
                let url = endpoint.wait_for(Option::is_some).await?.clone().expect("some");
                match ldx_tests::staff::registry_at(&url, &token).await {
                    Ok(c) => client = Some(c),
                    // Its address file was read before it died; the restart brings a new one.
                    Err(_) if retry && attempts < 2_000 => {
                        attempts += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    Err(e) => return Err(e).with_context(|| format!("connect {url}")),
                }
            }
            let answer = client.as_mut().expect("connected").register_move_in(req.clone()).await;
            match answer {
                Ok(resp) => {
                    if resp.into_inner().created {
                        load.created += 1;
                    } else {
                        load.repeated += 1;
                    }
                    load.retried += u64::from(attempts > 0);
                    break;
                }
                Err(status) if retry && attempts < 2_000 && ldx_tests::transient(&status) => {
                    attempts += 1;
                    client = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(status) => bail!("RegisterMoveIn failed after {attempts} retries: {status:?}"),
            }
        }
    }
    Ok(load)
}

/// Checks one channel end to end from both logs: the sender's SENT entries and the
/// receiver's APPLIED entries are each seq 1..=N exactly once in log order, none refused,
/// the same kind and person at every seq. Returns N and the persons the channel carried.
fn check_channel(
    from_log: &[pb::LogEntry],
    to_log: &[pb::LogEntry],
    from: &str,
    to: &str,
) -> anyhow::Result<(u64, BTreeMap<String, u64>)> {
    let in_order = |entries: &[&pb::LogEntry], side: &str| -> anyhow::Result<()> {
        ensure!(entries.windows(2).all(|w| w[0].index < w[1].index), "{side}: log indexes out of order");
        for (i, e) in entries.iter().enumerate() {
            let expected = i as u64 + 1;
            ensure!(
                e.seq == expected,
                "{side}: entry {} (log index {}) has seq {}, expected {expected}: a gap, a duplicate or a reordering\n{}",
                i + 1,
                e.index,
                e.seq,
                show(&entries[i.saturating_sub(3)..(i + 3).min(entries.len())])
            );
        }
        Ok(())
    };
    let sent: Vec<_> = from_log.iter().filter(|e| e.direction == pb::Direction::Sent as i32 && e.peer == to).collect();
    in_order(&sent, &format!("{from} sent to {to}"))?;
    let refused: Vec<_> =
        to_log.iter().filter(|e| e.direction == pb::Direction::Refused as i32 && e.peer == from).collect();
    ensure!(refused.is_empty(), "{to} refused envelopes of {from}:\n{}", show(&refused));
    let applied: Vec<_> =
        to_log.iter().filter(|e| e.direction == pb::Direction::Applied as i32 && e.peer == from).collect();
    in_order(&applied, &format!("{to} applied from {from}"))?;
    ensure!(
        sent.len() == applied.len(),
        "{from} sent {} envelopes to {to}, which applied {}",
        sent.len(),
        applied.len()
    );
    let mut persons = BTreeMap::new();
    for (s, a) in sent.iter().zip(&applied) {
        ensure!(
            (s.kind.as_str(), s.person_key.as_str()) == (a.kind.as_str(), a.person_key.as_str()),
            "seq {}: sent {} for {}, applied {} for {}",
            s.seq,
            s.kind,
            s.person_key,
            a.kind,
            a.person_key
        );
        ensure!(a.to == to, "seq {}: applied on channel to {}", a.seq, a.to);
        *persons.entry(a.person_key.clone()).or_insert(0) += 1;
    }
    Ok((applied.len() as u64, persons))
}

/// 10,000 move-ins at 大学路 for women from 民权县, the victim SIGKILLed when 民权县 has
/// applied about 3,000 notices, then restarted; every notice and every feedback must be
/// applied exactly once, in order.
async fn kill_mid_stream(victim: &str) -> anyhow::Result<()> {
    const N: u32 = 10_000;
    const KILL_AT: u64 = 3_000;
    let (sender, receiver) = (DAXUELU, MINQUAN);
    let mut cluster = cluster(&[sender, receiver]).start().await?;
    let requests: Vec<_> = (0..N).map(|n| move_in(sender, MINQUAN, n)).collect();
    let load = spawn_load(cluster.node(sender), requests, 16, victim == sender);

    let waited = {
        let node = cluster.node(receiver);
        wait_until(Duration::from_secs(120), "the receiver applied 3,000 notices", async || {
            applied(node, sender).await >= KILL_AT
        })
        .await?
    };
    let at_kill = applied(cluster.node(receiver), sender).await;
    let head_at_kill = outbound(&cluster.node(sender).status().await?, receiver).head_seq;
    cluster.node_mut(victim).kill()?;
    eprintln!("SIGKILL {victim} after {waited:.2?}: receiver had applied {at_kill}, sender head {head_at_kill}");
    let t = Instant::now();
    cluster.node_mut(victim).restart().await?;
    eprintln!("{victim} restarted and serving in {:.2?}", t.elapsed());

    let load = load.await??;
    eprintln!(
        "{N} move-ins from 16 clients in {:.2?} ({:.0}/s): {} created, {} repeated, {} retried",
        load.elapsed,
        f64::from(N) / load.elapsed.as_secs_f64(),
        load.created,
        load.repeated,
        load.retried
    );
    assert_eq!(load.created + load.repeated, u64::from(N));
    if victim == receiver {
        assert_eq!((load.created, load.retried), (u64::from(N), 0), "the sender never went away");
    }

    let t = Instant::now();
    let n = u64::from(N);
    let (s, r) = (cluster.node(sender), cluster.node(receiver));
    wait_until(Duration::from_secs(120), "both channels are drained", async || {
        drained(s, r, n).await && drained(r, s, n).await
    })
    .await
    .with_context(|| cluster.log_tails(30))?;
    eprintln!("both channels drained {:.2?} after the last registration", t.elapsed());

    let sender_status = s.status().await?;
    let receiver_status = r.status().await?;
    let sender_log = s.log_entries().await?;
    let receiver_log = r.log_entries().await?;
    let registered: BTreeSet<String> = s.list_persons().await?.into_iter().map(|p| p.person_key).collect();
    assert_eq!(registered.len(), N as usize, "persons registered at the sender");

    let (notices, noticed) = check_channel(&sender_log, &receiver_log, sender, receiver)?;
    assert_eq!(notices, outbound(&sender_status, receiver).head_seq);
    assert_eq!(notices, n);
    assert_eq!(noticed.keys().cloned().collect::<BTreeSet<_>>(), registered, "persons noticed at the origin");
    assert!(noticed.values().all(|&c| c == 1), "one notice per person");
    let kinds: BTreeSet<_> = receiver_log.iter().filter(|e| e.peer == sender).map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, BTreeSet::from(["move_in_feedback", "move_in_notice"]));

    let (feedbacks, answered) = check_channel(&receiver_log, &sender_log, receiver, sender)?;
    assert_eq!(feedbacks, outbound(&receiver_status, sender).head_seq);
    assert_eq!(feedbacks, n);
    assert_eq!(answered.keys().cloned().collect::<BTreeSet<_>>(), registered, "persons answered with feedback");
    assert!(
        sender_log
            .iter()
            .filter(|e| e.direction == pb::Direction::Applied as i32)
            .all(|e| e.kind == "move_in_feedback"),
        "the sender applied only feedback"
    );
    let awaiting = s.list_persons().await?.into_iter().filter(|p| sync(p).feedback != "received").count();
    assert_eq!(awaiting, 0, "persons still awaiting feedback at the sender");
    assert_eq!(r.list_persons().await?.len(), N as usize, "origin records");
    eprintln!(
        "proof: {receiver} applied seq 1..={notices} from {sender} once each in log order ({} log entries); \
         {sender} applied feedback seq 1..={feedbacks} ({} log entries); {} envelopes ({} B) sent {sender}→{receiver} by the running process",
        receiver_log.len(),
        sender_log.len(),
        outbound(&sender_status, receiver).envelopes_sent,
        outbound(&sender_status, receiver).bytes_sent,
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn receiver_killed_mid_stream_applies_every_notice_once_in_order() -> anyhow::Result<()> {
    kill_mid_stream(MINQUAN).await
}

#[tokio::test(flavor = "multi_thread")]
async fn sender_killed_mid_stream_applies_every_notice_once_in_order() -> anyhow::Result<()> {
    kill_mid_stream(DAXUELU).await
}

/// Whether the node uses directory `version` and has fetched from the gateway since it started.
async fn fetched_from_gateway(node: &ClusterNode, version: u64) -> bool {
    node.status().await.is_ok_and(|s| s.directory_fetched_ms > 0 && s.directory_version == version)
}

/// The outbound channel to `peer` as `ldx-node status --json` prints it: (head, pending).
async fn cli_channel(node: &ClusterNode, peer: &str) -> anyhow::Result<(u64, u64)> {
    let mut command = node.cli_command(&["status", "--json"]);
    let out = tokio::task::spawn_blocking(move || command.output()).await??;
    ensure!(out.status.success(), "ldx-node status: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let channel = json["outbound"]
        .as_array()
        .context("outbound")?
        .iter()
        .find(|c| c["peer"] == peer)
        .with_context(|| format!("no channel to {peer} in {json}"))?;
    Ok((channel["head_seq"].as_u64().context("head_seq")?, channel["pending"].as_u64().context("pending")?))
}

/// At most about a dozen samples, evenly spread, as `pending@seconds`.
fn samples(all: &[(Duration, u64)]) -> String {
    let step = all.len().div_ceil(12).max(1);
    let mut shown: Vec<_> = all.iter().step_by(step).collect();
    if !all.is_empty() && !(all.len() - 1).is_multiple_of(step) {
        shown.extend(all.last());
    }
    let text: Vec<_> = shown.iter().map(|(at, p)| format!("{p}@{:.2}s", at.as_secs_f64())).collect();
    format!("{} samples: {}", all.len(), text.join(", "))
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_node_catches_up_on_5000_notices() -> anyhow::Result<()> {
    const WARM_UP: u32 = 100;
    const N: u32 = 5_000;
    let (sender, receiver) = (DAXUELU, MINQUAN);
    let mut cluster = cluster(&[sender, receiver]).start().await?;

    // A channel in use before the receiver stops.
    let warm_up = (0..WARM_UP).map(|n| move_in(sender, MINQUAN, n)).collect();
    spawn_load(cluster.node(sender), warm_up, 4, false).await??;
    {
        let (s, r) = (cluster.node(sender), cluster.node(receiver));
        wait_until(SYNC_TIMEOUT, "the warm-up is synced", async || drained(s, r, u64::from(WARM_UP)).await).await?;
    }
    cluster.node_mut(receiver).stop().await?;
    let (head, earlier) = cli_channel(cluster.node(sender), receiver).await?;
    assert_eq!((head, earlier), (u64::from(WARM_UP), 0));

    let requests = (WARM_UP..WARM_UP + N).map(|n| move_in(sender, MINQUAN, n)).collect();
    let load = spawn_load(cluster.node(sender), requests, 16, false);
    let started = Instant::now();
    let mut rising = Vec::new();
    while !load.is_finished() {
        let (_, pending) = cli_channel(cluster.node(sender), receiver).await?;
        rising.push((started.elapsed(), pending));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let load = load.await??;
    let (head, pending) = cli_channel(cluster.node(sender), receiver).await?;
    rising.push((started.elapsed(), pending));
    eprintln!(
        "{N} move-ins with {receiver} stopped in {:.2?}; pending for {receiver} as `ldx-node status --json` showed it: {}",
        load.elapsed,
        samples(&rising)
    );
    assert_eq!(load.created, u64::from(N));
    assert!(rising.windows(2).all(|w| w[0].1 <= w[1].1), "pending fell while the receiver was stopped: {rising:?}");
    let increases = rising.windows(2).filter(|w| w[0].1 < w[1].1).count();
    assert!(increases >= 2, "fewer than two increasing samples: {rising:?}");
    assert_eq!(pending, u64::from(N) + earlier);
    assert_eq!(head, u64::from(WARM_UP + N));

    let t = Instant::now();
    cluster.node_mut(receiver).restart().await?;
    eprintln!("{receiver} restarted in {:.2?}", t.elapsed());
    let mut falling = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, pending) = cli_channel(cluster.node(sender), receiver).await?;
        falling.push((t.elapsed(), pending));
        if pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("pending still {pending} after 60 s: {falling:?}\n{}", cluster.log_tails(30));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("catching up, pending as `ldx-node status --json` showed it: {}", samples(&falling));
    assert_eq!(falling.last().map(|f| f.1), Some(0));
    let total = u64::from(WARM_UP + N);
    let (s, r) = (cluster.node(sender), cluster.node(receiver));
    assert_eq!(applied(r, sender).await, total, "the receiver applied every notice");
    wait_until(SYNC_TIMEOUT, "every feedback is back", async || drained(r, s, total).await).await?;
    eprintln!(
        "caught up on {N} notices in {:.2?}; every feedback back after {:.2?}",
        falling.last().expect("sampled").0,
        t.elapsed()
    );
    let (notices, _) = check_channel(&s.log_entries().await?, &r.log_entries().await?, sender, receiver)?;
    assert_eq!(notices, total);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_keep_syncing_on_the_cached_directory_when_the_gateway_is_down() -> anyhow::Result<()> {
    let mut cluster = cluster(&[DAXUELU, MINQUAN, PINGYU]).start().await?;
    let version = cluster.directory_version();
    cluster.stop_gateway().await?;
    let t = Instant::now();

    // Move-ins at 大学路 for women from both origin counties.
    let register = |origin: &'static str, range: std::ops::Range<u32>| -> Vec<pb::RegisterMoveInRequest> {
        range.map(|n| move_in(DAXUELU, origin, n)).collect()
    };
    let mut batch = register(MINQUAN, 0..100);
    batch.extend(register(PINGYU, 0..100));
    spawn_load(cluster.node(DAXUELU), batch, 8, false).await??;
    {
        let (d, m, p) = (cluster.node(DAXUELU), cluster.node(MINQUAN), cluster.node(PINGYU));
        wait_until(SYNC_TIMEOUT, "notices and feedback synced without the gateway", async || {
            drained(d, m, 100).await && drained(m, d, 100).await && drained(d, p, 100).await && drained(p, d, 100).await
        })
        .await?;
    }
    eprintln!("gateway down: 200 move-ins noticed to two origins and answered in {:.2?}", t.elapsed());

    // SIGKILL an origin, register more for it while it is down, and restart it with the
    // gateway still down: it must authenticate 大学路 and route its feedback from the
    // directory cached in its store.
    cluster.node_mut(MINQUAN).kill()?;
    spawn_load(cluster.node(DAXUELU), register(MINQUAN, 100..200), 8, false).await??;
    let t = Instant::now();
    cluster.node_mut(MINQUAN).restart().await?;
    let status = cluster.node(MINQUAN).status().await?;
    assert_eq!((status.directory_version, status.directory_fetched_ms), (version, 0), "cached copy, never fetched");
    let log = cluster.node(MINQUAN).log();
    let since_restart = log.rsplit("==== cluster harness: start #").next().unwrap_or_default();
    assert!(since_restart.contains("directory loaded from the store"), "{since_restart}");
    {
        let (d, m) = (cluster.node(DAXUELU), cluster.node(MINQUAN));
        wait_until(SYNC_TIMEOUT, "the restarted origin caught up", async || {
            drained(d, m, 200).await && drained(m, d, 200).await
        })
        .await?;
    }
    eprintln!(
        "{MINQUAN} restarted on its cached directory v{version} and caught up on 100 notices in {:.2?}",
        t.elapsed()
    );

    // The same for the sending side: 大学路 restarts (SIGTERM) and sends on its cached copy.
    let t = Instant::now();
    cluster.node_mut(DAXUELU).restart().await?;
    let status = cluster.node(DAXUELU).status().await?;
    assert_eq!((status.directory_version, status.directory_fetched_ms), (version, 0));
    spawn_load(cluster.node(DAXUELU), register(PINGYU, 100..150), 8, false).await??;
    {
        let (d, p) = (cluster.node(DAXUELU), cluster.node(PINGYU));
        wait_until(SYNC_TIMEOUT, "the restarted destination sent on its cached directory", async || {
            drained(d, p, 150).await && drained(p, d, 150).await
        })
        .await?;
    }
    eprintln!("{DAXUELU} restarted on its cached directory and synced 50 more in {:.2?}", t.elapsed());
    assert_eq!(cluster.node(MINQUAN).list_persons().await?.len(), 200);
    assert_eq!(cluster.node(PINGYU).list_persons().await?.len(), 150);

    // The gateway comes back on its port; the restarted nodes fetch from it again.
    cluster.start_gateway().await?;
    let t = Instant::now();
    {
        let (d, m) = (cluster.node(DAXUELU), cluster.node(MINQUAN));
        wait_until(SYNC_TIMEOUT, "the nodes fetch from the gateway again", async || {
            fetched_from_gateway(d, version).await && fetched_from_gateway(m, version).await
        })
        .await?;
    }
    eprintln!("gateway back: restarted nodes fetched from it within {:.2?}", t.elapsed());
    Ok(())
}
