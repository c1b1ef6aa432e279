//! The district operators' dashboard: one self-contained page (HTML, CSS and the script
//! drawing the chart are all inline, so it works on a network without internet access)
//! and the two JSON documents it reads, `GET /api/status` (nodes and channels now) and
//! `GET /api/history?minutes=N` (lag over time, from the gateway's history store).
//!
//! It shows divisions, channels, counts and ages only: nothing about a person ever
//! reaches the gateway, so nothing about one can appear here.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::collector::{self, ChannelView, Collector, NodeReport, Watermarks};
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

async fn page(State(collector): State<Collector>) -> Response {
    let history = match history_json(&collector, DEFAULT_WINDOW_MINUTES).await {
        Ok(json) => json,
        Err(response) => return response,
    };
    let initial = format!("{{\"status\":{},\"history\":{history}}}", status_json(&collector));
    let html = PAGE.replacen(INITIAL_MARKER, &initial, 1);
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], html).into_response()
}

async fn status(State(collector): State<Collector>) -> Response {
    json_response(status_json(&collector))
}

async fn history(State(collector): State<Collector>, RawQuery(query): RawQuery) -> Response {
    let minutes = match window_minutes(query.as_deref()) {
        Ok(minutes) => minutes,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    match history_json(&collector, minutes).await {
        Ok(json) => json_response(json),
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
    let Some(pki_dir) = collector.pki_dir() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "this gateway has no PKI to ask the nodes with\n").into_response();
    };
    let period = period.to_string();
    match crate::assess::gather(pki_dir, &period, ASSESSMENT_TIMEOUT).await {
        Ok((statements, unavailable)) => {
            let mut rollup = crate::assess::rollup(&period, &statements, &crate::assess::Weights::default());
            rollup.unavailable = unavailable;
            json_response(crate::assess::render_json(&rollup))
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

fn json_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body).into_response()
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

/// A JSON string literal. Besides what JSON requires, `<`, `>` and `&` are escaped so the
/// text can sit inside the page's `<script>` element.
pub(crate) fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c < ' ' || matches!(c, '<' | '>' | '&' | '\u{2028}' | '\u{2029}') => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn truncated(error: &str) -> String {
    error.chars().take(MAX_ERROR_CHARS).collect()
}

pub(crate) fn division_name(code: &str) -> &'static str {
    ldx_node::domain::Division::parse("division", code).map_or("", |d| d.name())
}

/// Nodes by division, and channels worst first (messages behind, then age).
fn status_json(collector: &Collector) -> String {
    let reports = collector.snapshot();
    let mut out = format!(
        "{{\"now_ms\":{},\"collect_every_ms\":{},\"history_kept\":{},\"nodes\":[",
        collector::now_ms(),
        collector.every().as_millis(),
        collector.history().is_some()
    );
    for (i, (division, report)) in reports.iter().enumerate() {
        out.push_str(if i == 0 { "" } else { "," });
        node_json(&mut out, division, report);
    }
    out.push_str("],\"channels\":[");
    let mut channels = collector::channels(&reports);
    channels.sort_by(|a, b| {
        (b.lag_messages(), b.oldest_pending_ms)
            .cmp(&(a.lag_messages(), a.oldest_pending_ms))
            .then_with(|| (&a.from, &a.to).cmp(&(&b.from, &b.to)))
    });
    for (i, channel) in channels.iter().enumerate() {
        out.push_str(if i == 0 { "" } else { "," });
        channel_json(&mut out, channel);
    }
    out.push_str("]}");
    out
}

fn node_json(out: &mut String, division: &str, report: &NodeReport) {
    let status = report.status.as_ref();
    let _ = write!(
        out,
        "{{\"division\":{},\"name\":{},\"endpoint\":{},\"reachable\":{},\"last_contact_ms\":{},\"last_error\":{},\
         \"directory_version\":{},\"outbound\":{},\"inbound\":{},\"watermarks\":{},\"watermarks_error\":{}}}",
        quote(division),
        quote(division_name(division)),
        quote(&report.endpoint),
        report.reachable,
        report.last_contact_ms,
        quote(&truncated(&report.last_error)),
        status.map_or(0, |s| s.directory_version),
        status.map_or(0, |s| s.outbound.len()),
        status.map_or(0, |s| s.inbound.len()),
        quote(report.watermarks.label()),
        quote(&match &report.watermarks {
            Watermarks::Invalid(reason) => truncated(reason),
            _ => String::new(),
        }),
    );
}

fn channel_json(out: &mut String, c: &ChannelView) {
    let _ = write!(
        out,
        "{{\"from\":{},\"from_name\":{},\"to\":{},\"to_name\":{},\"head_seq\":{},\"acked_seq\":{},\"applied_seq\":{},\
         \"applied_verified\":{},\"lag_messages\":{},\"lag_ms\":{},\"pending\":{},\"last_contact_ms\":{},\"last_error\":{}}}",
        quote(&c.from),
        quote(division_name(&c.from)),
        quote(&c.to),
        quote(division_name(&c.to)),
        c.head_seq,
        c.acked_seq,
        c.applied_seq.map_or_else(|| "null".to_owned(), |s| s.to_string()),
        c.applied_verified,
        c.lag_messages(),
        c.oldest_pending_ms,
        c.pending,
        c.last_contact_ms,
        quote(&truncated(&c.last_error)),
    );
}

/// The last `minutes` of history, read off the async runtime. A store that cannot be read
/// is the gateway's failure, reported as such.
async fn history_json(collector: &Collector, minutes: i64) -> Result<String, Response> {
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
    Ok(series_json(now, from, &rounds))
}

/// One series per channel, `[at_ms, lag_messages, lag_ms]` points, at most
/// [`MAX_POINTS`] of them: the rounds of one time slot are reduced to the worst lag.
fn series_json(now: i64, from: i64, rounds: &[Round]) -> String {
    let slot_ms = ((now - from) / MAX_POINTS).max(1);
    // Per channel, per slot: the slot's last time, worst lag in messages and in ms.
    type Slots = BTreeMap<i64, (i64, u64, i64)>;
    let mut series: BTreeMap<(&str, &str), Slots> = BTreeMap::new();
    for round in rounds {
        let slot = (round.at_ms - from) / slot_ms;
        for c in &round.channels {
            let point = series.entry((&c.from, &c.to)).or_default().entry(slot).or_insert((round.at_ms, 0, 0));
            point.0 = point.0.max(round.at_ms);
            point.1 = point.1.max(c.lag_messages);
            point.2 = point.2.max(c.lag_ms);
        }
    }
    let mut out =
        format!("{{\"now_ms\":{now},\"from_ms\":{from},\"slot_ms\":{slot_ms},\"rounds\":{},\"series\":[", rounds.len());
    for (i, ((from, to), points)) in series.iter().enumerate() {
        out.push_str(if i == 0 { "" } else { "," });
        let _ = write!(out, "{{\"from\":{},\"to\":{},\"points\":[", quote(from), quote(to));
        for (j, (at, messages, lag_ms)) in points.values().enumerate() {
            let _ = write!(out, "{}[{at},{messages},{lag_ms}]", if j == 0 { "" } else { "," });
        }
        out.push_str("]}");
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::ChannelSample;

    #[test]
    fn strings_are_escaped_for_json_inside_a_script_element() {
        assert_eq!(quote("大学路"), "\"大学路\"");
        assert_eq!(quote("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
        assert_eq!(quote("</script>&"), "\"\\u003c/script\\u003e\\u0026\"");
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
        let json = series_json(now, from, &rounds);
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
            NodeReport { endpoint: "https://127.0.0.1:1".into(), last_error: "down".into(), ..Default::default() },
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
        let json = status_json(&collector);
        let worst = json.find("\"to\":\"411723\"").unwrap();
        let best = json.find("\"to\":\"411421\"").unwrap();
        assert!(worst < best, "{json}");
        assert!(json.contains("\"lag_messages\":7"), "{json}");
        assert!(json.contains("\"name\":\"大学路街道\""), "{json}");
    }
}
