//! A node impersonated with a certificate of the federation CA that the directory does not
//! list (rotated out, or made from a copy of the CA): the sender refuses it during the TLS
//! handshake, before a single envelope leaves, and loses nothing. When the genuine node is
//! back, it gets every notice once.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::NaiveDate;
use ldx_gateway::{directory, pki, synthetic};
use ldx_proto::v1 as pb;
use ldx_proto::v1::exchange_server::{Exchange, ExchangeServer};
use ldx_tests::cluster::{Cluster, wait_until};
use tokio_stream::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

const SENDER: &str = "410103007";
const TARGET: &str = "411421";
const TIMEOUT: Duration = Duration::from_secs(60);
const NOTICES: u32 = 4;

/// A receiver that claims to have applied everything and acks whatever it gets: what an
/// impostor would do to make the sender drop its outbox.
#[derive(Clone)]
struct Impostor {
    streams: Arc<AtomicU64>,
    envelopes: Arc<AtomicU64>,
    claims_applied: u64,
}

impl Impostor {
    fn claiming(claims_applied: u64) -> Self {
        Self { streams: Arc::default(), envelopes: Arc::default(), claims_applied }
    }
}

type Responses = Pin<Box<dyn Stream<Item = Result<pb::SyncResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Exchange for Impostor {
    type SyncStream = Responses;

    async fn sync(&self, request: Request<Streaming<pb::SyncRequest>>) -> Result<Response<Responses>, Status> {
        self.streams.fetch_add(1, Ordering::SeqCst);
        let mut incoming = request.into_inner();
        let envelopes = self.envelopes.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let hello = pb::Hello { last_applied_seq: self.claims_applied, ..Default::default() };
        let _ = tx.send(Ok(pb::SyncResponse { kind: Some(pb::sync_response::Kind::Hello(hello)) })).await;
        tokio::spawn(async move {
            while let Ok(Some(message)) = incoming.message().await {
                if let Some(pb::sync_request::Kind::Batch(batch)) = message.kind {
                    envelopes.fetch_add(batch.envelopes.len() as u64, Ordering::SeqCst);
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// A certificate for `TARGET` from the federation's CA that the directory does not list.
fn rotated_out_certificate(cluster: &Cluster) -> pki::IssuedNode {
    let old = tempfile::tempdir().unwrap().keep();
    for file in [pki::CA_CERT, pki::CA_KEY] {
        std::fs::copy(cluster.pki_dir().join(file), old.join(file)).unwrap();
    }
    pki::issue(&old, TARGET).unwrap()
}

async fn start_impostor(cluster: &Cluster, cert: &pki::IssuedNode, impostor: &Impostor) -> std::net::SocketAddr {
    let identity = Identity::from_pem(std::fs::read(&cert.cert_path).unwrap(), std::fs::read(&cert.key_path).unwrap());
    let ca = Certificate::from_pem(std::fs::read(cluster.pki_dir().join(pki::CA_CERT)).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::builder()
        .tls_config(ServerTlsConfig::new().identity(identity).client_ca_root(ca))
        .unwrap()
        .add_service(ExchangeServer::new(impostor.clone()))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    addr
}

fn publish(cluster: &Cluster, endpoint: &str) -> u64 {
    let issued = cluster.node(TARGET).issued();
    directory::add(cluster.pki_dir(), TARGET, endpoint, &issued.cert_path, &issued.signing_pub_path).unwrap().version()
}

async fn move_ins(cluster: &Cluster, from: u32) -> Vec<String> {
    let mut client = cluster.node(SENDER).registry().await.unwrap();
    let mut ids = Vec::new();
    for n in from..from + NOTICES {
        let request = synthetic::person(TARGET, n).move_in(
            SENDER,
            NaiveDate::from_ymd_opt(2026, 3, 2).unwrap(),
            synthetic::category(n),
        );
        ids.push(request.id_number.clone());
        client.register_move_in(request).await.unwrap();
    }
    ids
}

async fn channel(cluster: &Cluster) -> pb::OutboundChannel {
    let status = cluster.node(SENDER).status().await.unwrap();
    status.outbound.into_iter().find(|c| c.peer == TARGET).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_the_directory_does_not_list_gets_nothing_and_nothing_is_lost() {
    let mut cluster = Cluster::builder().nodes([SENDER, TARGET]).start().await.unwrap();
    let genuine = cluster.node(TARGET).peer_addr().unwrap();
    cluster.node_mut(TARGET).stop().await.unwrap();

    // The network now leads the target's address to an impostor with a CA-issued
    // certificate for the target's division, just not the one the directory pins.
    let impostor = Impostor::claiming(u64::from(NOTICES));
    let old = rotated_out_certificate(&cluster);
    let addr = start_impostor(&cluster, &old, &impostor).await;
    let version = publish(&cluster, &format!("https://{addr}"));
    cluster.wait_for_directory(version).await.unwrap();

    let ids = move_ins(&cluster, 0).await;
    wait_until(TIMEOUT, "the sender refuses the impostor's certificate", async || {
        channel(&cluster).await.last_error.contains("not the one the directory pins")
    })
    .await
    .unwrap();
    let c = channel(&cluster).await;
    assert_eq!((c.head_seq, c.acked_seq, c.pending), (u64::from(NOTICES), 0, u64::from(NOTICES)), "{c:?}");
    assert_eq!(impostor.streams.load(Ordering::SeqCst), 0, "the impostor never got a stream");
    assert_eq!(impostor.envelopes.load(Ordering::SeqCst), 0, "the impostor never got an envelope");

    // The genuine node comes back at its own address: every notice arrives, once.
    cluster.node_mut(TARGET).restart().await.unwrap();
    assert_eq!(cluster.node(TARGET).peer_addr(), Some(genuine));
    let version = publish(&cluster, &format!("https://{genuine}"));
    cluster.wait_for_directory(version).await.unwrap();
    wait_until(TIMEOUT, "the genuine node has applied every notice", async || {
        let c = channel(&cluster).await;
        c.acked_seq == u64::from(NOTICES) && c.pending == 0
    })
    .await
    .unwrap();
    for id in &ids {
        assert!(cluster.node(TARGET).person(id).await.unwrap().is_some(), "her origin knows of her move-in");
    }
    let applied = cluster
        .node(TARGET)
        .log_entries()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.peer == SENDER && e.kind == "move_in_notice")
        .count();
    assert_eq!(applied, NOTICES as usize, "each notice applied once");
    assert_eq!(impostor.envelopes.load(Ordering::SeqCst), 0);
}

/// Even the holder of the pinned certificate is not taken at its word: a Hello beyond the
/// channel's head trims nothing, and one below what it acked before (a node restored from
/// an old backup) is reported instead of papered over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_beyond_the_head_or_below_the_acked_seq_is_not_trusted() {
    let mut cluster = Cluster::builder().nodes([SENDER, TARGET]).start().await.unwrap();
    cluster.node_mut(TARGET).stop().await.unwrap();
    let genuine = cluster.node(TARGET).issued().clone();

    let beyond = Impostor::claiming(1_000);
    let addr = start_impostor(&cluster, &genuine, &beyond).await;
    let version = publish(&cluster, &format!("https://{addr}"));
    cluster.wait_for_directory(version).await.unwrap();
    move_ins(&cluster, 0).await;
    wait_until(TIMEOUT, "the Hello beyond the head is refused", async || {
        channel(&cluster).await.last_error.contains("beyond this channel's head 4")
    })
    .await
    .unwrap();
    let c = channel(&cluster).await;
    assert_eq!((c.acked_seq, c.pending), (0, u64::from(NOTICES)), "nothing trimmed: {c:?}");
    assert_eq!(beyond.envelopes.load(Ordering::SeqCst), 0);

    // The genuine node takes all four; then a copy of it from before they arrived appears.
    cluster.node_mut(TARGET).restart().await.unwrap();
    let real = cluster.node(TARGET).peer_addr().unwrap();
    let version = publish(&cluster, &format!("https://{real}"));
    cluster.wait_for_directory(version).await.unwrap();
    wait_until(TIMEOUT, "the genuine node acked every notice", async || channel(&cluster).await.acked_seq == 4)
        .await
        .unwrap();
    cluster.node_mut(TARGET).stop().await.unwrap();
    let restored = Impostor::claiming(2);
    let addr = start_impostor(&cluster, &genuine, &restored).await;
    let version = publish(&cluster, &format!("https://{addr}"));
    cluster.wait_for_directory(version).await.unwrap();
    move_ins(&cluster, NOTICES).await;
    wait_until(TIMEOUT, "the lost envelopes are reported", async || {
        channel(&cluster).await.last_error.contains("applied seq 2 but acked seq 4 before")
    })
    .await
    .unwrap();
    let c = channel(&cluster).await;
    assert_eq!((c.head_seq, c.acked_seq), (8, 4), "{c:?}");
    assert_eq!(restored.envelopes.load(Ordering::SeqCst), 0, "nothing sent on a Hello that is not trusted");
}
