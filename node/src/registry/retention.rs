//! Retention: a person's personal fields are kept `retention.years` after she moved out of
//! this node's division, then purged once nothing about her is open. What goes: her
//! sealed record (ID number, name, phone, address, services, certificate number, photo
//! digest), where she moved on to, and the sealed content and free-text detail of her
//! reports. What stays: the pseudonymous record (key, role, category, divisions, dates,
//! exchange state) and each report's status and dates, so every count of the assessment
//! is the same after the purge as before. The message log never held personal fields
//! (kind, peer, seq, her key), and acknowledged envelopes are already gone from the
//! outbox; one waiting for an ack keeps her from being purged.

use std::collections::HashSet;

use chrono::{Months, NaiveDate};
use ldx_proto::v1 as pb;

use super::sync::Txn;
use super::{Registry, RegistryError};
use crate::clock::{day_number, from_day_number};
use crate::crypto::PersonKey;
use crate::storage::StorageError;
use crate::storage::records::{PersonRecord, ReportRecord};

/// Years a moved-out person's personal fields are kept (`retention.years`).
pub const RETENTION_YEARS_DEFAULT: u32 = 2;
/// Most items one `RunRetention` answer lists; `total` counts them all.
pub const RETENTION_LISTED_MAX: usize = 1000;
/// Persons purged per write: each purge is whole within one batch.
const PURGES_PER_BATCH: usize = 64;

/// A person retention may purge, as found by the scan.
struct Candidate {
    key: PersonKey,
    record: PersonRecord,
    reports: Vec<(crate::storage::keys::ReportKey, ReportRecord)>,
}

impl Registry {
    /// Keeps moved-out persons' personal fields `years` after the move-out (at least 1).
    pub fn with_retention_years(mut self, years: u32) -> Self {
        self.retention_years = years.max(1);
        self
    }

    /// The last move-out day whose person is due today.
    fn retention_cutoff(&self) -> NaiveDate {
        let today = self.clock.today();
        today.checked_sub_months(Months::new(12 * self.retention_years)).unwrap_or(NaiveDate::MIN)
    }

    /// Purges (or, with `dry_run`, lists) every person due under the retention rule, then
    /// compacts the store so the purged values leave the files on disk. Works through the
    /// persons in chunks: memory stays bounded however many are due.
    pub fn run_retention(&self, dry_run: bool) -> Result<pb::RunRetentionResponse, RegistryError> {
        let cutoff = self.retention_cutoff();
        let cutoff_day = day_number(cutoff);
        let due: HashSet<PersonKey> = self.store.due_items()?.into_iter().map(|(k, _)| k.person).collect();
        let unacked = self.unacked_persons()?;
        let mut resp = pb::RunRetentionResponse { moved_out_by: cutoff.to_string(), dry_run, ..Default::default() };
        let mut chunk = Vec::with_capacity(PURGES_PER_BATCH);
        let mut persons = self.store.persons_after(None);
        loop {
            let next = persons.next().transpose()?;
            let finished = next.is_none();
            if let Some((key, record)) = next {
                if !due_for_retention(&record, cutoff_day) {
                    continue;
                }
                let reports = self.store.reports_of(&key)?;
                let transfer_open = record.sync.as_ref().is_some_and(|s| s.transfer == "requested");
                let verdict_open = reports.iter().any(|(_, r)| r.verdict_day.is_none());
                if due.contains(&key) || unacked.contains(&key) || transfer_open || verdict_open {
                    resp.kept_open += 1;
                    continue;
                }
                chunk.push(Candidate { key, record, reports });
                if chunk.len() < PURGES_PER_BATCH {
                    continue;
                }
            }
            let done = if dry_run { chunk.iter().collect() } else { self.purge(&chunk)? };
            for c in done {
                resp.total += 1;
                if resp.items.len() < RETENTION_LISTED_MAX {
                    resp.items.push(pb::RetentionItem {
                        person_key: c.key.to_hex(),
                        moved_out_on: c.record.move_out_day.map(|d| from_day_number(d).to_string()).unwrap_or_default(),
                        reports: u32::try_from(c.reports.len()).unwrap_or(u32::MAX),
                    });
                }
            }
            chunk.clear();
            if finished {
                break;
            }
        }
        drop(persons);
        if !dry_run && resp.total > 0 {
            self.store.compact_personal()?;
        }
        if !dry_run {
            tracing::info!(purged = resp.total, kept_open = resp.kept_open, moved_out_by = %cutoff, "retention run");
        }
        Ok(resp)
    }

    /// Persons named by an envelope this node sent that its peer has not acknowledged.
    fn unacked_persons(&self) -> Result<HashSet<PersonKey>, StorageError> {
        let acked: std::collections::HashMap<String, u64> =
            self.outbound().into_iter().map(|(peer, c)| (peer, c.acked_seq)).collect();
        let mut out = HashSet::new();
        self.each_log_record(|e| {
            let sent = e.direction == pb::Direction::Sent as i32;
            if sent
                && e.seq > acked.get(&e.peer).copied().unwrap_or(0)
                && let Ok(key) = <[u8; 32]>::try_from(e.person_key.as_slice())
            {
                out.insert(PersonKey(key));
            }
        })?;
        Ok(out)
    }

    /// Purges `chunk` in one batch, each person checked again under the writer lock: one
    /// whose record changed since the scan (she moved back in, say) is left for the next
    /// run. Returns those purged.
    fn purge<'c>(&self, chunk: &'c [Candidate]) -> Result<Vec<&'c Candidate>, RegistryError> {
        let writer = self.lock();
        let mut txn = Txn::new(self.store.batch());
        let today = day_number(self.clock.today());
        let mut done = Vec::new();
        for c in chunk {
            if self.store.person(&c.key)?.as_ref() != Some(&c.record) || self.store.reports_of(&c.key)? != c.reports {
                continue;
            }
            let mut record = c.record.clone();
            record.sealed.clear();
            record.next_division.clear();
            record.purged_day = Some(today);
            record.updated_at_ms = self.clock.now().timestamp_millis();
            txn.put_person(&c.key, record);
            for (key, report) in &c.reports {
                let mut report = report.clone();
                report.sealed.clear();
                report.detail.clear();
                report.purged_day = Some(today);
                txn.batch.put_report(key, &report);
            }
            txn.audit("retention_purge", Some(&c.key));
            done.push(c);
        }
        if !done.is_empty() {
            // A purge frees space: it is never refused for the disk reserve.
            txn.within_reserve();
            self.commit_txn(writer, txn)?;
        }
        Ok(done)
    }
}

/// Whether `record` is a moved-out person, gone on or before `cutoff_day`, whose personal
/// fields are still held.
fn due_for_retention(record: &PersonRecord, cutoff_day: i32) -> bool {
    record.status == pb::PersonStatus::MovedOut as i32
        && record.move_out_day.is_some_and(|d| d <= cutoff_day)
        && !record.is_purged()
}
