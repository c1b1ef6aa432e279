//! Mutual TLS between nodes. Every node certificate is issued by the federation CA, and
//! each side pins the other to the one certificate the signed directory lists for it: the
//! receiver looks the client's SHA-256 up in the directory (receiver.rs), and the sender
//! accepts a server only if its certificate chains to the CA, names the division it dials,
//! and has exactly the SHA-256 of that division's directory entry. A CA-issued certificate
//! that was rotated out of the directory, or issued to another division, gets nothing.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig, Uri};

use crate::config::PeerConfig;

/// A TCP connect and TLS handshake to a peer must finish within this, so a peer that
/// accepts and then stalls cannot hold a sender.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("config key {key}: cannot read {path}: {source}")]
    Read { key: &'static str, path: String, source: std::io::Error },
    #[error("config key {key}: {path}: {rule}")]
    Invalid { key: &'static str, path: String, rule: String },
}

/// This node's TLS identity and the federation CA.
#[derive(Debug, Clone)]
pub struct PeerTls {
    ca: Certificate,
    identity: Identity,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    provider: Arc<CryptoProvider>,
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read { key, path: path.display().to_string(), source })
}

fn invalid(key: &'static str, path: &Path, rule: impl Into<String>) -> TlsFileError {
    TlsFileError::Invalid { key, path: path.display().to_string(), rule: rule.into() }
}

fn certificates(key: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(key, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The staff API's TLS, when `api.tls_cert_file` is set: server-only (staff are not
/// identified by certificates).
pub fn staff_server(config: &crate::config::ApiConfig) -> Result<ServerTlsConfig, TlsFileError> {
    let cert_pem = read("api.tls_cert_file", &config.tls_cert_file)?;
    certificates("api.tls_cert_file", &config.tls_cert_file, &cert_pem)?;
    ldx_proto::identity::check_secret_mode(&config.tls_key_file)
        .map_err(|e| invalid("api.tls_key_file", &config.tls_key_file, e.to_string()))?;
    let key_pem = read("api.tls_key_file", &config.tls_key_file)?;
    PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| invalid("api.tls_key_file", &config.tls_key_file, format!("not a PEM private key: {e}")))?;
    Ok(ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem)).timeout(crate::listen::START_TIMEOUT))
}

/// How the CLI checks the staff API: the CA of `key` at `path` and the expected name.
pub fn staff_client(key: &'static str, path: &Path, server_name: &str) -> Result<ClientTlsConfig, TlsFileError> {
    let ca_pem = read(key, path)?;
    certificates(key, path, &ca_pem)?;
    Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name(server_name))
}

impl PeerTls {
    pub fn load(config: &PeerConfig) -> Result<Self, TlsFileError> {
        let ca_pem = read("peer.ca_file", &config.ca_file)?;
        let cert_pem = read("peer.cert_file", &config.cert_file)?;
        ldx_proto::identity::check_secret_mode(&config.key_file)
            .map_err(|e| invalid("peer.key_file", &config.key_file, e.to_string()))?;
        let key_pem = read("peer.key_file", &config.key_file)?;
        let mut roots = RootCertStore::empty();
        for ca in certificates("peer.ca_file", &config.ca_file, &ca_pem)? {
            roots.add(ca).map_err(|e| invalid("peer.ca_file", &config.ca_file, format!("not a usable CA: {e}")))?;
        }
        let chain = certificates("peer.cert_file", &config.cert_file, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| invalid("peer.key_file", &config.key_file, format!("not a PEM private key: {e}")))?;
        Ok(Self {
            ca: Certificate::from_pem(ca_pem),
            identity: Identity::from_pem(cert_pem, key_pem),
            roots: Arc::new(roots),
            chain,
            key: Arc::new(key),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }

    /// The federation CA's certificate: what the gateway's directory certificate is
    /// checked against.
    pub fn ca(&self) -> Certificate {
        self.ca.clone()
    }

    /// The peer API accepts only clients with a certificate from the federation CA (and
    /// then only the one the directory lists, checked per stream in receiver.rs).
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .timeout(crate::listen::START_TIMEOUT)
    }

    /// A connector that dials the node of `division` and accepts it only if it presents
    /// that division's certificate with SHA-256 `pinned` (from the directory).
    pub fn connector(&self, division: &str, pinned: [u8; 32]) -> Result<PinnedConnector, String> {
        let webpki = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
            .build()
            .map_err(|e| format!("the federation CA cannot verify servers: {e}"))?;
        let verifier = Arc::new(PinnedVerifier { webpki, pinned, division: division.to_owned() });
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| format!("this node's certificate and key do not make a TLS identity: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let name = ServerName::try_from(ldx_proto::identity::division_dns_name(division))
            .map_err(|e| format!("division {division:?} makes no DNS name: {e}"))?;
        Ok(PinnedConnector { config: Arc::new(config), name })
    }
}

/// The CA's verdict, then the directory's pin.
#[derive(Debug)]
struct PinnedVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    pinned: [u8; 32],
    division: String,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        let presented = ldx_proto::identity::cert_fingerprint(end_entity.as_ref());
        if presented != self.pinned {
            return Err(rustls::Error::General(format!(
                "the server's certificate (sha256 {}) is not the one the directory pins for {} (sha256 {})",
                hex::encode(presented),
                self.division,
                hex::encode(self.pinned)
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Dials `host:port` of the URI, then runs the pinned TLS handshake; both within
/// [`HANDSHAKE_TIMEOUT`]. For `Endpoint::connect_with_connector`.
#[derive(Debug, Clone)]
pub struct PinnedConnector {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, std::io::Error>> + Send>>;

impl tower_service::Service<Uri> for PinnedConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let name = self.name.clone();
        Box::pin(async move {
            let host = uri.host().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned());
            let (Some(host), Some(port)) = (host, uri.port_u16()) else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{uri} names no host and port"),
                ));
            };
            let handshake = async {
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                connector.connect(name, tcp).await
            };
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await.map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no TLS session within {} s", HANDSHAKE_TIMEOUT.as_secs()),
                )
            })??;
            Ok(TokioIo::new(stream))
        })
    }
}

/// The directory's `https://host:port` as the plain URI the connector is given: the
/// connector, not tonic, does the TLS.
pub fn plain_endpoint(endpoint: &str) -> Result<String, String> {
    endpoint
        .strip_prefix("https://")
        .map(|rest| format!("http://{rest}"))
        .ok_or_else(|| format!("endpoint {endpoint:?} must start with https://"))
}
