//! The directory listener speaks TLS and plain HTTP/2 on one port. A node that dials
//! `https://` gets TLS with the gateway's certificate (issued by the federation CA, DNS
//! name `gateway.ldx`), so no party on the path sees which version it holds or can hold a
//! stream open on a forged connection; `http://` (health checks, nodes configured before)
//! still works. The first byte tells them apart: a TLS connection starts with a handshake
//! record (0x16), HTTP/2 with its preface (`P`).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ldx_node::listen::{self, Guarded};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The TLS record type of a handshake: the first byte of every TLS connection.
const TLS_HANDSHAKE: u8 = 0x16;

/// The server side of the gateway's certificate, for the directory listener.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    ldx_proto::identity::check_secret_mode(key).map_err(|e| e.to_string())?;
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the gateway's certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// One connection of the directory listener.
#[derive(Debug)]
pub enum DirectoryIo {
    Plain(Guarded),
    Tls(Box<TlsStream<Guarded>>),
}

/// Accepts on `listener` within [`listen`]'s limits and deadlines, and completes the TLS
/// handshake of the connections that start one (when `tls` is set), each within
/// [`listen::START_TIMEOUT`] and without holding up the others.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> ReceiverStream<io::Result<DirectoryIo>> {
    let mut accepted = listen::incoming(listener, "gateway", listen::Limits::default(), stop);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(Ok(conn)) = accepted.next().await {
            let (tx, tls) = (tx.clone(), tls.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(listen::START_TIMEOUT, open(conn, tls)).await {
                    Ok(Ok(io)) => {
                        let _ = tx.send(Ok(io)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "directory connection refused"),
                    Err(_) => tracing::debug!("directory connection did not start in time"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

async fn open(conn: Guarded, tls: Option<Arc<rustls::ServerConfig>>) -> io::Result<DirectoryIo> {
    let mut first = [0u8; 1];
    let n = conn.peek(&mut first).await?;
    match tls {
        Some(config) if n == 1 && first[0] == TLS_HANDSHAKE => {
            Ok(DirectoryIo::Tls(Box::new(TlsAcceptor::from(config).accept(conn).await?)))
        }
        _ => Ok(DirectoryIo::Plain(conn)),
    }
}

impl AsyncRead for DirectoryIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for DirectoryIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_flush(cx),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connected for DirectoryIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            Self::Plain(io) => io.connect_info(),
            Self::Tls(io) => io.get_ref().0.connect_info(),
        }
    }
}
