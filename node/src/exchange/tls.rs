//! Mutual TLS between nodes: every node certificate is issued by the federation CA, and a
//! client dials a node by the DNS name its certificate carries for its division.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::PeerConfig;

#[derive(Debug, thiserror::Error)]
#[error("config key {key}: cannot read {path}: {source}")]
pub struct TlsFileError {
    pub key: &'static str,
    pub path: String,
    pub source: std::io::Error,
}

/// This node's TLS identity and the federation CA.
#[derive(Debug, Clone)]
pub struct PeerTls {
    ca: Certificate,
    identity: Identity,
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError { key, path: path.display().to_string(), source })
}

impl PeerTls {
    pub fn load(config: &PeerConfig) -> Result<Self, TlsFileError> {
        let ca = Certificate::from_pem(read("peer.ca_file", &config.ca_file)?);
        let cert = read("peer.cert_file", &config.cert_file)?;
        let key = read("peer.key_file", &config.key_file)?;
        Ok(Self { ca, identity: Identity::from_pem(cert, key) })
    }

    /// The peer API accepts only clients with a certificate from the federation CA.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(self.identity.clone()).client_ca_root(self.ca.clone())
    }

    /// Dials the node of `division`, which must present that division's certificate.
    pub fn client(&self, division: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(ldx_proto::identity::division_dns_name(division))
    }
}
