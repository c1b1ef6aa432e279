//! The two-way assessment from the nodes' own records to the gateway's tables.
//!
//! A planted delay: two registries on one simulated clock (a street office and her
//! origin county), a notice held back past its 7-day deadline and one never delivered in
//! the quarter. Each node's signed statement goes through the gateway's rollup: the
//! lowered figure shows on both sides, and the pair is flagged where the counts differ.
//! Then the network path: `ldx-gateway assess` gathers the statements of real node
//! processes over mutual TLS.

use std::process::Command;
use std::time::Duration;

use ldx_gateway::assess::{self, Figure, Weights};
use ldx_gateway::synthetic;
use ldx_node::crypto::FederationSalt;
use ldx_node::domain::Period;
use ldx_proto::v1 as pb;
use ldx_tests::cluster::{Cluster, wait_until};
use ldx_tests::pair::{COUNTY, Pair, STREET};

const GATEWAY: &str = env!("CARGO_BIN_EXE_ldx-gateway-harness");

#[test]
fn a_planted_delay_shows_on_both_sides_and_the_differing_counts_are_flagged() {
    let pair = Pair::new("2026-01-05");
    for n in 1..=3 {
        pair.register(n, "2026-01-05");
    }
    pair.deliver(&pair.street, &pair.county);
    pair.deliver(&pair.county, &pair.street);
    // The planted delay: the fourth notice is held back for 15 days.
    pair.register(4, "2026-01-05");
    pair.set_today("2026-01-20");
    pair.deliver(&pair.street, &pair.county);
    pair.deliver(&pair.county, &pair.street);
    // The fifth never arrives within the quarter.
    pair.set_today("2026-03-25");
    pair.register(5, "2026-03-25");
    pair.set_today("2026-04-05");

    let period = Period::parse("period", "2026Q1").unwrap();
    let mut statements = pair.street.assessment(period).unwrap();
    statements.extend(pair.county.assessment(period).unwrap());
    let rollup = assess::rollup("2026Q1", &statements, &Weights::default());
    let notice = rollup.rows.iter().find(|r| r.indicator == "notice_timeliness").unwrap();
    assert_eq!((notice.destination.as_str(), notice.origin.as_str()), (STREET, COUNTY));
    assert_eq!(notice.by_destination, Some(Figure { total: 5, on_time: 3, pending: 0 }), "lowered at the street");
    assert_eq!(notice.by_origin, Some(Figure { total: 4, on_time: 3, pending: 0 }), "lowered at the county");
    assert!(notice.disagrees(), "5 notices sent, 4 arrived");
    let held = synthetic::person(COUNTY, 4).id_number;
    let held_key = FederationSalt::from_bytes([4; 32]).person_key(&held).to_hex();
    assert!(notice.missed.contains(&held_key), "the held notice is listed for drill-down");
    let feedback = rollup.rows.iter().find(|r| r.indicator == "feedback_timeliness").unwrap();
    assert_eq!(feedback.by_origin, Some(Figure { total: 4, on_time: 4, pending: 0 }));
    assert_eq!(feedback.by_destination, Some(Figure { total: 4, on_time: 3, pending: 0 }));
    let quality = rollup.rows.iter().find(|r| r.indicator == "report_quality").unwrap();
    assert!(!quality.disagrees());

    // The street office is scored on what the county measured: 3 of 4 notices in time.
    let street = rollup.scores.iter().find(|s| s.node == STREET).unwrap();
    assert!((street.points - 925.0).abs() < 1e-9, "{street:?}");
    let table = assess::render_text(&rollup);
    eprintln!("{table}");
    let line = table.lines().find(|l| l.contains("notice_timeliness")).unwrap();
    assert!(line.contains("3/5") && line.contains("3/4") && line.ends_with("DISAGREE"), "{line}");
}

/// The feedback awaited at the street office, as its worklist shows it: (due, overdue).
fn feedback_item(pair: &Pair, n: u32) -> Option<(String, bool)> {
    let key = Pair::person_key(n).to_hex();
    let list = pair.street.work_list(&pb::ListWorkRequest::default()).unwrap();
    list.items.iter().find(|i| i.kind == "feedback_awaited" && i.person_key == key).map(|i| (i.due.clone(), i.overdue))
}

fn feedback_figure(registry: &ldx_node::registry::Registry, counterpart: &str) -> (u64, u64, usize) {
    let statements = registry.assessment(Period::parse("period", "2026Q1").unwrap()).unwrap();
    let statement = statements.iter().find(|s| s.counterpart == counterpart).unwrap();
    let f = statement.indicators.iter().find(|i| i.name == "feedback_timeliness").unwrap();
    (f.total, f.on_time, f.missed.len())
}

#[test]
fn the_worklist_and_the_assessment_agree_on_one_feedback_deadline() {
    // Registered on 5 January: with notice_days 7 and feedback_days 7 the street office
    // expects her feedback by 19 January.
    let on_time = Pair::new("2026-01-05");
    on_time.register(1, "2026-01-05");
    assert_eq!(feedback_item(&on_time, 1), Some(("2026-01-19".into(), false)));
    // Her notice and its feedback go through on the last day allowed: in time for both.
    on_time.set_today("2026-01-19");
    on_time.exchange();
    assert_eq!(feedback_item(&on_time, 1), None, "answered: off the worklist");
    assert_eq!(feedback_figure(&on_time.street, COUNTY), (1, 1, 0));

    // A day later: OVERDUE on the worklist, and missed by the assessment alike.
    let late = Pair::new("2026-01-05");
    late.register(1, "2026-01-05");
    late.set_today("2026-01-20");
    assert_eq!(feedback_item(&late, 1), Some(("2026-01-19".into(), true)));
    late.exchange();
    assert_eq!(feedback_figure(&late.street, COUNTY), (1, 0, 1));
    // The county answered on the day the notice arrived: its own feedback was in time.
    assert_eq!(feedback_figure(&late.county, STREET), (1, 1, 0));
}

fn assess_csv(cluster: &Cluster, period: &str) -> anyhow::Result<String> {
    let out =
        Command::new(GATEWAY).args(["assess", "--csv", "--period", period, "--pki"]).arg(cluster.pki_dir()).output()?;
    anyhow::ensure!(out.status.success(), "assess failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

/// The CSV row of the notice indicator.
fn notice_row(csv: &str) -> String {
    csv.lines().find(|l| l.contains(",notice_timeliness,")).unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_gathers_signed_statements_of_running_nodes() -> anyhow::Result<()> {
    let cluster = Cluster::builder().nodes([STREET, COUNTY]).fault_proxies(true).start().await?;
    let today = chrono::Utc::now().with_timezone(&ldx_node::clock::cst()).date_naive();
    let period = Period::of(today).to_string();
    let mut client = cluster.node(STREET).registry().await?;
    for n in 0..10 {
        let request = synthetic::person(COUNTY, n).move_in(STREET, today, pb::Category::MixedCommunity);
        client.register_move_in(request).await?;
    }
    let c = &cluster;
    let wait = Duration::from_secs(60);
    wait_until(wait, "both sides count ten notices in time", async || {
        assess_csv(c, &period).is_ok_and(|csv| notice_row(&csv).contains(",10,10,0,10,10,0,false,"))
    })
    .await?;

    // Cut the county off: its side goes missing, and the street office counts the
    // notices it cannot deliver as pending (their deadline is days away).
    cluster.proxy(COUNTY).partition();
    for n in 10..13 {
        let request = synthetic::person(COUNTY, n).move_in(STREET, today, pb::Category::MixedCommunity);
        client.register_move_in(request).await?;
    }
    let csv = assess_csv(&cluster, &period)?;
    let row = notice_row(&csv);
    assert!(row.contains(&format!("{STREET},{COUNTY},notice_timeliness,destination,13,10,3,,,,true,")), "{csv}");

    cluster.proxy(COUNTY).heal();
    wait_until(wait, "the held notices arrive and both sides agree again", async || {
        assess_csv(c, &period).is_ok_and(|csv| notice_row(&csv).contains(",13,13,0,13,13,0,false,"))
    })
    .await?;
    // Staff at the street office see the same figures from their own node.
    let out = cluster.node(STREET).cli(&["assessment", "--period", &period, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mine: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let notice = mine["indicators"].as_array().unwrap().iter().find(|i| i["indicator"] == "notice_timeliness").unwrap();
    assert_eq!((notice["counterpart"].as_str(), notice["total"].as_u64()), (Some(COUNTY), Some(13)), "{mine}");
    assert_eq!(notice["on_time"], 13);
    let text = Command::new(GATEWAY).args(["assess", "--period", &period, "--pki"]).arg(cluster.pki_dir()).output()?;
    let text = String::from_utf8(text.stdout)?;
    assert!(text.contains("双向考核") && !text.contains("DISAGREE"), "{text}");
    let scores = text.split("scores (of 1000").nth(1).unwrap_or_default();
    let score = scores.lines().find(|l| l.starts_with(STREET)).unwrap_or_default();
    assert!(score.contains("1000.0"), "every notice in time: {text}");
    Ok(())
}
