//! The signed federation directory: signing and verification, and routing by longest
//! prefix of the division code.

use std::collections::{BTreeMap, HashMap, HashSet};

use prost::Message;

use crate::identity::{PublicKey, SignKey, SignatureError};
use crate::v1::{DirectoryBody, DirectoryEntry, SignedDirectory};

const DOMAIN: &str = "ldx.v1.directory";

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("directory signature: {0}")]
    Signature(#[from] SignatureError),
    #[error("directory body is not a valid DirectoryBody: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("directory entry {division:?}: {rule}")]
    Entry { division: String, rule: String },
    #[error("directory gateway_cert_sha256 must be empty or 32 bytes, not {0}")]
    GatewayCert(usize),
    #[error("directory revoked_cert_sha256 must hold 32-byte fingerprints, not {0} bytes")]
    Revoked(usize),
}

/// How long a directory version stays current after it is signed. The gateway signs a
/// fresh version (same entries, next version) once half of this has passed, so a node
/// that hears nothing newer for this long knows its directory may be withheld from it.
pub const VALIDITY_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// Signs `body` with the federation key.
pub fn sign(body: &DirectoryBody, key: &SignKey) -> SignedDirectory {
    let body = body.encode_to_vec();
    let signature = key.sign(DOMAIN, &body);
    SignedDirectory { body, signature }
}

/// A directory whose signature verified and whose entries are well formed.
#[derive(Debug, Clone)]
pub struct Directory {
    signed: SignedDirectory,
    version: u64,
    issued_at_ms: i64,
    not_after_ms: i64,
    by_division: BTreeMap<String, DirectoryEntry>,
    by_cert: HashMap<[u8; 32], String>,
    gateway_cert: Option<[u8; 32]>,
    revoked: HashSet<[u8; 32]>,
}

impl Directory {
    /// Verifies the federation signature and every entry.
    pub fn verify(signed: SignedDirectory, federation: &PublicKey) -> Result<Self, DirectoryError> {
        federation.verify(DOMAIN, &signed.body, &signed.signature)?;
        let body = DirectoryBody::decode(signed.body.as_slice())?;
        let gateway_cert = match body.gateway_cert_sha256.len() {
            0 => None,
            _ => Some(
                body.gateway_cert_sha256
                    .as_slice()
                    .try_into()
                    .map_err(|_| DirectoryError::GatewayCert(body.gateway_cert_sha256.len()))?,
            ),
        };
        let revoked = body
            .revoked_cert_sha256
            .iter()
            .map(|f| <[u8; 32]>::try_from(f.as_slice()).map_err(|_| DirectoryError::Revoked(f.len())))
            .collect::<Result<HashSet<_>, _>>()?;
        let mut by_division = BTreeMap::new();
        let mut by_cert = HashMap::new();
        for entry in body.entries {
            let bad = |rule: &str| DirectoryError::Entry { division: entry.division.clone(), rule: rule.into() };
            if !matches!(entry.division.len(), 6 | 9) || !entry.division.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("division must be 6 or 9 digits"));
            }
            if !(entry.endpoint.starts_with("https://") || entry.endpoint.starts_with("http://")) {
                return Err(bad("endpoint must be an http(s):// URL"));
            }
            let cert: [u8; 32] =
                entry.tls_cert_sha256.as_slice().try_into().map_err(|_| bad("tls_cert_sha256 must be 32 bytes"))?;
            PublicKey::from_bytes(&entry.signing_key).map_err(|_| bad("signing_key must be an Ed25519 public key"))?;
            if revoked.contains(&cert) {
                return Err(bad("certificate is revoked"));
            }
            if by_cert.insert(cert, entry.division.clone()).is_some() {
                return Err(bad("certificate is listed for two divisions"));
            }
            if by_division.insert(entry.division.clone(), entry.clone()).is_some() {
                return Err(bad("division is listed twice"));
            }
        }
        Ok(Self {
            signed,
            version: body.version,
            issued_at_ms: body.issued_at_ms,
            not_after_ms: body.not_after_ms,
            by_division,
            by_cert,
            gateway_cert,
            revoked,
        })
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn issued_at_ms(&self) -> i64 {
        self.issued_at_ms
    }

    /// UTC milliseconds after which this version is stale (0: no limit was signed).
    pub fn not_after_ms(&self) -> i64 {
        self.not_after_ms
    }

    /// True once `now_ms` is past the signed limit.
    pub fn is_stale_at(&self, now_ms: i64) -> bool {
        self.not_after_ms != 0 && now_ms > self.not_after_ms
    }

    /// True when the certificate with this SHA-256 was revoked.
    pub fn is_revoked(&self, fingerprint: &[u8; 32]) -> bool {
        self.revoked.contains(fingerprint)
    }

    /// Every revoked fingerprint, for the next version.
    pub fn revoked(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.revoked.iter()
    }

    /// The signed form, for caching and serving.
    pub fn signed(&self) -> &SignedDirectory {
        &self.signed
    }

    pub fn entries(&self) -> impl Iterator<Item = &DirectoryEntry> {
        self.by_division.values()
    }

    pub fn get(&self, division: &str) -> Option<&DirectoryEntry> {
        self.by_division.get(division)
    }

    /// The node serving `division`: the entry with the longest code that is a prefix of it.
    pub fn route(&self, division: &str) -> Option<&DirectoryEntry> {
        (1..=division.len()).rev().find_map(|len| self.by_division.get(&division[..len]))
    }

    /// The division whose node holds the certificate with this SHA-256.
    pub fn division_of_cert(&self, fingerprint: &[u8; 32]) -> Option<&str> {
        self.by_cert.get(fingerprint).map(String::as_str)
    }

    /// SHA-256 of the gateway's client certificate, if the directory names one.
    pub fn gateway_cert_sha256(&self) -> Option<&[u8; 32]> {
        self.gateway_cert.as_ref()
    }

    /// The Ed25519 key of `division`'s node.
    pub fn signing_key(&self, division: &str) -> Option<PublicKey> {
        self.by_division.get(division).and_then(|e| PublicKey::from_bytes(&e.signing_key).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(division: &str, n: u8) -> DirectoryEntry {
        DirectoryEntry {
            division: division.into(),
            endpoint: format!("https://127.0.0.1:{}", 7000 + u16::from(n)),
            tls_cert_sha256: vec![n; 32],
            signing_key: SignKey::generate().public().to_bytes().to_vec(),
        }
    }

    fn body(entries: Vec<DirectoryEntry>) -> DirectoryBody {
        DirectoryBody { version: 3, issued_at_ms: 1, entries, ..Default::default() }
    }

    #[test]
    fn routes_by_longest_prefix() {
        let key = SignKey::generate();
        let signed = sign(&body(vec![entry("410103", 1), entry("410103007", 2), entry("411421", 3)]), &key);
        let dir = Directory::verify(signed, &key.public()).unwrap();
        assert_eq!(dir.version(), 3);
        assert_eq!(dir.route("410103007").unwrap().division, "410103007");
        assert_eq!(dir.route("410103008").unwrap().division, "410103");
        assert_eq!(dir.route("411421100").unwrap().division, "411421");
        assert!(dir.route("411422").is_none());
        assert_eq!(dir.division_of_cert(&[2; 32]), Some("410103007"));
        assert_eq!(dir.division_of_cert(&[9; 32]), None);
    }

    #[test]
    fn a_tampered_or_foreign_directory_is_refused() {
        let key = SignKey::generate();
        let mut signed = sign(&body(vec![entry("410103007", 1)]), &key);
        assert!(Directory::verify(signed.clone(), &SignKey::generate().public()).is_err());
        signed.body[3] ^= 1;
        let err = Directory::verify(signed, &key.public()).unwrap_err();
        assert!(err.to_string().contains("signature does not verify"), "{err}");
    }

    #[test]
    fn malformed_entries_are_named() {
        let key = SignKey::generate();
        let mut bad = entry("41010300", 1);
        let err = Directory::verify(sign(&body(vec![bad.clone()]), &key), &key.public()).unwrap_err();
        assert!(err.to_string().contains("6 or 9 digits"), "{err}");
        bad.division = "410103007".into();
        bad.tls_cert_sha256 = vec![1; 5];
        let err = Directory::verify(sign(&body(vec![bad]), &key), &key.public()).unwrap_err();
        assert!(err.to_string().contains("tls_cert_sha256"), "{err}");
        let err =
            Directory::verify(sign(&body(vec![entry("410103007", 1), entry("410103008", 1)]), &key), &key.public())
                .unwrap_err();
        assert!(err.to_string().contains("two divisions"), "{err}");
    }
}
