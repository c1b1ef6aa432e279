//! The gateway's short memory of replication: one record per collection round (every
//! node's reachability and every channel's lag) in the gateway's own RocksDB, trimmed to a
//! retention window. The dashboard's lag-over-time chart reads it, so the chart survives
//! a gateway restart and does not depend on a browser having been open.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use ldx_node::rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, Direction, IteratorMode, Options,
};
use ldx_node::storage::{StorageError, codec};

/// The column family holding the rounds.
pub const CF_ROUNDS: &str = "rounds";

/// Kind byte of a [`RoundKey`]. Once assigned, a kind byte is never reused.
const KIND_ROUND: u8 = 1;

/// Trimming writes a range tombstone; once a minute keeps their number small while the
/// store never holds more than a minute beyond the retention window.
const TRIM_EVERY_MS: i64 = 60_000;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history store in {path}: {source}")]
    Open { path: String, source: ldx_node::rocksdb::Error },
    #[error("history store: {0}")]
    Storage(#[from] StorageError),
    #[error("history key: {0}")]
    Key(String),
}

impl From<ldx_node::rocksdb::Error> for HistoryError {
    fn from(e: ldx_node::rocksdb::Error) -> Self {
        Self::Storage(StorageError::Rocks(e))
    }
}

/// How long the gateway keeps its history unless told otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Where the gateway keeps its history and for how long.
#[derive(Debug, Clone)]
pub struct HistoryOptions {
    pub dir: std::path::PathBuf,
    pub retention: Duration,
}

/// One collection round as stored: what the gateway saw at `at_ms`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Round {
    /// UTC milliseconds when the round finished.
    #[prost(int64, tag = "1")]
    pub at_ms: i64,
    #[prost(message, repeated, tag = "2")]
    pub nodes: Vec<NodeSample>,
    #[prost(message, repeated, tag = "3")]
    pub channels: Vec<ChannelSample>,
}

/// A node's reachability in one round.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeSample {
    #[prost(string, tag = "1")]
    pub division: String,
    #[prost(bool, tag = "2")]
    pub reachable: bool,
}

/// A channel's lag in one round, as the collector computes it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChannelSample {
    #[prost(string, tag = "1")]
    pub from: String,
    #[prost(string, tag = "2")]
    pub to: String,
    #[prost(uint64, tag = "3")]
    pub lag_messages: u64,
    /// Age of the sender's oldest unacknowledged envelope.
    #[prost(int64, tag = "4")]
    pub lag_ms: i64,
    #[prost(uint64, tag = "5")]
    pub pending: u64,
}

/// Key of a round: kind byte, then the time as a big-endian integer with the sign bit
/// flipped, so byte order is time order (negative times included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RoundKey {
    pub at_ms: i64,
}

impl RoundKey {
    pub const LEN: usize = 9;

    pub fn encode(self) -> [u8; Self::LEN] {
        let mut out = [0; Self::LEN];
        out[0] = KIND_ROUND;
        out[1..].copy_from_slice(&((self.at_ms as u64) ^ (1 << 63)).to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, HistoryError> {
        match bytes {
            [KIND_ROUND, rest @ ..] if rest.len() == Self::LEN - 1 => {
                let raw = u64::from_be_bytes(rest.try_into().map_err(|_| HistoryError::Key("length".into()))?);
                Ok(Self { at_ms: (raw ^ (1 << 63)) as i64 })
            }
            [kind, ..] if *kind != KIND_ROUND => Err(HistoryError::Key(format!("kind byte {kind} is not a round"))),
            _ => Err(HistoryError::Key(format!("{} bytes, a round key has {}", bytes.len(), Self::LEN))),
        }
    }
}

/// The history store. Rounds older than the retention window are dropped as new ones
/// arrive.
pub struct History {
    db: DB,
    retention_ms: i64,
    /// Time of the last trim (`i64::MIN`: not yet trimmed since opening).
    last_trim_ms: Mutex<i64>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").field("path", &self.db.path()).field("retention_ms", &self.retention_ms).finish()
    }
}

impl History {
    /// Opens (creating if needed) the history store in `dir`, keeping `retention` of rounds.
    pub fn open(dir: &Path, retention: Duration) -> Result<Self, HistoryError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // The build carries no compression library.
        opts.set_compression_type(DBCompressionType::None);
        let mut cf_opts = Options::default();
        cf_opts.set_compression_type(DBCompressionType::None);
        let cfs = [ColumnFamilyDescriptor::new(CF_ROUNDS, cf_opts)];
        let db = DB::open_cf_descriptors(&opts, dir, cfs)
            .map_err(|source| HistoryError::Open { path: dir.display().to_string(), source })?;
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        Ok(Self { db, retention_ms, last_trim_ms: Mutex::new(i64::MIN) })
    }

    fn cf(&self) -> &ColumnFamily {
        self.db.cf_handle(CF_ROUNDS).expect("the column family is created at open")
    }

    /// Stores `round` and, at most once a minute, drops in the same batch every round older
    /// than the retention window before it.
    pub fn append(&self, round: &Round) -> Result<(), HistoryError> {
        let mut batch = ldx_node::rocksdb::WriteBatch::default();
        batch.put_cf(self.cf(), RoundKey { at_ms: round.at_ms }.encode(), codec::encode(round));
        let mut last_trim = self.last_trim_ms.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let trim = *last_trim == i64::MIN || round.at_ms.saturating_sub(*last_trim) >= TRIM_EVERY_MS;
        if trim {
            let cutoff = round.at_ms.saturating_sub(self.retention_ms);
            batch.delete_range_cf(
                self.cf(),
                RoundKey { at_ms: i64::MIN }.encode(),
                RoundKey { at_ms: cutoff }.encode(),
            );
        }
        self.db.write(batch)?;
        if trim {
            *last_trim = round.at_ms;
        }
        Ok(())
    }

    /// Every stored round at or after `from_ms`, oldest first.
    pub fn since(&self, from_ms: i64) -> Result<Vec<Round>, HistoryError> {
        let start = RoundKey { at_ms: from_ms }.encode();
        let mut rounds = Vec::new();
        for item in self.db.iterator_cf(self.cf(), IteratorMode::From(&start, Direction::Forward)) {
            let (key, value) = item?;
            let key = RoundKey::decode(&key)?;
            let mut round: Round = codec::decode("history round", &value)?;
            // The key is the authority on time: a value is never read without its key.
            round.at_ms = key.at_ms;
            rounds.push(round);
        }
        Ok(rounds)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn round(at_ms: i64, lag: u64) -> Round {
        Round {
            at_ms,
            nodes: vec![NodeSample { division: "411421".into(), reachable: lag == 0 }],
            channels: vec![ChannelSample {
                from: "410103007".into(),
                to: "411421".into(),
                lag_messages: lag,
                lag_ms: 1_000 * lag as i64,
                pending: lag,
            }],
        }
    }

    proptest! {
        #[test]
        fn round_keys_round_trip(at_ms in any::<i64>()) {
            let key = RoundKey { at_ms };
            prop_assert_eq!(RoundKey::decode(&key.encode()).unwrap(), key);
        }

        #[test]
        fn round_keys_sort_by_time(a in any::<i64>(), b in any::<i64>()) {
            let (ka, kb) = (RoundKey { at_ms: a }.encode(), RoundKey { at_ms: b }.encode());
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }
    }

    #[test]
    fn malformed_keys_are_refused_with_the_reason() {
        let err = RoundKey::decode(&[2; 9]).unwrap_err().to_string();
        assert!(err.contains("kind byte 2"), "{err}");
        let err = RoundKey::decode(&[KIND_ROUND, 0, 1]).unwrap_err().to_string();
        assert!(err.contains("3 bytes"), "{err}");
    }

    #[test]
    fn rounds_come_back_in_time_order_from_a_point_in_time() {
        let temp = tempfile::tempdir().unwrap();
        let history = History::open(temp.path(), Duration::from_secs(3600)).unwrap();
        for (at, lag) in [(3_000, 3), (1_000, 1), (2_000, 2)] {
            history.append(&round(at, lag)).unwrap();
        }
        let all = history.since(0).unwrap();
        assert_eq!(all.iter().map(|r| r.at_ms).collect::<Vec<_>>(), [1_000, 2_000, 3_000]);
        assert_eq!(all[1], round(2_000, 2));
        assert_eq!(history.since(2_000).unwrap().len(), 2);
        assert!(history.since(3_001).unwrap().is_empty());
    }

    #[test]
    fn rounds_older_than_the_retention_window_are_trimmed() {
        let temp = tempfile::tempdir().unwrap();
        let hour = 3_600_000;
        let times = |history: &History| history.since(i64::MIN).unwrap().iter().map(|r| r.at_ms).collect::<Vec<_>>();
        {
            let history = History::open(temp.path(), Duration::from_secs(3600)).unwrap();
            for at in [0, 1_000, 2_000, 3_000, 30_000] {
                history.append(&round(at, 0)).unwrap();
            }
            // The first append trimmed (nothing yet); the next trim comes a minute later,
            // and drops what is older than an hour before it.
            history.append(&round(hour + 2_500, 2)).unwrap();
            assert_eq!(times(&history), [3_000, 30_000, hour + 2_500]);
            history.append(&round(hour + 40_000, 1)).unwrap();
            assert_eq!(times(&history), [3_000, 30_000, hour + 2_500, hour + 40_000], "within the minute");
        }
        // Reopened with a shorter window, the store trims on the first append.
        let history = History::open(temp.path(), Duration::from_secs(60)).unwrap();
        history.append(&round(hour + 62_500, 0)).unwrap();
        assert_eq!(times(&history), [hour + 2_500, hour + 40_000, hour + 62_500]);
    }
}
