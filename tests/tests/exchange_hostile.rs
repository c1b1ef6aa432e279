//! Hostile and broken input on a channel: a receiving node (in process, real mutual TLS
//! and RocksDB) faces a sender that speaks `ldx.v1.Exchange` by hand. Every bad batch is
//! refused with an error naming the rule, nothing in it is applied, and the channel goes
//! on once the sender sends correct batches again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ldx_node::crypto::FederationSalt;
use ldx_proto::chain::{Head, envelope_hash};
use ldx_proto::identity::SignKey;
use ldx_proto::v1 as pb;
use ldx_proto::v1::exchange_client::ExchangeClient;
use ldx_proto::v1::monitor_client::MonitorClient;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const RECEIVER: &str = "411421";
const SENDER: &str = "410103007";
/// Issued by the federation CA, but not in the directory.
const UNLISTED: &str = "410103008";

struct Setup {
    _dir: tempfile::TempDir,
    pki: PathBuf,
    /// A second CA, which the federation does not trust.
    foreign_pki: PathBuf,
    peer_addr: String,
    api_addr: String,
    metrics_addr: String,
    salt: FederationSalt,
    stops: Vec<oneshot::Sender<()>>,
}

async fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "{} did not appear", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn setup() -> Setup {
    let dir = tempfile::Builder::new().prefix("ldx-hostile-").tempdir().unwrap();
    let pki = dir.path().join("pki");
    let foreign_pki = dir.path().join("foreign-pki");
    ldx_gateway::pki::init(&pki).unwrap();
    ldx_gateway::pki::init(&foreign_pki).unwrap();
    for division in [RECEIVER, SENDER, UNLISTED] {
        ldx_gateway::pki::issue(&pki, division).unwrap();
    }
    ldx_gateway::pki::issue(&foreign_pki, SENDER).unwrap();
    for division in [RECEIVER, SENDER] {
        let node = ldx_gateway::pki::node_dir(&pki, division);
        ldx_gateway::directory::add(
            &pki,
            division,
            "https://127.0.0.1:9",
            &node.join("node.crt"),
            &node.join("signing.pub"),
        )
        .unwrap();
    }
    let mut stops = Vec::new();

    let gateway = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway_addr = gateway.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    stops.push(stop);
    tokio::spawn(ldx_gateway::server::run(pki.clone(), gateway, async {
        let _ = stopped.await;
    }));

    let node_dir = dir.path().join(RECEIVER);
    std::fs::create_dir_all(&node_dir).unwrap();
    ldx_node::crypto::write_new_key_file(&node_dir.join("data.key"), "test data key").unwrap();
    let certs = ldx_gateway::pki::node_dir(&pki, RECEIVER);
    let config = format!(
        r#"division = "{RECEIVER}"
federation_salt_file = "{salt}"
[api]
listen = "127.0.0.1:0"
[storage]
sync_writes = false
[peer]
listen = "127.0.0.1:0"
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{key}"
signing_key_file = "{signing}"
[directory]
gateway = "http://{gateway_addr}"
federation_key_file = "{federation}"
poll_interval_ms = 100
[metrics]
listen = "127.0.0.1:0"
"#,
        salt = pki.join("federation.salt").display(),
        ca = pki.join("ca.crt").display(),
        cert = certs.join("node.crt").display(),
        key = certs.join("node.key").display(),
        signing = certs.join("signing.key").display(),
        federation = pki.join("federation.pub").display(),
    );
    std::fs::write(node_dir.join("node.toml"), config).unwrap();
    let config = ldx_node::config::Config::load(&node_dir.join("node.toml"), Vec::new()).unwrap();
    let (api_file, peer_file, metrics_file) =
        (config.api_addr_file(), config.peer_addr_file(), config.metrics_addr_file());
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    stops.push(stop);
    tokio::spawn(ldx_node::node::run(config, Arc::new(ldx_node::clock::SystemClock), api, async {
        let _ = stopped.await;
    }));
    let api_addr = wait_for_file(&api_file).await;
    let peer_addr = wait_for_file(&peer_file).await;
    let metrics_addr = wait_for_file(&metrics_file).await;
    let salt = FederationSalt::load(&pki.join("federation.salt")).unwrap();
    let setup = Setup { _dir: dir, pki, foreign_pki, peer_addr, api_addr, metrics_addr, salt, stops };
    // The receiver must have the directory before anyone can be recognised.
    let deadline = Instant::now() + Duration::from_secs(30);
    while setup.status().await.directory_version < 2 {
        assert!(Instant::now() < deadline, "the node never got the directory");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    setup
}

impl Setup {
    async fn status(&self) -> pb::StatusResponse {
        let channel = Channel::from_shared(format!("http://{}", self.api_addr)).unwrap().connect().await.unwrap();
        MonitorClient::new(channel).status(pb::StatusRequest {}).await.unwrap().into_inner()
    }

    /// `GET /metrics`, as Prometheus scrapes it.
    async fn metrics(&self) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&self.metrics_addr).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), body.to_owned())
    }

    async fn applied(&self) -> u64 {
        self.status().await.inbound.iter().find(|c| c.peer == SENDER).map_or(0, |c| c.applied_seq)
    }

    /// A sender presenting the TLS identity of `division` from `pki`.
    async fn client(&self, pki: &Path, division: &str) -> Result<ExchangeClient<Channel>, String> {
        let node = ldx_gateway::pki::node_dir(pki, division);
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(self.pki.join("ca.crt")).unwrap()))
            .identity(Identity::from_pem(
                std::fs::read(node.join("node.crt")).unwrap(),
                std::fs::read(node.join("node.key")).unwrap(),
            ))
            .domain_name(ldx_proto::identity::division_dns_name(RECEIVER));
        let channel = Endpoint::from_shared(format!("https://{}", self.peer_addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok(ExchangeClient::new(channel))
    }

    fn notice(&self, seq: u64, prev_hash: &[u8], n: u32) -> Vec<u8> {
        let id = ldx_node::domain::id::with_check_digit(&format!("41142119900101{n:03}"));
        pb::Envelope {
            from: SENDER.into(),
            to: RECEIVER.into(),
            seq,
            prev_hash: prev_hash.to_vec(),
            created_at_ms: 1,
            person_key: self.salt.person_key(&id).0.to_vec(),
            body: Some(pb::envelope::Body::MoveInNotice(pb::MoveInNotice {
                person: Some(pb::PersonDetails { id_number: id, name: format!("测试{n}"), phone: String::new() }),
                role: pb::Role::Residence as i32,
                category: pb::Category::MixedCommunity as i32,
                division: SENDER.into(),
                address: format!("大学路 {n} 号"),
                move_in_date: "2026-03-01".into(),
                household_division: RECEIVER.into(),
                feedback_due: "2026-03-31".into(),
            })),
        }
        .encode_to_vec()
    }

    /// `count` well-formed notices continuing a chain after `(seq, hash)`.
    fn chain(&self, after: u64, prev: &[u8], count: u64) -> Vec<Vec<u8>> {
        let mut prev = prev.to_vec();
        (after + 1..=after + count)
            .map(|seq| {
                let bytes = self.notice(seq, &prev, seq as u32);
                prev = envelope_hash(&bytes).to_vec();
                bytes
            })
            .collect()
    }
}

fn sender_key(pki: &Path) -> SignKey {
    SignKey::load(&ldx_gateway::pki::node_dir(pki, SENDER).join("signing.key")).unwrap()
}

fn signed(envelopes: Vec<Vec<u8>>, key: &SignKey) -> pb::SyncRequest {
    let last = pb::Envelope::decode(envelopes.last().unwrap().as_slice()).map(|e| e.seq).unwrap_or(0);
    let hash = envelope_hash(envelopes.last().unwrap());
    let head_signature = Head { from: SENDER, to: RECEIVER, seq: last, hash: &hash }.sign(key);
    pb::SyncRequest { kind: Some(pb::sync_request::Kind::Batch(pb::SyncBatch { envelopes, head_signature })) }
}

/// Opens Sync, takes the Hello, sends `batch` and returns the receiver's answer to it.
async fn exchange(
    client: &mut ExchangeClient<Channel>,
    batch: pb::SyncRequest,
) -> Result<(pb::Hello, u64), tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert("ldx-channel-to", RECEIVER.parse().unwrap());
    let mut responses = client.sync(request).await?.into_inner();
    let hello = match responses.message().await?.and_then(|r| r.kind) {
        Some(pb::sync_response::Kind::Hello(h)) => h,
        other => panic!("expected Hello, got {other:?}"),
    };
    tx.send(batch).await.unwrap();
    match responses.message().await?.and_then(|r| r.kind) {
        Some(pb::sync_response::Kind::Ack(a)) => Ok((hello, a.applied_seq)),
        other => panic!("expected Ack, got {other:?}"),
    }
}

fn expect_refused(result: Result<(pb::Hello, u64), tonic::Status>, code: tonic::Code, words: &str) {
    let status = result.expect_err("the batch must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(words), "{:?} does not say {words:?}", status.message());
    eprintln!("refused as expected: {:?}: {}", status.code(), status.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_batch_is_refused_and_the_channel_recovers() {
    let s = setup().await;
    let key = sender_key(&s.pki);
    let mut client = s.client(&s.pki, SENDER).await.unwrap();

    // A good start: seq 1..=3.
    let good = s.chain(0, &[], 3);
    let head = envelope_hash(good.last().unwrap()).to_vec();
    let (hello, acked) = exchange(&mut client, signed(good.clone(), &key)).await.unwrap();
    assert_eq!((hello.last_applied_seq, acked), (0, 3));

    // Replayed batch.
    expect_refused(exchange(&mut client, signed(good, &key)).await, tonic::Code::FailedPrecondition, "replayed batch");
    // Tampered signature: signed by a key that is not the sender's.
    let next = s.chain(3, &head, 2);
    expect_refused(
        exchange(&mut client, signed(next.clone(), &SignKey::generate())).await,
        tonic::Code::Unauthenticated,
        "head signature",
    );
    // A signature over a different head than the batch ends at.
    let mut wrong_head = signed(next[..1].to_vec(), &key);
    if let Some(pb::sync_request::Kind::Batch(b)) = &mut wrong_head.kind {
        b.envelopes.push(next[1].clone());
    }
    expect_refused(exchange(&mut client, wrong_head).await, tonic::Code::Unauthenticated, "head signature");
    // Broken chain: seq 4 links to something else.
    let broken = s.chain(3, &[7; 32], 2);
    expect_refused(exchange(&mut client, signed(broken, &key)).await, tonic::Code::InvalidArgument, "broken chain");
    // A gap: seq 5 without seq 4.
    expect_refused(
        exchange(&mut client, signed(next[1..].to_vec(), &key)).await,
        tonic::Code::FailedPrecondition,
        "gap",
    );
    // Malformed protobuf.
    expect_refused(
        exchange(&mut client, signed(vec![vec![0xff, 0xff, 0xff, 0x0f]], &key)).await,
        tonic::Code::InvalidArgument,
        "not a valid Envelope",
    );
    // An envelope over the size limit.
    let mut huge = pb::Envelope::decode(next[0].as_slice()).unwrap();
    if let Some(pb::envelope::Body::MoveInNotice(n)) = &mut huge.body {
        n.address = "x".repeat(70 * 1024);
    }
    expect_refused(
        exchange(&mut client, signed(vec![huge.encode_to_vec()], &key)).await,
        tonic::Code::InvalidArgument,
        "over the limit",
    );
    // An envelope claiming another sender than the TLS identity.
    let mut forged = pb::Envelope::decode(next[0].as_slice()).unwrap();
    forged.from = UNLISTED.into();
    expect_refused(
        exchange(&mut client, signed(vec![forged.encode_to_vec()], &key)).await,
        tonic::Code::PermissionDenied,
        "is not the sender's TLS identity",
    );
    assert_eq!(s.applied().await, 3, "nothing of the bad batches was applied");

    // Fixed: the channel goes on from where it was.
    let (hello, acked) = exchange(&mut client, signed(next, &key)).await.unwrap();
    assert_eq!((hello.last_applied_seq, acked), (3, 5));
    assert_eq!(s.applied().await, 5);

    // The same figures on /metrics.
    let (head, body) = s.metrics().await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let line = format!("ldx_inbound_applied_seq{{node=\"{RECEIVER}\",peer=\"{SENDER}\",to=\"{RECEIVER}\"}} 5");
    assert!(body.lines().any(|l| l == line), "{line} not in\n{body}");
    assert!(body.contains("# TYPE ldx_channel_pending gauge"), "{body}");
    drop(s.stops);
}

#[tokio::test(flavor = "multi_thread")]
async fn senders_the_federation_does_not_know_are_turned_away() {
    let s = setup().await;
    let key = sender_key(&s.pki);
    let batch = || signed(s.chain(0, &[], 1), &key);

    // A certificate from another CA: the TLS handshake itself fails.
    let refused = match s.client(&s.foreign_pki, SENDER).await {
        Err(e) => e,
        Ok(mut client) => format!("{:?}", exchange(&mut client, batch()).await.expect_err("a foreign CA must fail")),
    };
    eprintln!("foreign CA refused: {refused}");

    // A certificate of the federation CA, for a division that is not in the directory.
    let mut unlisted = s.client(&s.pki, UNLISTED).await.unwrap();
    expect_refused(exchange(&mut unlisted, batch()).await, tonic::Code::PermissionDenied, "not listed in directory");

    // A certificate of the receiver itself, used to send as the sender: the envelopes'
    // sender is not the TLS identity.
    let mut impostor = s.client(&s.pki, RECEIVER).await.unwrap();
    expect_refused(
        exchange(&mut impostor, batch()).await,
        tonic::Code::PermissionDenied,
        "is not the sender's TLS identity",
    );

    assert_eq!(s.applied().await, 0, "nothing applied");
    let mut client = s.client(&s.pki, SENDER).await.unwrap();
    assert_eq!(exchange(&mut client, batch()).await.unwrap().1, 1, "the real sender still gets through");
    drop(s.stops);
}
