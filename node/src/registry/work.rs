//! Worklists: what is due and overdue at this node on the registry clock's today, and
//! the service calendar (the monthly check day on the 8th, the ledger update on the
//! 11th to 14th). Everything is derived from the records, the due index and the reports,
//! so the list cannot drift from what is stored.

use std::collections::HashMap;

use chrono::{Datelike, Months, NaiveDate};
use ldx_proto::v1 as pb;

use super::flows::add_days;
use super::sync::due;
use super::{Registry, RegistryError};
use crate::clock::from_day_number;
use crate::crypto::PersonKey;
use crate::domain::{InvalidField, Period};
use crate::storage::keys::ReportKey;
use crate::storage::records::{PersonRecord, PersonSecret, ReportRecord};

/// The furthest a worklist looks ahead: a year (the report cycle is a quarter, so
/// nothing is learnt beyond it), which also bounds what one request can cost.
pub const MAX_HORIZON_DAYS: u32 = 366;
/// Items per page of a worklist: default and most.
pub const PAGE_SIZE_DEFAULT: u32 = 500;
pub const PAGE_SIZE_MAX: u32 = 5000;
/// The monthly check day (the 8th) and the ledger update days (11th to 14th).
const CHECK_DAY: u32 = 8;
const LEDGER_DAYS: (u32, u32) = (11, 14);

pub mod kind {
    pub const HEALTH_CHECK: &str = "health_check";
    pub const REPORT_TO_ISSUE: &str = "report_to_issue";
    pub const VERDICT_AWAITED: &str = "verdict_awaited";
    pub const VERDICT_TO_RETURN: &str = "verdict_to_return";
    pub const FEEDBACK_AWAITED: &str = "feedback_awaited";
    pub const TRANSFER_TO_REQUEST: &str = "transfer_to_request";
    pub const TRANSFER_AWAITED: &str = "transfer_awaited";
    pub const CERTIFICATE_ANSWER_AWAITED: &str = "certificate_answer_awaited";
}

/// The quarter's health check of an in-migrant who lives here from `from`: the check day
/// (the 8th) of the quarter's first month, January, April, July or October (seed 000),
/// if she was here by then. One who arrives later in the quarter is first due in the next.
fn check_day_in(period: Period, from: NaiveDate) -> Option<NaiveDate> {
    period.first_day().with_day(CHECK_DAY).filter(|day| *day >= from)
}

struct List {
    today: NaiveDate,
    before: NaiveDate,
    items: Vec<pb::WorkItem>,
}

impl List {
    /// Keeps the item when it falls due before the horizon (overdue ones always do).
    fn push(&mut self, kind: &str, due: NaiveDate, person: &PersonKey, item: pb::WorkItem) {
        if due >= self.before && due >= self.today {
            return;
        }
        self.items.push(pb::WorkItem {
            kind: kind.to_owned(),
            due: due.to_string(),
            overdue: due < self.today,
            person_key: person.to_hex(),
            ..item
        });
    }
}

/// The order of a worklist, and the position a page token names: due date, kind,
/// person, period, report.
type SortKey = (String, String, String, String, String);

fn sort_key(item: &pb::WorkItem) -> SortKey {
    (item.due.clone(), item.kind.clone(), item.person_key.clone(), item.period.clone(), item.report_id.clone())
}

fn page_token(key: &SortKey) -> String {
    hex::encode([&key.0, &key.1, &key.2, &key.3, &key.4].map(String::as_str).join("\u{1f}"))
}

fn parse_page_token(raw: &str) -> Result<SortKey, InvalidField> {
    let bad = || InvalidField::new("page_token", raw, "must be the next_page_token of a previous page");
    let text = String::from_utf8(hex::decode(raw).map_err(|_| bad())?).map_err(|_| bad())?;
    let mut parts = text.split('\u{1f}').map(str::to_owned);
    let mut next = || parts.next().ok_or_else(bad);
    let key = (next()?, next()?, next()?, next()?, next()?);
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(key)
}

/// The horizon of a worklist: `due_before` as asked, at most [`MAX_HORIZON_DAYS`] ahead;
/// by default every duty falling due in this quarter and the next.
fn horizon(today: NaiveDate, raw: &str) -> Result<NaiveDate, InvalidField> {
    if raw.is_empty() {
        return Ok(Period::of(today).next().next().first_day());
    }
    let before = NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map_err(|_| InvalidField::new("due_before", raw, "must be a date YYYY-MM-DD"))?;
    let furthest = add_days(today, MAX_HORIZON_DAYS);
    if before > furthest {
        return Err(InvalidField::new(
            "due_before",
            raw,
            format!("must be at most {MAX_HORIZON_DAYS} days after today ({today}), that is {furthest} or earlier"),
        ));
    }
    Ok(before)
}

impl Registry {
    /// One page of what is due at this node before `due_before` (at most a year ahead;
    /// default: this quarter and the next), overdue items included, and the calendar days
    /// until then. The list is built from a scan of the records without the writer lock;
    /// it holds at most a few items per person (one per quarter and duty within the
    /// horizon) plus one per open report and due item. A record that will not open with
    /// the data key is left out, counted and logged, not fatal.
    pub fn work_list(&self, req: &pb::ListWorkRequest) -> Result<pb::ListWorkResponse, RegistryError> {
        let today = self.clock.today();
        let before = horizon(today, &req.due_before)?;
        let page_size = super::page_size(req.page_size, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)?;
        let after = match req.page_token.as_str() {
            "" => None,
            raw => Some(parse_page_token(raw)?),
        };
        let township = self.township_filter(&req.township)?;
        let deadlines = self.deadlines();
        let mut list = List { today, before, items: Vec::new() };
        let mut unreadable = 0u32;

        let mut reports: HashMap<PersonKey, Vec<(ReportKey, ReportRecord)>> = HashMap::new();
        for (key, record) in self.store.reports()? {
            reports.entry(key.person).or_default().push((key, record));
        }
        let mut ids: HashMap<PersonKey, String> = HashMap::new();
        for item in self.store.persons_after(None) {
            let (key, record) = item?;
            // A record purged under retention has nothing open: no work.
            if record.is_purged() || township.as_ref().is_some_and(|t| !record.division.starts_with(t.as_str())) {
                continue;
            }
            let secret = match self.open(&key, &record) {
                Ok(secret) => secret,
                Err(error) => {
                    tracing::warn!(person = %key.to_hex(), error = %crate::error_chain(&error), "worklist: record does not open; left out");
                    unreadable += 1;
                    continue;
                }
            };
            let mine = reports.get(&key).map(Vec::as_slice).unwrap_or_default();
            self.person_work(&mut list, &key, &record, &secret, mine);
            ids.insert(key, secret.id_number);
        }
        for (key, records) in &reports {
            if township.is_some() && !ids.contains_key(key) {
                continue;
            }
            for (report_key, stored) in records {
                let period = Period::from_index(report_key.period).to_string();
                let item = pb::WorkItem {
                    id_number: ids.get(key).cloned().unwrap_or_default(),
                    peer: stored.peer.clone(),
                    period,
                    report_id: stored.report_id.clone(),
                    ..Default::default()
                };
                if stored.status == pb::ReportStatus::Issued as i32 {
                    let due = add_days(from_day_number(stored.issued_day), deadlines.verdict_days);
                    list.push(kind::VERDICT_AWAITED, due, key, item);
                } else if stored.status == pb::ReportStatus::AwaitingVerification as i32 {
                    let received = stored.received_day.map_or(today, from_day_number);
                    let due = add_days(received, deadlines.verdict_days);
                    list.push(
                        kind::VERDICT_TO_RETURN,
                        due,
                        key,
                        pb::WorkItem { detail: stored.detail.clone(), ..item },
                    );
                }
            }
        }
        for (due_key, item) in self.store.due_items()? {
            let what = match due_key.what {
                due::FEEDBACK => kind::FEEDBACK_AWAITED,
                due::TRANSFER_ACCEPT => kind::TRANSFER_AWAITED,
                due::CERTIFICATE_ANSWER => kind::CERTIFICATE_ANSWER_AWAITED,
                _ => continue,
            };
            let work = pb::WorkItem {
                id_number: ids.get(&due_key.person).cloned().unwrap_or_default(),
                peer: item.peer.clone(),
                ..Default::default()
            };
            list.push(what, from_day_number(item.due_day), &due_key.person, work);
        }

        let mut items: Vec<(SortKey, pb::WorkItem)> = list.items.into_iter().map(|i| (sort_key(&i), i)).collect();
        if let Some(after) = &after {
            items.retain(|(key, _)| key > after);
        }
        items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let next_page_token = match items.get(page_size) {
            Some(_) => page_token(&items[page_size - 1].0),
            None => String::new(),
        };
        items.truncate(page_size);

        self.commit_audit(self.lock(), self.store.batch(), "list_work", None)?;
        Ok(pb::ListWorkResponse {
            today: today.to_string(),
            due_before: before.to_string(),
            items: items.into_iter().map(|(_, item)| item).collect(),
            calendar: if after.is_none() { calendar(today, before) } else { Vec::new() },
            next_page_token,
            unreadable,
        })
    }

    fn person_work(
        &self,
        list: &mut List,
        key: &PersonKey,
        record: &PersonRecord,
        secret: &PersonSecret,
        reports: &[(ReportKey, ReportRecord)],
    ) {
        // A local resident (her household in this city) has none of a floating person's
        // duties here.
        if record.local_resident {
            return;
        }
        let deadlines = self.deadlines();
        let today = list.today;
        let base = pb::WorkItem { id_number: secret.id_number.clone(), ..Default::default() };
        let active = record.status == pb::PersonStatus::Active as i32;
        let moved_in = from_day_number(record.move_in_day);
        let sync = record.sync.clone().unwrap_or_default();

        if record.role == pb::Role::Workplace as i32 && !active && sync.transfer.is_empty() {
            if let Some(left) = record.move_out_day.map(from_day_number) {
                let due = add_days(left, deadlines.transfer_days);
                list.push(kind::TRANSFER_TO_REQUEST, due, key, base.clone());
            }
            return;
        }
        if record.role != pb::Role::Residence as i32 || !active {
            return;
        }
        let served = |from: NaiveDate, to: NaiveDate| {
            secret.services.iter().any(|s| (from..=to).contains(&from_day_number(s.day)))
        };

        // Health checks: Jan/Apr/Jul/Oct on the check day; for employees of an
        // organisation, within a month of arrival and then every three months.
        if record.category == pb::Category::Organisation as i32 {
            let last = secret.services.iter().map(|s| from_day_number(s.day)).max();
            let due = match last {
                Some(last) => last.checked_add_months(Months::new(3)),
                None => moved_in.checked_add_months(Months::new(1)),
            };
            if let Some(due) = due {
                list.push(kind::HEALTH_CHECK, due, key, base.clone());
            }
        } else {
            let mut period = Period::of(today);
            while period.first_day() < list.before {
                let due = check_day_in(period, moved_in);
                if let Some(due) = due.filter(|_| !served(period.first_day(), period.last_day())) {
                    list.push(
                        kind::HEALTH_CHECK,
                        due,
                        key,
                        pb::WorkItem { period: period.to_string(), ..base.clone() },
                    );
                }
                period = period.next();
            }
        }

        // Reports: every quarter she lived here whose window is still open or closes
        // before the horizon, until it is issued.
        let mut period = Period::of(today).previous();
        while period.first_day() < list.before {
            let due = add_days(period.last_day(), deadlines.report_days);
            let issued = reports.iter().any(|(k, r)| k.period == period.index() && r.issued_here);
            // Owed for a quarter whose check fell due while she lived here (any quarter she
            // lived here, for an organisation's employee), or that has a service anyway.
            let owed = match record.category == pb::Category::Organisation as i32 {
                true => moved_in <= period.last_day(),
                false => check_day_in(period, moved_in).is_some(),
            };
            if !issued && (owed || served(period.first_day(), period.last_day())) && due >= today {
                let mut missing = Vec::new();
                if !served(period.first_day(), period.last_day()) {
                    missing.push("a service in the quarter");
                }
                if secret.photo_digest.is_empty() {
                    missing.push("her photo");
                }
                let detail =
                    if missing.is_empty() { "ready".to_owned() } else { format!("needs {}", missing.join(" and ")) };
                let item = pb::WorkItem {
                    period: period.to_string(),
                    detail,
                    peer: record.origin_division.clone(),
                    ..base.clone()
                };
                list.push(kind::REPORT_TO_ISSUE, due, key, item);
            }
            period = period.next();
        }
    }
}

/// Check days and ledger-update days from `today` until before `before`.
fn calendar(today: NaiveDate, before: NaiveDate) -> Vec<pb::CalendarEntry> {
    let mut out = Vec::new();
    let Some(mut month) = NaiveDate::from_ymd_opt(today.year(), today.month(), 1) else { return out };
    while month < before {
        let on = |d| month.with_day(d).expect("days 8 to 14 exist in every month");
        let check = on(CHECK_DAY);
        if check >= today && check < before {
            out.push(pb::CalendarEntry {
                first_day: check.to_string(),
                last_day: check.to_string(),
                kind: "monthly_check_day".into(),
                detail: "每月8日查验日 monthly check day".into(),
            });
        }
        let (first, last) = (on(LEDGER_DAYS.0), on(LEDGER_DAYS.1));
        if last >= today && first < before {
            out.push(pb::CalendarEntry {
                first_day: first.to_string(),
                last_day: last.to_string(),
                kind: "ledger_update".into(),
                detail: "台帐更新 ledger update".into(),
            });
        }
        let Some(next) = month.checked_add_months(Months::new(1)) else { break };
        month = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn check_days_fall_on_the_8th_inside_the_quarter() {
        let q1 = Period::parse("p", "2026Q1").unwrap();
        let q2 = Period::parse("p", "2026Q2").unwrap();
        assert_eq!(check_day_in(q1, day("2025-11-01")), Some(day("2026-01-08")));
        assert_eq!(check_day_in(q1, day("2026-01-08")), Some(day("2026-01-08")));
        assert_eq!(check_day_in(q1, day("2026-01-20")), None, "arrived after January's check day");
        // A February arrival is first due in April.
        assert_eq!(check_day_in(q1, day("2026-02-14")), None);
        assert_eq!(check_day_in(q2, day("2026-02-14")), Some(day("2026-04-08")));
    }

    #[test]
    fn the_calendar_lists_check_and_ledger_days_in_range() {
        let days = calendar(day("2026-01-09"), day("2026-02-12"));
        let got: Vec<_> = days.iter().map(|c| (c.kind.as_str(), c.first_day.as_str())).collect();
        assert_eq!(
            got,
            [("ledger_update", "2026-01-11"), ("monthly_check_day", "2026-02-08"), ("ledger_update", "2026-02-11")]
        );
        assert!(calendar(day("2026-01-15"), day("2026-01-16")).is_empty());
    }
}
