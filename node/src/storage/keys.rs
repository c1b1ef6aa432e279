//! Every key this node stores, with its encoding. A key is a kind byte, then fixed-width
//! big-endian integers, then length-prefixed bytes, so that byte order is scan order.
//! A kind byte, once assigned, is never reused.

use crate::crypto::PersonKey;

/// Kind bytes, per column family.
mod kind {
    /// `persons`: a person record.
    pub const PERSON: u8 = 0x01;
    /// `audit`: one audit entry.
    pub const AUDIT_ENTRY: u8 = 0x01;
    /// `meta`: the on-disk schema version.
    pub const SCHEMA_VERSION: u8 = 0x01;
    /// `meta`: head of the audit hash chain.
    pub const AUDIT_HEAD: u8 = 0x02;
    /// `meta`: the division this data directory belongs to.
    pub const NODE_DIVISION: u8 = 0x03;
    /// `meta`: the last verified signed directory.
    pub const DIRECTORY: u8 = 0x04;
    /// `meta`: index of the last message-log entry.
    pub const LOG_HEAD: u8 = 0x05;
    /// `meta`: how many certificate queries this node answered without a certificate.
    pub const CERTIFICATES_REFUSED: u8 = 0x06;
    /// `meta`: a keyed check value of the data key the store was first written with.
    pub const DATA_KEY_CHECK: u8 = 0x07;
    /// `meta`: the time of the last write made to see whether writes work again.
    pub const WRITE_PROBE: u8 = 0x08;
    /// `outbox`: an envelope waiting for the peer's ack.
    pub const OUTBOX_ENVELOPE: u8 = 0x01;
    /// `channels`: state of a channel this node sends on.
    pub const CHANNEL_OUT: u8 = 0x01;
    /// `channels`: state of a channel this node receives on.
    pub const CHANNEL_IN: u8 = 0x02;
    /// `log`: one message-log entry.
    pub const LOG_ENTRY: u8 = 0x01;
    /// `due`: an answer this node waits for, or owes.
    pub const DUE_ITEM: u8 = 0x01;
    /// `reports`: a service report issued or received here.
    pub const REPORT: u8 = 0x01;
    /// `report_ids`: a report's ID and where the report is.
    pub const REPORT_ID: u8 = 0x01;
    /// `meta`: set once `report_ids` indexes every stored report.
    pub const REPORT_ID_INDEX: u8 = 0x09;
    /// `statements`: an assessment statement this node sent to a counterpart.
    pub const STATEMENT_SENT: u8 = 0x01;
    /// `statements`: an assessment statement a counterpart sent about this node.
    pub const STATEMENT_RECEIVED: u8 = 0x02;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what} key: {why}")]
pub struct KeyDecodeError {
    pub what: &'static str,
    pub why: &'static str,
}

/// Reads the parts of a key in order, failing on any shortfall or leftover.
struct Reader<'a> {
    what: &'static str,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(what: &'static str, bytes: &'a [u8], kind: u8) -> Result<Self, KeyDecodeError> {
        match bytes.split_first() {
            Some((&k, rest)) if k == kind => Ok(Self { what, rest }),
            Some(_) => Err(KeyDecodeError { what, why: "wrong kind byte" }),
            None => Err(KeyDecodeError { what, why: "empty" }),
        }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], KeyDecodeError> {
        if self.rest.len() < N {
            return Err(KeyDecodeError { what: self.what, why: "too short" });
        }
        let (head, rest) = self.rest.split_at(N);
        self.rest = rest;
        Ok(head.try_into().expect("length checked"))
    }

    fn u32(&mut self) -> Result<u32, KeyDecodeError> {
        Ok(u32::from_be_bytes(self.take()?))
    }

    fn u64(&mut self) -> Result<u64, KeyDecodeError> {
        Ok(u64::from_be_bytes(self.take()?))
    }

    /// Length-prefixed (one byte) bytes.
    fn bytes(&mut self) -> Result<&'a [u8], KeyDecodeError> {
        let [len] = self.take::<1>()?;
        let len = usize::from(len);
        if self.rest.len() < len {
            return Err(KeyDecodeError { what: self.what, why: "too short" });
        }
        let (head, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(head)
    }

    fn text(&mut self) -> Result<String, KeyDecodeError> {
        let what = self.what;
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| KeyDecodeError { what, why: "not UTF-8" })
    }

    fn finish(self) -> Result<(), KeyDecodeError> {
        if self.rest.is_empty() { Ok(()) } else { Err(KeyDecodeError { what: self.what, why: "trailing bytes" }) }
    }
}

/// `persons`: kind ‖ person_key (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PersonRecordKey(pub PersonKey);

impl PersonRecordKey {
    pub fn encode(&self) -> [u8; 33] {
        let mut out = [0u8; 33];
        out[0] = kind::PERSON;
        out[1..].copy_from_slice(&self.0.0);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, KeyDecodeError> {
        let mut r = Reader::new("person", bytes, kind::PERSON)?;
        let key = PersonKey(r.take()?);
        r.finish()?;
        Ok(Self(key))
    }

    /// Lower bound of all person keys, for a full scan.
    pub fn first() -> [u8; 1] {
        [kind::PERSON]
    }
}

/// `audit`: kind ‖ seq (u64 BE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AuditKey(pub u64);

impl AuditKey {
    pub fn encode(&self) -> [u8; 9] {
        let mut out = [0u8; 9];
        out[0] = kind::AUDIT_ENTRY;
        out[1..].copy_from_slice(&self.0.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, KeyDecodeError> {
        let mut r = Reader::new("audit", bytes, kind::AUDIT_ENTRY)?;
        let seq = r.u64()?;
        r.finish()?;
        Ok(Self(seq))
    }
}

/// Appends `bytes` with a one-byte length prefix. Division codes are at most 9 bytes.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u8::try_from(bytes.len()).expect("key parts are short division codes");
    out.push(len);
    out.extend_from_slice(bytes);
}

/// `outbox`: kind ‖ peer (length-prefixed) ‖ seq (u64 BE). One channel's envelopes are
/// contiguous and in sequence order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OutboxKey {
    pub peer: String,
    pub seq: u64,
}

impl OutboxKey {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Self::channel_prefix(&self.peer);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, KeyDecodeError> {
        let mut r = Reader::new("outbox", bytes, kind::OUTBOX_ENVELOPE)?;
        let peer = r.text()?;
        let seq = r.u64()?;
        r.finish()?;
        Ok(Self { peer, seq })
    }

    /// Prefix of every envelope of the channel to `peer`.
    pub fn channel_prefix(peer: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + peer.len() + 8);
        out.push(kind::OUTBOX_ENVELOPE);
        put_bytes(&mut out, peer.as_bytes());
        out
    }
}

/// `channels`: state of a channel, outbound (kind ‖ peer) or inbound (kind ‖ from ‖ to).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChannelKey {
    Out { peer: String },
    In { from: String, to: String },
}

impl ChannelKey {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        match self {
            Self::Out { peer } => {
                out.push(kind::CHANNEL_OUT);
                put_bytes(&mut out, peer.as_bytes());
            }
            Self::In { from, to } => {
                out.push(kind::CHANNEL_IN);
                put_bytes(&mut out, from.as_bytes());
                put_bytes(&mut out, to.as_bytes());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, KeyDecodeError> {
        match bytes.first() {
            Some(&kind::CHANNEL_OUT) => {
                let mut r = Reader::new("channel", bytes, kind::CHANNEL_OUT)?;
                let peer = r.text()?;
                r.finish()?;
                Ok(Self::Out { peer })
            }
            _ => {
                let mut r = Reader::new("channel", bytes, kind::CHANNEL_IN)?;
                let from = r.text()?;
                let to = r.text()?;
                r.finish()?;
                Ok(Self::In { from, to })
            }
        }
    }

    pub fn out_prefix() -> [u8; 1] {
        [kind::CHANNEL_OUT]
    }

    pub fn in_prefix() -> [u8; 1] {
        [kind::CHANNEL_IN]
    }
}

/// `log`: kind ‖ index (u64 BE), in the order entries were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogKey(pub u64);

impl LogKey {
    pub fn encode(&self) -> [u8; 9] {
        let mut out = [0u8; 9];
        out[0] = kind::LOG_ENTRY;
        out[1..].copy_from_slice(&self.0.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, KeyDecodeError> {
        let mut r = Reader::new("log", bytes, kind::LOG_ENTRY)?;
        let index = r.u64()?;
        r.finish()?;
        Ok(Self(index))
    }
}

/// `due`: kind ‖ person_key (32 bytes) ‖ what (one byte): at most one open item of each
/// kind per person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DueKey {
    pub person: PersonKey,
    pub what: u8,
}

impl DueKey {
    pub fn encode(&self) -> [u8; 34] {
        let mut out = [0u8; 34];
        out[0] = kind::DUE_ITEM;
        out[1..33].copy_from_slice(&self.person.0);
        out[33] = self.what;
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, KeyDecodeError> {
        let mut r = Reader::new("due", bytes, kind::DUE_ITEM)?;
        let person = PersonKey(r.take()?);
        let [what] = r.take::<1>()?;
        r.finish()?;
        Ok(Self { person, what })
    }

    pub fn first() -> [u8; 1] {
        [kind::DUE_ITEM]
    }
}

/// `reports`: kind ‖ person_key (32 bytes) ‖ period index (u32 BE) ‖ issuer
/// (length-prefixed): one person's reports are contiguous, in period order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReportKey {
    pub person: PersonKey,
    /// [`crate::domain::Period::index`].
    pub period: u32,
    pub issuer: String,
}

impl ReportKey {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Self::person_prefix(&self.person);
        out.extend_from_slice(&self.period.to_be_bytes());
        put_bytes(&mut out, self.issuer.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, KeyDecodeError> {
        let mut r = Reader::new("report", bytes, kind::REPORT)?;
        let person = PersonKey(r.take()?);
        let period = r.u32()?;
        let issuer = r.text()?;
        r.finish()?;
        Ok(Self { person, period, issuer })
    }

    /// Prefix of every report about `person`.
    pub fn person_prefix(person: &PersonKey) -> Vec<u8> {
        let mut out = Vec::with_capacity(33 + 4 + 10);
        out.push(kind::REPORT);
        out.extend_from_slice(&person.0);
        out
    }

    pub fn first() -> [u8; 1] {
        [kind::REPORT]
    }
}

/// `statements`: kind (sent or received) ‖ period index (u32 BE) ‖ counterpart
/// (length-prefixed): one quarter's statements are contiguous.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StatementKey {
    pub received: bool,
    /// [`crate::domain::Period::index`].
    pub period: u32,
    pub counterpart: String,
}

impl StatementKey {
    fn kind(received: bool) -> u8 {
        if received { kind::STATEMENT_RECEIVED } else { kind::STATEMENT_SENT }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Self::period_prefix(self.received, self.period);
        put_bytes(&mut out, self.counterpart.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, KeyDecodeError> {
        let received = bytes.first() == Some(&kind::STATEMENT_RECEIVED);
        let mut r = Reader::new("statement", bytes, Self::kind(received))?;
        let period = r.u32()?;
        let counterpart = r.text()?;
        r.finish()?;
        Ok(Self { received, period, counterpart })
    }

    /// Prefix of every statement of one quarter, sent or received.
    pub fn period_prefix(received: bool, period: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        out.push(Self::kind(received));
        out.extend_from_slice(&period.to_be_bytes());
        out
    }
}

/// `meta`: single-valued keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    SchemaVersion,
    AuditHead,
    NodeDivision,
    Directory,
    LogHead,
    CertificatesRefused,
    DataKeyCheck,
    WriteProbe,
    ReportIdIndex,
}

impl MetaKey {
    pub fn encode(&self) -> [u8; 1] {
        [match self {
            Self::SchemaVersion => kind::SCHEMA_VERSION,
            Self::AuditHead => kind::AUDIT_HEAD,
            Self::NodeDivision => kind::NODE_DIVISION,
            Self::Directory => kind::DIRECTORY,
            Self::LogHead => kind::LOG_HEAD,
            Self::CertificatesRefused => kind::CERTIFICATES_REFUSED,
            Self::DataKeyCheck => kind::DATA_KEY_CHECK,
            Self::WriteProbe => kind::WRITE_PROBE,
            Self::ReportIdIndex => kind::REPORT_ID_INDEX,
        }]
    }
}

/// `report_ids`: kind ‖ report ID (length-prefixed) ‖ [`ReportKey`]. IDs are not unique
/// across issuers (a peer chooses its own), so the key holds where each report is.
pub struct ReportIdKey;

impl ReportIdKey {
    /// Longest report ID that is indexed (and that a received report may carry).
    pub const ID_MAX: usize = 64;

    /// `None` for an ID too long to index.
    pub fn encode(report_id: &str, report: &ReportKey) -> Option<Vec<u8>> {
        let mut out = Self::prefix(report_id)?;
        out.extend_from_slice(&report.encode());
        Some(out)
    }

    /// Prefix of every entry of `report_id`.
    pub fn prefix(report_id: &str) -> Option<Vec<u8>> {
        if report_id.is_empty() || report_id.len() > Self::ID_MAX {
            return None;
        }
        let mut out = Vec::with_capacity(2 + report_id.len() + 48);
        out.push(kind::REPORT_ID);
        put_bytes(&mut out, report_id.as_bytes());
        Some(out)
    }

    /// The report an entry of `report_id` points to.
    pub fn decode(report_id: &str, bytes: &[u8]) -> Result<ReportKey, KeyDecodeError> {
        let prefix = Self::prefix(report_id).ok_or(KeyDecodeError { what: "report id", why: "ID not indexable" })?;
        match bytes.strip_prefix(prefix.as_slice()) {
            Some(rest) => ReportKey::decode(rest),
            None => Err(KeyDecodeError { what: "report id", why: "another ID" }),
        }
    }
}

/// `staff`: an account, `a` ‖ name.
pub fn staff_account(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(b'a');
    key.extend_from_slice(name.as_bytes());
    key
}

/// `staff`: a session, `s` ‖ session id.
pub fn staff_session(id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(b's');
    key.extend_from_slice(id);
    key
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn person_keys_round_trip_and_keep_order(a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
            let (ka, kb) = (PersonRecordKey(PersonKey(a)), PersonRecordKey(PersonKey(b)));
            prop_assert_eq!(PersonRecordKey::decode(&ka.encode()).unwrap(), ka);
            prop_assert_eq!(ka.cmp(&kb), ka.encode().cmp(&kb.encode()));
            prop_assert!(ka.encode().as_slice() > PersonRecordKey::first().as_slice());
        }

        #[test]
        fn audit_keys_round_trip_and_keep_order(a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(AuditKey::decode(&AuditKey(a).encode()).unwrap(), AuditKey(a));
            prop_assert_eq!(a.cmp(&b), AuditKey(a).encode().cmp(&AuditKey(b).encode()));
        }

        #[test]
        fn outbox_keys_round_trip_and_keep_channel_then_seq_order(
            pa in "[0-9]{6}|[0-9]{9}", pb in "[0-9]{6}|[0-9]{9}", a in any::<u64>(), b in any::<u64>()
        ) {
            let ka = OutboxKey { peer: pa.clone(), seq: a };
            let kb = OutboxKey { peer: pa.clone(), seq: b };
            prop_assert_eq!(OutboxKey::decode(&ka.encode()).unwrap(), ka.clone());
            prop_assert_eq!(a.cmp(&b), ka.encode().cmp(&kb.encode()));
            prop_assert!(ka.encode().starts_with(&OutboxKey::channel_prefix(&pa)));
            let other = OutboxKey { peer: pb.clone(), seq: b };
            prop_assert_eq!(other.encode().starts_with(&OutboxKey::channel_prefix(&pa)), pa == pb);
        }

        #[test]
        fn channel_log_and_due_keys_round_trip(
            from in "[0-9]{6}|[0-9]{9}", to in "[0-9]{6}|[0-9]{9}", n in any::<u64>(), p in any::<[u8; 32]>(), w in any::<u8>()
        ) {
            for key in [ChannelKey::Out { peer: from.clone() }, ChannelKey::In { from: from.clone(), to: to.clone() }] {
                prop_assert_eq!(ChannelKey::decode(&key.encode()).unwrap(), key);
            }
            prop_assert_eq!(LogKey::decode(&LogKey(n).encode()).unwrap(), LogKey(n));
            let due = DueKey { person: PersonKey(p), what: w };
            prop_assert_eq!(DueKey::decode(&due.encode()).unwrap(), due);
            let report = ReportKey { person: PersonKey(p), period: n as u32, issuer: from.clone() };
            prop_assert_eq!(ReportKey::decode(&report.encode()).unwrap(), report.clone());
            prop_assert!(report.encode().starts_with(&ReportKey::person_prefix(&PersonKey(p))));
            for received in [false, true] {
                let key = StatementKey { received, period: n as u32, counterpart: to.clone() };
                prop_assert_eq!(StatementKey::decode(&key.encode()).unwrap(), key.clone());
                prop_assert!(key.encode().starts_with(&StatementKey::period_prefix(received, n as u32)));
            }
        }

        #[test]
        fn report_keys_order_by_person_then_period(p in any::<[u8; 32]>(), a in any::<u32>(), b in any::<u32>()) {
            let ka = ReportKey { person: PersonKey(p), period: a, issuer: "410103007".into() };
            let kb = ReportKey { person: PersonKey(p), period: b, issuer: "410103003".into() };
            if a != b {
                prop_assert_eq!(a.cmp(&b), ka.encode().cmp(&kb.encode()));
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = PersonRecordKey::decode(&bytes);
            let _ = AuditKey::decode(&bytes);
            let _ = OutboxKey::decode(&bytes);
            let _ = ChannelKey::decode(&bytes);
            let _ = LogKey::decode(&bytes);
            let _ = DueKey::decode(&bytes);
            let _ = ReportKey::decode(&bytes);
            let _ = StatementKey::decode(&bytes);
        }
    }

    #[test]
    fn malformed_keys_are_rejected() {
        assert_eq!(AuditKey::decode(&[]).unwrap_err().why, "empty");
        assert_eq!(AuditKey::decode(&[0x02; 9]).unwrap_err().why, "wrong kind byte");
        assert_eq!(AuditKey::decode(&[0x01, 0]).unwrap_err().why, "too short");
        assert_eq!(AuditKey::decode(&[0x01; 10]).unwrap_err().why, "trailing bytes");
        assert_eq!(PersonRecordKey::decode(&[0x01; 34]).unwrap_err().why, "trailing bytes");
    }

    #[test]
    fn meta_keys_are_distinct() {
        let all = [
            MetaKey::SchemaVersion,
            MetaKey::AuditHead,
            MetaKey::NodeDivision,
            MetaKey::Directory,
            MetaKey::LogHead,
            MetaKey::CertificatesRefused,
        ]
        .map(|k| k.encode());
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
