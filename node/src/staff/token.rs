//! Session tokens: `v1.<division>.<session id>.<tag>`, the tag an HMAC-SHA256 under a key
//! derived from the node's data key. The tag proves the node issued the token (a token
//! of another node, or an edited one, fails before any lookup); the session record it
//! names says whether it still holds (log-out, disable and password reset end it).

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Bytes of a session id: random, so a session cannot be guessed from another.
pub const SESSION_ID_LEN: usize = 16;

/// Why a token was refused: said to the caller as it is (nothing in it is secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the session token is not one an ldx node issues (expected v1.<division>.<id>.<tag>)")]
    Malformed,
    #[error("the session token was issued by node {0}, not by this one: log in to this node")]
    OtherNode(String),
    #[error("the session token's signature does not match: it was not issued by this node or was altered")]
    Forged,
}

/// Issues and checks this node's session tokens.
pub struct TokenKey {
    key: zeroize::Zeroizing<[u8; 32]>,
    division: String,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey").field("division", &self.division).finish_non_exhaustive()
    }
}

impl TokenKey {
    pub fn new(key: [u8; 32], division: &str) -> Self {
        Self { key: zeroize::Zeroizing::new(key), division: division.to_owned() }
    }

    fn mac(&self, division: &str, id: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.as_slice()).expect("HMAC takes any key length");
        mac.update(b"v1.");
        mac.update(division.as_bytes());
        mac.update(b".");
        mac.update(id);
        mac
    }

    /// A new session id and the token that names it.
    pub fn issue(&self) -> (Vec<u8>, String) {
        let mut id = vec![0u8; SESSION_ID_LEN];
        rand::rng().fill_bytes(&mut id);
        let tag = self.mac(&self.division, &id).finalize().into_bytes();
        let token = format!("v1.{}.{}.{}", self.division, hex::encode(&id), hex::encode(tag));
        (id, token)
    }

    /// The session id a token of this node names; the tag is compared in constant time.
    pub fn check(&self, token: &str) -> Result<Vec<u8>, TokenError> {
        let mut parts = token.split('.');
        let (Some("v1"), Some(division), Some(id), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let id = hex::decode(id).map_err(|_| TokenError::Malformed)?;
        let tag = hex::decode(tag).map_err(|_| TokenError::Malformed)?;
        if id.len() != SESSION_ID_LEN || tag.len() != 32 || !division.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TokenError::Malformed);
        }
        if division != self.division {
            return Err(TokenError::OtherNode(division.to_owned()));
        }
        self.mac(division, &id).verify_slice(&tag).map_err(|_| TokenError::Forged)?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_checks_at_its_node_only_and_unaltered() {
        let key = TokenKey::new([7; 32], "410103007");
        let (id, token) = key.issue();
        assert_eq!(key.check(&token), Ok(id));
        let other = TokenKey::new([8; 32], "410103008");
        assert_eq!(other.check(&token), Err(TokenError::OtherNode("410103007".into())));
        let same_division_other_key = TokenKey::new([8; 32], "410103007");
        assert_eq!(same_division_other_key.check(&token), Err(TokenError::Forged));
        let mut edited = token.clone().into_bytes();
        let at = edited.len() - 1;
        edited[at] = if edited[at] == b'0' { b'1' } else { b'0' };
        assert_eq!(key.check(std::str::from_utf8(&edited).unwrap()), Err(TokenError::Forged));
        assert_eq!(key.check("Bearer x"), Err(TokenError::Malformed));
        assert_eq!(key.check(""), Err(TokenError::Malformed));
    }
}
