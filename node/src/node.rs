//! One running node: opens its keys and store, serves the staff API on the listener it is
//! given and, when the config names a peer listener, the peer API with its channels; stops
//! cleanly when `shutdown` resolves.

use std::{future::Future, path::Path, sync::Arc, time::Duration};

use ldx_proto::identity::{KeyFileError, PublicKey, SignKey};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::crypto::{DataKey, FederationSalt, KeyError};
use crate::directory::{DirectoryWatch, DirectoryWatchError};
use crate::exchange::Stats;
use crate::exchange::guard::{Admit, PeerGuard};
use crate::exchange::receiver::ExchangeService;
use crate::exchange::sender::{SenderContext, supervise};
use crate::exchange::tls::{PeerTls, TlsFileError};
use crate::grpc::assessment::AssessmentService;
use crate::grpc::monitor::MonitorService;
use crate::grpc::registry::RegistryService;
use crate::listen;
use crate::registry::{ExchangeHooks, Registry, ReportHooks};
use crate::storage::{StorageError, Store};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("config key {key}: {source}")]
    Key { key: &'static str, source: KeyError },
    #[error("config key {key}: {source}")]
    SigningKey { key: &'static str, source: KeyFileError },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsFileError),
    #[error("directory: {0}")]
    Directory(#[from] DirectoryWatchError),
    #[error("cannot open the store in {path}: {source}")]
    Store { path: String, source: StorageError },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(
        "the store still cannot write although the disk has space again ({reason}), and it could not \
         be reopened in place; the node stopped so that a restart reopens it (nothing acknowledged is lost)"
    )]
    StoreStuck { reason: String },
}

/// Creates the data directory readable by the node's user only (0700), and narrows one that
/// others may enter. Where the node may not change the mode (a volume owned by another
/// user), it says so and goes on: the files inside are still its own.
fn private_dir(dir: &std::path::Path) -> Result<(), NodeError> {
    let io = |what: &str, source| NodeError::Io { what: format!("cannot {what} {}", dir.display()), source };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| io("create", e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir).map_err(|e| io("read the mode of", e))?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
                Ok(()) => {
                    tracing::info!(dir = %dir.display(), was = %format!("{mode:04o}"), "data directory made private (0700)")
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), mode = %format!("{mode:04o}"), error = %e, "cannot make the data directory private (0700)")
                }
            }
        }
    }
    Ok(())
}

/// How often the data directory's free space is checked, and a failing store probed.
const DISK_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long writes may keep failing with space back before the store is reopened.
const STUCK_AFTER: Duration = Duration::from_secs(10);

/// Keeps health true to whether the node can take changes: NOT_SERVING while writes fail
/// (a full disk) or free space is below `reserve` bytes, SERVING again once a probe write
/// works (RocksDB resumes by itself after most no-space errors) and space is back. When
/// writes still fail `STUCK_AFTER` with space back, it asks for the store to be reopened.
async fn watch_disk(
    store: Arc<Store>,
    health: tonic_health::server::HealthReporter,
    reserve: u64,
    reopen: tokio::sync::oneshot::Sender<String>,
    mut stop: watch::Receiver<bool>,
) {
    use ldx_proto::v1::registry_server::RegistryServer;
    let mut serving = true;
    // Since when writes fail although free space is above the reserve.
    let mut stuck_since: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(DISK_CHECK_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let checked = store.clone();
        let writable = tokio::task::spawn_blocking(move || {
            if let Err(e) = checked.check_free_space(reserve) {
                tracing::debug!(error = %e, "cannot read the data directory's free space");
            }
            if checked.write_failure().is_some() {
                let _ = checked.probe_write();
            }
            checked.writable()
        })
        .await
        .unwrap_or(serving);
        // RocksDB resumes by itself after most no-space errors, not after a failed WAL
        // write: then only reopening the store helps.
        match (store.write_failure(), store.check_space().is_ok()) {
            (Some(reason), true) => {
                let since = *stuck_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= STUCK_AFTER {
                    tracing::error!(error = %reason, "the store cannot write although space is back; closing it to open it again");
                    let _ = reopen.send(reason);
                    return;
                }
            }
            _ => stuck_since = None,
        }
        if writable != serving {
            serving = writable;
            if serving {
                health.set_service_status("", tonic_health::ServingStatus::Serving).await;
                health.set_serving::<RegistryServer<RegistryService>>().await;
            } else {
                health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                health.set_not_serving::<RegistryServer<RegistryService>>().await;
            }
        }
    }
}

/// Resolves once `stop` turns true.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves the node until `shutdown` resolves. The caller binds `api` (port 0 in tests), so
/// the bound address is known before anything starts; the peer listener is bound here from
/// `peer.listen` and its address written to the data directory.
pub async fn run(
    config: Config,
    clock: Arc<dyn Clock>,
    api: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    // Counters and histograms recorded from here on reach /metrics.
    let _ = crate::metrics::recorder();
    let peer = match config.peer_addr()? {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| NodeError::Io { what: format!("cannot listen on peer.listen {addr}"), source })?,
        ),
        None => None,
    };
    run_with_peer(config, clock, api, peer, shutdown).await
}

/// Like [`run`], with the peer listener bound by the caller too (`None`: no sync).
///
/// Should the store be unable to write although the disk has space again (RocksDB does not
/// resume after a failed write-ahead-log write), the node reopens it in place: everything
/// that uses the store stops, the store is closed and opened again (recovering from its
/// log, as at a start), and the node serves again on the same listeners. Only if the store
/// cannot be let go of does the node stop, for its supervisor to restart it.
pub async fn run_with_peer(
    config: Config,
    clock: Arc<dyn Clock>,
    api: TcpListener,
    peer_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    // The staff, peer and metrics listeners.
    listen::raise_open_files_limit(3);
    fn io(what: &'static str) -> impl Fn(std::io::Error) -> NodeError {
        move |source| NodeError::Io { what: what.to_owned(), source }
    }
    // Bound once, so that every opening of the store serves the same addresses.
    let metrics_listener = match config.metrics_addr()? {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| NodeError::Io { what: format!("cannot listen on metrics.listen {addr}"), source })?,
        ),
        None => None,
    };
    let api = api.into_std().map_err(io("api listener"))?;
    let peer_listener = peer_listener.map(TcpListener::into_std).transpose().map_err(io("peer listener"))?;
    let metrics_listener = metrics_listener.map(TcpListener::into_std).transpose().map_err(io("metrics listener"))?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
    });
    let listener =
        |l: &std::net::TcpListener, what: &'static str| l.try_clone().and_then(TcpListener::from_std).map_err(io(what));
    for opening in 1u64.. {
        let listeners = Listeners {
            api: listener(&api, "api listener")?,
            peer: peer_listener.as_ref().map(|l| listener(l, "peer listener")).transpose()?,
            metrics: metrics_listener.as_ref().map(|l| listener(l, "metrics listener")).transpose()?,
        };
        match serve(config.clone(), clock.clone(), listeners, shutdown_rx.clone()).await? {
            Served::Stopped => return Ok(()),
            Served::Reopen { reason } if *shutdown_rx.borrow() => {
                tracing::info!(error = %reason, "node stopped while its store could not write");
                return Ok(());
            }
            Served::Reopen { reason } => {
                tracing::warn!(error = %reason, opening, "the store could not write although the disk has space again; it was closed and is opened again");
            }
        }
    }
    unreachable!("u64 openings")
}

/// The listeners one opening of the store serves on.
struct Listeners {
    api: TcpListener,
    peer: Option<TcpListener>,
    metrics: Option<TcpListener>,
}

/// How one opening of the store ended.
enum Served {
    /// Shut down as asked.
    Stopped,
    /// Stopped because the store could not write although space was back; it has been
    /// closed (nothing holds it any more) and can be opened again.
    Reopen { reason: String },
}

/// How long the tasks of an opening may take to let go of the store before the node gives
/// up reopening it in place.
const RELEASE_WITHIN: Duration = Duration::from_secs(30);

/// Serves one opening of the store until `shutdown` turns true or the store needs reopening.
async fn serve(
    config: Config,
    clock: Arc<dyn Clock>,
    listeners: Listeners,
    shutdown: watch::Receiver<bool>,
) -> Result<Served, NodeError> {
    let Listeners { api, peer: peer_listener, metrics: metrics_listener } = listeners;
    let data_key =
        DataKey::load(&config.data_key_file).map_err(|source| NodeError::Key { key: "data_key_file", source })?;
    let salt = FederationSalt::load(&config.federation_salt_file)
        .map_err(|source| NodeError::Key { key: "federation_salt_file", source })?;
    let division = config.division();
    let store_error = |source| NodeError::Store { path: config.data_dir.display().to_string(), source };
    private_dir(&config.data_dir)?;
    let store =
        Arc::new(Store::open(&config.data_dir, division.as_str(), config.storage.sync_writes).map_err(store_error)?);
    let mut registry = Registry::new(store.clone(), data_key, salt, clock, division.clone())
        .map_err(store_error)?
        .with_retention_years(config.retention.years);

    let (stop_tx, stop_rx) = watch::channel(false);
    // The disk watch stops the node when the store cannot write again after space returned.
    let (reopen_tx, reopen_rx) = tokio::sync::oneshot::channel::<String>();
    let reopen = Arc::new(std::sync::Mutex::new(None));
    let reopen_reason = reopen.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = stopped(shutdown) => {}
            Ok(reason) = reopen_rx => {
                *reopen_reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
            }
        }
        let _ = stop_tx.send(true);
    });

    // The peer side: directory, channels and the mutual-TLS listener.
    let stats = Stats::default();
    let mut peer = None;
    if let Some(listener) = peer_listener {
        let tls = PeerTls::load(&config.peer)?;
        let signing_key = SignKey::load(&config.peer.signing_key_file)
            .map_err(|source| NodeError::SigningKey { key: "peer.signing_key_file", source })?;
        let federation = PublicKey::load(&config.directory.federation_key_file)
            .map_err(|source| NodeError::SigningKey { key: "directory.federation_key_file", source })?;
        let gateway = Some(config.directory.gateway.clone()).filter(|g| !g.is_empty());
        let poll = Duration::from_millis(config.directory.poll_interval_ms);
        let directory =
            DirectoryWatch::start(store.clone(), federation, gateway, Some(tls.ca()), poll, stopped(stop_rx.clone()))?;
        let (wake, woken) = tokio::sync::mpsc::unbounded_channel();
        let routes = directory.clone();
        let router =
            Arc::new(move |code: &str| routes.latest().and_then(|d| d.route(code).map(|e| e.division.clone())));
        registry = registry.with_exchange(ExchangeHooks { router, wake, deadlines: config.deadlines.clone() });
        // Reports and verdicts carry this node's own signature, checked against the
        // directory's keys of the others.
        let report_signer = signing_key.clone();
        let keys = directory.clone();
        registry = registry.with_reports(ReportHooks {
            signer: report_signer,
            keys: Arc::new(move |code: &str| keys.latest().and_then(|d| d.signing_key(code))),
        });
        peer = Some((listener, tls, signing_key, directory, woken));
    }
    let registry = Arc::new(registry);
    if peer.is_some() && config.reports.issue_interval_secs > 0 {
        let every = Duration::from_secs(config.reports.issue_interval_secs);
        tokio::spawn(issue_reports_every(registry.clone(), every, stop_rx.clone()));
    }
    tokio::spawn(retention_daily(registry.clone(), stop_rx.clone()));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ldx_proto::v1::registry_server::RegistryServer<RegistryService>>().await;
    let reserve = config.storage.reserve_mb << 20;
    tokio::spawn(watch_disk(store.clone(), health.clone(), reserve, reopen_tx, stop_rx.clone()));
    let monitor_directory = peer.as_ref().map(|p| p.3.clone());
    let mut monitor = MonitorService::new(registry.clone(), monitor_directory, stats.clone());
    // The node signs its watermarks, so the gateway's lag rests on what it applied.
    if let Some((_, _, signing_key, _, _)) = &peer {
        monitor = monitor.with_signer(signing_key.clone());
    }
    if let Some(listener) = &metrics_listener {
        let bound =
            listener.local_addr().map_err(|source| NodeError::Io { what: "metrics listener".into(), source })?;
        monitor = monitor.with_metrics_address(bound);
    }

    let mut peer_server = None;
    if let Some((listener, tls, signing_key, directory, woken)) = peer {
        let addr = listener.local_addr().map_err(|source| NodeError::Io { what: "peer listener".into(), source })?;
        let ctx = SenderContext {
            registry: registry.clone(),
            directory: directory.clone(),
            tls: tls.clone(),
            signing_key,
            config: config.exchange.clone(),
            stats: stats.clone(),
        };
        tokio::spawn(supervise(ctx, woken, stop_rx.clone()));
        // Every peer-port service checks the caller against the directory on each call.
        let gateway_only = PeerGuard::new(directory.clone(), Admit::Gateway);
        let federation = PeerGuard::new(directory.clone(), Admit::Federation);
        let served = Server::builder()
            .http2_keepalive_interval(Some(listen::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(listen::KEEPALIVE_TIMEOUT))
            .tls_config(tls.server())?
            .add_service(InterceptedService::new(health_service.clone(), federation))
            .add_service(ExchangeService::new(registry.clone(), directory, stop_rx.clone()).into_server())
            .add_service(InterceptedService::new(monitor.clone().without_log().into_server(), gateway_only.clone()))
            .add_service(InterceptedService::new(AssessmentService::new(registry.clone()).into_server(), gateway_only))
            .serve_with_incoming_shutdown(
                listen::incoming(listener, "peer", listen::Limits::default(), stop_rx.clone()),
                stopped(stop_rx.clone()),
            );
        write_atomically(&config.peer_addr_file(), &format!("{addr}\n"))?;
        tracing::info!(division = %division, peer = %addr, "peer API serving (mutual TLS)");
        peer_server = Some(tokio::spawn(served));
    }

    if let Some(listener) = metrics_listener {
        let bound =
            listener.local_addr().map_err(|source| NodeError::Io { what: "metrics listener".into(), source })?;
        write_atomically(&config.metrics_addr_file(), &format!("{bound}\n"))?;
        tracing::info!(metrics = %bound, "serving /metrics");
        tokio::spawn(crate::metrics::serve(listener, monitor.clone(), registry.clone(), stop_rx.clone()));
        tokio::spawn(crate::metrics::upkeep(stop_rx.clone()));
    }

    let reflection_v1 = reflection_builder().build_v1()?;
    let reflection_v1alpha = reflection_builder().build_v1alpha()?;
    let addr = api.local_addr().map_err(|source| NodeError::Io { what: "api listener".into(), source })?;
    let addr_file = config.api_addr_file();
    write_atomically(&addr_file, &format!("{addr}\n"))?;
    tracing::info!(division = %division, name = division.name(), api = %addr, tls = config.api_tls(), "node serving");

    let mut staff = Server::builder()
        .http2_keepalive_interval(Some(listen::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(listen::KEEPALIVE_TIMEOUT));
    if config.api_tls() {
        staff = staff.tls_config(crate::exchange::tls::staff_server(&config.api)?)?;
    }
    let served = staff
        .layer(crate::grpc::auth::StaffAuthLayer::new(registry.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(RegistryService::new(registry.clone()).into_server())
        .add_service(monitor.into_server())
        .add_service(AssessmentService::new(registry.clone()).into_server())
        .add_service(crate::grpc::staff::StaffService::new(registry.clone()).into_server())
        .serve_with_incoming_shutdown(
            listen::incoming(api, "staff", listen::Limits::default(), stop_rx.clone()),
            stopped(stop_rx.clone()),
        )
        .await;
    let _ = std::fs::remove_file(&addr_file);
    if let Some(peer_server) = peer_server {
        let _ = std::fs::remove_file(config.peer_addr_file());
        peer_server
            .await
            .map_err(|e| NodeError::Io { what: "peer API task".into(), source: std::io::Error::other(e) })??;
    }
    served?;
    drop(registry);
    let reason = reopen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    let Some(reason) = reason else {
        drop(store);
        tracing::info!(division = %division, "node stopped");
        return Ok(Served::Stopped);
    };
    // The senders, the directory watch and the jobs stop on `stop_rx` and let go of the
    // store; it is closed only when nothing holds it, so it can be opened again.
    if release(store, RELEASE_WITHIN).await {
        Ok(Served::Reopen { reason })
    } else {
        Err(NodeError::StoreStuck { reason })
    }
}

/// Closes the store once nothing else holds it; false if something still does `within`.
async fn release(mut store: Arc<Store>, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match Arc::try_unwrap(store) {
            Ok(only) => {
                // Closing RocksDB waits for its background work.
                let _ = tokio::task::spawn_blocking(move || drop(only)).await;
                return true;
            }
            Err(shared) if tokio::time::Instant::now() < deadline => {
                store = shared;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(shared) => {
                tracing::error!(
                    holders = Arc::strong_count(&shared) - 1,
                    "the store is still in use; it cannot be reopened in place"
                );
                return false;
            }
        }
    }
}

/// The scheduled job of quarterly reports, and of the assessment statements of a closed
/// quarter: at start, then every `every`, until stopped.
async fn issue_reports_every(registry: Arc<Registry>, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        let job = registry.clone();
        match tokio::task::spawn_blocking(move || job.issue_due_reports().and_then(|_| job.send_due_statements())).await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "scheduled report job failed; retrying at the next run"),
            Err(e) => tracing::warn!(error = %e, "scheduled report job panicked"),
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// The retention job: purges what is due a minute after start, then once a day (an hour
/// after a failed run).
async fn retention_daily(registry: Arc<Registry>, mut stop: watch::Receiver<bool>) {
    let mut wait = Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(wait) => {}
        }
        let job = registry.clone();
        let hours = match tokio::task::spawn_blocking(move || job.run_retention(false)).await {
            Ok(Ok(_)) => 24,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "retention job failed; retrying in an hour");
                1
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention job panicked; retrying in an hour");
                1
            }
        };
        wait = Duration::from_secs(hours * 3600);
    }
}

fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ldx_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Writes via a temporary file and a rename, so a reader never sees half a file.
fn write_atomically(path: &Path, text: &str) -> Result<(), NodeError> {
    let io = |source| NodeError::Io { what: format!("cannot write {}", path.display()), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
