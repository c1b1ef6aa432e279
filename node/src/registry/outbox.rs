//! What operators see of an outbox, and how they set aside an envelope a channel cannot
//! carry. Setting aside puts a `SetAside` envelope at the same seq in its place: it links to
//! the same predecessor, and names the hash of the envelope it replaces, which the next
//! envelope links to. So the envelopes queued behind it are sent as they are, and the peer
//! learns what was set aside and why (its message log keeps the reason).

use ldx_proto::v1 as pb;
use ldx_proto::v1::envelope::Body;
use prost::Message;

use super::sync::{Txn, body_kind};
use super::{Registry, RegistryError};
use crate::domain::InvalidField;
use crate::domain::fields::required_text;
use crate::exchange::MAX_ENVELOPE_BYTES;
use crate::storage::keys::OutboxKey;
use crate::storage::records::{LogRecord, OutChannel, OutboxEntry};

/// Envelopes in one `ListOutbox` page unless asked otherwise, and at most.
pub const OUTBOX_PAGE_SIZE_DEFAULT: u32 = 100;
pub const OUTBOX_PAGE_SIZE_MAX: u32 = 1000;
/// Longest reason an operator gives for setting an envelope aside, in characters.
pub const SET_ASIDE_REASON_MAX: usize = 200;

impl Registry {
    /// The channel to `peer` as committed, or an error naming the field.
    fn out_channel(&self, peer: &str) -> Result<OutChannel, RegistryError> {
        let known = !peer.is_empty() && peer.len() <= 12 && peer.bytes().all(|b| b.is_ascii_digit());
        let state = known.then(|| self.lock().out.get(peer).cloned()).flatten();
        state.ok_or_else(|| InvalidField::new("peer", peer, "is not a division this node sends to").into())
    }

    /// One page of the envelopes waiting for `peer`: no content, only what an operator
    /// needs to find the one that blocks the channel.
    pub fn list_outbox(&self, req: &pb::ListOutboxRequest) -> Result<pb::ListOutboxResponse, RegistryError> {
        let page_size = super::page_size(req.page_size, OUTBOX_PAGE_SIZE_DEFAULT, OUTBOX_PAGE_SIZE_MAX)?;
        let state = self.out_channel(&req.peer)?;
        let first = req.after_seq.max(state.acked_seq) + 1;
        let mut envelopes = Vec::new();
        for (seq, entry) in self.store.outbox_from(&req.peer, first, page_size, usize::MAX)? {
            envelopes.push(self.outbox_view(&req.peer, seq, &entry));
        }
        let writer = self.lock();
        self.commit_audit(writer, self.store.batch(), "list_outbox", None)?;
        Ok(pb::ListOutboxResponse {
            envelopes,
            acked_seq: state.acked_seq,
            head_seq: state.head_seq,
            max_envelope_bytes: MAX_ENVELOPE_BYTES as u64,
        })
    }

    fn outbox_view(&self, peer: &str, seq: u64, entry: &OutboxEntry) -> pb::OutboxEnvelope {
        let key = OutboxKey { peer: peer.to_owned(), seq }.encode();
        let (kind, bytes) = match self.data_key.open(&key, &entry.sealed) {
            Ok(bytes) => {
                (body_kind(pb::Envelope::decode(bytes.as_slice()).ok().and_then(|e| e.body).as_ref()), bytes.len())
            }
            Err(_) => ("unreadable", entry.sealed.len()),
        };
        pb::OutboxEnvelope {
            seq,
            kind: kind.to_owned(),
            bytes: bytes as u64,
            created_at_ms: entry.created_at_ms,
            over_limit: bytes > MAX_ENVELOPE_BYTES,
        }
    }

    /// Sets aside the waiting envelope `seq` of the channel to `peer` (see the module doc).
    /// Setting aside one already set aside changes nothing.
    pub fn set_aside(&self, req: &pb::SetAsideEnvelopeRequest) -> Result<pb::OutboxEnvelope, RegistryError> {
        let reason = required_text("reason", &req.reason, SET_ASIDE_REASON_MAX, false)?;
        self.out_channel(&req.peer)?;
        let writer = self.lock();
        let state = writer.out.get(&req.peer).cloned().unwrap_or_default();
        if req.seq <= state.acked_seq || req.seq > state.head_seq {
            let rule = match state.acked_seq == state.head_seq {
                true => format!("must be a waiting envelope, and nothing waits for {}", req.peer),
                false => format!(
                    "must be a waiting envelope for {}: {} to {}",
                    req.peer,
                    state.acked_seq + 1,
                    state.head_seq
                ),
            };
            return Err(InvalidField::new("seq", req.seq, rule).into());
        }
        let key = OutboxKey { peer: req.peer.clone(), seq: req.seq };
        let Some((_, entry)) =
            self.store.outbox_from(&req.peer, req.seq, 1, usize::MAX)?.pop().filter(|(s, _)| *s == req.seq)
        else {
            return Err(InvalidField::new("seq", req.seq, "is not in the outbox (acked meanwhile?)").into());
        };
        let bytes = self.data_key.open(&key.encode(), &entry.sealed)?;
        let original = pb::Envelope::decode(bytes.as_slice())
            .map_err(|e| crate::storage::StorageError::Corrupt { what: "outbox envelope", detail: e.to_string() })?;
        let shown = self.outbox_view(&req.peer, req.seq, &entry);
        if let Some(Body::SetAside(a)) = original.body {
            // Set aside before: what it stands in for.
            return Ok(pb::OutboxEnvelope {
                kind: a.kind,
                bytes: a.bytes,
                over_limit: a.bytes > MAX_ENVELOPE_BYTES as u64,
                ..shown
            });
        }
        let now = self.clock.now().timestamp_millis();
        let person_key = original.person_key.clone();
        let stand_in = pb::Envelope {
            person_key: Vec::new(),
            body: Some(Body::SetAside(pb::SetAside {
                kind: shown.kind.clone(),
                bytes: shown.bytes,
                reason: reason.clone(),
                set_aside_at_ms: now,
                original_hash: ldx_proto::chain::envelope_hash(&bytes).to_vec(),
            })),
            ..original
        };
        let stand_in_bytes = zeroize::Zeroizing::new(stand_in.encode_to_vec());
        let mut txn = Txn::new(self.store.batch());
        let sealed = self.data_key.seal(&key.encode(), &stand_in_bytes);
        txn.batch.put_outbox(&req.peer, req.seq, &OutboxEntry { created_at_ms: entry.created_at_ms, sealed });
        txn.log(LogRecord {
            direction: pb::Direction::Sent as i32,
            peer: req.peer.clone(),
            to: req.peer.clone(),
            seq: req.seq,
            kind: body_kind(stand_in.body.as_ref()).to_owned(),
            person_key: person_key.clone(),
            at_ms: now,
            reason: format!("set aside a {} of {} bytes: {reason}", shown.kind, shown.bytes),
            sent_at_ms: now,
        });
        let person = <[u8; 32]>::try_from(person_key.as_slice()).ok().map(crate::crypto::PersonKey);
        txn.audit("outbox_set_aside", person.as_ref());
        txn.wake(&req.peer);
        self.commit_txn(writer, txn)?;
        tracing::warn!(peer = %req.peer, seq = req.seq, kind = %shown.kind, bytes = shown.bytes, reason = %reason, "envelope set aside");
        Ok(shown)
    }
}
