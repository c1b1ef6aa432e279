//! Two quarters of service reports between three nodes on one simulated clock: two
//! Erqi street offices and the origin county of their in-migrants, with envelopes
//! carried between the registries by hand as a channel would carry them.

use std::collections::HashMap;
use std::sync::Arc;

use ldx_proto::identity::{PublicKey, SignKey};
use ldx_proto::v1 as pb;
use ldx_proto::v1::envelope::Body;

use super::exchange_tests::unacked;
use super::sync::Txn;
use super::*;
use crate::clock::ManualClock;
use crate::config::DeadlineConfig;
use crate::domain::id::with_check_digit;

const R1: &str = "410103007";
const R2: &str = "410103003";
const ORIGIN: &str = "411421";

struct Node {
    _dir: tempfile::TempDir,
    registry: Registry,
    key: SignKey,
    _woken: tokio::sync::mpsc::UnboundedReceiver<String>,
}

struct Federation {
    clock: ManualClock,
    nodes: HashMap<&'static str, Node>,
}

impl Federation {
    fn new(today: &str) -> Self {
        let clock = ManualClock::new(at(today));
        let keys: HashMap<&'static str, SignKey> = [R1, R2, ORIGIN].map(|d| (d, SignKey::generate())).into();
        let public: Arc<HashMap<String, PublicKey>> =
            Arc::new(keys.iter().map(|(d, k)| ((*d).to_owned(), k.public())).collect());
        let mut nodes = HashMap::new();
        for (division, key) in keys {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(dir.path(), division, false).unwrap());
            let (wake, woken) = tokio::sync::mpsc::unbounded_channel();
            let router: Router = Arc::new(|code: &str| {
                (1..=code.len())
                    .rev()
                    .find_map(|n| [R1, R2, ORIGIN].into_iter().find(|d| *d == &code[..n]))
                    .map(str::to_owned)
            });
            let lookup = public.clone();
            let registry = Registry::new(
                store,
                DataKey::from_bytes(&[3; 32]),
                FederationSalt::from_bytes([4; 32]),
                Arc::new(clock.clone()),
                Division::parse("division", division).unwrap(),
            )
            .unwrap()
            .with_exchange(ExchangeHooks { router, wake, deadlines: DeadlineConfig::default() })
            .with_reports(ReportHooks { signer: key.clone(), keys: Arc::new(move |d: &str| lookup.get(d).copied()) });
            nodes.insert(division, Node { _dir: dir, registry, key, _woken: woken });
        }
        Self { clock, nodes }
    }

    fn at(&self, division: &str) -> &Registry {
        &self.nodes[division].registry
    }

    fn set_today(&self, day: &str) {
        self.clock.set(at(day));
    }

    /// Carries everything pending on the channel `from -> to` and acks it.
    fn deliver(&self, from: &str, to: &str) -> ApplyOutcome {
        let sender = self.at(from);
        let batch = unacked(sender, to);
        let outcome = self.at(to).apply_batch(from, to, &batch).unwrap();
        sender.ack(to, outcome.applied_seq).unwrap();
        outcome
    }

    /// Sends `report` on the channel `from -> ORIGIN` exactly as given, as a faulty or
    /// hostile node would.
    fn send_raw(&self, from: &str, person: u32, report: pb::ServiceReport) {
        let sender = self.at(from);
        let key = sender.salt.person_key(&id(person));
        let writer = sender.lock();
        let mut txn = Txn::new(sender.store.batch());
        sender.enqueue(&writer, &mut txn, ORIGIN, &key, Body::ServiceReport(report));
        sender.commit_txn(writer, txn).unwrap();
    }
}

fn at(day: &str) -> chrono::DateTime<chrono::Utc> {
    format!("{day}T02:00:00Z").parse().unwrap()
}

fn id(n: u32) -> String {
    with_check_digit(&format!("41142119900101{n:03}"))
}

fn digest(n: u8) -> String {
    hex::encode([n; 32])
}

fn move_in(n: u32, division: &str, date: &str) -> pb::RegisterMoveInRequest {
    pb::RegisterMoveInRequest {
        id_number: id(n),
        name: format!("测试{n}"),
        phone: "13800000000".into(),
        category: pb::Category::MixedCommunity as i32,
        role: pb::Role::Residence as i32,
        division: division.into(),
        address: format!("路 {n} 号"),
        date: date.into(),
        household_division: String::new(),
        urgent: false,
        reason_of_stay: 0,
    }
}

fn photo(registry: &Registry, n: u32, d: u8) {
    registry.record_photo(&pb::RecordPhotoRequest { id_number: id(n), photo_digest: digest(d) }).unwrap();
}

fn check(registry: &Registry, n: u32, date: &str) {
    let req = pb::RecordServiceRequest {
        id_number: id(n),
        kind: pb::ServiceKind::HealthCheck as i32,
        date: date.into(),
        details: "常规检查".into(),
    };
    registry.record_service(&req).unwrap();
}

/// (status, reason) of each report at `registry` about person `n`, by period and issuer.
fn reports_of(registry: &Registry, n: u32) -> Vec<(String, String, pb::ReportStatus, pb::RejectReason)> {
    let key = registry.salt.person_key(&id(n)).to_hex();
    let mut out: Vec<_> = registry
        .list_reports(&pb::ListReportsRequest::default())
        .unwrap()
        .reports
        .into_iter()
        .filter(|r| r.person_key == key)
        .map(|r| (r.status(), r.reason(), r.period, r.issuer))
        .map(|(s, w, p, i)| (p, i, s, w))
        .collect();
    out.sort();
    out
}

fn report_id(registry: &Registry, n: u32, period: &str, issuer: &str) -> String {
    let key = registry.salt.person_key(&id(n)).to_hex();
    registry
        .list_reports(&pb::ListReportsRequest::default())
        .unwrap()
        .reports
        .into_iter()
        .find(|r| r.person_key == key && r.period == period && r.issuer == issuer)
        .unwrap_or_else(|| panic!("no report for person {n} in {period} by {issuer}"))
        .report_id
}

/// (kind, due, overdue, person n, period) of the worklist, sorted; `""`: due within 31 days.
fn work(registry: &Registry, due_before: &str) -> Vec<(String, String, bool, u32, String)> {
    let month_ahead = super::flows::add_days(registry.clock.today(), 31).to_string();
    let due_before = if due_before.is_empty() { month_ahead } else { due_before.to_owned() };
    let req = pb::ListWorkRequest { due_before, ..Default::default() };
    let list = registry.work_list(&req).unwrap();
    assert!(list.next_page_token.is_empty(), "one page");
    let person_n = |item: &pb::WorkItem| (1..=9).find(|n| id(*n) == item.id_number).unwrap_or(0);
    let mut out: Vec<_> =
        list.items.iter().map(|i| (i.kind.clone(), i.due.clone(), i.overdue, person_n(i), i.period.clone())).collect();
    out.sort();
    out
}

fn item(kind: &str, due: &str, overdue: bool, n: u32, period: &str) -> (String, String, bool, u32, String) {
    (kind.into(), due.into(), overdue, n, period.into())
}

fn served(registry: &Registry, n: u32) -> Vec<String> {
    registry.get(&pb::GetPersonRequest { id_number: id(n) }).unwrap().sync.unwrap_or_default().served_periods
}

use pb::RejectReason as Why;
use pb::ReportStatus as St;

#[test]
fn two_quarters_of_reports_are_issued_verified_and_answered() {
    let f = Federation::new("2026-01-05");
    let (r1, r2, origin) = (f.at(R1), f.at(R2), f.at(ORIGIN));

    // Three in-migrants from 411421 register at R1 on 2 January; her origin learns that
    // R1 is her residence and files the photo it holds of each.
    for n in 1..=3 {
        r1.move_in(&move_in(n, R1, "2026-01-02")).unwrap();
    }
    assert_eq!(f.deliver(R1, ORIGIN).applied, 3);
    assert_eq!(f.deliver(ORIGIN, R1).applied, 3);
    for (n, on_file, at_residence) in [(1, 1, 1), (2, 2, 9), (3, 3, 3)] {
        photo(origin, n, on_file);
        photo(r1, n, at_residence);
    }

    // Worklist on 5 January: the Q1 health checks fall due on the check day, the 8th.
    assert_eq!(
        work(r1, ""),
        (1..=3).map(|n| item("health_check", "2026-01-08", false, n, "2026Q1")).collect::<Vec<_>>()
    );
    let req = pb::ListWorkRequest { due_before: "2026-02-05".into(), ..Default::default() };
    let calendar = r1.work_list(&req).unwrap().calendar;
    let days: Vec<_> = calendar.iter().map(|c| (c.kind.as_str(), c.first_day.as_str())).collect();
    assert_eq!(days, [("monthly_check_day", "2026-01-08"), ("ledger_update", "2026-01-11")]);
    // With a longer horizon the Q1 reports show, due on the 10th day after the quarter.
    let ahead = work(r1, "2026-04-11");
    assert!(ahead.contains(&item("report_to_issue", "2026-04-10", false, 1, "2026Q1")), "{ahead:?}");
    assert!(ahead.contains(&item("health_check", "2026-04-08", false, 1, "2026Q2")), "{ahead:?}");

    // A report cannot be issued before the quarter's service is recorded.
    let early = r1.issue_report(&pb::IssueReportRequest { id_number: id(1), period: String::new() }).unwrap_err();
    assert!(early.to_string().contains("has no service recorded"), "{early}");

    // The check day passes unrecorded: overdue the next day.
    f.set_today("2026-01-09");
    assert!(work(r1, "").contains(&item("health_check", "2026-01-08", true, 1, "2026Q1")));
    for n in 1..=3 {
        check(r1, n, "2026-01-08");
    }
    assert!(work(r1, "").is_empty(), "{:?}", work(r1, ""));

    // The scheduled job issues the three Q1 reports, once.
    assert_eq!(r1.issue_due_reports().unwrap(), 3);
    assert_eq!(r1.issue_due_reports().unwrap(), 0);
    assert_eq!(
        work(r1, ""),
        (1..=3).map(|n| item("verdict_awaited", "2026-01-24", false, n, "2026Q1")).collect::<Vec<_>>()
    );
    assert_eq!(f.deliver(R1, ORIGIN).applied, 3);

    // At the origin: matching photos qualify at once; the mismatch waits for an operator.
    assert_eq!(reports_of(origin, 1), [("2026Q1".into(), R1.into(), St::Qualified, Why::Unspecified)]);
    assert_eq!(reports_of(origin, 2), [("2026Q1".into(), R1.into(), St::AwaitingVerification, Why::Unspecified)]);
    assert_eq!(served(origin, 1), ["2026Q1"]);
    assert!(served(origin, 2).is_empty());
    assert_eq!(work(origin, ""), [item("verdict_to_return", "2026-01-24", false, 2, "2026Q1")]);
    assert_eq!(f.deliver(ORIGIN, R1).applied, 2);
    assert_eq!(reports_of(r1, 1), [("2026Q1".into(), R1.into(), St::Qualified, Why::Unspecified)]);
    assert_eq!(reports_of(r1, 2), [("2026Q1".into(), R1.into(), St::Issued, Why::Unspecified)]);

    // The verdict is late: overdue at the origin on the 25th, until the operator decides.
    f.set_today("2026-01-25");
    assert_eq!(work(origin, ""), [item("verdict_to_return", "2026-01-24", true, 2, "2026Q1")]);
    assert_eq!(work(r1, ""), [item("verdict_awaited", "2026-01-24", true, 2, "2026Q1")]);
    let b_q1 = report_id(origin, 2, "2026Q1", R1);
    let no_reason = pb::VerifyReportRequest { report_id: b_q1.clone(), accept: false, ..Default::default() };
    assert!(origin.verify_report(&no_reason).unwrap_err().to_string().contains("reason: \"\" is required"));
    let reject = pb::VerifyReportRequest {
        report_id: b_q1.clone(),
        accept: false,
        reason: Why::PhotoMismatch as i32,
        detail: "not her".into(),
    };
    let (decided, created) = origin.verify_report(&reject).unwrap();
    assert!(created && decided.status() == St::Rejected);
    let (_, again) = origin.verify_report(&reject).unwrap();
    assert!(!again, "a decided report stays decided");
    assert!(work(origin, "").is_empty());
    assert_eq!(f.deliver(ORIGIN, R1).applied, 1);
    assert_eq!(reports_of(r1, 2), [("2026Q1".into(), R1.into(), St::Rejected, Why::PhotoMismatch)]);
    assert!(work(r1, "").is_empty());

    // Person 3 moves to R2 in February. R1 never registers her move-out.
    f.set_today("2026-02-15");
    r2.move_in(&move_in(3, R2, "2026-02-14")).unwrap();
    f.deliver(R2, ORIGIN);
    f.deliver(ORIGIN, R2);
    let at_origin = origin.get(&pb::GetPersonRequest { id_number: id(3) }).unwrap();
    assert_eq!(at_origin.sync.unwrap().residence, R2);
    photo(r2, 3, 3);
    f.set_today("2026-02-20");
    check(r2, 3, "2026-02-20");
    // R2 reports Q1 for her too: that quarter is already reported (by R1).
    let (issued, created) =
        r2.issue_report(&pb::IssueReportRequest { id_number: id(3), period: "2026Q1".into() }).unwrap();
    assert!(created && issued.status() == St::Issued);
    let (_, created) = r2.issue_report(&pb::IssueReportRequest { id_number: id(3), period: "2026Q1".into() }).unwrap();
    assert!(!created, "issuing is idempotent");
    f.deliver(R2, ORIGIN);
    f.deliver(ORIGIN, R2);
    assert_eq!(reports_of(r2, 3), [("2026Q1".into(), R2.into(), St::Rejected, Why::DuplicatePeriod)]);

    // Q2 worklists on 1 April: the health checks of the new quarter at both streets.
    f.set_today("2026-04-01");
    assert_eq!(
        work(r1, ""),
        (1..=3).map(|n| item("health_check", "2026-04-08", false, n, "2026Q2")).collect::<Vec<_>>()
    );
    assert_eq!(work(r2, ""), [item("health_check", "2026-04-08", false, 3, "2026Q2")]);

    f.set_today("2026-04-08");
    for n in 1..=3 {
        check(r1, n, "2026-04-08");
    }
    check(r2, 3, "2026-04-08");
    f.set_today("2026-04-09");
    assert_eq!(r1.issue_due_reports().unwrap(), 3, "Q2 for all three; Q1 is done");
    assert_eq!(r2.issue_due_reports().unwrap(), 1, "Q2 for person 3");
    f.deliver(R1, ORIGIN);
    f.deliver(R2, ORIGIN);
    // The photo of person 2 still differs; this time the operator sees it is her.
    let b_q2 = report_id(origin, 2, "2026Q2", R1);
    let (accepted, _) =
        origin.verify_report(&pb::VerifyReportRequest { report_id: b_q2, accept: true, ..Default::default() }).unwrap();
    assert_eq!(accepted.status(), St::Qualified);
    f.deliver(ORIGIN, R1);
    f.deliver(ORIGIN, R2);

    // R1 still "stamps" a report for person 3, who lives at R2 now: not her residence.
    assert_eq!(
        reports_of(r1, 3),
        [
            ("2026Q1".into(), R1.into(), St::Qualified, Why::Unspecified),
            ("2026Q2".into(), R1.into(), St::Rejected, Why::NotHerResidence)
        ]
    );
    assert_eq!(
        reports_of(r2, 3),
        [
            ("2026Q1".into(), R2.into(), St::Rejected, Why::DuplicatePeriod),
            ("2026Q2".into(), R2.into(), St::Qualified, Why::Unspecified)
        ]
    );
    assert_eq!(reports_of(r1, 1)[1], ("2026Q2".into(), R1.into(), St::Qualified, Why::Unspecified));
    assert_eq!(reports_of(r1, 2)[1], ("2026Q2".into(), R1.into(), St::Qualified, Why::Unspecified));
    assert_eq!(served(origin, 1), ["2026Q1", "2026Q2"]);
    assert_eq!(served(origin, 2), ["2026Q2"]);
    assert_eq!(served(origin, 3), ["2026Q1", "2026Q2"]);
    for division in [R1, R2] {
        assert!(work(f.at(division), "").is_empty(), "{division}: {:?}", work(f.at(division), ""));
    }

    // Nothing was refused on any channel: rejections are verdicts, not lost envelopes.
    for division in [R1, R2, ORIGIN] {
        let log = f.at(division).log_after(0, 10_000).unwrap();
        assert!(log.iter().all(|(_, e)| e.direction != pb::Direction::Refused as i32), "{division}");
    }
    for division in [R1, R2, ORIGIN] {
        verify_audit_chain(&f.at(division).store).unwrap();
    }
}

#[test]
fn reports_signed_or_sent_by_the_wrong_node_are_rejected_and_late_ones_judged_on_their_merits() {
    let f = Federation::new("2026-03-02");
    let (r1, r2, origin) = (f.at(R1), f.at(R2), f.at(ORIGIN));
    r1.move_in(&move_in(1, R1, "2026-03-01")).unwrap();
    r2.move_in(&move_in(2, R2, "2026-03-01")).unwrap();
    r2.move_in(&move_in(4, R2, "2026-03-01")).unwrap();
    f.deliver(R1, ORIGIN);
    f.deliver(R2, ORIGIN);
    photo(r2, 2, 2);
    photo(r2, 4, 4);
    photo(origin, 4, 4);
    f.set_today("2026-03-08");
    check(r2, 2, "2026-03-08");
    check(r2, 4, "2026-03-08");

    let genuine = |issuer: &str, n: u32, period: &str, key: &SignKey| {
        let mut r = pb::ServiceReport {
            report_id: format!("{issuer}-{period}-forged"),
            issuer: issuer.into(),
            period: period.into(),
            issued_on: "2026-03-08".into(),
            services: vec![pb::ServiceRecord {
                kind: pb::ServiceKind::HealthCheck as i32,
                date: "2026-03-08".into(),
                details: String::new(),
            }],
            photo_digest: [1; 32].to_vec(),
            person_key: r1.salt.person_key(&id(n)).0.to_vec(),
            signature: Vec::new(),
        };
        ldx_proto::report::sign_report(&mut r, key);
        r
    };
    // R2 sends a report in R1's name, signed with R2's key.
    f.send_raw(R2, 1, genuine(R1, 1, "2026Q1", &f.nodes[R2].key));
    // R2 sends a report in its own name, signed with R1's key.
    f.send_raw(R2, 2, genuine(R2, 2, "2026Q1", &f.nodes[R1].key));
    // A report about person 2 whose person_key names person 1.
    let mut swapped = genuine(R2, 1, "2026Q1", &f.nodes[R2].key);
    swapped.report_id = "swapped".into();
    ldx_proto::report::sign_report(&mut swapped, &f.nodes[R2].key);
    f.send_raw(R2, 2, swapped);
    f.deliver(R2, ORIGIN);
    let verdicts = verdicts_to(&f, R2);
    assert_eq!(
        verdicts.iter().map(|v| (v.report_id.as_str(), v.reason())).collect::<Vec<_>>(),
        [
            ("410103007-2026Q1-forged", Why::WrongIssuer),
            ("410103003-2026Q1-forged", Why::WrongIssuer),
            ("swapped", Why::Malformed)
        ]
    );
    assert!(verdicts[0].detail.contains("in the name of \"410103007\" but sent by 410103003"), "{verdicts:?}");
    assert!(verdicts[1].detail.contains("signature is not 410103003's"), "{verdicts:?}");
    assert!(verdicts.iter().all(|v| !v.qualified));
    assert!(served(origin, 2).is_empty());

    // Issued after the window (10 days after the quarter) closed: the residence was late,
    // not she. The genuine report is qualified on its merits and marks her quarter served;
    // the verdict says it was late, and the report return counts it against the residence.
    f.set_today("2026-04-20");
    let (issued, _) = r2.issue_report(&pb::IssueReportRequest { id_number: id(4), period: "2026Q1".into() }).unwrap();
    assert!(issued.late, "the residence knows it issues late");
    f.deliver(R2, ORIGIN);
    let late = verdicts_to(&f, R2).pop().unwrap();
    assert!(late.qualified && late.late, "{late:?}");
    assert_eq!(served(origin, 4), ["2026Q1"]);
    f.deliver(ORIGIN, R2);
    assert_eq!(reports_of(r2, 4), [("2026Q1".into(), R2.into(), St::Qualified, Why::Unspecified)]);
    let listed = r2.list_reports(&pb::ListReportsRequest::default()).unwrap().reports;
    assert!(listed.iter().any(|r| r.late && r.status() == St::Qualified), "{listed:?}");
    let period = crate::domain::Period::parse("period", "2026Q1").unwrap();
    for (registry, counterpart) in [(r2, ORIGIN), (origin, R2)] {
        let statements = registry.assessment(period).unwrap();
        let statement = statements.iter().find(|s| s.counterpart == counterpart).unwrap();
        let ret = statement.indicators.iter().find(|i| i.name == "report_return").unwrap();
        assert!(ret.on_time < ret.total, "the late report is a miss of report return: {ret:?}");
    }
    // An operator may not reject a report for lateness either.
    let err = origin
        .verify_report(&pb::VerifyReportRequest {
            report_id: late.report_id.clone(),
            accept: false,
            reason: Why::Late as i32,
            detail: String::new(),
        })
        .unwrap_err();
    assert!(err.to_string().contains("is no ground to reject"), "{err}");

    // A verdict signed by anyone but the origin is refused at the residence, unapplied.
    let mut forged = pb::ReportVerdict {
        report_id: report_id(r2, 4, "2026Q1", R2),
        period: "2026Q1".into(),
        verifier: ORIGIN.into(),
        qualified: true,
        decided_on: "2026-04-20".into(),
        ..Default::default()
    };
    ldx_proto::report::sign_verdict(&mut forged, &f.nodes[R1].key);
    let key = origin.salt.person_key(&id(4));
    {
        let writer = origin.lock();
        let mut txn = Txn::new(origin.store.batch());
        origin.enqueue(&writer, &mut txn, R2, &key, Body::ReportVerdict(forged));
        origin.commit_txn(writer, txn).unwrap();
    }
    let outcome = f.deliver(ORIGIN, R2);
    assert_eq!((outcome.applied, outcome.refused), (0, 1));
    assert_eq!(reports_of(r2, 4), [("2026Q1".into(), R2.into(), St::Qualified, Why::Unspecified)], "unchanged");
}

/// Verdicts waiting on the channel from the origin to `to`, in order.
fn verdicts_to(f: &Federation, to: &str) -> Vec<pb::ReportVerdict> {
    unacked(f.at(ORIGIN), to)
        .into_iter()
        .filter_map(|(_, envelope)| match envelope.body {
            Some(Body::ReportVerdict(v)) => Some(v),
            _ => None,
        })
        .collect()
}

/// (total, on_time) of indicator `name` in `node`'s statement about `counterpart`.
fn measured(f: &Federation, node: &str, counterpart: &str, name: &str) -> (u64, u64) {
    let period = crate::domain::Period::parse("period", "2026Q1").unwrap();
    let statements = f.at(node).assessment(period).unwrap();
    let statement = statements.iter().find(|s| s.counterpart == counterpart).expect("a statement for the pair");
    let public = f.nodes[node].key.public();
    ldx_proto::report::verify_statement(statement, &public).unwrap();
    let i = statement.indicators.iter().find(|i| i.name == name).unwrap();
    assert_eq!(i.missed.len() as u64, i.total - i.on_time - i.pending, "every miss is listed for drill-down");
    (i.total, i.on_time)
}

#[test]
fn a_planted_delay_lowers_notice_timeliness_on_both_sides_and_a_lost_notice_shows_as_a_difference() {
    let f = Federation::new("2026-01-05");
    let r1 = f.at(R1);
    for n in 1..=3 {
        r1.move_in(&move_in(n, R1, "2026-01-05")).unwrap();
    }
    f.deliver(R1, ORIGIN);
    f.deliver(ORIGIN, R1);
    // Person 4's notice is held back for 15 days, past the 7-day deadline.
    r1.move_in(&move_in(4, R1, "2026-01-05")).unwrap();
    f.set_today("2026-01-20");
    f.deliver(R1, ORIGIN);
    f.deliver(ORIGIN, R1);
    // Person 5's notice never arrives within the quarter.
    f.set_today("2026-03-25");
    r1.move_in(&move_in(5, R1, "2026-03-25")).unwrap();
    f.set_today("2026-04-05");

    use super::indicator::{FEEDBACK_TIMELINESS, NOTICE_TIMELINESS};
    // The destination counts five notices, two of them not through in time; her origin
    // saw four arrive, one late. Both figures are lowered, and the totals differ.
    assert_eq!(measured(&f, R1, ORIGIN, NOTICE_TIMELINESS), (5, 3));
    assert_eq!(measured(&f, ORIGIN, R1, NOTICE_TIMELINESS), (4, 3));
    // The origin answered each notice as it arrived; the destination waited 15 days for
    // the fourth feedback.
    assert_eq!(measured(&f, ORIGIN, R1, FEEDBACK_TIMELINESS), (4, 4));
    assert_eq!(measured(&f, R1, ORIGIN, FEEDBACK_TIMELINESS), (4, 3));

    // The quarter closes 25 days after its end (reports, then verdicts): then each side
    // sends its statement to the other, once.
    assert_eq!(f.at(R1).send_due_statements().unwrap(), 0, "Q1 is not closed on 5 April");
    f.set_today("2026-04-26");
    assert_eq!(f.at(R1).send_due_statements().unwrap(), 1);
    assert_eq!(f.at(ORIGIN).send_due_statements().unwrap(), 1);
    assert_eq!(f.at(R1).send_due_statements().unwrap(), 0, "sent once");
    f.deliver(ORIGIN, R1);
    let period = crate::domain::Period::parse("period", "2026Q1").unwrap();
    let theirs = f.at(R1).received_statements(period).unwrap();
    assert_eq!(theirs.len(), 1);
    assert_eq!((theirs[0].node.as_str(), theirs[0].counterpart.as_str()), (ORIGIN, R1));
    let notice = theirs[0].indicators.iter().find(|i| i.name == NOTICE_TIMELINESS).unwrap();
    assert_eq!((notice.total, notice.on_time), (4, 3), "the origin's figures, as it measured them");

    // Once the held notice is delivered the counts agree again, still late.
    f.deliver(R1, ORIGIN);
    f.deliver(ORIGIN, R1);
    assert_eq!(measured(&f, R1, ORIGIN, NOTICE_TIMELINESS), (5, 3));
    assert_eq!(measured(&f, ORIGIN, R1, NOTICE_TIMELINESS), (5, 3));
}

#[test]
fn the_worklist_shows_this_quarter_and_the_next_looks_at_most_a_year_ahead_and_pages() {
    let f = Federation::new("2026-01-05");
    let r1 = f.at(R1);
    for n in 1..=3 {
        r1.move_in(&move_in(n, R1, "2026-01-02")).unwrap();
    }

    // By default: every duty falling due this quarter or the next, the Q1 reports (due
    // 10 April) among them, which a month's horizon hides.
    let list = r1.work_list(&pb::ListWorkRequest::default()).unwrap();
    assert_eq!(list.due_before, "2026-07-01");
    let mut got: Vec<_> = list.items.iter().map(|i| (i.kind.as_str(), i.due.as_str(), i.period.as_str())).collect();
    got.dedup();
    assert_eq!(
        got,
        [
            ("health_check", "2026-01-08", "2026Q1"),
            ("feedback_awaited", "2026-01-19", ""),
            ("health_check", "2026-04-08", "2026Q2"),
            ("report_to_issue", "2026-04-10", "2026Q1"),
        ]
    );
    assert_eq!(list.items.len(), 12);

    // A year ahead at most: the far future is refused with the rule, not computed.
    let far = |due_before: &str| pb::ListWorkRequest { due_before: due_before.into(), ..Default::default() };
    assert!(r1.work_list(&far("2027-01-06")).is_ok());
    let err = r1.work_list(&far("9999-12-31")).unwrap_err().to_string();
    assert!(err.contains("due_before") && err.contains("366 days") && err.contains("2027-01-06"), "{err}");

    // Pages of two, in order, each item once, the calendar on the first page only.
    let whole = r1.work_list(&far("2027-01-06")).unwrap();
    let mut paged = Vec::new();
    let mut req = pb::ListWorkRequest { due_before: "2027-01-06".into(), page_size: 2, ..Default::default() };
    let mut pages = 0;
    loop {
        let page = r1.work_list(&req).unwrap();
        assert!(page.items.len() <= 2);
        assert_eq!(page.calendar.is_empty(), pages > 0);
        pages += 1;
        paged.extend(page.items);
        if page.next_page_token.is_empty() {
            break;
        }
        req.page_token = page.next_page_token;
    }
    assert_eq!(paged, whole.items);
    assert_eq!(pages, whole.items.len().div_ceil(2));
    for (page_size, page_token) in [(5001, ""), (0, "zz"), (0, "00")] {
        let req = pb::ListWorkRequest { page_size, page_token: page_token.into(), ..Default::default() };
        let err = r1.work_list(&req).unwrap_err().to_string();
        assert!(err.contains(if page_size > 0 { "page_size" } else { "page_token" }), "{err}");
    }
}
