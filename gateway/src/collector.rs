//! The gateway's view of replication: every node in the directory is asked for its
//! `Monitor.Status` over mutual TLS on an interval. A node that does not answer is marked
//! unreachable; the lag of a channel is the sender's head against the sequence number the
//! receiver itself reports as applied, taken from the receiver's signed watermarks once
//! they verify against its key in the directory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ldx_node::grpc::monitor::verify_watermarks;
use ldx_proto::identity::PublicKey;
use ldx_proto::v1 as pb;
use ldx_proto::v1::monitor_client::MonitorClient;
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::history::{ChannelSample, History, NodeSample, Round};
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
    /// What became of the watermarks signed in that status.
    pub watermarks: Watermarks,
}

/// The gateway's verdict on a node's signed watermarks.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Watermarks {
    /// The status carried none (a node without a signing key, or one that predates them);
    /// its unsigned inbound figures stand in, shown as unverified.
    #[default]
    Unsigned,
    /// Signed by the node's key in the directory: the lag into this node rests on these.
    Verified(pb::Watermarks),
    /// Present but refused, for this reason: nothing this node says it applied is used.
    Invalid(String),
}

impl Watermarks {
    /// Checks the watermarks of `status` against `key`, the directory's signing key of
    /// `division`.
    pub fn check(division: &str, status: &pb::StatusResponse, key: Option<&PublicKey>) -> Self {
        match (&status.watermarks, key) {
            (None, _) => Self::Unsigned,
            (Some(_), None) => Self::Invalid(format!("the directory has no signing key of {division}")),
            (Some(signed), Some(key)) => match verify_watermarks(signed, division, key) {
                Ok(watermarks) => Self::Verified(watermarks),
                Err(e) => Self::Invalid(e.to_string()),
            },
        }
    }

    /// `verified`, `unsigned` or `invalid`, as the dashboard and logs name them.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unsigned => "unsigned",
            Self::Verified(_) => "verified",
            Self::Invalid(_) => "invalid",
        }
    }
}

/// The collector's latest reports, shared by the `/metrics` and dashboard handlers, and the
/// history it writes a round to after every pass.
#[derive(Debug, Clone, Default)]
pub struct Collector {
    reports: Arc<Mutex<BTreeMap<String, NodeReport>>>,
    history: Option<Arc<History>>,
    every: Duration,
    /// The PKI the nodes are asked with, for the assessment the dashboard gathers.
    pki_dir: Option<std::path::PathBuf>,
}

/// UTC milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Collector {
    /// Starts asking every node of the directory `service` serves, every `every`, until
    /// `stop` turns true, recording each pass in `history` when given. The gateway's client
    /// certificate is issued on first use.
    pub fn start(
        service: DirectoryService,
        pki_dir: &Path,
        every: Duration,
        history: Option<Arc<History>>,
        stop: watch::Receiver<bool>,
    ) -> Result<Self, PkiError> {
        let tls = GatewayTls::load(pki_dir)?;
        let collector = Self { reports: Arc::default(), history, every, pki_dir: Some(pki_dir.to_owned()) };
        tokio::spawn(collector.clone().run(service, tls, every, stop));
        Ok(collector)
    }

    /// Every node's last report, by division.
    pub fn snapshot(&self) -> BTreeMap<String, NodeReport> {
        self.reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Puts `reports` in place of what was collected, for tests of what is built on them.
    #[cfg(test)]
    pub(crate) fn replace_for_test(&self, reports: BTreeMap<String, NodeReport>) {
        *self.reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = reports;
    }

    /// The history store the rounds go to, if the gateway keeps one.
    pub fn history(&self) -> Option<&Arc<History>> {
        self.history.as_ref()
    }

    /// How often the nodes are asked.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// The PKI directory the collector asks the nodes with (`None` for a test collector).
    pub fn pki_dir(&self) -> Option<&Path> {
        self.pki_dir.as_deref()
    }

    /// Writes the current snapshot as one history round. A failing store costs the chart
    /// a point, never the collection: the failure is logged and the next round tries again.
    async fn record(&self) {
        let Some(history) = self.history.clone() else { return };
        let round = round_of(now_ms(), &self.snapshot());
        match tokio::task::spawn_blocking(move || history.append(&round)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot record the round in the history"),
            Err(e) => tracing::warn!(error = %e, "history task failed"),
        }
    }

    async fn run(self, service: DirectoryService, tls: GatewayTls, every: Duration, mut stop: watch::Receiver<bool>) {
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
                let tls = tls.for_node(&entry.division);
                let (division, endpoint) = (entry.division.clone(), entry.endpoint.clone());
                let key = directory.signing_key(&entry.division);
                asks.spawn(async move {
                    let answer = tokio::time::timeout(ASK_TIMEOUT, ask(&endpoint, tls)).await;
                    let answer = answer.unwrap_or_else(|_| Err(format!("no answer within {ASK_TIMEOUT:?}")));
                    let answer = answer.map(|status| {
                        let watermarks = Watermarks::check(&division, &status, key.as_ref());
                        (status, watermarks)
                    });
                    (division, endpoint, answer)
                });
            }
            let mut seen = Vec::new();
            while let Some(Ok((division, endpoint, answer))) = asks.join_next().await {
                let mut reports = self.reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let report = reports.entry(division.clone()).or_default();
                report.endpoint = endpoint;
                match answer {
                    Ok((status, watermarks)) => {
                        if let Watermarks::Invalid(reason) = &watermarks
                            && report.watermarks != watermarks
                        {
                            tracing::warn!(node = %division, reason = %reason, "watermarks refused");
                        }
                        report.reachable = true;
                        report.last_contact_ms = now_ms();
                        report.last_error.clear();
                        report.status = Some(status);
                        report.watermarks = watermarks;
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
            self.record().await;
        }
    }
}

/// The gateway's side of mutual TLS towards nodes: the federation CA and the gateway's
/// client certificate (issued on first use).
#[derive(Debug, Clone)]
pub struct GatewayTls {
    ca: Certificate,
    identity: Identity,
}

impl GatewayTls {
    pub fn load(pki_dir: &Path) -> Result<Self, PkiError> {
        let (cert, key) = pki::gateway_identity(pki_dir)?;
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| PkiError::Read { path: path.display().to_string(), source })
        };
        let ca = Certificate::from_pem(read(&pki_dir.join(pki::CA_CERT))?);
        let identity = Identity::from_pem(read(&cert)?, read(&key)?);
        Ok(Self { ca, identity })
    }

    /// The client config for node `division`: its certificate must name that division.
    pub fn for_node(&self, division: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(ldx_proto::identity::division_dns_name(division))
    }
}

/// A mutual-TLS channel to a node's peer API, or why there is none, in words fit for an
/// operator (the gateway shows them per node).
pub async fn connect_node(endpoint: &str, tls: ClientTlsConfig) -> Result<Channel, String> {
    Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| format!("endpoint {endpoint:?}: {e}"))?
        .tls_config(tls)
        .map_err(|e| format!("TLS: {e}"))?
        .connect_timeout(ASK_TIMEOUT)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {endpoint}: {e}"))
}

async fn ask(endpoint: &str, tls: ClientTlsConfig) -> Result<pb::StatusResponse, String> {
    let channel = connect_node(endpoint, tls).await?;
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
    let verified: Vec<_> = reports
        .iter()
        .map(|(d, r)| (format!("node=\"{d}\""), f64::from(u8::from(matches!(r.watermarks, Watermarks::Verified(_))))))
        .collect();
    family(
        "ldx_node_watermarks_verified",
        "gauge",
        "1 when the node's last watermarks verified against its signing key in the directory.",
        &verified,
    );

    let channels = channels(reports);
    let labels = |c: &ChannelView| format!("node=\"{}\",peer=\"{}\"", c.from, c.to);
    let pending: Vec<_> = channels.iter().map(|c| (labels(c), c.pending as f64)).collect();
    let age: Vec<_> = channels.iter().map(|c| (labels(c), c.oldest_pending_ms as f64 / 1000.0)).collect();
    let lag: Vec<_> = channels
        .iter()
        .filter(|c| c.applied_seq.is_some())
        .map(|c| (format!("from=\"{}\",to=\"{}\"", c.from, c.to), c.lag_messages() as f64))
        .collect();
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

/// One channel as the gateway sees it: the sender's figures with the receiver's own applied
/// seq beside them.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelView {
    pub from: String,
    pub to: String,
    pub head_seq: u64,
    pub acked_seq: u64,
    /// The seq the receiver last reported as applied; `None` while the gateway has no
    /// report from it it can use.
    pub applied_seq: Option<u64>,
    /// Whether `applied_seq` comes from watermarks the receiver signed.
    pub applied_verified: bool,
    pub pending: u64,
    /// Age of the sender's oldest unacknowledged envelope (0 when none).
    pub oldest_pending_ms: i64,
    /// When the sender last exchanged with the receiver (0: never).
    pub last_contact_ms: i64,
    pub last_error: String,
}

impl ChannelView {
    /// Messages behind: the sender's head against the receiver's applied seq, or against
    /// what the sender saw acknowledged while the receiver has not reported.
    pub fn lag_messages(&self) -> u64 {
        self.head_seq.saturating_sub(self.applied_seq.unwrap_or(self.acked_seq))
    }
}

/// Every channel some sender reports, with the receiver's applied seq where known. The two
/// figures come from each side's last report, so a receiver that stopped answering shows
/// the lag growing as its senders' heads move on.
pub fn channels(reports: &BTreeMap<String, NodeReport>) -> Vec<ChannelView> {
    // Applied seq per (sender, receiver) as each receiver reports it, and whether signed.
    let mut applied: BTreeMap<(&str, &str), (u64, bool)> = BTreeMap::new();
    for (division, report) in reports {
        let (figures, verified): (Vec<(&str, u64)>, bool) = match &report.watermarks {
            Watermarks::Verified(w) => (w.channels.iter().map(|c| (c.peer.as_str(), c.applied_seq)).collect(), true),
            Watermarks::Unsigned => {
                let inbound = report.status.iter().flat_map(|s| &s.inbound);
                (inbound.map(|c| (c.peer.as_str(), c.applied_seq)).collect(), false)
            }
            Watermarks::Invalid(_) => (Vec::new(), false),
        };
        for (peer, seq) in figures {
            let entry = applied.entry((peer, division.as_str())).or_insert((0, verified));
            entry.0 += seq;
        }
    }
    let mut views = Vec::new();
    for (division, report) in reports {
        for c in report.status.iter().flat_map(|s| &s.outbound) {
            views.push(ChannelView {
                from: division.clone(),
                to: c.peer.clone(),
                head_seq: c.head_seq,
                acked_seq: c.acked_seq,
                applied_seq: applied.get(&(division.as_str(), c.peer.as_str())).map(|a| a.0),
                applied_verified: applied.get(&(division.as_str(), c.peer.as_str())).is_some_and(|a| a.1),
                pending: c.pending,
                oldest_pending_ms: c.oldest_pending_age_ms,
                last_contact_ms: c.last_contact_ms,
                last_error: c.last_error.clone(),
            });
        }
    }
    views
}

/// The history record of one collection pass.
pub fn round_of(at_ms: i64, reports: &BTreeMap<String, NodeReport>) -> Round {
    Round {
        at_ms,
        nodes: reports
            .iter()
            .map(|(division, r)| NodeSample { division: division.clone(), reachable: r.reachable })
            .collect(),
        channels: channels(reports)
            .into_iter()
            .map(|c| ChannelSample {
                lag_messages: c.lag_messages(),
                lag_ms: c.oldest_pending_ms,
                pending: c.pending,
                from: c.from,
                to: c.to,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 410103007's status: head 10 towards 411421, 4 of them acknowledged.
    fn sender_status() -> pb::StatusResponse {
        pb::StatusResponse {
            outbound: vec![pb::OutboundChannel {
                peer: "411421".into(),
                head_seq: 10,
                acked_seq: 4,
                pending: 6,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn lag_compares_the_senders_head_with_the_receivers_applied_seq() {
        let sender = sender_status();
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

    #[test]
    fn lag_rests_on_verified_watermarks_and_never_on_refused_ones() {
        use ldx_node::grpc::monitor::sign_watermarks;
        use ldx_proto::identity::SignKey;

        let key = SignKey::generate();
        let signed_inbound = vec![pb::InboundChannel {
            peer: "410103007".into(),
            to: "411421".into(),
            applied_seq: 7,
            ..Default::default()
        }];
        // The unsigned figures claim more than the node signed: the signed ones count.
        let mut claimed = signed_inbound.clone();
        claimed[0].applied_seq = 9;
        let receiver = pb::StatusResponse {
            division: "411421".into(),
            inbound: claimed,
            watermarks: Some(sign_watermarks("411421", 1, &signed_inbound, &key)),
            ..Default::default()
        };
        let sender = sender_status();
        let reports = |watermarks: Watermarks| {
            BTreeMap::from([
                (
                    "410103007".to_owned(),
                    NodeReport { reachable: true, status: Some(sender.clone()), ..Default::default() },
                ),
                (
                    "411421".to_owned(),
                    NodeReport { reachable: true, status: Some(receiver.clone()), watermarks, ..Default::default() },
                ),
            ])
        };

        let verified = Watermarks::check("411421", &receiver, Some(&key.public()));
        assert_eq!(verified.label(), "verified");
        let channel = channels(&reports(verified.clone())).remove(0);
        assert_eq!((channel.applied_seq, channel.applied_verified, channel.lag_messages()), (Some(7), true, 3));
        let text = render(&reports(verified));
        assert!(text.contains("ldx_node_watermarks_verified{node=\"411421\"} 1\n"), "{text}");
        assert!(text.contains("ldx_channel_lag_messages{from=\"410103007\",to=\"411421\"} 3\n"), "{text}");

        let forged = Watermarks::check("411421", &receiver, Some(&SignKey::generate().public()));
        assert!(matches!(&forged, Watermarks::Invalid(reason) if reason.contains("does not verify")), "{forged:?}");
        let channel = channels(&reports(forged.clone())).remove(0);
        assert_eq!((channel.applied_seq, channel.lag_messages()), (None, 6), "the sender's acked seq stands in");
        assert!(render(&reports(forged)).contains("ldx_node_watermarks_verified{node=\"411421\"} 0\n"));

        let impostor = Watermarks::check("411723", &receiver, Some(&key.public()));
        assert!(matches!(&impostor, Watermarks::Invalid(reason) if reason.contains("411723")), "{impostor:?}");
        assert_eq!(Watermarks::check("411421", &receiver, None).label(), "invalid");
        let unsigned = pb::StatusResponse { watermarks: None, ..receiver.clone() };
        assert_eq!(Watermarks::check("411421", &unsigned, Some(&key.public())), Watermarks::Unsigned);
        let channel = channels(&reports(Watermarks::Unsigned)).remove(0);
        assert_eq!((channel.applied_seq, channel.applied_verified), (Some(9), false), "unsigned figures, marked so");
    }
}
