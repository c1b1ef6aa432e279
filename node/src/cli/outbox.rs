//! `ldx-node outbox show|skip`: the envelopes waiting for one peer, and setting aside one
//! that the channel cannot carry so that what is queued behind it flows again.

use clap::Subcommand;
use ldx_proto::v1 as pb;
use serde_json::json;

use super::ClientArgs;
use super::client::{connect, status};
use super::output::table;

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// The envelopes waiting for PEER (no content: seq, kind, size, age), the first 100
    /// unless --all.
    Show {
        /// The peer's division, e.g. 411421 (see `ldx-node status`).
        peer: String,
        /// Start after this seq.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Every waiting envelope, page by page.
        #[arg(long)]
        all: bool,
    },
    /// Set aside envelope SEQ of the channel to PEER: a stand-in naming its kind, size and
    /// your reason takes its place, the envelopes behind it are sent, and the peer logs the
    /// reason. For an envelope the peer refuses for good (e.g. over the size limit).
    Skip {
        /// The peer's division, e.g. 411421.
        peer: String,
        /// The seq of the envelope (see `ldx-node outbox show PEER`).
        seq: u64,
        /// Why (required, at most 200 characters): it goes to the peer and the audit log.
        #[arg(long)]
        reason: String,
    },
}

pub async fn run(args: &ClientArgs, command: OutboxCommand) -> anyhow::Result<()> {
    let (mut client, _) = connect(args).await?;
    match command {
        OutboxCommand::Show { peer, after, all } => {
            let mut req = pb::ListOutboxRequest { peer, after_seq: after, page_size: 0 };
            let mut page = client.list_outbox(req.clone()).await.map_err(status)?.into_inner();
            let mut envelopes = std::mem::take(&mut page.envelopes);
            while all && let Some(last) = envelopes.last().map(|e| e.seq).filter(|s| *s < page.head_seq) {
                req.after_seq = last;
                let next = client.list_outbox(req.clone()).await.map_err(status)?.into_inner();
                if next.envelopes.is_empty() {
                    break;
                }
                envelopes.extend(next.envelopes);
            }
            print_outbox(&req.peer, &page, &envelopes, args.json);
        }
        OutboxCommand::Skip { peer, seq, reason } => {
            let req = pb::SetAsideEnvelopeRequest { peer: peer.clone(), seq, reason };
            let resp = client.set_aside_envelope(req).await.map_err(status)?.into_inner();
            let e = resp.set_aside.unwrap_or_default();
            if args.json {
                println!("{}", json!({ "peer": peer, "seq": e.seq, "kind": e.kind, "bytes": e.bytes }));
            } else {
                println!(
                    "set aside envelope {} to {peer} ({}, {} bytes); the envelopes behind it go on",
                    e.seq, e.kind, e.bytes
                );
            }
        }
    }
    Ok(())
}

fn print_outbox(peer: &str, page: &pb::ListOutboxResponse, envelopes: &[pb::OutboxEnvelope], as_json: bool) {
    if as_json {
        let items: Vec<_> = envelopes
            .iter()
            .map(|e| {
                json!({ "seq": e.seq, "kind": e.kind, "bytes": e.bytes, "created_at_ms": e.created_at_ms, "over_limit": e.over_limit })
            })
            .collect();
        println!(
            "{}",
            json!({ "peer": peer, "acked_seq": page.acked_seq, "head_seq": page.head_seq, "max_envelope_bytes": page.max_envelope_bytes, "envelopes": items })
        );
        return;
    }
    println!(
        "to {peer}: acked {}, head {}, {} waiting; a peer accepts envelopes of at most {} bytes",
        page.acked_seq,
        page.head_seq,
        page.head_seq - page.acked_seq,
        page.max_envelope_bytes
    );
    let now = chrono::Utc::now().timestamp_millis();
    let rows: Vec<[String; 5]> = envelopes
        .iter()
        .map(|e| {
            [
                e.seq.to_string(),
                e.kind.clone(),
                e.bytes.to_string(),
                format!("{} s", (now - e.created_at_ms).max(0) / 1000),
                if e.over_limit { "TOO LARGE: set it aside (ldx-node outbox skip)".into() } else { String::new() },
            ]
        })
        .collect();
    print!("{}", table(&["SEQ", "KIND", "BYTES", "WAITING", ""], &rows));
}
