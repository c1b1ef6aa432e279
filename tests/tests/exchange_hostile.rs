//! Hostile and broken input on a channel: a receiving node (in process, real mutual TLS
//! and RocksDB) faces a sender that speaks `ldx.v1.Exchange` by hand. Every bad batch is
//! refused with an error naming the rule, nothing in it is applied, and the channel goes
//! on once the sender sends correct batches again. Envelopes a listed sender may send in
//! form but not in substance (a person outside the node's jurisdiction, a kind from a
//! newer version) are consumed without effect, logged as refused and counted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::TimeZone;
use ldx_node::crypto::FederationSalt;
use ldx_proto::chain::{Head, envelope_hash};
use ldx_proto::identity::SignKey;
use ldx_proto::v1 as pb;
use ldx_proto::v1::exchange_client::ExchangeClient;
use ldx_proto::v1::monitor_client::MonitorClient;
use ldx_proto::v1::registry_client::RegistryClient;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const RECEIVER: &str = "411421";
const SENDER: &str = "410103007";
/// Issued by the federation CA, but not in the directory.
const UNLISTED: &str = "410103008";
/// Another listed destination (铭功路街道), which never notified anyone of the sender's.
const OTHER: &str = "410103003";
/// An origin county other than the receiver (平舆县).
const OTHER_ORIGIN: &str = "411723";

struct Setup {
    _dir: tempfile::TempDir,
    pki: PathBuf,
    /// A second CA, which the federation does not trust.
    foreign_pki: PathBuf,
    peer_addr: String,
    api_addr: String,
    /// Session token of the harness's staff account at the node.
    token: String,
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
    for division in [RECEIVER, SENDER, UNLISTED, OTHER] {
        ldx_gateway::pki::issue(&pki, division).unwrap();
    }
    ldx_gateway::pki::issue(&foreign_pki, SENDER).unwrap();
    for division in [RECEIVER, SENDER, OTHER] {
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
    ldx_tests::staff::provision(&node_dir.join("node.toml")).unwrap();
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
    let token = ldx_tests::staff::login(&format!("http://{api_addr}")).await.unwrap();
    let setup = Setup { _dir: dir, pki, foreign_pki, peer_addr, api_addr, token, metrics_addr, salt, stops };
    // The receiver must have the directory before anyone can be recognised.
    let deadline = Instant::now() + Duration::from_secs(30);
    while setup.status().await.directory_version < 3 {
        assert!(Instant::now() < deadline, "the node never got the directory");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    setup
}

impl Setup {
    async fn staff(&self) -> ldx_node::staff::client::StaffChannel {
        let channel = Channel::from_shared(format!("http://{}", self.api_addr)).unwrap().connect().await.unwrap();
        ldx_tests::staff::authed(channel, &self.token)
    }

    async fn status(&self) -> pb::StatusResponse {
        let channel = self.staff().await;
        MonitorClient::new(channel).status(pb::StatusRequest {}).await.unwrap().into_inner()
    }

    /// `GET /metrics`, as Prometheus scrapes it.
    async fn metrics(&self) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&self.metrics_addr).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), body.to_owned())
    }

    async fn applied(&self) -> u64 {
        self.inbound(SENDER).await.applied_seq
    }

    async fn inbound(&self, peer: &str) -> pb::InboundChannel {
        self.status().await.inbound.into_iter().find(|c| c.peer == peer).unwrap_or_default()
    }

    /// What a refused batch must leave as it was: the channel's state (applied seq, hash,
    /// refused count), the message log, and the records the refused notices name (the
    /// test persons 4 and 5).
    async fn snapshot(&self) -> (pb::InboundChannel, usize, Option<pb::Person>, Option<pb::Person>) {
        (self.inbound(SENDER).await, self.log().await.len(), self.person(4).await, self.person(5).await)
    }

    async fn assert_unchanged(
        &self,
        before: &(pb::InboundChannel, usize, Option<pb::Person>, Option<pb::Person>),
        which: &str,
    ) {
        assert_eq!(&self.snapshot().await, before, "refusal {which} changed the receiver");
    }

    /// The receiver's whole message log.
    async fn log(&self) -> Vec<pb::LogEntry> {
        let channel = self.staff().await;
        let request = pb::ListLogRequest { after: 0, limit: 10_000 };
        MonitorClient::new(channel).list_log(request).await.unwrap().into_inner().entries
    }

    /// The receiver's record of the `n`th test person, if it holds one.
    async fn person(&self, n: u32) -> Option<pb::Person> {
        let channel = self.staff().await;
        let request = pb::GetPersonRequest { id_number: person_id(n) };
        match RegistryClient::new(channel).get_person(request).await {
            Ok(resp) => resp.into_inner().person,
            Err(status) if status.code() == tonic::Code::NotFound => None,
            Err(status) => panic!("GetPerson: {status:?}"),
        }
    }

    /// A sender presenting the TLS identity of `division` from `pki`.
    async fn client(&self, pki: &Path, division: &str) -> Result<ExchangeClient<Channel>, String> {
        let node = ldx_gateway::pki::node_dir(pki, division);
        let cert = std::fs::read(node.join("node.crt")).unwrap();
        self.client_with(Identity::from_pem(cert, std::fs::read(node.join("node.key")).unwrap())).await
    }

    /// A sender presenting `identity`.
    async fn client_with(&self, identity: Identity) -> Result<ExchangeClient<Channel>, String> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(self.pki.join("ca.crt")).unwrap()))
            .identity(identity)
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
        self.notice_envelope(seq, prev_hash, n).encode_to_vec()
    }

    /// A well-formed move-in notice from the sender about the `n`th test person, whose
    /// origin is the receiver.
    fn notice_envelope(&self, seq: u64, prev_hash: &[u8], n: u32) -> pb::Envelope {
        let id = person_id(n);
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
    }

    /// An envelope of channel `from -> RECEIVER` about the `n`th test person.
    fn envelope(&self, from: &str, seq: u64, prev_hash: &[u8], n: u32, body: pb::envelope::Body) -> pb::Envelope {
        pb::Envelope {
            from: from.into(),
            to: RECEIVER.into(),
            seq,
            prev_hash: prev_hash.to_vec(),
            created_at_ms: 1,
            person_key: self.salt.person_key(&person_id(n)).0.to_vec(),
            body: Some(body),
        }
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

/// The `n`th test person: born in the receiver's county.
fn person_id(n: u32) -> String {
    ldx_node::domain::id::with_check_digit(&format!("41142119900101{n:03}"))
}

fn sender_key(pki: &Path) -> SignKey {
    signing_key(pki, SENDER)
}

fn signing_key(pki: &Path, division: &str) -> SignKey {
    SignKey::load(&ldx_gateway::pki::node_dir(pki, division).join("signing.key")).unwrap()
}

fn signed(envelopes: Vec<Vec<u8>>, key: &SignKey) -> pb::SyncRequest {
    signed_as(SENDER, envelopes, key)
}

/// A batch of channel `from -> RECEIVER` with the head signed by `key`.
fn signed_as(from: &str, envelopes: Vec<Vec<u8>>, key: &SignKey) -> pb::SyncRequest {
    let last = pb::Envelope::decode(envelopes.last().unwrap().as_slice()).map(|e| e.seq).unwrap_or(0);
    let hash = envelope_hash(envelopes.last().unwrap());
    let head_signature = Head { from, to: RECEIVER, seq: last, hash: &hash }.sign(key);
    pb::SyncRequest { kind: Some(pb::sync_request::Kind::Batch(pb::SyncBatch { envelopes, head_signature })) }
}

/// Encoded envelopes, each linked to the one before, the first to `prev`.
fn linked(prev: &[u8], envelopes: Vec<pb::Envelope>) -> Vec<Vec<u8>> {
    let mut prev = prev.to_vec();
    envelopes
        .into_iter()
        .map(|mut e| {
            e.prev_hash = prev.clone();
            let bytes = e.encode_to_vec();
            prev = envelope_hash(&bytes).to_vec();
            bytes
        })
        .collect()
}

/// Opens Sync, takes the Hello, sends `batch` and returns the receiver's answer to it.
async fn exchange(
    client: &mut ExchangeClient<Channel>,
    batch: pb::SyncRequest,
) -> Result<(pb::Hello, u64), tonic::Status> {
    exchange_to(client, RECEIVER, batch).await
}

/// [`exchange`] on a channel addressed to division `to`.
async fn exchange_to(
    client: &mut ExchangeClient<Channel>,
    to: &str,
    batch: pb::SyncRequest,
) -> Result<(pb::Hello, u64), tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert("ldx-channel-to", to.parse().unwrap());
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

    // After each refusal: nothing applied, logged, counted or stored.
    let before = s.snapshot().await;
    // Replayed batch.
    expect_refused(exchange(&mut client, signed(good, &key)).await, tonic::Code::FailedPrecondition, "replayed batch");
    s.assert_unchanged(&before, "1").await;
    // Tampered signature: signed by a key that is not the sender's.
    let next = s.chain(3, &head, 2);
    expect_refused(
        exchange(&mut client, signed(next.clone(), &SignKey::generate())).await,
        tonic::Code::Unauthenticated,
        "head signature",
    );
    s.assert_unchanged(&before, "2").await;
    // A signature over a different head than the batch ends at.
    let mut wrong_head = signed(next[..1].to_vec(), &key);
    if let Some(pb::sync_request::Kind::Batch(b)) = &mut wrong_head.kind {
        b.envelopes.push(next[1].clone());
    }
    expect_refused(exchange(&mut client, wrong_head).await, tonic::Code::Unauthenticated, "head signature");
    s.assert_unchanged(&before, "3").await;
    // Broken chain: seq 4 links to something else.
    let broken = s.chain(3, &[7; 32], 2);
    expect_refused(exchange(&mut client, signed(broken, &key)).await, tonic::Code::InvalidArgument, "broken chain");
    s.assert_unchanged(&before, "4").await;
    // A gap: seq 5 without seq 4.
    expect_refused(
        exchange(&mut client, signed(next[1..].to_vec(), &key)).await,
        tonic::Code::FailedPrecondition,
        "gap",
    );
    s.assert_unchanged(&before, "5").await;
    // Malformed protobuf.
    expect_refused(
        exchange(&mut client, signed(vec![vec![0xff, 0xff, 0xff, 0x0f]], &key)).await,
        tonic::Code::InvalidArgument,
        "not a valid Envelope",
    );
    s.assert_unchanged(&before, "6").await;
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
    s.assert_unchanged(&before, "7").await;
    // An envelope claiming another sender than the TLS identity.
    let mut forged = pb::Envelope::decode(next[0].as_slice()).unwrap();
    forged.from = UNLISTED.into();
    expect_refused(
        exchange(&mut client, signed(vec![forged.encode_to_vec()], &key)).await,
        tonic::Code::PermissionDenied,
        "is not the sender's TLS identity",
    );
    s.assert_unchanged(&before, "8").await;
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

/// A certificate of the federation CA for one listed division cannot send on another's
/// channel, nor on a channel to a division outside the receiver.
#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_for_another_division_cannot_send_as_it() {
    let s = setup().await;
    let sender = sender_key(&s.pki);
    let other = signing_key(&s.pki, OTHER);
    let mut as_other = s.client(&s.pki, OTHER).await.unwrap();

    // 铭功路's certificate, envelopes from 大学路 signed with 大学路's own key (stolen).
    expect_refused(
        exchange(&mut as_other, signed(s.chain(0, &[], 1), &sender)).await,
        tonic::Code::PermissionDenied,
        "is not the sender's TLS identity",
    );
    // The same, with the head signed by 铭功路's key.
    expect_refused(
        exchange(&mut as_other, signed(s.chain(0, &[], 1), &other)).await,
        tonic::Code::PermissionDenied,
        "is not the sender's TLS identity",
    );
    // 大学路's certificate and envelopes, the head signed by another division's key.
    let mut as_sender = s.client(&s.pki, SENDER).await.unwrap();
    expect_refused(
        exchange(&mut as_sender, signed(s.chain(0, &[], 1), &other)).await,
        tonic::Code::Unauthenticated,
        "head signature",
    );
    // 铭功路 as itself, on a channel addressed to another county.
    let own = |to: &str| {
        let mut e = s.notice_envelope(1, &[], 1);
        e.from = OTHER.into();
        e.to = to.into();
        if let Some(pb::envelope::Body::MoveInNotice(n)) = &mut e.body {
            n.division = OTHER.into();
        }
        signed_as(OTHER, vec![e.encode_to_vec()], &other)
    };
    expect_refused(
        exchange_to(&mut as_other, OTHER_ORIGIN, own(OTHER_ORIGIN)).await,
        tonic::Code::InvalidArgument,
        "is not within this node's division",
    );
    // On the receiver's channel, with envelopes addressed to another county.
    expect_refused(
        exchange(&mut as_other, own(OTHER_ORIGIN)).await,
        tonic::Code::InvalidArgument,
        "is not this channel's",
    );

    assert_eq!(s.inbound(SENDER).await, pb::InboundChannel::default(), "nothing applied from {SENDER}");
    assert_eq!(s.inbound(OTHER).await, pb::InboundChannel::default(), "nothing applied from {OTHER}");
    assert!(s.log().await.is_empty(), "nothing logged: {:?}", s.log().await);
    assert_eq!(s.person(1).await, None);

    // Each as itself gets through.
    assert_eq!(exchange(&mut as_other, own(RECEIVER)).await.unwrap().1, 1);
    assert_eq!(exchange(&mut as_sender, signed(s.chain(0, &[], 1), &sender)).await.unwrap().1, 1);
    drop(s.stops);
}

/// A certificate the federation CA issued, presented after it expired, is refused by the
/// TLS handshake. The same CA's certificate for the same division with a current validity
/// passes the handshake (and is then refused as not in the directory), so the expiry is
/// what the handshake refuses.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_certificate_is_turned_away() {
    let s = setup().await;
    let key = sender_key(&s.pki);
    let try_with = async |name: &str, not_before: SystemTime, not_after: SystemTime| {
        // The PKI directory already holds the sender's node: issue into a copy of the CA.
        let ca = s.pki.with_file_name(name);
        std::fs::create_dir(&ca).unwrap();
        for file in [ldx_gateway::pki::CA_CERT, ldx_gateway::pki::CA_KEY] {
            std::fs::copy(s.pki.join(file), ca.join(file)).unwrap();
        }
        let node = ldx_gateway::pki::issue_with_validity(&ca, SENDER, not_before, not_after).unwrap();
        let identity =
            Identity::from_pem(std::fs::read(&node.cert_path).unwrap(), std::fs::read(&node.key_path).unwrap());
        match s.client_with(identity).await {
            Err(e) => e,
            Ok(mut client) => match exchange(&mut client, signed(s.chain(0, &[], 1), &key)).await {
                Ok(answer) => panic!("accepted: {answer:?}"),
                Err(status) => format!("{status:?}"),
            },
        }
    };

    let day = Duration::from_secs(86_400);
    let current = try_with("current-ca", SystemTime::now() - day, SystemTime::now() + 365 * day).await;
    eprintln!("issued with a current validity: {current}");
    assert!(current.contains("PermissionDenied") && current.contains("is not listed in directory"), "{current}");

    let utc = |y, m, d| SystemTime::from(chrono::Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap());
    let expired = try_with("expired-ca", utc(2020, 1, 1), utc(2021, 1, 1)).await;
    eprintln!("issued expiring on 2021-01-01: {expired}");
    assert!(!expired.contains("PermissionDenied"), "the expired certificate passed the TLS handshake: {expired}");
    // Refused below gRPC: the connection ends during or right after the handshake (how the
    // client sees that, alert or closed stream, depends on timing).
    assert!(expired.contains("Transport"), "not refused by the transport: {expired}");

    assert_eq!(s.applied().await, 0, "nothing applied");
    let mut client = s.client(&s.pki, SENDER).await.unwrap();
    assert_eq!(exchange(&mut client, signed(s.chain(0, &[], 1), &key)).await.unwrap().1, 1, "the valid one works");
    drop(s.stops);
}

/// Well-formed envelopes from listed senders about persons or places outside what the
/// sender may speak for: consumed without effect, each logged as refused with the rule.
#[tokio::test(flavor = "multi_thread")]
async fn messages_outside_the_nodes_jurisdiction_take_no_effect() {
    let s = setup().await;
    let sender = sender_key(&s.pki);
    let other = signing_key(&s.pki, OTHER);
    let mut as_sender = s.client(&s.pki, SENDER).await.unwrap();
    let mut as_other = s.client(&s.pki, OTHER).await.unwrap();

    // Person 1 is noticed properly by 大学路.
    let first = s.chain(0, &[], 1);
    let head = envelope_hash(&first[0]).to_vec();
    assert_eq!(exchange(&mut as_sender, signed(first, &sender)).await.unwrap().1, 1);
    let before = s.person(1).await.expect("origin record of person 1");
    assert_eq!(before.sync.as_ref().unwrap().notified_by, SENDER);

    let notice = |seq: u64, n: u32, change: &dyn Fn(&mut pb::MoveInNotice)| {
        let mut e = s.notice_envelope(seq, &[], n);
        if let Some(pb::envelope::Body::MoveInNotice(notice)) = &mut e.body {
            change(notice);
        }
        e
    };
    let batch = linked(
        &head,
        vec![
            // Her household is in another county: not this origin's to hold.
            notice(2, 2, &|n| n.household_division = OTHER_ORIGIN.into()),
            // She lives in a division 大学路 does not serve.
            notice(3, 3, &|n| n.division = OTHER.into()),
            // Feedback is the origin's to give, not a destination's.
            s.envelope(
                SENDER,
                4,
                &[],
                1,
                pb::envelope::Body::MoveInFeedback(pb::MoveInFeedback {
                    certificate: pb::CertificateStatus::Valid as i32,
                    certificate_number: "forged".into(),
                    contact: String::new(),
                    given_on: "2026-03-02".into(),
                }),
            ),
        ],
    );
    assert_eq!(exchange(&mut as_sender, signed(batch, &sender)).await.unwrap().1, 4, "consumed");

    // 铭功路 never notified her: it may neither ask for her certificate nor move her out.
    let batch = linked(
        &[],
        vec![
            s.envelope(
                OTHER,
                1,
                &[],
                1,
                pb::envelope::Body::CertificateQuery(pb::CertificateQuery {
                    issue: true,
                    answer_due: "2026-04-01".into(),
                }),
            ),
            s.envelope(
                OTHER,
                2,
                &[],
                1,
                pb::envelope::Body::MoveOutNotice(pb::MoveOutNotice {
                    move_out_date: "2026-03-05".into(),
                    next_division: OTHER_ORIGIN.into(),
                }),
            ),
            // A query about a person this origin does not hold is answered as such.
            s.envelope(
                OTHER,
                3,
                &[],
                9,
                pb::envelope::Body::CertificateQuery(pb::CertificateQuery {
                    issue: true,
                    answer_due: "2026-04-01".into(),
                }),
            ),
        ],
    );
    assert_eq!(exchange(&mut as_other, signed_as(OTHER, batch, &other)).await.unwrap().1, 3, "consumed");

    assert_eq!(s.person(1).await, Some(before), "person 1 unchanged");
    for n in [2, 3, 9] {
        assert_eq!(s.person(n).await, None, "no record of person {n}");
    }
    assert_eq!(s.inbound(SENDER).await.refused, 3);
    assert_eq!(s.inbound(OTHER).await.refused, 2);

    let log = s.log().await;
    let refused: Vec<_> = log.iter().filter(|e| e.direction == pb::Direction::Refused as i32).collect();
    let reasons: Vec<_> =
        refused.iter().map(|e| (e.peer.as_str(), e.seq, e.kind.as_str(), e.reason.as_str())).collect();
    eprintln!("refused as expected: {reasons:#?}");
    let expect = [
        (SENDER, 2, "move_in_notice", "does not serve her origin 411723"),
        (SENDER, 3, "move_in_notice", "410103007 does not serve division 410103003"),
        (SENDER, 4, "move_in_feedback", "410103007 does not serve her origin 411421"),
        (OTHER, 1, "certificate_query", "410103003 is not the node that notified her move-in"),
        (OTHER, 2, "move_out_notice", "410103003 is not the node that notified her move-in"),
    ];
    assert_eq!(reasons.len(), expect.len(), "{reasons:#?}");
    for ((peer, seq, kind, reason), (want_peer, want_seq, want_kind, want_reason)) in reasons.iter().zip(expect) {
        assert_eq!((*peer, *seq, *kind), (want_peer, want_seq, want_kind));
        assert!(reason.contains(want_reason), "seq {seq} of {peer}: {reason:?} does not say {want_reason:?}");
    }
    // The unknown person's query was applied as an answer saying so, and nothing else was sent.
    let sent: Vec<_> = log.iter().filter(|e| e.direction == pb::Direction::Sent as i32).collect();
    let sent: Vec<_> = sent.iter().map(|e| (e.peer.as_str(), e.kind.as_str())).collect();
    assert_eq!(sent, [(SENDER, "move_in_feedback"), (OTHER, "certificate_answer")]);
    drop(s.stops);
}

/// An envelope whose body is a kind this node does not know (a field number a newer
/// version may use) is refused cleanly, counted, and the channel goes on; an unknown
/// extra field beside a known kind is ignored.
#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_message_kind_from_a_newer_version_is_refused_and_counted() {
    let s = setup().await;
    let key = sender_key(&s.pki);
    let mut client = s.client(&s.pki, SENDER).await.unwrap();

    let mut unknown = s.notice_envelope(1, &[], 1);
    unknown.body = None;
    let mut unknown = unknown.encode_to_vec();
    // Field 99, length-delimited: a message kind from the future.
    unknown.extend(length_delimited(
        99,
        &pb::MoveOutNotice { move_out_date: "2030-01-01".into(), next_division: String::new() }.encode_to_vec(),
    ));
    let decoded = pb::Envelope::decode(unknown.as_slice()).unwrap();
    assert_eq!((decoded.seq, decoded.body), (1, None), "decodes with no body this version knows");

    let mut extended = s.notice(2, &envelope_hash(&unknown), 2);
    // An unknown field beside a known kind: ignored.
    extended.extend(length_delimited(98, b"from a newer version"));
    let third = s.chain(2, &envelope_hash(&extended), 1);
    let batch = vec![unknown, extended, third[0].clone()];
    assert_eq!(exchange(&mut client, signed(batch, &key)).await.unwrap().1, 3);

    let inbound = s.inbound(SENDER).await;
    assert_eq!((inbound.applied_seq, inbound.refused), (3, 1));
    let log = s.log().await;
    let refused: Vec<_> = log.iter().filter(|e| e.direction == pb::Direction::Refused as i32).collect();
    assert_eq!(refused.len(), 1, "{log:?}");
    assert_eq!((refused[0].seq, refused[0].kind.as_str()), (1, "unknown"));
    assert!(refused[0].reason.contains("newer version"), "{:?}", refused[0].reason);
    eprintln!("refused as expected: {}", refused[0].reason);
    assert!(s.person(1).await.is_none(), "the unknown kind had no effect");
    assert!(s.person(2).await.is_some() && s.person(3).await.is_some(), "the known kinds around it applied");
    let (_, body) = s.metrics().await;
    let line = format!("ldx_inbound_refused_total{{node=\"{RECEIVER}\",peer=\"{SENDER}\",to=\"{RECEIVER}\"}} 1");
    assert!(body.lines().any(|l| l == line), "{line} not in\n{body}");
    drop(s.stops);
}

/// Protobuf field `number`, wire type 2, holding `payload`.
fn length_delimited(number: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(&mut out, u64::from(number) << 3 | 2);
    varint(&mut out, payload.len() as u64);
    out.extend_from_slice(payload);
    out
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
