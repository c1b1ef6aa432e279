//! Retention on the simulated clock: a woman who moved out of a street office three years
//! ago, with every item of hers done, loses her personal fields there (the bytes of her
//! sealed record and report leave the data directory after the purge's compaction), her
//! counts in both nodes' assessments stay the same, and the purge is audited. One who
//! left as long ago with an envelope still unacknowledged, and one who left last year,
//! keep theirs.

use std::path::Path;

use ldx_gateway::synthetic;
use ldx_node::domain::Period;
use ldx_node::registry::{AuditFilter, Registry, RegistryError};
use ldx_node::storage::Store;
use ldx_proto::v1 as pb;
use ldx_tests::pair::{COUNTY, Pair, STREET};

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            found.push(path.display().to_string());
        }
    }
    found
}

/// The sealed bytes of her record and of her first report at the street office, read
/// from its data directory beside the open registry.
fn sealed_at_street(pair: &Pair, n: u32) -> (Vec<u8>, Vec<u8>) {
    let store = Store::open_read_only(pair.data_dirs()[0], STREET).unwrap();
    let key = Pair::person_key(n);
    let record = store.person(&key).unwrap().unwrap();
    let (_, report) = store.reports_of(&key).unwrap().into_iter().next().expect("she has a report");
    (record.sealed, report.sealed)
}

/// A node's statements with the moment they were computed (and so their signature) left
/// out: what the counts say.
fn counts(registry: &Registry, period: &str) -> Vec<pb::AssessmentStatement> {
    let mut statements = registry.assessment(Period::parse("period", period).unwrap()).unwrap();
    for s in &mut statements {
        s.computed_at_ms = 0;
        s.signature.clear();
    }
    statements
}

fn service(registry: &Registry, id: &str, date: &str) {
    let req = pb::RecordServiceRequest {
        id_number: id.to_owned(),
        kind: pb::ServiceKind::HealthCheck as i32,
        date: date.into(),
        details: "孕情检查，正常".into(),
    };
    registry.record_service(&req).unwrap();
}

fn move_out(registry: &Registry, id: &str, date: &str, next_division: &str) {
    let req =
        pb::RegisterMoveOutRequest { id_number: id.to_owned(), date: date.into(), next_division: next_division.into() };
    registry.move_out(&req).unwrap();
}

#[test]
fn three_years_after_she_left_her_personal_fields_are_gone_and_her_counts_stay() {
    let pair = Pair::new("2026-01-05");
    let who = |n| synthetic::person(COUNTY, n);
    for n in 1..=3 {
        pair.register(n, "2026-01-05");
    }
    pair.exchange();
    // Person 1's quarter: a check, her photo at both nodes, the report, the verdict.
    let photo = pb::RecordPhotoRequest { id_number: who(1).id_number, photo_digest: hex_digest(1) };
    pair.street.record_photo(&photo).unwrap();
    pair.county.record_photo(&photo).unwrap();
    pair.set_today("2026-02-10");
    service(&pair.street, &who(1).id_number, "2026-02-10");
    pair.street.issue_report(&pb::IssueReportRequest { id_number: who(1).id_number, period: "2026Q1".into() }).unwrap();
    pair.exchange();
    pair.exchange();
    let reports = pair.street.list_reports(&pb::ListReportsRequest::default()).unwrap().reports;
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].status(), pb::ReportStatus::Qualified, "the county's verdict came back");

    // Persons 1 and 2 leave in June 2026, and the county hears of it; person 3 leaves too,
    // for a district whose node this one cannot reach: that notice is never acknowledged.
    pair.set_today("2026-06-30");
    move_out(&pair.street, &who(1).id_number, "2026-06-30", "");
    move_out(&pair.street, &who(2).id_number, "2026-06-30", "");
    pair.exchange();
    move_out(&pair.street, &who(3).id_number, "2026-06-30", "410105");
    // Person 4 came later and left only last year.
    pair.set_today("2028-03-01");
    pair.register(4, "2028-03-01");
    pair.exchange();
    pair.set_today("2028-09-01");
    move_out(&pair.street, &who(4).id_number, "2028-09-01", "");
    pair.exchange();
    pair.deliver(&pair.county, &pair.street);

    let before: Vec<_> = ["2026Q1", "2026Q2", "2028Q1", "2028Q3"]
        .iter()
        .flat_map(|p| [counts(&pair.street, p), counts(&pair.county, p)])
        .collect();
    let (record, report) = sealed_at_street(&pair, 1);
    let street_dir = pair.data_dirs()[0];
    // Not a check that cannot fail: before the purge her sealed record is on disk.
    assert!(!files_holding(street_dir, &record[..32]).is_empty(), "her sealed record is in the data dir");
    assert!(!files_holding(street_dir, &report[..32]).is_empty(), "her sealed report is in the data dir");

    // Three years after: 2029-07-01, retention.years = 2 (the default).
    pair.set_today("2029-07-01");
    let dry = pair.street.run_retention(true).unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.moved_out_by, "2027-07-01");
    // In key order, by pseudonymous key only.
    let listed: Vec<_> = dry.items.iter().map(|i| i.person_key.clone()).collect();
    let mut due = vec![Pair::person_key(1).to_hex(), Pair::person_key(2).to_hex()];
    due.sort();
    assert_eq!(listed, due);
    assert_eq!(dry.kept_open, 1, "person 3's move-out notice is unacknowledged");
    assert_eq!(dry.items.iter().map(|i| i.reports).sum::<u32>(), 1);
    assert_eq!(pair.street.get(&pb::GetPersonRequest { id_number: who(1).id_number }).unwrap().name, who(1).name);

    let run = pair.street.run_retention(false).unwrap();
    assert_eq!((run.total, run.kept_open, run.items.len()), (2, 1, 2));
    assert_eq!(pair.street.run_retention(true).unwrap().total, 0, "nothing is purged twice");

    // Her sealed bytes, her ID number and her name are nowhere in the data directory.
    for needle in [&record[..32], &report[..32], who(1).id_number.as_bytes(), who(1).name.as_bytes()] {
        assert_eq!(files_holding(street_dir, needle), Vec::<String>::new());
    }
    let err = pair.street.get(&pb::GetPersonRequest { id_number: who(1).id_number }).unwrap_err();
    assert!(matches!(err, RegistryError::Purged { .. }), "{err}");
    assert!(err.to_string().contains("purged on 2029-07-01"), "{err}");
    let listed = pair.street.list(&pb::ListPersonsRequest::default()).unwrap();
    let ids: Vec<_> = listed.persons.iter().map(|p| p.id_number.clone()).collect();
    assert_eq!(ids.len(), 2, "persons 3 and 4 are listed, the purged are not: {ids:?}");
    assert!(ids.contains(&who(3).id_number) && ids.contains(&who(4).id_number));
    assert_eq!(listed.unreadable, 0);
    let reports = pair.street.list_reports(&pb::ListReportsRequest::default()).unwrap().reports;
    assert_eq!(reports.len(), 1);
    assert!(reports[0].services.is_empty() && reports[0].status() == pb::ReportStatus::Qualified);
    assert_eq!(reports[0].period, "2026Q1");

    // Her counts are the same at both nodes.
    let after: Vec<_> = ["2026Q1", "2026Q2", "2028Q1", "2028Q3"]
        .iter()
        .flat_map(|p| [counts(&pair.street, p), counts(&pair.county, p)])
        .collect();
    assert!(before.iter().any(|s| !s.is_empty()), "there are counts to compare");
    assert_eq!(after, before);

    // The purge is audited, by the node itself.
    let filter = AuditFilter { person: Some(Pair::person_key(1)), ..Default::default() };
    let audit = pair.street.audit_list(&filter).unwrap().entries;
    let purge: Vec<_> = audit.iter().filter(|e| e.action == "retention_purge").collect();
    assert_eq!(purge.len(), 1, "{audit:?}");
    assert_eq!(purge[0].staff, "node");

    // She is still the county's out-migrant: her origin keeps her record.
    assert_eq!(pair.county.run_retention(true).unwrap().total, 0);
    assert_eq!(pair.county.get(&pb::GetPersonRequest { id_number: who(1).id_number }).unwrap().name, who(1).name);

    // Should she come back, she is registered afresh, and the county hears of it.
    pair.register(1, "2029-07-01");
    pair.exchange();
    let again = pair.street.get(&pb::GetPersonRequest { id_number: who(1).id_number }).unwrap();
    assert_eq!((again.name.as_str(), again.status()), (who(1).name.as_str(), pb::PersonStatus::Active));
}

fn hex_digest(n: u8) -> String {
    [n; 32].iter().map(|b| format!("{b:02x}")).collect()
}
