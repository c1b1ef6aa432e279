//! `ldx-node ledger` against a real node: 10,000 rows with 50 planted bad rows, each named
//! with its field; a second import that changes nothing; an export that rebuilds the same
//! records on a fresh node of another federation.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use chrono::NaiveDate;
use ldx_gateway::synthetic;
use ldx_proto::v1 as pb;
use ldx_tests::all_persons;
use ldx_tests::{Federation, TestNode};
use prost::Message;

const NODE: &str = env!("CARGO_BIN_EXE_ldx-node-harness");
const DIVISION: &str = "410103007";
const ROWS: u32 = 10_000;
const BAD: u32 = 50;
const ORIGINS: [&str; 3] = ["411421", "411723", "411522"];
const HEADER: &str =
    "id_number,name,phone,category,role,division,address,move_in_date,household_division,move_out_date,next_division";

fn date(n: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + chrono::Days::new(u64::from(n % 300))
}

fn today() -> NaiveDate {
    chrono::Utc::now().date_naive()
}

fn moves_out(r: u32) -> bool {
    r % 20 == 3
}

/// Row `r` of a clean ledger: synthetic people from three counties, every category, some
/// without phone, some with quotes and commas in the address, some with an explicit
/// household division, one in twenty moved out.
fn good_row(r: u32) -> Vec<String> {
    let p = synthetic::person(ORIGINS[(r % 3) as usize], r);
    let (category, role) = match synthetic::category(r) {
        pb::Category::ClosedCommunity => ("closed-community", "residence"),
        pb::Category::MixedCommunity => ("mixed-community", "residence"),
        pb::Category::UrbanVillage => ("urban-village", "residence"),
        pb::Category::Market => ("market", "residence"),
        _ => ("organisation", "workplace"),
    };
    let phone = if r.is_multiple_of(13) { String::new() } else { p.phone.clone() };
    let address = if r.is_multiple_of(17) { format!("{}, \"东\"单元", p.address) } else { p.address.clone() };
    let household = if r % 50 == 7 { ORIGINS[((r + 1) % 3) as usize].to_owned() } else { String::new() };
    let (move_out, next) = if moves_out(r) {
        let out = (date(r) + chrono::Days::new(20)).min(today());
        (out.to_string(), if r % 40 == 3 { "410102001".to_owned() } else { String::new() })
    } else {
        (String::new(), String::new())
    };
    vec![
        p.id_number,
        p.name,
        phone,
        category.into(),
        role.into(),
        DIVISION.into(),
        address,
        date(r).to_string(),
        household,
        move_out,
        next,
    ]
}

/// Bad row number `i` of 50, spread through the file: its row number, the field the
/// report must name, and its cells.
fn bad_row(i: u32) -> (u32, &'static str, Vec<String>) {
    let r = 100 + 197 * i;
    let mut c = good_row(r);
    c[9].clear();
    c[10].clear();
    let field = match i % 16 {
        0 => {
            let last = if c[0].ends_with('1') { "2" } else { "1" };
            c[0] = format!("{}{last}", &c[0][..17]);
            "id_number"
        }
        1 => {
            c[3] = "shop".into();
            "category"
        }
        2 => {
            c[7] = "2026-02-30".into();
            "move_in_date"
        }
        3 => {
            c[5] = "410103003".into();
            "division"
        }
        4 => {
            c[1].clear();
            "name"
        }
        5 => {
            c[7] = (today() + chrono::Days::new(3)).to_string();
            "move_in_date"
        }
        6 => {
            c.push("extra".into());
            "columns"
        }
        7 => {
            c.pop();
            "columns"
        }
        8 => {
            c[4] = "tenant".into();
            "role"
        }
        9 => {
            c[3] = "out-migrant".into();
            c[4] = "residence".into();
            "category"
        }
        10 => {
            c[9] = (date(r) - chrono::Days::new(5)).to_string();
            "move_out_date"
        }
        11 => {
            // The ID of an earlier, still active person, with another address.
            let earlier = if moves_out(r - 1) { r - 2 } else { r - 1 };
            c = good_row(earlier);
            c[6] = "另一个地址 1 号".into();
            "id_number"
        }
        12 => {
            c[2] = "call me".into();
            "phone"
        }
        13 => {
            c[8] = "999999".into();
            "household_division"
        }
        14 => {
            c[10] = "410102001".into();
            "next_division"
        }
        _ => {
            c[6].clear();
            "address"
        }
    };
    (r, field, c)
}

/// RFC 4180 quoting, written independently of the code under test.
fn csv_line(cells: &[String]) -> String {
    let quoted: Vec<String> = cells
        .iter()
        .map(|c| if c.contains([',', '"', '\n', '\r']) { format!("\"{}\"", c.replace('"', "\"\"")) } else { c.clone() })
        .collect();
    quoted.join(",")
}

/// Writes the ledger; returns the planted (row, field) pairs.
fn write_ledger(path: &Path) -> BTreeSet<(u32, String)> {
    let bad: Vec<_> = (0..BAD).map(bad_row).collect();
    let planted = bad.iter().map(|(r, f, _)| (*r, (*f).to_owned())).collect();
    let mut text = format!("{HEADER}\n");
    for r in 1..=ROWS {
        let cells = match bad.iter().find(|(b, _, _)| *b == r) {
            Some((_, _, cells)) => cells.clone(),
            None => good_row(r),
        };
        text.push_str(&csv_line(&cells));
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
    planted
}

fn listing_bytes(persons: &[pb::Person]) -> Vec<u8> {
    persons.iter().flat_map(Message::encode_to_vec).collect()
}

/// The `row R: FIELD: message` lines of a text report.
fn reported(stdout: &str) -> BTreeSet<(u32, String)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("row "))
        .map(|l| {
            let mut parts = l.splitn(3, ": ");
            (parts.next().unwrap().parse().unwrap(), parts.next().unwrap().to_owned())
        })
        .collect()
}

fn rate(rows: usize, started: Instant) -> String {
    let s = started.elapsed().as_secs_f64();
    format!("{s:.1} s, {:.0} rows/s", rows as f64 / s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_of_ten_thousand_imports_once_reports_its_bad_rows_and_exports_back() {
    let federation = Federation::new().unwrap();
    let mut node = TestNode::init(NODE, &federation, DIVISION).unwrap();
    node.start().await.unwrap();
    let file = federation.root().join("ledger.csv");
    let planted = write_ledger(&file);
    assert_eq!(planted.len(), BAD as usize);
    let good = (ROWS - BAD) as usize;
    let file_arg = file.to_str().unwrap();

    // First import: the good rows stored, every planted row named with its field.
    let started = Instant::now();
    let out = node.cli(&["ledger", "import", file_arg]);
    eprintln!("first import of {ROWS} rows: {}", rate(ROWS as usize, started));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "bad rows must fail the command\n{stdout}");
    assert!(stderr.contains("50 of 10000 rows were not imported"), "{stderr}");
    assert!(stdout.starts_with(&format!("{ROWS} rows: {good} stored, 0 unchanged, {BAD} errors")), "{stdout}");
    assert_eq!(reported(&stdout), planted, "{stdout}");
    for r in (1..=ROWS).step_by(7) {
        let id = &good_row(r)[0];
        assert!(!stdout.contains(id.as_str()) && !stderr.contains(id.as_str()), "an ID number in clear: row {r}");
    }
    let before = all_persons(&node).await;
    assert_eq!(before.len(), good);
    let moved_out = before.iter().filter(|p| p.status == pb::PersonStatus::MovedOut as i32).count();
    let planted_rows: BTreeSet<u32> = planted.iter().map(|(r, _)| *r).collect();
    assert_eq!(moved_out, (1..=ROWS).filter(|r| moves_out(*r) && !planted_rows.contains(r)).count());
    assert!(moved_out > 400, "{moved_out}");
    let quoted = &good_row(17)[6];
    assert!(before.iter().any(|p| &p.address == quoted), "a quoted address survives the CSV");

    // Second import: nothing changes; the same errors, now as a CSV report.
    let report = federation.root().join("errors.csv");
    let started = Instant::now();
    let out = node.cli(&["ledger", "import", file_arg, "--errors", report.to_str().unwrap()]);
    eprintln!("second import of {ROWS} rows: {}", rate(ROWS as usize, started));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!out.status.success());
    assert!(stdout.starts_with(&format!("{ROWS} rows: 0 stored, {good} unchanged, {BAD} errors")), "{stdout}");
    assert!(reported(&stdout).is_empty(), "the report goes to the file: {stdout}");
    let report = std::fs::read_to_string(&report).unwrap();
    let mut lines = report.lines();
    assert_eq!(lines.next(), Some("row,field,message"));
    let in_file: BTreeSet<(u32, String)> = lines
        .map(|l| {
            let mut cells = l.splitn(3, ',');
            (cells.next().unwrap().parse().unwrap(), cells.next().unwrap().to_owned())
        })
        .collect();
    assert_eq!(in_file, planted);
    let after = all_persons(&node).await;
    assert!(listing_bytes(&after) == listing_bytes(&before), "a second import changed the records");

    // Export, to a file and to stdout alike.
    let exported = federation.root().join("export.csv");
    let started = Instant::now();
    let out = node.cli(&["ledger", "export", "--output", exported.to_str().unwrap()]);
    eprintln!("export of {good} persons: {}", rate(good, started));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&exported).unwrap();
    let out = node.cli(&["ledger", "export"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, bytes, "stdout and --output differ");
    assert_eq!(String::from_utf8_lossy(&bytes).lines().count(), good + 1);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&exported).unwrap().permissions().mode() & 0o777, 0o600);
    }

    // Re-import into a fresh node of another federation: the same people, field by field.
    let other = Federation::new().unwrap();
    let mut fresh = TestNode::init(NODE, &other, DIVISION).unwrap();
    fresh.start().await.unwrap();
    let started = Instant::now();
    let out = fresh.cli(&["ledger", "import", exported.to_str().unwrap(), "--json"]);
    eprintln!("re-import of {good} exported rows: {}", rate(good, started));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["rows"], good);
    assert_eq!(summary["stored"], good);
    assert_eq!(summary["failed"], 0);
    let comparable = |persons: Vec<pb::Person>| {
        let mut persons: Vec<_> = persons.into_iter().map(|p| pb::Person { person_key: String::new(), ..p }).collect();
        persons.sort_by(|a, b| a.id_number.cmp(&b.id_number));
        persons
    };
    let rebuilt = all_persons(&fresh).await;
    assert_eq!(rebuilt.len(), good);
    let (rebuilt, original) = (comparable(rebuilt), comparable(before));
    for (a, b) in rebuilt.iter().zip(&original) {
        assert_eq!(a, b, "a person changed across export and re-import");
    }

    // Its own export holds the same rows (in its own person_key order).
    let out = fresh.cli(&["ledger", "export"]);
    assert!(out.status.success());
    let sorted = |b: &[u8]| {
        let mut lines: Vec<String> = String::from_utf8_lossy(b).lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    assert_eq!(sorted(&out.stdout), sorted(&bytes));
}
