//! The commented starter config `ldx-node init` writes.

use super::Config;
use crate::domain::Division;

impl Config {
    /// A commented starter config for `ldx-node init`.
    pub fn starter(division: &Division, api_listen: &str) -> String {
        Self::starter_joined(division, api_listen, "", "")
    }

    /// The starter config of a node that joins a federation: its peer API on `peer_listen`
    /// and its directory from `gateway` (both empty: a node on its own).
    pub fn starter_joined(division: &Division, api_listen: &str, peer_listen: &str, gateway: &str) -> String {
        format!(
            r#"# ldx node configuration. Every key can be overridden by an environment variable:
# LDX_<KEY>, with sections joined by a double underscore (LDX_API__LISTEN=127.0.0.1:7401).
# Relative paths are relative to this file.

# Division code this node serves ({name}): a 9-digit street office or township, or a
# 6-digit county.
division = "{division}"

# Directory of the node's RocksDB.
data_dir = "data"

# Data key (64 hex digits) that seals personal data at rest. Back it up apart from the
# data: without it the records cannot be read.
data_key_file = "data.key"

# Federation salt (64 hex digits) that turns an ID number into the person_key every
# node agrees on. All nodes of a federation must use the same salt file.
federation_salt_file = "federation.salt"

[api]
# Staff API (ldx.v1.Registry). Keep it on loopback: it has no staff authentication yet.
# An address beyond loopback is refused unless the API serves TLS, e.g. with this node's
# own certificate: tls_cert_file = "pki/node.crt", tls_key_file = "pki/node.key".
listen = "{api_listen}"

[storage]
# Fsync every write before answering.
sync_writes = true
# Free space (MB) kept on the data directory's disk: below it, changes are refused
# (nothing half-written) and health says NOT_SERVING, until space is freed.
reserve_mb = 64

[log]
# A level (info, debug) or a tracing directive (ldx_node=debug,info).
level = "info"

[peer]
# Peer API (ldx.v1.Exchange), mutual TLS only, e.g. "0.0.0.0:7302". Empty: this node
# keeps its own records and does not sync.
listen = "{peer_listen}"
# Files from `ldx-gateway pki issue --division {division}` and the federation CA.
ca_file = "pki/ca.crt"
cert_file = "pki/node.crt"
key_file = "pki/node.key"
signing_key_file = "pki/signing.key"

[directory]
# The gateway that serves the signed directory, e.g. "https://10.0.0.1:7300". Empty: use
# the copy cached in the data directory.
gateway = "{gateway}"
federation_key_file = "pki/federation.pub"
poll_interval_ms = 5000

[metrics]
# Prometheus /metrics (channel lag, pending, refusals), e.g. "127.0.0.1:9301". Empty: off.
listen = ""

[deadlines]
# Days allowed: a notice to reach her origin, then the origin's feedback (urgent: the
# shorter one). The worklist and the assessment use the same numbers.
notice_days = 7
feedback_days = 7
feedback_urgent_days = 3
transfer_days = 30
hiring_notice_days = 7
certificate_answer_days = 7
# A quarter's report is due at the origin this many days after the quarter; the origin's
# verdict this many days after the report arrived.
report_days = 10
verdict_days = 15

[reports]
# Seconds between runs of the job that issues due quarterly reports (0: on demand only).
issue_interval_secs = 600
"#,
            name = division.name(),
        )
    }
}
