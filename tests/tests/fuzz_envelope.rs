//! Fuzzing the wire: arbitrary and mutated bytes through envelope decoding, and mutated
//! batches through the receiving path (the receiver's checks, the head signature and
//! `Registry::apply_batch` on a real RocksDB store). Nothing may panic, every bad input
//! must be rejected with an error that leaves the channel as it was, and whatever is
//! accepted must continue the hash chain exactly.
//!
//! CI runs a modest number of inputs per target; `LDX_FUZZ_CASES` sets it for every
//! target, `LDX_FUZZ_DECODE_CASES` and `LDX_FUZZ_APPLY_CASES` for one kind:
//! `LDX_FUZZ_CASES=1000000 cargo test -p ldx-tests --test fuzz_envelope -- --nocapture`.
//! Each target prints how many inputs it ran.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ldx_node::clock::ManualClock;
use ldx_node::config::DeadlineConfig;
use ldx_node::crypto::{DataKey, FederationSalt};
use ldx_node::domain::Division;
use ldx_node::exchange::MAX_ENVELOPE_BYTES;
use ldx_node::registry::{ApplyError, ExchangeHooks, Registry, Router};
use ldx_node::storage::Store;
use ldx_proto::chain::{Head, envelope_hash};
use ldx_proto::identity::{PublicKey, SignKey};
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
    let origin = if n % 7 == 0 { OTHER_ORIGIN } else { RECEIVER };
    let date = if n % 11 == 0 { "2026-02-30".to_owned() } else { format!("2026-0{}-1{}", n % 9 + 1, n % 10) };
    let person = || {
        Some(pb::PersonDetails { id_number: id_number(origin, n), name: format!("测试{n}"), phone: String::new() })
    };
    match kind % 7 {
        0 => Body::MoveInNotice(pb::MoveInNotice {
            person: person(),
            role: (n % 5) as i32,
            category: (n % 8) as i32,
            division: if n % 13 == 0 { OTHER.into() } else { SENDER.into() },
            address: format!("大学路 {n} 号"),
            move_in_date: date.clone(),
            household_division: if n % 17 == 0 { OTHER_ORIGIN.into() } else { String::new() },
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
        4 => {
            Body::TransferAccept(pb::TransferAccept { accepted: n % 2 == 0, accepted_on: date, reason: String::new() })
        }
        5 => Body::CertificateQuery(pb::CertificateQuery { issue: n % 2 == 0, answer_due: date }),
        _ => Body::CertificateAnswer(pb::CertificateAnswer {
            status: (n % 6) as i32,
            certificate_number: format!("C{n}"),
            valid_until: date,
            reason: String::new(),
        }),
    }
}

/// An envelope of the channel under test about person `n`.
fn envelope(seq: u64, kind: u8, n: u32) -> pb::Envelope {
    let n = n % 1000;
    let origin = if n % 7 == 0 { OTHER_ORIGIN } else { RECEIVER };
    let salt = FederationSalt::from_bytes(SALT);
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
    fuzz("decode mutated envelopes and batches", cases("DECODE"), strategy, |(parts, mutations, whole)| {
        let envelopes: Vec<_> =
            parts.iter().enumerate().map(|(i, (kind, n))| envelope(i as u64 + 1, *kind, *n).encode_to_vec()).collect();
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
    sender_key: SignKey,
    sender_public: PublicKey,
    other_key: SignKey,
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
    let sender_key = SignKey::generate();
    Receiver {
        _dir: dir,
        registry,
        woken: Mutex::new(woken),
        sender_public: sender_key.public(),
        sender_key,
        other_key: SignKey::generate(),
    }
}

/// The receiver's checks before anything is applied (as `ldx.v1.Exchange.Sync` makes
/// them for the TLS-identified sender): sizes, decoding, sender and addressee of every
/// envelope, and the sender's signature over the head the batch ends at.
fn verify(batch: pb::SyncBatch, key: &PublicKey) -> Result<Vec<(Vec<u8>, pb::Envelope)>, String> {
    if batch.envelopes.is_empty() {
        return Err("batch holds no envelopes".into());
    }
    let mut envelopes = Vec::new();
    for (i, bytes) in batch.envelopes.into_iter().enumerate() {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(format!("envelope {i} over the limit"));
        }
        let envelope = pb::Envelope::decode(bytes.as_slice()).map_err(|e| format!("envelope {i}: {e}"))?;
        if envelope.from != SENDER || envelope.to != RECEIVER {
            return Err(format!("envelope {i}: channel {} -> {}", envelope.from, envelope.to));
        }
        envelopes.push((bytes, envelope));
    }
    let (bytes, last) = envelopes.last().expect("non-empty");
    let hash = envelope_hash(bytes);
    Head { from: SENDER, to: RECEIVER, seq: last.seq, hash: &hash }
        .verify(key, &batch.head_signature)
        .map_err(|e| format!("head signature: {e}"))?;
    Ok(envelopes)
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
    fn apply(&self, e: &mut pb::Envelope) {
        match self {
            Self::None => {}
            Self::Seq(d) => e.seq = e.seq.wrapping_add_signed(i64::from(*d)),
            Self::PrevHash(h) => e.prev_hash = h.clone(),
            Self::From => e.from = OTHER.into(),
            Self::To => e.to = OTHER_ORIGIN.into(),
            Self::PersonKey(len) => e.person_key.resize(*len, 0xab),
            Self::NoBody => e.body = None,
            Self::Kind(k) => e.body = Some(body(*k, u32::from(*k))),
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

#[test]
fn mutated_batches_never_corrupt_the_channel() {
    let r = receiver();
    let applied = AtomicU64::new(0);
    let rejected = AtomicU64::new(0);
    fuzz("verify and apply mutated batches", cases("APPLY"), plan(), |plan| {
        let before = r.registry.inbound(SENDER, RECEIVER).unwrap();
        // The batch an honest sender would send next, as bytes linked from the channel head.
        let mut envelopes: Vec<pb::Envelope> = plan
            .parts
            .iter()
            .enumerate()
            .map(|(i, (kind, n))| envelope(before.applied_seq + 1 + i as u64, *kind, *n))
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
        let original = link(&mut envelopes, 0, &before.last_hash);
        let original_signature = {
            let hash = envelope_hash(original.last().unwrap());
            Head { from: SENDER, to: RECEIVER, seq: envelopes.last().unwrap().seq, hash: &hash }.sign(&r.sender_key)
        };

        // Field mutation: the sender encodes and links the changed envelope as it is.
        let mut sent = original.clone();
        if !matches!(plan.field, FieldMutation::None) {
            let t = plan.target;
            let mut changed = envelopes.clone();
            plan.field.apply(&mut changed[t]);
            let prev = if t == 0 { before.last_hash.clone() } else { envelope_hash(&sent[t - 1]).to_vec() };
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
            Signer::Honest => head.sign(&r.sender_key),
            Signer::Original => original_signature,
            Signer::Other => head.sign(&r.other_key),
            Signer::Garbage => vec![0x5a; 64],
        };
        let changed = sent != original;
        let batch = pb::SyncBatch { envelopes: sent.clone(), head_signature };

        let outcome = verify(batch, &r.sender_public).map(|envelopes| {
            let result = r.registry.apply_batch(SENDER, RECEIVER, &envelopes);
            (envelopes, result)
        });
        while r.woken.lock().unwrap().try_recv().is_ok() {}
        let after = r.registry.inbound(SENDER, RECEIVER).unwrap();
        match outcome {
            Ok((envelopes, Ok(done))) => {
                applied.fetch_add(1, Ordering::Relaxed);
                prop_assert!(
                    !(changed && matches!(plan.signer, Signer::Original)),
                    "bytes the sender never signed were applied"
                );
                // Accepted: exactly the consecutive continuation of the chain.
                let mut prev = before.last_hash.clone();
                for (i, (bytes, e)) in envelopes.iter().enumerate() {
                    prop_assert_eq!(e.seq, before.applied_seq + 1 + i as u64);
                    prop_assert_eq!(&e.prev_hash, &prev);
                    prev = envelope_hash(bytes).to_vec();
                }
                prop_assert_eq!(done.applied + done.refused, envelopes.len());
                prop_assert_eq!(after.applied_seq, before.applied_seq + envelopes.len() as u64);
                prop_assert_eq!(done.applied_seq, after.applied_seq);
                prop_assert_eq!(&after.last_hash, &prev);
                prop_assert_eq!(after.refused, before.refused + done.refused as u64);
                if !changed {
                    prop_assert_eq!(done.applied + done.refused, plan.parts.len());
                }
            }
            Ok((_, Err(e))) => {
                rejected.fetch_add(1, Ordering::Relaxed);
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
