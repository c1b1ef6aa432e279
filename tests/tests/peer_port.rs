//! What each identity gets from a node's peer port (mutual TLS). Any certificate of the
//! federation CA passes the handshake; the services then check it against the directory:
//! a certificate the directory does not list gets nothing from any service, a listed node
//! gets health (and syncs through Exchange), only the gateway's pinned certificate reads
//! Monitor.Status and Assessment, and nobody reads the message log there.

use std::path::Path;
use std::time::Duration;

use ldx_gateway::pki;
use ldx_proto::v1 as pb;
use ldx_proto::v1::assessment_client::AssessmentClient;
use ldx_proto::v1::monitor_client::MonitorClient;
use ldx_tests::cluster::{Cluster, wait_until};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const NODE: &str = "411421";
const OTHER: &str = "410103007";

async fn dial(cluster: &Cluster, cert: &Path, key: &Path) -> Channel {
    let ca = Certificate::from_pem(std::fs::read(cluster.pki_dir().join(pki::CA_CERT)).unwrap());
    let identity = Identity::from_pem(std::fs::read(cert).unwrap(), std::fs::read(key).unwrap());
    let tls = ClientTlsConfig::new()
        .ca_certificate(ca)
        .identity(identity)
        .domain_name(ldx_proto::identity::division_dns_name(NODE));
    let addr = cluster.node(NODE).peer_addr().unwrap();
    Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).unwrap().connect().await.unwrap()
}

/// The code of each peer-port call: Health.Check, Monitor.Status, Monitor.ListLog,
/// Assessment.Statements.
async fn codes(channel: Channel) -> [Code; 4] {
    let code = |r: Result<(), tonic::Status>| r.map_or_else(|s| s.code(), |()| Code::Ok);
    let health = HealthClient::new(channel.clone()).check(HealthCheckRequest::default()).await.map(drop);
    let status = MonitorClient::new(channel.clone()).status(pb::StatusRequest {}).await.map(drop);
    let log = MonitorClient::new(channel.clone()).list_log(pb::ListLogRequest { after: 0, limit: 10 }).await.map(drop);
    let statements =
        AssessmentClient::new(channel).statements(pb::StatementsRequest { period: "2026Q1".into() }).await.map(drop);
    [code(health), code(status), code(log), code(statements)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_identity_gets_only_what_the_directory_allows_it() {
    let mut cluster = Cluster::builder().nodes([NODE, OTHER]).start().await.unwrap();

    // A CA-issued certificate for a division the directory does not list.
    let outside = tempfile::tempdir().unwrap();
    for file in [pki::CA_CERT, pki::CA_KEY] {
        std::fs::copy(cluster.pki_dir().join(file), outside.path().join(file)).unwrap();
    }
    let stranger = pki::issue(outside.path(), "410103099").unwrap();
    let got = codes(dial(&cluster, &stranger.cert_path, &stranger.key_path).await).await;
    assert_eq!(got, [Code::PermissionDenied; 4], "a certificate outside the directory gets nothing");

    let node = cluster.node(OTHER).issued();
    let got = codes(dial(&cluster, &node.cert_path, &node.key_path).await).await;
    assert_eq!(
        got,
        [Code::Ok, Code::PermissionDenied, Code::PermissionDenied, Code::PermissionDenied],
        "a listed node gets health only (it syncs through Exchange)"
    );

    let (cert, key) = pki::gateway_identity(cluster.pki_dir()).unwrap();
    let got = codes(dial(&cluster, &cert, &key).await).await;
    assert_eq!(got, [Code::Ok, Code::Ok, Code::PermissionDenied, Code::Ok], "the gateway reads status, never the log");

    // On the staff API, the log is there for staff.
    let mut staff = cluster.node(NODE).monitor().await.unwrap();
    staff.list_log(pb::ListLogRequest { after: 0, limit: 10 }).await.unwrap();

    // The running gateway needs neither the CA key nor the federation key: `pki init`
    // issued its certificate, and the directory is signed where it is edited.
    cluster.stop_gateway().await.unwrap();
    let offline = tempfile::tempdir().unwrap();
    for file in [pki::CA_KEY, pki::FEDERATION_KEY] {
        std::fs::rename(cluster.pki_dir().join(file), offline.path().join(file)).unwrap();
    }
    cluster.start_gateway().await.unwrap();
    wait_until(Duration::from_secs(30), "the gateway reads both nodes' status", async || {
        cluster
            .gateway_metrics()
            .await
            .is_ok_and(|m| [NODE, OTHER].iter().all(|n| m.contains(&format!("ldx_node_up{{node=\"{n}\"}} 1"))))
    })
    .await
    .unwrap();
}
