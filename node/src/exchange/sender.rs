//! The sending side of channels: one task per peer, started when the first envelope for it
//! is written. A task dials the peer's node from the directory, resumes after the seq the
//! receiver says it applied, keeps a bounded number of signed batches in flight, and
//! retries with exponential backoff and jitter while the peer is away. Nothing leaves the
//! outbox until the peer acks it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ldx_proto::chain::{Head, envelope_hash};
use ldx_proto::identity::SignKey;
use ldx_proto::v1 as pb;
use ldx_proto::v1::exchange_client::ExchangeClient;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use super::tls::PeerTls;
use super::{CHANNEL_TO_HEADER, MAX_MESSAGE_BYTES, Stats, now_ms};
use crate::config::ExchangeConfig;
use crate::directory::DirectoryWatch;
use crate::registry::Registry;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a session with a peer ended early.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("this node has no directory yet")]
    NoDirectory,
    #[error("no node in directory version {version} serves division {peer}")]
    NoRoute { peer: String, version: u64 },
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("{0}")]
    Endpoint(String),
    #[error("peer refused: {code:?}: {message}")]
    Refused { code: tonic::Code, message: String },
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("not trusted: {0}")]
    Untrusted(String),
    #[error("local: {0}")]
    Local(String),
}

impl From<tonic::Status> for SessionError {
    fn from(s: tonic::Status) -> Self {
        Self::Refused { code: s.code(), message: s.message().to_owned() }
    }
}

/// What every sender task shares.
#[derive(Debug, Clone)]
pub struct SenderContext {
    pub registry: Arc<Registry>,
    pub directory: DirectoryWatch,
    pub tls: PeerTls,
    pub signing_key: SignKey,
    pub config: ExchangeConfig,
    pub stats: Stats,
}

/// Starts a sender task for every channel with unacked envelopes, and one for each peer
/// named on `wake` later; wakes the task of a peer whenever it is named again.
pub async fn supervise(ctx: SenderContext, mut wake: mpsc::UnboundedReceiver<String>, shutdown: watch::Receiver<bool>) {
    let mut tasks: HashMap<String, Arc<Notify>> = HashMap::new();
    let start = |peer: String, tasks: &mut HashMap<String, Arc<Notify>>| {
        let notify = tasks
            .entry(peer.clone())
            .or_insert_with(|| {
                let notify = Arc::new(Notify::new());
                tokio::spawn(run_channel(ctx.clone(), peer.clone(), notify.clone(), shutdown.clone()));
                notify
            })
            .clone();
        notify.notify_one();
    };
    for (peer, state) in ctx.registry.outbound() {
        if state.head_seq > state.acked_seq {
            start(peer, &mut tasks);
        }
    }
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            peer = wake.recv() => match peer {
                Some(peer) => start(peer, &mut tasks),
                None => return,
            },
            _ = stop.changed() => return,
        }
    }
}

fn pending(ctx: &SenderContext, peer: &str) -> bool {
    let state = ctx.registry.outbound_to(peer);
    state.head_seq > state.acked_seq
}

async fn run_channel(ctx: SenderContext, peer: String, notify: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    let initial = Duration::from_millis(ctx.config.backoff_initial_ms);
    let max = Duration::from_millis(ctx.config.backoff_max_ms).max(initial);
    let mut backoff = initial;
    // The same failure again (a peer that stays down) is logged at debug level only.
    let mut last_error = String::new();
    loop {
        if *shutdown.borrow() {
            return;
        }
        if !pending(&ctx, &peer) {
            tokio::select! {
                _ = notify.notified() => continue,
                _ = shutdown.changed() => return,
            }
        }
        // Before the node's first directory there is nowhere to dial: wait for it quietly.
        if ctx.directory.current().is_none() {
            tokio::select! {
                () = ctx.directory.present() => {}
                _ = shutdown.changed() => return,
            }
        }
        match session(&ctx, &peer, &notify, &mut shutdown).await {
            Ok(()) => {
                backoff = initial;
                last_error.clear();
            }
            Err(e) => {
                let error = e.to_string();
                let retry_in_ms = backoff.as_millis() as u64;
                if error == last_error {
                    tracing::debug!(peer = %peer, error = %error, retry_in_ms, "channel still interrupted");
                } else if matches!(e, SessionError::Refused { code: tonic::Code::Unavailable, .. }) {
                    // The peer is starting, stopping or waiting for its directory.
                    tracing::info!(peer = %peer, error = %error, retry_in_ms, "peer not ready");
                } else {
                    tracing::warn!(peer = %peer, error = %error, retry_in_ms, "channel interrupted");
                }
                ctx.stats.update(&peer, |s| s.last_error = error.clone());
                last_error = error;
                let jittered = backoff.mul_f64(rand::random_range(0.5..1.0));
                tokio::select! {
                    () = tokio::time::sleep(jittered) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(max);
            }
        }
    }
}

/// Fails unless the current directory still pins `pinned` as `peer`'s certificate.
fn recheck(ctx: &SenderContext, peer: &str, pinned: &[u8; 32]) -> Result<(), SessionError> {
    let directory = ctx.directory.current().ok_or(SessionError::NoDirectory)?;
    let entry = directory
        .route(peer)
        .ok_or_else(|| SessionError::NoRoute { peer: peer.to_owned(), version: directory.version() })?;
    if entry.tls_cert_sha256.as_slice() != pinned || directory.is_revoked(pinned) {
        return Err(SessionError::Untrusted(format!(
            "directory version {} no longer pins the certificate {peer} presented (sha256 {}); reconnecting",
            directory.version(),
            hex::encode(pinned)
        )));
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    ctx: &SenderContext,
    f: impl FnOnce(&Registry) -> Result<T, String> + Send + 'static,
) -> Result<T, SessionError> {
    let registry = ctx.registry.clone();
    tokio::task::spawn_blocking(move || f(&registry))
        .await
        .map_err(|e| SessionError::Local(e.to_string()))?
        .map_err(SessionError::Local)
}

/// One connection to the peer: Hello, then batches until the outbox is drained and no
/// new envelope comes, the stream fails, or the node stops.
async fn session(
    ctx: &SenderContext,
    peer: &str,
    notify: &Notify,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let directory = ctx.directory.current().ok_or(SessionError::NoDirectory)?;
    let entry = directory
        .route(peer)
        .ok_or_else(|| SessionError::NoRoute { peer: peer.to_owned(), version: directory.version() })?
        .clone();
    let pinned: [u8; 32] = entry.tls_cert_sha256.as_slice().try_into().map_err(|_| {
        SessionError::Endpoint(format!("directory entry of {} has no 32-byte certificate pin", entry.division))
    })?;
    let connector = ctx.tls.connector(&entry.division, pinned).map_err(SessionError::Endpoint)?;
    let plain = super::tls::plain_endpoint(&entry.endpoint).map_err(SessionError::Endpoint)?;
    let endpoint = Endpoint::from_shared(plain)
        .map_err(|e| SessionError::Endpoint(format!("endpoint {:?}: {e}", entry.endpoint)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    let channel = endpoint.connect_with_connector(connector).await.map_err(|source| SessionError::Connect {
        endpoint: entry.endpoint.clone(),
        reason: crate::error_chain(&source),
    })?;
    let mut client = ExchangeClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let inflight_max = ctx.config.inflight_batches.max(1) as usize;
    let (tx, rx) = mpsc::channel::<pb::SyncRequest>(inflight_max);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert(
        CHANNEL_TO_HEADER,
        peer.parse().map_err(|_| SessionError::Local(format!("peer {peer:?} is not a valid header value")))?,
    );
    let mut responses = client.sync(request).await?.into_inner();
    let hello = match responses.message().await? {
        Some(pb::SyncResponse { kind: Some(pb::sync_response::Kind::Hello(hello)) }) => hello,
        other => return Err(SessionError::Protocol(format!("expected Hello, got {other:?}"))),
    };
    let resumed = hello.last_applied_seq;
    let state = ctx.registry.outbound_to(peer);
    if resumed > state.head_seq {
        return Err(SessionError::Untrusted(format!(
            "{peer} says it applied seq {resumed}, beyond this channel's head {}; nothing is trimmed",
            state.head_seq
        )));
    }
    if resumed < state.acked_seq {
        return Err(SessionError::Untrusted(format!(
            "{peer} says it applied seq {resumed} but acked seq {} before: it lost envelopes (restored from \
             an old backup?); they are not in the outbox any more, so the channel waits for an operator",
            state.acked_seq
        )));
    }
    let peer_owned = peer.to_owned();
    blocking(ctx, move |r| r.ack(&peer_owned, resumed).map_err(|e| e.to_string())).await?;
    ctx.stats.update(peer, |s| {
        s.last_contact_ms = now_ms();
        s.last_error.clear();
    });
    tracing::debug!(peer, resumed, "channel open");

    let mut next = resumed + 1;
    let mut inflight: VecDeque<u64> = VecDeque::new();
    loop {
        let head = ctx.registry.outbound_to(peer).head_seq;
        while inflight.len() < inflight_max && next <= head {
            // The receiver must still be the one the current directory pins: a revocation
            // or rotation reaches a connection already open.
            recheck(ctx, peer, &pinned)?;
            let (max_count, max_bytes) = (ctx.config.batch_max_envelopes as usize, ctx.config.batch_max_bytes as usize);
            let peer_owned = peer.to_owned();
            let batch = blocking(ctx, move |r| {
                r.outbox_batch(&peer_owned, next, head, max_count, max_bytes).map_err(|e| e.to_string())
            })
            .await?;
            let Some((last_seq, last_bytes)) = batch.last() else {
                return Err(SessionError::Local(format!("outbox to {peer} has no envelope {next} below head {head}")));
            };
            if batch[0].0 != next {
                return Err(SessionError::Local(format!(
                    "outbox to {peer} starts at {} instead of {next}",
                    batch[0].0
                )));
            }
            let last_seq = *last_seq;
            let hash = envelope_hash(last_bytes);
            let from = ctx.registry.division().as_str();
            let head_signature = Head { from, to: peer, seq: last_seq, hash: &hash }.sign(&ctx.signing_key);
            let bytes: usize = batch.iter().map(|(_, b)| b.len()).sum();
            let count = batch.len() as u64;
            let envelopes = batch.into_iter().map(|(_, b)| b).collect();
            let request = pb::SyncRequest {
                kind: Some(pb::sync_request::Kind::Batch(pb::SyncBatch { envelopes, head_signature })),
            };
            if tx.send(request).await.is_err() {
                return Err(SessionError::Protocol("the peer closed the stream".into()));
            }
            ctx.stats.update(peer, |s| {
                s.bytes_sent += bytes as u64;
                s.envelopes_sent += count;
            });
            inflight.push_back(last_seq);
            next = last_seq + 1;
        }
        tokio::select! {
            message = responses.message() => match message? {
                Some(pb::SyncResponse { kind: Some(pb::sync_response::Kind::Ack(ack)) }) => {
                    if !inflight.iter().any(|&s| s == ack.applied_seq) {
                        return Err(SessionError::Protocol(format!("ack of seq {} that is not a batch end in flight", ack.applied_seq)));
                    }
                    let peer_owned = peer.to_owned();
                    let acked = ack.applied_seq;
                    blocking(ctx, move |r| r.ack(&peer_owned, acked).map_err(|e| e.to_string())).await?;
                    while inflight.front().is_some_and(|&s| s <= acked) {
                        inflight.pop_front();
                    }
                    ctx.stats.update(peer, |s| s.last_contact_ms = now_ms());
                }
                Some(other) => return Err(SessionError::Protocol(format!("unexpected {other:?}"))),
                None => return Err(SessionError::Protocol("the peer ended the stream".into())),
            },
            () = notify.notified() => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}
