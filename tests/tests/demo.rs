//! `ldx-gateway demo`, the README's first command: it must start a syncing federation,
//! with every street office's in-migrants known at their origins, and stop cleanly on
//! SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ldx_proto::v1 as pb;
use ldx_proto::v1::registry_client::RegistryClient;

const GATEWAY: &str = env!("CARGO_BIN_EXE_ldx-gateway-harness");

fn demo_staff() -> &'static str {
    ldx_gateway::demo::DEMO_STAFF
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_a_federation_with_records_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(GATEWAY)
        .args(["demo", "--persons", "6", "--stream-interval-ms", "0", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Lines of the node table: DIVISION ROLE http://ADDR NAME.
    let mut nodes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line =
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("demo never became ready");
        if line.contains("demo federation ready") {
            break;
        }
        let cols: Vec<_> = line.split_whitespace().collect();
        if cols.len() >= 4 && cols[2].starts_with("http://") && cols[3].starts_with("https://") {
            nodes.push((cols[0].to_owned(), cols[1].to_owned(), cols[2].to_owned()));
        }
    }
    assert!(nodes.len() >= 6, "{nodes:?}");
    let mut destination_total = 0;
    let mut origin_total = 0;
    for (division, role, endpoint) in &nodes {
        let channel = tonic::transport::Channel::from_shared(endpoint.clone()).unwrap().connect().await.unwrap();
        let password = std::fs::read_to_string(dir.path().join(division).join("demo-staff.password")).unwrap();
        let token = ldx_node::staff::client::login(channel.clone(), demo_staff(), password.trim()).await.unwrap();
        let bearer = ldx_node::staff::client::Bearer::new(&token).unwrap();
        let mut client = RegistryClient::new(ldx_node::staff::client::with_token(channel, bearer));
        let persons = client
            .list_persons(pb::ListPersonsRequest { page_size: 1000, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .persons;
        assert!(persons.iter().all(|p| p.division.starts_with(division.as_str())), "{division}");
        match role.as_str() {
            "destination" => {
                assert_eq!(persons.len(), 6, "{division}");
                for p in &persons {
                    let sync = p.sync.clone().unwrap_or_default();
                    assert_eq!(sync.feedback, "received", "{division}: her origin's feedback came back");
                }
                destination_total += persons.len();
            }
            _ => {
                assert!(persons.iter().all(|p| p.role == pb::Role::Origin as i32));
                for p in &persons {
                    let sync = p.sync.clone().unwrap_or_default();
                    assert!(sync.notified_by.starts_with("410103"), "{division}: notified by a street office");
                }
                origin_total += persons.len();
            }
        }
    }
    assert_eq!(origin_total, destination_total, "every in-migrant's notice reached her origin");

    assert!(Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "demo ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
}

/// The demo's stream gives seeded residents their quarter's check and report: the origins
/// verify them (one in seven waits for an operator, its photo on file being older) and
/// the verdicts come back to the street offices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_streams_quarterly_reports_that_the_origins_verify() {
    use ldx_gateway::demo::{self, DemoOptions, DemoReady};
    let dir = tempfile::tempdir().unwrap();
    let options = DemoOptions {
        dir: Some(dir.path().to_owned()),
        persons_per_node: 6,
        stream_every: Some(Duration::from_millis(20)),
        ..DemoOptions::default()
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<DemoReady>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(demo::run(
        options,
        async {
            let _ = stop_rx.await;
        },
        move |ready| {
            let _ = ready_tx.send(ready.clone());
        },
    ));
    let ready = tokio::time::timeout(Duration::from_secs(120), ready_rx).await.unwrap().unwrap();
    let reports = async |division: &str| {
        let node = ready.nodes.iter().find(|n| n.division.as_str() == division).unwrap();
        let mut client = RegistryClient::new(demo::connect(node).await.unwrap());
        client.list_reports(pb::ListReportsRequest::default()).await.unwrap().into_inner().reports
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut statuses = Vec::new();
        for origin in ldx_gateway::demo::ORIGINS {
            statuses.extend(reports(origin).await.into_iter().map(|r| r.status()));
        }
        let qualified_back =
            reports("410103007").await.iter().filter(|r| r.status() == pb::ReportStatus::Qualified).count();
        if statuses.contains(&pb::ReportStatus::Qualified)
            && statuses.contains(&pb::ReportStatus::AwaitingVerification)
            && qualified_back > 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "no verified reports within 60 s: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_tx.send(()).unwrap();
    running.await.unwrap().unwrap();
}
