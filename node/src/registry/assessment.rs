//! The two-way assessment (双向考核) as this node measures it: per counterpart node and
//! quarter, each indicator of DESIGN.md counted from this node's own message log and
//! reports. Both sides of a pair measure every indicator from their own records; the
//! gateway puts the two statements side by side, and where their counts differ something
//! was lost or is late.
//!
//! An item belongs to the quarter in which it started (the notice sent, the query sent,
//! the report's own quarter). Arrival is measured where it is seen: the origin sees a
//! notice arrive (applied, against the time the sender created it); the destination sees
//! it arrive when the origin's feedback, sent on arrival, comes back.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, NaiveDate};
use ldx_proto::v1 as pb;
use ldx_proto::v1::envelope::Body;
use prost::Message;

use super::apply::{Fail, refuse};
use super::flows::add_days;
use super::sync::Txn;
use super::{Registry, RegistryError};
use crate::clock::{cst, from_day_number};
use crate::domain::Period;
use crate::storage::StorageError;
use crate::storage::keys::StatementKey;

const DAY_MS: i64 = 86_400_000;

pub mod indicator {
    pub const NOTICE_TIMELINESS: &str = "notice_timeliness";
    pub const REPORT_RETURN: &str = "report_return";
    pub const REPORT_QUALITY: &str = "report_quality";
    pub const FEEDBACK_TIMELINESS: &str = "feedback_timeliness";
    pub const VERDICT_RETURN: &str = "verdict_return";
    pub const CERTIFICATE_ANSWERS: &str = "certificate_answers";

    /// Every indicator with the side it assesses, in display order.
    pub const ALL: [(&str, &str); 6] = [
        (NOTICE_TIMELINESS, "destination"),
        (REPORT_RETURN, "destination"),
        (REPORT_QUALITY, "destination"),
        (FEEDBACK_TIMELINESS, "origin"),
        (VERDICT_RETURN, "origin"),
        (CERTIFICATE_ANSWERS, "origin"),
    ];
}

/// Counts of one indicator for one counterpart.
#[derive(Debug, Default, Clone)]
struct Tally {
    total: u64,
    on_time: u64,
    pending: u64,
    missed: Vec<String>,
}

/// What became of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    OnTime,
    Missed,
    /// Not answered yet; its deadline is still ahead.
    Pending,
}

impl Outcome {
    fn of(ok: bool) -> Self {
        if ok { Self::OnTime } else { Self::Missed }
    }
}

impl Tally {
    fn count(&mut self, outcome: Outcome, item: String) {
        self.total += 1;
        match outcome {
            Outcome::OnTime => self.on_time += 1,
            Outcome::Pending => self.pending += 1,
            Outcome::Missed => self.missed.push(item),
        }
    }
}

fn day_of(ms: i64) -> NaiveDate {
    DateTime::from_timestamp_millis(ms).map_or(NaiveDate::MIN, |t| t.with_timezone(&cst()).date_naive())
}

/// Start of a pending item, keyed by counterpart and person.
type Started = HashMap<(String, Vec<u8>), i64>;

impl Registry {
    /// This node's statements for `period`, one per counterpart, each signed when the
    /// node has a signing key.
    pub fn assessment(&self, period: Period) -> Result<Vec<pb::AssessmentStatement>, RegistryError> {
        let deadlines = self.deadlines();
        // The deadlines the worklist uses: one number per indicator.
        let (notice_days, feedback_days) = (i64::from(deadlines.notice_days), i64::from(deadlines.feedback_days));
        let now = self.clock.now().timestamp_millis();
        // (counterpart, indicator, met the deadline, the item) for every item measured.
        let mut counts: Vec<(String, &'static str, Outcome, String)> = Vec::new();
        let in_period = |ms: i64| period.contains(day_of(ms));

        // Pass over the log: match each start with the answer that closes it.
        let (mut notices_sent, mut queries_sent, mut notices_applied, mut queries_applied) =
            (Started::new(), Started::new(), Started::new(), Started::new());
        self.each_log_record(|e| {
            let applied = e.direction == pb::Direction::Applied as i32;
            let sent = e.direction == pb::Direction::Sent as i32;
            let key = (e.peer.clone(), e.person_key.clone());
            match e.kind.as_str() {
                "move_in_notice" if sent && in_period(e.at_ms) => {
                    notices_sent.insert(key, e.at_ms);
                }
                "move_in_notice" if applied && in_period(e.sent_at_ms) => {
                    let ok = e.at_ms - e.sent_at_ms <= notice_days * DAY_MS;
                    counts.push((
                        e.peer.clone(),
                        indicator::NOTICE_TIMELINESS,
                        Outcome::of(ok),
                        hex::encode(&e.person_key),
                    ));
                    notices_applied.insert(key, e.at_ms);
                }
                "move_in_feedback" if applied => {
                    if let Some(start) = notices_sent.remove(&key) {
                        let ok = e.at_ms - start <= notice_days * DAY_MS;
                        counts.push((
                            e.peer.clone(),
                            indicator::NOTICE_TIMELINESS,
                            Outcome::of(ok),
                            hex::encode(&e.person_key),
                        ));
                        let ok = e.at_ms - start <= (notice_days + feedback_days) * DAY_MS;
                        counts.push((
                            e.peer.clone(),
                            indicator::FEEDBACK_TIMELINESS,
                            Outcome::of(ok),
                            hex::encode(&e.person_key),
                        ));
                    }
                }
                "move_in_feedback" if sent => {
                    if let Some(start) = notices_applied.remove(&key) {
                        let ok = e.at_ms - start <= feedback_days * DAY_MS;
                        counts.push((
                            e.peer.clone(),
                            indicator::FEEDBACK_TIMELINESS,
                            Outcome::of(ok),
                            hex::encode(&e.person_key),
                        ));
                    }
                }
                "certificate_query" if sent && in_period(e.at_ms) => {
                    queries_sent.insert(key, e.at_ms);
                }
                "certificate_query" if applied && in_period(e.sent_at_ms) => {
                    queries_applied.insert(key, e.sent_at_ms);
                }
                "certificate_answer" if applied || sent => {
                    let starts = if applied { &mut queries_sent } else { &mut queries_applied };
                    if let Some(start) = starts.remove(&key) {
                        let ok = e.at_ms - start <= i64::from(deadlines.certificate_answer_days) * DAY_MS;
                        counts.push((
                            e.peer.clone(),
                            indicator::CERTIFICATE_ANSWERS,
                            Outcome::of(ok),
                            hex::encode(&e.person_key),
                        ));
                    }
                }
                _ => {}
            }
        })?;
        // Starts still unanswered count as missed once their deadline has passed.
        let open = [
            (indicator::NOTICE_TIMELINESS, &notices_sent, notice_days),
            (indicator::FEEDBACK_TIMELINESS, &notices_applied, feedback_days),
            (indicator::CERTIFICATE_ANSWERS, &queries_sent, i64::from(deadlines.certificate_answer_days)),
            (indicator::CERTIFICATE_ANSWERS, &queries_applied, i64::from(deadlines.certificate_answer_days)),
        ];
        for (name, starts, days) in open {
            for ((peer, person), start) in starts {
                let outcome = if now - start > days * DAY_MS { Outcome::Missed } else { Outcome::Pending };
                counts.push((peer.clone(), name, outcome, hex::encode(person)));
            }
        }

        // Reports: issued here (this node is her residence) or received (her origin).
        let closes = add_days(period.last_day(), deadlines.report_days);
        for (key, stored) in self.store.reports()? {
            if key.period != period.index() {
                continue;
            }
            let arrived = if stored.issued_here { stored.issued_day } else { stored.received_day.unwrap_or(i32::MAX) };
            let returned = from_day_number(arrived) <= closes;
            let peer = stored.peer.clone();
            let id = stored.report_id.clone();
            counts.push((peer.clone(), indicator::REPORT_RETURN, Outcome::of(returned), id.clone()));
            let from = if stored.issued_here { stored.issued_day } else { arrived };
            if let Some(verdict) = stored.verdict_day {
                let qualified = stored.status == pb::ReportStatus::Qualified as i32;
                counts.push((peer.clone(), indicator::REPORT_QUALITY, Outcome::of(qualified), id.clone()));
                let in_time = i64::from(verdict) - i64::from(from) <= i64::from(deadlines.verdict_days);
                counts.push((peer, indicator::VERDICT_RETURN, Outcome::of(in_time), id));
            } else {
                let late = self.clock.today() > add_days(from_day_number(from), deadlines.verdict_days);
                counts.push((
                    peer,
                    indicator::VERDICT_RETURN,
                    if late { Outcome::Missed } else { Outcome::Pending },
                    id,
                ));
            }
        }

        let mut tallies: BTreeMap<String, HashMap<&'static str, Tally>> = BTreeMap::new();
        for (peer, name, outcome, item) in counts {
            tallies.entry(peer).or_default().entry(name).or_default().count(outcome, item);
        }

        let mut out = Vec::new();
        for (counterpart, mut by_name) in tallies {
            let indicators = indicator::ALL
                .iter()
                .map(|(name, assessed)| {
                    let t = by_name.remove(name).unwrap_or_default();
                    pb::Indicator {
                        name: (*name).to_owned(),
                        assessed: (*assessed).to_owned(),
                        total: t.total,
                        on_time: t.on_time,
                        pending: t.pending,
                        missed: t.missed,
                    }
                })
                .collect();
            let mut statement = pb::AssessmentStatement {
                period: period.to_string(),
                node: self.division.as_str().to_owned(),
                counterpart,
                indicators,
                computed_at_ms: now,
                signature: Vec::new(),
            };
            if let Some(hooks) = &self.reports {
                ldx_proto::report::sign_statement(&mut statement, &hooks.signer);
            }
            out.push(statement);
        }
        Ok(out)
    }

    /// Sends this node's statements of `period` to each counterpart, once per quarter
    /// and counterpart, in one batch with the record that they were sent. Returns how
    /// many it sent.
    pub fn send_statements(&self, period: Period) -> Result<usize, RegistryError> {
        if !self.is_syncing() {
            return Ok(0);
        }
        let statements = self.assessment(period)?;
        let writer = self.lock();
        let sent: HashSet<String> =
            self.store.statements(false, period.index())?.into_iter().map(|(counterpart, _)| counterpart).collect();
        let mut txn = Txn::new(self.store.batch());
        let mut count = 0;
        for statement in statements.into_iter().filter(|s| !sent.contains(&s.counterpart)) {
            let Some(peer) = self.peer_for(&statement.counterpart) else { continue };
            let key =
                StatementKey { received: false, period: period.index(), counterpart: statement.counterpart.clone() };
            txn.batch.put_statement(&key, &statement.encode_to_vec());
            self.enqueue_keyed(&writer, &mut txn, &peer, Vec::new(), Body::AssessmentStatement(statement));
            count += 1;
        }
        if count > 0 {
            self.commit_txn(writer, txn)?;
            tracing::info!(%period, count, "assessment statements sent to the counterparts");
        }
        Ok(count)
    }

    /// The scheduled part: once a quarter is closed (its reports and verdicts all due),
    /// its statements go to the counterparts.
    pub fn send_due_statements(&self) -> Result<usize, RegistryError> {
        let deadlines = self.deadlines();
        let previous = Period::of(self.clock.today()).previous();
        let closed = add_days(add_days(previous.last_day(), deadlines.report_days), deadlines.verdict_days);
        if self.clock.today() <= closed {
            return Ok(0);
        }
        self.send_statements(previous)
    }

    /// Statements counterparts sent about this node for `period`.
    pub fn received_statements(&self, period: Period) -> Result<Vec<pb::AssessmentStatement>, RegistryError> {
        let mut out = Vec::new();
        for (_, bytes) in self.store.statements(true, period.index())? {
            out.push(
                pb::AssessmentStatement::decode(bytes.as_slice())
                    .map_err(|e| StorageError::Corrupt { what: "assessment statement", detail: e.to_string() })?,
            );
        }
        Ok(out)
    }

    /// A counterpart's statement about this node: kept, the latest per quarter, once its
    /// signature verifies.
    pub(super) fn on_assessment_statement(
        &self,
        txn: &mut Txn<'_>,
        from: &str,
        s: &pb::AssessmentStatement,
    ) -> Result<(), Fail> {
        let period = Period::parse("period", &s.period)?;
        if s.node != from || s.counterpart != self.division.as_str() {
            return refuse(format!(
                "a statement by {} about {} does not belong on this channel",
                s.node, s.counterpart
            ));
        }
        let Some(key) = self.reports.as_ref().and_then(|h| (h.keys)(from)) else {
            return refuse(format!("the directory lists no signing key for {from}"));
        };
        if ldx_proto::report::verify_statement(s, &key).is_err() {
            return refuse(format!("the statement's signature is not {from}'s"));
        }
        let key = StatementKey { received: true, period: period.index(), counterpart: from.to_owned() };
        txn.batch.put_statement(&key, &s.encode_to_vec());
        txn.audit("apply_assessment_statement", None);
        Ok(())
    }
}
