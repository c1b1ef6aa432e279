//! Node and federation identities: Ed25519 signing keys and their files, the TLS
//! certificate fingerprint that pins a node, and the names a node's certificate carries.

use std::{fmt, fs, io::Write, path::Path};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand::RngCore;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path} must hold a 32-byte Ed25519 {what} as 64 hex digits")]
    Format { path: String, what: &'static str },
    #[error(transparent)]
    Mode(#[from] OpenToOthers),
}

/// A secret file that users other than its owner and group may read or change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{path} holds a secret key and is open to every user of the machine (mode {mode:04o}); \
     make it readable by its owner only: chmod 600 {path}"
)]
pub struct OpenToOthers {
    pub path: String,
    pub mode: u32,
}

/// Refuses a secret file that every user of the machine may read or write (any of the
/// mode's "others" bits). Group access is allowed: Kubernetes mounts secrets group-readable
/// (`defaultMode: 0440` with `fsGroup`), and the group is the service's own.
pub fn check_secret_mode(path: &Path) -> Result<(), OpenToOthers> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Not readable at all is reported by the read that follows, with its own error.
        if let Ok(meta) = fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o007 != 0 {
                return Err(OpenToOthers { path: path.display().to_string(), mode });
            }
        }
    }
    let _ = path;
    Ok(())
}

/// DNS name of the gateway's certificate, which nodes verify when they fetch the
/// directory over TLS (whatever host name the gateway's address uses).
pub const GATEWAY_DNS_NAME: &str = "gateway.ldx";

/// URI SAN of a node certificate: `ldx://division/<code>`.
pub fn division_uri(division: &str) -> String {
    format!("ldx://division/{division}")
}

/// DNS name of a node certificate, which TLS clients verify when they dial the node.
pub fn division_dns_name(division: &str) -> String {
    format!("{division}.division.ldx")
}

/// SHA-256 of a certificate's DER bytes: how the directory pins a node's TLS identity.
pub fn cert_fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// An Ed25519 key that signs for a node or for the federation. `Debug` shows only the
/// public key.
#[derive(Clone)]
pub struct SignKey(SigningKey);

impl SignKey {
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        Self(SigningKey::from_bytes(&seed))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs `message` in the given `domain`, so a signature made for one purpose never
    /// verifies for another.
    pub fn sign(&self, domain: &str, message: &[u8]) -> Vec<u8> {
        self.0.sign(&domain_message(domain, message)).to_bytes().to_vec()
    }

    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        check_secret_mode(path)?;
        let bytes = read_hex32(path, "signing key")?;
        Ok(Self(SigningKey::from_bytes(&bytes)))
    }

    /// Writes the key readable by its owner only; refuses to overwrite an existing file.
    pub fn write_new(&self, path: &Path, comment: &str) -> Result<(), KeyFileError> {
        write_hex32(path, comment, &self.0.to_bytes(), true)
    }
}

impl fmt::Debug for SignKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignKey(public {})", self.public())
    }
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("public key is not a valid Ed25519 key")]
    BadKey,
    #[error("signature is not 64 bytes")]
    Malformed,
    #[error("signature does not verify")]
    Invalid,
}

impl PublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SignatureError> {
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| SignatureError::BadKey)?;
        VerifyingKey::from_bytes(&bytes).map(Self).map_err(|_| SignatureError::BadKey)
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn verify(&self, domain: &str, message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        let signature = Signature::from_slice(signature).map_err(|_| SignatureError::Malformed)?;
        self.0.verify_strict(&domain_message(domain, message), &signature).map_err(|_| SignatureError::Invalid)
    }

    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let bytes = read_hex32(path, "public key")?;
        Self::from_bytes(&bytes)
            .map_err(|_| KeyFileError::Format { path: path.display().to_string(), what: "public key" })
    }

    pub fn write(&self, path: &Path, comment: &str) -> Result<(), KeyFileError> {
        write_hex32(path, comment, &self.to_bytes(), false)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.to_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

fn domain_message(domain: &str, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(domain.len() + 1 + message.len());
    out.extend_from_slice(domain.as_bytes());
    out.push(0);
    out.extend_from_slice(message);
    out
}

fn read_hex32(path: &Path, what: &'static str) -> Result<[u8; 32], KeyFileError> {
    let shown = path.display().to_string();
    let text = fs::read_to_string(path).map_err(|source| KeyFileError::Read { path: shown.clone(), source })?;
    let digits: String = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<String>();
    let mut out = [0u8; 32];
    hex::decode_to_slice(digits.trim(), &mut out).map_err(|_| KeyFileError::Format { path: shown, what })?;
    Ok(out)
}

fn write_hex32(path: &Path, comment: &str, bytes: &[u8; 32], secret: bool) -> Result<(), KeyFileError> {
    let shown = path.display().to_string();
    let mut options = fs::OpenOptions::new();
    options.write(true);
    if secret {
        options.create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    } else {
        options.create(true).truncate(true);
    }
    let mut file = options.open(path).map_err(|source| KeyFileError::Write { path: shown.clone(), source })?;
    file.write_all(format!("# {comment}\n{}\n", hex::encode(bytes)).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| KeyFileError::Write { path: shown, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_secret_key_open_to_every_user_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        SignKey::generate().write_new(&path, "test").unwrap();
        for (mode, ok) in [(0o600, true), (0o640, true), (0o440, true), (0o644, false), (0o602, false)] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let loaded = SignKey::load(&path);
            assert_eq!(loaded.is_ok(), ok, "mode {mode:o}");
            if let Err(e) = loaded {
                assert!(
                    e.to_string()
                        .contains(&format!("(mode {mode:04o}); make it readable by its owner only: chmod 600")),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn signatures_are_bound_to_their_domain_and_message() {
        let key = SignKey::generate();
        let sig = key.sign("a", b"message");
        assert_eq!(key.public().verify("a", b"message", &sig), Ok(()));
        assert_eq!(key.public().verify("b", b"message", &sig), Err(SignatureError::Invalid));
        assert_eq!(key.public().verify("a", b"messagf", &sig), Err(SignatureError::Invalid));
        assert_eq!(SignKey::generate().public().verify("a", b"message", &sig), Err(SignatureError::Invalid));
        assert_eq!(key.public().verify("a", b"message", &sig[..63]), Err(SignatureError::Malformed));
    }

    #[test]
    fn key_files_round_trip_and_secrets_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let key = SignKey::generate();
        key.write_new(&dir.path().join("k"), "test key").unwrap();
        assert!(key.write_new(&dir.path().join("k"), "again").is_err(), "a secret key file is never overwritten");
        assert_eq!(SignKey::load(&dir.path().join("k")).unwrap().public(), key.public());
        key.public().write(&dir.path().join("k.pub"), "test public key").unwrap();
        assert_eq!(PublicKey::load(&dir.path().join("k.pub")).unwrap(), key.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("k")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Written like the key above, readable by its owner only.
        key.write_new(&dir.path().join("bad"), "to be overwritten").unwrap();
        fs::write(dir.path().join("bad"), "zz").unwrap();
        assert!(SignKey::load(&dir.path().join("bad")).unwrap_err().to_string().contains("64 hex digits"));
    }
}
