//! The gateway's `/metrics`: it asks every node of the directory for its status over
//! mutual TLS and shows which nodes answer and how far each channel lags, by the
//! receiver's own applied seq against the sender's head.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::NaiveDate;
use ldx_gateway::synthetic;
use ldx_tests::cluster::{Cluster, wait_until};

const SENDER: &str = "410103007";
const RECEIVER: &str = "411421";
const WAIT: Duration = Duration::from_secs(60);

/// The value of the sample `series` (name and labels, exactly), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn register(cluster: &Cluster, from: u32, count: u32) -> anyhow::Result<()> {
    let mut client = cluster.node(SENDER).registry().await?;
    let date = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
    for n in from..from + count {
        let request = synthetic::person(RECEIVER, n).move_in(SENDER, date, synthetic::category(n));
        client.register_move_in(request).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_shows_unreachable_nodes_and_channel_lag() -> anyhow::Result<()> {
    let mut cluster = Cluster::builder().nodes([SENDER, RECEIVER]).start().await?;
    register(&cluster, 0, 20).await?;
    let lag = format!("ldx_channel_lag_messages{{from=\"{SENDER}\",to=\"{RECEIVER}\"}}");
    let pending = format!("ldx_channel_pending{{node=\"{SENDER}\",peer=\"{RECEIVER}\"}}");
    let up = format!("ldx_node_up{{node=\"{RECEIVER}\"}}");

    let c = &cluster;
    let waited = wait_until(WAIT, "the gateway sees both nodes up and the channel caught up", async || {
        let Ok(text) = c.gateway_metrics().await else { return false };
        sample(&text, &up) == Some(1.0)
            && sample(&text, &format!("ldx_node_up{{node=\"{SENDER}\"}}")) == Some(1.0)
            && sample(&text, &lag) == Some(0.0)
            && sample(&text, &pending) == Some(0.0)
    })
    .await?;
    eprintln!("gateway saw 20 notices applied at {RECEIVER} within {waited:.2?}");

    cluster.node_mut(RECEIVER).stop().await?;
    register(&cluster, 20, 30).await?;
    let c = &cluster;
    let mut seen = (None, None);
    let waited = wait_until(WAIT, "the gateway marks the stopped node down and shows the lag", async || {
        let Ok(text) = c.gateway_metrics().await else { return false };
        seen = (sample(&text, &up), sample(&text, &pending));
        seen == (Some(0.0), Some(30.0))
    })
    .await
    .map_err(|e| e.context(format!("last seen: up {:?}, pending {:?}\n{}", seen.0, seen.1, c.log_tails(30))))?;
    let text = cluster.gateway_metrics().await?;
    eprintln!(
        "stopped {RECEIVER}: down and 30 pending within {waited:.2?}; lag from its last report {:?}",
        sample(&text, &lag)
    );

    cluster.node_mut(RECEIVER).restart().await?;
    let c = &cluster;
    let waited = wait_until(WAIT, "the gateway sees the node back and the lag at 0", async || {
        let Ok(text) = c.gateway_metrics().await else { return false };
        sample(&text, &up) == Some(1.0) && sample(&text, &pending) == Some(0.0) && sample(&text, &lag) == Some(0.0)
    })
    .await?;
    eprintln!("restarted {RECEIVER}: up with lag 0 within {waited:.2?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_without_a_metrics_address_are_left_out_of_discovery_and_logged_once() -> anyhow::Result<()> {
    // The harness's nodes serve no /metrics unless asked, so their Status names none.
    let cluster = Cluster::builder().nodes([SENDER, RECEIVER]).start().await?;
    let contact = format!("ldx_node_last_contact_timestamp_seconds{{node=\"{SENDER}\"}}");
    let mut rounds = BTreeSet::new();
    let c = &cluster;
    wait_until(WAIT, "five collection rounds with answers", async || {
        let Ok(text) = c.gateway_metrics().await else { return false };
        if let Some(at) = sample(&text, &contact).filter(|at| *at > 0.0) {
            rounds.insert(at.to_bits());
        }
        rounds.len() >= 5
    })
    .await?;
    assert_eq!(cluster.gateway_get("/api/sd").await?, "[]");
    let log = without_colours(&cluster.gateway_log());
    for division in [SENDER, RECEIVER] {
        let lines: Vec<_> = log
            .lines()
            .filter(|l| l.contains("node left out of service discovery") && l.contains(&format!("node={division}")))
            .collect();
        assert_eq!(lines.len(), 1, "once, not once per round:\n{log}");
        assert!(lines[0].contains("metrics_address: empty"), "{}", lines[0]);
    }
    Ok(())
}

/// `text` without ANSI colour sequences (the log writer colours field names).
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}
