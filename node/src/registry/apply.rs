//! Envelopes arriving on a channel: checked for continuity against what this node has
//! applied, then applied in one batch together with the channel's new applied seq, so
//! each takes effect exactly once and in order. An envelope its sender was not allowed to
//! send is consumed without effect, logged and counted.

use chrono::{Datelike, NaiveDate};
use ldx_proto::v1 as pb;
use ldx_proto::v1::envelope::Body;

use super::flows::add_days;
use super::sync::{Txn, body_kind, due};
use super::{Registry, RegistryError, Writer, role_name};
use crate::clock::day_number;
use crate::crypto::{OpenError, PersonKey};
use crate::domain::{Division, InvalidField, ResidentId};
use crate::storage::StorageError;
use crate::storage::keys::DueKey;
use crate::storage::records::{InChannel, LogRecord, PersonRecord, PersonSecret, ServiceEntry, SyncRecord};

/// How long a certificate issued on request stays valid.
const CERTIFICATE_YEARS: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "replayed batch: seq {first}..={last} of channel {from} -> {to} is already applied (applied seq {applied})"
    )]
    Replay { from: String, to: String, first: u64, last: u64, applied: u64 },
    #[error("gap: the batch starts at seq {first} but channel {from} -> {to} has applied only up to {applied}")]
    Gap { from: String, to: String, first: u64, applied: u64 },
    #[error("envelope seq {seq} follows seq {prev} in the batch; sequence numbers must be consecutive")]
    NotConsecutive { seq: u64, prev: u64 },
    #[error("broken chain: prev_hash of seq {seq} is not the hash of the envelope before it")]
    ChainBroken { seq: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Registry(#[from] RegistryError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub applied_seq: u64,
    pub applied: usize,
    pub refused: usize,
}

/// Why one envelope did not take effect.
pub(super) enum Fail {
    /// The sender may not send it, or it does not fit what this node knows: consumed
    /// without effect.
    Refused(String),
    Error(RegistryError),
}

impl From<StorageError> for Fail {
    fn from(e: StorageError) -> Self {
        Self::Error(e.into())
    }
}

impl From<OpenError> for Fail {
    fn from(e: OpenError) -> Self {
        Self::Error(e.into())
    }
}

impl From<RegistryError> for Fail {
    fn from(e: RegistryError) -> Self {
        match e {
            // Nothing of her is left here to change: the envelope cannot take effect, and
            // must not hold up the channel.
            RegistryError::Purged { .. } => Self::Refused(e.to_string()),
            e => Self::Error(e),
        }
    }
}

impl From<InvalidField> for Fail {
    fn from(e: InvalidField) -> Self {
        Self::Refused(e.to_string())
    }
}

pub(super) fn refuse<T>(reason: impl Into<String>) -> Result<T, Fail> {
    Err(Fail::Refused(reason.into()))
}

fn date(field: &'static str, raw: &str) -> Result<NaiveDate, Fail> {
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map_err(|_| InvalidField::new(field, raw, "must be a date YYYY-MM-DD").into())
}

impl Registry {
    /// State of the channel `from -> to` as this node has applied it.
    /// It is durable when returned: a peer told it may skip what was applied.
    pub fn inbound(&self, from: &str, to: &str) -> Result<InChannel, StorageError> {
        let state = self.store.in_channel(from, to)?;
        self.store.barrier()?;
        Ok(state)
    }

    /// Every channel this node receives on, durable when returned: the node signs these
    /// as its watermarks. Called off the async runtime (it may wait for a WAL sync).
    pub fn inbound_all(&self) -> Result<Vec<(String, String, InChannel)>, StorageError> {
        let channels = self.store.in_channels()?;
        self.store.barrier()?;
        Ok(channels)
    }

    /// Applies a batch of consecutive envelopes of channel `from -> to`, given as the bytes
    /// the chain hashes and their decoded form. The caller has checked the sender's
    /// identity and its signature over the chain head.
    pub fn apply_batch(
        &self,
        from: &str,
        to: &str,
        envelopes: &[(Vec<u8>, pb::Envelope)],
    ) -> Result<ApplyOutcome, ApplyError> {
        let writer = self.lock();
        let mut state = self.store.in_channel(from, to)?;
        let (Some((_, first)), Some((_, last))) = (envelopes.first(), envelopes.last()) else {
            return Ok(ApplyOutcome { applied_seq: state.applied_seq, applied: 0, refused: 0 });
        };
        let channel = || (from.to_owned(), to.to_owned());
        if first.seq <= state.applied_seq {
            let (from, to) = channel();
            return Err(ApplyError::Replay { from, to, first: first.seq, last: last.seq, applied: state.applied_seq });
        }
        if first.seq != state.applied_seq + 1 {
            let (from, to) = channel();
            return Err(ApplyError::Gap { from, to, first: first.seq, applied: state.applied_seq });
        }
        let mut prev_hash = state.last_hash.clone();
        let mut prev_seq = state.applied_seq;
        for (bytes, envelope) in envelopes {
            if envelope.seq != prev_seq + 1 {
                return Err(ApplyError::NotConsecutive { seq: envelope.seq, prev: prev_seq });
            }
            if envelope.prev_hash != prev_hash {
                return Err(ApplyError::ChainBroken { seq: envelope.seq });
            }
            prev_hash = match &envelope.body {
                // It stands in for the envelope set aside; the next one links to that.
                Some(Body::SetAside(a)) if a.original_hash.len() == 32 => a.original_hash.clone(),
                Some(Body::SetAside(_)) => return Err(ApplyError::ChainBroken { seq: envelope.seq }),
                _ => ldx_proto::chain::envelope_hash(bytes).to_vec(),
            };
            prev_seq = envelope.seq;
        }

        let now = self.clock.now().timestamp_millis();
        let mut txn = Txn::new(self.store.batch());
        let (mut applied, mut refused) = (0, 0);
        for (_, envelope) in envelopes {
            let kind = body_kind(envelope.body.as_ref());
            let mark = txn.log_mark();
            let (direction, reason) = match self.apply_one(&writer, &mut txn, from, envelope) {
                Ok(()) => {
                    applied += 1;
                    let reason = match &envelope.body {
                        Some(Body::SetAside(a)) => {
                            tracing::warn!(from, seq = envelope.seq, kind = %a.kind, bytes = a.bytes, reason = %a.reason, "the sender set an envelope aside");
                            format!("the sender set aside a {} of {} bytes: {}", a.kind, a.bytes, a.reason)
                        }
                        _ => String::new(),
                    };
                    (pb::Direction::Applied, reason)
                }
                Err(Fail::Refused(reason)) => {
                    refused += 1;
                    state.refused += 1;
                    tracing::warn!(from, seq = envelope.seq, kind, reason = %reason, "envelope refused");
                    (pb::Direction::Refused, reason)
                }
                Err(Fail::Error(e)) => return Err(e.into()),
            };
            txn.log_at(
                mark,
                LogRecord {
                    direction: direction as i32,
                    peer: from.to_owned(),
                    to: to.to_owned(),
                    seq: envelope.seq,
                    kind: kind.to_owned(),
                    person_key: envelope.person_key.clone(),
                    at_ms: now,
                    reason,
                    sent_at_ms: envelope.created_at_ms,
                },
            );
        }
        state.applied_seq = prev_seq;
        state.last_hash = prev_hash;
        state.last_applied_ms = now;
        txn.batch.put_in_channel(from, to, &state);
        self.commit_txn(writer, txn)?;
        Ok(ApplyOutcome { applied_seq: state.applied_seq, applied, refused })
    }

    fn apply_one(&self, writer: &Writer, txn: &mut Txn<'_>, from: &str, envelope: &pb::Envelope) -> Result<(), Fail> {
        let key = <[u8; 32]>::try_from(envelope.person_key.as_slice()).map(PersonKey);
        match (&envelope.body, key) {
            (Some(Body::AssessmentStatement(s)), _) => self.on_assessment_statement(txn, from, s),
            // Nothing to apply: the log entry says what was set aside and why.
            (Some(Body::SetAside(_)), _) => Ok(()),
            (_, Err(_)) => refuse("person_key must be 32 bytes"),
            (None, Ok(_)) => refuse("message kind is unknown to this node (sent by a newer version?)"),
            (Some(Body::MoveInNotice(n)), Ok(key)) => self.on_move_in_notice(writer, txn, from, &key, n),
            (Some(Body::MoveInFeedback(f)), Ok(key)) => self.on_move_in_feedback(txn, from, &key, f),
            (Some(Body::MoveOutNotice(n)), Ok(key)) => self.on_move_out_notice(txn, from, &key, n),
            (Some(Body::TransferRequest(r)), Ok(key)) => self.on_transfer_request(writer, txn, from, &key, r),
            (Some(Body::TransferAccept(a)), Ok(key)) => self.on_transfer_accept(txn, from, &key, a),
            (Some(Body::CertificateQuery(q)), Ok(key)) => self.on_certificate_query(writer, txn, from, &key, q),
            (Some(Body::CertificateAnswer(a)), Ok(key)) => self.on_certificate_answer(txn, from, &key, a),
            (Some(Body::ServiceReport(r)), Ok(key)) => self.on_service_report(writer, txn, from, &key, r),
            (Some(Body::ReportVerdict(v)), Ok(key)) => self.on_report_verdict(txn, from, &key, v),
        }
    }

    /// Her ID, checked against the envelope's person_key.
    fn identify(&self, key: &PersonKey, person: Option<&pb::PersonDetails>) -> Result<ResidentId, Fail> {
        let Some(person) = person else { return refuse("person is missing") };
        let id = ResidentId::parse("person.id_number", &person.id_number)?;
        if self.salt.person_key(id.as_str()) != *key {
            return refuse("person_key does not match person.id_number");
        }
        Ok(id)
    }

    /// Her record here, which the message needs.
    fn known(&self, txn: &Txn<'_>, key: &PersonKey) -> Result<PersonRecord, Fail> {
        match self.txn_person(txn, key)? {
            Some(record) => Ok(record),
            None => refuse(format!("no record of her at this node ({})", self.division)),
        }
    }

    /// Answers may only come from the node serving her origin.
    fn from_origin(from: &str, record: &PersonRecord) -> Result<(), Fail> {
        if record.origin_division.starts_with(from) {
            Ok(())
        } else {
            refuse(format!("{from} does not serve her origin {}", record.origin_division))
        }
    }

    fn store_person(&self, txn: &mut Txn<'_>, key: &PersonKey, mut record: PersonRecord, secret: &PersonSecret) {
        record.sealed = self.seal(key, secret);
        record.updated_at_ms = self.clock.now().timestamp_millis();
        txn.put_person(key, record);
    }

    /// At her origin: record where she now lives or works, and answer with feedback.
    fn on_move_in_notice(
        &self,
        writer: &Writer,
        txn: &mut Txn<'_>,
        from: &str,
        key: &PersonKey,
        n: &pb::MoveInNotice,
    ) -> Result<(), Fail> {
        let id = self.identify(key, n.person.as_ref())?;
        let household = Division::parse_node_level("household_division", &n.household_division)?;
        let origin = household.county().expect("county or township level");
        if !self.division.contains(&origin) {
            return refuse(format!("this node ({}) does not serve her origin {origin}", self.division));
        }
        let division = Division::parse_node_level("division", &n.division)?;
        if !division.as_str().starts_with(from) {
            return refuse(format!("{from} does not serve division {division}, where the notice says she lives"));
        }
        let moved_in = date("move_in_date", &n.move_in_date)?;
        let person = n.person.clone().unwrap_or_default();
        let (mut record, mut secret) = match self.txn_person(txn, key)? {
            Some(r) if r.role == pb::Role::Origin as i32 => {
                // A record purged under retention starts afresh from the notice.
                let mut secret = self.open_or_purged(key, &r)?;
                if secret.id_number.is_empty() {
                    secret.id_number = id.as_str().to_owned();
                }
                (r, secret)
            }
            Some(r) => return refuse(format!("she is registered at this node as {}", role_name(r.role))),
            None => (
                PersonRecord {
                    person_key: key.0.to_vec(),
                    role: pb::Role::Origin as i32,
                    category: pb::Category::OutMigrant as i32,
                    status: pb::PersonStatus::Active as i32,
                    division: household.as_str().to_owned(),
                    origin_division: origin.as_str().to_owned(),
                    move_in_day: day_number(moved_in),
                    ..Default::default()
                },
                PersonSecret { id_number: id.as_str().to_owned(), ..Default::default() },
            ),
        };
        secret.name = person.name;
        secret.phone = person.phone;
        secret.address = n.address.clone();
        let sync = record.sync.get_or_insert_with(SyncRecord::default);
        sync.notified_by = from.to_owned();
        sync.notified_division = division.as_str().to_owned();
        if n.role == pb::Role::Residence as i32 {
            sync.residence = from.to_owned();
        }
        let feedback = pb::MoveInFeedback {
            certificate: if secret.certificate_number.is_empty() {
                pb::CertificateStatus::None
            } else {
                pb::CertificateStatus::Valid
            } as i32,
            certificate_number: secret.certificate_number.clone(),
            contact: format!("{} {}", self.division, self.division.name()),
            given_on: self.clock.today().to_string(),
        };
        self.store_person(txn, key, record, &secret);
        self.enqueue(writer, txn, from, key, Body::MoveInFeedback(feedback));
        txn.audit("apply_move_in_notice", Some(key));
        Ok(())
    }

    /// At the destination: her origin's feedback arrived.
    fn on_move_in_feedback(
        &self,
        txn: &mut Txn<'_>,
        from: &str,
        key: &PersonKey,
        f: &pb::MoveInFeedback,
    ) -> Result<(), Fail> {
        let mut record = self.known(txn, key)?;
        Self::from_origin(from, &record)?;
        let sync = record.sync.get_or_insert_with(SyncRecord::default);
        if sync.feedback != "awaiting" {
            return refuse("no feedback is awaited for her");
        }
        if pb::CertificateStatus::try_from(f.certificate).is_err() {
            return Err(InvalidField::new("certificate", f.certificate, "is not a known certificate status").into());
        }
        let mut secret = self.open(key, &record)?;
        let sync = record.sync.get_or_insert_with(SyncRecord::default);
        sync.feedback = "received".into();
        sync.certificate = f.certificate;
        secret.certificate_number = f.certificate_number.clone();
        self.store_person(txn, key, record, &secret);
        txn.batch.delete_due(&DueKey { person: *key, what: due::FEEDBACK });
        txn.audit("apply_move_in_feedback", Some(key));
        Ok(())
    }

    /// At her origin: she left the node that notified her. At the next node: a heads-up
    /// with nothing to store until she registers there.
    fn on_move_out_notice(
        &self,
        txn: &mut Txn<'_>,
        from: &str,
        key: &PersonKey,
        n: &pb::MoveOutNotice,
    ) -> Result<(), Fail> {
        date("move_out_date", &n.move_out_date)?;
        let Some(mut record) = self.txn_person(txn, key)?.filter(|r| r.role == pb::Role::Origin as i32) else {
            return Ok(());
        };
        let sync = record.sync.get_or_insert_with(SyncRecord::default);
        if sync.notified_by != from {
            return refuse(format!("{from} is not the node that notified her move-in"));
        }
        sync.notified_by.clear();
        sync.notified_division.clear();
        if sync.residence == from {
            sync.residence.clear();
        }
        record.next_division = n.next_division.clone();
        record.updated_at_ms = self.clock.now().timestamp_millis();
        txn.put_person(key, record);
        txn.audit("apply_move_out_notice", Some(key));
        Ok(())
    }

    /// At her residence: take over the archive her employer's node hands over.
    fn on_transfer_request(
        &self,
        writer: &Writer,
        txn: &mut Txn<'_>,
        from: &str,
        key: &PersonKey,
        r: &pb::TransferRequest,
    ) -> Result<(), Fail> {
        self.identify(key, r.person.as_ref())?;
        date("separation_date", &r.separation_date)?;
        let mut services = Vec::with_capacity(r.services.len());
        for s in &r.services {
            if pb::ServiceKind::try_from(s.kind).is_err() {
                return Err(InvalidField::new("services.kind", s.kind, "is not a known service kind").into());
            }
            services.push(ServiceEntry {
                kind: s.kind,
                day: day_number(date("services.date", &s.date)?),
                details: s.details.clone(),
            });
        }
        let today = self.clock.today().to_string();
        let record = self
            .txn_person(txn, key)?
            .filter(|r| r.role == pb::Role::Residence as i32 && r.status == pb::PersonStatus::Active as i32);
        let answer = match record {
            Some(mut record) => {
                let mut secret = self.open(key, &record)?;
                for s in services {
                    if !secret.services.iter().any(|e| e.kind == s.kind && e.day == s.day) {
                        secret.services.push(s);
                    }
                }
                secret.services.sort_by_key(|e| (e.day, e.kind));
                let sync = record.sync.get_or_insert_with(SyncRecord::default);
                sync.transfer = "received".into();
                sync.transfer_peer = from.to_owned();
                self.store_person(txn, key, record, &secret);
                txn.audit("apply_transfer_request", Some(key));
                pb::TransferAccept { accepted: true, accepted_on: today, reason: String::new() }
            }
            None => pb::TransferAccept {
                accepted: false,
                accepted_on: today,
                reason: format!("she is not registered as living at {}", self.division),
            },
        };
        self.enqueue(writer, txn, from, key, Body::TransferAccept(answer));
        Ok(())
    }

    /// At her former workplace: the residence answered the transfer.
    fn on_transfer_accept(
        &self,
        txn: &mut Txn<'_>,
        from: &str,
        key: &PersonKey,
        a: &pb::TransferAccept,
    ) -> Result<(), Fail> {
        let mut record = self.known(txn, key)?;
        let sync = record.sync.get_or_insert_with(SyncRecord::default);
        if sync.transfer != "requested" || sync.transfer_peer != from {
            return refuse(format!("no archive transfer to {from} is awaiting an answer"));
        }
        if a.accepted {
            sync.transfer = "accepted".into();
            let separation = sync.transfer_day;
            record.status = pb::PersonStatus::MovedOut as i32;
            record.move_out_day = record.move_out_day.or(separation);
            record.next_division = from.to_owned();
        } else {
            sync.transfer = format!("refused: {}", a.reason);
        }
        record.updated_at_ms = self.clock.now().timestamp_millis();
        txn.put_person(key, record);
        txn.batch.delete_due(&DueKey { person: *key, what: due::TRANSFER_ACCEPT });
        txn.audit("apply_transfer_accept", Some(key));
        Ok(())
    }

    /// At her origin: answer about her certificate, issuing one (free) when asked.
    fn on_certificate_query(
        &self,
        writer: &Writer,
        txn: &mut Txn<'_>,
        from: &str,
        key: &PersonKey,
        q: &pb::CertificateQuery,
    ) -> Result<(), Fail> {
        let today = self.clock.today();
        let answer = match self.txn_person(txn, key)?.filter(|r| r.role == pb::Role::Origin as i32) {
            None => {
                txn.certificate_refused();
                pb::CertificateAnswer {
                    status: pb::CertificateStatus::UnknownPerson as i32,
                    reason: format!("the origin node {} holds no record of her", self.division),
                    ..Default::default()
                }
            }
            Some(mut record) => {
                let mut secret = self.open(key, &record)?;
                let sync = record.sync.get_or_insert_with(SyncRecord::default);
                if sync.notified_by != from {
                    return refuse(format!("{from} is not the node that notified her move-in"));
                }
                if q.issue && secret.certificate_number.is_empty() {
                    secret.certificate_number =
                        format!("{}-{}-{}", self.division, today.year(), hex::encode_upper(&key.0[..4]));
                    let until =
                        today.with_year(today.year() + CERTIFICATE_YEARS).unwrap_or_else(|| add_days(today, 365 * 3));
                    sync.certificate = pb::CertificateStatus::Valid as i32;
                    sync.certificate_valid_until_day = Some(day_number(until));
                }
                let valid_until = sync
                    .certificate_valid_until_day
                    .map(|d| crate::clock::from_day_number(d).to_string())
                    .unwrap_or_default();
                let status = if secret.certificate_number.is_empty() {
                    pb::CertificateStatus::None
                } else {
                    pb::CertificateStatus::Valid
                };
                let answer = pb::CertificateAnswer {
                    status: status as i32,
                    certificate_number: secret.certificate_number.clone(),
                    valid_until,
                    reason: String::new(),
                };
                self.store_person(txn, key, record, &secret);
                txn.audit("apply_certificate_query", Some(key));
                answer
            }
        };
        self.enqueue(writer, txn, from, key, Body::CertificateAnswer(answer));
        Ok(())
    }

    /// At the destination: her origin answered about her certificate.
    fn on_certificate_answer(
        &self,
        txn: &mut Txn<'_>,
        from: &str,
        key: &PersonKey,
        a: &pb::CertificateAnswer,
    ) -> Result<(), Fail> {
        let mut record = self.known(txn, key)?;
        Self::from_origin(from, &record)?;
        if pb::CertificateStatus::try_from(a.status).is_err() {
            return Err(InvalidField::new("status", a.status, "is not a known certificate status").into());
        }
        let valid_until = match a.valid_until.as_str() {
            "" => None,
            raw => Some(day_number(date("valid_until", raw)?)),
        };
        let mut secret = self.open(key, &record)?;
        let sync = record.sync.get_or_insert_with(SyncRecord::default);
        sync.certificate = a.status;
        sync.certificate_valid_until_day = valid_until;
        secret.certificate_number = a.certificate_number.clone();
        self.store_person(txn, key, record, &secret);
        txn.batch.delete_due(&DueKey { person: *key, what: due::CERTIFICATE_ANSWER });
        txn.audit("apply_certificate_answer", Some(key));
        Ok(())
    }
}
