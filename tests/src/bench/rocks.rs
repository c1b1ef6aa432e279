//! The physical limit: raw RocksDB puts of notice-sized values with every write synced,
//! in a temporary directory on the disk the nodes use, with the node's options (no
//! compression). Batches of 1000 for the bulk shape, 16 threads of single puts for the
//! live shape (RocksDB groups concurrent synced writes into one WAL sync).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ldx_node::rocksdb::{DB, DBCompressionType, Options, WriteBatch, WriteOptions};

use super::{BULK_BATCH, BenchConfig, ROW_BYTES, rate};

/// Puts per repetition of the 16-thread shape, per thread.
const PUTS_PER_THREAD: u64 = 1_000;

#[derive(Debug, Clone, Default)]
pub struct RocksResults {
    /// Puts/s of synced WriteBatches of 1000, one per repetition.
    pub batch: Vec<f64>,
    /// Puts/s of single synced puts from `clients` threads, one per repetition.
    pub threads: Vec<f64>,
    pub threads_count: usize,
    /// Puts/s of single synced puts from one thread: one WAL sync each, nothing to group.
    pub single: Vec<f64>,
    /// Where the database was written (the nodes' temporary directories are beside it).
    pub dir: String,
}

fn value(n: u64) -> Vec<u8> {
    // Distinct, incompressible-looking bytes of the notice size.
    let mut v = Vec::with_capacity(ROW_BYTES);
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < ROW_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(ROW_BYTES);
    v
}

fn open(path: &std::path::Path) -> anyhow::Result<DB> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_compression_type(DBCompressionType::None);
    Ok(DB::open(&opts, path)?)
}

fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

/// `count` puts in synced batches of [`BULK_BATCH`]; returns puts/s.
fn batches(db: &DB, first: u64, count: u64) -> anyhow::Result<f64> {
    let opts = synced();
    let start = Instant::now();
    let mut n = first;
    while n < first + count {
        let mut batch = WriteBatch::default();
        for k in n..n + BULK_BATCH {
            batch.put(k.to_be_bytes(), value(k));
        }
        db.write_opt(batch, &opts)?;
        n += BULK_BATCH;
    }
    Ok(rate(count, start.elapsed()))
}

/// `threads` threads of [`PUTS_PER_THREAD`] single synced puts each; returns puts/s.
fn threads(db: &Arc<DB>, first: u64, threads: usize) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicU64::new(first));
    let end = first + threads as u64 * PUTS_PER_THREAD;
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (db, next) = (db.clone(), next.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let opts = synced();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= end {
                        return Ok(());
                    }
                    db.put_opt(k.to_be_bytes(), value(k), &opts)?;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("a put thread panicked"))??;
    }
    Ok(rate(end - first, start.elapsed()))
}

pub async fn run(config: &BenchConfig) -> anyhow::Result<RocksResults> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || run_blocking(&config)).await?
}

fn run_blocking(config: &BenchConfig) -> anyhow::Result<RocksResults> {
    let dir = tempfile::Builder::new().prefix("ldx-bench-rocks-").tempdir()?;
    let db = Arc::new(open(dir.path())?);
    let mut out =
        RocksResults { threads_count: config.clients, dir: dir.path().display().to_string(), ..Default::default() };
    let mut key = 0;
    for rep in 0..config.reps {
        let r = batches(&db, key, config.bulk)?;
        key += config.bulk;
        eprintln!("   rocksdb batches of {BULK_BATCH}, rep {}: {r:.0} puts/s", rep + 1);
        out.batch.push(r);
        let r = threads(&db, key, config.clients)?;
        key += config.clients as u64 * PUTS_PER_THREAD;
        eprintln!("   rocksdb {} threads of single synced puts, rep {}: {r:.0} puts/s", config.clients, rep + 1);
        out.threads.push(r);
        let r = threads(&db, key, 1)?;
        key += PUTS_PER_THREAD;
        eprintln!("   rocksdb 1 thread of single synced puts, rep {}: {r:.0} puts/s", rep + 1);
        out.single.push(r);
        // Let compaction settle between repetitions so each starts alike.
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_notice_sized_and_distinct() {
        assert_eq!(value(1).len(), ROW_BYTES);
        assert_ne!(value(1), value(2));
    }

    #[test]
    fn a_small_run_writes_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(open(dir.path()).unwrap());
        assert!(batches(&db, 0, 2 * BULK_BATCH).unwrap() > 0.0);
        assert!(threads(&db, 2 * BULK_BATCH, 2).unwrap() > 0.0);
        let total = 2 * BULK_BATCH + 2 * PUTS_PER_THREAD;
        assert_eq!(db.iterator(ldx_node::rocksdb::IteratorMode::Start).count() as u64, total);
    }
}
