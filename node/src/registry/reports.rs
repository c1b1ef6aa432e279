//! Quarterly service reports (报告单) and verdicts (回函). Her residence node issues one
//! report per quarter with the services she was given, signs it and sends it to her
//! origin. The origin checks it automatically (signature, issuer is her residence as
//! notified, a quarter not yet reported, well-formed, issued in its window), then the
//! identity step: a photo digest equal to the one on file qualifies the report at once;
//! otherwise an operator decides. The signed verdict goes back to the residence. A
//! qualified report marks her served for the quarter, so nobody may ask her to travel
//! back to her origin for a check.

use std::sync::Arc;

use chrono::NaiveDate;
use ldx_proto::identity::{PublicKey, SignKey};
use ldx_proto::v1 as pb;
use ldx_proto::v1::envelope::Body;
use prost::Message;

use super::apply::{Fail, refuse};
use super::flows::add_days;
use super::sync::Txn;
use super::{Registry, RegistryError, Writer, WriterGuard};
use crate::clock::{day_number, from_day_number};
use crate::crypto::PersonKey;
use crate::domain::{InvalidField, Period, ResidentId};
use crate::storage::StorageError;
use crate::storage::keys::{ReportIdKey, ReportKey};
use crate::storage::records::{PersonRecord, PersonSecret, ReportRecord};

/// The signing key of a node in the directory, by division code.
pub type KeyLookup = Arc<dyn Fn(&str) -> Option<PublicKey> + Send + Sync>;

/// What reports and verdicts need beyond the exchange: this node's signing key and the
/// directory's keys of the others.
pub struct ReportHooks {
    pub signer: SignKey,
    pub keys: KeyLookup,
}

impl std::fmt::Debug for ReportHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportHooks").field("signer", &self.signer.public().to_bytes()).finish()
    }
}

const SHA256_HEX: usize = 64;

/// Reports in one `ListReports` page unless asked otherwise, and at most.
pub const REPORT_PAGE_SIZE_DEFAULT: u32 = 500;
pub const REPORT_PAGE_SIZE_MAX: u32 = 5000;

/// How many reports a node holds in one state (see [`Registry::report_counts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportCount {
    pub issued_here: bool,
    pub status: pb::ReportStatus,
    pub reason: pb::RejectReason,
    pub count: u64,
}

/// How the origin's automatic checks end.
enum Check {
    Qualified,
    /// The photo could not be matched: an operator decides.
    AwaitingOperator(String),
    Rejected(pb::RejectReason, String),
}

fn services_of(secret: &PersonSecret, period: Period) -> Vec<pb::ServiceRecord> {
    secret
        .services
        .iter()
        .filter(|s| period.contains(from_day_number(s.day)))
        .map(|s| pb::ServiceRecord {
            kind: s.kind,
            date: from_day_number(s.day).to_string(),
            details: s.details.clone(),
        })
        .collect()
}

impl Registry {
    /// Attaches report signing and verification.
    pub fn with_reports(mut self, hooks: ReportHooks) -> Self {
        self.reports = Some(hooks);
        self
    }

    /// Files the digest of her photo at this node.
    pub fn record_photo(&self, req: &pb::RecordPhotoRequest) -> Result<pb::Person, RegistryError> {
        let id = ResidentId::parse("id_number", &req.id_number)?;
        let digest = req.photo_digest.trim().to_ascii_lowercase();
        let bytes = match hex::decode(&digest) {
            Ok(b) if digest.len() == SHA256_HEX => b,
            _ => {
                return Err(InvalidField::new(
                    "photo_digest",
                    &req.photo_digest,
                    "must be the SHA-256 of the photo, 64 hex digits",
                )
                .into());
            }
        };
        let key = self.salt.person_key(id.as_str());
        let writer = self.lock();
        let mut record = self.store.person(&key)?.ok_or(RegistryError::NotFound)?;
        let mut secret = self.open(&key, &record)?;
        if secret.photo_digest == bytes {
            self.commit_audit(writer, self.store.batch(), "record_photo_repeat", Some(&key))?;
            return Ok(self.view(&record, secret));
        }
        secret.photo_digest = bytes;
        record.sealed = self.seal(&key, &secret);
        record.updated_at_ms = self.clock.now().timestamp_millis();
        let mut batch = self.store.batch();
        batch.put_person(&key, &record);
        self.commit_audit(writer, batch, "record_photo", Some(&key))?;
        Ok(self.view(&record, secret))
    }

    /// Issues her report for a quarter (the current one when `period` is empty) and sends
    /// it to her origin. The same report again returns the stored one and `false`.
    pub fn issue_report(&self, req: &pb::IssueReportRequest) -> Result<(pb::Report, bool), RegistryError> {
        let id = ResidentId::parse("id_number", &req.id_number)?;
        let today = self.clock.today();
        let period = match req.period.as_str() {
            "" => Period::of(today),
            raw => Period::parse("period", raw)?,
        };
        if period.first_day() > today {
            return Err(InvalidField::new("period", period.to_string(), "has not begun yet").into());
        }
        let key = self.salt.person_key(id.as_str());
        let writer = self.lock();
        let record = self.store.person(&key)?.ok_or(RegistryError::NotFound)?;
        let report_key = ReportKey { person: key, period: period.index(), issuer: self.division.as_str().to_owned() };
        if let Some(existing) = self.store.report(&report_key)? {
            self.commit_audit(writer, self.store.batch(), "issue_report_repeat", Some(&key))?;
            return Ok((self.report_view(&report_key, &existing)?, false));
        }
        let stored = self.issue_locked(writer, &key, &record, period)?;
        Ok((self.report_view(&report_key, &stored)?, true))
    }

    /// The scheduled job: issues every report that is due and ready, i.e. for each
    /// resident active here, the current quarter (and the previous one while its window
    /// is open) when services and a photo are on file and no report was issued yet.
    /// Returns how many it issued.
    pub fn issue_due_reports(&self) -> Result<usize, RegistryError> {
        if self.reports.is_none() || !self.is_syncing() {
            return Ok(0);
        }
        let today = self.clock.today();
        let periods = self.open_periods(today);
        let mut issued = 0;
        for item in self.store.persons_after(None) {
            let (key, record) = item?;
            if record.role != pb::Role::Residence as i32
                || record.status != pb::PersonStatus::Active as i32
                || record.local_resident
            {
                continue;
            }
            for &period in &periods {
                let report_key =
                    ReportKey { person: key, period: period.index(), issuer: self.division.as_str().to_owned() };
                if self.store.report(&report_key)?.is_some() {
                    continue;
                }
                let writer = self.lock();
                // Read again under the lock: a staff request may have changed her since.
                let Some(record) = self.store.person(&key)? else { continue };
                match self.issue_locked(writer, &key, &record, period) {
                    Ok(_) => issued += 1,
                    Err(RegistryError::Invalid(e)) => {
                        tracing::debug!(person = ?key, %period, reason = %e, "report not ready");
                    }
                    Err(RegistryError::Storage(e @ StorageError::EnvelopeTooLarge { .. })) => {
                        tracing::warn!(person = ?key, %period, error = %e, "report not issued");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if issued > 0 {
            tracing::info!(issued, "scheduled job issued quarterly reports");
        }
        Ok(issued)
    }

    /// Quarters a report may still be issued for on `today`: the current one, and the
    /// previous one until its window closes.
    fn open_periods(&self, today: NaiveDate) -> Vec<Period> {
        let current = Period::of(today);
        let previous = current.previous();
        let mut periods = vec![current];
        if today <= add_days(previous.last_day(), self.deadlines().report_days) {
            periods.insert(0, previous);
        }
        periods
    }

    fn issue_locked(
        &self,
        writer: WriterGuard<'_>,
        key: &PersonKey,
        record: &PersonRecord,
        period: Period,
    ) -> Result<ReportRecord, RegistryError> {
        let hidden = "(not shown)";
        if record.local_resident {
            return Err(InvalidField::new(
                "id_number",
                hidden,
                "is a local resident here (her household registration is in this city): no report cycle runs for her",
            )
            .into());
        }
        let Some(hooks) = self.reports.as_ref().filter(|_| self.is_syncing()) else {
            return Err(RegistryError::NotSyncing);
        };
        if record.role != pb::Role::Residence as i32 {
            return Err(InvalidField::new(
                "id_number",
                hidden,
                "must be registered here as RESIDENCE: only her residence issues her reports",
            )
            .into());
        }
        if let Some(day) = record.move_out_day {
            return Err(RegistryError::MovedOut { on: from_day_number(day) });
        }
        let secret = self.open(key, record)?;
        let services = services_of(&secret, period);
        if services.is_empty() {
            return Err(InvalidField::new(
                "period",
                period.to_string(),
                "has no service recorded for her here; record the quarter's health check first",
            )
            .into());
        }
        if secret.photo_digest.is_empty() {
            return Err(InvalidField::new(
                "id_number",
                hidden,
                "has no photo on file here; record one first (RecordPhoto, `ldx-node person photo`)",
            )
            .into());
        }
        let Some(origin) = self.peer_for(&record.origin_division) else {
            return Err(InvalidField::new("id_number", hidden, "her origin is served by this node").into());
        };
        let today = self.clock.today();
        let mut report = pb::ServiceReport {
            report_id: format!("{}-{period}-{}", self.division, hex::encode(&key.0[..6])),
            issuer: self.division.as_str().to_owned(),
            period: period.to_string(),
            issued_on: today.to_string(),
            services,
            photo_digest: secret.photo_digest.clone(),
            person_key: key.0.to_vec(),
            signature: Vec::new(),
        };
        ldx_proto::report::sign_report(&mut report, &hooks.signer);
        let report_key = ReportKey { person: *key, period: period.index(), issuer: report.issuer.clone() };
        let stored = ReportRecord {
            report_id: report.report_id.clone(),
            issued_here: true,
            sealed: self.seal_report(&report_key, &report),
            status: pb::ReportStatus::Issued as i32,
            issued_day: day_number(today),
            late: today > add_days(period.last_day(), self.deadlines().report_days),
            peer: origin.clone(),
            ..Default::default()
        };
        let mut txn = Txn::new(self.store.batch());
        txn.batch.put_report(&report_key, &stored);
        self.enqueue(&writer, &mut txn, &origin, key, Body::ServiceReport(report));
        txn.audit("issue_report", Some(key));
        self.commit_txn(writer, txn)?;
        tracing::info!(person = ?key, %period, origin = %origin, "service report issued");
        Ok(stored)
    }

    /// Reports issued or received here, filtered.
    pub fn list_reports(&self, req: &pb::ListReportsRequest) -> Result<pb::ListReportsResponse, RegistryError> {
        let page_size = super::page_size(req.page_size, REPORT_PAGE_SIZE_DEFAULT, REPORT_PAGE_SIZE_MAX)?;
        let after = match req.page_token.as_str() {
            "" => None,
            token => Some(hex::decode(token).ok().filter(|k| ReportKey::decode(k).is_ok()).ok_or_else(|| {
                InvalidField::new("page_token", token, "must be the next_page_token of a previous page")
            })?),
        };
        let status = super::filter("status", req.status, pb::ReportStatus::try_from(req.status).is_ok())?;
        let period = match req.period.as_str() {
            "" => None,
            raw => Some(Period::parse("period", raw)?.index()),
        };
        let township = self.township_filter(&req.township)?;
        let mut page = pb::ListReportsResponse::default();
        let mut last = None;
        for item in self.store.reports_after(after) {
            let (key, record) = item?;
            if status.is_some_and(|s| s != record.status) || period.is_some_and(|p| p != key.period) {
                continue;
            }
            if let Some(township) = &township {
                let within = self.store.person(&key.person)?.is_some_and(|p| p.division.starts_with(township.as_str()));
                if !within {
                    continue;
                }
            }
            if page.reports.len() + page.unreadable as usize == page_size {
                page.next_page_token = last.take().map(|k: ReportKey| hex::encode(k.encode())).unwrap_or_default();
                break;
            }
            match self.report_view(&key, &record) {
                Ok(report) => page.reports.push(report),
                Err(e) => {
                    page.unreadable += 1;
                    tracing::error!(person = ?key.person, period = key.period, error = %e, "report left out of the list");
                }
            }
            last = Some(key);
        }
        let mut txn = Txn::new(self.store.batch());
        txn.within_reserve();
        let disclosed = page.reports.iter().filter_map(|r| PersonKey::from_hex(&r.person_key)).collect();
        txn.audit_note(super::AuditNote { disclosed, ..super::AuditNote::new("list_reports", None) });
        self.commit_txn(self.lock(), txn)?;
        Ok(page)
    }

    /// At her origin: an operator's decision on a report awaiting verification. Deciding a
    /// report already decided changes nothing and returns `false`.
    pub fn verify_report(&self, req: &pb::VerifyReportRequest) -> Result<(pb::Report, bool), RegistryError> {
        self.verify_report_within(req, None)
    }

    /// [`Registry::verify_report`] for a caller limited to `township`: a report of a
    /// person registered outside it is refused, and the refusal audited.
    pub fn verify_report_within(
        &self,
        req: &pb::VerifyReportRequest,
        township: Option<&str>,
    ) -> Result<(pb::Report, bool), RegistryError> {
        let reason = pb::RejectReason::try_from(req.reason)
            .map_err(|_| InvalidField::new("reason", req.reason, "is not a known reject reason"))?;
        if req.accept && reason != pb::RejectReason::Unspecified {
            return Err(InvalidField::new("reason", reason.as_str_name(), "must be empty when accepting").into());
        }
        if !req.accept && reason == pb::RejectReason::Unspecified {
            return Err(InvalidField::new("reason", "", "is required to reject a report").into());
        }
        if reason == pb::RejectReason::Late {
            return Err(InvalidField::new(
                "reason",
                reason.as_str_name(),
                "is no ground to reject: a late report is judged on its merits, and the lateness counts \
                 against her residence, not her",
            )
            .into());
        }
        let detail = crate::domain::fields::optional_text("detail", &req.detail, 200, false)?;
        let writer = self.lock();
        let found = self.store.reports_with_id(&req.report_id)?.into_iter().find(|(_, r)| !r.issued_here);
        let Some((report_key, mut stored)) = found else {
            return Err(InvalidField::new("report_id", &req.report_id, "is not a report received at this node").into());
        };
        if let Some(township) = township {
            let within = self.store.person(&report_key.person)?.is_some_and(|p| p.division.starts_with(township));
            if !within {
                drop(writer);
                let rule =
                    format!("the report is of a person outside township {township}, the only one this account may see");
                self.audit_refusal(
                    crate::staff::actor::current().unwrap_or_default(),
                    Some(&report_key.person),
                    &rule,
                )?;
                return Err(RegistryError::OutsideTownship { township: township.to_owned() });
            }
        }
        if stored.status != pb::ReportStatus::AwaitingVerification as i32 {
            self.commit_audit(writer, self.store.batch(), "verify_report_repeat", Some(&report_key.person))?;
            return Ok((self.report_view(&report_key, &stored)?, false));
        }
        let report = self.open_report(&report_key, &stored)?;
        let check = if req.accept { Check::Qualified } else { Check::Rejected(reason, detail) };
        let mut txn = Txn::new(self.store.batch());
        self.decide(&writer, &mut txn, &report_key, &mut stored, &report, check).map_err(|e| match e {
            Fail::Error(e) => e,
            Fail::Refused(_) => RegistryError::NotSyncing,
        })?;
        txn.audit("verify_report", Some(&report_key.person));
        self.commit_txn(writer, txn)?;
        tracing::info!(report = %stored.report_id, accepted = req.accept, "report verified by an operator");
        Ok((self.report_view(&report_key, &stored)?, true))
    }

    /// Records the outcome at the origin and, once decided, sends the signed verdict.
    fn decide(
        &self,
        writer: &Writer,
        txn: &mut Txn<'_>,
        report_key: &ReportKey,
        stored: &mut ReportRecord,
        report: &pb::ServiceReport,
        check: Check,
    ) -> Result<(), Fail> {
        let today = self.clock.today();
        let (qualified, reason, detail) = match check {
            Check::AwaitingOperator(detail) => {
                stored.status = pb::ReportStatus::AwaitingVerification as i32;
                stored.detail = detail;
                txn.batch.put_report(report_key, stored);
                return Ok(());
            }
            Check::Qualified => (true, pb::RejectReason::Unspecified, String::new()),
            Check::Rejected(reason, detail) => (false, reason, detail),
        };
        let Some(hooks) = &self.reports else {
            return refuse("this node has no signing key for verdicts");
        };
        stored.status = if qualified { pb::ReportStatus::Qualified } else { pb::ReportStatus::Rejected } as i32;
        stored.reason = reason as i32;
        stored.detail.clone_from(&detail);
        stored.verdict_day = Some(day_number(today));
        txn.batch.put_report(report_key, stored);
        if qualified && let Some(mut person) = self.txn_person(txn, &report_key.person)? {
            let sync = person.sync.get_or_insert_with(Default::default);
            if !sync.served_periods.contains(&report_key.period) {
                sync.served_periods.push(report_key.period);
                sync.served_periods.sort_unstable();
            }
            person.updated_at_ms = self.clock.now().timestamp_millis();
            txn.put_person(&report_key.person, person);
        }
        let verdict = self.signed_verdict(hooks, report, qualified, reason, detail, stored.late);
        self.enqueue(writer, txn, &stored.peer, &report_key.person, Body::ReportVerdict(verdict));
        Ok(())
    }

    /// The verdict on `report`, dated today and signed by this node.
    fn signed_verdict(
        &self,
        hooks: &ReportHooks,
        report: &pb::ServiceReport,
        qualified: bool,
        reason: pb::RejectReason,
        detail: String,
        late: bool,
    ) -> pb::ReportVerdict {
        let mut verdict = pb::ReportVerdict {
            report_id: report.report_id.clone(),
            period: report.period.clone(),
            verifier: self.division.as_str().to_owned(),
            qualified,
            reason: reason as i32,
            detail,
            decided_on: self.clock.today().to_string(),
            signature: Vec::new(),
            late,
        };
        ldx_proto::report::sign_verdict(&mut verdict, &hooks.signer);
        verdict
    }

    /// At her origin: a report arrived. The envelope always takes effect: a report that
    /// fails a check is answered with a rejecting verdict that names the reason.
    pub(super) fn on_service_report(
        &self,
        writer: &Writer,
        txn: &mut Txn<'_>,
        from: &str,
        key: &PersonKey,
        r: &pb::ServiceReport,
    ) -> Result<(), Fail> {
        let Some(hooks) = &self.reports else {
            return refuse("this node does not verify reports (no signing key)");
        };
        let today = self.clock.today();
        let period = Period::parse("period", &r.period).ok();
        let mut stored = ReportRecord {
            report_id: r.report_id.clone(),
            issued_here: false,
            issued_day: NaiveDate::parse_from_str(&r.issued_on, "%Y-%m-%d").map(day_number).unwrap_or_default(),
            received_day: Some(day_number(today)),
            peer: from.to_owned(),
            ..Default::default()
        };
        let check = self.check_report(txn, hooks, from, key, r, period, today)?;
        // Issued after the quarter's window: the residence was late, not she. The report is
        // still checked and qualified on its merits; the verdict says it was late.
        stored.late = period
            .is_some_and(|p| from_day_number(stored.issued_day) > add_days(p.last_day(), self.deadlines().report_days));
        // A report is stored once per person, quarter and issuer; a second copy (or one
        // too malformed to file) is answered without replacing what is on file.
        // A report in another node's name is never filed under that node: it must not
        // stand in the way of the genuine one.
        let report_key = period.map(|p| ReportKey { person: *key, period: p.index(), issuer: r.issuer.clone() });
        let fresh = match &report_key {
            _ if matches!(check, Check::Rejected(pb::RejectReason::WrongIssuer, _)) => false,
            Some(k) if !r.report_id.is_empty() => self.store.report(k)?.is_none(),
            _ => false,
        };
        match (report_key, fresh) {
            (Some(report_key), true) => {
                stored.sealed = self.seal_report(&report_key, r);
                self.decide(writer, txn, &report_key, &mut stored, r, check)?;
            }
            _ => {
                let (reason, detail) = match check {
                    Check::Rejected(reason, detail) => (reason, detail),
                    _ => (pb::RejectReason::DuplicatePeriod, format!("{} was received before", r.report_id)),
                };
                let verdict = self.signed_verdict(hooks, r, false, reason, detail, stored.late);
                self.enqueue(writer, txn, from, key, Body::ReportVerdict(verdict));
            }
        }
        txn.audit("apply_service_report", Some(key));
        Ok(())
    }

    /// The origin's automatic checks, in the order the service rules give them.
    #[allow(clippy::too_many_arguments)]
    fn check_report(
        &self,
        txn: &Txn<'_>,
        hooks: &ReportHooks,
        from: &str,
        key: &PersonKey,
        r: &pb::ServiceReport,
        period: Option<Period>,
        today: NaiveDate,
    ) -> Result<Check, Fail> {
        use pb::RejectReason as Why;
        let reject = |why, detail: String| Ok(Check::Rejected(why, detail));
        if r.issuer != from {
            return reject(Why::WrongIssuer, format!("issued in the name of {:?} but sent by {from}", r.issuer));
        }
        let Some(issuer_key) = (hooks.keys)(&r.issuer) else {
            return reject(Why::WrongIssuer, format!("the directory lists no signing key for {}", r.issuer));
        };
        if ldx_proto::report::verify_report(r, &issuer_key).is_err() {
            return reject(Why::WrongIssuer, format!("the signature is not {}'s", r.issuer));
        }
        let person = self.txn_person(txn, key)?.filter(|p| p.role == pb::Role::Origin as i32);
        let residence = person.as_ref().and_then(|p| p.sync.as_ref()).map(|s| s.residence.clone()).unwrap_or_default();
        if person.is_none() {
            return reject(Why::NotHerResidence, format!("the origin {} holds no record of her", self.division));
        }
        if residence != r.issuer {
            let known = if residence.is_empty() { "no residence was notified".to_owned() } else { residence };
            return reject(Why::NotHerResidence, format!("{} is not her residence ({known})", r.issuer));
        }
        let Some(period) = period else {
            return reject(Why::Malformed, format!("period {:?} is not a quarter such as 2026Q1", r.period));
        };
        if let Some((_, earlier)) = self.store.reports_of(key)?.into_iter().find(|(k, rec)| {
            k.period == period.index()
                && (rec.status == pb::ReportStatus::Qualified as i32
                    || rec.status == pb::ReportStatus::AwaitingVerification as i32)
        }) {
            return reject(Why::DuplicatePeriod, format!("{period} is already reported ({})", earlier.report_id));
        }
        if r.report_id.is_empty() || r.person_key != key.0 {
            return reject(Why::Malformed, "report_id is empty or person_key is not the envelope's".into());
        }
        if r.report_id.len() > ReportIdKey::ID_MAX {
            return reject(
                Why::Malformed,
                format!("report_id is {} bytes, over {}", r.report_id.len(), ReportIdKey::ID_MAX),
            );
        }
        let Ok(issued) = NaiveDate::parse_from_str(&r.issued_on, "%Y-%m-%d") else {
            return reject(Why::Malformed, format!("issued_on {:?} is not a date YYYY-MM-DD", r.issued_on));
        };
        if issued < period.first_day() || issued > add_days(today, 1) {
            return reject(Why::Malformed, format!("issued on {issued}, outside {period} and today"));
        }
        for s in &r.services {
            match NaiveDate::parse_from_str(&s.date, "%Y-%m-%d") {
                Ok(d) if period.contains(d) && pb::ServiceKind::try_from(s.kind).is_ok() => {}
                _ => return reject(Why::Malformed, format!("service {:?} is not a known service in {period}", s.date)),
            }
        }
        let secret = match &person {
            Some(p) => self.open(key, p)?,
            None => PersonSecret::default(),
        };
        Ok(if secret.photo_digest.is_empty() {
            Check::AwaitingOperator("no photo of her on file here: an operator must verify it is her".into())
        } else if secret.photo_digest != r.photo_digest {
            Check::AwaitingOperator("the photo differs from the one on file: an operator must verify it is her".into())
        } else {
            Check::Qualified
        })
    }

    /// At her residence: her origin's verdict on a report issued here.
    pub(super) fn on_report_verdict(
        &self,
        txn: &mut Txn<'_>,
        from: &str,
        key: &PersonKey,
        v: &pb::ReportVerdict,
    ) -> Result<(), Fail> {
        let period = Period::parse("period", &v.period)?;
        let report_key = ReportKey { person: *key, period: period.index(), issuer: self.division.as_str().to_owned() };
        let Some(mut stored) = self.store.report(&report_key)?.filter(|s| s.report_id == v.report_id) else {
            return refuse(format!("no report {} was issued here", v.report_id));
        };
        if stored.peer != from || v.verifier != from {
            return refuse(format!("{from} is not the origin report {} was sent to", v.report_id));
        }
        let Some(verifier) = self.reports.as_ref().and_then(|h| (h.keys)(from)) else {
            return refuse(format!("the directory lists no signing key for {from}"));
        };
        if ldx_proto::report::verify_verdict(v, &verifier).is_err() {
            return refuse(format!("the verdict's signature is not {from}'s"));
        }
        if stored.status != pb::ReportStatus::Issued as i32 {
            return refuse(format!("report {} already has a verdict", v.report_id));
        }
        if !v.qualified && pb::RejectReason::try_from(v.reason).is_err() {
            return Err(InvalidField::new("reason", v.reason, "is not a known reject reason").into());
        }
        stored.status = if v.qualified { pb::ReportStatus::Qualified } else { pb::ReportStatus::Rejected } as i32;
        stored.reason = v.reason;
        stored.detail.clone_from(&v.detail);
        stored.late = v.late;
        stored.verdict_day = Some(day_number(self.clock.today()));
        txn.batch.put_report(&report_key, &stored);
        txn.audit("apply_report_verdict", Some(key));
        Ok(())
    }

    /// Verification outcomes: how many reports this node holds, by whether it issued them,
    /// status and reject reason.
    pub fn report_counts(&self) -> Result<Vec<ReportCount>, RegistryError> {
        let mut counts: std::collections::BTreeMap<(bool, i32, i32), u64> = std::collections::BTreeMap::new();
        for (_, stored) in self.store.reports()? {
            *counts.entry((stored.issued_here, stored.status, stored.reason)).or_default() += 1;
        }
        Ok(counts
            .into_iter()
            .map(|((issued_here, status, reason), count)| ReportCount {
                issued_here,
                status: pb::ReportStatus::try_from(status).unwrap_or_default(),
                reason: pb::RejectReason::try_from(reason).unwrap_or_default(),
                count,
            })
            .collect())
    }

    fn seal_report(&self, key: &ReportKey, report: &pb::ServiceReport) -> Vec<u8> {
        let plain = zeroize::Zeroizing::new(report.encode_to_vec());
        self.data_key.seal(&key.encode(), &plain)
    }

    fn open_report(&self, key: &ReportKey, stored: &ReportRecord) -> Result<pb::ServiceReport, RegistryError> {
        let plain = self.data_key.open(&key.encode(), &stored.sealed)?;
        pb::ServiceReport::decode(plain.as_slice())
            .map_err(|e| StorageError::Corrupt { what: "service report", detail: e.to_string() }.into())
    }

    pub(super) fn report_view(&self, key: &ReportKey, stored: &ReportRecord) -> Result<pb::Report, RegistryError> {
        // Purged under retention: the status and dates stay, the services are gone.
        let report = match stored.sealed.is_empty() {
            true => pb::ServiceReport {
                period: Period::from_index(key.period).to_string(),
                issued_on: from_day_number(stored.issued_day).to_string(),
                ..Default::default()
            },
            false => self.open_report(key, stored)?,
        };
        let day = |d: Option<i32>| d.map(|d| from_day_number(d).to_string()).unwrap_or_default();
        Ok(pb::Report {
            report_id: stored.report_id.clone(),
            period: report.period,
            issuer: key.issuer.clone(),
            origin: if stored.issued_here { stored.peer.clone() } else { self.division.as_str().to_owned() },
            person_key: key.person.to_hex(),
            issued_on: report.issued_on,
            status: stored.status,
            reason: stored.reason,
            detail: stored.detail.clone(),
            received_on: day(stored.received_day),
            verdict_on: day(stored.verdict_day),
            services: report
                .services
                .into_iter()
                .map(|s| pb::Service { kind: s.kind, date: s.date, details: s.details })
                .collect(),
            issued_here: stored.issued_here,
            late: stored.late,
        })
    }
}
