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

    fn u64(&mut self) -> Result<u64, KeyDecodeError> {
        Ok(u64::from_be_bytes(self.take()?))
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

/// `meta`: single-valued keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    SchemaVersion,
    AuditHead,
    NodeDivision,
}

impl MetaKey {
    pub fn encode(&self) -> [u8; 1] {
        [match self {
            Self::SchemaVersion => kind::SCHEMA_VERSION,
            Self::AuditHead => kind::AUDIT_HEAD,
            Self::NodeDivision => kind::NODE_DIVISION,
        }]
    }
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
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = PersonRecordKey::decode(&bytes);
            let _ = AuditKey::decode(&bytes);
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
        let all = [MetaKey::SchemaVersion, MetaKey::AuditHead, MetaKey::NodeDivision].map(|k| k.encode());
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
