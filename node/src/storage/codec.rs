//! Values on disk: one version byte, then a prost message, so the schema can evolve.

use prost::Message;

use super::StorageError;

/// Version byte of every value this code writes.
pub const VALUE_VERSION: u8 = 1;

pub fn encode<M: Message>(msg: &M) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + msg.encoded_len());
    out.push(VALUE_VERSION);
    msg.encode(&mut out).expect("a Vec grows as needed");
    out
}

pub fn decode<M: Message + Default>(what: &'static str, bytes: &[u8]) -> Result<M, StorageError> {
    match bytes.split_first() {
        Some((&VALUE_VERSION, body)) => {
            M::decode(body).map_err(|source| StorageError::Corrupt { what, detail: source.to_string() })
        }
        Some((&other, _)) => Err(StorageError::Corrupt {
            what,
            detail: format!("value version {other} is not known to this build (expected {VALUE_VERSION})"),
        }),
        None => Err(StorageError::Corrupt { what, detail: "empty value".into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::records::AuditEntry;

    #[test]
    fn values_round_trip_with_their_version() {
        let entry = AuditEntry {
            seq: 7,
            at_ms: 1,
            action: "read".into(),
            person_key: vec![1; 32],
            staff: "li.na".into(),
            ..Default::default()
        };
        let bytes = encode(&entry);
        assert_eq!(bytes[0], VALUE_VERSION);
        assert_eq!(decode::<AuditEntry>("audit", &bytes).unwrap(), entry);
    }

    #[test]
    fn unknown_versions_and_garbage_are_corrupt() {
        let mut bytes = encode(&AuditEntry::default());
        bytes[0] = 9;
        assert!(decode::<AuditEntry>("audit", &bytes).unwrap_err().to_string().contains("version 9"));
        assert!(decode::<AuditEntry>("audit", &[]).is_err());
        assert!(decode::<AuditEntry>("audit", &[VALUE_VERSION, 0xff, 0xff]).is_err());
    }
}
