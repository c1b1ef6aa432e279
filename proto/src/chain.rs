//! The hash chain of a channel: each envelope carries the SHA-256 of its predecessor's
//! bytes, and the sender signs the head after each batch. One signature per batch keeps
//! integrity from capping throughput.

use sha2::{Digest, Sha256};

use crate::identity::{PublicKey, SignKey, SignatureError};

const DOMAIN: &str = "ldx.v1.chain-head";

/// SHA-256 of an envelope's bytes as sent: what the next envelope links to.
pub fn envelope_hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The chain head of channel `from → to` after envelope `seq` with hash `hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub seq: u64,
    pub hash: &'a [u8],
}

impl Head<'_> {
    fn message(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.from.len() + self.to.len() + 2 + 8 + self.hash.len());
        out.extend_from_slice(self.from.as_bytes());
        out.push(0);
        out.extend_from_slice(self.to.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(self.hash);
        out
    }

    pub fn sign(&self, key: &SignKey) -> Vec<u8> {
        key.sign(DOMAIN, &self.message())
    }

    pub fn verify(&self, key: &PublicKey, signature: &[u8]) -> Result<(), SignatureError> {
        key.verify(DOMAIN, &self.message(), signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_signature_covers_channel_seq_and_hash() {
        let key = SignKey::generate();
        let hash = envelope_hash(b"envelope");
        let head = Head { from: "410103007", to: "411421", seq: 7, hash: &hash };
        let sig = head.sign(&key);
        assert_eq!(head.verify(&key.public(), &sig), Ok(()));
        for other in [
            Head { from: "410103008", ..head.clone() },
            Head { to: "411422", ..head.clone() },
            Head { seq: 8, ..head.clone() },
            Head { hash: &[0u8; 32], ..head.clone() },
        ] {
            assert_eq!(other.verify(&key.public(), &sig), Err(SignatureError::Invalid), "{other:?}");
        }
    }
}
