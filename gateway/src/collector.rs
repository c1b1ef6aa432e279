//! The gateway's view of replication: every node in the directory is asked for its
//! `Monitor.Status` over mutual TLS on an interval. A node that does not answer is marked
//! unreachable; the lag of a channel is the sender's head against the sequence number the
//! receiver itself reports as applied, taken from the receiver's signed watermarks once
//! they verify against its key in the directory.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ldx_node::grpc::monitor::verify_watermarks;
use ldx_proto::directory::Directory;
use ldx_proto::identity::PublicKey;
use ldx_proto::v1 as pb;
use ldx_proto::v1::monitor_client::MonitorClient;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::sync::watch;

use crate::directory::DirectoryService;
use crate::history::{ChannelSample, History, NodeSample, Round};
use crate::nodes::{self, MetricsAddressError, Nodes};

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
    /// Where Prometheus scrapes the node, from the metrics address in its last status
    /// (`None` before its first answer).
    pub metrics_target: Option<Result<String, MetricsAddressError>>,
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
    /// The directory and the channels the nodes are asked through, shared with the
    /// assessment the dashboard gathers (`None` for a test collector).
    nodes: Option<(DirectoryService, Arc<Nodes>)>,
}

/// UTC milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Collector {
    /// Starts asking every node of the directory `service` serves, through `nodes`, every
    /// `every`, until `stop` turns true, recording each pass in `history` when given.
    pub fn start(
        service: DirectoryService,
        nodes: Arc<Nodes>,
        every: Duration,
        history: Option<Arc<History>>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let collector = Self { reports: Arc::default(), history, every, nodes: Some((service, nodes)) };
        tokio::spawn(collector.clone().run(stop));
        collector
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

    /// The directory now and the channels to its nodes (`None` for a test collector).
    pub fn nodes(&self) -> Option<(Option<Arc<Directory>>, &Arc<Nodes>)> {
        self.nodes.as_ref().map(|(service, nodes)| (service.current(), nodes))
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

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let Some((service, nodes)) = self.nodes.clone() else { return };
        let mut ticker = tokio::time::interval(self.every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let Some(directory) = service.current() else { continue };
            let mut asks = tokio::task::JoinSet::new();
            for entry in directory.entries() {
                let (division, endpoint) = (entry.division.clone(), entry.endpoint.clone());
                let channel = nodes.channel(&division, &endpoint);
                let key = directory.signing_key(&entry.division);
                asks.spawn(async move {
                    let answer = match channel {
                        Ok(channel) => tokio::time::timeout(ASK_TIMEOUT, ask(channel))
                            .await
                            .unwrap_or_else(|_| Err(format!("no answer within {ASK_TIMEOUT:?}"))),
                        Err(error) => Err(error),
                    };
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
                update(report, &division, answer);
                seen.push(division);
            }
            self.reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|d, _| seen.contains(d));
            nodes.retain(|d| directory.get(d).is_some());
            self.record().await;
        }
    }
}

/// Puts what node `division` answered into its report. Only changes are logged: a node
/// that stays down, or keeps giving no usable metrics address, is logged once, not every
/// round.
fn update(report: &mut NodeReport, division: &str, answer: Result<(pb::StatusResponse, Watermarks), String>) {
    match answer {
        Ok((status, watermarks)) => {
            if let Watermarks::Invalid(reason) = &watermarks
                && report.watermarks != watermarks
            {
                tracing::warn!(node = %division, reason = %reason, "watermarks refused");
            }
            let target = nodes::metrics_target(&status.metrics_address, &report.endpoint);
            if let Err(e) = &target
                && report.metrics_target.as_ref() != Some(&target)
            {
                tracing::warn!(node = %division, error = %e, "node left out of service discovery");
            }
            report.metrics_target = Some(target);
            report.reachable = true;
            report.last_contact_ms = now_ms();
            report.last_error.clear();
            report.status = Some(status);
            report.watermarks = watermarks;
        }
        Err(error) => {
            if report.last_contact_ms == 0 && report.last_error.is_empty() {
                // A node that never answered yet is usually still starting (or still
                // waiting for its directory): the first failure is news, not a warning.
                tracing::info!(node = %division, error = %error, "node not answering yet");
            } else if report.reachable || report.last_error != error {
                tracing::warn!(node = %division, error = %error, "node unreachable");
            }
            report.reachable = false;
            report.last_error = error;
        }
    }
}

async fn ask(channel: tonic::transport::Channel) -> Result<pb::StatusResponse, String> {
    let status = MonitorClient::new(channel)
        .status(pb::StatusRequest {})
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    Ok(status.into_inner())
}

pub const NODE_UP: &str = "ldx_node_up";
pub const NODE_LAST_CONTACT: &str = "ldx_node_last_contact_timestamp_seconds";
pub const NODE_WATERMARKS_VERIFIED: &str = "ldx_node_watermarks_verified";
pub const CHANNEL_PENDING: &str = "ldx_channel_pending";
pub const CHANNEL_OLDEST_PENDING: &str = "ldx_channel_oldest_pending_seconds";
pub const CHANNEL_LAG: &str = "ldx_channel_lag_messages";

/// The federation's replication in Prometheus text format, as of `reports`. Each call
/// renders through a recorder of its own, so a node or channel gone from the reports is
/// gone from the text too.
pub fn render(reports: &BTreeMap<String, NodeReport>) -> String {
    use metrics::{describe_gauge, gauge};
    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || {
        describe_gauge!(NODE_UP, "1 when the node answered the gateway's last status request.");
        describe_gauge!(NODE_LAST_CONTACT, "When the node last answered (0: never).");
        describe_gauge!(
            NODE_WATERMARKS_VERIFIED,
            "1 when the node's last watermarks verified against its signing key in the directory."
        );
        describe_gauge!(CHANNEL_PENDING, "Envelopes the sender holds unacknowledged, as the sender reports.");
        describe_gauge!(CHANNEL_OLDEST_PENDING, "Age of the sender's oldest unacknowledged envelope.");
        describe_gauge!(
            CHANNEL_LAG,
            "Sender's head seq minus the seq the receiver reports as applied (both last reports)."
        );
        for (division, r) in reports {
            let node = division.clone();
            gauge!(NODE_UP, "node" => node.clone()).set(f64::from(u8::from(r.reachable)));
            gauge!(NODE_LAST_CONTACT, "node" => node.clone()).set(r.last_contact_ms as f64 / 1000.0);
            let verified = matches!(r.watermarks, Watermarks::Verified(_));
            gauge!(NODE_WATERMARKS_VERIFIED, "node" => node).set(f64::from(u8::from(verified)));
        }
        for c in channels(reports) {
            let (node, peer) = (c.from.clone(), c.to.clone());
            gauge!(CHANNEL_PENDING, "node" => node.clone(), "peer" => peer.clone()).set(c.pending as f64);
            gauge!(CHANNEL_OLDEST_PENDING, "node" => node.clone(), "peer" => peer.clone())
                .set(c.oldest_pending_ms as f64 / 1000.0);
            if c.applied_seq.is_some() {
                gauge!(CHANNEL_LAG, "from" => node, "to" => peer).set(c.lag_messages() as f64);
            }
        }
    });
    recorder.handle().render()
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

    /// Log lines written while `f` runs on this thread.
    fn logs_of(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_node_without_a_usable_metrics_address_is_left_out_and_logged_once() {
        let status = |address: &str| pb::StatusResponse { metrics_address: address.into(), ..Default::default() };
        let mut report = NodeReport { endpoint: "https://10.0.0.7:7302".into(), ..Default::default() };
        let logs = logs_of(|| {
            for _ in 0..3 {
                update(&mut report, "411421", Ok((status("not-an-address"), Watermarks::Unsigned)));
            }
            update(&mut report, "411421", Err("Unavailable: connection refused".into()));
            update(&mut report, "411421", Ok((status("not-an-address"), Watermarks::Unsigned)));
            assert!(matches!(report.metrics_target, Some(Err(MetricsAddressError::Malformed { .. }))));
            for _ in 0..3 {
                update(&mut report, "411421", Ok((status(""), Watermarks::Unsigned)));
            }
            assert_eq!(report.metrics_target, Some(Err(MetricsAddressError::Missing)));
        });
        let left_out: Vec<_> = logs.lines().filter(|l| l.contains("node left out of service discovery")).collect();
        assert_eq!(left_out.len(), 2, "once per cause, not per round:\n{logs}");
        assert!(left_out[0].contains("metrics_address: \"not-an-address\" must be an IP address"), "{logs}");
        assert!(left_out[1].contains("metrics_address: empty"), "{logs}");
        assert!(report.reachable, "a node without a metrics address is still collected");

        update(&mut report, "411421", Ok((status("0.0.0.0:9301"), Watermarks::Unsigned)));
        assert_eq!(report.metrics_target, Some(Ok("10.0.0.7:9301".to_owned())));
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
