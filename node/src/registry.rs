//! The registry of one node: registrations, move-outs and services, with every access to
//! personal data written to the hash-chained audit log in the same batch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::NaiveDate;
use ldx_proto::v1 as pb;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::clock::{Clock, day_number, from_day_number};
use crate::crypto::{DataKey, FederationSalt, OpenError, PersonKey};
use crate::domain::{Division, InvalidField, MoveIn, MoveOut, ServiceGiven};
use crate::storage::keys::{MetaKey, PersonRecordKey};
use crate::storage::records::{AuditEntry, AuditHead, OutChannel, PersonRecord, PersonSecret, ServiceEntry};
use crate::storage::{Batch, StorageError, Store};

mod apply;
mod assessment;
mod flows;
mod outbox;
mod reports;
mod retention;
mod staff;
mod sync;
mod work;

pub use apply::{ApplyError, ApplyOutcome};
pub use assessment::indicator;
pub use outbox::{OUTBOX_PAGE_SIZE_DEFAULT, OUTBOX_PAGE_SIZE_MAX, SET_ASIDE_REASON_MAX};
pub use reports::{KeyLookup, REPORT_PAGE_SIZE_DEFAULT, REPORT_PAGE_SIZE_MAX, ReportCount, ReportHooks};
pub use retention::{RETENTION_LISTED_MAX, RETENTION_YEARS_DEFAULT};
pub use staff::{
    AUDIT_PAGE_MAX, AuditFilter, LOGIN_FAILURES_MAX, NewStaff, Session, StaffChange, StaffError, account_view,
    new_password, since_ms,
};
pub use sync::{AckError, ExchangeHooks, Router, body_kind, due};
use sync::{AuditNote, Txn};

/// Most move-ins one `RegisterMoveIns` request carries.
pub const MOVE_INS_MAX: usize = 1000;

/// One item's answer of [`Registry::move_ins`]: her record and whether it was created.
pub type MoveInOutcome = Result<(pb::Person, bool), RegistryError>;

/// Default and largest page of `ListPersons`.
pub const PAGE_SIZE_DEFAULT: u32 = 50;
pub const PAGE_SIZE_MAX: u32 = 1000;
/// Services one quarter of a person may hold: what her quarterly report carries. At the
/// longest details this keeps the report's envelope under
/// [`crate::exchange::MAX_ENVELOPE_BYTES`].
pub const SERVICES_PER_QUARTER_MAX: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    #[error("id_number: no person with this ID number is registered at this node")]
    NotFound,
    #[error("already registered here as {role} since {since}; a changed registration needs a move-out first")]
    AlreadyRegistered { since: NaiveDate, role: &'static str },
    #[error("she moved out of this node's division on {on}")]
    MovedOut { on: NaiveDate },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("person record: {0}")]
    Sealed(#[from] OpenError),
    #[error("this node does not sync with other nodes (config key peer.listen is empty)")]
    NotSyncing,
    #[error("she is not registered in township {township}, the only one this account may see")]
    OutsideTownship { township: String },
    #[error(
        "her personal fields were purged on {on} under the retention rule (retention.years after she moved out); \
         only counts remain"
    )]
    Purged { on: NaiveDate },
}

/// Holds the commit order: changes are prepared and written to the store one at a time
/// under this lock, then wait for the disk without it (group commit, see
/// [`Store::wait_durable`]). Carries the heads as written, which may run ahead of what is
/// durable; a failed sync stops every later change, so they never diverge for good.
#[derive(Debug)]
struct Writer {
    audit: AuditHead,
    /// Outbound channels: chain head and acked seq, as written.
    out: HashMap<String, OutChannel>,
    /// Index of the last message-log entry.
    log_head: u64,
    /// Certificate queries answered without a certificate, as committed.
    certificates_refused: u64,
}

/// The writer lock, held while a change is prepared and written.
type WriterGuard<'a> = std::sync::MutexGuard<'a, Writer>;

/// What is durable: the outbound channels senders may serve and the figures shown.
#[derive(Debug, Default)]
struct Durable {
    out: HashMap<String, OutChannel>,
    certificates_refused: u64,
}

#[derive(Debug)]
pub struct Registry {
    store: Arc<Store>,
    data_key: DataKey,
    salt: FederationSalt,
    clock: Arc<dyn Clock>,
    division: Division,
    writer: Mutex<Writer>,
    durable: Mutex<Durable>,
    exchange: Option<ExchangeHooks>,
    reports: Option<ReportHooks>,
    /// `retention.years`: see [`Registry::run_retention`].
    retention_years: u32,
}

/// Binds the store to its data key. The store keeps a keyed check value of the key it was
/// first written with and refuses any other, so a node started with the wrong `data.key`
/// stops before it writes a record nobody can open. A store written before check values
/// were kept is accepted only if its records open with the key, and then gets one.
fn bind_data_key(store: &Store, data_key: &DataKey) -> Result<(), StorageError> {
    if let Some(stored) = store.meta(MetaKey::DataKeyCheck)? {
        return match data_key.matches_check(&stored) {
            true => Ok(()),
            false => Err(StorageError::WrongDataKey {
                why: "its check value differs from the one stored at the first start",
            }),
        };
    }
    // A few records suffice: a store whose first records open was written with this key.
    let mut tried = 0;
    for item in store.persons_after(None).take(16) {
        let (key, record) = item?;
        tried += 1;
        if data_key.open(&PersonRecordKey(key).encode(), &record.sealed).is_ok() {
            tried = 0;
            break;
        }
    }
    if tried > 0 {
        return Err(StorageError::WrongDataKey { why: "none of the first stored records opens with it" });
    }
    store.put_meta(MetaKey::DataKeyCheck, data_key.check_value())
}

impl Registry {
    pub fn new(
        store: Arc<Store>,
        data_key: DataKey,
        salt: FederationSalt,
        clock: Arc<dyn Clock>,
        division: Division,
    ) -> Result<Self, StorageError> {
        bind_data_key(&store, &data_key)?;
        store.index_report_ids()?;
        let audit = store.audit_head()?;
        let out: HashMap<String, OutChannel> = store.out_channels()?.into_iter().collect();
        let log_head = store.log_head()?;
        let certificates_refused = store.certificates_refused()?;
        let durable = Mutex::new(Durable { out: out.clone(), certificates_refused });
        let writer = Mutex::new(Writer { audit, out, log_head, certificates_refused });
        Ok(Self {
            store,
            data_key,
            salt,
            clock,
            division,
            writer,
            durable,
            exchange: None,
            reports: None,
            retention_years: RETENTION_YEARS_DEFAULT,
        })
    }

    pub fn division(&self) -> &Division {
        &self.division
    }

    fn lock(&self) -> WriterGuard<'_> {
        // A panic while holding the lock leaves no half-written state (writes are single
        // batches), so the guard of a poisoned lock is safe to use.
        let started = std::time::Instant::now();
        let guard = self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        metrics::histogram!(crate::metrics::names::COMMIT_LOCK_WAIT_SECONDS).record(started.elapsed().as_secs_f64());
        guard
    }

    fn durable(&self) -> std::sync::MutexGuard<'_, Durable> {
        self.durable.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a move-in. The same move-in again returns the stored record and
    /// `created == false`; a different one for a person already active here is refused.
    pub fn move_in(&self, req: &pb::RegisterMoveInRequest) -> Result<(pb::Person, bool), RegistryError> {
        let m = MoveIn::validate(req, &self.division, self.clock.today())?;
        let writer = self.lock();
        let mut txn = Txn::new(self.store.batch());
        let (person, created) = self.prepare_move_in(&writer, &mut txn, &m)?;
        self.commit_txn(writer, txn)?;
        if created {
            tracing::debug!(person = ?self.salt.person_key(m.id.as_str()), role = role_name(person.role), "move-in registered");
        }
        Ok((person, created))
    }

    /// Registers up to [`MOVE_INS_MAX`] move-ins with one write: each is checked and
    /// answered on its own, in order, as [`Registry::move_in`] would; the same person twice
    /// in one request is registered once and then repeated.
    pub fn move_ins(&self, reqs: &[pb::RegisterMoveInRequest]) -> Result<Vec<MoveInOutcome>, RegistryError> {
        if reqs.len() > MOVE_INS_MAX {
            return Err(InvalidField::new(
                "move_ins",
                reqs.len(),
                format!("must hold at most {MOVE_INS_MAX} move-ins"),
            )
            .into());
        }
        let today = self.clock.today();
        // Checked before the writer lock is taken: most of the CPU of a move-in.
        let checked: Vec<_> = reqs.iter().map(|req| MoveIn::validate(req, &self.division, today)).collect();
        let writer = self.lock();
        let mut txn = Txn::new(self.store.batch());
        let results: Vec<MoveInOutcome> =
            checked.into_iter().map(|m| self.prepare_move_in(&writer, &mut txn, &m?)).collect();
        self.commit_txn(writer, txn)?;
        let created = results.iter().filter(|r| matches!(r, Ok((_, true)))).count();
        tracing::info!(requested = reqs.len(), created, "move-ins registered");
        Ok(results)
    }

    /// Adds one checked move-in to `txn`: a new record and her notice, or (the same move-in
    /// again) only the audit entry of the repeat. Nothing is added when it is refused.
    fn prepare_move_in(
        &self,
        writer: &Writer,
        txn: &mut Txn<'_>,
        m: &MoveIn,
    ) -> Result<(pb::Person, bool), RegistryError> {
        let key = self.salt.person_key(m.id.as_str());
        let mut earlier = PersonSecret::default();
        if let Some(existing) = self.txn_person(txn, &key)? {
            // After a purge nothing of her is known here but counts: she starts afresh.
            let secret = self.open_or_purged(&key, &existing)?;
            if existing.status == pb::PersonStatus::Active as i32 {
                if same_move_in(&existing, &secret, m) {
                    if txn.batch.is_empty() {
                        txn.within_reserve();
                    }
                    txn.audit("move_in_repeat", Some(&key));
                    return Ok((self.view(&existing, secret), false));
                }
                return Err(RegistryError::AlreadyRegistered {
                    since: from_day_number(existing.move_in_day),
                    role: role_name(existing.role),
                });
            }
            earlier = secret;
        }
        // A new registration after a move-out keeps her service history and certificate.
        let secret = PersonSecret {
            id_number: m.id.as_str().to_owned(),
            name: m.name.clone(),
            phone: m.phone.clone(),
            address: m.address.clone(),
            services: earlier.services,
            certificate_number: earlier.certificate_number,
            photo_digest: earlier.photo_digest,
        };
        let mut record = PersonRecord {
            person_key: key.0.to_vec(),
            role: m.role.to_proto() as i32,
            category: m.category.to_proto() as i32,
            status: pb::PersonStatus::Active as i32,
            division: m.division.as_str().to_owned(),
            origin_division: m.origin.as_str().to_owned(),
            move_in_day: day_number(m.date),
            move_out_day: None,
            next_division: String::new(),
            updated_at_ms: self.clock.now().timestamp_millis(),
            sealed: self.seal(&key, &secret),
            sync: None,
            purged_day: None,
            local_resident: m.local,
        };
        // A local resident (her household is in this city) is no floating person: her
        // origin is not notified and no report cycle runs for her.
        if m.role != crate::domain::Role::Origin && !m.local {
            // A notice is a few hundred bytes (every field is bounded): never over the
            // envelope limit, so `txn` cannot be refused for it.
            self.notify_move_in(writer, txn, &key, &mut record, &secret, m);
        }
        txn.put_person(&key, record.clone());
        txn.audit("move_in", Some(&key));
        Ok((self.view(&record, secret), true))
    }

    /// Registers that she left. Repeating the same move-out changes nothing.
    pub fn move_out(&self, req: &pb::RegisterMoveOutRequest) -> Result<pb::Person, RegistryError> {
        let m = MoveOut::validate(req, self.clock.today())?;
        let key = self.salt.person_key(m.id.as_str());
        let writer = self.lock();
        let mut record = self.store.person(&key)?.ok_or(RegistryError::NotFound)?;
        let secret = self.open(&key, &record)?;
        if let Some(day) = record.move_out_day {
            if day == day_number(m.date) && record.status == pb::PersonStatus::MovedOut as i32 {
                self.commit_audit(writer, self.store.batch(), "move_out_repeat", Some(&key))?;
                return Ok(self.view(&record, secret));
            }
            return Err(RegistryError::MovedOut { on: from_day_number(day) });
        }
        let moved_in = from_day_number(record.move_in_day);
        if m.date < moved_in {
            return Err(InvalidField::new("date", &req.date, format!("is before her move-in on {moved_in}")).into());
        }
        record.status = pb::PersonStatus::MovedOut as i32;
        record.move_out_day = Some(day_number(m.date));
        record.next_division = m.next_division.map(|d| d.as_str().to_owned()).unwrap_or_default();
        record.updated_at_ms = self.clock.now().timestamp_millis();
        let mut txn = Txn::new(self.store.batch());
        if record.role != pb::Role::Origin as i32 && !record.local_resident {
            self.notify_move_out(&writer, &mut txn, &key, &record);
        }
        txn.put_person(&key, record.clone());
        txn.audit("move_out", Some(&key));
        self.commit_txn(writer, txn)?;
        tracing::debug!(person = ?key, "move-out registered");
        Ok(self.view(&record, secret))
    }

    /// Records a service. The same service (kind and date) twice is stored once.
    pub fn record_service(&self, req: &pb::RecordServiceRequest) -> Result<pb::Person, RegistryError> {
        let s = ServiceGiven::validate(req, self.clock.today())?;
        let key = self.salt.person_key(s.id.as_str());
        let writer = self.lock();
        let mut record = self.store.person(&key)?.ok_or(RegistryError::NotFound)?;
        if let Some(day) = record.move_out_day {
            return Err(RegistryError::MovedOut { on: from_day_number(day) });
        }
        let moved_in = from_day_number(record.move_in_day);
        if s.date < moved_in {
            return Err(InvalidField::new("date", &req.date, format!("is before her move-in on {moved_in}")).into());
        }
        let mut secret = self.open(&key, &record)?;
        let day = day_number(s.date);
        if secret.services.iter().any(|e| e.kind == s.kind as i32 && e.day == day) {
            self.commit_audit(writer, self.store.batch(), "record_service_repeat", Some(&key))?;
            return Ok(self.view(&record, secret));
        }
        let quarter = crate::domain::Period::of(s.date);
        let in_quarter = secret.services.iter().filter(|e| quarter.contains(from_day_number(e.day))).count();
        if in_quarter >= SERVICES_PER_QUARTER_MAX {
            return Err(InvalidField::new(
                "date",
                &req.date,
                format!(
                    "falls in {quarter}, which already has {in_quarter} services recorded for her, \
                     the most one quarterly report carries ({SERVICES_PER_QUARTER_MAX})"
                ),
            )
            .into());
        }
        secret.services.push(ServiceEntry { kind: s.kind as i32, day, details: s.details });
        secret.services.sort_by_key(|e| (e.day, e.kind));
        record.sealed = self.seal(&key, &secret);
        record.updated_at_ms = self.clock.now().timestamp_millis();
        let mut batch = self.store.batch();
        batch.put_person(&key, &record);
        self.commit_audit(writer, batch, "record_service", Some(&key))?;
        tracing::debug!(person = ?key, "service recorded");
        Ok(self.view(&record, secret))
    }

    pub fn get(&self, req: &pb::GetPersonRequest) -> Result<pb::Person, RegistryError> {
        self.get_within(req, None)
    }

    /// [`Registry::get`] for a caller limited to `township`: a person registered outside it
    /// is refused (and the refusal audited) before anything of her record is opened. A
    /// lookup that finds nobody is audited too, so a probe for who is registered here
    /// leaves a trace.
    pub fn get_within(&self, req: &pb::GetPersonRequest, township: Option<&str>) -> Result<pb::Person, RegistryError> {
        let id = crate::domain::ResidentId::parse("id_number", &req.id_number)?;
        let key = self.salt.person_key(id.as_str());
        // Read without the writer lock: the answer waits for its audit entry to be durable,
        // and with it everything written before, so nothing it shows can be taken back.
        let Some(record) = self.store.person(&key)? else {
            self.commit_audit(self.lock(), self.store.batch(), "read_not_found", Some(&key))?;
            return Err(RegistryError::NotFound);
        };
        if let Some(township) = township.filter(|t| !record.division.starts_with(t)) {
            let rule = format!("she is not registered in township {township}, the only one this account may see");
            self.audit_refusal(crate::staff::actor::current().unwrap_or_default(), Some(&key), &rule)?;
            return Err(RegistryError::OutsideTownship { township: township.to_owned() });
        }
        if record.is_purged() {
            self.commit_audit(self.lock(), self.store.batch(), "read_purged", Some(&key))?;
        }
        let secret = self.open(&key, &record)?;
        self.commit_audit(self.lock(), self.store.batch(), "read", Some(&key))?;
        Ok(self.view(&record, secret))
    }

    /// One page of persons matching the filters, in `person_key` order.
    pub fn list(&self, req: &pb::ListPersonsRequest) -> Result<pb::ListPersonsResponse, RegistryError> {
        let page_size = page_size(req.page_size, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)?;
        let after = match req.page_token.as_str() {
            "" => None,
            token => Some(PersonKey::from_hex(token).ok_or_else(|| {
                InvalidField::new("page_token", token, "must be the next_page_token of a previous page")
            })?),
        };
        let role = filter("role", req.role, pb::Role::try_from(req.role).is_ok())?;
        let category = filter("category", req.category, pb::Category::try_from(req.category).is_ok())?;
        let status = filter("status", req.status, pb::PersonStatus::try_from(req.status).is_ok())?;
        let township = self.township_filter(&req.township)?;

        let mut persons = Vec::new();
        let mut last = None;
        let mut more = false;
        let mut unreadable = 0;
        for item in self.store.persons_after(after) {
            let (key, record) = item?;
            let matches = role.is_none_or(|r| r == record.role)
                && category.is_none_or(|c| c == record.category)
                && status.is_none_or(|s| s == record.status)
                && township.as_ref().is_none_or(|t| record.division.starts_with(t.as_str()));
            // A purged record has no fields to show: it is counted, never listed.
            if !matches || record.is_purged() {
                continue;
            }
            if persons.len() == page_size {
                more = true;
                break;
            }
            last = Some(key);
            match self.open(&key, &record) {
                Ok(secret) => persons.push(self.view(&record, secret)),
                Err(e) => {
                    unreadable += 1;
                    tracing::error!(person = ?key, error = %e, "person record left out of the list");
                }
            }
        }
        let mut txn = Txn::new(self.store.batch());
        txn.within_reserve();
        let disclosed = persons.iter().filter_map(|p| PersonKey::from_hex(&p.person_key)).collect();
        txn.audit_note(AuditNote { disclosed, ..AuditNote::new("list", None) });
        self.commit_txn(self.lock(), txn)?;
        let next_page_token = match (more, last) {
            (true, Some(k)) => k.to_hex(),
            _ => String::new(),
        };
        Ok(pb::ListPersonsResponse { persons, next_page_token, unreadable })
    }

    /// A list's township filter: empty for none, else a 9-digit township of this node.
    fn township_filter(&self, raw: &str) -> Result<Option<String>, InvalidField> {
        if raw.is_empty() {
            return Ok(None);
        }
        let township = Division::parse("township", raw)?;
        if township.as_str().len() != 9 || !self.division.contains(&township) {
            return Err(InvalidField::new(
                "township",
                raw,
                format!("must be a 9-digit township within this node's division {}", self.division),
            ));
        }
        Ok(Some(township.as_str().to_owned()))
    }

    fn seal(&self, key: &PersonKey, secret: &PersonSecret) -> Vec<u8> {
        let plain = zeroize::Zeroizing::new(secret.encode_to_vec());
        self.data_key.seal(&PersonRecordKey(*key).encode(), &plain)
    }

    /// Her personal fields; [`RegistryError::Purged`] once retention removed them.
    fn open(&self, key: &PersonKey, record: &PersonRecord) -> Result<PersonSecret, RegistryError> {
        if record.is_purged() {
            return Err(RegistryError::Purged { on: from_day_number(record.purged_day.unwrap_or_default()) });
        }
        let plain = self.data_key.open(&PersonRecordKey(*key).encode(), &record.sealed)?;
        PersonSecret::decode(plain.as_slice())
            .map_err(|e| StorageError::Corrupt { what: "person record", detail: e.to_string() }.into())
    }

    /// Her personal fields, or none once purged: for a change that starts her record
    /// afresh (a new move-in, a peer's notice) rather than one that needs what was there.
    fn open_or_purged(&self, key: &PersonKey, record: &PersonRecord) -> Result<PersonSecret, RegistryError> {
        match record.is_purged() {
            true => Ok(PersonSecret::default()),
            false => self.open(key, record),
        }
    }

    /// Adds the audit entry for this access to `batch` and commits it; the in-memory chain
    /// head moves only once the batch is durable.
    fn commit_audit(
        &self,
        writer: WriterGuard<'_>,
        batch: Batch<'_>,
        action: &str,
        person: Option<&PersonKey>,
    ) -> Result<(), StorageError> {
        // An access that changes nothing is still audited below the disk reserve: its entry
        // is small, and refusing it would refuse reads.
        let read = batch.is_empty();
        let mut txn = Txn::new(batch);
        txn.audit(action, person);
        if read {
            txn.within_reserve();
        }
        self.commit_txn(writer, txn)
    }

    fn view(&self, record: &PersonRecord, secret: PersonSecret) -> pb::Person {
        let day = |d: Option<i32>| d.map(|d| from_day_number(d).to_string()).unwrap_or_default();
        let sync = record.sync.clone().unwrap_or_default();
        let sync = pb::SyncState {
            notified_by: sync.notified_by,
            notified_division: sync.notified_division,
            feedback: sync.feedback,
            feedback_due: day(sync.feedback_due_day),
            certificate: sync.certificate,
            certificate_number: secret.certificate_number.clone(),
            certificate_valid_until: day(sync.certificate_valid_until_day),
            transfer: sync.transfer,
            transfer_peer: sync.transfer_peer,
            served_periods: sync
                .served_periods
                .iter()
                .map(|&p| crate::domain::Period::from_index(p).to_string())
                .collect(),
            residence: sync.residence,
        };
        pb::Person {
            sync: Some(sync),
            local_resident: record.local_resident,
            person_key: hex::encode(&record.person_key),
            id_number: secret.id_number,
            name: secret.name,
            phone: secret.phone,
            role: record.role,
            category: record.category,
            status: record.status,
            division: record.division.clone(),
            address: secret.address,
            move_in_date: from_day_number(record.move_in_day).to_string(),
            move_out_date: record.move_out_day.map(|d| from_day_number(d).to_string()).unwrap_or_default(),
            next_division: record.next_division.clone(),
            origin_division: record.origin_division.clone(),
            services: secret
                .services
                .into_iter()
                .map(|s| pb::Service { kind: s.kind, date: from_day_number(s.day).to_string(), details: s.details })
                .collect(),
        }
    }
}

/// SHA-256 of an audit entry's stored form: what the next entry links to.
pub fn audit_hash(entry: &AuditEntry) -> Vec<u8> {
    Sha256::digest(crate::storage::codec::encode(entry)).to_vec()
}

/// Checks the whole audit chain: entries 1, 2, 3 … with none missing, each linking to the
/// hash of its predecessor, and the head naming the last entry and its hash. Returns the
/// entry count, or where the chain first breaks. The chain is a plain hash chain: an
/// edited entry shows as the next one not linking to it (or, for the last, as the head
/// not matching), so the fault names both.
pub fn verify_audit_chain(store: &Store) -> Result<u64, String> {
    let mut prev = Vec::new();
    let mut count = 0;
    for item in store.audit_entries() {
        let (index, entry) = item.map_err(|e| format!("the audit log cannot be read after entry {count}: {e}"))?;
        let expected = count + 1;
        if index != expected {
            return Err(match index > expected {
                true if index == expected + 1 => {
                    format!("audit entry {expected} is missing (entry {index} follows {count})")
                }
                true => {
                    format!("audit entries {expected} to {} are missing (entry {index} follows {count})", index - 1)
                }
                false => format!("audit entry {index} is out of order (after {count})"),
            });
        }
        let entry = entry.map_err(|e| format!("audit entry {index} was changed: it does not decode ({e})"))?;
        if entry.seq != index {
            return Err(format!("audit entry {index} was changed: it says it is entry {}", entry.seq));
        }
        if entry.prev_hash != prev {
            return Err(format!(
                "audit entry {} or {index} was changed: entry {index} does not link to the hash of entry {}",
                index - 1,
                index - 1
            ));
        }
        prev = audit_hash(&entry);
        count = index;
    }
    let head = store.audit_head().map_err(|e| format!("the audit head cannot be read: {e}"))?;
    if head.seq == count + 1 {
        return Err(format!(
            "audit entry {} is missing: the log ends at {count}, the head names {}",
            head.seq, head.seq
        ));
    }
    if head.seq > count {
        return Err(format!("audit entries {} to {} are missing: the log ends at {count}", count + 1, head.seq));
    }
    if head.seq != count {
        return Err(format!("the audit head names entry {}, but the log holds {count} entries", head.seq));
    }
    if head.hash != prev {
        return Err(format!(
            "audit entry {count} (the last) or the head was changed: the head's hash does not match it"
        ));
    }
    Ok(count)
}

fn same_move_in(record: &PersonRecord, secret: &PersonSecret, m: &MoveIn) -> bool {
    record.role == m.role.to_proto() as i32
        && record.category == m.category.to_proto() as i32
        && record.division == m.division.as_str()
        && record.origin_division == m.origin.as_str()
        && record.move_in_day == day_number(m.date)
        && secret.name == m.name
        && secret.phone == m.phone
        && secret.address == m.address
}

fn role_name(role: i32) -> &'static str {
    match pb::Role::try_from(role) {
        Ok(pb::Role::Origin) => "ORIGIN",
        Ok(pb::Role::Residence) => "RESIDENCE",
        Ok(pb::Role::Workplace) => "WORKPLACE",
        _ => "UNSPECIFIED",
    }
}

/// The page size a list request asks for: `default` for 0, an error above `max`.
fn page_size(raw: u32, default: u32, max: u32) -> Result<usize, InvalidField> {
    match raw {
        0 => Ok(default as usize),
        n if n <= max => Ok(n as usize),
        n => Err(InvalidField::new("page_size", n, format!("must be at most {max}"))),
    }
}

/// A list filter: `None` for UNSPECIFIED (match all), an error for unknown values.
fn filter(field: &'static str, raw: i32, known: bool) -> Result<Option<i32>, InvalidField> {
    match (raw, known) {
        (0, _) => Ok(None),
        (_, true) => Ok(Some(raw)),
        (_, false) => Err(InvalidField::new(field, raw, "is not a known value of this enum")),
    }
}

#[cfg(test)]
mod exchange_tests;
#[cfg(test)]
mod report_tests;
#[cfg(test)]
mod tests;
