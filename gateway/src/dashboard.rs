//! The district operators' dashboard: one self-contained page (HTML, CSS and the script
//! drawing the chart are all inline, so it works on a network without internet access)
//! and the two JSON documents it reads, `GET /api/status` (nodes and channels now) and
//! `GET /api/history?minutes=N` (lag over time, from the gateway's history store).
//!
//! It shows divisions, channels, counts and ages only: nothing about a person ever
//! reaches the gateway, so nothing about one can appear here.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::collector::{self, ChannelView, Collector, NodeReport, Watermarks};
use crate::directory::division_name;
use crate::history::Round;

/// The page; `INITIAL_MARKER` is replaced by the first status and history, so the page
/// draws at once and then refreshes from the JSON endpoints.
const PAGE: &str = include_str!("dashboard/index.html");
const INITIAL_MARKER: &str = "/*INITIAL_DATA*/null";

/// Window of the chart when the page does not ask for one.
const DEFAULT_WINDOW_MINUTES: i64 = 15;
/// Longest window the chart may ask for (a day).
const MAX_WINDOW_MINUTES: i64 = 24 * 60;
/// Points per series at most: a long window is reduced to the worst lag per time slot.
const MAX_POINTS: i64 = 240;
/// Error texts are cut to this many characters.
const MAX_ERROR_CHARS: usize = 200;

/// The dashboard's routes, over the collector's latest reports and history.
pub fn router(collector: Collector) -> axum::Router {
    axum::Router::new()
        .route("/", get(page))
        .route("/api/status", get(status))
        .route("/api/history", get(history))
        .route("/api/assessment", get(assessment))
        .with_state(collector)
}

/// What the page starts with, inline.
#[derive(Debug, Serialize)]
struct Initial {
    status: StatusDoc,
    history: HistoryDoc,
}

async fn page(State(collector): State<Collector>) -> Response {
    let history = match history_doc(&collector, DEFAULT_WINDOW_MINUTES).await {
        Ok(doc) => doc,
        Err(response) => return response,
    };
    let initial = match serde_json::to_string(&Initial { status: status_doc(&collector), history }) {
        Ok(json) => script_safe(&json),
        Err(e) => {
            tracing::error!(error = %e, "cannot write the dashboard's data");
            return (StatusCode::INTERNAL_SERVER_ERROR, "cannot write the dashboard's data; see the log\n")
                .into_response();
        }
    };
    let html = PAGE.replacen(INITIAL_MARKER, &initial, 1);
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], html).into_response()
}

async fn status(State(collector): State<Collector>) -> Response {
    json_response(status_doc(&collector))
}

async fn history(State(collector): State<Collector>, RawQuery(query): RawQuery) -> Response {
    let minutes = match window_minutes(query.as_deref()) {
        Ok(minutes) => minutes,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    match history_doc(&collector, minutes).await {
        Ok(doc) => json_response(doc),
        Err(response) => response,
    }
}

/// How long the dashboard waits for each node's assessment statements.
const ASSESSMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// `GET /api/assessment?period=2026Q4` (default: the current quarter): the two-way
/// assessment gathered from the nodes now, as `ldx-gateway assess` shows it.
async fn assessment(State(collector): State<Collector>, RawQuery(query): RawQuery) -> Response {
    use ldx_node::clock::Clock as _;
    let raw = query.as_deref().unwrap_or_default().split('&').find_map(|kv| kv.strip_prefix("period="));
    let period = match raw {
        None | Some("") => ldx_node::domain::Period::of(ldx_node::clock::SystemClock.today()),
        Some(raw) => match ldx_node::domain::Period::parse("period", raw) {
            Ok(period) => period,
            Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        },
    };
    let Some((directory, nodes)) = collector.nodes() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "this gateway has no PKI to ask the nodes with\n").into_response();
    };
    let Some(directory) = directory else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no directory yet: add nodes with `ldx-gateway directory add` first\n",
        )
            .into_response();
    };
    let period = period.to_string();
    let (statements, unavailable) = crate::assess::gather_from(nodes, &directory, &period, ASSESSMENT_TIMEOUT).await;
    let mut rollup = crate::assess::rollup(&period, &statements, &crate::assess::Weights::default());
    rollup.unavailable = unavailable;
    json_response(crate::assess::json(&rollup))
}

fn json_response(body: impl Serialize) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

/// The `minutes` query parameter, checked against its range.
fn window_minutes(query: Option<&str>) -> Result<i64, String> {
    let raw = query.unwrap_or_default().split('&').find_map(|pair| pair.strip_prefix("minutes=")).unwrap_or_default();
    if raw.is_empty() {
        return Ok(DEFAULT_WINDOW_MINUTES);
    }
    match raw.parse::<i64>() {
        Ok(m) if (1..=MAX_WINDOW_MINUTES).contains(&m) => Ok(m),
        _ => Err(format!("minutes: {raw:?} must be a whole number from 1 to {MAX_WINDOW_MINUTES}\n")),
    }
}

/// JSON made fit to sit inside the page's `<script>` element: `<`, `>` and `&` (and the
/// two line separators JavaScript once refused in strings) escaped. In JSON they can only
/// occur inside strings, where the escape means the same character.
fn script_safe(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

fn truncated(error: &str) -> String {
    error.chars().take(MAX_ERROR_CHARS).collect()
}

/// `GET /api/status`: nodes by division, and channels worst first.
#[derive(Debug, Serialize)]
struct StatusDoc {
    now_ms: i64,
    collect_every_ms: u64,
    history_kept: bool,
    nodes: Vec<NodeDoc>,
    channels: Vec<ChannelDoc>,
}

#[derive(Debug, Serialize)]
struct NodeDoc {
    division: String,
    name: &'static str,
    endpoint: String,
    reachable: bool,
    last_contact_ms: i64,
    last_error: String,
    directory_version: u64,
    outbound: usize,
    inbound: usize,
    watermarks: &'static str,
    watermarks_error: String,
    /// Where Prometheus scrapes the node, as `/api/sd` lists it ("" when it is left out).
    metrics_target: String,
    /// Why the node is left out of `/api/sd` ("" when listed or not yet heard from).
    metrics_error: String,
}

#[derive(Debug, Serialize)]
struct ChannelDoc {
    from: String,
    from_name: &'static str,
    to: String,
    to_name: &'static str,
    head_seq: u64,
    acked_seq: u64,
    applied_seq: Option<u64>,
    applied_verified: bool,
    lag_messages: u64,
    lag_ms: i64,
    pending: u64,
    last_contact_ms: i64,
    last_error: String,
}

/// Nodes by division, and channels worst first (messages behind, then age).
fn status_doc(collector: &Collector) -> StatusDoc {
    let reports = collector.snapshot();
    let mut channels = collector::channels(&reports);
    channels.sort_by(|a, b| {
        (b.lag_messages(), b.oldest_pending_ms)
            .cmp(&(a.lag_messages(), a.oldest_pending_ms))
            .then_with(|| (&a.from, &a.to).cmp(&(&b.from, &b.to)))
    });
    StatusDoc {
        now_ms: collector::now_ms(),
        collect_every_ms: u64::try_from(collector.every().as_millis()).unwrap_or(u64::MAX),
        history_kept: collector.history().is_some(),
        nodes: reports.iter().map(|(division, report)| node_doc(division, report)).collect(),
        channels: channels.iter().map(channel_doc).collect(),
    }
}

fn node_doc(division: &str, report: &NodeReport) -> NodeDoc {
    let status = report.status.as_ref();
    NodeDoc {
        division: division.to_owned(),
        name: division_name(division),
        endpoint: report.endpoint.clone(),
        reachable: report.reachable,
        last_contact_ms: report.last_contact_ms,
        last_error: truncated(&report.last_error),
        directory_version: status.map_or(0, |s| s.directory_version),
        outbound: status.map_or(0, |s| s.outbound.len()),
        inbound: status.map_or(0, |s| s.inbound.len()),
        watermarks: report.watermarks.label(),
        watermarks_error: match &report.watermarks {
            Watermarks::Invalid(reason) => truncated(reason),
            _ => String::new(),
        },
        metrics_target: report.metrics_target.clone().and_then(Result::ok).unwrap_or_default(),
        metrics_error: match &report.metrics_target {
            Some(Err(e)) => truncated(&e.to_string()),
            _ => String::new(),
        },
    }
}

fn channel_doc(c: &ChannelView) -> ChannelDoc {
    ChannelDoc {
        from: c.from.clone(),
        from_name: division_name(&c.from),
        to: c.to.clone(),
        to_name: division_name(&c.to),
        head_seq: c.head_seq,
        acked_seq: c.acked_seq,
        applied_seq: c.applied_seq,
        applied_verified: c.applied_verified,
        lag_messages: c.lag_messages(),
        lag_ms: c.oldest_pending_ms,
        pending: c.pending,
        last_contact_ms: c.last_contact_ms,
        last_error: truncated(&c.last_error),
    }
}

/// `GET /api/history`: one series per channel.
#[derive(Debug, Serialize)]
struct HistoryDoc {
    now_ms: i64,
    from_ms: i64,
    slot_ms: i64,
    rounds: usize,
    series: Vec<SeriesDoc>,
}

#[derive(Debug, Serialize)]
struct SeriesDoc {
    from: String,
    to: String,
    /// `[at_ms, lag_messages, lag_ms]`.
    points: Vec<(i64, u64, i64)>,
}

/// The last `minutes` of history, read off the async runtime. A store that cannot be read
/// is the gateway's failure, reported as such.
async fn history_doc(collector: &Collector, minutes: i64) -> Result<HistoryDoc, Response> {
    let now = collector::now_ms();
    let from = now - minutes * 60_000;
    let rounds = match collector.history().cloned() {
        Some(history) => match tokio::task::spawn_blocking(move || history.since(from)).await {
            Ok(Ok(rounds)) => rounds,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the history");
                return Err((StatusCode::INTERNAL_SERVER_ERROR, "the gateway cannot read its history; see its log\n")
                    .into_response());
            }
            Err(e) => {
                tracing::error!(error = %e, "history task failed");
                return Err((StatusCode::INTERNAL_SERVER_ERROR, "history task failed\n").into_response());
            }
        },
        None => Vec::new(),
    };
    Ok(series(now, from, &rounds))
}

/// One series per channel, `[at_ms, lag_messages, lag_ms]` points, at most
/// [`MAX_POINTS`] of them: the rounds of one time slot are reduced to the worst lag.
fn series(now: i64, from: i64, rounds: &[Round]) -> HistoryDoc {
    let slot_ms = ((now - from) / MAX_POINTS).max(1);
    // Per channel, per slot: the slot's last time, worst lag in messages and in ms.
    type Slots = BTreeMap<i64, (i64, u64, i64)>;
    let mut by_channel: BTreeMap<(&str, &str), Slots> = BTreeMap::new();
    for round in rounds {
        let slot = (round.at_ms - from) / slot_ms;
        for c in &round.channels {
            let point = by_channel.entry((&c.from, &c.to)).or_default().entry(slot).or_insert((round.at_ms, 0, 0));
            point.0 = point.0.max(round.at_ms);
            point.1 = point.1.max(c.lag_messages);
            point.2 = point.2.max(c.lag_ms);
        }
    }
    HistoryDoc {
        now_ms: now,
        from_ms: from,
        slot_ms,
        rounds: rounds.len(),
        series: by_channel
            .into_iter()
            .map(|((from, to), points)| SeriesDoc {
                from: from.to_owned(),
                to: to.to_owned(),
                points: points.into_values().collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::ChannelSample;

    #[test]
    fn strings_are_escaped_for_json_inside_a_script_element() {
        let json = |text: &str| script_safe(&serde_json::to_string(text).unwrap());
        assert_eq!(json("大学路"), "\"大学路\"");
        assert_eq!(json("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
        assert_eq!(json("</script>&\u{2028}"), "\"\\u003c/script\\u003e\\u0026\\u2028\"");
        let back: String = serde_json::from_str(&json("</script>&\u{2028}")).unwrap();
        assert_eq!(back, "</script>&\u{2028}", "the escapes mean the same text");
    }

    #[test]
    fn the_window_is_checked() {
        assert_eq!(window_minutes(None), Ok(DEFAULT_WINDOW_MINUTES));
        assert_eq!(window_minutes(Some("minutes=60")), Ok(60));
        assert_eq!(window_minutes(Some("x=1&minutes=5")), Ok(5));
        let err = window_minutes(Some("minutes=0")).unwrap_err();
        assert!(err.contains("minutes: \"0\" must be a whole number from 1 to 1440"), "{err}");
        assert!(window_minutes(Some("minutes=abc")).is_err());
    }

    #[test]
    fn long_windows_keep_the_worst_lag_of_each_slot() {
        let sample = |lag| ChannelSample {
            from: "410103007".into(),
            to: "411421".into(),
            lag_messages: lag,
            lag_ms: lag as i64 * 100,
            pending: lag,
        };
        let from = 0;
        let now = MAX_POINTS * 1_000;
        // Three rounds in the first one-second slot, one in the last.
        let rounds: Vec<_> = [(0, 1), (300, 7), (900, 2), (now - 1, 0)]
            .into_iter()
            .map(|(at_ms, lag)| Round { at_ms, nodes: vec![], channels: vec![sample(lag)] })
            .collect();
        let json = serde_json::to_string(&series(now, from, &rounds)).unwrap();
        assert!(
            json.contains(
                "\"series\":[{\"from\":\"410103007\",\"to\":\"411421\",\"points\":[[900,7,700],[239999,0,0]]}]"
            ),
            "{json}"
        );
        assert!(json.contains("\"rounds\":4"), "{json}");
    }

    /// `GET path` over plain HTTP/1.1: the status line and the body.
    async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    }

    #[tokio::test]
    async fn serves_the_page_with_its_data_inline_and_the_json_endpoints() {
        let collector = Collector::default();
        collector.replace_for_test(BTreeMap::from([(
            "411421".to_owned(),
            NodeReport {
                endpoint: "https://127.0.0.1:1".into(),
                last_error: "down".into(),
                metrics_target: Some(Err(crate::nodes::MetricsAddressError::Missing)),
                ..Default::default()
            },
        )]));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(collector)).await });

        let (status, page) = get(addr, "/").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(!page.contains(INITIAL_MARKER), "the first data is inlined");
        assert!(page.contains("\"division\":\"411421\",\"name\":\"民权县\""), "{page}");
        for link in ["src=", "href=", "@import", "url("] {
            assert!(!page.contains(link), "nothing is loaded from elsewhere, yet the page has {link}");
        }

        let (status, json) = get(addr, "/api/status").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(json.contains("\"reachable\":false") && json.contains("\"history_kept\":false"), "{json}");
        assert!(json.contains("\"metrics_target\":\"\",\"metrics_error\":\"metrics_address: empty"), "{json}");
        let (status, json) = get(addr, "/api/history?minutes=5").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(json.contains("\"rounds\":0,\"series\":[]"), "{json}");
        let (status, message) = get(addr, "/api/history?minutes=99999").await;
        assert_eq!(status, "HTTP/1.1 400 Bad Request");
        assert!(message.contains("minutes: \"99999\" must be a whole number from 1 to 1440"), "{message}");
    }

    #[test]
    fn channels_come_worst_first_with_names() {
        use ldx_proto::v1 as pb;
        let outbound = |peer: &str, head_seq, acked_seq| pb::OutboundChannel {
            peer: peer.into(),
            head_seq,
            acked_seq,
            pending: head_seq - acked_seq,
            ..Default::default()
        };
        let sender = pb::StatusResponse {
            outbound: vec![outbound("411421", 5, 5), outbound("411723", 9, 2)],
            ..Default::default()
        };
        let collector = Collector::default();
        collector.replace_for_test(BTreeMap::from([(
            "410103007".to_owned(),
            NodeReport { reachable: true, status: Some(sender), ..Default::default() },
        )]));
        let json = serde_json::to_string(&status_doc(&collector)).unwrap();
        let worst = json.find("\"to\":\"411723\"").unwrap();
        let best = json.find("\"to\":\"411421\"").unwrap();
        assert!(worst < best, "{json}");
        assert!(json.contains("\"lag_messages\":7"), "{json}");
        assert!(json.contains("\"name\":\"大学路街道\""), "{json}");
    }
}
