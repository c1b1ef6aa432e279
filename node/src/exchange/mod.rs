//! Channels between nodes: the receiving side (`ldx.v1.Exchange` over mutual TLS) and one
//! sender task per outbound channel, with what both report to `ldx.v1.Monitor`.

pub mod guard;
pub mod receiver;
pub mod sender;
pub mod tls;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Largest envelope a node sends or accepts, in bytes.
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;
/// Largest gRPC message on a channel: a batch of up to `exchange.batch_max_bytes` and its
/// framing fits well inside.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// gRPC metadata key naming the division a channel is addressed to.
pub const CHANNEL_TO_HEADER: &str = "ldx-channel-to";

/// Live figures of an outbound channel, kept in memory for `Monitor.Status`.
#[derive(Debug, Clone, Default)]
pub struct SenderStats {
    pub last_contact_ms: i64,
    pub last_error: String,
    pub bytes_sent: u64,
    pub envelopes_sent: u64,
}

/// Shared, per-peer [`SenderStats`].
#[derive(Debug, Clone, Default)]
pub struct Stats(Arc<Mutex<HashMap<String, SenderStats>>>);

impl Stats {
    pub fn update(&self, peer: &str, f: impl FnOnce(&mut SenderStats)) {
        let mut all = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(all.entry(peer.to_owned()).or_default());
    }

    pub fn get(&self, peer: &str) -> SenderStats {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(peer).cloned().unwrap_or_default()
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
