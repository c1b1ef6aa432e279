//! Connections to the nodes of the directory: the gateway's side of mutual TLS, and one
//! channel per node kept from one collection round to the next (a round reuses the open
//! HTTP/2 connection instead of a TLS handshake per node per round). The collector, the
//! dashboard's assessment and service discovery all reach nodes through here.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ldx_proto::identity::KeyFileError;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::pki::{self, PkiError};

/// How long connecting to a node may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A kept connection is pinged this often while idle, so one whose node vanished without
/// closing it is noticed and replaced rather than waited on.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway's side of mutual TLS towards nodes: the federation CA and the gateway's
/// client certificate (issued on first use).
#[derive(Debug, Clone)]
pub struct GatewayTls {
    ca: Certificate,
    identity: Identity,
}

impl GatewayTls {
    pub fn load(pki_dir: &Path) -> Result<Self, PkiError> {
        let (cert, key) = pki::gateway_identity(pki_dir)?;
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| PkiError::Read { path: path.display().to_string(), source })
        };
        let ca = Certificate::from_pem(read(&pki_dir.join(pki::CA_CERT))?);
        ldx_proto::identity::check_secret_mode(&key).map_err(KeyFileError::from)?;
        let identity = Identity::from_pem(read(&cert)?, read(&key)?);
        Ok(Self { ca, identity })
    }

    /// The client config for node `division`: its certificate must name that division.
    pub fn for_node(&self, division: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(ldx_proto::identity::division_dns_name(division))
    }
}

/// One mutual-TLS channel per node, by division. A channel connects on first use and,
/// after its connection breaks, again on the next call; it is replaced only when the
/// directory moves the node to another endpoint.
#[derive(Debug)]
pub struct Nodes {
    tls: GatewayTls,
    channels: Mutex<HashMap<String, Kept>>,
    opened: AtomicU64,
}

#[derive(Debug)]
struct Kept {
    endpoint: String,
    channel: Channel,
}

impl Nodes {
    pub fn new(tls: GatewayTls) -> Self {
        Self { tls, channels: Mutex::default(), opened: AtomicU64::new(0) }
    }

    /// Nodes reached with the gateway identity of `pki_dir` (issued on first use).
    pub fn load(pki_dir: &Path) -> Result<Self, PkiError> {
        Ok(Self::new(GatewayTls::load(pki_dir)?))
    }

    /// The channel to `division` at `endpoint`, or why there is none, in words fit for an
    /// operator (the gateway shows them per node).
    pub fn channel(&self, division: &str, endpoint: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(kept) = channels.get(division).filter(|k| k.endpoint == endpoint) {
            return Ok(kept.channel.clone());
        }
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| format!("endpoint {endpoint:?}: {e}"))?
            .tls_config(self.tls.for_node(division))
            .map_err(|e| format!("TLS: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .connect_lazy();
        self.opened.fetch_add(1, Ordering::Relaxed);
        channels.insert(division.to_owned(), Kept { endpoint: endpoint.to_owned(), channel: channel.clone() });
        Ok(channel)
    }

    /// Closes the channels of nodes for which `keep` is false (gone from the directory).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|d, _| keep(d));
    }

    /// Channels opened so far: one per node and endpoint, however many rounds ran.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

/// Why a node's Status gives no address Prometheus can scrape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsAddressError {
    #[error("metrics_address: empty; the node serves no /metrics (its metrics.listen is unset)")]
    Missing,
    #[error("metrics_address: {value:?} must be an IP address and a port other than 0, like 10.0.0.7:9301")]
    Malformed { value: String },
    #[error(
        "metrics_address: {value:?} is bound to every interface and the directory endpoint {endpoint:?} names no host to use instead"
    )]
    NoHost { value: String, endpoint: String },
}

/// The `host:port` Prometheus scrapes for a node that reports `address` as its bound
/// `/metrics` address and is listed at `endpoint` in the directory. A node bound to every
/// interface (`0.0.0.0`, `::`) is scraped at its endpoint's host.
pub fn metrics_target(address: &str, endpoint: &str) -> Result<String, MetricsAddressError> {
    if address.is_empty() {
        return Err(MetricsAddressError::Missing);
    }
    let addr: SocketAddr = address.parse().map_err(|_| MetricsAddressError::Malformed { value: address.to_owned() })?;
    if addr.port() == 0 {
        return Err(MetricsAddressError::Malformed { value: address.to_owned() });
    }
    if !addr.ip().is_unspecified() {
        return Ok(addr.to_string());
    }
    let no_host = || MetricsAddressError::NoHost { value: address.to_owned(), endpoint: endpoint.to_owned() };
    let uri: axum::http::Uri = endpoint.parse().map_err(|_| no_host())?;
    let host = uri.host().ok_or_else(no_host)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    Ok(match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, addr.port()).to_string(),
        Err(_) if !host.is_empty() => format!("{host}:{}", addr.port()),
        Err(_) => return Err(no_host()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_channel_per_node_is_kept_until_its_endpoint_changes() {
        let temp = tempfile::tempdir().unwrap();
        pki::init(temp.path()).unwrap();
        let nodes = Nodes::load(temp.path()).unwrap();
        for _ in 0..5 {
            nodes.channel("411421", "https://127.0.0.1:7302").unwrap();
            nodes.channel("410103007", "https://127.0.0.1:7303").unwrap();
        }
        assert_eq!(nodes.opened(), 2, "rounds reuse the channels");
        nodes.channel("411421", "https://127.0.0.1:7304").unwrap();
        assert_eq!(nodes.opened(), 3, "a node moved to another endpoint gets a new channel");
        nodes.retain(|d| d != "410103007");
        nodes.channel("410103007", "https://127.0.0.1:7303").unwrap();
        assert_eq!(nodes.opened(), 4, "a node dropped from the directory and added back is connected anew");
        let err = nodes.channel("411421", "not a uri").unwrap_err();
        assert!(err.starts_with("endpoint \"not a uri\""), "{err}");
    }

    #[test]
    fn a_bound_address_is_scraped_as_is_and_an_unspecified_one_at_the_endpoints_host() {
        let endpoint = "https://10.0.0.7:7302";
        assert_eq!(metrics_target("10.0.0.9:9301", endpoint).unwrap(), "10.0.0.9:9301");
        assert_eq!(metrics_target("[fd00::9]:9301", endpoint).unwrap(), "[fd00::9]:9301");
        assert_eq!(metrics_target("0.0.0.0:9301", endpoint).unwrap(), "10.0.0.7:9301");
        assert_eq!(metrics_target("[::]:9301", endpoint).unwrap(), "10.0.0.7:9301");
        assert_eq!(metrics_target("0.0.0.0:9301", "https://[fd00::7]:7302").unwrap(), "[fd00::7]:9301");
        assert_eq!(metrics_target("0.0.0.0:9301", "https://node-7.example:7302").unwrap(), "node-7.example:9301");
    }

    #[test]
    fn missing_and_malformed_addresses_are_refused_with_the_field_and_the_rule() {
        let endpoint = "https://10.0.0.7:7302";
        assert_eq!(metrics_target("", endpoint), Err(MetricsAddressError::Missing));
        for bad in ["localhost", "10.0.0.7", "10.0.0.7:0", "10.0.0.7:99999", "http://10.0.0.7:9301"] {
            let err = metrics_target(bad, endpoint).unwrap_err();
            assert_eq!(err, MetricsAddressError::Malformed { value: bad.into() });
            assert!(err.to_string().starts_with(&format!("metrics_address: {bad:?} must be")), "{err}");
        }
        let err = metrics_target("0.0.0.0:9301", "not a uri").unwrap_err();
        assert!(matches!(err, MetricsAddressError::NoHost { .. }), "{err:?}");
    }
}
