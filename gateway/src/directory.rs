//! The gateway's copy of the federation directory: `directory.bin` in the PKI directory,
//! an encoded `SignedDirectory`. Every change bumps the version, is signed with the
//! federation key and replaces the file atomically, so the server never reads half of it.
//! [`DirectoryService`] is the running gateway's view of it, shared by everything that
//! serves the directory or asks its nodes.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use ldx_proto::directory::{self as signed, Directory, DirectoryError};
use ldx_proto::identity::{self, KeyFileError, PublicKey, SignKey};
use ldx_proto::v1::{DirectoryBody, DirectoryEntry, SignedDirectory};
use prost::Message;

use crate::pki::{self, PkiError};

pub const DIRECTORY_FILE: &str = "directory.bin";

#[derive(Debug, thiserror::Error)]
pub enum DirectoryFileError {
    #[error("{field}: {value:?} {rule}")]
    Invalid { field: &'static str, value: String, rule: String },
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path} is not an encoded SignedDirectory: {source}")]
    Decode { path: String, source: prost::DecodeError },
    #[error("{path} does not verify with the federation key: {source}")]
    Verify { path: String, source: DirectoryError },
    #[error("cert: {0}")]
    Cert(PkiError),
    #[error("signing-pub: {0}")]
    SigningPub(KeyFileError),
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// Path of the directory file in a PKI directory.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(DIRECTORY_FILE)
}

/// The federation public key of a PKI directory.
pub fn federation_key(dir: &Path) -> Result<PublicKey, DirectoryFileError> {
    Ok(PublicKey::load(&dir.join(pki::FEDERATION_PUB))?)
}

/// The current directory, verified with `federation.pub`; `None` (version 0, no entries)
/// before the first `add`.
pub fn load(dir: &Path) -> Result<Option<Directory>, DirectoryFileError> {
    load_with(dir, &federation_key(dir)?)
}

/// Like [`load`], with the federation key already at hand.
pub fn load_with(dir: &Path, federation: &PublicKey) -> Result<Option<Directory>, DirectoryFileError> {
    let file = path(dir);
    let shown = || file.display().to_string();
    let bytes = match fs::read(&file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(DirectoryFileError::Read { path: shown(), source }),
    };
    let signed = SignedDirectory::decode(bytes.as_slice())
        .map_err(|source| DirectoryFileError::Decode { path: shown(), source })?;
    let directory =
        Directory::verify(signed, federation).map_err(|source| DirectoryFileError::Verify { path: shown(), source })?;
    Ok(Some(directory))
}

/// Version of a loaded directory, 0 when there is none yet.
pub fn version(directory: Option<&Directory>) -> u64 {
    directory.map_or(0, Directory::version)
}

/// Adds `division`'s node, or replaces its entry. The certificate is pinned by the
/// SHA-256 of its DER, and must name `division` (URI SAN `ldx://division/<code>`).
pub fn add(
    dir: &Path,
    division: &str,
    endpoint: &str,
    cert_pem: &Path,
    signing_pub: &Path,
) -> Result<Directory, DirectoryFileError> {
    pki::validate_division("division", division)?;
    validate_endpoint(endpoint)?;
    let der = pki::read_cert_der(cert_pem).map_err(DirectoryFileError::Cert)?;
    if !names_division(&der, division) {
        return Err(DirectoryFileError::Invalid {
            field: "cert",
            value: cert_pem.display().to_string(),
            rule: format!("must be the certificate of {division} (URI SAN {})", identity::division_uri(division)),
        });
    }
    let cert_sha256 = identity::cert_fingerprint(&der);
    let signing_key = PublicKey::load(signing_pub).map_err(DirectoryFileError::SigningPub)?;

    let federation = federation_key(dir)?;
    let current = load_with(dir, &federation)?;
    let mut entries: Vec<DirectoryEntry> =
        current.iter().flat_map(Directory::entries).filter(|e| e.division != division).cloned().collect();
    if let Some(other) = entries.iter().find(|e| e.tls_cert_sha256 == cert_sha256) {
        return Err(DirectoryFileError::Invalid {
            field: "cert",
            value: cert_pem.display().to_string(),
            rule: format!("is already listed for division {}", other.division),
        });
    }
    entries.push(DirectoryEntry {
        division: division.to_owned(),
        endpoint: endpoint.to_owned(),
        tls_cert_sha256: cert_sha256.to_vec(),
        signing_key: signing_key.to_bytes().to_vec(),
    });
    publish(dir, &federation, current.as_ref(), entries, None)
}

/// Removes `division`'s node from the directory.
pub fn remove(dir: &Path, division: &str) -> Result<Directory, DirectoryFileError> {
    pki::validate_division("division", division)?;
    let federation = federation_key(dir)?;
    let current = load_with(dir, &federation)?;
    let listed = current.as_ref().is_some_and(|d| d.get(division).is_some());
    if !listed {
        return Err(DirectoryFileError::Invalid {
            field: "division",
            value: division.to_owned(),
            rule: "is not in the directory".into(),
        });
    }
    let entries = current.iter().flat_map(Directory::entries).filter(|e| e.division != division).cloned().collect();
    publish(dir, &federation, current.as_ref(), entries, None)
}

/// Revokes the certificate of `division`'s node: its entry leaves the directory and the
/// certificate's SHA-256 joins the signed revocation list, so no node accepts it again and
/// no entry may list it. Returns the new version and the revoked fingerprint.
pub fn revoke(dir: &Path, division: &str) -> Result<(Directory, [u8; 32]), DirectoryFileError> {
    pki::validate_division("division", division)?;
    let federation = federation_key(dir)?;
    let current = load_with(dir, &federation)?;
    let Some(entry) = current.as_ref().and_then(|d| d.get(division)) else {
        return Err(DirectoryFileError::Invalid {
            field: "division",
            value: division.to_owned(),
            rule: "is not in the directory (only a listed node's certificate can be revoked)".into(),
        });
    };
    let fingerprint: [u8; 32] = entry.tls_cert_sha256.as_slice().try_into().expect("verified: 32 bytes");
    let entries = current.iter().flat_map(Directory::entries).filter(|e| e.division != division).cloned().collect();
    let directory = publish(dir, &federation, current.as_ref(), entries, Some(fingerprint))?;
    Ok((directory, fingerprint))
}

/// Signs the entries again as the next version with a fresh validity
/// ([`signed::VALIDITY_MS`]): what the running gateway does once half of it has passed
/// when it holds `federation.key`, and what an operator runs (e.g. from a timer where the
/// key is kept) when it does not.
pub fn refresh(dir: &Path) -> Result<Directory, DirectoryFileError> {
    let federation = federation_key(dir)?;
    let current = load_with(dir, &federation)?;
    let entries = current.iter().flat_map(Directory::entries).cloned().collect();
    publish(dir, &federation, current.as_ref(), entries, None)
}

/// Signs the next version with `federation.key`, checks it verifies with
/// `federation.pub`, and replaces the file. The revocation list of `current` is carried
/// over, with `revoke` added.
fn publish(
    dir: &Path,
    federation: &PublicKey,
    current: Option<&Directory>,
    mut entries: Vec<DirectoryEntry>,
    revoke: Option<[u8; 32]>,
) -> Result<Directory, DirectoryFileError> {
    entries.sort_by(|a, b| a.division.cmp(&b.division));
    let mut revoked: Vec<[u8; 32]> = current.iter().flat_map(|d| d.revoked()).copied().chain(revoke).collect();
    revoked.sort_unstable();
    revoked.dedup();
    if let Some(listed) = entries.iter().find(|e| revoked.iter().any(|r| r.as_slice() == e.tls_cert_sha256)) {
        return Err(DirectoryFileError::Invalid {
            field: "cert",
            value: hex::encode(&listed.tls_cert_sha256),
            rule: format!("was revoked; issue {} a new certificate (ldx-gateway pki issue)", listed.division),
        });
    }
    let key = SignKey::load(&dir.join(pki::FEDERATION_KEY))?;
    // The gateway's own client certificate: nodes answer its Monitor and Assessment calls
    // on their peer port, and nobody else's.
    let (gateway_cert, _) = pki::gateway_identity(dir)?;
    let gateway_cert_sha256 = pki::cert_sha256_of_pem_file(&gateway_cert)?.to_vec();
    let issued_at_ms = chrono::Utc::now().timestamp_millis();
    let body = DirectoryBody {
        version: version(current) + 1,
        issued_at_ms,
        entries,
        gateway_cert_sha256,
        not_after_ms: issued_at_ms + signed::VALIDITY_MS,
        revoked_cert_sha256: revoked.iter().map(|r| r.to_vec()).collect(),
    };
    let signed = signed::sign(&body, &key);
    let file = path(dir);
    let directory = Directory::verify(signed.clone(), federation)
        .map_err(|source| DirectoryFileError::Verify { path: file.display().to_string(), source })?;
    write_atomically(&file, &signed.encode_to_vec())?;
    Ok(directory)
}

fn validate_endpoint(endpoint: &str) -> Result<(), DirectoryFileError> {
    let invalid = |rule: &str| DirectoryFileError::Invalid {
        field: "endpoint",
        value: endpoint.to_owned(),
        rule: rule.to_owned(),
    };
    if !endpoint.starts_with("https://") {
        return Err(invalid("must start with https:// (peers talk mutual TLS only)"));
    }
    let uri: tonic::transport::Uri =
        endpoint.parse().map_err(|_| invalid("must be a URL like https://10.0.0.7:7302"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("must name a host, like https://10.0.0.7:7302"));
    }
    Ok(())
}

/// Whether the certificate carries the URI SAN of exactly `division` (not of a longer
/// code that starts with it). A byte search suffices: the URI is stored verbatim as an
/// IA5String, and what follows it in the DER is never an ASCII digit.
fn names_division(der: &[u8], division: &str) -> bool {
    let uri = identity::division_uri(division);
    let uri = uri.as_bytes();
    der.windows(uri.len())
        .enumerate()
        .any(|(i, w)| w == uri && der.get(i + uri.len()).is_none_or(|b| !b.is_ascii_digit()))
}

/// Writes via a temporary file, fsync and rename, so readers see the old or the new file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), DirectoryFileError> {
    let io = |source| DirectoryFileError::Write { path: path.display().to_string(), source };
    let tmp = path.with_extension("bin.tmp");
    let mut file = fs::File::create(&tmp).map_err(io)?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    if let Some(parent) = path.parent() {
        // Makes the rename itself durable; not every platform can open a directory.
        if let Ok(d) = fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The directory the gateway serves (`ldx.v1.Directory`) and asks the nodes of: the last
/// good copy of `directory.bin`, re-read when the file changed (an operator ran `directory
/// add` or `remove`).
#[derive(Debug, Clone)]
pub struct DirectoryService {
    pki_dir: PathBuf,
    federation: PublicKey,
    cache: Arc<Mutex<Cached>>,
}

#[derive(Debug, Default)]
struct Cached {
    stamp: Option<FileStamp>,
    directory: Option<Arc<Directory>>,
}

/// What tells a replaced file from the one read before: rename gives it a new inode, and
/// mtime and size change too.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        let meta = fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(Self { modified: meta.modified().ok(), len: meta.len(), inode })
    }
}

impl DirectoryService {
    /// Loads `federation.pub` and the current directory; a directory file that does not
    /// verify is an error here, so a broken gateway fails at start-up.
    pub fn open(pki_dir: PathBuf) -> Result<Self, DirectoryFileError> {
        let federation = federation_key(&pki_dir)?;
        let stamp = FileStamp::of(&path(&pki_dir));
        let loaded = load_with(&pki_dir, &federation)?;
        let cached = Cached { stamp, directory: loaded.map(Arc::new) };
        Ok(Self { pki_dir, federation, cache: Arc::new(Mutex::new(cached)) })
    }

    /// The directory being served, re-read first if the file changed. A changed file that
    /// does not load is logged and the last good copy stays in service.
    pub fn current(&self) -> Option<Arc<Directory>> {
        let file = path(&self.pki_dir);
        let stamp = FileStamp::of(&file);
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.stamp != stamp {
            match load_with(&self.pki_dir, &self.federation) {
                Ok(Some(loaded)) => {
                    tracing::info!(
                        version = loaded.version(),
                        entries = loaded.entries().count(),
                        "directory reloaded"
                    );
                    cache.directory = Some(Arc::new(loaded));
                }
                Ok(None) => tracing::warn!(file = %file.display(), "directory file disappeared; serving the last copy"),
                Err(e) => tracing::warn!(error = %e, "directory file changed but does not load; serving the last copy"),
            }
            cache.stamp = stamp;
        }
        cache.directory.clone()
    }

    /// The PKI directory the directory file lives in.
    pub fn pki_dir(&self) -> &Path {
        &self.pki_dir
    }

    /// Keeps the served directory current: once half of its validity has passed, signs the
    /// next version with the same entries if `federation.key` is here; without the key,
    /// warns (at most hourly) from a day before it goes stale, naming the command to run.
    pub fn keep_fresh(&self) -> Freshness {
        let Some(current) = self.current() else { return Freshness::Empty };
        let now = chrono::Utc::now().timestamp_millis();
        let remaining = current.not_after_ms() - now;
        if current.not_after_ms() != 0 && remaining > signed::VALIDITY_MS / 2 {
            return Freshness::Current;
        }
        if !self.pki_dir.join(pki::FEDERATION_KEY).exists() {
            return Freshness::NeedsKey { remaining_ms: remaining };
        }
        match refresh(&self.pki_dir) {
            Ok(next) => {
                tracing::info!(version = next.version(), "directory signed again with a fresh validity");
                self.current();
                Freshness::Refreshed
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot sign a fresh directory");
                Freshness::NeedsKey { remaining_ms: remaining }
            }
        }
    }
}

/// What [`DirectoryService::keep_fresh`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Empty,
    Current,
    Refreshed,
    /// Half the validity has passed and the gateway cannot sign: someone must run
    /// `ldx-gateway directory refresh` where `federation.key` is kept.
    NeedsKey {
        remaining_ms: i64,
    },
}

/// Runs [`DirectoryService::keep_fresh`] every ten minutes until `shutdown`.
pub async fn keep_fresh(service: DirectoryService, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(600));
    let mut last_warned: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticks.tick() => {}
        }
        let checking = service.clone();
        let checked = tokio::task::spawn_blocking(move || checking.keep_fresh()).await.unwrap_or(Freshness::Empty);
        if let Freshness::NeedsKey { remaining_ms } = checked
            && remaining_ms < 24 * 60 * 60 * 1000
            && last_warned.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(3600))
        {
            last_warned = Some(tokio::time::Instant::now());
            tracing::warn!(
                remaining_h = remaining_ms / 3_600_000,
                pki = %service.pki_dir().display(),
                "the directory goes stale soon and this gateway has no federation.key to sign a fresh one; \
                 run `ldx-gateway directory refresh --pki DIR` where the key is kept, or nodes stop syncing"
            );
        }
    }
}

/// The Chinese name of division `code` from the division table ("" for a code it lacks).
pub fn division_name(code: &str) -> &'static str {
    ldx_node::domain::Division::parse("division", code).map_or("", |d| d.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        temp: tempfile::TempDir,
        a: pki::IssuedNode,
        b: pki::IssuedNode,
    }

    fn fixture() -> Fixture {
        let temp = tempfile::tempdir().unwrap();
        pki::init(temp.path()).unwrap();
        let a = pki::issue(temp.path(), "410103007").unwrap();
        let b = pki::issue(temp.path(), "411421").unwrap();
        Fixture { temp, a, b }
    }

    impl Fixture {
        fn dir(&self) -> &Path {
            self.temp.path()
        }

        fn add(&self, node: &pki::IssuedNode, endpoint: &str) -> Result<Directory, DirectoryFileError> {
            add(self.dir(), &node.division, endpoint, &node.cert_path, &node.signing_pub_path)
        }

        /// The file as a node would see it: decoded and verified with the federation key.
        fn verified(&self) -> Directory {
            let signed = SignedDirectory::decode(fs::read(path(self.dir())).unwrap().as_slice()).unwrap();
            Directory::verify(signed, &federation_key(self.dir()).unwrap()).unwrap()
        }
    }

    #[test]
    fn add_replace_and_remove_bump_the_version() {
        let f = fixture();
        assert!(load(f.dir()).unwrap().is_none(), "no file is version 0");

        let v1 = f.add(&f.a, "https://10.0.0.7:7302").unwrap();
        assert_eq!(v1.version(), 1);
        let v2 = f.add(&f.b, "https://10.0.0.8:7302").unwrap();
        assert_eq!(v2.version(), 2);
        assert!(v2.issued_at_ms() >= v1.issued_at_ms());

        let v3 = f.add(&f.a, "https://10.0.0.9:7302").unwrap();
        assert_eq!(v3.version(), 3);
        let verified = f.verified();
        assert_eq!(verified.version(), 3);
        assert_eq!(verified.entries().count(), 2, "a division is listed once");
        let a = verified.get("410103007").unwrap();
        assert_eq!(a.endpoint, "https://10.0.0.9:7302");
        assert_eq!(a.tls_cert_sha256, f.a.cert_sha256);
        assert_eq!(verified.signing_key("410103007"), Some(f.a.signing_pub));
        assert_eq!(verified.division_of_cert(&f.b.cert_sha256), Some("411421"));
        assert_eq!(verified.route("411421100").unwrap().division, "411421");

        let v4 = remove(f.dir(), "411421").unwrap();
        assert_eq!(v4.version(), 4);
        let loaded = load(f.dir()).unwrap().unwrap();
        assert_eq!(loaded.version(), 4);
        assert_eq!(loaded.entries().map(|e| e.division.as_str()).collect::<Vec<_>>(), ["410103007"]);
        assert!(!path(f.dir()).with_extension("bin.tmp").exists());
    }

    #[test]
    fn bad_input_is_named_and_changes_nothing() {
        let f = fixture();
        f.add(&f.a, "https://10.0.0.7:7302").unwrap();
        let before = fs::read(path(f.dir())).unwrap();

        let err = f.add(&f.b, "http://10.0.0.8:7302").unwrap_err().to_string();
        assert!(err.starts_with("endpoint: \"http://10.0.0.8:7302\" must start with https://"), "{err}");
        let err = f.add(&f.b, "https://").unwrap_err().to_string();
        assert!(err.starts_with("endpoint: \"https://\""), "{err}");
        let err = add(f.dir(), "41142", "https://h:1", &f.b.cert_path, &f.b.signing_pub_path).unwrap_err();
        assert!(err.to_string().starts_with("division: \"41142\" must be 6"), "{err}");
        // The certificate of one node cannot be listed for another.
        let err = add(f.dir(), "411421", "https://h:1", &f.a.cert_path, &f.b.signing_pub_path).unwrap_err();
        assert!(err.to_string().contains("must be the certificate of 411421"), "{err}");
        let err = add(f.dir(), "410103", "https://h:1", &f.a.cert_path, &f.b.signing_pub_path).unwrap_err();
        assert!(err.to_string().contains("must be the certificate of 410103"), "a prefix is not a match: {err}");
        let err = add(f.dir(), "411421", "https://h:1", &f.b.signing_pub_path, &f.b.signing_pub_path).unwrap_err();
        assert!(
            err.to_string().starts_with("cert: ") && err.to_string().contains("must hold a PEM certificate"),
            "{err}"
        );
        let err = add(f.dir(), "411421", "https://h:1", &f.b.cert_path, &f.b.cert_path).unwrap_err();
        assert!(err.to_string().starts_with("signing-pub: "), "{err}");
        let err = remove(f.dir(), "411421").unwrap_err().to_string();
        assert_eq!(err, "division: \"411421\" is not in the directory");

        assert_eq!(fs::read(path(f.dir())).unwrap(), before);
    }

    #[test]
    fn a_file_not_signed_by_the_federation_is_refused() {
        let f = fixture();
        f.add(&f.a, "https://10.0.0.7:7302").unwrap();
        let mut bytes = fs::read(path(f.dir())).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(path(f.dir()), &bytes).unwrap();
        let err = load(f.dir()).unwrap_err().to_string();
        assert!(err.contains("does not verify with the federation key"), "{err}");
        assert!(f.add(&f.b, "https://10.0.0.8:7302").is_err(), "a change never builds on a bad file");
    }
}
