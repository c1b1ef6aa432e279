//! Quarterly reports between real node processes, driven through the `ldx-node` CLI as
//! staff would: photos filed at both ends, the report issued at her residence, verified
//! at her origin (automatically when the photos match, by an operator when they do not),
//! and the signed verdict back at the residence. The signatures are checked against the
//! keys of the directory the gateway serves.

use std::time::Duration;

use chrono::NaiveDate;
use ldx_gateway::synthetic;
use ldx_tests::cluster::{Cluster, ClusterNode, wait_until};
use serde_json::Value;

const RESIDENCE: &str = "410103007";
const ORIGIN: &str = "411421";
const WAIT: Duration = Duration::from_secs(60);

/// Runs the CLI with `--json` and parses what it printed; fails with its stderr.
fn cli_json(node: &ClusterNode, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = args.to_vec();
    all.push("--json");
    let out = node.cli(&all);
    anyhow::ensure!(out.status.success(), "ldx-node {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Status and reason of the one report about `person_key` listed at `node`.
fn report_state(node: &ClusterNode, person_key: &str) -> Option<(String, String, String)> {
    let list = cli_json(node, &["report", "list"]).ok()?;
    list["reports"].as_array()?.iter().find(|r| r["person_key"] == person_key).map(|r| {
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
        (s("report_id"), s("status"), s("reason"))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_is_issued_verified_and_answered_through_the_cli() -> anyhow::Result<()> {
    let cluster = Cluster::builder().nodes([RESIDENCE, ORIGIN]).start().await?;
    let (residence, origin) = (cluster.node(RESIDENCE), cluster.node(ORIGIN));
    let today = chrono::Utc::now().with_timezone(&ldx_node::clock::cst()).date_naive();
    let moved_in = NaiveDate::from_ymd_opt(2026, 1, 2).unwrap();
    let mut client = residence.registry().await?;
    let (alike, unlike) = (synthetic::person(ORIGIN, 1), synthetic::person(ORIGIN, 2));
    let mut keys = Vec::new();
    for p in [&alike, &unlike] {
        let req = p.move_in(RESIDENCE, moved_in, ldx_proto::v1::Category::MixedCommunity);
        let person = client.register_move_in(req).await?.into_inner().person.unwrap();
        keys.push(person.person_key);
    }
    let c = &cluster;
    wait_until(WAIT, "her origin has both records", async || {
        c.node(ORIGIN).list_persons().await.is_ok_and(|p| p.len() == 2)
    })
    .await?;

    // Photos: only the digest of each file is sent. One file is the same at both ends.
    let dir = tempfile::tempdir()?;
    let photo = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    };
    let (same, old, new) =
        (photo("a.jpg", b"photo of 1"), photo("b-old.jpg", b"old photo"), photo("b-new.jpg", b"new"));
    for (node, id, file) in
        [(residence, &alike.id_number, &same), (origin, &alike.id_number, &same), (residence, &unlike.id_number, &new)]
    {
        cli_json(node, &["person", "photo", id, "--file", file])?;
    }
    cli_json(origin, &["person", "photo", &unlike.id_number, "--file", &old])?;
    let date = today.to_string();
    for id in [&alike.id_number, &unlike.id_number] {
        cli_json(residence, &["service", "add", id, "--date", &date])?;
        let issued = cli_json(residence, &["report", "issue", id])?;
        assert_eq!(issued["reports"][0]["status"], "issued", "{issued}");
    }

    // The matching photo qualifies at once; the other waits for an operator at the origin.
    wait_until(WAIT, "both reports reach the origin", async || {
        report_state(origin, &keys[0]).is_some_and(|s| s.1 == "qualified")
            && report_state(origin, &keys[1]).is_some_and(|s| s.1 == "awaiting-verification")
    })
    .await?;
    let work = cli_json(origin, &["work", "list"])?;
    let items = work["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{work}");
    assert_eq!(items[0]["kind"], "verdict_to_return");
    assert_eq!(items[0]["id_number"], unlike.id_number.as_str());
    let (report_id, _, _) = report_state(origin, &keys[1]).unwrap();
    let out = origin.cli(&["report", "verify", &report_id]);
    assert!(!out.status.success(), "a decision is required");
    cli_json(origin, &["report", "verify", &report_id, "--reject", "photo-mismatch", "--detail", "not her"])?;

    wait_until(WAIT, "both verdicts reach the residence", async || {
        report_state(residence, &keys[0]).is_some_and(|s| s.1 == "qualified")
            && report_state(residence, &keys[1])
                .is_some_and(|s| (s.1.as_str(), s.2.as_str()) == ("rejected", "photo-mismatch"))
    })
    .await?;
    let served = cli_json(origin, &["person", "show", &alike.id_number])?;
    let period = format!("{}Q{}", today.format("%Y"), (today.format("%m").to_string().parse::<u32>()? - 1) / 3 + 1);
    assert_eq!(served["sync"]["served_periods"], serde_json::json!([period]), "{served}");
    assert_eq!(served["sync"]["residence"], RESIDENCE);
    let work = cli_json(origin, &["work", "list"])?;
    assert!(work["items"].as_array().unwrap().is_empty(), "{work}");
    Ok(())
}
