//! Stored values. Fields that identify or locate a person live in [`PersonSecret`], which
//! is only ever stored sealed with the node's data key; the clear part holds what
//! filters and routing need.

/// A person's registration at this node.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PersonRecord {
    #[prost(bytes = "vec", tag = "1")]
    pub person_key: Vec<u8>,
    /// `ldx.v1.Role`.
    #[prost(int32, tag = "2")]
    pub role: i32,
    /// `ldx.v1.Category`.
    #[prost(int32, tag = "3")]
    pub category: i32,
    /// `ldx.v1.PersonStatus`.
    #[prost(int32, tag = "4")]
    pub status: i32,
    /// Division where she lives or works (or, for an origin, her household division).
    #[prost(string, tag = "5")]
    pub division: String,
    /// Her origin county.
    #[prost(string, tag = "6")]
    pub origin_division: String,
    /// Move-in date, days since 1970-01-01.
    #[prost(int32, tag = "7")]
    pub move_in_day: i32,
    #[prost(int32, optional, tag = "8")]
    pub move_out_day: Option<i32>,
    #[prost(string, tag = "9")]
    pub next_division: String,
    #[prost(int64, tag = "10")]
    pub updated_at_ms: i64,
    /// A [`PersonSecret`], sealed with the data key and bound to this record's key.
    #[prost(bytes = "vec", tag = "11")]
    pub sealed: Vec<u8>,
    /// What the exchange with other nodes has brought about for her here.
    #[prost(message, optional, tag = "12")]
    pub sync: Option<SyncRecord>,
    /// The day retention purged her personal fields: `sealed` is empty from then on.
    #[prost(int32, optional, tag = "13")]
    pub purged_day: Option<i32>,
    /// Her household registration is in this node's city: no notice, no report cycle.
    #[prost(bool, tag = "14")]
    pub local_resident: bool,
}

impl PersonRecord {
    /// Retention removed her personal fields: nothing sealed is left (a sealed value is
    /// never empty, it holds at least its nonce and tag).
    pub fn is_purged(&self) -> bool {
        self.sealed.is_empty()
    }
}

/// Exchange state of a person at this node.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SyncRecord {
    /// At her origin: the node that last notified where she lives or works.
    #[prost(string, tag = "1")]
    pub notified_by: String,
    #[prost(string, tag = "2")]
    pub notified_division: String,
    /// At a destination: `awaiting` or `received`.
    #[prost(string, tag = "3")]
    pub feedback: String,
    #[prost(int32, optional, tag = "4")]
    pub feedback_due_day: Option<i32>,
    /// `ldx.v1.CertificateStatus`.
    #[prost(int32, tag = "5")]
    pub certificate: i32,
    #[prost(int32, optional, tag = "6")]
    pub certificate_valid_until_day: Option<i32>,
    /// `requested`, `accepted`, `refused: <reason>`, `received`.
    #[prost(string, tag = "7")]
    pub transfer: String,
    #[prost(string, tag = "8")]
    pub transfer_peer: String,
    /// Separation date of a requested transfer.
    #[prost(int32, optional, tag = "9")]
    pub transfer_day: Option<i32>,
    /// At her origin: quarters ([`crate::domain::Period::index`]) with a qualified report.
    #[prost(uint32, repeated, tag = "10")]
    pub served_periods: Vec<u32>,
    /// At her origin: the node that notified her as living there (her residence node).
    #[prost(string, tag = "11")]
    pub residence: String,
}

/// Personal data of a record: only stored sealed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PersonSecret {
    #[prost(string, tag = "1")]
    pub id_number: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub phone: String,
    #[prost(string, tag = "4")]
    pub address: String,
    #[prost(message, repeated, tag = "5")]
    pub services: Vec<ServiceEntry>,
    /// Her certificate number, as issued by her origin.
    #[prost(string, tag = "6")]
    pub certificate_number: String,
    /// SHA-256 of her photo as filed at this node (the photo itself is not stored).
    #[prost(bytes = "vec", tag = "7")]
    pub photo_digest: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServiceEntry {
    /// `ldx.v1.ServiceKind`.
    #[prost(int32, tag = "1")]
    pub kind: i32,
    /// Days since 1970-01-01.
    #[prost(int32, tag = "2")]
    pub day: i32,
    #[prost(string, tag = "3")]
    pub details: String,
}

/// One audit entry: who-what-when of an access to personal data, never the data itself.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuditEntry {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(int64, tag = "2")]
    pub at_ms: i64,
    /// `move_in`, `move_out`, `record_service`, `read`, `list`.
    #[prost(string, tag = "3")]
    pub action: String,
    /// Person concerned (empty for a list).
    #[prost(bytes = "vec", tag = "4")]
    pub person_key: Vec<u8>,
    /// SHA-256 of the previous entry's encoded value (empty for the first).
    #[prost(bytes = "vec", tag = "5")]
    pub prev_hash: Vec<u8>,
    /// The staff account that made the call (empty: the node itself, on a peer's envelope
    /// or its own schedule).
    #[prost(string, tag = "6")]
    pub staff: String,
    /// The absent account `staff` acted for as its deputy.
    #[prost(string, tag = "7")]
    pub acting_for: String,
    /// The role whose scope allowed the call, and the purpose it was served under.
    #[prost(string, tag = "8")]
    pub role: String,
    #[prost(string, tag = "9")]
    pub purpose: String,
    /// The API call, e.g. `/ldx.v1.Registry/GetPerson`.
    #[prost(string, tag = "10")]
    pub call: String,
    /// For a refusal: the rule that refused it.
    #[prost(string, tag = "11")]
    pub detail: String,
    /// Persons whose records a list or export disclosed.
    #[prost(bytes = "vec", repeated, tag = "12")]
    pub disclosed: Vec<Vec<u8>>,
}

/// A staff account of this node.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StaffRecord {
    #[prost(string, tag = "1")]
    pub name: String,
    /// Role names, see [`crate::staff::StaffRole`].
    #[prost(string, repeated, tag = "2")]
    pub roles: Vec<String>,
    /// A township clerk's 9-digit township.
    #[prost(string, tag = "3")]
    pub township: String,
    /// The account this one deputises for.
    #[prost(string, tag = "4")]
    pub deputy_of: String,
    #[prost(bool, tag = "5")]
    pub disabled: bool,
    #[prost(bool, tag = "6")]
    pub absent: bool,
    /// Argon2id hash in PHC string form.
    #[prost(string, tag = "7")]
    pub password_hash: String,
    /// Failed log-ins since the last good one.
    #[prost(uint32, tag = "8")]
    pub failed_logins: u32,
    #[prost(int64, tag = "9")]
    pub locked_until_ms: i64,
    /// Bumped on disable and password reset: sessions of an older generation are void.
    #[prost(uint64, tag = "10")]
    pub generation: u64,
    #[prost(int64, tag = "11")]
    pub created_at_ms: i64,
}

/// A log-in session: what a session token stands for.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionRecord {
    #[prost(string, tag = "1")]
    pub name: String,
    /// The account's generation when the session began.
    #[prost(uint64, tag = "2")]
    pub generation: u64,
    #[prost(int64, tag = "3")]
    pub issued_at_ms: i64,
    #[prost(int64, tag = "4")]
    pub expires_at_ms: i64,
}

/// Head of the audit chain, kept in `meta` and updated in the same batch as each entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuditHead {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub hash: Vec<u8>,
}

/// A channel this node sends on: the head of its hash chain and what the peer acked.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OutChannel {
    #[prost(uint64, tag = "1")]
    pub head_seq: u64,
    /// Hash of the envelope at `head_seq` (empty when none).
    #[prost(bytes = "vec", tag = "2")]
    pub head_hash: Vec<u8>,
    #[prost(uint64, tag = "3")]
    pub acked_seq: u64,
}

/// A channel this node receives on: what it applied, and the chain hash there.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InChannel {
    #[prost(uint64, tag = "1")]
    pub applied_seq: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub last_hash: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub last_applied_ms: i64,
    /// Envelopes consumed without effect because the sender was not allowed to send them.
    #[prost(uint64, tag = "4")]
    pub refused: u64,
}

/// An envelope in the outbox: its bytes sealed with the data key (they carry personal
/// data), plus when it was created, in clear, for the lag figures.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OutboxEntry {
    #[prost(int64, tag = "1")]
    pub created_at_ms: i64,
    #[prost(bytes = "vec", tag = "2")]
    pub sealed: Vec<u8>,
}

/// One message-log entry: which envelope went where, never its personal content.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LogRecord {
    /// `ldx.v1.Direction`.
    #[prost(int32, tag = "1")]
    pub direction: i32,
    #[prost(string, tag = "2")]
    pub peer: String,
    #[prost(string, tag = "3")]
    pub to: String,
    #[prost(uint64, tag = "4")]
    pub seq: u64,
    #[prost(string, tag = "5")]
    pub kind: String,
    #[prost(bytes = "vec", tag = "6")]
    pub person_key: Vec<u8>,
    #[prost(int64, tag = "7")]
    pub at_ms: i64,
    #[prost(string, tag = "8")]
    pub reason: String,
    /// For an envelope applied or refused here: when its sender created it (UTC ms), so
    /// the assessment can tell how long it took to arrive.
    #[prost(int64, tag = "9")]
    pub sent_at_ms: i64,
}

/// Something this node waits for (an answer from a peer) by a deadline.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DueItem {
    /// Deadline, days since 1970-01-01 (China Standard Time calendar).
    #[prost(int32, tag = "1")]
    pub due_day: i32,
    /// The node expected to answer.
    #[prost(string, tag = "2")]
    pub peer: String,
    #[prost(int64, tag = "3")]
    pub created_at_ms: i64,
}

/// A service report issued here (at her residence) or received here (at her origin).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReportRecord {
    #[prost(string, tag = "1")]
    pub report_id: String,
    /// True when this node issued it.
    #[prost(bool, tag = "2")]
    pub issued_here: bool,
    /// The signed `ldx.v1.ServiceReport`, sealed with the data key (it lists health
    /// services), bound to this record's key.
    #[prost(bytes = "vec", tag = "3")]
    pub sealed: Vec<u8>,
    /// `ldx.v1.ReportStatus`.
    #[prost(int32, tag = "4")]
    pub status: i32,
    /// `ldx.v1.RejectReason` when rejected.
    #[prost(int32, tag = "5")]
    pub reason: i32,
    #[prost(string, tag = "6")]
    pub detail: String,
    /// Days since 1970-01-01.
    #[prost(int32, tag = "7")]
    pub issued_day: i32,
    /// At the origin: the day it arrived.
    #[prost(int32, optional, tag = "8")]
    pub received_day: Option<i32>,
    /// The day the verdict was given (origin) or arrived (residence).
    #[prost(int32, optional, tag = "9")]
    pub verdict_day: Option<i32>,
    /// The other node: her origin's (at the issuer) or the issuer (at the origin).
    #[prost(string, tag = "10")]
    pub peer: String,
    /// The day retention purged the report's content (`sealed` and `detail` are empty).
    #[prost(int32, optional, tag = "11")]
    pub purged_day: Option<i32>,
    /// Issued after the quarter's window closed: counted against the residence, not her.
    #[prost(bool, tag = "12")]
    pub late: bool,
}
