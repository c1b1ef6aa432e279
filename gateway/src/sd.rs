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
}
