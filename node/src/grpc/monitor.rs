//! `ldx.v1.Monitor`: exact replication figures of this node's channels, and its message log.

use std::sync::Arc;

use ldx_proto::v1 as pb;
use ldx_proto::v1::monitor_server;
use tonic::{Request, Response, Status};

use crate::directory::DirectoryWatch;
use crate::exchange::{Stats, now_ms};
use crate::registry::Registry;

/// Default and largest page of `ListLog`.
const LOG_PAGE_DEFAULT: u32 = 1_000;
const LOG_PAGE_MAX: u32 = 10_000;

#[derive(Debug, Clone)]
pub struct MonitorService {
    registry: Arc<Registry>,
    directory: Option<DirectoryWatch>,
    stats: Stats,
}

impl MonitorService {
    pub fn new(registry: Arc<Registry>, directory: Option<DirectoryWatch>, stats: Stats) -> Self {
        Self { registry, directory, stats }
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
        let inbound = self
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
        Ok(pb::StatusResponse {
            division: self.registry.division().as_str().to_owned(),
            directory_version: directory.version,
            directory_fetched_ms: directory.fetched_at_ms,
            now_ms: now,
            outbound,
            inbound,
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
