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
}

/// Head of the audit chain, kept in `meta` and updated in the same batch as each entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuditHead {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub hash: Vec<u8>,
}
