//! The federation PKI (`ldx-gateway pki …`): one CA that issues every node's TLS
//! certificate, the federation key that signs the directory, and the federation salt,
//! all made with rcgen and ed25519 so no openssl is needed.
//!
//! Layout of a PKI directory:
//!
//! ```text
//! ca.crt  ca.key  federation.key  federation.pub  federation.salt  directory.bin
//! nodes/<division>/node.crt  node.key  signing.key  signing.pub
//! ```

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Timelike, Utc};
use ldx_proto::identity::{self, KeyFileError, PublicKey, SignKey};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType,
};

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const FEDERATION_KEY: &str = "federation.key";
pub const FEDERATION_PUB: &str = "federation.pub";
pub const FEDERATION_SALT: &str = "federation.salt";
pub const NODES_DIR: &str = "nodes";
pub const NODE_CERT: &str = "node.crt";
pub const NODE_KEY: &str = "node.key";
pub const SIGNING_KEY: &str = "signing.key";
pub const SIGNING_PUB: &str = "signing.pub";
/// The gateway's own client identity, under the PKI directory.
pub const GATEWAY_DIR: &str = "gateway";
pub const GATEWAY_CERT: &str = "gateway.crt";
pub const GATEWAY_KEY: &str = "gateway.key";

/// Common name of the federation CA. The issuer of node certificates is rebuilt from
/// these parameters and the stored CA key, so they must never change for an existing CA.
const CA_COMMON_NAME: &str = "ldx federation CA";
const CA_YEARS: i32 = 10;
const NODE_YEARS: i32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path} already exists: refusing to overwrite an existing {what}")]
    Exists { path: String, what: &'static str },
    #[error("{field}: {value:?} {rule}")]
    Invalid { field: &'static str, value: String, rule: &'static str },
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path}: {rule}")]
    Format { path: String, rule: String },
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error(transparent)]
    Salt(#[from] ldx_node::crypto::KeyError),
    #[error(transparent)]
    Join(#[from] ldx_node::join::JoinError),
    #[error("generating {what}: {source}")]
    Generate { what: String, source: rcgen::Error },
}

/// Files of one issued node, and the identities that go into its directory entry.
#[derive(Debug, Clone)]
pub struct IssuedNode {
    pub division: String,
    pub dir: PathBuf,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub signing_key_path: PathBuf,
    pub signing_pub_path: PathBuf,
    pub signing_pub: PublicKey,
    /// SHA-256 of the certificate's DER: how the directory pins the node.
    pub cert_sha256: [u8; 32],
}

/// Where the files of `division`'s node live in a PKI directory.
pub fn node_dir(dir: &Path, division: &str) -> PathBuf {
    dir.join(NODES_DIR).join(division)
}

/// Checks that `value` is a node-level division code: 6 digits (county) or 9 digits
/// (street office or township).
pub fn validate_division(field: &'static str, value: &str) -> Result<(), PkiError> {
    if matches!(value.len(), 6 | 9) && value.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(PkiError::Invalid {
            field,
            value: value.to_owned(),
            rule: "must be 6 (county) or 9 (street office or township) ASCII digits",
        })
    }
}

/// Creates a new federation in `dir`: the CA, the federation signing key, the federation
/// salt and the gateway's client certificate. Refuses to touch a directory that already holds any of them.
pub fn init(dir: &Path) -> Result<(), PkiError> {
    fs::create_dir_all(dir).map_err(|source| PkiError::Write { path: dir.display().to_string(), source })?;
    let files = [CA_CERT, CA_KEY, FEDERATION_KEY, FEDERATION_PUB, FEDERATION_SALT];
    if let Some(existing) = files.iter().map(|f| dir.join(f)).find(|p| p.exists()) {
        return Err(PkiError::Exists { path: existing.display().to_string(), what: "federation CA" });
    }

    let ca_key = generate_key("the CA key")?;
    let mut params = ca_params();
    set_validity(&mut params, CA_YEARS);
    let ca_cert = params
        .self_signed(&ca_key)
        .map_err(|source| PkiError::Generate { what: "the CA certificate".into(), source })?;
    let federation = SignKey::generate();

    let mut created = Created::default();
    let result = (|| {
        created.write_new(&dir.join(CA_KEY), ca_key.serialize_pem().as_bytes(), true)?;
        created.write_new(&dir.join(CA_CERT), ca_cert.pem().as_bytes(), false)?;
        federation.write_new(&dir.join(FEDERATION_KEY), "ldx federation signing key (Ed25519): signs the directory")?;
        created.track(dir.join(FEDERATION_KEY));
        federation.public().write(&dir.join(FEDERATION_PUB), "ldx federation public key (Ed25519)")?;
        created.track(dir.join(FEDERATION_PUB));
        ldx_node::crypto::write_new_key_file(
            &dir.join(FEDERATION_SALT),
            "ldx federation salt: the same on every node, turns ID numbers into person keys",
        )?;
        created.track(dir.join(FEDERATION_SALT));
        // The gateway's client identity now, so a running gateway never needs `ca.key`.
        let (cert, key) = gateway_identity(dir)?;
        created.track(cert);
        created.track(key);
        Ok(())
    })();
    if result.is_err() {
        created.remove_all();
    }
    result
}

/// Issues the TLS certificate and signing key of `division`'s node, signed by the CA in
/// `dir` and valid from today for one year. Refuses to overwrite an existing node
/// directory.
pub fn issue(dir: &Path, division: &str) -> Result<IssuedNode, PkiError> {
    issue_node(dir, division, |params| set_validity(params, NODE_YEARS))
}

/// Issues `division`'s node as [`issue`] does and writes its join bundle to `bundle` (mode
/// 0600): the node's certificate and keys, the CA certificate, the federation's public key
/// and salt, and `gateway`, the directory address the node is to poll. Everything is
/// checked first; if the bundle cannot be written, the node just issued is removed again.
pub fn issue_with_bundle(dir: &Path, division: &str, bundle: &Path, gateway: &str) -> Result<IssuedNode, PkiError> {
    ldx_node::join::check_gateway(gateway)?;
    if bundle.exists() {
        return Err(PkiError::Exists { path: bundle.display().to_string(), what: "join bundle" });
    }
    let issued = issue(dir, division)?;
    let written = (|| {
        let joined = ldx_node::join::JoinBundle {
            format: ldx_node::join::FORMAT.to_owned(),
            division: division.to_owned(),
            gateway: gateway.to_owned(),
            ca_cert: read_to_string(&dir.join(CA_CERT))?,
            node_cert: read_to_string(&issued.cert_path)?,
            node_key: read_to_string(&issued.key_path)?,
            signing_key: read_to_string(&issued.signing_key_path)?,
            federation_pub: read_to_string(&dir.join(FEDERATION_PUB))?,
            federation_salt: read_to_string(&dir.join(FEDERATION_SALT))?,
        };
        joined.write_new(bundle)?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&issued.dir);
        return Err(e);
    }
    Ok(issued)
}

/// Issues `division`'s node as [`issue`] does, but with a certificate valid from
/// `not_before` to `not_after` (UTC, in whole seconds as X.509 records them) instead of
/// from today for one year.
///
/// For tests that need an expired or not-yet-valid certificate of the federation CA, and
/// for operators who deliberately back-date a certificate or issue one with a validity of
/// their choosing when renewing. The window is taken as given: it may lie wholly in the
/// past or the future.
pub fn issue_with_validity(
    dir: &Path,
    division: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<IssuedNode, PkiError> {
    let not_before = validity_bound("not_before", not_before)?;
    let not_after = validity_bound("not_after", not_after)?;
    if not_after <= not_before {
        return Err(PkiError::Invalid {
            field: "not_after",
            value: not_after.to_rfc3339(),
            rule: "must be later than not_before",
        });
    }
    issue_node(dir, division, |params| set_window(params, not_before, not_after))
}

/// What [`issue`] does, with the validity that `validity` writes into the certificate.
fn issue_node(
    dir: &Path,
    division: &str,
    validity: impl FnOnce(&mut CertificateParams),
) -> Result<IssuedNode, PkiError> {
    validate_division("division", division)?;
    let issuer = load_issuer(dir)?;
    let node = node_dir(dir, division);
    if node.exists() {
        return Err(PkiError::Exists { path: node.display().to_string(), what: "node certificate" });
    }

    let key = generate_key("the node key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, identity::division_dns_name(division));
    params.subject_alt_names = vec![
        SanType::URI(ia5(identity::division_uri(division))?),
        SanType::DnsName(ia5(identity::division_dns_name(division))?),
    ];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| PkiError::Generate { what: format!("the certificate of {division}"), source })?;
    let signing = SignKey::generate();

    let nodes = dir.join(NODES_DIR);
    fs::create_dir_all(&nodes).map_err(|source| PkiError::Write { path: nodes.display().to_string(), source })?;
    // `create_dir` fails if the directory appeared meanwhile, so two issues never mix.
    fs::create_dir(&node).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => {
            PkiError::Exists { path: node.display().to_string(), what: "node certificate" }
        }
        _ => PkiError::Write { path: node.display().to_string(), source },
    })?;
    let issued = IssuedNode {
        division: division.to_owned(),
        cert_path: node.join(NODE_CERT),
        key_path: node.join(NODE_KEY),
        signing_key_path: node.join(SIGNING_KEY),
        signing_pub_path: node.join(SIGNING_PUB),
        signing_pub: signing.public(),
        cert_sha256: identity::cert_fingerprint(cert.der()),
        dir: node.clone(),
    };
    let written = (|| {
        let mut created = Created::default();
        created.write_new(&issued.key_path, key.serialize_pem().as_bytes(), true)?;
        created.write_new(&issued.cert_path, cert.pem().as_bytes(), false)?;
        signing.write_new(&issued.signing_key_path, &format!("ldx node {division} signing key (Ed25519)"))?;
        signing
            .public()
            .write(&issued.signing_pub_path, &format!("ldx node {division} signing public key (Ed25519)"))?;
        Ok(())
    })();
    if written.is_err() {
        let _ = fs::remove_dir_all(&node);
    }
    written.map(|()| issued)
}

/// The gateway's certificate and key (URI SAN `ldx://gateway`, DNS name `gateway.ldx`),
/// with which it reads every node's `Monitor` over mutual TLS and serves the directory over
/// TLS; issued by the CA on first use.
pub fn gateway_identity(dir: &Path) -> Result<(PathBuf, PathBuf), PkiError> {
    let gateway = dir.join(GATEWAY_DIR);
    let (cert_path, key_path) = (gateway.join(GATEWAY_CERT), gateway.join(GATEWAY_KEY));
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let issuer = load_issuer(dir)?;
    let key = generate_key("the gateway key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "ldx gateway");
    params.subject_alt_names = vec![
        SanType::URI(ia5("ldx://gateway".to_owned())?),
        SanType::DnsName(ia5(identity::GATEWAY_DNS_NAME.to_owned())?),
    ];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // A client to the nodes' Monitor, and the server of the directory over TLS.
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, NODE_YEARS);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| PkiError::Generate { what: "the gateway certificate".into(), source })?;
    fs::create_dir_all(&gateway).map_err(|source| PkiError::Write { path: gateway.display().to_string(), source })?;
    let mut created = Created::default();
    let written = created
        .write_new(&key_path, key.serialize_pem().as_bytes(), true)
        .and_then(|()| created.write_new(&cert_path, cert.pem().as_bytes(), false));
    if written.is_err() {
        created.remove_all();
    }
    written.map(|()| (cert_path, key_path))
}

/// SHA-256 of the DER of the first certificate in a PEM file.
pub fn cert_sha256_of_pem_file(path: &Path) -> Result<[u8; 32], PkiError> {
    let der = read_cert_der(path)?;
    Ok(identity::cert_fingerprint(&der))
}

/// DER bytes of the first certificate in a PEM file.
pub fn read_cert_der(path: &Path) -> Result<Vec<u8>, PkiError> {
    let pem = read_to_string(path)?;
    first_certificate_der(&pem).ok_or_else(|| PkiError::Format {
        path: path.display().to_string(),
        rule: "must hold a PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
    })
}

/// Decodes the first `CERTIFICATE` block of a PEM text.
pub fn first_certificate_der(pem: &str) -> Option<Vec<u8>> {
    let mut lines = pem.lines().map(str::trim).skip_while(|l| *l != "-----BEGIN CERTIFICATE-----").skip(1);
    let mut body = String::new();
    for line in lines.by_ref() {
        if line == "-----END CERTIFICATE-----" {
            return base64_decode(&body).filter(|der| !der.is_empty());
        }
        body.push_str(line);
    }
    None
}

/// Standard base64 with padding, as PEM uses it. The lockfile has no base64 crate that
/// the gateway may depend on, and PEM needs nothing more than this.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i + 1 == bytes.len() / 4;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let group = n.to_be_bytes();
        out.extend_from_slice(&group[1..4 - pad]);
    }
    Some(out)
}

/// The CA's name, constraints and usages. Deterministic, so that the issuer rebuilt from
/// them writes exactly the subject of the stored `ca.crt` into node certificates.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
    // Path length 0: the CA signs node certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

/// Loads the CA key and checks that it belongs to `ca.crt` (whose DER then holds the
/// key's public point), so node certificates always chain to the CA nodes trust.
fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let key_path = dir.join(CA_KEY);
    let cert_path = dir.join(CA_CERT);
    let key = KeyPair::from_pem(&read_to_string(&key_path)?)
        .map_err(|e| PkiError::Format { path: key_path.display().to_string(), rule: format!("not a PEM key: {e}") })?;
    let ca_der = read_cert_der(&cert_path)?;
    if !contains(&ca_der, key.public_key_raw()) {
        return Err(PkiError::Format {
            path: key_path.display().to_string(),
            rule: format!("is not the key of {}", cert_path.display()),
        });
    }
    let name = format!("CN={CA_COMMON_NAME}");
    if !contains(&ca_der, CA_COMMON_NAME.as_bytes()) {
        return Err(PkiError::Format {
            path: cert_path.display().to_string(),
            rule: format!("is not an ldx federation CA (subject {name} expected)"),
        });
    }
    Ok(Issuer::new(ca_params(), key))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn generate_key(what: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| PkiError::Generate { what: what.into(), source })
}

fn ia5(name: String) -> Result<rcgen::string::Ia5String, PkiError> {
    name.clone().try_into().map_err(|source| PkiError::Generate { what: format!("the name {name}"), source })
}

/// Valid from the start of today (UTC, so a peer whose clock is a little slow still
/// accepts it) to the same day `years` later (28 February for a 29 February start).
fn set_validity(params: &mut CertificateParams, years: i32) {
    let today = Utc::now().date_naive();
    let end = NaiveDate::from_ymd_opt(today.year() + years, today.month(), today.day())
        .or_else(|| NaiveDate::from_ymd_opt(today.year() + years, today.month(), 28))
        .expect("day 28 exists in every month");
    set_window(params, today.and_time(NaiveTime::MIN).and_utc(), end.and_time(NaiveTime::MIN).and_utc());
}

/// Sets the validity to `not_before..=not_after`, to the second. Both must lie within the
/// years 1 to 9999 (as [`validity_bound`] ensures).
fn set_window(params: &mut CertificateParams, not_before: DateTime<Utc>, not_after: DateTime<Utc>) {
    // rcgen takes `time` date-times without re-exporting the crate: build them from the
    // calendar date it can make and the seconds since midnight.
    let at = |t: DateTime<Utc>| {
        // Month and day come from a valid date, so they fit in u8.
        rcgen::date_time_ymd(t.year(), t.month() as u8, t.day() as u8)
            + Duration::from_secs(u64::from(t.num_seconds_from_midnight()))
    };
    params.not_before = at(not_before);
    params.not_after = at(not_after);
}

/// `time` rounded down to the second, or refused if a certificate cannot hold it
/// (GeneralizedTime has four digits for the year).
fn validity_bound(field: &'static str, time: SystemTime) -> Result<DateTime<Utc>, PkiError> {
    let secs = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).ok(),
        // Before 1970 too, a fraction of a second rounds down.
        Err(before) => {
            let before = before.duration();
            i64::try_from(before.as_secs()).ok().map(|s| -s - i64::from(before.subsec_nanos() > 0))
        }
    };
    secs.and_then(|secs| DateTime::from_timestamp(secs, 0)).filter(|t| (1..=9999).contains(&t.year())).ok_or_else(
        || PkiError::Invalid { field, value: format!("{time:?}"), rule: "must lie within the years 1 to 9999" },
    )
}

fn read_to_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Read { path: path.display().to_string(), source })
}

/// Files written by one operation, removed again if the operation fails halfway.
#[derive(Default)]
struct Created(Vec<PathBuf>);

impl Created {
    fn track(&mut self, path: PathBuf) {
        self.0.push(path);
    }

    /// Writes a file that must not exist yet; `secret` files are readable by the owner only.
    fn write_new(&mut self, path: &Path, bytes: &[u8], secret: bool) -> Result<(), PkiError> {
        let shown = || path.display().to_string();
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, if secret { 0o600 } else { 0o644 });
        let mut file = options.open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => PkiError::Exists { path: shown(), what: "file" },
            _ => PkiError::Write { path: shown(), source },
        })?;
        self.track(path.to_owned());
        file.write_all(bytes).and_then(|()| file.sync_all()).map_err(|source| PkiError::Write { path: shown(), source })
    }

    fn remove_all(&self) {
        for path in &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

    use super::*;

    fn new_pki() -> tempfile::TempDir {
        let temp = tempfile::tempdir().unwrap();
        init(temp.path()).unwrap();
        temp
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_and_issue_write_every_file_with_private_keys_private() {
        let temp = new_pki();
        let dir = temp.path();
        assert!(read_to_string(&dir.join(CA_CERT)).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(read_to_string(&dir.join(CA_KEY)).unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
        let federation = SignKey::load(&dir.join(FEDERATION_KEY)).unwrap();
        assert_eq!(PublicKey::load(&dir.join(FEDERATION_PUB)).unwrap(), federation.public());
        let salt = read_to_string(&dir.join(FEDERATION_SALT)).unwrap();
        let lines: Vec<&str> = salt.lines().collect();
        assert!(lines[0].starts_with("# "), "{salt}");
        assert!(lines[1].len() == 64 && lines[1].bytes().all(|b| b.is_ascii_hexdigit()), "{salt}");

        let node = issue(dir, "410103007").unwrap();
        assert_eq!(node.dir, node_dir(dir, "410103007"));
        assert_eq!(node.cert_path, dir.join("nodes/410103007/node.crt"));
        assert!(read_to_string(&node.key_path).unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(SignKey::load(&node.signing_key_path).unwrap().public(), node.signing_pub);
        assert_eq!(PublicKey::load(&node.signing_pub_path).unwrap(), node.signing_pub);
        let der = read_cert_der(&node.cert_path).unwrap();
        assert_eq!(identity::cert_fingerprint(&der), node.cert_sha256);
        assert_eq!(cert_sha256_of_pem_file(&node.cert_path).unwrap(), node.cert_sha256);
        assert!(contains(&der, b"ldx://division/410103007"));
        assert!(contains(&der, b"410103007.division.ldx"));
        assert!(contains(&der, CA_COMMON_NAME.as_bytes()), "the issuer name is in the node certificate");

        #[cfg(unix)]
        {
            for secret in [dir.join(CA_KEY), dir.join(FEDERATION_KEY), dir.join(FEDERATION_SALT)] {
                assert_eq!(mode(&secret), 0o600, "{}", secret.display());
            }
            assert_eq!(mode(&node.key_path), 0o600);
            assert_eq!(mode(&node.signing_key_path), 0o600);
            assert_eq!(mode(&node.cert_path), 0o644);
        }
    }

    #[test]
    fn an_existing_ca_or_node_is_never_overwritten() {
        let temp = new_pki();
        let ca = fs::read(temp.path().join(CA_CERT)).unwrap();
        let err = init(temp.path()).unwrap_err().to_string();
        assert!(err.contains(&temp.path().join(CA_CERT).display().to_string()), "{err}");
        assert!(err.contains("refusing to overwrite"), "{err}");
        assert_eq!(fs::read(temp.path().join(CA_CERT)).unwrap(), ca);

        let first = issue(temp.path(), "411421").unwrap();
        let err = issue(temp.path(), "411421").unwrap_err().to_string();
        assert!(err.contains("refusing to overwrite") && err.contains("nodes/411421"), "{err}");
        assert_eq!(cert_sha256_of_pem_file(&first.cert_path).unwrap(), first.cert_sha256);
    }

    #[test]
    fn a_bad_division_is_named_with_its_rule() {
        let temp = new_pki();
        for bad in ["41010", "4101030071", "41010300a", "", "４１０１０３"] {
            let err = issue(temp.path(), bad).unwrap_err().to_string();
            assert!(err.starts_with(&format!("division: {bad:?} must be 6 (county) or 9")), "{err}");
        }
        assert!(!temp.path().join(NODES_DIR).exists(), "nothing is written for a refused division");
    }

    #[test]
    fn issue_needs_the_matching_ca_key() {
        let temp = new_pki();
        let other = new_pki();
        fs::copy(other.path().join(CA_KEY), temp.path().join(CA_KEY)).unwrap();
        let err = issue(temp.path(), "410103007").unwrap_err().to_string();
        assert!(err.contains("is not the key of"), "{err}");
        let err = issue(tempfile::tempdir().unwrap().path(), "410103007").unwrap_err().to_string();
        assert!(err.contains("cannot read") && err.contains(CA_KEY), "{err}");
    }

    /// The DER of an X.509 `Validity`: two UTCTimes (`YYMMDDHHMMSSZ`) or GeneralizedTimes
    /// (`YYYYMMDDHHMMSSZ`).
    fn validity_der(not_before: &str, not_after: &str) -> Vec<u8> {
        let time = |text: &str| {
            let tag = if text.len() == 13 { 0x17 } else { 0x18 };
            [&[tag, text.len() as u8][..], text.as_bytes()].concat()
        };
        let body = [time(not_before), time(not_after)].concat();
        [&[0x30, body.len() as u8][..], &body].concat()
    }

    fn utc(rfc3339: &str) -> SystemTime {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().into()
    }

    #[test]
    fn issue_with_validity_writes_the_window_asked_for() {
        let temp = new_pki();
        let dir = temp.path();
        let expired =
            issue_with_validity(dir, "410103007", utc("2020-01-01T00:00:00Z"), utc("2021-01-01T00:00:00Z")).unwrap();
        let der = read_cert_der(&expired.cert_path).unwrap();
        assert!(contains(&der, &validity_der("200101000000Z", "210101000000Z")), "{der:02x?}");
        // Otherwise what `issue` makes: the same files, names and issuer.
        assert_eq!(expired.dir, node_dir(dir, "410103007"));
        assert_eq!(identity::cert_fingerprint(&der), expired.cert_sha256);
        assert_eq!(PublicKey::load(&expired.signing_pub_path).unwrap(), expired.signing_pub);
        assert!(read_to_string(&expired.key_path).unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(contains(&der, b"ldx://division/410103007") && contains(&der, b"410103007.division.ldx"));
        assert!(contains(&der, CA_COMMON_NAME.as_bytes()), "the issuer name is in the node certificate");

        // Seconds are kept and fractions dropped, before 1970 too; from 2050 on, X.509
        // wants a GeneralizedTime.
        let odd =
            issue_with_validity(dir, "411421", utc("1969-07-20T20:17:40.5Z"), utc("2050-01-01T00:00:01.999Z")).unwrap();
        let der = read_cert_der(&odd.cert_path).unwrap();
        assert!(contains(&der, &validity_der("690720201740Z", "20500101000001Z")), "{der:02x?}");

        let today = read_cert_der(&issue(dir, "410103003").unwrap().cert_path).unwrap();
        let midnight = Utc::now().date_naive().format("%y%m%d000000Z").to_string();
        assert!(contains(&today, midnight.as_bytes()), "issue still starts at midnight today");
    }

    #[test]
    fn issue_with_validity_refuses_a_window_no_certificate_can_hold() {
        let temp = new_pki();
        let start = utc("2020-01-01T00:00:00Z");
        let refused = |not_before, not_after| {
            let err = issue_with_validity(temp.path(), "410103007", not_before, not_after).unwrap_err();
            assert!(matches!(err, PkiError::Invalid { .. }), "{err:?}");
            err.to_string()
        };
        let err = refused(start, start);
        assert_eq!(err, r#"not_after: "2020-01-01T00:00:00+00:00" must be later than not_before"#);
        // The same second once the fraction is dropped.
        let err = refused(start, start + Duration::from_millis(999));
        assert!(err.ends_with("must be later than not_before"), "{err}");
        let err = refused(utc("2021-01-01T00:00:00Z"), start);
        assert!(err.ends_with("must be later than not_before"), "{err}");
        let year_10000 = utc("9999-12-31T23:59:59Z") + Duration::from_secs(1);
        let err = refused(start, year_10000);
        assert!(err.starts_with("not_after: ") && err.ends_with("must lie within the years 1 to 9999"), "{err}");
        let year_0 = UNIX_EPOCH - Duration::from_secs(62_135_596_801);
        let err = refused(year_0, start);
        assert!(err.starts_with("not_before: ") && err.ends_with("must lie within the years 1 to 9999"), "{err}");
        assert!(!temp.path().join(NODES_DIR).exists(), "nothing is written for a refused window");
    }

    #[test]
    fn pem_certificates_decode() {
        assert_eq!(base64_decode(""), Some(vec![]));
        assert_eq!(base64_decode("Zg=="), Some(b"f".to_vec()));
        assert_eq!(base64_decode("Zm8="), Some(b"fo".to_vec()));
        assert_eq!(base64_decode("Zm9vYmFy"), Some(b"foobar".to_vec()));
        assert_eq!(base64_decode("+/+/"), Some(vec![0xfb, 0xff, 0xbf]));
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9v!mFy"] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
        let pem = "junk\n-----BEGIN CERTIFICATE-----\nZm9v\r\nYmFy\n-----END CERTIFICATE-----\n";
        assert_eq!(first_certificate_der(pem), Some(b"foobar".to_vec()));
        assert_eq!(first_certificate_der("-----BEGIN CERTIFICATE-----\nZm9v\n"), None);
        assert_eq!(first_certificate_der("-----BEGIN PRIVATE KEY-----\nZm9v\n-----END PRIVATE KEY-----\n"), None);
    }

    struct Pem {
        cert: String,
        key: String,
    }

    fn pem(node: &IssuedNode) -> Pem {
        Pem { cert: read_to_string(&node.cert_path).unwrap(), key: read_to_string(&node.key_path).unwrap() }
    }

    /// Serves gRPC health over mutual TLS as `server`, trusting clients of `ca`.
    async fn serve_health(server: &Pem, ca: &str) -> (u16, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&server.cert, &server.key))
            .client_ca_root(Certificate::from_pem(ca));
        let (_, health) = tonic_health::server::health_reporter();
        let router = Server::builder().tls_config(tls).unwrap().add_service(health);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            let _ = stopped.await;
        }));
        (port, stop)
    }

    /// Dials `port` as `client`, trusting `ca` and expecting the server to be `server_division`,
    /// and asks for its health.
    async fn check_health(port: u16, client: &Pem, ca: &str, server_division: &str) -> Result<ServingStatus, String> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(&client.cert, &client.key))
            .domain_name(identity::division_dns_name(server_division));
        let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(5));
        let channel: Channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest { service: String::new() })
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok(response.into_inner().status())
    }

    #[tokio::test]
    async fn issued_certificates_authenticate_both_sides_of_mutual_tls() {
        let temp = new_pki();
        let ca = read_to_string(&temp.path().join(CA_CERT)).unwrap();
        let a = pem(&issue(temp.path(), "410103007").unwrap());
        let b = pem(&issue(temp.path(), "411421").unwrap());
        let (port, _stop) = serve_health(&a, &ca).await;

        assert_eq!(check_health(port, &b, &ca, "410103007").await, Ok(ServingStatus::Serving));

        // The server's certificate names only its own division.
        let err = check_health(port, &b, &ca, "410103003").await.unwrap_err();
        assert!(err.contains("certificate") || err.contains("Certificate"), "{err}");

        // A client certificate from another federation's CA is turned away.
        let foreign = new_pki();
        let stranger = pem(&issue(foreign.path(), "411421").unwrap());
        let err = check_health(port, &stranger, &ca, "410103007").await.unwrap_err();
        // The server's handshake refuses it: the foreign CA bears the same name, so its
        // signature is what fails (DecryptError), not the issuer lookup.
        assert!(err.contains("received fatal alert: DecryptError") || err.contains("UnknownCA"), "{err}");

        // And a client trusting another CA does not accept the server.
        let foreign_ca = read_to_string(&foreign.path().join(CA_CERT)).unwrap();
        let err = check_health(port, &stranger, &foreign_ca, "410103007").await.unwrap_err();
        assert!(err.contains("InvalidCertificate(BadSignature)"), "{err}");
    }

    /// Mutual TLS refuses a certificate with an expired validity before it looks for the
    /// issuer, so expiry alone cannot show that a back-dated certificate chains to the CA:
    /// the same certificate is first used while valid, then again once expired.
    #[tokio::test]
    async fn a_certificate_issued_with_validity_chains_to_the_ca_until_it_expires() {
        let temp = new_pki();
        let ca = read_to_string(&temp.path().join(CA_CERT)).unwrap();
        let now = SystemTime::now();
        let ends = now + Duration::from_secs(4);
        let short = issue_with_validity(temp.path(), "410103007", now - Duration::from_secs(86_400), ends).unwrap();
        let client = pem(&issue(temp.path(), "411421").unwrap());
        let (port, _stop) = serve_health(&pem(&short), &ca).await;
        assert_eq!(check_health(port, &client, &ca, "410103007").await, Ok(ServingStatus::Serving));

        // Waiting for the wall clock, which TLS reads, to pass the end of the validity.
        let after = ends + Duration::from_secs(1);
        tokio::time::sleep(after.duration_since(SystemTime::now()).unwrap_or_default()).await;
        let err = check_health(port, &client, &ca, "410103007").await.unwrap_err();
        assert!(err.contains("Expired"), "{err}");
    }
}
