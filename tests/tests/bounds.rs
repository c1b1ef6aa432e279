//! What one staff request may cost a node. `ListWork` used to add an item per person per
//! quarter up to any `due_before` (9999-12-31 grew a node to 24 GB until the kernel
//! killed it). Now the horizon is at most a year, the list comes in pages, and a node
//! with 400 residents answers the furthest worklist within a stated memory bound.
//!
//! One large report used to block a channel for good: 25 services with 1,024-character
//! details made an envelope of 77,598 bytes, over the 65,536 a receiver takes, and every
//! notice behind it waited. Now a quarter holds at most the services one report carries,
//! no envelope over the limit is ever queued, and the channel keeps flowing.

use chrono::{Datelike, Days, Months, NaiveDate, Utc};
use ldx_gateway::synthetic;
use ldx_proto::v1 as pb;
use ldx_tests::cluster::{Cluster, wait_until};
use tonic::Code;

const DAXUELU: &str = "410103007";
const MINQUAN: &str = "411421";
const PERSONS: u32 = 400;
/// Peak resident memory the node may reach while serving the worklists (its idle RSS is
/// about 25 MB; the list of a year for 400 residents is a few thousand items).
const PEAK_RSS_BOUND_KB: u64 = 256 * 1024;

/// Peak resident set size of a process, from /proc.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worklist_is_bounded_and_paged() {
    let cluster = Cluster::builder().nodes([DAXUELU]).sync_writes(false).start().await.unwrap();
    let node = cluster.node(DAXUELU);
    let mut registry = node.registry().await.unwrap();
    let today = Utc::now().date_naive();
    let moved_in = |n: u32| -> NaiveDate { today - Days::new(u64::from(1 + n % 200)) };
    for n in 0..PERSONS {
        let req = synthetic::person(MINQUAN, n).move_in(DAXUELU, moved_in(n), pb::Category::MixedCommunity);
        registry.register_move_in(req).await.unwrap();
    }

    // Far beyond a year: refused with the field, the value and the rule; nothing computed.
    let far = pb::ListWorkRequest { due_before: "9999-12-31".into(), ..Default::default() };
    let status = registry.list_work(far).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let message = status.message();
    assert!(
        message.contains("due_before") && message.contains("9999-12-31") && message.contains("366 days"),
        "{message}"
    );

    // A year ahead, page by page: every resident's duties, each once, in due order.
    let furthest = (today + Days::new(366)).to_string();
    let mut req = pb::ListWorkRequest { due_before: furthest.clone(), page_size: 1000, ..Default::default() };
    let mut items = Vec::new();
    loop {
        let page = registry.list_work(req.clone()).await.unwrap().into_inner();
        assert_eq!(page.due_before, furthest);
        assert!(page.items.len() <= 1000);
        items.extend(page.items);
        if page.next_page_token.is_empty() {
            break;
        }
        req.page_token = page.next_page_token;
    }
    let residents: std::collections::HashSet<_> = items.iter().map(|i| i.person_key.clone()).collect();
    assert_eq!(residents.len(), PERSONS as usize, "every resident has a duty within a year");
    let mut keys: Vec<_> = items.iter().map(|i| (&i.due, &i.kind, &i.person_key, &i.period, &i.report_id)).collect();
    assert!(keys.is_sorted(), "pages come in due order");
    keys.dedup();
    assert_eq!(keys.len(), items.len(), "no item on two pages");
    // Four quarters of health checks and reports, at most one more of each, per resident.
    assert!(items.len() <= PERSONS as usize * 10, "{} items", items.len());

    let peak = peak_rss_kb(node.pid().unwrap());
    assert!(peak < PEAK_RSS_BOUND_KB, "node peaked at {peak} kB serving the worklists");
    println!("{} items for {PERSONS} residents in pages of 1000; node peak RSS {} MB", items.len(), peak / 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_too_large_for_a_channel_is_refused_at_the_staff_call_and_the_channel_flows() {
    let cluster = Cluster::builder().nodes([DAXUELU, MINQUAN]).start().await.unwrap();
    let mut registry = cluster.node(DAXUELU).registry().await.unwrap();
    let today = Utc::now().date_naive();
    let this_quarter = NaiveDate::from_ymd_opt(today.year(), today.month0() / 3 * 3 + 1, 1).unwrap();
    let quarter = this_quarter.checked_sub_months(Months::new(3)).unwrap();
    let period = format!("{}Q{}", quarter.year(), quarter.month0() / 3 + 1);
    let her = synthetic::person(MINQUAN, 1);
    registry.register_move_in(her.move_in(DAXUELU, quarter, pb::Category::MixedCommunity)).await.unwrap();

    // The longest details, in four-byte characters: twelve fit one report, the 13th is
    // refused with the field, the value and the rule, and nothing is stored.
    let details = "\u{20000}".repeat(1024);
    let service = |day: u64| pb::RecordServiceRequest {
        id_number: her.id_number.clone(),
        kind: pb::ServiceKind::HealthCheck as i32,
        date: (quarter + Days::new(day)).to_string(),
        details: details.clone(),
    };
    for day in 0..12 {
        registry.record_service(service(day)).await.unwrap();
    }
    let status = registry.record_service(service(12)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("date: ")
            && status.message().contains("the most one quarterly report carries (12)"),
        "{}",
        status.message()
    );
    let stored =
        registry.get_person(pb::GetPersonRequest { id_number: her.id_number.clone() }).await.unwrap().into_inner();
    assert_eq!(stored.person.unwrap().services.len(), 12);

    registry
        .record_photo(pb::RecordPhotoRequest { id_number: her.id_number.clone(), photo_digest: "ab".repeat(32) })
        .await
        .unwrap();
    let report = registry
        .issue_report(pb::IssueReportRequest { id_number: her.id_number.clone(), period: period.clone() })
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();

    // The report and a notice queued behind it both arrive.
    let other = synthetic::person(MINQUAN, 2);
    registry.register_move_in(other.move_in(DAXUELU, today, pb::Category::MixedCommunity)).await.unwrap();
    let origin = cluster.node(MINQUAN);
    let waited = wait_until(
        std::time::Duration::from_secs(60),
        "the report and the notice behind it at the origin",
        async || {
            let Ok(mut client) = origin.registry().await else { return false };
            let Ok(reports) = client.list_reports(pb::ListReportsRequest::default()).await else { return false };
            let arrived = reports.into_inner().reports.iter().any(|r| r.report_id == report.report_id);
            arrived && matches!(origin.person(&other.id_number).await, Ok(Some(_)))
        },
    )
    .await
    .unwrap();
    let c = &cluster;
    wait_until(std::time::Duration::from_secs(30), "the channel acked to its head", async || {
        let Ok(status) = c.node(DAXUELU).status().await else { return false };
        status.outbound.iter().any(|o| o.peer == MINQUAN && o.pending == 0)
    })
    .await
    .unwrap();
    println!(
        "a report of 12 services with 1,024 four-byte characters each and the notice behind it arrived within {waited:.2?}"
    );
}
