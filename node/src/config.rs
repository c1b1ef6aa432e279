//! Node configuration: one TOML file, every key overridable by an `LDX_…` environment
//! variable (`LDX_DIVISION`, `LDX_API__LISTEN`: sections joined by a double underscore),
//! validated once at start-up with the offending key named.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

mod starter;

use serde::{Deserialize, Serialize};

use crate::domain::Division;

/// Environment variables with the `LDX_` prefix that are not config keys.
pub const RESERVED_ENV: [&str; 3] = ["LDX_CONFIG", "LDX_ENDPOINT", "LDX_TOKEN_FILE"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Division code this node serves: a 9-digit street office or township, or a 6-digit
    /// county.
    pub division: String,
    /// Directory of the node's RocksDB. Relative paths are relative to the config file.
    #[serde(default = "defaults::data_dir")]
    pub data_dir: PathBuf,
    /// File holding the data key (64 hex digits) that seals personal data at rest.
    #[serde(default = "defaults::data_key_file")]
    pub data_key_file: PathBuf,
    /// File holding the federation salt (64 hex digits) of `person_key`; the same file on
    /// every node of the federation.
    #[serde(default = "defaults::federation_salt_file")]
    pub federation_salt_file: PathBuf,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub peer: PeerConfig,
    #[serde(default)]
    pub directory: DirectoryConfig,
    #[serde(default)]
    pub exchange: ExchangeConfig,
    #[serde(default)]
    pub deadlines: DeadlineConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub reports: ReportsConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
}

/// How long personal fields of persons who left are kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Years after her move-out (once nothing about her is open) before her personal
    /// fields are purged; the node checks once a day.
    #[serde(default = "defaults::retention_years")]
    pub years: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { years: defaults::retention_years() }
    }
}

/// Prometheus metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the `/metrics` endpoint, e.g. `127.0.0.1:9301`. Empty: not served.
    #[serde(default)]
    pub listen: String,
}

/// The peer API (`ldx.v1.Exchange`, and `ldx.v1.Monitor` for the gateway): mutual TLS only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Address of the peer API, e.g. `0.0.0.0:7302`. Empty: this node does not sync
    /// (a standalone registry).
    #[serde(default)]
    pub listen: String,
    /// The federation CA certificate (PEM) that every node certificate chains to.
    #[serde(default = "defaults::ca_file")]
    pub ca_file: PathBuf,
    /// This node's TLS certificate (PEM), issued by `ldx-gateway pki issue`.
    #[serde(default = "defaults::cert_file")]
    pub cert_file: PathBuf,
    /// This node's TLS private key (PEM).
    #[serde(default = "defaults::key_file")]
    pub key_file: PathBuf,
    /// This node's Ed25519 signing key (64 hex digits): signs chain heads and reports.
    #[serde(default = "defaults::signing_key_file")]
    pub signing_key_file: PathBuf,
}

/// Where the signed directory comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// The gateway's address, e.g. `https://10.0.0.1:7300`. Empty: use the cached copy only.
    #[serde(default)]
    pub gateway: String,
    /// The federation's Ed25519 public key (64 hex digits) that signs the directory.
    #[serde(default = "defaults::federation_key_file")]
    pub federation_key_file: PathBuf,
    /// How often to ask the gateway for a newer directory, in milliseconds.
    #[serde(default = "defaults::poll_interval_ms")]
    pub poll_interval_ms: u64,
}

/// How envelopes travel on channels.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeConfig {
    /// Most envelopes in one batch.
    #[serde(default = "defaults::batch_max_envelopes")]
    pub batch_max_envelopes: u32,
    /// Most bytes in one batch (one larger envelope still travels alone).
    #[serde(default = "defaults::batch_max_bytes")]
    pub batch_max_bytes: u32,
    /// Batches sent and not yet acked, per channel.
    #[serde(default = "defaults::inflight_batches")]
    pub inflight_batches: u32,
    /// First wait after a failed connection, in milliseconds; doubles up to `backoff_max_ms`.
    #[serde(default = "defaults::backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    #[serde(default = "defaults::backoff_max_ms")]
    pub backoff_max_ms: u64,
}

/// Deadlines of answers, in days.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadlineConfig {
    /// A move-in notice reaches her origin, counted from the registration.
    #[serde(default = "defaults::notice_days")]
    pub notice_days: u32,
    /// Feedback to a move-in notice, counted from its arrival at the origin: the
    /// destination's worklist expects it `notice_days + feedback_days` after registering,
    /// and the assessment measures both sides by the same two numbers.
    #[serde(default = "defaults::feedback_days")]
    pub feedback_days: u32,
    /// Feedback to a move-in notice marked urgent.
    #[serde(default = "defaults::feedback_urgent_days")]
    pub feedback_urgent_days: u32,
    /// Archive transfer, counted from the separation date.
    #[serde(default = "defaults::transfer_days")]
    pub transfer_days: u32,
    /// An employer's hiring notice.
    #[serde(default = "defaults::hiring_notice_days")]
    pub hiring_notice_days: u32,
    /// Answer to a certificate query.
    #[serde(default = "defaults::certificate_answer_days")]
    pub certificate_answer_days: u32,
    /// A quarter's service report: issued, and at her origin, by this many days after the
    /// quarter's end (the 10th day by the service rules).
    #[serde(default = "defaults::report_days")]
    pub report_days: u32,
    /// The origin's verdict on a report, counted from its arrival.
    #[serde(default = "defaults::verdict_days")]
    pub verdict_days: u32,
}

/// Quarterly service reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportsConfig {
    /// How often the scheduled job issues the reports that are due (each resident with
    /// services and a photo in the quarter and no report yet). 0: only on demand.
    #[serde(default = "defaults::report_issue_interval_secs")]
    pub issue_interval_secs: u64,
}

/// The staff API (`ldx.v1.Registry`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address of the staff API. A non-loopback address needs `tls_cert_file` and
    /// `tls_key_file`; keep it on loopback until staff accounts exist.
    #[serde(default = "defaults::api_listen")]
    pub listen: String,
    /// TLS certificate (PEM) the staff API serves; empty: plain HTTP/2 (loopback only).
    #[serde(default)]
    pub tls_cert_file: PathBuf,
    /// Its private key (PEM).
    #[serde(default)]
    pub tls_key_file: PathBuf,
    /// The CA certificate (PEM) the CLI checks the staff API's certificate against;
    /// empty: `peer.ca_file` (a certificate from `ldx-gateway pki`).
    #[serde(default)]
    pub tls_ca_file: PathBuf,
    /// The name the CLI expects the certificate to carry; empty: the node's name in the
    /// federation, `<division>.division.ldx` (what `ldx-gateway pki issue` puts in).
    #[serde(default)]
    pub tls_server_name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Fsync every write before answering. Turning it off risks losing acknowledged
    /// registrations on power loss.
    #[serde(default = "defaults::sync_writes")]
    pub sync_writes: bool,
    /// Free space (MB) kept on the data directory's disk: below it, changes are refused
    /// with a clear error and health says NOT_SERVING, until space is freed.
    #[serde(default = "defaults::reserve_mb")]
    pub reserve_mb: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Log filter: a level (`info`, `debug`) or a tracing directive (`ldx_node=debug,info`).
    #[serde(default = "defaults::log_level")]
    pub level: String,
}

mod defaults {
    use std::path::PathBuf;

    pub fn data_dir() -> PathBuf {
        "data".into()
    }
    pub fn data_key_file() -> PathBuf {
        "data.key".into()
    }
    pub fn federation_salt_file() -> PathBuf {
        "federation.salt".into()
    }
    pub fn api_listen() -> String {
        "127.0.0.1:7301".into()
    }
    pub fn sync_writes() -> bool {
        true
    }
    pub fn reserve_mb() -> u64 {
        64
    }
    pub fn log_level() -> String {
        "info".into()
    }
    pub fn ca_file() -> PathBuf {
        "pki/ca.crt".into()
    }
    pub fn cert_file() -> PathBuf {
        "pki/node.crt".into()
    }
    pub fn key_file() -> PathBuf {
        "pki/node.key".into()
    }
    pub fn signing_key_file() -> PathBuf {
        "pki/signing.key".into()
    }
    pub fn federation_key_file() -> PathBuf {
        "pki/federation.pub".into()
    }
    pub fn poll_interval_ms() -> u64 {
        5_000
    }
    pub fn batch_max_envelopes() -> u32 {
        1_000
    }
    pub fn batch_max_bytes() -> u32 {
        1 << 20
    }
    pub fn inflight_batches() -> u32 {
        4
    }
    pub fn backoff_initial_ms() -> u64 {
        100
    }
    pub fn backoff_max_ms() -> u64 {
        10_000
    }
    pub fn notice_days() -> u32 {
        7
    }
    pub fn feedback_days() -> u32 {
        7
    }
    pub fn feedback_urgent_days() -> u32 {
        3
    }
    pub fn transfer_days() -> u32 {
        30
    }
    pub fn hiring_notice_days() -> u32 {
        7
    }
    pub fn certificate_answer_days() -> u32 {
        7
    }
    pub fn report_days() -> u32 {
        10
    }
    pub fn verdict_days() -> u32 {
        15
    }
    pub fn report_issue_interval_secs() -> u64 {
        600
    }
    pub fn retention_years() -> u32 {
        crate::registry::RETENTION_YEARS_DEFAULT
    }
}

impl Default for ReportsConfig {
    fn default() -> Self {
        Self { issue_interval_secs: defaults::report_issue_interval_secs() }
    }
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            ca_file: defaults::ca_file(),
            cert_file: defaults::cert_file(),
            key_file: defaults::key_file(),
            signing_key_file: defaults::signing_key_file(),
        }
    }
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            gateway: String::new(),
            federation_key_file: defaults::federation_key_file(),
            poll_interval_ms: defaults::poll_interval_ms(),
        }
    }
}

impl Default for ExchangeConfig {
    fn default() -> Self {
        Self {
            batch_max_envelopes: defaults::batch_max_envelopes(),
            batch_max_bytes: defaults::batch_max_bytes(),
            inflight_batches: defaults::inflight_batches(),
            backoff_initial_ms: defaults::backoff_initial_ms(),
            backoff_max_ms: defaults::backoff_max_ms(),
        }
    }
}

impl Default for DeadlineConfig {
    fn default() -> Self {
        Self {
            notice_days: defaults::notice_days(),
            feedback_days: defaults::feedback_days(),
            feedback_urgent_days: defaults::feedback_urgent_days(),
            transfer_days: defaults::transfer_days(),
            hiring_notice_days: defaults::hiring_notice_days(),
            certificate_answer_days: defaults::certificate_answer_days(),
            report_days: defaults::report_days(),
            verdict_days: defaults::verdict_days(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: defaults::api_listen(),
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
            tls_ca_file: PathBuf::new(),
            tls_server_name: String::new(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self { sync_writes: defaults::sync_writes(), reserve_mb: defaults::reserve_mb() }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: defaults::log_level() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The I/O error is part of the message, not a separate cause, so a printed error chain
    /// names it once.
    #[error("cannot read config file {path}: {error}{hint}")]
    Read { path: String, error: std::io::Error, hint: &'static str },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{var}: {message}")]
    Env { var: String, message: String },
    #[error("config key {key}: {value:?} {rule}")]
    Invalid { key: &'static str, value: String, rule: String },
}

impl Config {
    /// Reads `path`, applies `LDX_…` overrides from `env`, resolves relative paths against
    /// the config file's directory and validates every key.
    pub fn load(path: &Path, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| {
            let hint = if error.kind() == std::io::ErrorKind::NotFound {
                " (`ldx-node init --division CODE` writes one)"
            } else {
                ""
            };
            ConfigError::Read { path: shown.clone(), error, hint }
        })?;
        let mut table: toml::Table =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: shown.clone(), message: e.to_string() })?;
        apply_env(&mut table, env)?;
        let merged = toml::to_string(&table).expect("a parsed table serialises");
        let mut config: Config =
            toml::from_str(&merged).map_err(|e| ConfigError::Parse { path: shown, message: e.message().to_owned() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.data_dir,
            &mut config.data_key_file,
            &mut config.federation_salt_file,
            &mut config.peer.ca_file,
            &mut config.peer.cert_file,
            &mut config.peer.key_file,
            &mut config.peer.signing_key_file,
            &mut config.directory.federation_key_file,
            &mut config.api.tls_cert_file,
            &mut config.api.tls_key_file,
            &mut config.api.tls_ca_file,
        ] {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        Division::parse_node_level("division", &self.division).map_err(|e| ConfigError::Invalid {
            key: "division",
            value: self.division.clone(),
            rule: e.rule,
        })?;
        let api = self.api_addr()?;
        self.check_api_tls(api)?;
        self.peer_addr()?;
        self.metrics_addr()?;
        let gateway = &self.directory.gateway;
        if !(gateway.is_empty() || gateway.starts_with("http://") || gateway.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                key: "directory.gateway",
                value: self.directory.gateway.clone(),
                rule: "must be empty or an http:// or https:// address, e.g. https://10.0.0.1:7300".into(),
            });
        }
        let positive = [
            ("directory.poll_interval_ms", self.directory.poll_interval_ms),
            ("exchange.batch_max_envelopes", u64::from(self.exchange.batch_max_envelopes)),
            ("exchange.batch_max_bytes", u64::from(self.exchange.batch_max_bytes)),
            ("exchange.inflight_batches", u64::from(self.exchange.inflight_batches)),
            ("exchange.backoff_initial_ms", self.exchange.backoff_initial_ms),
            ("exchange.backoff_max_ms", self.exchange.backoff_max_ms),
            ("deadlines.notice_days", u64::from(self.deadlines.notice_days)),
            ("deadlines.feedback_days", u64::from(self.deadlines.feedback_days)),
            ("deadlines.feedback_urgent_days", u64::from(self.deadlines.feedback_urgent_days)),
            ("deadlines.transfer_days", u64::from(self.deadlines.transfer_days)),
            ("deadlines.hiring_notice_days", u64::from(self.deadlines.hiring_notice_days)),
            ("deadlines.certificate_answer_days", u64::from(self.deadlines.certificate_answer_days)),
            ("deadlines.report_days", u64::from(self.deadlines.report_days)),
            ("deadlines.verdict_days", u64::from(self.deadlines.verdict_days)),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid { key, value: "0".into(), rule: "must be at least 1".into() });
            }
        }
        if !(1..=50).contains(&self.retention.years) {
            return Err(ConfigError::Invalid {
                key: "retention.years",
                value: self.retention.years.to_string(),
                rule: "must be from 1 to 50".into(),
            });
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| ConfigError::Invalid {
            key: "log.level",
            value: self.log.level.clone(),
            rule: format!("is not a log filter: {e}"),
        })?;
        Ok(())
    }

    pub fn division(&self) -> Division {
        Division::parse_node_level("division", &self.division).expect("validated at load")
    }

    pub fn api_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.api.listen.parse().map_err(|_| ConfigError::Invalid {
            key: "api.listen",
            value: self.api.listen.clone(),
            rule: "must be an IP address and port, e.g. 127.0.0.1:7301".into(),
        })
    }

    /// A staff API beyond loopback carries personal data across a network: only over TLS.
    fn check_api_tls(&self, api: SocketAddr) -> Result<(), ConfigError> {
        let (cert, key) = (self.api.tls_cert_file.as_os_str().is_empty(), self.api.tls_key_file.as_os_str().is_empty());
        match (cert, key) {
            (true, true) if !api.ip().is_loopback() => Err(ConfigError::Invalid {
                key: "api.tls_cert_file",
                value: String::new(),
                rule: format!(
                    "must be set, with api.tls_key_file, when api.listen ({}) is not a loopback address: \
                     the staff API carries personal data (or listen on 127.0.0.1)",
                    self.api.listen
                ),
            }),
            (false, true) => Err(ConfigError::Invalid {
                key: "api.tls_key_file",
                value: String::new(),
                rule: "must be set when api.tls_cert_file is".into(),
            }),
            (true, false) => Err(ConfigError::Invalid {
                key: "api.tls_cert_file",
                value: String::new(),
                rule: "must be set when api.tls_key_file is".into(),
            }),
            _ => Ok(()),
        }
    }

    /// Whether the staff API serves TLS.
    pub fn api_tls(&self) -> bool {
        !self.api.tls_cert_file.as_os_str().is_empty()
    }

    /// The name the staff API's certificate must carry for the CLI.
    pub fn api_tls_server_name(&self) -> String {
        match self.api.tls_server_name.as_str() {
            "" => ldx_proto::identity::division_dns_name(&self.division),
            name => name.to_owned(),
        }
    }

    /// The CA the CLI checks the staff API's certificate against.
    pub fn api_tls_ca_file(&self) -> (&'static str, &Path) {
        match self.api.tls_ca_file.as_os_str().is_empty() {
            true => ("peer.ca_file", &self.peer.ca_file),
            false => ("api.tls_ca_file", &self.api.tls_ca_file),
        }
    }

    /// The peer API's address, or `None` when this node does not sync.
    pub fn peer_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.peer.listen.is_empty() {
            return Ok(None);
        }
        self.peer.listen.parse().map(Some).map_err(|_| ConfigError::Invalid {
            key: "peer.listen",
            value: self.peer.listen.clone(),
            rule: "must be empty or an IP address and port, e.g. 0.0.0.0:7302".into(),
        })
    }

    /// The `/metrics` address, or `None` when metrics are not served.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.metrics.listen.is_empty() {
            return Ok(None);
        }
        self.metrics.listen.parse().map(Some).map_err(|_| ConfigError::Invalid {
            key: "metrics.listen",
            value: self.metrics.listen.clone(),
            rule: "must be empty or an IP address and port, e.g. 127.0.0.1:9301".into(),
        })
    }

    /// Where a running node writes the address its `/metrics` endpoint is bound to.
    pub fn metrics_addr_file(&self) -> PathBuf {
        self.data_dir.join("run").join("metrics.addr")
    }

    /// Where a running node writes the address its peer API is bound to.
    pub fn peer_addr_file(&self) -> PathBuf {
        self.data_dir.join("run").join("peer.addr")
    }

    /// Where a running node writes the address its staff API is bound to.
    pub fn api_addr_file(&self) -> PathBuf {
        self.data_dir.join("run").join("api.addr")
    }
}

/// Applies `LDX_…` variables. The key path and the type of each value come from the
/// config schema, so `LDX_STORAGE__SYNC_WRITES=false` becomes a boolean and an unknown
/// variable is an error rather than silently ignored.
fn apply_env(table: &mut toml::Table, env: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
    let schema = toml::Table::try_from(Config {
        division: String::new(),
        data_dir: defaults::data_dir(),
        data_key_file: defaults::data_key_file(),
        federation_salt_file: defaults::federation_salt_file(),
        api: ApiConfig::default(),
        storage: StorageConfig::default(),
        log: LogConfig::default(),
        peer: PeerConfig::default(),
        directory: DirectoryConfig::default(),
        exchange: ExchangeConfig::default(),
        deadlines: DeadlineConfig::default(),
        metrics: MetricsConfig::default(),
        reports: ReportsConfig::default(),
        retention: RetentionConfig::default(),
    })
    .expect("the config serialises to a table");
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix("LDX_") else { continue };
        if RESERVED_ENV.contains(&var.as_str()) {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let err = |message: String| ConfigError::Env { var: var.clone(), message };
        let mut schema_node = &schema;
        let mut target = &mut *table;
        for (i, part) in path.iter().enumerate() {
            let last = i + 1 == path.len();
            match (schema_node.get(part), last) {
                (Some(toml::Value::Table(sub)), false) => {
                    schema_node = sub;
                    let entry = target.entry(part.clone()).or_insert(toml::Value::Table(toml::Table::new()));
                    target = entry
                        .as_table_mut()
                        .ok_or_else(|| err(format!("config key {part} is not a section in the file")))?;
                }
                (Some(toml::Value::Table(_)), true) | (None, _) | (Some(_), false) => {
                    return Err(err(format!("{} is not a config key", path.join("."))));
                }
                (Some(kind), true) => {
                    let value = match kind {
                        toml::Value::Boolean(_) => raw
                            .parse::<bool>()
                            .map(toml::Value::Boolean)
                            .map_err(|_| err(format!("{raw:?} must be true or false")))?,
                        toml::Value::Integer(_) => raw
                            .parse::<i64>()
                            .map(toml::Value::Integer)
                            .map_err(|_| err(format!("{raw:?} must be an integer")))?,
                        _ => toml::Value::String(raw.clone()),
                    };
                    target.insert(part.clone(), value);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("node.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn starter_config_loads_with_defaults_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let division = Division::parse("d", "410103007").unwrap();
        let path = write(dir.path(), &Config::starter(&division, "127.0.0.1:0"));
        let config = Config::load(&path, env(&[])).unwrap();
        assert_eq!(config.division, "410103007");
        assert_eq!(config.data_dir, dir.path().join("data"));
        assert!(config.storage.sync_writes);
        assert_eq!(config.api_addr().unwrap().port(), 0);
    }

    #[test]
    fn every_key_is_overridable_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "division = \"410103007\"\n");
        let config = Config::load(
            &path,
            env(&[
                ("LDX_DIVISION", "410103"),
                ("LDX_DATA_DIR", "/var/lib/ldx"),
                ("LDX_DATA_KEY_FILE", "/etc/ldx/data.key"),
                ("LDX_FEDERATION_SALT_FILE", "/etc/ldx/salt"),
                ("LDX_API__LISTEN", "127.0.0.1:9000"),
                ("LDX_API__TLS_CERT_FILE", "/p/staff.crt"),
                ("LDX_API__TLS_KEY_FILE", "/p/staff.key"),
                ("LDX_API__TLS_CA_FILE", "/p/site-ca.crt"),
                ("LDX_API__TLS_SERVER_NAME", "ldx.office.example"),
                ("LDX_STORAGE__SYNC_WRITES", "false"),
                ("LDX_STORAGE__RESERVE_MB", "16"),
                ("LDX_LOG__LEVEL", "debug"),
                ("LDX_PEER__LISTEN", "127.0.0.1:7302"),
                ("LDX_PEER__CA_FILE", "/p/ca.crt"),
                ("LDX_PEER__CERT_FILE", "/p/node.crt"),
                ("LDX_PEER__KEY_FILE", "/p/node.key"),
                ("LDX_PEER__SIGNING_KEY_FILE", "/p/signing.key"),
                ("LDX_DIRECTORY__GATEWAY", "http://127.0.0.1:7300"),
                ("LDX_DIRECTORY__FEDERATION_KEY_FILE", "/p/federation.pub"),
                ("LDX_DIRECTORY__POLL_INTERVAL_MS", "250"),
                ("LDX_EXCHANGE__BATCH_MAX_ENVELOPES", "10"),
                ("LDX_EXCHANGE__BATCH_MAX_BYTES", "2048"),
                ("LDX_EXCHANGE__INFLIGHT_BATCHES", "2"),
                ("LDX_EXCHANGE__BACKOFF_INITIAL_MS", "5"),
                ("LDX_EXCHANGE__BACKOFF_MAX_MS", "50"),
                ("LDX_DEADLINES__NOTICE_DAYS", "4"),
                ("LDX_DEADLINES__FEEDBACK_DAYS", "20"),
                ("LDX_DEADLINES__FEEDBACK_URGENT_DAYS", "10"),
                ("LDX_DEADLINES__TRANSFER_DAYS", "25"),
                ("LDX_DEADLINES__HIRING_NOTICE_DAYS", "5"),
                ("LDX_DEADLINES__CERTIFICATE_ANSWER_DAYS", "3"),
                ("LDX_DEADLINES__REPORT_DAYS", "12"),
                ("LDX_DEADLINES__VERDICT_DAYS", "14"),
                ("LDX_REPORTS__ISSUE_INTERVAL_SECS", "0"),
                ("LDX_RETENTION__YEARS", "5"),
                ("LDX_METRICS__LISTEN", "127.0.0.1:9301"),
                ("LDX_CONFIG", "ignored"),
                ("PATH", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(config.division, "410103");
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/ldx"));
        assert_eq!(config.data_key_file, PathBuf::from("/etc/ldx/data.key"));
        assert_eq!(config.federation_salt_file, PathBuf::from("/etc/ldx/salt"));
        assert_eq!(config.api.listen, "127.0.0.1:9000");
        assert_eq!(config.api.tls_cert_file, PathBuf::from("/p/staff.crt"));
        assert_eq!(config.api.tls_key_file, PathBuf::from("/p/staff.key"));
        assert_eq!(config.api_tls_ca_file(), ("api.tls_ca_file", Path::new("/p/site-ca.crt")));
        assert_eq!(config.api_tls_server_name(), "ldx.office.example");
        assert!(!config.storage.sync_writes);
        assert_eq!(config.storage.reserve_mb, 16);
        assert_eq!(config.log.level, "debug");
        assert_eq!(config.peer_addr().unwrap().unwrap().port(), 7302);
        assert_eq!(config.peer.ca_file, PathBuf::from("/p/ca.crt"));
        assert_eq!(config.peer.cert_file, PathBuf::from("/p/node.crt"));
        assert_eq!(config.peer.key_file, PathBuf::from("/p/node.key"));
        assert_eq!(config.peer.signing_key_file, PathBuf::from("/p/signing.key"));
        assert_eq!(config.directory.gateway, "http://127.0.0.1:7300");
        assert_eq!(config.directory.federation_key_file, PathBuf::from("/p/federation.pub"));
        assert_eq!(config.directory.poll_interval_ms, 250);
        assert_eq!(config.exchange.batch_max_envelopes, 10);
        assert_eq!(config.exchange.batch_max_bytes, 2048);
        assert_eq!(config.exchange.inflight_batches, 2);
        assert_eq!(config.exchange.backoff_initial_ms, 5);
        assert_eq!(config.exchange.backoff_max_ms, 50);
        assert_eq!(config.deadlines.notice_days, 4);
        assert_eq!(config.deadlines.feedback_days, 20);
        assert_eq!(config.deadlines.feedback_urgent_days, 10);
        assert_eq!(config.deadlines.transfer_days, 25);
        assert_eq!(config.deadlines.hiring_notice_days, 5);
        assert_eq!(config.deadlines.certificate_answer_days, 3);
        assert_eq!(config.deadlines.report_days, 12);
        assert_eq!(config.deadlines.verdict_days, 14);
        assert_eq!(config.reports.issue_interval_secs, 0);
        assert_eq!(config.retention.years, 5);
        assert_eq!(config.metrics_addr().unwrap().unwrap().port(), 9301);

        // The test above must cover every key of the schema.
        let schema = toml::Table::try_from(&config).unwrap();
        let count: usize = schema.values().map(|v| v.as_table().map_or(1, toml::Table::len)).sum();
        assert_eq!(count, 36, "a new config key needs an override case above");
    }

    #[test]
    fn errors_name_the_offending_key() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("division = \"410103999\"\n", vec![], "config key division"),
            ("division = \"4101\"\n", vec![], "config key division"),
            ("division = \"410103007\"\n[api]\nlisten = \"localhost\"\n", vec![], "config key api.listen"),
            ("division = \"410103007\"\n[log]\nlevel = \"[\"\n", vec![], "config key log.level"),
            ("division = \"410103007\"\ncolour = \"blue\"\n", vec![], "colour"),
            ("division = \"410103007\"\n", vec![("LDX_STORAGE__SYNC_WRITES", "maybe")], "LDX_STORAGE__SYNC_WRITES"),
            ("division = \"410103007\"\n", vec![("LDX_API__PORT", "1")], "LDX_API__PORT: api.port is not a config key"),
            ("data_dir = \"x\"\n", vec![], "division"),
            ("division = \"410103007\"\n[peer]\nlisten = \"x\"\n", vec![], "config key peer.listen"),
            ("division = \"410103007\"\n[directory]\ngateway = \"10.0.0.1\"\n", vec![], "config key directory.gateway"),
            ("division = \"410103007\"\n", vec![("LDX_EXCHANGE__INFLIGHT_BATCHES", "0")], "exchange.inflight_batches"),
            (
                "division = \"410103007\"\n[retention]\nyears = 0\n",
                vec![],
                "config key retention.years: \"0\" must be from 1 to 50",
            ),
        ];
        for (text, vars, expected) in cases {
            let path = write(dir.path(), text);
            let err = Config::load(&path, env(&vars)).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?} {vars:?}: {err}");
        }
    }
}
