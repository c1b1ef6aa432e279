//! Prometheus HTTP service discovery, `GET /api/sd` in the `http_sd_configs` format: one
//! target group per node of the directory whose metrics address the collector learned
//! from its Status, labelled with the division's code, its Chinese name and its role. A
//! province-wide Prometheus pointed here follows the directory without anyone editing
//! scrape files.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;

use crate::collector::{Collector, NodeReport};
use crate::directory::division_name;

/// One entry of the discovery document: where to scrape and what to label it with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: Labels,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Labels {
    pub division: String,
    /// The division's Chinese name from the division table.
    pub name: String,
    pub role: Role,
}

/// What a node is in the federation, told by the length of its division code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A destination street office (9 digits).
    StreetOffice,
    /// An origin county (6 digits).
    County,
}

impl Role {
    /// `None` for a code of neither length (the directory admits none).
    pub fn of(division: &str) -> Option<Self> {
        match division.len() {
            9 => Some(Self::StreetOffice),
            6 => Some(Self::County),
            _ => None,
        }
    }
}

/// The discovery document of `reports`, by division. Nodes without a usable metrics
/// address are left out (the collector logs why, once).
pub fn targets(reports: &BTreeMap<String, NodeReport>) -> Vec<TargetGroup> {
    reports
        .iter()
        .filter_map(|(division, report)| {
            let target = report.metrics_target.as_ref()?.as_ref().ok()?;
            Some(TargetGroup {
                targets: vec![target.clone()],
                labels: Labels {
                    division: division.clone(),
                    name: division_name(division).to_owned(),
                    role: Role::of(division)?,
                },
            })
        })
        .collect()
}

/// The `/api/sd` route over the collector's latest reports.
pub fn router(collector: Collector) -> axum::Router {
    axum::Router::new().route("/api/sd", get(sd)).with_state(collector)
}

async fn sd(State(collector): State<Collector>) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(targets(&collector.snapshot())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::MetricsAddressError;

    fn report(target: Option<Result<&str, MetricsAddressError>>) -> NodeReport {
        NodeReport { metrics_target: target.map(|t| t.map(str::to_owned)), ..Default::default() }
    }

    #[test]
    fn one_labelled_group_per_node_with_a_metrics_address() {
        let reports = BTreeMap::from([
            ("410103007".to_owned(), report(Some(Ok("10.0.0.7:9301")))),
            ("411421".to_owned(), report(Some(Ok("10.0.0.8:9301")))),
            ("411423".to_owned(), report(Some(Err(MetricsAddressError::Missing)))),
            ("411424".to_owned(), report(None)),
        ]);
        let json = serde_json::to_string(&targets(&reports)).unwrap();
        assert_eq!(
            json,
            r#"[{"targets":["10.0.0.7:9301"],"labels":{"division":"410103007","name":"大学路街道","role":"street-office"}},{"targets":["10.0.0.8:9301"],"labels":{"division":"411421","name":"民权县","role":"county"}}]"#
        );
        assert_eq!(serde_json::to_string(&targets(&BTreeMap::new())).unwrap(), "[]");
    }

    /// `GET path` over plain HTTP/1.1: the head and the body.
    async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), body.to_owned())
    }

    /// A gateway on port 0 with `pki`'s directory, its HTTP side on port 0 too.
    async fn gateway(pki: &std::path::Path) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        let options = crate::server::MetricsOptions {
            listener: http,
            collect_every: std::time::Duration::from_millis(50),
            history: None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(crate::server::run_with_metrics(
            pki.to_owned(),
            listener,
            Some(options),
            async {
                let _ = stopped.await;
            },
            move |_| {
                let _ = ready_tx.send(());
                Ok(())
            },
        ));
        ready_rx.await.unwrap();
        (http_addr, stop)
    }

    #[tokio::test]
    async fn an_empty_directory_gives_an_empty_list() {
        let temp = tempfile::tempdir().unwrap();
        crate::pki::init(temp.path()).unwrap();
        let (addr, _stop) = gateway(temp.path()).await;
        let (head, body) = get(addr, "/api/sd").await;
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
        assert_eq!(body, "[]");
    }

    #[tokio::test]
    async fn a_node_that_never_answered_is_not_listed() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        crate::pki::init(dir).unwrap();
        let node = crate::pki::issue(dir, "411421").unwrap();
        // Nothing listens there: the node is in the directory but gives no status.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        crate::directory::add(dir, "411421", &format!("https://{closed}"), &node.cert_path, &node.signing_pub_path)
            .unwrap();
        let (addr, _stop) = gateway(dir).await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        // Once the collector has tried the node, the status page shows it down.
        loop {
            let (_, status) = get(addr, "/api/status").await;
            if status.contains("\"reachable\":false") && !status.contains("\"last_error\":\"\"") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the collector never tried the node: {status}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(get(addr, "/api/sd").await.1, "[]");
    }
}
