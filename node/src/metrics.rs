//! Prometheus `/metrics` of a node: the replication figures of `ldx.v1.Monitor` (exact
//! per-channel lag, refusals), the verification outcomes of service reports, and the
//! counters and histograms recorded through the `metrics` crate ([`names`]), in the text
//! exposition format, over HTTP/1.1 (axum) within the listener limits of [`crate::listen`].

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use ldx_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::grpc::monitor::MonitorService;
use crate::registry::{Registry, ReportCount};

/// The counters and histograms a node records, with what each measures.
pub mod names {
    pub const ENVELOPES_APPLIED: &str = "ldx_envelopes_applied_total";
    pub const ENVELOPES_REFUSED: &str = "ldx_envelopes_refused_total";
    pub const BATCHES_REJECTED: &str = "ldx_batches_rejected_total";
    pub const SYNC_REFUSED: &str = "ldx_sync_refused_total";
    pub const WAL_SYNC_SECONDS: &str = "ldx_wal_sync_seconds";
    pub const COMMIT_GROUP_SIZE: &str = "ldx_commit_group_size";
    pub const COMMIT_LOCK_WAIT_SECONDS: &str = "ldx_commit_lock_wait_seconds";
    pub const COMMIT_SECONDS: &str = "ldx_commit_seconds";

    /// Every name with its kind and help text.
    pub const ALL: [(&str, &str, &str); 8] = [
        (ENVELOPES_APPLIED, "counter", "Envelopes received from peers and applied."),
        (ENVELOPES_REFUSED, "counter", "Envelopes received from peers and refused (logged with the reason)."),
        (BATCHES_REJECTED, "counter", "Batches from peers rejected before anything in them was applied."),
        (SYNC_REFUSED, "counter", "Sync streams refused: the caller is not the directory's node for the channel."),
        (WAL_SYNC_SECONDS, "histogram", "Time of one WAL sync (fsync), which makes a group of changes durable."),
        (COMMIT_GROUP_SIZE, "histogram", "Changes made durable by one WAL sync (group commit)."),
        (COMMIT_LOCK_WAIT_SECONDS, "histogram", "Time a change waited for the writer lock (the commit order)."),
        (COMMIT_SECONDS, "histogram", "Time to write a prepared change and wait until it is durable."),
    ];
}

/// The process's recorder, installed at the first call: `None` when another recorder was
/// installed first (the node's figures above are still served).
pub fn recorder() -> Option<&'static PrometheusHandle> {
    static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    RECORDER
        .get_or_init(|| {
            const SECONDS: [f64; 14] =
                [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0];
            const GROUP: [f64; 11] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
            let installed = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(names::COMMIT_GROUP_SIZE.into()), &GROUP))
                .and_then(|b| b.install_recorder());
            match installed {
                Ok(handle) => {
                    for (name, kind, help) in names::ALL {
                        match kind {
                            "counter" => metrics::describe_counter!(name, help),
                            _ => metrics::describe_histogram!(name, help),
                        }
                    }
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed: counters and histograms are not served");
                    None
                }
            }
        })
        .as_ref()
}

/// Keeps the recorder's histograms bounded between scrapes, until `stop` turns true.
pub async fn upkeep(mut stop: watch::Receiver<bool>) {
    let Some(handle) = recorder() else { return };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => handle.run_upkeep(),
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The node's figures in Prometheus text format 0.0.4.
pub fn render(status: &pb::StatusResponse) -> String {
    let mut out = String::new();
    let node = &status.division;
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{{node=\"{node}\"{labels}}} {value}");
        }
    };
    let outbound = |f: &dyn Fn(&pb::OutboundChannel) -> f64| -> Vec<(String, f64)> {
        status.outbound.iter().map(|c| (format!(",peer=\"{}\"", c.peer), f(c))).collect()
    };
    let inbound = |f: &dyn Fn(&pb::InboundChannel) -> f64| -> Vec<(String, f64)> {
        status.inbound.iter().map(|c| (format!(",peer=\"{}\",to=\"{}\"", c.peer, c.to), f(c))).collect()
    };
    family(
        "ldx_directory_version",
        "gauge",
        "Version of the signed directory in use.",
        vec![(String::new(), status.directory_version as f64)],
    );
    family(
        "ldx_directory_fetched_timestamp_seconds",
        "gauge",
        "When the node last fetched the directory from the gateway (Unix seconds; 0: never).",
        vec![(String::new(), status.directory_fetched_ms as f64 / 1000.0)],
    );
    family(
        "ldx_directory_not_after_timestamp_seconds",
        "gauge",
        "When the directory in use goes stale (Unix seconds; 0: no directory); the node then talks to no peer.",
        vec![(String::new(), status.directory_not_after_ms as f64 / 1000.0)],
    );
    family(
        "ldx_directory_fetch_failing",
        "gauge",
        "1 while the node's last attempt to fetch the directory failed, else 0.",
        vec![(String::new(), if status.directory_error.is_empty() { 0.0 } else { 1.0 })],
    );
    family(
        "ldx_channel_head_seq",
        "gauge",
        "Last sequence number written to the channel.",
        outbound(&|c| c.head_seq as f64),
    );
    family(
        "ldx_channel_acked_seq",
        "gauge",
        "Last sequence number the peer acknowledged.",
        outbound(&|c| c.acked_seq as f64),
    );
    family(
        "ldx_channel_pending",
        "gauge",
        "Envelopes not yet acknowledged (head - acked): the lag in messages.",
        outbound(&|c| c.pending as f64),
    );
    family(
        "ldx_channel_oldest_pending_seconds",
        "gauge",
        "Age of the oldest unacknowledged envelope: the lag in time.",
        outbound(&|c| c.oldest_pending_age_ms as f64 / 1000.0),
    );
    family(
        "ldx_channel_last_contact_timestamp_seconds",
        "gauge",
        "When the peer last answered (0: never).",
        outbound(&|c| c.last_contact_ms as f64 / 1000.0),
    );
    family(
        "ldx_channel_sent_bytes_total",
        "counter",
        "Bytes of envelopes sent since the node started.",
        outbound(&|c| c.bytes_sent as f64),
    );
    family(
        "ldx_channel_sent_envelopes_total",
        "counter",
        "Envelopes sent since the node started.",
        outbound(&|c| c.envelopes_sent as f64),
    );
    family(
        "ldx_channel_up",
        "gauge",
        "1 when the last attempt to reach the peer succeeded.",
        outbound(&|c| f64::from(u8::from(c.last_error.is_empty()))),
    );
    family(
        "ldx_inbound_applied_seq",
        "gauge",
        "Last sequence number applied from the peer.",
        inbound(&|c| c.applied_seq as f64),
    );
    family(
        "ldx_inbound_refused_total",
        "counter",
        "Envelopes consumed without effect because the sender was not allowed to send them.",
        inbound(&|c| c.refused as f64),
    );
    family(
        "ldx_certificates_refused_total",
        "counter",
        "Certificate queries answered without a certificate (she is unknown here), each with its reason.",
        vec![(String::new(), status.certificates_refused as f64)],
    );
    out
}

/// Verification outcomes in Prometheus text: reports by side, status and reject reason.
pub fn render_reports(node: &str, counts: &[ReportCount]) -> String {
    let mut out = String::from(
        "# HELP ldx_reports Service reports at this node: issued here or received for verification, by status and reject reason.\n\
         # TYPE ldx_reports gauge\n",
    );
    for c in counts {
        let side = if c.issued_here { "issued" } else { "received" };
        let status = c.status.as_str_name().trim_start_matches("REPORT_STATUS_").to_ascii_lowercase();
        let reason = match c.reason {
            pb::RejectReason::Unspecified => String::new(),
            r => r.as_str_name().trim_start_matches("REJECT_REASON_").to_ascii_lowercase(),
        };
        let _ = writeln!(
            out,
            "ldx_reports{{node=\"{node}\",side=\"{side}\",status=\"{status}\",reason=\"{reason}\"}} {}",
            c.count
        );
    }
    out
}

/// Serves `GET /metrics` on `listener` until `stop` turns true: HTTP/1.1 through axum,
/// within the connection limits and deadlines of [`crate::listen`].
pub async fn serve(
    listener: TcpListener,
    monitor: MonitorService,
    registry: Arc<Registry>,
    stop: watch::Receiver<bool>,
) {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    // A scraper needs a connection or two; the rest is someone else.
    let limits = crate::listen::Limits { max_connections: 64, max_per_address: 16, ..Default::default() };
    let listener = match crate::listen::GuardedListener::new(listener, "metrics", limits, stop.clone()) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "the metrics listener failed; /metrics is not served");
            return;
        }
    };
    let scrape = move || async move {
        let scrape = move || {
            let status = monitor.status_report().ok()?;
            let reports = registry.report_counts().ok()?;
            let recorded = recorder().map(PrometheusHandle::render).unwrap_or_default();
            Some(render(&status) + &render_reports(&status.division, &reports) + &recorded)
        };
        match tokio::task::spawn_blocking(scrape).await {
            Ok(Some(text)) => {
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "status unavailable; see the node's log\n").into_response(),
        }
    };
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(move || scrape.clone()()))
        .fallback(|| async { (StatusCode::NOT_FOUND, "only GET /metrics is served here\n") });
    let mut stop = stop;
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
        tracing::error!(error = %e, "serving /metrics failed");
    }
}

#[cfg(test)]
mod report_tests {
    use super::*;

    #[test]
    fn verification_outcomes_are_labelled_by_side_status_and_reason() {
        let counts = [
            ReportCount {
                issued_here: false,
                status: pb::ReportStatus::Qualified,
                reason: pb::RejectReason::Unspecified,
                count: 7,
            },
            ReportCount {
                issued_here: true,
                status: pb::ReportStatus::Rejected,
                reason: pb::RejectReason::PhotoMismatch,
                count: 2,
            },
        ];
        let text = render_reports("411421", &counts);
        assert!(text.contains("# TYPE ldx_reports gauge"), "{text}");
        assert!(
            text.contains("ldx_reports{node=\"411421\",side=\"received\",status=\"qualified\",reason=\"\"} 7"),
            "{text}"
        );
        assert!(
            text.contains(
                "ldx_reports{node=\"411421\",side=\"issued\",status=\"rejected\",reason=\"photo_mismatch\"} 2"
            ),
            "{text}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_channel_with_its_lag() {
        let status = pb::StatusResponse {
            division: "410103007".into(),
            directory_version: 3,
            outbound: vec![pb::OutboundChannel {
                peer: "411421".into(),
                head_seq: 10,
                acked_seq: 4,
                pending: 6,
                oldest_pending_age_ms: 1500,
                last_error: "cannot connect".into(),
                ..Default::default()
            }],
            inbound: vec![pb::InboundChannel {
                peer: "411421".into(),
                to: "410103007".into(),
                applied_seq: 7,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(&status);
        assert!(text.contains("ldx_channel_pending{node=\"410103007\",peer=\"411421\"} 6\n"), "{text}");
        assert!(text.contains("ldx_channel_oldest_pending_seconds{node=\"410103007\",peer=\"411421\"} 1.5\n"));
        assert!(text.contains("ldx_channel_up{node=\"410103007\",peer=\"411421\"} 0\n"));
        assert!(text.contains("ldx_inbound_applied_seq{node=\"410103007\",peer=\"411421\",to=\"410103007\"} 7\n"));
        assert!(text.contains("# TYPE ldx_channel_pending gauge\n"));
        assert!(text.contains("ldx_directory_fetched_timestamp_seconds{node=\"410103007\"} 0\n"), "{text}");
        assert!(text.contains("ldx_directory_fetch_failing{node=\"410103007\"} 0\n"), "{text}");
        // Every sample line is `name{labels} number`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(series.ends_with('}'), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
