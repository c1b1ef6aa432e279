//! The registry's exchange without a network: envelopes carried between two registries by
//! hand, to pin down exactly-once, in-order apply and every flow's effect at both ends.

use std::sync::Arc;

use ldx_proto::v1 as pb;
use prost::Message;

use super::*;
use crate::clock::ManualClock;
use crate::config::DeadlineConfig;
use crate::domain::id::with_check_digit;

const DEST: &str = "410103007";
const WORK: &str = "410103003";
const ORIGIN: &str = "411421";
/// 中原区, a district of Zhengzhou like DEST's 二七区.
const ZHONGYUAN: &str = "410102";

struct Node {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    registry: Registry,
    _woken: tokio::sync::mpsc::UnboundedReceiver<String>,
}

fn node(division: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), division, false).unwrap());
    let clock = Arc::new(ManualClock::new("2026-11-23T02:00:00Z".parse().unwrap()));
    let (wake, woken) = tokio::sync::mpsc::unbounded_channel();
    let nodes = [DEST, WORK, ORIGIN, "410103008", ZHONGYUAN];
    let router: Router = Arc::new(move |code: &str| {
        (1..=code.len()).rev().find_map(|n| nodes.iter().find(|d| **d == &code[..n])).map(|d| (*d).to_owned())
    });
    let registry = Registry::new(
        store.clone(),
        DataKey::from_bytes(&[3; 32]),
        FederationSalt::from_bytes([4; 32]),
        clock,
        Division::parse("division", division).unwrap(),
    )
    .unwrap()
    .with_exchange(ExchangeHooks { router, wake, deadlines: DeadlineConfig::default() });
    Node { _dir: dir, store, registry, _woken: woken }
}

fn id(n: u32) -> String {
    with_check_digit(&format!("41142119900101{n:03}"))
}

fn move_in(n: u32, division: &str, role: pb::Role) -> pb::RegisterMoveInRequest {
    pb::RegisterMoveInRequest {
        id_number: id(n),
        name: format!("测试{n}"),
        phone: "13800000000".into(),
        category: if role == pb::Role::Workplace { pb::Category::Organisation } else { pb::Category::MixedCommunity }
            as i32,
        role: role as i32,
        division: division.into(),
        address: format!("路 {n} 号"),
        date: "2026-03-01".into(),
        household_division: String::new(),
        urgent: false,
        reason_of_stay: 0,
    }
}

/// The pending envelopes of `from`'s channel to `to`, as a receiver gets them.
fn pending(from: &Node, to: &str) -> Vec<(Vec<u8>, pb::Envelope)> {
    unacked(&from.registry, to)
}

/// The envelopes of `registry`'s channel to `to` that are not acked yet, decoded.
pub(super) fn unacked(registry: &Registry, to: &str) -> Vec<(Vec<u8>, pb::Envelope)> {
    let state = registry.outbound_to(to);
    let acked = state.acked_seq;
    registry
        .outbox_batch(to, acked + 1, state.head_seq, 10_000, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, bytes)| {
            let envelope = pb::Envelope::decode(bytes.as_slice()).unwrap();
            (bytes, envelope)
        })
        .collect()
}

/// Carries everything pending from `from` to `to` and acks it, as a channel would.
fn deliver(from: &Node, to: &Node) -> ApplyOutcome {
    let (sender, receiver) = (from.registry.division().as_str(), to.registry.division().as_str());
    let batch = pending(from, receiver);
    let outcome = to.registry.apply_batch(sender, receiver, &batch).unwrap();
    from.registry.ack(receiver, outcome.applied_seq).unwrap();
    outcome
}

fn person(node: &Node, n: u32) -> pb::Person {
    node.registry.get(&pb::GetPersonRequest { id_number: id(n) }).unwrap()
}

fn sync(p: &pb::Person) -> pb::SyncState {
    p.sync.clone().unwrap_or_default()
}

#[test]
fn a_move_in_notifies_the_origin_which_answers_with_feedback() {
    let (dest, origin) = (node(DEST), node(ORIGIN));
    dest.registry.move_in(&move_in(1, DEST, pb::Role::Residence)).unwrap();
    assert_eq!(sync(&person(&dest, 1)).feedback, "awaiting");
    assert_eq!(sync(&person(&dest, 1)).feedback_due, "2026-12-07", "7 + 7 days by default");
    assert_eq!(dest.store.due_items().unwrap().len(), 1);

    let outcome = deliver(&dest, &origin);
    assert_eq!(outcome, ApplyOutcome { applied_seq: 1, applied: 1, refused: 0 });
    let at_origin = person(&origin, 1);
    assert_eq!(at_origin.role, pb::Role::Origin as i32);
    assert_eq!(at_origin.category, pb::Category::OutMigrant as i32);
    assert_eq!(at_origin.name, "测试1");
    assert_eq!(sync(&at_origin).notified_by, DEST);

    assert_eq!(deliver(&origin, &dest).applied, 1);
    let at_dest = person(&dest, 1);
    assert_eq!(sync(&at_dest).feedback, "received");
    assert_eq!(sync(&at_dest).certificate, pb::CertificateStatus::None as i32);
    assert!(dest.store.due_items().unwrap().is_empty(), "the feedback closes the due item");
    assert_eq!(dest.registry.outbound()[0].1.acked_seq, 1);
    assert!(pending(&dest, ORIGIN).is_empty(), "acked envelopes leave the outbox");
    verify_audit_chain(&dest.store).unwrap();
    verify_audit_chain(&origin.store).unwrap();
}

#[test]
fn a_batch_applies_once_and_replays_gaps_and_broken_chains_change_nothing() {
    let (dest, origin) = (node(DEST), node(ORIGIN));
    for n in 1..=5 {
        dest.registry.move_in(&move_in(n, DEST, pb::Role::Residence)).unwrap();
    }
    let batch = pending(&dest, ORIGIN);
    assert_eq!(batch.iter().map(|(_, e)| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);

    let err = origin.registry.apply_batch(DEST, ORIGIN, &batch[1..]).unwrap_err();
    assert!(matches!(err, ApplyError::Gap { first: 2, applied: 0, .. }), "{err}");
    let mut broken = batch.clone();
    broken[2].1.prev_hash = vec![0; 32];
    let err = origin.registry.apply_batch(DEST, ORIGIN, &broken).unwrap_err();
    assert!(matches!(err, ApplyError::ChainBroken { seq: 3 }), "{err}");
    let mut skipping = batch.clone();
    skipping.remove(2);
    let err = origin.registry.apply_batch(DEST, ORIGIN, &skipping).unwrap_err();
    assert!(matches!(err, ApplyError::NotConsecutive { seq: 4, prev: 2 }), "{err}");
    assert_eq!(origin.registry.inbound(DEST, ORIGIN).unwrap().applied_seq, 0);
    assert_eq!(origin.store.persons_after(None).count(), 0, "nothing applied");

    assert_eq!(origin.registry.apply_batch(DEST, ORIGIN, &batch[..2]).unwrap().applied_seq, 2);
    let err = origin.registry.apply_batch(DEST, ORIGIN, &batch[..3]).unwrap_err();
    assert!(matches!(err, ApplyError::Replay { first: 1, last: 3, applied: 2, .. }), "{err}");
    assert_eq!(origin.registry.apply_batch(DEST, ORIGIN, &batch[2..]).unwrap().applied_seq, 5);
    assert_eq!(origin.store.persons_after(None).count(), 5);

    let applied: Vec<u64> = origin
        .registry
        .log_after(0, 100)
        .unwrap()
        .into_iter()
        .filter(|(_, r)| r.direction == pb::Direction::Applied as i32)
        .map(|(_, r)| r.seq)
        .collect();
    assert_eq!(applied, [1, 2, 3, 4, 5], "each applied once, in order");
}

#[test]
fn an_envelope_the_sender_may_not_send_is_consumed_without_effect() {
    let (dest, origin) = (node(DEST), node(ORIGIN));
    dest.registry.move_in(&move_in(1, DEST, pb::Role::Residence)).unwrap();
    dest.registry.move_in(&move_in(2, DEST, pb::Role::Residence)).unwrap();
    let mut batch = pending(&dest, ORIGIN);
    // A notice whose person_key is not her ID's: refused, and the next one still applies.
    batch[0].1.person_key = vec![9; 32];
    let outcome = origin.registry.apply_batch(DEST, ORIGIN, &batch).unwrap();
    assert_eq!(outcome, ApplyOutcome { applied_seq: 2, applied: 1, refused: 1 });
    assert_eq!(origin.registry.inbound(DEST, ORIGIN).unwrap().refused, 1);
    assert!(origin.registry.get(&pb::GetPersonRequest { id_number: id(1) }).is_err());
    assert_eq!(person(&origin, 2).role, pb::Role::Origin as i32);
    let refused: Vec<_> = origin
        .registry
        .log_after(0, 100)
        .unwrap()
        .into_iter()
        .filter(|(_, r)| r.direction == pb::Direction::Refused as i32)
        .collect();
    assert_eq!(refused.len(), 1);
    assert!(refused[0].1.reason.contains("person_key does not match"), "{}", refused[0].1.reason);

    // Feedback from a node that does not serve her origin is refused too.
    let (other, _) = (node(WORK), ());
    let feedback = pb::Envelope {
        from: WORK.into(),
        to: DEST.into(),
        seq: 1,
        prev_hash: vec![],
        created_at_ms: 0,
        person_key: FederationSalt::from_bytes([4; 32]).person_key(&id(2)).0.to_vec(),
        body: Some(pb::envelope::Body::MoveInFeedback(pb::MoveInFeedback::default())),
    };
    let outcome = dest.registry.apply_batch(WORK, DEST, &[(feedback.encode_to_vec(), feedback)]).unwrap();
    assert_eq!(outcome.refused, 1);
    assert_eq!(sync(&person(&dest, 2)).feedback, "awaiting");
    drop(other);
}

#[test]
fn unknown_message_kinds_are_refused_not_applied() {
    let origin = node(ORIGIN);
    let envelope =
        pb::Envelope { from: DEST.into(), to: ORIGIN.into(), seq: 1, person_key: vec![1; 32], ..Default::default() };
    let outcome = origin.registry.apply_batch(DEST, ORIGIN, &[(envelope.encode_to_vec(), envelope)]).unwrap();
    assert_eq!(outcome.refused, 1);
    let log = origin.registry.log_after(0, 10).unwrap();
    assert!(log[0].1.reason.contains("unknown to this node"), "{}", log[0].1.reason);
}

#[test]
fn a_move_out_tells_the_origin_and_the_next_node() {
    let (dest, origin, next) = (node(DEST), node(ORIGIN), node("410103008"));
    dest.registry.move_in(&move_in(1, DEST, pb::Role::Residence)).unwrap();
    deliver(&dest, &origin);
    dest.registry
        .move_out(&pb::RegisterMoveOutRequest {
            id_number: id(1),
            date: "2026-10-01".into(),
            next_division: "410103008".into(),
        })
        .unwrap();
    assert_eq!(deliver(&dest, &origin).applied, 1);
    let at_origin = person(&origin, 1);
    assert_eq!(at_origin.next_division, "410103008");
    assert_eq!(sync(&at_origin).notified_by, "");
    assert_eq!(deliver(&dest, &next).applied, 1, "the next node gets a heads-up");
    assert_eq!(next.store.persons_after(None).count(), 0, "with nothing to store yet");
}

#[test]
fn the_employer_hands_the_archive_to_the_residence() {
    let (work, dest, origin) = (node(WORK), node(DEST), node(ORIGIN));
    work.registry.move_in(&move_in(1, WORK, pb::Role::Workplace)).unwrap();
    work.registry
        .record_service(&pb::RecordServiceRequest {
            id_number: id(1),
            kind: pb::ServiceKind::HealthCheck as i32,
            date: "2026-04-08".into(),
            details: "ok".into(),
        })
        .unwrap();
    dest.registry.move_in(&move_in(1, DEST, pb::Role::Residence)).unwrap();
    let req = pb::TransferArchiveRequest {
        id_number: id(1),
        residence_division: DEST.into(),
        separation_date: "2026-10-31".into(),
    };
    let requested = work.registry.transfer_archive(&req).unwrap();
    assert_eq!(sync(&requested).transfer, "requested");
    assert_eq!(work.registry.transfer_archive(&req).unwrap(), requested, "a repeat changes nothing");
    assert_eq!(deliver(&work, &dest).applied, 1);
    let at_dest = person(&dest, 1);
    assert_eq!(sync(&at_dest).transfer, "received");
    assert_eq!(at_dest.services.len(), 1, "the archive's services are merged");
    assert_eq!(deliver(&dest, &work).applied, 1);
    let at_work = person(&work, 1);
    assert_eq!(sync(&at_work).transfer, "accepted");
    assert_eq!(at_work.status, pb::PersonStatus::MovedOut as i32);
    assert_eq!(at_work.move_out_date, "2026-10-31");
    assert!(
        work.store.due_items().unwrap().iter().all(|(k, _)| k.what != due::TRANSFER_ACCEPT),
        "the accept closes the due item"
    );
    drop(origin);
}

#[test]
fn the_origin_answers_certificate_queries_and_issues_free_certificates() {
    let (dest, origin) = (node(DEST), node(ORIGIN));
    dest.registry.move_in(&move_in(1, DEST, pb::Role::Residence)).unwrap();
    deliver(&dest, &origin);
    deliver(&origin, &dest);
    dest.registry.query_certificate(&pb::QueryCertificateRequest { id_number: id(1), issue: true }).unwrap();
    assert_eq!(deliver(&dest, &origin).applied, 1);
    assert_eq!(sync(&person(&origin, 1)).certificate, pb::CertificateStatus::Valid as i32);
    assert_eq!(deliver(&origin, &dest).applied, 1);
    let at_dest = sync(&person(&dest, 1));
    assert_eq!(at_dest.certificate, pb::CertificateStatus::Valid as i32);
    assert!(at_dest.certificate_number.starts_with("411421-2026-"), "{}", at_dest.certificate_number);
    assert_eq!(at_dest.certificate_valid_until, "2029-11-23");
}

#[test]
fn envelopes_wait_under_the_division_code_while_no_node_serves_it() {
    let dest = node(DEST);
    let mut req = move_in(1, DEST, pb::Role::Residence);
    req.id_number = with_check_digit("41172319900101001");
    dest.registry.move_in(&req).unwrap();
    assert_eq!(dest.registry.outbound()[0].0, "411723");
    assert_eq!(dest.registry.outbound()[0].1.head_seq, 1);
}

#[test]
fn personal_data_in_the_outbox_is_sealed() {
    let dest = node(DEST);
    dest.registry.move_in(&move_in(1, DEST, pb::Role::Residence)).unwrap();
    let raw = dest.store.outbox_from(ORIGIN, 1, 10, usize::MAX).unwrap();
    let sealed = &raw[0].1.sealed;
    let name = "测试1".as_bytes();
    assert!(!sealed.windows(name.len()).any(|w| w == name));
    assert!(!sealed.windows(18).any(|w| w == id(1).as_bytes()));
}

#[test]
fn a_query_about_someone_the_origin_does_not_know_is_answered_with_a_reason_and_counted() {
    let (dest, origin) = (node(DEST), node(ORIGIN));
    let key = dest.registry.salt.person_key(&id(7));
    {
        let writer = dest.registry.lock();
        let mut txn = sync::Txn::new(dest.store.batch());
        let query = pb::CertificateQuery { issue: true, answer_due: "2026-11-30".into() };
        dest.registry.enqueue(&writer, &mut txn, ORIGIN, &key, ldx_proto::v1::envelope::Body::CertificateQuery(query));
        dest.registry.commit_txn(writer, txn).unwrap();
    }
    assert_eq!(deliver(&dest, &origin).applied, 1);
    assert_eq!(origin.registry.certificates_refused(), 1);
    let answers = pending(&origin, DEST);
    let Some(ldx_proto::v1::envelope::Body::CertificateAnswer(answer)) = &answers[0].1.body else {
        panic!("{answers:?}")
    };
    assert_eq!(answer.status, pb::CertificateStatus::UnknownPerson as i32);
    assert!(answer.reason.contains("holds no record of her"), "{}", answer.reason);
    // The count is stored with the answer: it survives a restart.
    let reopened = Registry::new(
        origin.store.clone(),
        DataKey::from_bytes(&[3; 32]),
        FederationSalt::from_bytes([4; 32]),
        Arc::new(ManualClock::new("2026-11-23T02:00:00Z".parse().unwrap())),
        Division::parse("division", ORIGIN).unwrap(),
    )
    .unwrap();
    assert_eq!(reopened.certificates_refused(), 1);
}

#[test]
fn an_envelope_no_peer_would_accept_is_never_queued() {
    let dest = node(DEST);
    dest.registry.move_in(&move_in(1, DEST, pb::Role::Residence)).unwrap();
    let before = (dest.registry.outbound(), dest.store.audit_head().unwrap());
    let writer = dest.registry.lock();
    let mut txn = sync::Txn::new(dest.store.batch());
    let huge = pb::SetAside { reason: "x".repeat(crate::exchange::MAX_ENVELOPE_BYTES), ..Default::default() };
    dest.registry.enqueue_keyed(&writer, &mut txn, ORIGIN, Vec::new(), pb::envelope::Body::SetAside(huge));
    txn.audit("test", None);
    let err = dest.registry.commit_txn(writer, txn).unwrap_err();
    assert!(matches!(err, StorageError::EnvelopeTooLarge { .. }), "{err}");
    assert!(err.to_string().starts_with("the set_aside for 411421 would be an envelope of 65"), "{err}");
    assert!(err.to_string().ends_with("over the 65536 a channel carries; nothing was stored"), "{err}");
    assert_eq!((dest.registry.outbound(), dest.store.audit_head().unwrap()), before, "nothing stored");
    assert_eq!(unacked(&dest.registry, ORIGIN).len(), 1);
}

#[test]
fn a_set_aside_envelope_lets_the_ones_behind_it_through_and_the_peer_logs_why() {
    let (dest, origin) = (node(DEST), node(ORIGIN));
    for n in 1..=3 {
        dest.registry.move_in(&move_in(n, DEST, pb::Role::Residence)).unwrap();
    }
    let list = dest.registry.list_outbox(&pb::ListOutboxRequest { peer: ORIGIN.into(), ..Default::default() }).unwrap();
    assert_eq!((list.acked_seq, list.head_seq, list.envelopes.len()), (0, 3, 3));
    assert!(list.envelopes.iter().all(|e| e.kind == "move_in_notice" && !e.over_limit && e.bytes > 0));

    let ask = |peer: &str, seq: u64, reason: &str| {
        dest.registry.set_aside(&pb::SetAsideEnvelopeRequest { peer: peer.into(), seq, reason: reason.into() })
    };
    for (peer, seq, reason, field) in
        [(ORIGIN, 2, "", "reason"), (ORIGIN, 0, "x", "seq"), (ORIGIN, 4, "x", "seq"), ("411422", 2, "x", "peer")]
    {
        let err = ask(peer, seq, reason).unwrap_err();
        assert!(err.to_string().starts_with(&format!("{field}: ")), "{err}");
    }
    let err = ask(ORIGIN, 4, "x").unwrap_err();
    assert!(err.to_string().ends_with("must be a waiting envelope for 411421: 1 to 3"), "{err}");

    let set = ask(ORIGIN, 2, "too large for the channel").unwrap();
    assert_eq!((set.seq, set.kind.as_str()), (2, "move_in_notice"));
    assert_eq!(ask(ORIGIN, 2, "again").unwrap(), set, "repeating it changes nothing");
    let list = dest.registry.list_outbox(&pb::ListOutboxRequest { peer: ORIGIN.into(), ..Default::default() }).unwrap();
    let kinds: Vec<_> = list.envelopes.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["move_in_notice", "set_aside", "move_in_notice"]);

    let outcome = deliver(&dest, &origin);
    assert_eq!(outcome, ApplyOutcome { applied_seq: 3, applied: 3, refused: 0 });
    assert!(origin.registry.get(&pb::GetPersonRequest { id_number: id(1) }).is_ok());
    assert!(matches!(origin.registry.get(&pb::GetPersonRequest { id_number: id(2) }), Err(RegistryError::NotFound)));
    assert!(origin.registry.get(&pb::GetPersonRequest { id_number: id(3) }).is_ok());
    let logged = origin.registry.log_after(0, 100).unwrap();
    let (_, entry) = logged.iter().find(|(_, r)| r.seq == 2 && r.peer == DEST).unwrap();
    assert_eq!(entry.kind, "set_aside");
    assert!(
        entry.reason.contains("set aside a move_in_notice of") && entry.reason.ends_with(": too large for the channel"),
        "{}",
        entry.reason
    );
    // The chain goes on past it.
    dest.registry.move_in(&move_in(4, DEST, pb::Role::Residence)).unwrap();
    assert_eq!(deliver(&dest, &origin).applied_seq, 4);
    let actions: Vec<_> = dest.store.audit_entries().map(|e| e.unwrap().1.unwrap().action).collect();
    assert!(actions.contains(&"outbox_set_aside".to_owned()), "{actions:?}");
}

#[test]
fn a_move_between_districts_of_one_city_makes_a_local_resident_and_notifies_no_one() {
    let dest = node(DEST);
    // Her household is in 中原区 (410102), and she now lives at 大学路 (410103007): both in
    // Zhengzhou (4101). Seed 000 五: no floating person.
    let local = pb::RegisterMoveInRequest {
        id_number: with_check_digit("41010219900101001"),
        reason_of_stay: pb::StayReason::Work as i32,
        ..move_in(1, DEST, pb::Role::Residence)
    };
    let (person, created) = dest.registry.move_in(&local).unwrap();
    assert!(created && person.local_resident, "{person:?}");
    assert!(pending(&dest, ZHONGYUAN).is_empty(), "no notice to her district");
    // Someone from 虞城县 (411421, in 商丘) is a floating person: her origin is notified.
    let (floating, _) = dest.registry.move_in(&move_in(2, DEST, pb::Role::Residence)).unwrap();
    assert!(!floating.local_resident);
    assert_eq!(pending(&dest, ORIGIN).len(), 1);
    // No report cycle for the local resident, no duties on the worklist.
    let err = dest
        .registry
        .issue_report(&pb::IssueReportRequest { id_number: local.id_number.clone(), period: String::new() })
        .unwrap_err();
    assert!(err.to_string().contains("is a local resident here"), "{err}");
    let work = dest.registry.work_list(&pb::ListWorkRequest::default()).unwrap();
    assert!(work.items.iter().all(|i| i.person_key != person.person_key), "{:?}", work.items);
    assert!(work.items.iter().any(|i| i.person_key == floating.person_key), "{:?}", work.items);
    // Her move-out notifies no one either.
    let out = pb::RegisterMoveOutRequest {
        id_number: local.id_number.clone(),
        date: "2026-06-30".into(),
        ..Default::default()
    };
    dest.registry.move_out(&out).unwrap();
    assert!(pending(&dest, ZHONGYUAN).is_empty());

    // A short stay is out of scope: refused, nothing stored.
    let visit = pb::RegisterMoveInRequest {
        reason_of_stay: pb::StayReason::Visit as i32,
        ..move_in(3, DEST, pb::Role::Residence)
    };
    let err = dest.registry.move_in(&visit).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("reason_of_stay") && text.contains("STAY_REASON_VISIT") && text.contains("short stay"),
        "{text}"
    );
    assert!(dest.registry.get(&pb::GetPersonRequest { id_number: id(3) }).is_err());
}
