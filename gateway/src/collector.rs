//! The gateway's view of replication: every node in the directory is asked for its
//! `Monitor.Status` over mutual TLS on an interval. A node that does not answer is marked
//! unreachable; the lag of a channel is the sender's head against the sequence number the
//! receiver itself reports as applied.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ldx_proto::v1 as pb;
use ldx_proto::v1::monitor_client::MonitorClient;
use tokio::sync::watch;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::pki::{self, PkiError};
use crate::server::DirectoryService;

/// How long one node may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// What the gateway last learned of one node.
#[derive(Debug, Clone, Default)]
pub struct NodeReport {
    pub endpoint: String,
    pub reachable: bool,
    /// UTC milliseconds of the last answer (0: never).
    pub last_contact_ms: i64,
    pub last_error: String,
    /// The last status the node gave.
    pub status: Option<pb::StatusResponse>,
}

#[derive(Debug, Clone, Default)]
pub struct Collector {
    reports: Arc<Mutex<BTreeMap<String, NodeReport>>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Collector {
    /// Starts asking every node of the directory `service` serves, every `every`, until
    /// `stop` turns true. The gateway's client certificate is issued on first use.
    pub fn start(
        service: DirectoryService,
        pki_dir: &Path,
        every: Duration,
        stop: watch::Receiver<bool>,
    ) -> Result<Self, PkiError> {
        let (cert, key) = pki::gateway_identity(pki_dir)?;
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| PkiError::Read { path: path.display().to_string(), source })
        };
        let ca = Certificate::from_pem(read(&pki_dir.join(pki::CA_CERT))?);
        let identity = Identity::from_pem(read(&cert)?, read(&key)?);
        let collector = Self::default();
        tokio::spawn(collector.clone().run(service, ca, identity, every, stop));
        Ok(collector)
    }

    /// Every node's last report, by division.
    pub fn snapshot(&self) -> BTreeMap<String, NodeReport> {
        self.reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    async fn run(
        self,
        service: DirectoryService,
        ca: Certificate,
        identity: Identity,
        every: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let Some(directory) = service.current() else { continue };
            let mut asks = tokio::task::JoinSet::new();
            for entry in directory.entries() {
                let tls = ClientTlsConfig::new()
                    .ca_certificate(ca.clone())
                    .identity(identity.clone())
                    .domain_name(ldx_proto::identity::division_dns_name(&entry.division));
                let (division, endpoint) = (entry.division.clone(), entry.endpoint.clone());
                asks.spawn(async move {
                    let answer = tokio::time::timeout(ASK_TIMEOUT, ask(&endpoint, tls)).await;
                    let answer = answer.unwrap_or_else(|_| Err(format!("no answer within {ASK_TIMEOUT:?}")));
                    (division, endpoint, answer)
                });
            }
            let mut seen = Vec::new();
            while let Some(Ok((division, endpoint, answer))) = asks.join_next().await {
                let mut reports = self.reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let report = reports.entry(division.clone()).or_default();
                report.endpoint = endpoint;
                match answer {
                    Ok(status) => {
                        report.reachable = true;
                        report.last_contact_ms = now_ms();
                        report.last_error.clear();
                        report.status = Some(status);
                    }
                    Err(error) => {
                        if report.reachable || report.last_error != error {
                            tracing::warn!(node = %division, error = %error, "node unreachable");
                        }
                        report.reachable = false;
                        report.last_error = error;
                    }
                }
                seen.push(division);
            }
            self.reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|d, _| seen.contains(d));
        }
    }
}

async fn ask(endpoint: &str, tls: ClientTlsConfig) -> Result<pb::StatusResponse, String> {
    let channel = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| format!("endpoint {endpoint:?}: {e}"))?
        .tls_config(tls)
        .map_err(|e| format!("TLS: {e}"))?
        .connect_timeout(ASK_TIMEOUT)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
    let status = MonitorClient::new(channel)
        .status(pb::StatusRequest {})
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    Ok(status.into_inner())
}

/// The federation's replication in Prometheus text format 0.0.4.
pub fn render(reports: &BTreeMap<String, NodeReport>) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    let up: Vec<_> = reports.iter().map(|(d, r)| (format!("node=\"{d}\""), f64::from(u8::from(r.reachable)))).collect();
    family("ldx_node_up", "gauge", "1 when the node answered the gateway's last status request.", &up);
    let contact: Vec<_> =
        reports.iter().map(|(d, r)| (format!("node=\"{d}\""), r.last_contact_ms as f64 / 1000.0)).collect();
    family("ldx_node_last_contact_timestamp_seconds", "gauge", "When the node last answered (0: never).", &contact);

    // Applied seq per (sender, receiver) as each receiver reports it.
    let mut applied: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for (division, report) in reports {
        for c in report.status.iter().flat_map(|s| &s.inbound) {
            *applied.entry((c.peer.as_str(), division.as_str())).or_default() += c.applied_seq;
        }
    }
    let mut pending = Vec::new();
    let mut age = Vec::new();
    let mut lag = Vec::new();
    for (division, report) in reports {
        for c in report.status.iter().flat_map(|s| &s.outbound) {
            let labels = format!("node=\"{division}\",peer=\"{}\"", c.peer);
            pending.push((labels.clone(), c.pending as f64));
            age.push((labels, c.oldest_pending_age_ms as f64 / 1000.0));
            if let Some(&seq) = applied.get(&(division.as_str(), c.peer.as_str())) {
                lag.push((format!("from=\"{division}\",to=\"{}\"", c.peer), c.head_seq.saturating_sub(seq) as f64));
            }
        }
    }
    family(
        "ldx_channel_pending",
        "gauge",
        "Envelopes the sender holds unacknowledged, as the sender reports.",
        &pending,
    );
    family("ldx_channel_oldest_pending_seconds", "gauge", "Age of the sender's oldest unacknowledged envelope.", &age);
    family(
        "ldx_channel_lag_messages",
        "gauge",
        "Sender's head seq minus the seq the receiver reports as applied (both last reports).",
        &lag,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_compares_the_senders_head_with_the_receivers_applied_seq() {
        let sender = pb::StatusResponse {
            outbound: vec![pb::OutboundChannel {
                peer: "411421".into(),
                head_seq: 10,
                acked_seq: 4,
                pending: 6,
                ..Default::default()
            }],
            ..Default::default()
        };
        let receiver = pb::StatusResponse {
            inbound: vec![pb::InboundChannel {
                peer: "410103007".into(),
                to: "411421".into(),
                applied_seq: 7,
                ..Default::default()
            }],
            ..Default::default()
        };
        let reports = BTreeMap::from([
            ("410103007".to_owned(), NodeReport { reachable: true, status: Some(sender), ..Default::default() }),
            ("411421".to_owned(), NodeReport { reachable: false, status: Some(receiver), ..Default::default() }),
        ]);
        let text = render(&reports);
        assert!(text.contains("ldx_channel_lag_messages{from=\"410103007\",to=\"411421\"} 3\n"), "{text}");
        assert!(text.contains("ldx_channel_pending{node=\"410103007\",peer=\"411421\"} 6\n"));
        assert!(text.contains("ldx_node_up{node=\"411421\"} 0\n"));
        assert!(text.contains("ldx_node_up{node=\"410103007\"} 1\n"));
    }
}
