//! Fuzzing the wire: arbitrary and mutated bytes through envelope decoding, and mutated
//! batches through the receiving path: in process (the receiver's own checks,
//! `verify_batch`, head signature included, and `Registry::apply_batch` on a real RocksDB
//! store), and over mutual TLS against a real node process. Nothing may panic, every bad input must be
//! rejected with an error that leaves the channel as it was, and whatever is accepted
//! must continue the hash chain exactly.
//!
//! CI runs 3,000 inputs per target. `LDX_FUZZ_CASES` sets the count of every target,
//! `LDX_FUZZ_DECODE_CASES`, `LDX_FUZZ_APPLY_CASES` and `LDX_FUZZ_WIRE_CASES` one kind's:
//! `LDX_FUZZ_CASES=1000000 LDX_FUZZ_WIRE_CASES=100000 cargo test -p ldx-tests --test
//! fuzz_envelope -- --nocapture --test-threads 1`. Each target prints how many inputs it
//! ran.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ldx_node::clock::ManualClock;
use ldx_node::config::DeadlineConfig;
use ldx_node::crypto::{DataKey, FederationSalt};
use ldx_node::domain::Division;
use ldx_node::exchange::receiver::verify_batch;
use ldx_node::registry::{ApplyError, ExchangeHooks, Registry, Router};
use ldx_node::storage::Store;
use ldx_proto::chain::{Head, envelope_hash};
use ldx_proto::directory::Directory;
use ldx_proto::identity::SignKey;
use ldx_proto::v1::{self as pb, envelope::Body};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::Message;

const RECEIVER: &str = "411421";
const SENDER: &str = "410103007";
const OTHER: &str = "410103003";
const OTHER_ORIGIN: &str = "411723";
const DEFAULT_CASES: u32 = 3_000;

fn cases(kind: &str) -> u32 {
    let read = |name: &str| std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: {v:?}")));
    read(&format!("LDX_FUZZ_{kind}_CASES")).or_else(|| read("LDX_FUZZ_CASES")).unwrap_or(DEFAULT_CASES)
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config { cases, failure_persistence: None, max_shrink_iters: 2_000, ..Config::default() })
}

/// Runs `test` over `cases` inputs and prints how many ran.
fn fuzz<S: Strategy>(name: &str, cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let ran = AtomicU64::new(0);
    let started = Instant::now();
    let mut runner = runner(cases);
    let result = runner.run(&strategy, |input| {
        ran.fetch_add(1, Ordering::Relaxed);
        test(input)
    });
    let ran = ran.load(Ordering::Relaxed);
    eprintln!("fuzz {name}: {ran} inputs in {:.1?}, no panic", started.elapsed());
    if let Err(e) = result {
        panic!("fuzz {name} failed after {ran} inputs: {e}");
    }
    assert!(ran >= u64::from(cases), "fuzz {name} ran {ran} inputs, fewer than {cases}");
}

/// Decoded messages re-encode to bytes that decode to the same message.
fn round_trips<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(message) = M::decode(bytes) {
        let again = M::decode(message.encode_to_vec().as_slice());
        prop_assert_eq!(again.as_ref(), Ok(&message));
    }
    Ok(())
}

fn decode_all(bytes: &[u8]) -> Result<(), TestCaseError> {
    round_trips::<pb::Envelope>(bytes)?;
    round_trips::<pb::SyncBatch>(bytes)?;
    round_trips::<pb::SyncRequest>(bytes)?;
    round_trips::<pb::SyncResponse>(bytes)
}

fn id_number(origin: &str, n: u32) -> String {
    ldx_gateway::synthetic::person(origin, n).id_number
}

/// A message body of one of the known kinds, well-formed or not depending on `n`.
fn body(kind: u8, n: u32) -> Body {
    let origin = if n.is_multiple_of(7) { OTHER_ORIGIN } else { RECEIVER };
    let date = if n.is_multiple_of(11) { "2026-02-30".to_owned() } else { format!("2026-0{}-1{}", n % 9 + 1, n % 10) };
    let person = || {
        Some(pb::PersonDetails { id_number: id_number(origin, n), name: format!("测试{n}"), phone: String::new() })
    };
    match kind % 7 {
        0 => Body::MoveInNotice(pb::MoveInNotice {
            person: person(),
            role: (n % 5) as i32,
            category: (n % 8) as i32,
            division: if n.is_multiple_of(13) { OTHER.into() } else { SENDER.into() },
            address: format!("大学路 {n} 号"),
            move_in_date: date.clone(),
            household_division: if n.is_multiple_of(17) { OTHER_ORIGIN.into() } else { origin.into() },
            feedback_due: date,
        }),
        1 => Body::MoveInFeedback(pb::MoveInFeedback {
            certificate: (n % 6) as i32,
            certificate_number: format!("C{n}"),
            contact: String::new(),
            given_on: date,
        }),
        2 => Body::MoveOutNotice(pb::MoveOutNotice { move_out_date: date, next_division: OTHER.into() }),
        3 => Body::TransferRequest(pb::TransferRequest {
            person: person(),
            separation_date: date.clone(),
            services: vec![pb::ServiceRecord { kind: (n % 6) as i32, date, details: "检查".into() }],
            accept_due: String::new(),
        }),
        4 => Body::TransferAccept(pb::TransferAccept {
            accepted: n.is_multiple_of(2),
            accepted_on: date,
            reason: String::new(),
        }),
        5 => Body::CertificateQuery(pb::CertificateQuery { issue: n.is_multiple_of(2), answer_due: date }),
        _ => Body::CertificateAnswer(pb::CertificateAnswer {
            status: (n % 6) as i32,
            certificate_number: format!("C{n}"),
            valid_until: date,
            reason: String::new(),
        }),
    }
}

/// An envelope of the channel under test about person `n`.
fn envelope(seq: u64, kind: u8, n: u32, salt: &FederationSalt) -> pb::Envelope {
    let n = n % 1000;
    let origin = if n.is_multiple_of(7) { OTHER_ORIGIN } else { RECEIVER };
    pb::Envelope {
        from: SENDER.into(),
        to: RECEIVER.into(),
        seq,
        prev_hash: Vec::new(),
        created_at_ms: 1_790_000_000_000 + i64::from(n),
        person_key: salt.person_key(&id_number(origin, n)).0.to_vec(),
        body: Some(body(kind, n)),
    }
}

/// A change to a byte string: what a flaky link or an attacker might do.
#[derive(Debug, Clone)]
enum ByteMutation {
    Flip { at: usize, bit: u8 },
    Set { at: usize, value: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    Truncate { at: usize },
    Append { bytes: Vec<u8> },
}

fn byte_mutation() -> impl Strategy<Value = ByteMutation> {
    prop_oneof![
        (any::<usize>(), 0..8u8).prop_map(|(at, bit)| ByteMutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| ByteMutation::Set { at, value }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..12))
            .prop_map(|(at, bytes)| ByteMutation::Insert { at, bytes }),
        (any::<usize>(), 1..16usize).prop_map(|(at, len)| ByteMutation::Delete { at, len }),
        any::<usize>().prop_map(|at| ByteMutation::Truncate { at }),
        prop::collection::vec(any::<u8>(), 1..24).prop_map(|bytes| ByteMutation::Append { bytes }),
    ]
}

impl ByteMutation {
    fn apply(&self, bytes: &mut Vec<u8>) {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
        match self {
            Self::Flip { at: i, bit } if !bytes.is_empty() => {
                let i = at(*i, bytes.len());
                bytes[i] ^= 1 << bit;
            }
            Self::Set { at: i, value } if !bytes.is_empty() => {
                let i = at(*i, bytes.len());
                bytes[i] = *value;
            }
            Self::Insert { at: i, bytes: new } => {
                let i = at(*i, bytes.len() + 1);
                bytes.splice(i..i, new.iter().copied());
            }
            Self::Delete { at: i, len } if !bytes.is_empty() => {
                let i = at(*i, bytes.len());
                let end = (i + len).min(bytes.len());
                bytes.drain(i..end);
            }
            Self::Truncate { at: i } => {
                let i = at(*i, bytes.len() + 1);
                bytes.truncate(i);
            }
            Self::Append { bytes: new } => bytes.extend_from_slice(new),
            _ => {}
        }
    }
}

#[test]
fn arbitrary_bytes_decode_or_fail_cleanly() {
    fuzz("decode arbitrary bytes", cases("DECODE"), prop::collection::vec(any::<u8>(), 0..1024), |bytes| {
        decode_all(&bytes)
    });
}

#[test]
fn mutated_envelopes_and_batches_decode_or_fail_cleanly() {
    let strategy = (
        prop::collection::vec((any::<u8>(), any::<u32>()), 1..5),
        prop::collection::vec(byte_mutation(), 1..5),
        any::<bool>(),
    );
    let salt = FederationSalt::from_bytes(SALT);
    fuzz("decode mutated envelopes and batches", cases("DECODE"), strategy, |(parts, mutations, whole)| {
        let envelopes: Vec<_> = parts
            .iter()
            .enumerate()
            .map(|(i, (kind, n))| envelope(i as u64 + 1, *kind, *n, &salt).encode_to_vec())
            .collect();
        let mut bytes = if whole {
            pb::SyncRequest {
                kind: Some(pb::sync_request::Kind::Batch(pb::SyncBatch { envelopes, head_signature: vec![7; 64] })),
            }
            .encode_to_vec()
        } else {
            envelopes[0].clone()
        };
        for m in &mutations {
            m.apply(&mut bytes);
        }
        decode_all(&bytes)
    });
}

const SALT: [u8; 32] = [4; 32];

/// The receiving node under test: a real store in a temporary directory.
struct Receiver {
    _dir: tempfile::TempDir,
    registry: Registry,
    woken: Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>,
    keys: Keys,
}

/// The sender's signing key, and another node's.
struct Keys {
    sender: SignKey,
    other: SignKey,
}

fn receiver() -> Receiver {
    let dir = tempfile::Builder::new().prefix("ldx-fuzz-").tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), RECEIVER, false).unwrap());
    let clock = Arc::new(ManualClock::new("2026-11-23T02:00:00Z".parse().unwrap()));
    let (wake, woken) = tokio::sync::mpsc::unbounded_channel();
    let nodes = [SENDER, OTHER, RECEIVER, OTHER_ORIGIN];
    let router: Router = Arc::new(move |code: &str| {
        (1..=code.len()).rev().find_map(|n| nodes.iter().find(|d| **d == &code[..n])).map(|d| (*d).to_owned())
    });
    let registry = Registry::new(
        store,
        DataKey::from_bytes(&[3; 32]),
        FederationSalt::from_bytes(SALT),
        clock,
        Division::parse("division", RECEIVER).unwrap(),
    )
    .unwrap()
    .with_exchange(ExchangeHooks { router, wake, deadlines: DeadlineConfig::default() });
    Receiver {
        _dir: dir,
        registry,
        woken: Mutex::new(woken),
        keys: Keys { sender: SignKey::generate(), other: SignKey::generate() },
    }
}

/// The directory the receiver checks batches against: it lists the sender's and the other
/// node's signing keys.
fn directory(keys: &Keys) -> Directory {
    let federation = SignKey::generate();
    let entry = |division: &str, n: u8, key: &SignKey| pb::DirectoryEntry {
        division: division.into(),
        endpoint: "https://127.0.0.1:9".into(),
        tls_cert_sha256: vec![n; 32],
        signing_key: key.public().to_bytes().to_vec(),
    };
    let body = pb::DirectoryBody {
        version: 1,
        issued_at_ms: 1,
        entries: vec![entry(SENDER, 1, &keys.sender), entry(OTHER, 2, &keys.other)],
        ..Default::default()
    };
    Directory::verify(ldx_proto::directory::sign(&body, &federation), &federation.public()).unwrap()
}

/// Who signs the head of a fuzzed batch.
#[derive(Debug, Clone, Copy)]
enum Signer {
    /// The sender, over whatever it sends (a buggy or compromised sender).
    Honest,
    /// The signature made before the mutation (an attacker on the path).
    Original,
    /// Another node's key.
    Other,
    Garbage,
}

/// A change to one envelope's fields before it is encoded.
#[derive(Debug, Clone)]
enum FieldMutation {
    None,
    Seq(i8),
    PrevHash(Vec<u8>),
    From,
    To,
    PersonKey(usize),
    NoBody,
    Kind(u8),
}

fn field_mutation() -> impl Strategy<Value = FieldMutation> {
    prop_oneof![
        4 => Just(FieldMutation::None),
        1 => (-2..=2i8).prop_map(FieldMutation::Seq),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(FieldMutation::PrevHash),
        1 => Just(FieldMutation::From),
        1 => Just(FieldMutation::To),
        1 => (0..40usize).prop_map(FieldMutation::PersonKey),
        1 => Just(FieldMutation::NoBody),
        1 => any::<u8>().prop_map(FieldMutation::Kind),
    ]
}

impl FieldMutation {
    fn apply(&self, e: &mut pb::Envelope, salt: &FederationSalt) {
        match self {
            Self::None => {}
            Self::Seq(d) => e.seq = e.seq.wrapping_add_signed(i64::from(*d)),
            Self::PrevHash(h) => e.prev_hash = h.clone(),
            Self::From => e.from = OTHER.into(),
            Self::To => e.to = OTHER_ORIGIN.into(),
            Self::PersonKey(len) => e.person_key.resize(*len, 0xab),
            Self::NoBody => e.body = None,
            Self::Kind(k) => {
                // Another kind, about the same person.
                let n = u32::from(*k);
                e.body = Some(body(*k, n));
                e.person_key = envelope(e.seq, *k, n, salt).person_key;
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Plan {
    parts: Vec<(u8, u32)>,
    target: usize,
    field: FieldMutation,
    bytes: Option<ByteMutation>,
    /// After a byte mutation, link the later envelopes to the mutated bytes.
    relink: bool,
    signer: Signer,
}

fn plan() -> impl Strategy<Value = Plan> {
    let signer = prop_oneof![
        4 => Just(Signer::Honest),
        2 => Just(Signer::Original),
        1 => Just(Signer::Other),
        1 => Just(Signer::Garbage),
    ];
    (
        prop::collection::vec((any::<u8>(), any::<u32>()), 1..5),
        any::<usize>(),
        field_mutation(),
        prop::option::weighted(0.5, byte_mutation()),
        any::<bool>(),
        signer,
    )
        .prop_map(|(parts, target, field, bytes, relink, signer)| Plan {
            target: target % parts.len(),
            parts,
            field,
            bytes,
            relink,
            signer,
        })
}

/// A fuzzed batch for a channel at `applied_seq` with head `last_hash`.
struct Built {
    batch: pb::SyncBatch,
    /// Whether the bytes differ from what an honest sender would have sent.
    changed: bool,
    /// Whether the head signature is the sender's over the head the batch ends at, as the
    /// plan made it (not as the receiver's check finds it).
    signed_by_sender: bool,
}

impl Built {
    /// Whether a correct receiver at `applied_seq` / `last_hash` must apply this batch,
    /// decided from the plan and the bytes alone: signed by the sender over its head,
    /// every envelope within the size limit, decoding, from the sender to the receiver,
    /// and continuing the chain.
    fn must_apply(&self, applied_seq: u64, last_hash: &[u8]) -> bool {
        if !self.signed_by_sender {
            return false;
        }
        let mut decoded = Vec::new();
        for bytes in &self.batch.envelopes {
            let Ok(e) = pb::Envelope::decode(bytes.as_slice()) else { return false };
            if bytes.len() > ldx_node::exchange::MAX_ENVELOPE_BYTES || e.from != SENDER || e.to != RECEIVER {
                return false;
            }
            decoded.push((bytes.clone(), e));
        }
        continues(applied_seq, last_hash, &decoded)
    }
}

/// Builds the batch an honest sender would send next (linked from the channel head and
/// signed), then mutates it as `plan` says.
fn build(plan: &Plan, applied_seq: u64, last_hash: &[u8], salt: &FederationSalt, keys: &Keys) -> Built {
    let mut envelopes: Vec<pb::Envelope> = plan
        .parts
        .iter()
        .enumerate()
        .map(|(i, (kind, n))| envelope(applied_seq + 1 + i as u64, *kind, *n, salt))
        .collect();
    let link = |envelopes: &mut [pb::Envelope], from: usize, prev: &[u8]| -> Vec<Vec<u8>> {
        let mut prev = prev.to_vec();
        envelopes[from..]
            .iter_mut()
            .map(|e| {
                e.prev_hash = prev.clone();
                let bytes = e.encode_to_vec();
                prev = envelope_hash(&bytes).to_vec();
                bytes
            })
            .collect()
    };
    let original = link(&mut envelopes, 0, last_hash);
    let original_signature = {
        let hash = envelope_hash(original.last().unwrap());
        Head { from: SENDER, to: RECEIVER, seq: envelopes.last().unwrap().seq, hash: &hash }.sign(&keys.sender)
    };

    // Field mutation: the sender encodes and links the changed envelope as it is.
    let mut sent = original.clone();
    if !matches!(plan.field, FieldMutation::None) {
        let t = plan.target;
        let mut changed = envelopes.clone();
        plan.field.apply(&mut changed[t], salt);
        let prev = if t == 0 { last_hash.to_vec() } else { envelope_hash(&sent[t - 1]).to_vec() };
        if !matches!(plan.field, FieldMutation::PrevHash(_)) {
            changed[t].prev_hash = prev;
        }
        sent[t] = changed[t].encode_to_vec();
        let next = envelope_hash(&sent[t]).to_vec();
        sent.splice(t + 1.., link(&mut changed, t + 1, &next));
    }
    // Byte mutation: after encoding, relinked or not.
    if let Some(m) = &plan.bytes {
        let t = plan.target;
        m.apply(&mut sent[t]);
        if plan.relink && t + 1 < sent.len() {
            let mut rest: Vec<_> =
                sent[t + 1..].iter().filter_map(|b| pb::Envelope::decode(b.as_slice()).ok()).collect();
            if rest.len() == sent.len() - t - 1 {
                let next = envelope_hash(&sent[t]).to_vec();
                sent.splice(t + 1.., link(&mut rest, 0, &next));
            }
        }
    }
    let last_seq =
        pb::Envelope::decode(sent.last().unwrap().as_slice()).map_or(envelopes.last().unwrap().seq, |e| e.seq);
    let hash = envelope_hash(sent.last().unwrap());
    let head = Head { from: SENDER, to: RECEIVER, seq: last_seq, hash: &hash };
    let head_signature = match plan.signer {
        Signer::Honest => head.sign(&keys.sender),
        Signer::Original => original_signature,
        Signer::Other => head.sign(&keys.other),
        Signer::Garbage => vec![0x5a; 64],
    };
    let signed_by_sender = match plan.signer {
        Signer::Honest => true,
        // The signature made before the mutation holds for the head only if the last
        // envelope's bytes (its seq and hash) are what was signed.
        Signer::Original => sent.last() == original.last(),
        Signer::Other | Signer::Garbage => false,
    };
    Built { changed: sent != original, signed_by_sender, batch: pb::SyncBatch { envelopes: sent, head_signature } }
}

/// Whether `envelopes` continue the channel at `applied_seq` / `last_hash` without a gap,
/// a replay or a break: what the receiver must check before applying.
fn continues(applied_seq: u64, last_hash: &[u8], envelopes: &[(Vec<u8>, pb::Envelope)]) -> bool {
    let mut prev = last_hash.to_vec();
    for (i, (bytes, e)) in envelopes.iter().enumerate() {
        if e.seq != applied_seq + 1 + i as u64 || e.prev_hash != prev {
            return false;
        }
        prev = envelope_hash(bytes).to_vec();
    }
    true
}

#[test]
fn mutated_batches_never_corrupt_the_channel() {
    let r = receiver();
    let salt = FederationSalt::from_bytes(SALT);
    let applied = AtomicU64::new(0);
    let rejected = AtomicU64::new(0);
    let directory = directory(&r.keys);
    fuzz("verify and apply mutated batches", cases("APPLY"), plan(), |plan| {
        let before = r.registry.inbound(SENDER, RECEIVER).unwrap();
        let log_before = r.registry.log_after(0, usize::MAX).unwrap().len();
        let built = build(&plan, before.applied_seq, &before.last_hash, &salt, &r.keys);
        let must_apply = built.must_apply(before.applied_seq, &before.last_hash);
        let Built { batch, changed, .. } = built;

        let outcome = verify_batch(&directory, SENDER, RECEIVER, batch).map(|envelopes| {
            let result = r.registry.apply_batch(SENDER, RECEIVER, &envelopes);
            (envelopes, result)
        });
        while r.woken.lock().unwrap().try_recv().is_ok() {}
        let after = r.registry.inbound(SENDER, RECEIVER).unwrap();
        let log_after = r.registry.log_after(0, usize::MAX).unwrap().len();
        prop_assert_eq!(
            matches!(outcome, Ok((_, Ok(_)))),
            must_apply,
            "applied or refused against the plan ({:?} signer)",
            plan.signer
        );
        if !must_apply {
            prop_assert_eq!(log_after, log_before, "a refused batch left message-log entries");
        }
        match outcome {
            Ok((envelopes, Ok(done))) => {
                applied.fetch_add(1, Ordering::Relaxed);
                prop_assert!(
                    matches!(plan.signer, Signer::Honest | Signer::Original),
                    "a batch signed with another node's key, or not at all, was applied"
                );
                prop_assert!(
                    !(changed && matches!(plan.signer, Signer::Original)),
                    "bytes the sender never signed were applied"
                );
                // One entry per envelope consumed, and one per answer it caused.
                prop_assert!(log_after >= log_before + envelopes.len(), "an envelope consumed without a log entry");
                // Accepted: exactly the consecutive continuation of the chain.
                prop_assert!(continues(before.applied_seq, &before.last_hash, &envelopes), "a break was applied");
                prop_assert_eq!(done.applied + done.refused, envelopes.len());
                prop_assert_eq!(after.applied_seq, before.applied_seq + envelopes.len() as u64);
                prop_assert_eq!(done.applied_seq, after.applied_seq);
                prop_assert_eq!(&after.last_hash, &envelope_hash(&envelopes.last().unwrap().0).to_vec());
                prop_assert_eq!(after.refused, before.refused + done.refused as u64);
                if !changed {
                    prop_assert_eq!(done.applied + done.refused, plan.parts.len());
                }
            }
            Ok((envelopes, Err(e))) => {
                rejected.fetch_add(1, Ordering::Relaxed);
                prop_assert!(
                    !continues(before.applied_seq, &before.last_hash, &envelopes),
                    "a continuation was refused: {e}"
                );
                prop_assert!(
                    matches!(
                        e,
                        ApplyError::Replay { .. }
                            | ApplyError::Gap { .. }
                            | ApplyError::NotConsecutive { .. }
                            | ApplyError::ChainBroken { .. }
                    ),
                    "the node failed inside: {e}"
                );
                prop_assert!(changed, "an honest batch was refused: {e}");
                prop_assert_eq!(&after, &before);
            }
            Err(_) => {
                rejected.fetch_add(1, Ordering::Relaxed);
                prop_assert!(
                    changed || !matches!(plan.signer, Signer::Honest | Signer::Original),
                    "an honest batch failed verification"
                );
                prop_assert_eq!(&after, &before);
            }
        }
        Ok(())
    });
    let (applied, rejected) = (applied.load(Ordering::Relaxed), rejected.load(Ordering::Relaxed));
    let state = r.registry.inbound(SENDER, RECEIVER).unwrap();
    eprintln!(
        "fuzz apply: {applied} batches applied, {rejected} rejected; channel at seq {} with {} envelopes refused without effect",
        state.applied_seq, state.refused
    );
    assert!(applied > 0 && rejected > 0, "the fuzzer exercised only one side: {applied} applied, {rejected} rejected");
}

/// `fut`, or a test failure naming `what` when the node does not answer in time.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T, TestCaseError> {
    tokio::time::timeout(std::time::Duration::from_secs(20), fut)
        .await
        .map_err(|_| TestCaseError::fail(format!("the node gave no answer within 20 s waiting for {what}")))
}

/// The same fuzzed batches against a real node process over mutual TLS, each sent on a
/// fresh `Exchange.Sync` stream: the node must accept exactly the batches that pass the
/// receiver's checks and continue the chain, answer every other one with an error, and
/// keep serving. One round trip each.
#[tokio::test(flavor = "multi_thread")]
async fn mutated_batches_over_mutual_tls_never_corrupt_the_channel() -> anyhow::Result<()> {
    use ldx_tests::cluster::Cluster;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

    let cluster = Cluster::builder()
        .binaries(env!("CARGO_BIN_EXE_ldx-node-harness"), env!("CARGO_BIN_EXE_ldx-gateway-harness"))
        .nodes([SENDER, RECEIVER])
        .sync_writes(false)
        .start()
        .await?;
    let pki = cluster.pki_dir();
    let node = ldx_gateway::pki::node_dir(pki, SENDER);
    let keys = Keys {
        sender: SignKey::load(&node.join(ldx_gateway::pki::SIGNING_KEY))?,
        other: SignKey::load(&ldx_gateway::pki::node_dir(pki, RECEIVER).join(ldx_gateway::pki::SIGNING_KEY))?,
    };
    let salt = FederationSalt::load(&pki.join(ldx_gateway::pki::FEDERATION_SALT))?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(pki.join(ldx_gateway::pki::CA_CERT))?))
        .identity(Identity::from_pem(
            std::fs::read(node.join(ldx_gateway::pki::NODE_CERT))?,
            std::fs::read(node.join(ldx_gateway::pki::NODE_KEY))?,
        ))
        .domain_name(ldx_proto::identity::division_dns_name(RECEIVER));
    let peer = cluster.node(RECEIVER).peer_addr().expect("running");
    let channel = Endpoint::from_shared(format!("https://{peer}"))?.tls_config(tls)?.connect().await?;
    let client = pb::exchange_client::ExchangeClient::new(channel);

    let cases = cases("WIRE");
    let expected = Mutex::new((0u64, Vec::new()));
    let counts = Mutex::new((0u64, 0u64));
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        fuzz("mutated batches over mutual TLS", cases, plan(), |plan| {
            handle.block_on(async {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
                request.metadata_mut().insert("ldx-channel-to", RECEIVER.parse().unwrap());
                let mut responses = within("Sync to open", client.clone().sync(request))
                    .await?
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                    .into_inner();
                let hello = match within("the Hello", responses.message())
                    .await?
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                    .and_then(|r| r.kind)
                {
                    Some(pb::sync_response::Kind::Hello(hello)) => hello,
                    other => return Err(TestCaseError::fail(format!("expected Hello, got {other:?}"))),
                };
                let state = expected.lock().unwrap().clone();
                prop_assert_eq!(
                    (hello.last_applied_seq, &hello.last_hash),
                    (state.0, &state.1),
                    "the channel moved unseen"
                );
                let built = build(&plan, hello.last_applied_seq, &hello.last_hash, &salt, &keys);
                // The verdict comes from the plan, not from the receiver's own check.
                let accept = built.must_apply(hello.last_applied_seq, &hello.last_hash);
                let Built { batch, changed, .. } = built;
                let count = batch.envelopes.len() as u64;
                let last = envelope_hash(batch.envelopes.last().unwrap()).to_vec();
                tx.send(pb::SyncRequest { kind: Some(pb::sync_request::Kind::Batch(batch)) }).await.unwrap();
                let answer = within("the answer to a batch", responses.message()).await?;
                match answer {
                    Ok(Some(pb::SyncResponse { kind: Some(pb::sync_response::Kind::Ack(ack)) })) => {
                        counts.lock().unwrap().0 += 1;
                        prop_assert!(accept, "the node applied a batch it must refuse");
                        prop_assert_eq!(ack.applied_seq, hello.last_applied_seq + count);
                        *expected.lock().unwrap() = (ack.applied_seq, last);
                    }
                    Err(status) => {
                        counts.lock().unwrap().1 += 1;
                        prop_assert!(!accept, "the node refused a good batch: {:?}", status);
                        prop_assert!(changed || !matches!(plan.signer, Signer::Honest | Signer::Original));
                        prop_assert_ne!(status.code(), tonic::Code::Internal, "{:?}", status);
                    }
                    other => return Err(TestCaseError::fail(format!("expected Ack or an error, got {other:?}"))),
                }
                Ok(())
            })
        });
    });
    let (applied, refused) = *counts.lock().unwrap();
    eprintln!("fuzz over the wire: {applied} batches applied, {refused} refused, the node serving throughout");
    assert!(applied > 0 && refused > 0, "one side only: {applied} applied, {refused} refused");
    let status = cluster.node(RECEIVER).status().await?;
    let inbound = status.inbound.iter().find(|c| c.peer == SENDER).expect("the channel");
    let expected = expected.lock().unwrap().0;
    assert_eq!(inbound.applied_seq, expected, "Monitor.Status disagrees with the acks");
    Ok(())
}
