//! Joining a federation from one file. `ldx-gateway pki issue --bundle FILE` writes a join
//! bundle: everything a new node needs from its district (its certificate and keys, the
//! CA certificate, the federation's public key and salt, the gateway's address).
//! `ldx-node init --join FILE` lays it out beside a fresh data key and fills the config, so
//! no file is copied or edited by hand.
//!
//! The bundle holds the node's private keys, so it is written with mode 0600, never over an
//! existing file, and should be deleted once the node is set up.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The bundle format this build reads and writes.
pub const FORMAT: &str = "ldx-join-1";

/// Where [`JoinBundle::lay_out`] puts each file, relative to the node's directory; the
/// starter config of `ldx-node init` names the same paths.
pub const CA_FILE: &str = "pki/ca.crt";
pub const CERT_FILE: &str = "pki/node.crt";
pub const KEY_FILE: &str = "pki/node.key";
pub const SIGNING_KEY_FILE: &str = "pki/signing.key";
pub const FEDERATION_KEY_FILE: &str = "pki/federation.pub";
pub const FEDERATION_SALT_FILE: &str = "federation.salt";

/// One node's share of the federation. Each field is the text of the file it becomes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinBundle {
    pub format: String,
    /// Division code of the node the certificate was issued to.
    pub division: String,
    /// The gateway that serves the signed directory, e.g. `https://10.0.0.1:7300`.
    pub gateway: String,
    pub ca_cert: String,
    pub node_cert: String,
    pub node_key: String,
    pub signing_key: String,
    pub federation_pub: String,
    pub federation_salt: String,
}

impl std::fmt::Debug for JoinBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinBundle")
            .field("format", &self.format)
            .field("division", &self.division)
            .field("gateway", &self.gateway)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("cannot read join bundle {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("join bundle {path}: {message}")]
    Parse { path: String, message: String },
    #[error("join bundle field {field}: {value:?} {rule}")]
    Invalid { field: &'static str, value: String, rule: &'static str },
    #[error("{path} already exists: a join never overwrites a file")]
    Exists { path: String },
    #[error("cannot write {path}: {error}")]
    Write { path: String, error: std::io::Error },
}

impl JoinBundle {
    /// The bundle as written to disk: a comment saying what it is, then TOML.
    pub fn to_text(&self) -> String {
        let body = toml::to_string(self).expect("a bundle of strings serialises");
        format!(
            "# ldx join bundle for node {}: `ldx-node init --division {} --join FILE` sets the node up\n\
             # from it. It holds the node's private keys: keep it 0600 and delete it afterwards.\n{body}",
            self.division, self.division
        )
    }

    /// Parses and checks a bundle; `path` names it in errors.
    pub fn parse(path: &str, text: &str) -> Result<Self, JoinError> {
        let bundle: Self =
            toml::from_str(text).map_err(|e| JoinError::Parse { path: path.to_owned(), message: e.to_string() })?;
        bundle.check()?;
        Ok(bundle)
    }

    /// Reads and checks the bundle at `path`.
    pub fn read(path: &Path) -> Result<Self, JoinError> {
        let shown = path.display().to_string();
        let text = fs::read_to_string(path).map_err(|error| JoinError::Read { path: shown.clone(), error })?;
        Self::parse(&shown, &text)
    }

    /// Writes the bundle to `path` with mode 0600; refuses an existing file.
    pub fn write_new(&self, path: &Path) -> Result<(), JoinError> {
        write_new(path, self.to_text().as_bytes(), true)
    }

    fn check(&self) -> Result<(), JoinError> {
        let invalid = |field, value: &str, rule| {
            let shown: String = value.chars().take(64).collect();
            Err(JoinError::Invalid { field, value: shown, rule })
        };
        if self.format != FORMAT {
            return invalid("format", &self.format, "must be ldx-join-1 (made by a different ldx version?)");
        }
        if !(matches!(self.division.len(), 6 | 9) && self.division.bytes().all(|b| b.is_ascii_digit())) {
            return invalid("division", &self.division, "must be 6 or 9 ASCII digits");
        }
        check_gateway(&self.gateway)?;
        for (field, text, marker) in [
            ("ca_cert", &self.ca_cert, "-----BEGIN CERTIFICATE-----"),
            ("node_cert", &self.node_cert, "-----BEGIN CERTIFICATE-----"),
            ("node_key", &self.node_key, "-----BEGIN PRIVATE KEY-----"),
        ] {
            if !text.contains(marker) {
                return invalid(field, "", "must hold a PEM block");
            }
        }
        for (field, text) in [
            ("signing_key", &self.signing_key),
            ("federation_pub", &self.federation_pub),
            ("federation_salt", &self.federation_salt),
        ] {
            if text.trim().is_empty() {
                return invalid(field, "", "must not be empty");
            }
        }
        Ok(())
    }

    /// Writes every file of the bundle under `dir` (see the `*_FILE` constants), private
    /// ones with mode 0600. Refuses if any of them exists; on any failure removes what it
    /// wrote. Returns the paths written.
    pub fn lay_out(&self, dir: &Path) -> Result<Vec<PathBuf>, JoinError> {
        let files: [(&str, &str, bool); 6] = [
            (CA_FILE, &self.ca_cert, false),
            (CERT_FILE, &self.node_cert, false),
            (KEY_FILE, &self.node_key, true),
            (SIGNING_KEY_FILE, &self.signing_key, true),
            (FEDERATION_KEY_FILE, &self.federation_pub, false),
            (FEDERATION_SALT_FILE, &self.federation_salt, true),
        ];
        if let Some((name, _, _)) = files.iter().find(|(name, _, _)| dir.join(name).exists()) {
            return Err(JoinError::Exists { path: dir.join(name).display().to_string() });
        }
        let mut written = Vec::new();
        for (name, text, secret) in files {
            let path = dir.join(name);
            let result = path
                .parent()
                .map_or(Ok(()), |parent| {
                    fs::create_dir_all(parent)
                        .map_err(|error| JoinError::Write { path: parent.display().to_string(), error })
                })
                .and_then(|()| write_new(&path, text.as_bytes(), secret));
            if let Err(e) = result {
                remove_all(&written);
                return Err(e);
            }
            written.push(path);
        }
        Ok(written)
    }
}

/// Checks a gateway address for a bundle: an http(s) URL that goes into the node's config.
pub fn check_gateway(value: &str) -> Result<(), JoinError> {
    let url = value.starts_with("http://") || value.starts_with("https://");
    if url && !value.chars().any(|c| c.is_control() || c.is_whitespace() || c == '"' || c == '\\') {
        return Ok(());
    }
    Err(JoinError::Invalid {
        field: "gateway",
        value: value.chars().take(64).collect(),
        rule: "must be an http:// or https:// URL without spaces or quotes",
    })
}

/// Removes files a failed set-up wrote.
pub fn remove_all(paths: &[PathBuf]) {
    for path in paths {
        let _ = fs::remove_file(path);
    }
}

fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<(), JoinError> {
    let shown = path.display().to_string();
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, if secret { 0o600 } else { 0o644 });
    let mut file = options.open(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::AlreadyExists => JoinError::Exists { path: shown.clone() },
        _ => JoinError::Write { path: shown.clone(), error },
    })?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(|error| JoinError::Write { path: shown, error })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> JoinBundle {
        JoinBundle {
            format: FORMAT.into(),
            division: "410103007".into(),
            gateway: "https://10.0.0.1:7300".into(),
            ca_cert: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            node_cert: "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n".into(),
            node_key: "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n".into(),
            signing_key: "# key\n00ff\n".into(),
            federation_pub: "# pub\n11ee\n".into(),
            federation_salt: "# salt\n22dd\n".into(),
        }
    }

    #[test]
    fn a_bundle_round_trips_through_its_text() {
        let b = bundle();
        assert_eq!(JoinBundle::parse("b", &b.to_text()).unwrap(), b);
        assert!(!format!("{b:?}").contains("PRIVATE KEY"), "Debug shows no key");
    }

    #[test]
    fn a_bad_field_is_named() {
        let mut b = bundle();
        b.gateway = "10.0.0.1:7300".into();
        let e = JoinBundle::parse("b", &b.to_text()).unwrap_err().to_string();
        assert!(e.contains("field gateway") && e.contains("http://"), "{e}");
        let mut b = bundle();
        b.node_key = "nothing".into();
        let e = JoinBundle::parse("b", &b.to_text()).unwrap_err().to_string();
        assert!(e.contains("field node_key"), "{e}");
        let e = JoinBundle::parse("b", "format = 1").unwrap_err().to_string();
        assert!(e.starts_with("join bundle b:"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn lay_out_writes_private_files_0600_and_never_overwrites() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let written = bundle().lay_out(dir.path()).unwrap();
        assert_eq!(written.len(), 6);
        let mode = |name: &str| fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(KEY_FILE), 0o600);
        assert_eq!(mode(SIGNING_KEY_FILE), 0o600);
        assert_eq!(mode(FEDERATION_SALT_FILE), 0o600);
        assert_eq!(fs::read_to_string(dir.path().join(CERT_FILE)).unwrap(), bundle().node_cert);

        let again = tempfile::tempdir().unwrap();
        fs::write(again.path().join(FEDERATION_SALT_FILE), "x").unwrap();
        assert!(matches!(bundle().lay_out(again.path()), Err(JoinError::Exists { .. })));
        assert!(!again.path().join(CA_FILE).exists(), "nothing written when one file exists");

        let path = dir.path().join("b.toml");
        bundle().write_new(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(matches!(bundle().write_new(&path), Err(JoinError::Exists { .. })));
        assert_eq!(JoinBundle::read(&path).unwrap(), bundle());
    }
}
