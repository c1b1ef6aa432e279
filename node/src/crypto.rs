//! Keys of a node: the data key that seals personal data at rest (ChaCha20-Poly1305) and
//! the federation salt that turns an ID number into the `person_key` all nodes share
//! (HMAC-SHA256). Key material is never printed: `Debug` shows only a fingerprint.

use std::{fmt, fs, io::Write, path::Path};

use chacha20poly1305::{
    ChaCha20Poly1305, Key, Nonce,
    aead::{Aead, KeyInit, Payload},
};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write key file {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("key file {path} must hold {KEY_LEN} bytes as 64 hex digits")]
    Format { path: String },
    #[error(transparent)]
    Mode(#[from] ldx_proto::identity::OpenToOthers),
}

/// Reads a 32-byte key written as 64 hex digits (surrounding whitespace and `#` comment
/// lines allowed).
fn read_key_file(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    ldx_proto::identity::check_secret_mode(path)?;
    let shown = path.display().to_string();
    let text =
        Zeroizing::new(fs::read_to_string(path).map_err(|source| KeyError::Read { path: shown.clone(), source })?);
    let hex_digits: Zeroizing<String> =
        Zeroizing::new(text.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<String>().trim().to_owned());
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    hex::decode_to_slice(hex_digits.as_bytes(), key.as_mut()).map_err(|_| KeyError::Format { path: shown })?;
    Ok(key)
}

/// Writes a fresh random key file readable by its owner only. Refuses to overwrite.
pub fn write_new_key_file(path: &Path, comment: &str) -> Result<(), KeyError> {
    let shown = path.display().to_string();
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rand::rng().fill_bytes(key.as_mut());
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|source| KeyError::Write { path: shown.clone(), source })?;
    let text = Zeroizing::new(format!("# {comment}\n{}\n", hex::encode(key.as_ref())));
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| KeyError::Write { path: shown, source })
}

/// Constant-time equality of two slices of the same length.
fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn fingerprint(key: &[u8]) -> String {
    hex::encode(&Sha256::digest(key)[..4])
}

/// The node's data key: seals sensitive fields with ChaCha20-Poly1305.
pub struct DataKey {
    cipher: ChaCha20Poly1305,
    fingerprint: String,
    /// `HMAC-SHA256(key, DATA_KEY_CHECK_LABEL)`: what the store keeps to recognise its key.
    check: [u8; 32],
    /// `HMAC-SHA256(key, SESSION_TOKEN_LABEL)`: the key of staff session tokens.
    session_tokens: Zeroizing<[u8; 32]>,
}

/// What the key of staff session tokens is derived over.
const SESSION_TOKEN_LABEL: &[u8] = b"ldx staff session tokens v1";

/// What the data key's check value is computed over. The check is keyed, so the store
/// holding it tells nothing about the key.
const DATA_KEY_CHECK_LABEL: &[u8] = b"ldx data key check v1";

#[derive(Debug, thiserror::Error)]
#[error("sealed value does not open with this node's data key (wrong key, or the data was altered)")]
pub struct OpenError;

impl DataKey {
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let key = read_key_file(path)?;
        Ok(Self::from_bytes(&key))
    }

    pub fn from_bytes(key: &[u8; KEY_LEN]) -> Self {
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(label);
            mac.finalize().into_bytes().into()
        };
        Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(key)),
            fingerprint: fingerprint(key),
            check: derive(DATA_KEY_CHECK_LABEL),
            session_tokens: Zeroizing::new(derive(SESSION_TOKEN_LABEL)),
        }
    }

    /// The key this node's staff session tokens are tagged with (see
    /// [`crate::staff::token`]): derived, so a token tells nothing about the data key.
    pub fn session_token_key(&self) -> [u8; 32] {
        *self.session_tokens
    }

    /// The keyed check value a store records of the key it was first written with.
    pub fn check_value(&self) -> &[u8; 32] {
        &self.check
    }

    /// Whether `stored` is this key's check value, compared in constant time.
    pub fn matches_check(&self, stored: &[u8]) -> bool {
        stored.len() == self.check.len() && subtle_eq(stored, &self.check)
    }

    /// Encrypts `plaintext`, bound to `context` (the storage key it is stored under) so a
    /// sealed value moved to another key fails to open. Output: nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: context })
            .expect("ChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        if sealed.len() < NONCE_LEN {
            return Err(OpenError);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: context })
            .map(Zeroizing::new)
            .map_err(|_| OpenError)
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataKey(fingerprint {})", self.fingerprint)
    }
}

/// The federation-wide salt of `person_key`. Every node of a federation must hold the same
/// salt, or they will not agree on who is who.
pub struct FederationSalt {
    key: Zeroizing<[u8; KEY_LEN]>,
}

/// `HMAC-SHA256(federation salt, ID number)`: how nodes name a person without shipping
/// her ID number in routing fields, and how this node indexes her.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PersonKey(pub [u8; 32]);

impl FederationSalt {
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        Ok(Self { key: read_key_file(path)? })
    }

    pub fn from_bytes(key: [u8; KEY_LEN]) -> Self {
        Self { key: Zeroizing::new(key) }
    }

    pub fn person_key(&self, id_number: &str) -> PersonKey {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.as_ref()).expect("HMAC takes any key length");
        mac.update(id_number.as_bytes());
        PersonKey(mac.finalize().into_bytes().into())
    }
}

impl fmt::Debug for FederationSalt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FederationSalt(fingerprint {})", fingerprint(self.key.as_ref()))
    }
}

impl PersonKey {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Debug for PersonKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PersonKey({}…)", &self.to_hex()[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_is_bound_to_its_context() {
        let key = DataKey::from_bytes(&[7; 32]);
        let sealed = key.seal(b"persons/1", b"11010519491231002X");
        assert!(!sealed.windows(18).any(|w| w == b"11010519491231002X"));
        assert_eq!(key.open(b"persons/1", &sealed).unwrap().as_slice(), b"11010519491231002X");
        assert!(key.open(b"persons/2", &sealed).is_err());
        assert!(DataKey::from_bytes(&[8; 32]).open(b"persons/1", &sealed).is_err());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(key.open(b"persons/1", &tampered).is_err());
        assert!(key.open(b"persons/1", &sealed[..5]).is_err());
    }

    #[test]
    fn sealing_twice_gives_different_ciphertexts() {
        let key = DataKey::from_bytes(&[7; 32]);
        assert_ne!(key.seal(b"c", b"same"), key.seal(b"c", b"same"));
    }

    #[test]
    fn person_key_depends_on_salt_and_id() {
        let a = FederationSalt::from_bytes([1; 32]);
        let b = FederationSalt::from_bytes([2; 32]);
        let id = "11010519491231002X";
        assert_eq!(a.person_key(id), a.person_key(id));
        assert_ne!(a.person_key(id), b.person_key(id));
        assert_ne!(a.person_key(id), a.person_key("110105194912310037"));
        let k = a.person_key(id);
        assert_eq!(PersonKey::from_hex(&k.to_hex()), Some(k));
    }

    #[test]
    fn key_files_round_trip_and_debug_hides_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.key");
        write_new_key_file(&path, "test key").unwrap();
        assert!(write_new_key_file(&path, "again").is_err(), "must not overwrite");
        let key = DataKey::load(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let hex_line = text.lines().nth(1).unwrap();
        assert!(!format!("{key:?}").contains(hex_line));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            let err = DataKey::load(&path).unwrap_err();
            assert!(matches!(err, KeyError::Mode(_)), "{err}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        let check = DataKey::load(&path).unwrap();
        assert!(check.matches_check(key.check_value()) && !check.matches_check(&[0; 32]));
        assert!(!DataKey::from_bytes(&[1; 32]).matches_check(key.check_value()));
        fs::write(&path, "not hex").unwrap();
        assert!(matches!(DataKey::load(&path), Err(KeyError::Format { .. })));
    }
}
