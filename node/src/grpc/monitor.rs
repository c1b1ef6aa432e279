//! `ldx.v1.Monitor`: exact replication figures of this node's channels, and its message log.
//! The inbound figures (watermarks) come signed too, so the lag the gateway shows rests on
//! what each receiver vouches for, not on what a collector says it heard.

use std::sync::Arc;

use ldx_proto::identity::{PublicKey, SignKey};
use ldx_proto::v1 as pb;
use ldx_proto::v1::monitor_server;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::directory::DirectoryWatch;
use crate::exchange::{Stats, now_ms};
use crate::registry::Registry;

/// Default and largest page of `ListLog`.
const LOG_PAGE_DEFAULT: u32 = 1_000;
const LOG_PAGE_MAX: u32 = 10_000;

/// Signing domain of watermarks: a signature made for them is never valid for anything
/// else, and the reverse.
pub const WATERMARKS_DOMAIN: &str = "ldx.v1.watermarks";

/// Why a node's signed watermarks were not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatermarkError {
    #[error("signature: does not verify against the directory's signing key of {division}")]
    Signature { division: String },
    #[error("watermarks: cannot decode: {0}")]
    Decode(String),
    #[error("watermarks.division: {found:?} signed them, the status is from {expected:?}")]
    WrongDivision { expected: String, found: String },
}

/// Signs `inbound` as `division`'s watermarks at `at_ms`.
pub fn sign_watermarks(
    division: &str,
    at_ms: i64,
    inbound: &[pb::InboundChannel],
    key: &SignKey,
) -> pb::SignedWatermarks {
    let watermarks = pb::Watermarks {
        division: division.to_owned(),
        at_ms,
        channels: inbound
            .iter()
            .map(|c| pb::Watermark {
                peer: c.peer.clone(),
                to: c.to.clone(),
                applied_seq: c.applied_seq,
                last_applied_ms: c.last_applied_ms,
            })
            .collect(),
    }
    .encode_to_vec();
    let signature = key.sign(WATERMARKS_DOMAIN, &watermarks);
    pb::SignedWatermarks { watermarks, signature }
}

/// The watermarks in `signed`, if `key` signed them and they are `division`'s own.
pub fn verify_watermarks(
    signed: &pb::SignedWatermarks,
    division: &str,
    key: &PublicKey,
) -> Result<pb::Watermarks, WatermarkError> {
    key.verify(WATERMARKS_DOMAIN, &signed.watermarks, &signed.signature)
        .map_err(|_| WatermarkError::Signature { division: division.to_owned() })?;
    let watermarks =
        pb::Watermarks::decode(signed.watermarks.as_slice()).map_err(|e| WatermarkError::Decode(e.to_string()))?;
    if watermarks.division != division {
        return Err(WatermarkError::WrongDivision { expected: division.to_owned(), found: watermarks.division });
    }
    Ok(watermarks)
}

#[derive(Debug, Clone)]
pub struct MonitorService {
    registry: Arc<Registry>,
    directory: Option<DirectoryWatch>,
    stats: Stats,
    /// Signs the watermarks; `None`: the status carries none.
    signer: Option<SignKey>,
    /// The bound address of this node's `/metrics` ("" when it serves none).
    metrics_address: String,
    /// False on the peer port: the message log (with person keys) is for staff only.
    serves_log: bool,
}

impl MonitorService {
    pub fn new(registry: Arc<Registry>, directory: Option<DirectoryWatch>, stats: Stats) -> Self {
        Self { registry, directory, stats, signer: None, metrics_address: String::new(), serves_log: true }
    }

    /// The same service without `ListLog`, for the peer port.
    pub fn without_log(mut self) -> Self {
        self.serves_log = false;
        self
    }

    /// Names `addr`, where this node serves `/metrics`, in every status.
    pub fn with_metrics_address(mut self, addr: std::net::SocketAddr) -> Self {
        self.metrics_address = addr.to_string();
        self
    }

    /// Signs every status's watermarks with `key`, the node's directory signing key.
    pub fn with_signer(mut self, key: SignKey) -> Self {
        self.signer = Some(key);
        self
    }

    pub fn into_server(self) -> monitor_server::MonitorServer<Self> {
        monitor_server::MonitorServer::new(self)
    }

    /// The node's replication figures, as `Monitor.Status` returns them.
    pub fn status_report(&self) -> Result<pb::StatusResponse, String> {
        let now = now_ms();
        let mut outbound = Vec::new();
        for (peer, state) in self.registry.outbound() {
            let stats = self.stats.get(&peer);
            let oldest = self.registry.oldest_pending_ms(&peer, state.acked_seq).map_err(|e| e.to_string())?;
            outbound.push(pb::OutboundChannel {
                pending: state.head_seq - state.acked_seq,
                oldest_pending_age_ms: oldest.map_or(0, |at| (now - at).max(0)),
                peer,
                head_seq: state.head_seq,
                acked_seq: state.acked_seq,
                last_contact_ms: stats.last_contact_ms,
                last_error: stats.last_error,
                bytes_sent: stats.bytes_sent,
                envelopes_sent: stats.envelopes_sent,
            });
        }
        let inbound: Vec<_> = self
            .registry
            .inbound_all()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(peer, to, state)| pb::InboundChannel {
                peer,
                to,
                applied_seq: state.applied_seq,
                last_applied_ms: state.last_applied_ms,
                refused: state.refused,
            })
            .collect();
        let directory = self.directory.as_ref().map(DirectoryWatch::status).unwrap_or_default();
        let division = self.registry.division().as_str();
        let watermarks = self.signer.as_ref().map(|key| sign_watermarks(division, now, &inbound, key));
        Ok(pb::StatusResponse {
            division: division.to_owned(),
            directory_version: directory.version,
            directory_fetched_ms: directory.fetched_at_ms,
            directory_attempted_ms: directory.attempted_at_ms,
            directory_error: directory.last_error,
            directory_issued_ms: directory.issued_at_ms,
            directory_not_after_ms: directory.not_after_ms,
            now_ms: now,
            outbound,
            inbound,
            certificates_refused: self.registry.certificates_refused(),
            watermarks,
            metrics_address: self.metrics_address.clone(),
        })
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "monitor request failed inside the node");
    Status::internal("the node could not read its status; see its log")
}

#[tonic::async_trait]
impl monitor_server::Monitor for MonitorService {
    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let this = self.clone();
        let status =
            tokio::task::spawn_blocking(move || this.status_report()).await.map_err(internal)?.map_err(internal)?;
        Ok(Response::new(status))
    }

    async fn list_log(&self, request: Request<pb::ListLogRequest>) -> Result<Response<pb::ListLogResponse>, Status> {
        if !self.serves_log {
            return Err(Status::permission_denied("the message log is served on the staff API only"));
        }
        let req = request.into_inner();
        let limit = match req.limit {
            0 => LOG_PAGE_DEFAULT,
            n if n <= LOG_PAGE_MAX => n,
            n => return Err(Status::invalid_argument(format!("limit: {n} must be at most {LOG_PAGE_MAX}"))),
        } as usize;
        let registry = self.registry.clone();
        let entries = tokio::task::spawn_blocking(move || registry.log_after(req.after, limit))
            .await
            .map_err(internal)?
            .map_err(internal)?
            .into_iter()
            .map(|(index, r)| pb::LogEntry {
                index,
                direction: r.direction,
                peer: r.peer,
                to: r.to,
                seq: r.seq,
                kind: r.kind,
                person_key: hex::encode(r.person_key),
                at_ms: r.at_ms,
                reason: r.reason,
            })
            .collect();
        Ok(Response::new(pb::ListLogResponse { entries }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound() -> Vec<pb::InboundChannel> {
        vec![pb::InboundChannel {
            peer: "410103007".into(),
            to: "411421".into(),
            applied_seq: 42,
            last_applied_ms: 1_700,
            refused: 1,
        }]
    }

    #[test]
    fn signed_watermarks_verify_against_the_signers_key_only() {
        let key = SignKey::generate();
        let signed = sign_watermarks("411421", 1_800, &inbound(), &key);
        let watermarks = verify_watermarks(&signed, "411421", &key.public()).unwrap();
        assert_eq!(watermarks.at_ms, 1_800);
        assert_eq!(
            watermarks.channels,
            [pb::Watermark { peer: "410103007".into(), to: "411421".into(), applied_seq: 42, last_applied_ms: 1_700 }]
        );

        let other = SignKey::generate().public();
        assert_eq!(
            verify_watermarks(&signed, "411421", &other),
            Err(WatermarkError::Signature { division: "411421".into() })
        );
        let err = verify_watermarks(&signed, "411723", &key.public()).unwrap_err();
        assert_eq!(err.to_string(), "watermarks.division: \"411421\" signed them, the status is from \"411723\"");
    }

    #[test]
    fn a_changed_watermark_or_a_signature_from_another_domain_is_refused() {
        let key = SignKey::generate();
        let mut signed = sign_watermarks("411421", 1_800, &inbound(), &key);
        let mut raised = pb::Watermarks::decode(signed.watermarks.as_slice()).unwrap();
        raised.channels[0].applied_seq = 43;
        signed.watermarks = raised.encode_to_vec();
        assert!(matches!(verify_watermarks(&signed, "411421", &key.public()), Err(WatermarkError::Signature { .. })));

        let bytes = sign_watermarks("411421", 1_800, &inbound(), &key).watermarks;
        let elsewhere = pb::SignedWatermarks { signature: key.sign("ldx.v1.chain-head", &bytes), watermarks: bytes };
        assert!(verify_watermarks(&elsewhere, "411421", &key.public()).is_err());
    }
}
