//! The node's view of the federation directory: the copy cached in the store, kept current
//! by polling the gateway. Only a directory signed by the federation key, newer than the
//! one held and not stale (its signed `not_after`) is taken, so a broken or hostile
//! gateway, or anyone between it and the node, can at worst withhold updates, and only
//! until the directory held goes stale: from then on the node talks to no peer
//! ([`DirectoryWatch::current`] is `None`) until a current directory comes, so a withheld
//! revocation cannot be outlasted.

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use ldx_proto::directory::Directory;
use ldx_proto::identity::GATEWAY_DNS_NAME;
use ldx_proto::identity::PublicKey;
use ldx_proto::v1::{FetchDirectoryRequest, SignedDirectory, directory_client::DirectoryClient};
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::storage::{StorageError, Store, codec, keys::MetaKey};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node without a directory waits quietly for its first one before it warns
/// (once): a node usually starts beside, or just before, its gateway.
pub const FIRST_DIRECTORY_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DirectoryWatchError {
    #[error("reading the cached directory: {0}")]
    Store(#[from] StorageError),
    #[error("gateway: {url:?} is not a valid endpoint URL: {source}")]
    Gateway { url: String, source: tonic::transport::Error },
    #[error("gateway: {url:?} is https:// but this node has no CA to verify it (peer.ca_file)")]
    NoCa { url: String },
}

/// How the directory is doing, for the node's status report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectoryStatus {
    /// Version in use; 0 when the node has none.
    pub version: u64,
    /// UTC milliseconds of the last successful Fetch from the gateway (0: never).
    pub fetched_at_ms: i64,
    /// UTC milliseconds of the last attempt, successful or not (0: none yet).
    pub attempted_at_ms: i64,
    /// Why the last fetch failed or was refused; empty once one succeeds.
    pub last_error: String,
    /// UTC milliseconds when the version in use was signed (0: none).
    pub issued_at_ms: i64,
    /// UTC milliseconds after which the version in use is stale (0: none).
    pub not_after_ms: i64,
}

impl DirectoryStatus {
    fn held(&mut self, directory: &Directory) {
        self.version = directory.version();
        self.issued_at_ms = directory.issued_at_ms();
        self.not_after_ms = directory.not_after_ms();
    }
}

/// The directory in use. Cheap to clone; every clone sees the same directory.
#[derive(Debug, Clone)]
pub struct DirectoryWatch {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<Store>,
    federation: PublicKey,
    directory: watch::Sender<Option<Arc<Directory>>>,
    status: Mutex<DirectoryStatus>,
    /// Set once the node warned that no directory came within the grace period.
    missing_warned: AtomicBool,
    /// Set while the node has said that its directory is stale.
    stale_warned: AtomicBool,
}

impl DirectoryWatch {
    /// Loads the cached copy from the store (verifying it), then (if `gateway` is set)
    /// spawns a task polling the gateway's `Directory.Fetch` every `poll` until `shutdown`
    /// resolves; each newer verified version is stored and published. Must be called
    /// within a tokio runtime.
    ///
    /// A cached copy that no longer verifies (the federation key was changed) is logged
    /// and dropped rather than fatal: the gateway can supply a good one.
    ///
    /// An `https://` gateway is dialled over TLS and must present a certificate of the
    /// federation CA `ca` for [`GATEWAY_DNS_NAME`]; an `http://` one is read in plain
    /// HTTP/2 (the signature still protects the content, not the traffic).
    pub fn start(
        store: Arc<Store>,
        federation: PublicKey,
        gateway: Option<String>,
        ca: Option<Certificate>,
        poll: Duration,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Self, DirectoryWatchError> {
        let endpoint = gateway
            .map(|url| {
                let endpoint = Endpoint::from_shared(url.clone())
                    .map(|e| e.connect_timeout(CONNECT_TIMEOUT).timeout(REQUEST_TIMEOUT))
                    .map_err(|source| DirectoryWatchError::Gateway { url: url.clone(), source })?;
                match (url.starts_with("https://"), &ca) {
                    (false, _) => {
                        tracing::warn!(gateway = %url, "the directory is fetched without TLS; use an https:// gateway address");
                        Ok(endpoint)
                    }
                    (true, None) => Err(DirectoryWatchError::NoCa { url }),
                    (true, Some(ca)) => endpoint
                        .tls_config(ClientTlsConfig::new().ca_certificate(ca.clone()).domain_name(GATEWAY_DNS_NAME))
                        .map_err(|source| DirectoryWatchError::Gateway { url, source }),
                }
            })
            .transpose()?;
        let mut status = DirectoryStatus::default();
        let cached = match load_cached(&store, &federation) {
            Ok(cached) => cached,
            Err(CachedError::Store(e)) => return Err(e.into()),
            Err(CachedError::Invalid(reason)) => {
                tracing::warn!(reason = %reason, "cached directory refused; waiting for the gateway");
                status.last_error = format!("cached directory refused: {reason}");
                None
            }
        };
        if let Some(d) = &cached {
            tracing::info!(version = d.version(), entries = d.entries().count(), "directory loaded from the store");
        }
        if let Some(d) = &cached {
            status.held(d);
        }
        let (directory, _) = watch::channel(cached.map(Arc::new));
        let inner = Inner {
            store,
            federation,
            directory,
            status: Mutex::new(status),
            missing_warned: AtomicBool::new(false),
            stale_warned: AtomicBool::new(false),
        };
        let watch = Self { inner: Arc::new(inner) };
        if let Some(endpoint) = endpoint {
            tokio::spawn(poll_loop(watch.inner.clone(), endpoint, poll, shutdown));
        }
        Ok(watch)
    }

    /// The directory to admit and reach peers by: `None` when the node has none, or only
    /// a stale one (past its signed `not_after`). Checked on every connection and batch.
    pub fn current(&self) -> Option<Arc<Directory>> {
        let held = self.latest()?;
        if held.is_stale_at(now_ms()) {
            if !self.inner.stale_warned.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    version = held.version(),
                    not_after_ms = held.not_after_ms(),
                    "the directory in use is stale and no current one has come from the gateway; \
                     no peer is admitted or sent to until one does"
                );
            }
            return None;
        }
        Some(held)
    }

    /// The directory held, stale or not: for routing a record to the node it belongs to
    /// (queued until that node can be reached) and for reporting.
    pub fn latest(&self) -> Option<Arc<Directory>> {
        self.inner.directory.borrow().clone()
    }

    /// Sees every directory taken from now on.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Directory>>> {
        self.inner.directory.subscribe()
    }

    pub fn status(&self) -> DirectoryStatus {
        self.inner.status().clone()
    }

    /// Waits for the node's first directory (returns at once if it has one). The polling
    /// task warns, once, if it is slow to come.
    pub async fn present(&self) {
        let mut updates = self.subscribe();
        // `self` holds the sender, so this cannot end before a directory is there.
        let _ = updates.wait_for(Option::is_some).await;
    }
}

enum CachedError {
    Store(StorageError),
    Invalid(String),
}

/// The verified directory cached in the store, if any. A stale one is kept (it still
/// routes); [`DirectoryWatch::current`] withholds it from peer checks.
fn load_cached(store: &Store, federation: &PublicKey) -> Result<Option<Directory>, CachedError> {
    let Some(bytes) = store.meta(MetaKey::Directory).map_err(CachedError::Store)? else {
        return Ok(None);
    };
    let signed: SignedDirectory =
        codec::decode("directory", &bytes).map_err(|e| CachedError::Invalid(e.to_string()))?;
    let directory = Directory::verify(signed, federation).map_err(|e| CachedError::Invalid(e.to_string()))?;
    if directory.not_after_ms() == 0 {
        return Err(CachedError::Invalid(format!("version {} carries no not_after", directory.version())));
    }
    Ok(Some(directory))
}

async fn poll_loop(inner: Arc<Inner>, endpoint: Endpoint, poll: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut ticks = tokio::time::interval(poll);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client = None;
    let started = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticks.tick() => {}
        }
        tokio::select! {
            () = &mut shutdown => break,
            () = inner.poll_once(&endpoint, &mut client) => {}
        }
        if inner.directory.borrow().is_none()
            && started.elapsed() >= FIRST_DIRECTORY_GRACE
            && !inner.missing_warned.swap(true, Ordering::Relaxed)
        {
            let error = inner.status().last_error.clone();
            tracing::warn!(
                waited_s = FIRST_DIRECTORY_GRACE.as_secs(),
                last_error = %error,
                "no directory yet; channels wait for it"
            );
        }
    }
    tracing::debug!("directory polling stopped");
}

impl Inner {
    fn status(&self) -> std::sync::MutexGuard<'_, DirectoryStatus> {
        self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn poll_once(&self, endpoint: &Endpoint, client: &mut Option<DirectoryClient<Channel>>) {
        let gateway = endpoint.uri().to_string();
        self.status().attempted_at_ms = now_ms();
        let connected = match client {
            Some(c) => c,
            None => match endpoint.connect().await {
                Ok(channel) => client.insert(DirectoryClient::new(channel)),
                Err(e) => return self.failed(format!("gateway {gateway} unreachable: {}", crate::error_chain(&e))),
            },
        };
        let known_version = self.directory.borrow().as_ref().map_or(0, |d| d.version());
        let response = match connected.fetch(FetchDirectoryRequest { known_version }).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                // A fresh connection next time, in case this one is what broke.
                *client = None;
                return self.failed(format!("gateway {gateway} fetch failed: {}", status.message()));
            }
        };
        if let Some(signed) = response.directory
            && let Err(reason) = self.take(signed, known_version)
        {
            return self.failed(format!("directory from gateway {gateway} refused: {reason}"));
        }
        let mut status = self.status();
        status.fetched_at_ms = now_ms();
        if !status.last_error.is_empty() {
            tracing::info!(gateway = %gateway, "directory fetch works again");
            status.last_error.clear();
        }
    }

    /// Verifies, stores and publishes a directory from the gateway.
    fn take(&self, signed: SignedDirectory, known_version: u64) -> Result<(), String> {
        let directory = Directory::verify(signed, &self.federation).map_err(|e| e.to_string())?;
        let version = directory.version();
        if version < known_version {
            return Err(format!("version {version} is older than version {known_version} in use"));
        }
        if version == known_version {
            return Ok(());
        }
        if directory.not_after_ms() == 0 {
            return Err(format!("version {version} carries no not_after (a gateway older than this node)"));
        }
        if directory.is_stale_at(now_ms()) {
            return Err(format!(
                "version {version} went stale at {} (its signed not_after); the gateway must sign a fresh one",
                format_ms(directory.not_after_ms())
            ));
        }
        self.store
            .put_meta(MetaKey::Directory, &codec::encode(directory.signed()))
            .map_err(|e| format!("cannot cache version {version}: {e}"))?;
        tracing::info!(version, entries = directory.entries().count(), "directory updated");
        self.status().held(&directory);
        if self.stale_warned.swap(false, Ordering::Relaxed) {
            tracing::info!(version, "a current directory came; peers are admitted again");
        }
        self.directory.send_replace(Some(Arc::new(directory)));
        Ok(())
    }

    /// Records a failure, logging it only when it differs from the last one, so a gateway
    /// that stays down is reported once.
    /// Before the first directory arrives, failures are logged at debug level only; the
    /// polling loop warns once if that takes longer than [`FIRST_DIRECTORY_GRACE`].
    fn failed(&self, error: String) {
        let mut status = self.status();
        if status.version == 0 && !self.missing_warned.load(Ordering::Relaxed) {
            tracing::debug!(error = %error, "no directory yet");
            status.last_error = error;
        } else if status.last_error != error {
            tracing::warn!(error = %error, version_in_use = status.version, "directory not updated");
            status.last_error = error;
        }
    }
}

/// RFC 3339 UTC of a millisecond timestamp, for messages.
fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(|| ms.to_string(), |t| t.to_rfc3339())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use ldx_proto::directory::sign;
    use ldx_proto::identity::SignKey;
    use ldx_proto::v1::directory_server::{self, DirectoryServer};
    use ldx_proto::v1::{DirectoryBody, DirectoryEntry, FetchDirectoryResponse};
    use tokio::sync::oneshot;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response, Status};

    use super::*;

    const DIVISION: &str = "410103007";
    const POLL: Duration = Duration::from_millis(20);

    /// A gateway that answers every Fetch with whatever the test put in `serving`, newer or
    /// not, so the node's own checks are what is tested.
    #[derive(Clone, Default)]
    struct FakeGateway {
        serving: Arc<Mutex<Option<SignedDirectory>>>,
    }

    impl FakeGateway {
        fn serve(&self, signed: SignedDirectory) {
            *self.serving.lock().unwrap() = Some(signed);
        }
    }

    #[tonic::async_trait]
    impl directory_server::Directory for FakeGateway {
        async fn fetch(&self, _: Request<FetchDirectoryRequest>) -> Result<Response<FetchDirectoryResponse>, Status> {
            Ok(Response::new(FetchDirectoryResponse { directory: self.serving.lock().unwrap().clone() }))
        }
    }

    /// Serves `gateway` on a free loopback port; the server stops when the sender drops.
    async fn start_gateway(gateway: FakeGateway) -> (String, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(DirectoryServer::new(gateway))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        (url, stop, task)
    }

    fn directory(key: &SignKey, version: u64) -> SignedDirectory {
        directory_until(key, version, now_ms() + 3_600_000)
    }

    /// Version `version`, stale after `not_after_ms`.
    fn directory_until(key: &SignKey, version: u64, not_after_ms: i64) -> SignedDirectory {
        let entry = DirectoryEntry {
            division: DIVISION.into(),
            endpoint: "https://127.0.0.1:7302".into(),
            tls_cert_sha256: vec![u8::try_from(version).unwrap(); 32],
            signing_key: SignKey::generate().public().to_bytes().to_vec(),
        };
        sign(&DirectoryBody { version, issued_at_ms: 1, entries: vec![entry], not_after_ms, ..Default::default() }, key)
    }

    fn open_store(dir: &tempfile::TempDir) -> Arc<Store> {
        Arc::new(Store::open(dir.path(), DIVISION, false).unwrap())
    }

    fn version(watch: &DirectoryWatch) -> u64 {
        watch.current().map_or(0, |d| d.version())
    }

    fn cached_version(store: &Store, federation: &PublicKey) -> u64 {
        load_cached(store, federation).ok().flatten().map_or(0, |d| d.version())
    }

    /// Polls `done` until it holds; fails the test after 10 s.
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let polled = tokio::time::timeout(Duration::from_secs(10), async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        polled.await.unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    #[tokio::test]
    async fn a_fetched_directory_is_stored_and_published() {
        let temp = tempfile::tempdir().unwrap();
        let store = open_store(&temp);
        let key = SignKey::generate();
        let gateway = FakeGateway::default();
        gateway.serve(directory(&key, 1));
        let (url, _stop, _task) = start_gateway(gateway.clone()).await;

        let watch =
            DirectoryWatch::start(store.clone(), key.public(), Some(url), None, POLL, std::future::pending()).unwrap();
        let mut updates = watch.subscribe();
        until("version 1", || version(&watch) == 1).await;
        assert_eq!(cached_version(&store, &key.public()), 1);
        let status = watch.status();
        assert_eq!((status.version, status.last_error.as_str()), (1, ""));
        assert!(status.fetched_at_ms > 0);

        gateway.serve(directory(&key, 2));
        tokio::time::timeout(
            Duration::from_secs(10),
            updates.wait_for(|d| d.as_ref().is_some_and(|d| d.version() == 2)),
        )
        .await
        .expect("version 2 published")
        .unwrap();
        assert_eq!(cached_version(&store, &key.public()), 2);
        assert_eq!(watch.current().unwrap().route("410103007001").unwrap().division, DIVISION);
    }

    #[tokio::test]
    async fn the_cached_copy_is_used_after_a_restart_with_the_gateway_gone() {
        let temp = tempfile::tempdir().unwrap();
        let key = SignKey::generate();
        let gateway = FakeGateway::default();
        gateway.serve(directory(&key, 4));
        let (url, stop_gateway, gateway_task) = start_gateway(gateway).await;

        let store = open_store(&temp);
        let (stop_watch, watch_stopped) = oneshot::channel::<()>();
        let watch = DirectoryWatch::start(store.clone(), key.public(), Some(url.clone()), None, POLL, async {
            let _ = watch_stopped.await;
        })
        .unwrap();
        until("version 4", || version(&watch) == 4).await;
        drop(stop_watch);
        drop(watch);
        // The polling task holds the store until it has stopped; RocksDB allows one opener.
        until("the polling task to stop", || Arc::strong_count(&store) == 1).await;
        drop(store);
        drop(stop_gateway);
        gateway_task.await.unwrap();

        let store = open_store(&temp);
        let watch = DirectoryWatch::start(store, key.public(), Some(url), None, POLL, std::future::pending()).unwrap();
        assert_eq!(version(&watch), 4, "the cached copy is in use before any fetch");
        until("the fetch to fail", || watch.status().last_error.contains("unreachable")).await;
        assert_eq!(version(&watch), 4);
        assert_eq!(watch.status().version, 4);
        assert_eq!(watch.status().fetched_at_ms, 0);
    }

    #[tokio::test]
    async fn a_directory_signed_by_another_key_is_refused() {
        let temp = tempfile::tempdir().unwrap();
        let store = open_store(&temp);
        let key = SignKey::generate();
        let gateway = FakeGateway::default();
        gateway.serve(directory(&key, 1));
        let (url, _stop, _task) = start_gateway(gateway.clone()).await;
        let watch =
            DirectoryWatch::start(store.clone(), key.public(), Some(url), None, POLL, std::future::pending()).unwrap();
        until("version 1", || version(&watch) == 1).await;

        gateway.serve(directory(&SignKey::generate(), 2));
        until("the refusal", || watch.status().last_error.contains("signature does not verify")).await;
        assert_eq!(version(&watch), 1);
        assert_eq!(cached_version(&store, &key.public()), 1);

        gateway.serve(directory(&key, 2));
        until("version 2", || version(&watch) == 2).await;
        assert_eq!(watch.status().last_error, "", "a good fetch clears the error");
    }

    #[tokio::test]
    async fn an_older_version_is_refused() {
        let temp = tempfile::tempdir().unwrap();
        let store = open_store(&temp);
        let key = SignKey::generate();
        let gateway = FakeGateway::default();
        gateway.serve(directory(&key, 3));
        let (url, _stop, _task) = start_gateway(gateway.clone()).await;
        let watch =
            DirectoryWatch::start(store.clone(), key.public(), Some(url), None, POLL, std::future::pending()).unwrap();
        until("version 3", || version(&watch) == 3).await;

        gateway.serve(directory(&key, 2));
        until("the refusal", || watch.status().last_error.contains("older than version 3")).await;
        assert_eq!(version(&watch), 3);
        assert_eq!(cached_version(&store, &key.public()), 3);
    }

    #[tokio::test]
    async fn a_stale_directory_is_refused_and_a_stale_copy_admits_no_peer() {
        let temp = tempfile::tempdir().unwrap();
        let store = open_store(&temp);
        let key = SignKey::generate();
        let gateway = FakeGateway::default();
        // Valid for a moment only: in use at first, stale soon after.
        gateway.serve(directory_until(&key, 1, now_ms() + 2_000));
        let (url, _stop, _task) = start_gateway(gateway.clone()).await;
        let watch =
            DirectoryWatch::start(store.clone(), key.public(), Some(url), None, POLL, std::future::pending()).unwrap();
        until("version 1", || version(&watch) == 1).await;
        assert!(watch.status().not_after_ms > 0);

        // Someone between gateway and node replays a version whose validity has passed, or
        // one signed without a limit: neither is taken.
        gateway.serve(directory_until(&key, 2, now_ms() - 1));
        until("the stale refusal", || watch.status().last_error.contains("went stale")).await;
        gateway.serve(directory_until(&key, 3, 0));
        until("the unbounded refusal", || watch.status().last_error.contains("carries no not_after")).await;
        assert_eq!(watch.latest().unwrap().version(), 1);

        // Once version 1 is stale itself, no peer is admitted or sent to by it; it still
        // routes, and the status still names it.
        until("version 1 to go stale", || watch.current().is_none()).await;
        assert_eq!(watch.latest().unwrap().version(), 1);
        assert_eq!(watch.status().version, 1);

        // A current version brings the peers back.
        gateway.serve(directory(&key, 4));
        until("version 4", || version(&watch) == 4).await;
        assert_eq!(cached_version(&store, &key.public()), 4);
    }

    #[tokio::test]
    async fn without_a_gateway_the_cache_is_all_there_is() {
        let temp = tempfile::tempdir().unwrap();
        let store = open_store(&temp);
        let key = SignKey::generate();
        let watch =
            DirectoryWatch::start(store.clone(), key.public(), None, None, POLL, std::future::pending()).unwrap();
        assert!(watch.current().is_none());
        assert_eq!(watch.status(), DirectoryStatus::default());
        drop(watch);

        store.put_meta(MetaKey::Directory, &codec::encode(&directory(&SignKey::generate(), 9))).unwrap();
        let watch = DirectoryWatch::start(store, key.public(), None, None, POLL, std::future::pending()).unwrap();
        assert!(watch.current().is_none(), "a cached copy under another key is dropped");
        assert!(watch.status().last_error.contains("cached directory refused"), "{:?}", watch.status());
    }

    #[tokio::test]
    async fn a_bad_gateway_url_is_named() {
        let temp = tempfile::tempdir().unwrap();
        let err = DirectoryWatch::start(
            open_store(&temp),
            SignKey::generate().public(),
            Some("not a url".into()),
            None,
            POLL,
            std::future::pending(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"not a url\""), "{err}");
    }
}
