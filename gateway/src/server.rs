//! The gateway's gRPC server: `ldx.v1.Directory` serving the signed directory from the PKI
//! directory, plus standard health checking and reflection.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc};

use ldx_node::listen;
use ldx_proto::v1::directory_server::{self, DirectoryServer};
use ldx_proto::v1::{FetchDirectoryRequest, FetchDirectoryResponse};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, transport::Server};

use crate::directory::{DirectoryFileError, DirectoryService};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Directory(#[from] DirectoryFileError),
    #[error("gateway listener: {0}")]
    Listener(std::io::Error),
    #[error("{0}")]
    Ready(std::io::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("serving the directory: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("gateway identity: {0}")]
    Pki(#[from] crate::pki::PkiError),
    #[error(transparent)]
    History(#[from] crate::history::HistoryError),
}

/// Serves the directory of `pki_dir` on `listener` until `shutdown` resolves.
///
/// The listener speaks TLS with the gateway's certificate and plain HTTP/2 on one port
/// (see [`crate::directory_tls`]). What protects the directory's content is the
/// federation signature over it, which every node checks against its configured
/// `federation.pub`; TLS hides the traffic and keeps a party on the path from holding a
/// node's connection, and the signed `not_after` bounds how long a version can be kept
/// from a node.
pub async fn run(
    pki_dir: PathBuf,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    run_with_ready(pki_dir, listener, shutdown, |_| Ok(())).await
}

/// Like [`run`]; `ready` is called with the bound address once the directory loaded and
/// the services are about to accept requests (e.g. to write an address file). An error
/// from it stops the server before it serves.
pub async fn run_with_ready(
    pki_dir: PathBuf,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(SocketAddr) -> std::io::Result<()>,
) -> Result<(), ServerError> {
    run_with_metrics(pki_dir, listener, None, shutdown, ready).await
}

/// Where and how often the gateway gathers every node's status for `/metrics` and the
/// dashboard, and where it keeps their history.
#[derive(Debug)]
pub struct MetricsOptions {
    pub listener: TcpListener,
    pub collect_every: std::time::Duration,
    /// `None`: no history; the dashboard's chart stays empty.
    pub history: Option<crate::history::HistoryOptions>,
}

/// Like [`run_with_ready`]; with `metrics`, the gateway also asks every node of the
/// directory for its status over mutual TLS and serves, over plain HTTP on the metrics
/// listener, the federation's replication figures as Prometheus text on `GET /metrics`,
/// Prometheus service discovery of the nodes on `GET /api/sd` (see [`crate::sd`]) and the
/// operators' dashboard on `GET /` (see [`crate::dashboard`]).
pub async fn run_with_metrics(
    pki_dir: PathBuf,
    listener: TcpListener,
    metrics: Option<MetricsOptions>,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(SocketAddr) -> std::io::Result<()>,
) -> Result<(), ServerError> {
    // The directory listener and the HTTP one.
    listen::raise_open_files_limit(2);
    let service = DirectoryService::open(pki_dir)?;
    let version = service.current().map_or(0, |d| d.version());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut fresh_stop = stop_rx.clone();
    let fresh_task = tokio::spawn(crate::directory::keep_fresh(service.clone(), async move {
        let _ = fresh_stop.wait_for(|s| *s).await;
    }));
    let mut metrics_task = None;
    if let Some(options) = metrics {
        let history = match &options.history {
            Some(h) => Some(Arc::new(crate::history::History::open(&h.dir, h.retention)?)),
            None => None,
        };
        let nodes = Arc::new(crate::nodes::Nodes::load(service.pki_dir())?);
        let collector =
            crate::collector::Collector::start(service.clone(), nodes, options.collect_every, history, stop_rx.clone());
        let addr = options.listener.local_addr().map_err(ServerError::Listener)?;
        tracing::info!(metrics = %addr, "serving /metrics, /api/sd and the dashboard");
        let metrics_collector = collector.clone();
        let router = crate::dashboard::router(collector.clone()).merge(crate::sd::router(collector)).route(
            "/metrics",
            axum::routing::get(move || {
                let collector = metrics_collector.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        crate::collector::render(&collector.snapshot()),
                    )
                }
            }),
        );
        let mut stop = stop_rx.clone();
        metrics_task = Some(tokio::spawn(async move {
            let listener = listen::GuardedListener::new(
                options.listener,
                "gateway http",
                listen::Limits::default(),
                stop.clone(),
            )?;
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        }));
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<DirectoryServer<DirectoryService>>().await;
    let reflection_v1 = reflection_builder().build_v1()?;
    let reflection_v1alpha = reflection_builder().build_v1alpha()?;

    let addr = listener.local_addr().map_err(ServerError::Listener)?;
    // TLS with the gateway's certificate for nodes that dial https://, beside plain HTTP/2.
    let tls = match crate::pki::gateway_identity(service.pki_dir())
        .map_err(|e| e.to_string())
        .and_then(|(cert, key)| crate::directory_tls::server_config(&cert, &key))
    {
        Ok(config) => Some(config),
        Err(e) => {
            tracing::warn!(error = %e, "the directory is served without TLS (nodes must dial http://)");
            None
        }
    };
    tracing::info!(addr = %addr, pki = %service.pki_dir().display(), version, tls = tls.is_some(), "gateway serving the directory");
    ready(addr).map_err(ServerError::Ready)?;
    let served = Server::builder()
        .http2_keepalive_interval(Some(listen::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(listen::KEEPALIVE_TIMEOUT))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(DirectoryServer::new(service))
        .serve_with_incoming_shutdown(crate::directory_tls::incoming(listener, tls, stop_rx.clone()), shutdown)
        .await;
    let _ = stop_tx.send(true);
    let _ = fresh_task.await;
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    served?;
    tracing::info!("gateway stopped");
    Ok(())
}

fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ldx_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

#[tonic::async_trait]
impl directory_server::Directory for DirectoryService {
    #[tracing::instrument(skip(self, request), fields(known_version = request.get_ref().known_version))]
    async fn fetch(&self, request: Request<FetchDirectoryRequest>) -> Result<Response<FetchDirectoryResponse>, Status> {
        let known = request.get_ref().known_version;
        let newer = self.current().filter(|d| d.version() > known);
        tracing::debug!(sent = newer.as_ref().map(|d| d.version()), "directory fetch");
        Ok(Response::new(FetchDirectoryResponse { directory: newer.map(|d| d.signed().clone()) }))
    }
}

#[cfg(test)]
mod tests {
    use ldx_proto::v1::directory_client::DirectoryClient;
    use tonic::transport::Channel;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

    use ldx_proto::directory::Directory;

    use super::*;
    use crate::{directory, pki};

    #[tokio::test]
    async fn serves_newer_versions_and_picks_up_changes() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_owned();
        pki::init(&dir).unwrap();
        let a = pki::issue(&dir, "410103007").unwrap();
        let b = pki::issue(&dir, "411421").unwrap();
        directory::add(&dir, "410103007", "https://10.0.0.7:7302", &a.cert_path, &a.signing_pub_path).unwrap();
        let federation = directory::federation_key(&dir).unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(run_with_ready(
            dir.clone(),
            listener,
            async {
                let _ = stopped.await;
            },
            |addr| {
                let _ = addr_tx.send(addr);
                Ok(())
            },
        ));
        let addr = addr_rx.await.unwrap();
        let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let mut client = DirectoryClient::new(channel.clone());

        let fetch = async |client: &mut DirectoryClient<Channel>, known_version| {
            let response = client.fetch(FetchDirectoryRequest { known_version }).await.unwrap().into_inner();
            response.directory.map(|signed| Directory::verify(signed, &federation).unwrap().version())
        };
        assert_eq!(fetch(&mut client, 0).await, Some(1));
        assert_eq!(fetch(&mut client, 1).await, None, "a current caller gets nothing");
        assert_eq!(fetch(&mut client, 7).await, None);

        directory::add(&dir, "411421", "https://10.0.0.8:7302", &b.cert_path, &b.signing_pub_path).unwrap();
        assert_eq!(fetch(&mut client, 1).await, Some(2), "the changed file is re-read");

        // A broken file does not take the served directory down.
        std::fs::write(directory::path(&dir), b"garbage").unwrap();
        assert_eq!(fetch(&mut client, 0).await, Some(2));

        let health = HealthClient::new(channel)
            .check(HealthCheckRequest { service: ldx_proto::service_names::DIRECTORY.into() })
            .await
            .unwrap();
        assert_eq!(health.into_inner().status(), ServingStatus::Serving);

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_pki_dir_without_federation_key_fails_at_start() {
        let temp = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = run(temp.path().to_owned(), listener, std::future::pending()).await.unwrap_err().to_string();
        assert!(err.contains("federation.pub"), "{err}");
    }

    /// `GET path` over plain HTTP/1.1: the head and the body.
    async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), body.to_owned())
    }

    /// A gateway on port 0 serving `pki`, its HTTP side on port 0 too.
    async fn gateway(pki: &std::path::Path) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        let options =
            MetricsOptions { listener: http, collect_every: std::time::Duration::from_millis(50), history: None };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(run_with_metrics(
            pki.to_owned(),
            listener,
            Some(options),
            async {
                let _ = stopped.await;
            },
            move |_| {
                let _ = ready_tx.send(());
                Ok(())
            },
        ));
        ready_rx.await.unwrap();
        (http_addr, stop)
    }

    #[tokio::test]
    async fn service_discovery_of_an_empty_directory_is_an_empty_list() {
        let temp = tempfile::tempdir().unwrap();
        pki::init(temp.path()).unwrap();
        let (addr, _stop) = gateway(temp.path()).await;
        let (head, body) = get(addr, "/api/sd").await;
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
        assert_eq!(body, "[]");
    }

    #[tokio::test]
    async fn service_discovery_leaves_out_a_node_that_never_answered() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        pki::init(dir).unwrap();
        let node = pki::issue(dir, "411421").unwrap();
        // Nothing listens there: the node is in the directory but gives no status.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        directory::add(dir, "411421", &format!("https://{closed}"), &node.cert_path, &node.signing_pub_path).unwrap();
        let (addr, _stop) = gateway(dir).await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        // Once the collector has tried the node, the status page shows it down.
        loop {
            let (_, status) = get(addr, "/api/status").await;
            if status.contains("\"reachable\":false") && !status.contains("\"last_error\":\"\"") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the collector never tried the node: {status}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(get(addr, "/api/sd").await.1, "[]");
    }
}
