//! The receiving side of channels: `ldx.v1.Exchange.Sync`. The sender is who its TLS
//! certificate says it is (pinned by SHA-256 in the signed directory); each batch must
//! continue the channel's hash chain and carry the sender's signature over the new head
//! before anything in it is applied.

use std::pin::Pin;
use std::sync::Arc;

use ldx_proto::chain::{Head, envelope_hash};
use ldx_proto::directory::Directory;
use ldx_proto::identity::cert_fingerprint;
use ldx_proto::v1 as pb;
use ldx_proto::v1::exchange_server;
use prost::Message;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{CHANNEL_TO_HEADER, MAX_ENVELOPE_BYTES, MAX_MESSAGE_BYTES};
use crate::directory::DirectoryWatch;
use crate::domain::Division;
use crate::registry::{ApplyError, Registry};

#[derive(Debug, Clone)]
pub struct ExchangeService {
    registry: Arc<Registry>,
    directory: DirectoryWatch,
    /// Turns true when the node stops: open streams end then, so the server's graceful
    /// shutdown does not wait for senders that never hang up.
    stop: tokio::sync::watch::Receiver<bool>,
}

impl ExchangeService {
    pub fn new(registry: Arc<Registry>, directory: DirectoryWatch, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        Self { registry, directory, stop }
    }

    pub fn into_server(self) -> exchange_server::ExchangeServer<Self> {
        exchange_server::ExchangeServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// Who is on the other end of a stream, and which channel it sends on.
struct Channel {
    from: String,
    to: String,
    /// SHA-256 of the sender's certificate, re-checked against the current directory on
    /// every batch (a revocation or rotation reaches streams already open).
    fingerprint: [u8; 32],
}

impl Channel {
    /// The current directory, if it still lists the sender's certificate as `from`.
    fn recheck(&self, current: Option<Arc<Directory>>) -> Result<Arc<Directory>, Status> {
        let directory = current.ok_or_else(|| Status::unavailable("this node has no current directory"))?;
        if directory.division_of_cert(&self.fingerprint) != Some(self.from.as_str()) {
            return Err(Status::permission_denied(format!(
                "client certificate sha256 {} is not listed for {} in directory version {} any more",
                hex::encode(self.fingerprint),
                self.from,
                directory.version()
            )));
        }
        Ok(directory)
    }
}

fn identify<T>(request: &Request<T>, directory: Option<Arc<Directory>>, own: &Division) -> Result<Channel, Status> {
    let directory = directory.ok_or_else(|| Status::unavailable("this node has no directory yet"))?;
    let certs = request.peer_certs().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let cert = certs.first().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let fingerprint = cert_fingerprint(cert.as_ref());
    let from = directory
        .division_of_cert(&fingerprint)
        .ok_or_else(|| {
            Status::permission_denied(format!(
                "client certificate sha256 {} is not listed in directory version {}",
                hex::encode(fingerprint),
                directory.version()
            ))
        })?
        .to_owned();
    let to = request
        .metadata()
        .get(CHANNEL_TO_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Status::invalid_argument(format!("metadata {CHANNEL_TO_HEADER} is required")))?
        .to_owned();
    let addressed =
        Division::parse_node_level(CHANNEL_TO_HEADER, &to).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if !own.contains(&addressed) {
        return Err(Status::invalid_argument(format!(
            "{CHANNEL_TO_HEADER}: {to:?} is not within this node's division {own}"
        )));
    }
    Ok(Channel { from, to, fingerprint })
}

/// Checks a batch received on channel `from -> to` before anything in it is applied:
/// sizes, decoding, sender and addressee of every envelope, and `from`'s signature (its
/// key as `directory` lists it) over the head the batch ends at.
///
/// `from` must be the sender as its TLS certificate identifies it, and `to` the division
/// the stream is addressed to (within this node's). On success, each envelope's bytes
/// (what the chain hashes) with its decoded form, in order; otherwise the status
/// `ldx.v1.Exchange.Sync` answers with. Whether the batch continues the channel's chain
/// is not checked here but when it is applied.
pub fn verify_batch(
    directory: &Directory,
    from: &str,
    to: &str,
    batch: pb::SyncBatch,
) -> Result<Vec<(Vec<u8>, pb::Envelope)>, Status> {
    if batch.envelopes.is_empty() {
        return Err(Status::invalid_argument("batch holds no envelopes"));
    }
    let mut envelopes = Vec::with_capacity(batch.envelopes.len());
    for (i, bytes) in batch.envelopes.into_iter().enumerate() {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(Status::invalid_argument(format!(
                "envelope {i} of the batch is {} bytes, over the limit of {MAX_ENVELOPE_BYTES}",
                bytes.len()
            )));
        }
        let envelope = pb::Envelope::decode(bytes.as_slice())
            .map_err(|e| Status::invalid_argument(format!("envelope {i} of the batch is not a valid Envelope: {e}")))?;
        if envelope.from != from {
            return Err(Status::permission_denied(format!(
                "envelope seq {}: from {:?} is not the sender's TLS identity {from}",
                envelope.seq, envelope.from
            )));
        }
        if envelope.to != to {
            return Err(Status::invalid_argument(format!(
                "envelope seq {}: to {:?} is not this channel's {to}",
                envelope.seq, envelope.to
            )));
        }
        envelopes.push((bytes, envelope));
    }
    let (last_bytes, last) = envelopes.last().expect("non-empty");
    let key = directory.signing_key(from).ok_or_else(|| {
        Status::permission_denied(format!("directory version {} lists no signing key for {from}", directory.version()))
    })?;
    let hash = envelope_hash(last_bytes);
    Head { from, to, seq: last.seq, hash: &hash }.verify(&key, &batch.head_signature).map_err(|e| {
        Status::unauthenticated(format!(
            "head signature of seq {}: {e} against {from}'s key in directory version {}",
            last.seq,
            directory.version()
        ))
    })?;
    Ok(envelopes)
}

fn apply_status(err: ApplyError) -> Status {
    match err {
        ApplyError::Replay { .. } | ApplyError::Gap { .. } | ApplyError::NotConsecutive { .. } => {
            Status::failed_precondition(err.to_string())
        }
        ApplyError::ChainBroken { .. } => Status::invalid_argument(err.to_string()),
        ApplyError::Storage(_) | ApplyError::Registry(_) => {
            tracing::error!(error = %err, "applying a batch failed inside the node");
            Status::internal("the receiving node could not apply the batch; see its log")
        }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::SyncResponse, Status>> + Send>>;

#[tonic::async_trait]
impl exchange_server::Exchange for ExchangeService {
    type SyncStream = ResponseStream;

    async fn sync(&self, request: Request<Streaming<pb::SyncRequest>>) -> Result<Response<ResponseStream>, Status> {
        let channel = identify(&request, self.directory.current(), self.registry.division()).inspect_err(|s| {
            // Before its first directory a node turns every sender away; that is start-up,
            // not an attack, and the sender retries.
            if s.code() == tonic::Code::Unavailable {
                tracing::debug!(message = s.message(), "sync refused");
            } else {
                tracing::warn!(code = ?s.code(), message = s.message(), "sync refused");
            }
            metrics::counter!(crate::metrics::names::SYNC_REFUSED).increment(1);
        })?;
        let registry = self.registry.clone();
        let (from, to) = (channel.from.clone(), channel.to.clone());
        let state = tokio::task::spawn_blocking(move || registry.inbound(&from, &to))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| {
                tracing::error!(error = %e, "reading channel state failed");
                Status::internal("the receiving node could not read the channel state; see its log")
            })?;
        tracing::debug!(from = %channel.from, to = %channel.to, applied = state.applied_seq, "sync opened");
        let hello = pb::SyncResponse {
            kind: Some(pb::sync_response::Kind::Hello(pb::Hello {
                last_applied_seq: state.applied_seq,
                last_hash: state.last_hash,
            })),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tx.send(Ok(hello)).await.map_err(|_| Status::cancelled("stream closed"))?;
        let mut inbound = request.into_inner();
        let registry = self.registry.clone();
        let mut stop = self.stop.clone();
        let watch = self.directory.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = inbound.message() => Some(message),
                    _ = stop.wait_for(|stopped| *stopped) => None,
                };
                let Some(message) = message else {
                    let _ = tx.send(Err(Status::unavailable("the receiving node is shutting down"))).await;
                    return;
                };
                let batch = match message {
                    Ok(Some(pb::SyncRequest { kind: Some(pb::sync_request::Kind::Batch(batch)) })) => batch,
                    Ok(Some(_)) => {
                        let _ = tx.send(Err(Status::invalid_argument("unknown request kind on Sync"))).await;
                        return;
                    }
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(from = %channel.from, error = %status, "sync stream ended");
                        return;
                    }
                };
                let directory = match channel.recheck(watch.current()) {
                    Ok(directory) => directory,
                    Err(status) => {
                        tracing::warn!(from = %channel.from, message = status.message(), "sync stream closed");
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let outcome = match verify_batch(&directory, &channel.from, &channel.to, batch) {
                    Ok(envelopes) => {
                        let registry = registry.clone();
                        let (from, to) = (channel.from.clone(), channel.to.clone());
                        tokio::task::spawn_blocking(move || registry.apply_batch(&from, &to, &envelopes))
                            .await
                            .map_err(|e| Status::internal(e.to_string()))
                            .and_then(|r| r.map_err(apply_status))
                    }
                    Err(status) => Err(status),
                };
                match outcome {
                    Ok(done) => {
                        metrics::counter!(crate::metrics::names::ENVELOPES_APPLIED).increment(done.applied as u64);
                        metrics::counter!(crate::metrics::names::ENVELOPES_REFUSED).increment(done.refused as u64);
                        let ack = pb::SyncResponse {
                            kind: Some(pb::sync_response::Kind::Ack(pb::Ack { applied_seq: done.applied_seq })),
                        };
                        if tx.send(Ok(ack)).await.is_err() {
                            return;
                        }
                    }
                    Err(status) => {
                        tracing::warn!(from = %channel.from, to = %channel.to, code = ?status.code(), message = status.message(), "batch rejected");
                        metrics::counter!(crate::metrics::names::BATCHES_REJECTED).increment(1);
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use ldx_proto::identity::SignKey;
    use ldx_proto::v1::{DirectoryBody, DirectoryEntry};
    use tonic::Code;

    use super::*;

    const FROM: &str = "410103007";
    const TO: &str = "411421";

    /// A directory listing the sender with `key`, and the receiver.
    fn directory(key: &SignKey) -> Directory {
        let federation = SignKey::generate();
        let entry = |division: &str, n: u8, key: &SignKey| DirectoryEntry {
            division: division.into(),
            endpoint: "https://127.0.0.1:9".into(),
            tls_cert_sha256: vec![n; 32],
            signing_key: key.public().to_bytes().to_vec(),
        };
        let body = DirectoryBody {
            version: 7,
            issued_at_ms: 1,
            entries: vec![entry(FROM, 1, key), entry(TO, 2, &SignKey::generate())],
            ..Default::default()
        };
        Directory::verify(ldx_proto::directory::sign(&body, &federation), &federation.public()).unwrap()
    }

    fn envelope(seq: u64) -> pb::Envelope {
        pb::Envelope { from: FROM.into(), to: TO.into(), seq, ..Default::default() }
    }

    /// `envelopes` with the head over the last signed by `key` as channel `FROM -> TO`.
    fn batch(envelopes: Vec<Vec<u8>>, key: &SignKey) -> pb::SyncBatch {
        let last =
            envelopes.last().map(|b| (pb::Envelope::decode(b.as_slice()).map_or(0, |e| e.seq), envelope_hash(b)));
        let head_signature =
            last.map(|(seq, hash)| Head { from: FROM, to: TO, seq, hash: &hash }.sign(key)).unwrap_or_default();
        pb::SyncBatch { envelopes, head_signature }
    }

    #[test]
    fn a_signed_batch_of_the_channel_passes_with_its_bytes() {
        let key = SignKey::generate();
        let sent: Vec<_> = (1..=3).map(|seq| envelope(seq).encode_to_vec()).collect();
        let checked = verify_batch(&directory(&key), FROM, TO, batch(sent.clone(), &key)).unwrap();
        assert_eq!(checked, sent.iter().zip(1..).map(|(b, seq)| (b.clone(), envelope(seq))).collect::<Vec<_>>());
    }

    #[test]
    fn every_rule_is_answered_with_its_status() {
        let key = SignKey::generate();
        let directory = directory(&key);
        let one = |e: pb::Envelope| vec![e.encode_to_vec()];
        let changed = |f: fn(&mut pb::Envelope)| {
            let mut e = envelope(1);
            f(&mut e);
            e
        };
        // The signature covers the last envelope's bytes, not only its sequence number.
        let mut resent = batch(one(envelope(1)), &key);
        resent.envelopes = one(changed(|e| e.created_at_ms = 5));
        let cases = [
            (batch(vec![], &key), Code::InvalidArgument, "batch holds no envelopes".to_owned()),
            (
                batch(vec![vec![0; MAX_ENVELOPE_BYTES + 1]], &key),
                Code::InvalidArgument,
                format!("envelope 0 of the batch is 65537 bytes, over the limit of {MAX_ENVELOPE_BYTES}"),
            ),
            (
                batch(vec![envelope(1).encode_to_vec(), vec![0xff]], &key),
                Code::InvalidArgument,
                "envelope 1 of the batch is not a valid Envelope: ".into(),
            ),
            (
                batch(one(changed(|e| e.from = TO.into())), &key),
                Code::PermissionDenied,
                format!("envelope seq 1: from \"{TO}\" is not the sender's TLS identity {FROM}"),
            ),
            (
                batch(one(changed(|e| e.to = "411723".into())), &key),
                Code::InvalidArgument,
                format!("envelope seq 1: to \"411723\" is not this channel's {TO}"),
            ),
            (batch(one(envelope(1)), &SignKey::generate()), Code::Unauthenticated, "head signature of seq 1: ".into()),
            (resent, Code::Unauthenticated, format!("against {FROM}'s key in directory version 7")),
        ];
        for (batch, code, words) in cases {
            let status = verify_batch(&directory, FROM, TO, batch).unwrap_err();
            assert_eq!(status.code(), code, "{status:?}");
            assert!(status.message().contains(&words), "{:?} does not say {words:?}", status.message());
        }

        // A sender the directory lists no key for, on its own channel.
        let unlisted = "410103008";
        let mut e = envelope(1);
        e.from = unlisted.into();
        let status = verify_batch(&directory, unlisted, TO, batch(one(e), &key)).unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_eq!(status.message(), "directory version 7 lists no signing key for 410103008");
    }
}
