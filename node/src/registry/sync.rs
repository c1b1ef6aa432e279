//! The registry's side of the exchange: envelopes written to the outbox in the same batch
//! as the change that causes them, channel heads, acks, and the message log.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use ldx_proto::v1 as pb;
use ldx_proto::v1::envelope::Body;
use prost::Message;

use super::{Registry, Writer, WriterGuard};
use crate::config::DeadlineConfig;
use crate::crypto::PersonKey;
use crate::storage::keys::{DueKey, OutboxKey};
use crate::storage::records::{AuditEntry, AuditHead, DueItem, LogRecord, OutChannel, OutboxEntry, PersonRecord};
use crate::storage::{Batch, StorageError};

/// Maps a division code to the division of the node that serves it (longest prefix in
/// the directory), or `None` when the directory has no such node.
pub type Router = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// What a syncing node's registry needs from the exchange.
pub struct ExchangeHooks {
    pub router: Router,
    /// Told the peer of every channel that has new envelopes.
    pub wake: tokio::sync::mpsc::UnboundedSender<String>,
    pub deadlines: DeadlineConfig,
}

impl std::fmt::Debug for ExchangeHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeHooks").field("deadlines", &self.deadlines).finish()
    }
}

/// Kinds of due items: an answer this node waits for.
pub mod due {
    pub const FEEDBACK: u8 = 1;
    pub const TRANSFER_ACCEPT: u8 = 2;
    pub const CERTIFICATE_ANSWER: u8 = 3;

    pub fn name(what: u8) -> &'static str {
        match what {
            FEEDBACK => "feedback",
            TRANSFER_ACCEPT => "transfer_accept",
            CERTIFICATE_ANSWER => "certificate_answer",
            _ => "unknown",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AckError {
    #[error("peer {peer} acknowledged seq {acked}, beyond the channel head {head}")]
    BeyondHead { peer: String, acked: u64, head: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The log name of a message kind.
pub fn body_kind(body: Option<&Body>) -> &'static str {
    match body {
        Some(Body::MoveInNotice(_)) => "move_in_notice",
        Some(Body::MoveInFeedback(_)) => "move_in_feedback",
        Some(Body::MoveOutNotice(_)) => "move_out_notice",
        Some(Body::TransferRequest(_)) => "transfer_request",
        Some(Body::TransferAccept(_)) => "transfer_accept",
        Some(Body::CertificateQuery(_)) => "certificate_query",
        Some(Body::CertificateAnswer(_)) => "certificate_answer",
        Some(Body::ServiceReport(_)) => "service_report",
        Some(Body::ReportVerdict(_)) => "report_verdict",
        Some(Body::AssessmentStatement(_)) => "assessment_statement",
        Some(Body::SetAside(_)) => "set_aside",
        None => "unknown",
    }
}

/// One audit entry in the making: what was done to whom, and by whom.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuditNote {
    pub action: String,
    pub person: Option<PersonKey>,
    /// For a refusal: the rule that refused it.
    pub detail: String,
    /// Persons whose records the call disclosed (a list, an export).
    pub disclosed: Vec<PersonKey>,
    /// Who; `None`: the actor of the call this thread serves (see [`crate::staff::actor`]).
    pub actor: Option<crate::staff::Actor>,
}

impl AuditNote {
    pub fn new(action: &str, person: Option<&PersonKey>) -> Self {
        Self { action: action.to_owned(), person: person.copied(), ..Default::default() }
    }
}

/// One atomic change in the making: the batch, the records it changed (read back by
/// later steps of the same change), and what to do once it is durable.
pub(super) struct Txn<'a> {
    pub batch: Batch<'a>,
    persons: HashMap<PersonKey, PersonRecord>,
    out: HashMap<String, OutChannel>,
    log: Vec<LogRecord>,
    audit: Vec<AuditNote>,
    wake: BTreeSet<String>,
    certificates_refused: u64,
    /// Envelopes of this change that no peer would accept: the change is not committed.
    oversized: Option<StorageError>,
    /// Committed even below the disk reserve (an audited read).
    within_reserve: bool,
}

impl<'a> Txn<'a> {
    pub fn new(batch: Batch<'a>) -> Self {
        Self {
            batch,
            persons: HashMap::new(),
            out: HashMap::new(),
            log: Vec::new(),
            audit: Vec::new(),
            wake: BTreeSet::new(),
            certificates_refused: 0,
            oversized: None,
            within_reserve: false,
        }
    }

    /// Lets this change be committed below the disk reserve: only for the audit entry of a
    /// read, which is small and without which the read is refused.
    pub fn within_reserve(&mut self) {
        self.within_reserve = true;
    }

    /// Audits `action` on `person`, by the actor of the call being served (if any).
    pub fn audit(&mut self, action: &str, person: Option<&PersonKey>) {
        self.audit_note(AuditNote::new(action, person));
    }

    pub fn audit_note(&mut self, mut note: AuditNote) {
        if note.actor.is_none() {
            note.actor = crate::staff::actor::current();
        }
        self.audit.push(note);
    }

    pub fn log(&mut self, record: LogRecord) {
        self.log.push(record);
    }

    /// Where the next log record will go: an envelope's own entry is inserted there once
    /// its outcome is known, so it precedes the envelopes it caused.
    pub fn log_mark(&self) -> usize {
        self.log.len()
    }

    pub fn log_at(&mut self, mark: usize, record: LogRecord) {
        self.log.insert(mark, record);
    }

    /// Wakes the sender of `peer` once this change is durable.
    pub fn wake(&mut self, peer: &str) {
        self.wake.insert(peer.to_owned());
    }

    /// Counts a certificate query answered without a certificate.
    pub fn certificate_refused(&mut self) {
        self.certificates_refused += 1;
    }

    pub fn put_person(&mut self, key: &PersonKey, record: PersonRecord) {
        self.batch.put_person(key, &record);
        self.persons.insert(*key, record);
    }
}

impl Registry {
    /// Attaches the exchange: from now on changes that concern other nodes write
    /// envelopes to the outbox.
    pub fn with_exchange(mut self, hooks: ExchangeHooks) -> Self {
        self.exchange = Some(hooks);
        self
    }

    pub(super) fn deadlines(&self) -> DeadlineConfig {
        self.exchange.as_ref().map(|h| h.deadlines.clone()).unwrap_or_default()
    }

    /// The person as this change sees her: changed earlier in it, or as stored.
    pub(super) fn txn_person(&self, txn: &Txn<'_>, key: &PersonKey) -> Result<Option<PersonRecord>, StorageError> {
        match txn.persons.get(key) {
            Some(record) => Ok(Some(record.clone())),
            None => self.store.person(key),
        }
    }

    /// The channel peer for messages about `division`: the node the directory routes it
    /// to, or the code itself while no node serves it (the envelopes wait in the outbox
    /// until one does). `None` on a standalone node, or when this node serves it.
    pub(super) fn peer_for(&self, division: &str) -> Option<String> {
        let hooks = self.exchange.as_ref()?;
        let peer = (hooks.router)(division).unwrap_or_else(|| division.to_owned());
        (peer != self.division.as_str()).then_some(peer)
    }

    pub(super) fn is_syncing(&self) -> bool {
        self.exchange.is_some()
    }

    /// Appends an envelope about `person` to the channel to `peer`, within `txn`.
    pub(super) fn enqueue(&self, writer: &Writer, txn: &mut Txn<'_>, peer: &str, person: &PersonKey, body: Body) {
        self.enqueue_keyed(writer, txn, peer, person.0.to_vec(), body);
    }

    /// Like [`enqueue`](Self::enqueue), with the envelope's `person_key` as given (empty for
    /// a message about no person).
    pub(super) fn enqueue_keyed(
        &self,
        writer: &Writer,
        txn: &mut Txn<'_>,
        peer: &str,
        person_key: Vec<u8>,
        body: Body,
    ) {
        let mut state = txn.out.get(peer).or_else(|| writer.out.get(peer)).cloned().unwrap_or_default();
        let now = self.clock.now().timestamp_millis();
        let kind = body_kind(Some(&body));
        let envelope = pb::Envelope {
            from: self.division.as_str().to_owned(),
            to: peer.to_owned(),
            seq: state.head_seq + 1,
            prev_hash: state.head_hash.clone(),
            created_at_ms: now,
            person_key: person_key.clone(),
            body: Some(body),
        };
        let bytes = zeroize::Zeroizing::new(envelope.encode_to_vec());
        if bytes.len() > crate::exchange::MAX_ENVELOPE_BYTES {
            // Never queued: a peer refuses it, and everything behind it would wait forever.
            txn.oversized.get_or_insert(StorageError::EnvelopeTooLarge {
                kind,
                peer: peer.to_owned(),
                bytes: bytes.len(),
                max: crate::exchange::MAX_ENVELOPE_BYTES,
            });
            return;
        }
        let sealed = self.data_key.seal(&OutboxKey { peer: peer.to_owned(), seq: envelope.seq }.encode(), &bytes);
        txn.batch.put_outbox(peer, envelope.seq, &OutboxEntry { created_at_ms: now, sealed });
        state.head_seq = envelope.seq;
        state.head_hash = ldx_proto::chain::envelope_hash(&bytes).to_vec();
        txn.out.insert(peer.to_owned(), state);
        txn.log(LogRecord {
            direction: pb::Direction::Sent as i32,
            peer: peer.to_owned(),
            to: peer.to_owned(),
            seq: envelope.seq,
            kind: kind.to_owned(),
            person_key,
            at_ms: now,
            reason: String::new(),
            sent_at_ms: now,
        });
        txn.wake.insert(peer.to_owned());
    }

    pub(super) fn put_due(&self, txn: &mut Txn<'_>, person: &PersonKey, what: u8, peer: &str, due_day: i32) {
        let item = DueItem { due_day, peer: peer.to_owned(), created_at_ms: self.clock.now().timestamp_millis() };
        txn.batch.put_due(&DueKey { person: *person, what }, &item);
    }

    /// Commits `txn` with its audit entries and log records. The change is prepared and
    /// written under the writer lock, which is let go before the wait for the disk, so the
    /// next change is written while this one syncs and one sync answers many (group
    /// commit). Senders see the new envelopes, and are woken, only once they are durable.
    pub(super) fn commit_txn(&self, mut writer: WriterGuard<'_>, mut txn: Txn<'_>) -> Result<(), StorageError> {
        if let Some(oversized) = txn.oversized.take() {
            return Err(oversized);
        }
        if !txn.within_reserve {
            self.store.check_space()?;
        }
        let started = std::time::Instant::now();
        let mut audit = writer.audit.clone();
        let mut entries = Vec::with_capacity(txn.audit.len());
        let at_ms = self.clock.now().timestamp_millis();
        for note in std::mem::take(&mut txn.audit) {
            let actor = note.actor.unwrap_or_default();
            let entry = AuditEntry {
                seq: audit.seq + 1,
                at_ms,
                action: note.action,
                person_key: note.person.map(|k| k.0.to_vec()).unwrap_or_default(),
                prev_hash: audit.hash.clone(),
                staff: actor.staff,
                acting_for: actor.acting_for,
                role: actor.role,
                purpose: actor.purpose,
                call: actor.call,
                detail: note.detail,
                disclosed: note.disclosed.iter().map(|k| k.0.to_vec()).collect(),
            };
            audit = AuditHead { seq: entry.seq, hash: super::audit_hash(&entry) };
            entries.push(entry);
        }
        if !entries.is_empty() {
            txn.batch.put_audit(&entries, &audit);
        }
        let log_head = txn.batch.put_log(writer.log_head, &txn.log);
        for (peer, state) in &txn.out {
            txn.batch.put_out_channel(peer, state);
        }
        let certificates_refused = writer.certificates_refused + txn.certificates_refused;
        if txn.certificates_refused > 0 {
            txn.batch.put_certificates_refused(certificates_refused);
        }
        let ticket = txn.batch.write()?;
        writer.audit = audit;
        writer.log_head = log_head;
        writer.certificates_refused = certificates_refused;
        writer.out.extend(txn.out.iter().map(|(p, s)| (p.clone(), s.clone())));
        drop(writer);

        self.store.wait_durable(ticket)?;
        metrics::histogram!(crate::metrics::names::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        self.publish(txn.out, certificates_refused);
        if let Some(hooks) = &self.exchange {
            for peer in txn.wake {
                let _ = hooks.wake.send(peer);
            }
        }
        Ok(())
    }

    /// Makes durable channel heads visible to the senders. Changes become durable in the
    /// order they were written, but their writers may publish in any order: heads only
    /// move forward.
    fn publish(&self, out: HashMap<String, OutChannel>, certificates_refused: u64) {
        let mut durable = self.durable();
        for (peer, state) in out {
            let known = durable.out.entry(peer).or_default();
            if state.head_seq > known.head_seq {
                known.head_seq = state.head_seq;
                known.head_hash = state.head_hash;
            }
            known.acked_seq = known.acked_seq.max(state.acked_seq);
        }
        durable.certificates_refused = durable.certificates_refused.max(certificates_refused);
    }

    /// Certificate queries this node answered without a certificate, as durable.
    pub fn certificates_refused(&self) -> u64 {
        self.durable().certificates_refused
    }

    /// Every channel this node sends on, as durable: a sender never serves an envelope a
    /// crash could still take back.
    pub fn outbound(&self) -> Vec<(String, OutChannel)> {
        let durable = self.durable();
        let mut all: Vec<_> = durable.out.iter().map(|(p, s)| (p.clone(), s.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The durable state of the channel to `peer`.
    pub fn outbound_to(&self, peer: &str) -> OutChannel {
        self.durable().out.get(peer).cloned().unwrap_or_default()
    }

    /// Envelopes of the channel to `peer` from `first` to at most `last` (a durable head),
    /// as the bytes that were hashed.
    pub fn outbox_batch(
        &self,
        peer: &str,
        first: u64,
        last: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, super::RegistryError> {
        let mut out = Vec::new();
        for (seq, entry) in self.store.outbox_from(peer, first, max_count, max_bytes)? {
            if seq > last {
                break;
            }
            let key = OutboxKey { peer: peer.to_owned(), seq }.encode();
            out.push((seq, self.data_key.open(&key, &entry.sealed)?.to_vec()));
        }
        Ok(out)
    }

    /// Creation time of the oldest envelope the peer has not acked.
    pub fn oldest_pending_ms(&self, peer: &str, acked: u64) -> Result<Option<i64>, StorageError> {
        Ok(self.store.outbox_from(peer, acked + 1, 1, usize::MAX)?.first().map(|(_, e)| e.created_at_ms))
    }

    /// Records that `peer` applied everything up to `acked`: those envelopes leave the
    /// outbox (the message log keeps their trace).
    pub fn ack(&self, peer: &str, acked: u64) -> Result<(), AckError> {
        let mut writer = self.lock();
        let mut state = writer.out.get(peer).cloned().unwrap_or_default();
        if acked > state.head_seq {
            return Err(AckError::BeyondHead { peer: peer.to_owned(), acked, head: state.head_seq });
        }
        if acked <= state.acked_seq {
            return Ok(());
        }
        let mut batch = self.store.batch();
        batch.delete_outbox(peer, state.acked_seq + 1, acked);
        state.acked_seq = acked;
        batch.put_out_channel(peer, &state);
        let ticket = batch.write()?;
        writer.out.insert(peer.to_owned(), state.clone());
        drop(writer);
        self.store.wait_durable(ticket)?;
        let certificates_refused = self.durable().certificates_refused;
        self.publish(HashMap::from([(peer.to_owned(), state)]), certificates_refused);
        Ok(())
    }

    /// Calls `f` with every message-log entry, in order, read a page at a time.
    pub(super) fn each_log_record(&self, mut f: impl FnMut(LogRecord)) -> Result<(), StorageError> {
        let mut after = 0;
        loop {
            let page = self.store.log_after(after, 10_000)?;
            let Some((last, _)) = page.last() else { return Ok(()) };
            after = *last;
            page.into_iter().for_each(|(_, e)| f(e));
        }
    }

    /// Message-log entries after `after`.
    pub fn log_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, LogRecord)>, StorageError> {
        self.store.log_after(after, limit)
    }
}
