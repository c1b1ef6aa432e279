//! The benchmark runner behind `ldx-bench`: node-to-node sync over mutual TLS against
//! PostgreSQL logical replication and the raw RocksDB limit on the same disk, latency at a
//! fixed rate, catch-up, directory routing at national scale and idle-node memory. Every
//! figure in the table is measured in the run that prints it.

pub mod ldx;
pub mod postgres;
pub mod report;
pub mod rocks;
pub mod scale;
pub mod sys;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;

pub use report::Report;

/// Bytes of one row or value in the PostgreSQL and RocksDB baselines: a move-in notice is
/// about this large on the wire (the run measures and prints the real envelope size).
pub const ROW_BYTES: usize = 300;
/// Rows per transaction or batch in the bulk shape.
pub const BULK_BATCH: u64 = 1_000;

/// What to run and how much; every field has an `LDX_BENCH_*` environment variable (the
/// cluster harness keeps `LDX_*` variables away from the nodes it starts).
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Repetitions of each throughput scenario (`LDX_BENCH_REPS`, default 3).
    pub reps: usize,
    /// Notices per repetition of the bulk shape (`LDX_BENCH_BULK`, default 20,000).
    pub bulk: u64,
    /// Notices per repetition of the live shape (`LDX_BENCH_LIVE`, default 4,000).
    pub live: u64,
    /// Concurrent clients of the live shape (`LDX_BENCH_CLIENTS`, default 16).
    pub clients: usize,
    /// Move-ins per second of the latency scenario (`LDX_BENCH_RATE`, default 1,000).
    pub rate: u64,
    /// Seconds of the latency scenario (`LDX_BENCH_LATENCY_SECS`, default 10).
    pub latency_secs: u64,
    /// A second, lower rate for the latency scenario, to show the pipeline's latency when
    /// the node is not saturated (`LDX_BENCH_LOW_RATE`, default 200; 0: skip).
    pub low_rate: u64,
    /// Envelopes queued for a peer that is down (`LDX_BENCH_CATCHUP`, default 1,000,000).
    pub catchup: u64,
    /// Rows of the ledger file imported with `ldx-node ledger import`
    /// (`LDX_BENCH_LEDGER`, default 100,000; 0: skip).
    pub ledger_rows: u64,
    /// Idle nodes started to measure memory (`LDX_BENCH_IDLE_NODES`, default 30).
    pub idle_nodes: usize,
    /// Directory lookups timed per repetition (`LDX_BENCH_LOOKUPS`, default 1,000,000).
    pub lookups: u64,
    /// The division tables (`LDX_BENCH_DIVISIONS`, default `../shared/data/divisions`).
    pub divisions: PathBuf,
    /// PostgreSQL server binaries (`LDX_BENCH_PG_BIN`, default `/usr/lib/postgresql/15/bin`).
    pub pg_bin: PathBuf,
    /// `pgbench` (`LDX_BENCH_PGBENCH`, default `pgbench` in `pg_bin`, else `/usr/bin/pgbench`).
    pub pgbench: Option<PathBuf>,
    /// `RUST_LOG` of the node processes (`LDX_BENCH_LOG`, default `info`, as shipped).
    pub log_filter: String,
    /// Parts to run, comma-separated from `ldx,pg,rocks,scale,idle` (`LDX_BENCH_ONLY`,
    /// default all).
    pub only: Option<Vec<String>>,
    /// `ldx-node` and `ldx-gateway` binaries; `None`: next to the running executable.
    pub binaries: Option<(PathBuf, PathBuf)>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            reps: 3,
            bulk: 20_000,
            live: 4_000,
            clients: 16,
            rate: 1_000,
            latency_secs: 10,
            low_rate: 200,
            catchup: 1_000_000,
            ledger_rows: 100_000,
            idle_nodes: 30,
            lookups: 1_000_000,
            divisions: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/divisions"),
            pg_bin: PathBuf::from("/usr/lib/postgresql/15/bin"),
            pgbench: None,
            log_filter: "info".into(),
            only: None,
            binaries: None,
        }
    }
}

impl BenchConfig {
    /// The defaults, overridden by every `LDX_BENCH_*` variable that is set.
    pub fn from_env() -> anyhow::Result<Self> {
        let mut c = Self::default();
        env_parse("LDX_BENCH_REPS", &mut c.reps)?;
        env_parse("LDX_BENCH_BULK", &mut c.bulk)?;
        env_parse("LDX_BENCH_LIVE", &mut c.live)?;
        env_parse("LDX_BENCH_CLIENTS", &mut c.clients)?;
        env_parse("LDX_BENCH_RATE", &mut c.rate)?;
        env_parse("LDX_BENCH_LATENCY_SECS", &mut c.latency_secs)?;
        env_parse("LDX_BENCH_LOW_RATE", &mut c.low_rate)?;
        env_parse("LDX_BENCH_CATCHUP", &mut c.catchup)?;
        env_parse("LDX_BENCH_LEDGER", &mut c.ledger_rows)?;
        env_parse("LDX_BENCH_IDLE_NODES", &mut c.idle_nodes)?;
        env_parse("LDX_BENCH_LOOKUPS", &mut c.lookups)?;
        if let Ok(v) = std::env::var("LDX_BENCH_DIVISIONS") {
            c.divisions = v.into();
        }
        if let Ok(v) = std::env::var("LDX_BENCH_PG_BIN") {
            c.pg_bin = v.into();
        }
        if let Ok(v) = std::env::var("LDX_BENCH_PGBENCH") {
            c.pgbench = Some(v.into());
        }
        if let Ok(v) = std::env::var("LDX_BENCH_LOG") {
            c.log_filter = v;
        }
        if let Ok(v) = std::env::var("LDX_BENCH_ONLY") {
            c.set_only(&v)?;
        }
        c.validate()?;
        Ok(c)
    }

    /// Restricts the run to the comma-separated parts of `list`.
    pub fn set_only(&mut self, list: &str) -> anyhow::Result<()> {
        let parts: Vec<String> = list.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        for p in &parts {
            anyhow::ensure!(PARTS.contains(&p.as_str()), "LDX_BENCH_ONLY: unknown part {p:?}; known: {PARTS:?}");
        }
        self.only = Some(parts);
        Ok(())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.reps >= 1, "LDX_BENCH_REPS must be at least 1");
        anyhow::ensure!(self.clients >= 1, "LDX_BENCH_CLIENTS must be at least 1");
        anyhow::ensure!(self.rate >= 1, "LDX_BENCH_RATE must be at least 1");
        for (name, n) in [("LDX_BENCH_BULK", self.bulk), ("LDX_BENCH_LIVE", self.live)] {
            anyhow::ensure!(
                n >= BULK_BATCH && n % BULK_BATCH == 0,
                "{name} must be a multiple of {BULK_BATCH}, got {n}"
            );
        }
        anyhow::ensure!(self.catchup >= 1, "LDX_BENCH_CATCHUP must be at least 1");
        Ok(())
    }

    /// Whether `part` (one of `ldx,pg,rocks,scale,idle`) runs.
    pub fn runs(&self, part: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.iter().any(|p| p == part))
    }

    pub fn pgbench(&self) -> PathBuf {
        if let Some(p) = &self.pgbench {
            return p.clone();
        }
        let beside = self.pg_bin.join("pgbench");
        if beside.exists() { beside } else { PathBuf::from("/usr/bin/pgbench") }
    }
}

/// The parts of a run, in the order they run.
pub const PARTS: [&str; 5] = ["rocks", "pg", "ldx", "scale", "idle"];

fn env_parse<T: FromStr>(name: &str, out: &mut T) -> anyhow::Result<()>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    if let Ok(v) = std::env::var(name) {
        let v = v.replace('_', "");
        *out = v.parse().with_context(|| format!("{name}={v:?} is not a number"))?;
    }
    Ok(())
}

/// Runs every selected part and gathers the table.
pub async fn run(config: &BenchConfig) -> anyhow::Result<Report> {
    config.validate()?;
    let mut report = Report::new(config.clone());
    report.machine = sys::machine();
    report.load_before = sys::loadavg();
    if config.runs("rocks") {
        eprintln!("== raw RocksDB");
        report.rocks = Some(rocks::run(config).await.context("raw RocksDB")?);
    }
    if config.runs("pg") {
        eprintln!("== PostgreSQL logical replication");
        report.pg = Some(postgres::run(config).await.context("PostgreSQL logical replication")?);
    }
    if config.runs("ldx") {
        eprintln!("== ldx node to node");
        report.ldx = Some(ldx::run(config).await.context("ldx node to node")?);
    }
    if config.runs("scale") {
        eprintln!("== directory at national scale");
        report.scale = Some(scale::directory(config).await.context("directory at national scale")?);
    }
    if config.runs("idle") {
        eprintln!("== idle nodes");
        report.idle = Some(scale::idle_nodes(config).await.context("idle nodes")?);
    }
    report.load_after = sys::loadavg();
    Ok(report)
}

/// The median of `samples` (the mean of the middle two for an even count); NaN when empty.
pub fn median(samples: &[f64]) -> f64 {
    let mut s: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    if s.len() % 2 == 1 { s[mid] } else { (s[mid - 1] + s[mid]) / 2.0 }
}

/// The `p`th percentile (0..=100) of `samples` by the nearest-rank method; NaN when empty.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut s: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

/// Items per second of `count` items in `elapsed`.
pub fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// Milliseconds, fractional.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 50.0), 50.0);
        assert_eq!(percentile(&hundred, 99.0), 99.0);
        assert_eq!(percentile(&hundred, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn only_accepts_known_parts() {
        let mut c = BenchConfig::default();
        c.set_only("pg, rocks").unwrap();
        assert!(c.runs("pg") && c.runs("rocks") && !c.runs("ldx"));
        assert!(c.set_only("pg,mysql").is_err());
    }

    #[test]
    fn sizes_must_be_whole_batches() {
        let c = BenchConfig { bulk: 1_500, ..BenchConfig::default() };
        assert!(c.validate().is_err());
        assert!(BenchConfig::default().validate().is_ok());
    }
}
