//! Flows this node starts: the notices a registration causes, the archive transfer and
//! the certificate query, each written with the change that causes it.

use chrono::{Days, NaiveDate};
use ldx_proto::v1 as pb;
use ldx_proto::v1::envelope::Body;

use super::sync::{Txn, due};
use super::{Registry, RegistryError, Writer};
use crate::clock::{day_number, from_day_number};
use crate::crypto::PersonKey;
use crate::domain::{Division, InvalidField, MoveIn, ResidentId, fields};
use crate::storage::records::{PersonRecord, PersonSecret, SyncRecord};

pub(super) fn add_days(date: NaiveDate, days: u32) -> NaiveDate {
    date.checked_add_days(Days::new(u64::from(days))).unwrap_or(NaiveDate::MAX)
}

pub(super) fn details(secret: &PersonSecret) -> pb::PersonDetails {
    pb::PersonDetails { id_number: secret.id_number.clone(), name: secret.name.clone(), phone: secret.phone.clone() }
}

impl Registry {
    /// A move-in at a destination notifies her origin, which owes feedback by the deadline.
    pub(super) fn notify_move_in(
        &self,
        writer: &Writer,
        txn: &mut Txn<'_>,
        key: &PersonKey,
        record: &mut PersonRecord,
        secret: &PersonSecret,
        m: &MoveIn,
    ) {
        let Some(peer) = self.peer_for(m.origin.as_str()) else { return };
        let deadlines = self.deadlines();
        let answer = if m.urgent { deadlines.feedback_urgent_days } else { deadlines.feedback_days };
        let feedback_due = add_days(self.clock.today(), deadlines.notice_days + answer);
        let notice = pb::MoveInNotice {
            person: Some(details(secret)),
            role: m.role.to_proto() as i32,
            category: m.category.to_proto() as i32,
            division: m.division.as_str().to_owned(),
            address: secret.address.clone(),
            move_in_date: m.date.to_string(),
            household_division: m.household.as_str().to_owned(),
            feedback_due: feedback_due.to_string(),
        };
        self.enqueue(writer, txn, &peer, key, Body::MoveInNotice(notice));
        self.put_due(txn, key, due::FEEDBACK, &peer, day_number(feedback_due));
        let sync = record.sync.get_or_insert_with(SyncRecord::default);
        sync.feedback = "awaiting".into();
        sync.feedback_due_day = Some(day_number(feedback_due));
    }

    /// A move-out at a destination tells her origin, and the next node when it is known.
    pub(super) fn notify_move_out(&self, writer: &Writer, txn: &mut Txn<'_>, key: &PersonKey, record: &PersonRecord) {
        let notice = pb::MoveOutNotice {
            move_out_date: record.move_out_day.map(|d| from_day_number(d).to_string()).unwrap_or_default(),
            next_division: record.next_division.clone(),
        };
        let origin_peer = self.peer_for(&record.origin_division);
        if let Some(peer) = &origin_peer {
            self.enqueue(writer, txn, peer, key, Body::MoveOutNotice(notice.clone()));
        }
        if record.next_division.is_empty() {
            return;
        }
        if let Some(peer) = self.peer_for(&record.next_division).filter(|p| Some(p) != origin_peer.as_ref()) {
            self.enqueue(writer, txn, &peer, key, Body::MoveOutNotice(notice));
        }
    }

    /// At her workplace: hands her archive to her residence node after she left the employer.
    pub fn transfer_archive(&self, req: &pb::TransferArchiveRequest) -> Result<pb::Person, RegistryError> {
        let id = ResidentId::parse("id_number", &req.id_number)?;
        let residence = Division::parse_node_level("residence_division", &req.residence_division)?;
        let today = self.clock.today();
        let separation = fields::past_date("separation_date", &req.separation_date, today)?;
        if !self.is_syncing() {
            return Err(RegistryError::NotSyncing);
        }
        let Some(peer) = self.peer_for(residence.as_str()) else {
            return Err(
                InvalidField::new("residence_division", &req.residence_division, "is served by this node").into()
            );
        };
        let key = self.salt.person_key(id.as_str());
        let writer = self.lock();
        let mut record = self.store.person(&key)?.ok_or(RegistryError::NotFound)?;
        if record.role != pb::Role::Workplace as i32 {
            return Err(InvalidField::new("id_number", "(not shown)", "must be registered here as WORKPLACE").into());
        }
        let moved_in = from_day_number(record.move_in_day);
        if separation < moved_in {
            return Err(InvalidField::new(
                "separation_date",
                &req.separation_date,
                format!("is before her move-in on {moved_in}"),
            )
            .into());
        }
        let secret = self.open(&key, &record)?;
        let sync = record.sync.get_or_insert_with(SyncRecord::default);
        if !sync.transfer.is_empty() {
            if sync.transfer_peer == peer && sync.transfer_day == Some(day_number(separation)) {
                self.commit_audit(writer, self.store.batch(), "transfer_repeat", Some(&key))?;
                return Ok(self.view(&record, secret));
            }
            return Err(InvalidField::new(
                "id_number",
                "(not shown)",
                format!("her archive transfer to {} is already {}", sync.transfer_peer, sync.transfer),
            )
            .into());
        }
        let accept_due = add_days(separation, self.deadlines().transfer_days);
        sync.transfer = "requested".into();
        sync.transfer_peer = peer.clone();
        sync.transfer_day = Some(day_number(separation));
        record.updated_at_ms = self.clock.now().timestamp_millis();
        let request = pb::TransferRequest {
            person: Some(details(&secret)),
            separation_date: separation.to_string(),
            services: secret
                .services
                .iter()
                .map(|s| pb::ServiceRecord {
                    kind: s.kind,
                    date: from_day_number(s.day).to_string(),
                    details: s.details.clone(),
                })
                .collect(),
            accept_due: accept_due.to_string(),
        };
        let mut txn = Txn::new(self.store.batch());
        self.enqueue(&writer, &mut txn, &peer, &key, Body::TransferRequest(request));
        self.put_due(&mut txn, &key, due::TRANSFER_ACCEPT, &peer, day_number(accept_due));
        txn.put_person(&key, record.clone());
        txn.audit("transfer_archive", Some(&key));
        self.commit_txn(writer, txn)?;
        tracing::info!(person = ?key, peer = %peer, "archive transfer requested");
        Ok(self.view(&record, secret))
    }

    /// At a destination: asks her origin about her certificate (or to issue one).
    pub fn query_certificate(&self, req: &pb::QueryCertificateRequest) -> Result<pb::Person, RegistryError> {
        let id = ResidentId::parse("id_number", &req.id_number)?;
        if !self.is_syncing() {
            return Err(RegistryError::NotSyncing);
        }
        let key = self.salt.person_key(id.as_str());
        let writer = self.lock();
        let record = self.store.person(&key)?.ok_or(RegistryError::NotFound)?;
        if record.role == pb::Role::Origin as i32 {
            return Err(InvalidField::new("id_number", "(not shown)", "is registered here as her origin").into());
        }
        let secret = self.open(&key, &record)?;
        let Some(peer) = self.peer_for(&record.origin_division) else {
            return Err(InvalidField::new("id_number", "(not shown)", "her origin is served by this node").into());
        };
        let answer_due = add_days(self.clock.today(), self.deadlines().certificate_answer_days);
        let query = pb::CertificateQuery { issue: req.issue, answer_due: answer_due.to_string() };
        let mut txn = Txn::new(self.store.batch());
        self.enqueue(&writer, &mut txn, &peer, &key, Body::CertificateQuery(query));
        self.put_due(&mut txn, &key, due::CERTIFICATE_ANSWER, &peer, day_number(answer_due));
        txn.audit("query_certificate", Some(&key));
        self.commit_txn(writer, txn)?;
        tracing::info!(person = ?key, peer = %peer, "certificate query sent");
        Ok(self.view(&record, secret))
    }
}
