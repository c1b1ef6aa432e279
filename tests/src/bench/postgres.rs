//! The baseline: two local PostgreSQL instances, a publication on one and a subscription on
//! the other (logical replication), both with `fsync` and `synchronous_commit` on, started
//! on loopback ports in temporary directories and torn down after. Rows are notice-sized;
//! the source is loaded with `pgbench` (one client inserting 1000 rows per transaction,
//! then 16 clients inserting one row per transaction); end to end is the time from the
//! first insert until the replica's count shows every row.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use super::{BULK_BATCH, BenchConfig, ROW_BYTES, rate, sys};

const START_TIMEOUT: Duration = Duration::from_secs(60);
const REPLICATE_TIMEOUT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(20);
/// Characters of `person_key` (64 hex digits, as in ldx); the body makes up the rest of a row.
const KEY_CHARS: usize = 64;

#[derive(Debug, Clone, Default)]
pub struct PgResults {
    /// Rows/s end to end, bulk shape, one per repetition.
    pub bulk: Vec<f64>,
    /// Rows/s committed at the source (pgbench's own run), bulk shape.
    pub bulk_source: Vec<f64>,
    /// Rows/s end to end, 16 clients of single-row transactions.
    pub live: Vec<f64>,
    pub live_source: Vec<f64>,
    /// pgbench's average latency per transaction of the live shape, ms.
    pub live_latency_ms: Vec<f64>,
    pub version: String,
}

/// Runs processes as the `postgres` user when the benchmark runs as root (the server
/// refuses to run as root).
#[derive(Debug, Clone, Copy)]
struct RunAs(Option<(u32, u32)>);

impl RunAs {
    fn detect() -> anyhow::Result<Self> {
        if sys::euid() != Some(0) {
            return Ok(Self(None));
        }
        let ids = sys::user_ids("postgres").context(
            "running as root, and PostgreSQL refuses to: no `postgres` user to run it as \
             (apt-get install postgresql creates one)",
        )?;
        Ok(Self(Some(ids)))
    }

    fn command(self, program: &Path) -> Command {
        let mut c = Command::new(program);
        if let Some((uid, gid)) = self.0 {
            c.uid(uid).gid(gid);
        }
        c.env_remove("PGDATABASE").env_remove("PGHOST").env_remove("PGPORT").env_remove("PGUSER");
        c
    }

    fn own(self, path: &Path) -> anyhow::Result<()> {
        if let Some((uid, gid)) = self.0 {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("chown {} to postgres", path.display()))?;
        }
        Ok(())
    }
}

/// One PostgreSQL server in its own temporary directory; dropping it shuts it down and
/// removes its files.
struct Instance {
    name: &'static str,
    bin: PathBuf,
    run_as: RunAs,
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Instance {
    fn start(name: &'static str, bin: &Path, run_as: RunAs) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix(&format!("ldx-bench-pg-{name}-")).tempdir()?;
        run_as.own(dir.path())?;
        let data = dir.path().join("data");
        let initdb = bin.join("initdb");
        let out = run_as
            .command(&initdb)
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-instructions"])
            .output()
            .with_context(|| format!("cannot run {}", initdb.display()))?;
        ensure!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port()?;
        let conf = format!(
            "\n# ldx-bench\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{sock}'\n\
             wal_level = logical\nfsync = on\nsynchronous_commit = on\nfull_page_writes = on\n\
             max_wal_senders = 10\nmax_replication_slots = 10\nmax_connections = 100\n",
            sock = dir.path().display()
        );
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path)?;
        text.push_str(&conf);
        std::fs::write(&conf_path, text)?;
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        run_as.own(&dir.path().join("server.log"))?;
        let child = run_as
            .command(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start postgres")?;
        let mut instance = Self { name, bin: bin.to_owned(), run_as, port, child: Some(child), dir };
        instance.wait_ready()?;
        instance.psql("postgres", "CREATE DATABASE bench")?;
        Ok(instance)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().expect("started").try_wait()? {
                self.child = None;
                bail!("postgres ({}) exited with {status} while starting; log:\n{}", self.name, self.log());
            }
            let ready = self
                .run_as
                .command(&self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()?;
            if ready.success() {
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                bail!("postgres ({}) not ready within {START_TIMEOUT:?}; log:\n{}", self.name, self.log());
            }
            std::thread::sleep(POLL);
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Runs `sql` in `db` and returns psql's unaligned output.
    fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let out = self
            .run_as
            .command(&self.bin.join("psql"))
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql])
            .output()
            .context("cannot run psql")?;
        ensure!(out.status.success(), "psql ({}) {sql:?}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn count(&self) -> anyhow::Result<u64> {
        Ok(self.psql("bench", "SELECT count(*) FROM notices")?.parse()?)
    }

    /// Writes a pgbench script into the instance's directory.
    fn script(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text)?;
        self.run_as.own(&path)?;
        Ok(path)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT: the fast shutdown; SIGKILL if it takes too long.
            let _ = Command::new("kill").arg("-INT").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(POLL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

const TABLE: &str = "CREATE TABLE notices (seq bigserial PRIMARY KEY, person_key text NOT NULL, body text NOT NULL)";

/// A single-row VALUES tuple of a notice-sized row; the key is random per row, the body a
/// fixed string of the remaining length.
fn row(body: &str) -> String {
    format!("(md5(random()::text) || md5(random()::text), '{body}')")
}

fn body() -> String {
    "x".repeat(ROW_BYTES - KEY_CHARS)
}

/// The two instances, replicating.
struct Pair {
    source: Instance,
    replica: Instance,
    pgbench: PathBuf,
}

impl Pair {
    fn start(config: &BenchConfig) -> anyhow::Result<Self> {
        let bin = &config.pg_bin;
        ensure!(
            bin.join("postgres").exists() && bin.join("initdb").exists(),
            "PostgreSQL server binaries not found in {} (set LDX_BENCH_PG_BIN, or install them: \
             apt-get install postgresql)",
            bin.display()
        );
        let pgbench = config.pgbench();
        ensure!(
            pgbench.exists(),
            "pgbench not found at {} (apt-get install postgresql-contrib or postgresql)",
            pgbench.display()
        );
        let run_as = RunAs::detect()?;
        let source = Instance::start("source", bin, run_as)?;
        let replica = Instance::start("replica", bin, run_as)?;
        source.psql("bench", TABLE)?;
        source.psql("bench", "CREATE PUBLICATION ldx_bench FOR TABLE notices")?;
        replica.psql("bench", TABLE)?;
        replica.psql(
            "bench",
            &format!(
                "CREATE SUBSCRIPTION ldx_bench CONNECTION 'host=127.0.0.1 port={} user=postgres dbname=bench' \
                 PUBLICATION ldx_bench WITH (synchronous_commit = 'on')",
                source.port
            ),
        )?;
        let start = Instant::now();
        loop {
            let pending = replica.psql("bench", "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'")?;
            if pending == "0" {
                break;
            }
            ensure!(start.elapsed() < START_TIMEOUT, "the subscription did not become ready; log:\n{}", replica.log());
            std::thread::sleep(POLL);
        }
        Ok(Self { source, replica, pgbench })
    }

    /// Runs a pgbench script at the source, then waits until the replica holds `base +
    /// rows`; returns (end-to-end rows/s, source rows/s, pgbench's mean latency in ms).
    fn load(&self, script: &Path, clients: usize, transactions: u64, rows: u64) -> anyhow::Result<(f64, f64, f64)> {
        let base = self.replica.count()?;
        let start = Instant::now();
        let out = self
            .source
            .run_as
            .command(&self.pgbench)
            .args(["-n", "-h", "127.0.0.1", "-U", "postgres", "-p", &self.source.port.to_string()])
            .args(["-c", &clients.to_string(), "-j", &clients.min(2).to_string()])
            .args(["-t", &transactions.to_string(), "-f"])
            .arg(script)
            .arg("bench")
            .output()
            .context("cannot run pgbench")?;
        let source_done = start.elapsed();
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success(), "pgbench failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
        let latency = text
            .lines()
            .find(|l| l.starts_with("latency average"))
            .and_then(|l| l.split('=').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN);
        loop {
            let seen = self.replica.count()?;
            if seen >= base + rows {
                ensure!(seen == base + rows, "the replica holds {seen} rows, expected {}", base + rows);
                break;
            }
            ensure!(
                start.elapsed() < REPLICATE_TIMEOUT,
                "the replica shows {} of {rows} rows after {REPLICATE_TIMEOUT:?}",
                seen - base
            );
            std::thread::sleep(POLL);
        }
        let end_to_end = start.elapsed();
        Ok((rate(rows, end_to_end), rate(rows, source_done), latency))
    }
}

pub async fn run(config: &BenchConfig) -> anyhow::Result<PgResults> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || run_blocking(&config)).await?
}

fn run_blocking(config: &BenchConfig) -> anyhow::Result<PgResults> {
    let pair = Pair::start(config)?;
    let mut out = PgResults { version: pair.source.psql("bench", "SHOW server_version")?, ..Default::default() };
    let body = body();
    let rows: Vec<String> = (0..BULK_BATCH).map(|_| row(&body)).collect();
    let bulk = pair
        .source
        .script("bulk.sql", &format!("INSERT INTO notices (person_key, body) VALUES\n{};\n", rows.join(",\n")))?;
    let single = pair
        .source
        .script("single.sql", &format!("INSERT INTO notices (person_key, body) VALUES {};\n", row(&body)))?;
    let clients = config.clients;
    let per_client = config.live.div_ceil(clients as u64);
    for rep in 0..config.reps {
        let (e2e, src, _) = pair.load(&bulk, 1, config.bulk / BULK_BATCH, config.bulk)?;
        eprintln!("   postgres bulk rep {}: {e2e:.0} rows/s end to end, {src:.0} rows/s at the source", rep + 1);
        out.bulk.push(e2e);
        out.bulk_source.push(src);
        let (e2e, src, lat) = pair.load(&single, clients, per_client, per_client * clients as u64)?;
        eprintln!(
            "   postgres {clients} clients rep {}: {e2e:.0} rows/s end to end, {src:.0} rows/s at the source, {lat:.2} ms/txn",
            rep + 1
        );
        out.live.push(e2e);
        out.live_source.push(src);
        out.live_latency_ms.push(lat);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_notice_sized() {
        assert_eq!(body().len() + KEY_CHARS, ROW_BYTES);
        assert!(row("abc").starts_with("(md5(random()::text) || md5(random()::text), 'abc')"));
    }
}
