//! One running node: opens its keys and store, serves its APIs on the listener it is
//! given, and stops cleanly when `shutdown` resolves.

use std::{future::Future, path::Path, sync::Arc};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::clock::Clock;
use crate::config::Config;
use crate::crypto::{DataKey, FederationSalt, KeyError};
use crate::grpc::registry::RegistryService;
use crate::registry::Registry;
use crate::storage::{StorageError, Store};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("config key {key}: {source}")]
    Key { key: &'static str, source: KeyError },
    #[error("cannot open the store in {path}: {source}")]
    Store { path: String, source: StorageError },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("serving the staff API: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the node until `shutdown` resolves. The caller binds `api` (port 0 in tests), so
/// the bound address is known before anything starts.
pub async fn run(
    config: Config,
    clock: Arc<dyn Clock>,
    api: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let data_key =
        DataKey::load(&config.data_key_file).map_err(|source| NodeError::Key { key: "data_key_file", source })?;
    let salt = FederationSalt::load(&config.federation_salt_file)
        .map_err(|source| NodeError::Key { key: "federation_salt_file", source })?;
    let division = config.division();
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| NodeError::Io { what: format!("cannot create {}", config.data_dir.display()), source })?;
    let store = Store::open(&config.data_dir, division.as_str(), config.storage.sync_writes)
        .map_err(|source| NodeError::Store { path: config.data_dir.display().to_string(), source })?;
    let store = Arc::new(store);
    let registry = Registry::new(store.clone(), data_key, salt, clock, division.clone())
        .map_err(|source| NodeError::Store { path: config.data_dir.display().to_string(), source })?;
    let registry = RegistryService::new(Arc::new(registry)).into_server();

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ldx_proto::v1::registry_server::RegistryServer<RegistryService>>().await;
    let reflection_v1 = reflection_builder().build_v1()?;
    let reflection_v1alpha = reflection_builder().build_v1alpha()?;

    let addr = api.local_addr().map_err(|source| NodeError::Io { what: "api listener".into(), source })?;
    let addr_file = config.api_addr_file();
    write_atomically(&addr_file, &format!("{addr}\n"))?;
    tracing::info!(division = %division, name = division.name(), api = %addr, "node serving");

    let served = Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(registry)
        .serve_with_incoming_shutdown(TcpListenerStream::new(api), shutdown)
        .await;
    let _ = std::fs::remove_file(&addr_file);
    served?;
    drop(store);
    tracing::info!(division = %division, "node stopped");
    Ok(())
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
