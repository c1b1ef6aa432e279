//! The node's RocksDB: one column family per concern, typed keys, versioned values, and
//! every multi-key change as one `WriteBatch`.

pub mod cf;
pub mod codec;
mod durable;
mod exchange;
pub mod keys;
pub mod records;

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use rocksdb::{
    ColumnFamilyDescriptor, DB, DBCompressionType, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};

use crate::crypto::PersonKey;
pub use durable::Ticket;
use keys::{MetaKey, PersonRecordKey};
use records::{AuditHead, PersonRecord};

/// On-disk layout version. Bumped when a change needs a migration.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("stored {what} is corrupt: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("data directory holds schema version {found}, this build reads version {SCHEMA_VERSION}")]
    SchemaMismatch { found: u32 },
    #[error("data directory belongs to division {found}, the config says {configured}")]
    WrongDivision { found: String, configured: String },
    #[error(
        "data_key_file is not the data key this data directory was written with ({why}); \
         start the node with its own data.key (from the backup kept apart from the data)"
    )]
    WrongDataKey { why: &'static str },
    #[error(
        "the {kind} for {peer} would be an envelope of {bytes} bytes, over the {max} a channel carries; nothing was stored"
    )]
    EnvelopeTooLarge { kind: &'static str, peer: String, bytes: usize, max: usize },
    #[error(
        "the node's disk is almost full ({free_mb} MB free, {reserve_mb} MB kept in reserve): \
         nothing was stored; free space on the data directory's disk and try again"
    )]
    DiskFull { free_mb: u64, reserve_mb: u64 },
    #[error("the node's write-ahead log could not be synced to disk ({0}); the node reopens its store to recover")]
    SyncFailed(String),
}

/// Free bytes (for an unprivileged user) on the file system holding `path`.
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

pub struct Store {
    db: DB,
    /// Single writes outside the commit order (`meta` entries): synced when `sync` is.
    write_opts: WriteOptions,
    /// Batches go to the WAL without waiting; [`Store::wait_durable`] syncs them in groups.
    batch_opts: WriteOptions,
    /// Whether changes are fsync'd before they are acknowledged.
    sync: bool,
    group: durable::GroupSync,
    disk: DiskState,
}

/// Whether writes can be made: the last write's outcome and the free-space check.
#[derive(Debug, Default)]
struct DiskState {
    /// The error of the last failed write, until a write succeeds again.
    failing: Mutex<Option<String>>,
    /// Free space fell below the reserve: changes are refused before they are tried.
    low: AtomicBool,
    /// (free, reserve) in bytes, as last checked.
    space: Mutex<(u64, u64)>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.db.path()).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store for `division`. A data directory is bound to the
    /// division that created it, so a config pointing at another node's data fails loudly.
    /// With `sync`, every write is fsync'd before it returns.
    pub fn open(path: &Path, division: &str, sync: bool) -> Result<Self, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Personal data is sealed before it is stored and does not compress; the build
        // carries no compression library.
        opts.set_compression_type(DBCompressionType::None);
        let cfs = cf::ALL.map(|name| {
            let mut cf_opts = Options::default();
            cf_opts.set_compression_type(DBCompressionType::None);
            if matches!(name, cf::PERSONS | cf::REPORTS) {
                // Looked up by key, and most lookups of a move-in or a notice miss (a new
                // person): bloom filters in the tables and the memtable answer those
                // without a search.
                let mut table = rocksdb::BlockBasedOptions::default();
                table.set_bloom_filter(10.0, false);
                cf_opts.set_block_based_table_factory(&table);
                cf_opts.set_memtable_prefix_bloom_ratio(0.02);
                cf_opts.set_memtable_whole_key_filtering(true);
            }
            ColumnFamilyDescriptor::new(name, cf_opts)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let store = Self::over(db, sync);
        store.check_identity(division)?;
        Ok(store)
    }

    fn over(db: DB, sync: bool) -> Self {
        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(sync);
        Self {
            db,
            write_opts,
            batch_opts: WriteOptions::default(),
            sync,
            group: durable::GroupSync::default(),
            disk: DiskState::default(),
        }
    }

    /// Opens the store of `division` for reading only, also while its node runs (a read
    /// takes no lock): what `ldx-node audit verify` checks.
    pub fn open_read_only(path: &Path, division: &str) -> Result<Self, StorageError> {
        let opts = Options::default();
        // A store last written by an older build may lack a newer column family: a read
        // only opens what is there (and reads nothing from the others).
        let present = DB::list_cf(&opts, path)?;
        let cfs = cf::ALL.into_iter().filter(|name| present.iter().any(|p| p == name));
        let db = DB::open_cf_for_read_only(&opts, path, cfs, false)?;
        let store = Self::over(db, false);
        match store.meta(MetaKey::NodeDivision)? {
            Some(d) if d == division.as_bytes() => Ok(store),
            Some(d) => Err(StorageError::WrongDivision {
                found: String::from_utf8_lossy(&d).into_owned(),
                configured: division.to_owned(),
            }),
            None => {
                Err(StorageError::Corrupt { what: "meta", detail: "no division: not a node's data directory".into() })
            }
        }
    }

    fn check_identity(&self, division: &str) -> Result<(), StorageError> {
        let meta = self.cf(cf::META);
        let version = self.db.get_cf(meta, MetaKey::SchemaVersion.encode())?;
        let found_division = self.db.get_cf(meta, MetaKey::NodeDivision.encode())?;
        match (version, found_division) {
            (None, None) => {
                let mut batch = WriteBatch::default();
                batch.put_cf(meta, MetaKey::SchemaVersion.encode(), SCHEMA_VERSION.to_be_bytes());
                batch.put_cf(meta, MetaKey::NodeDivision.encode(), division.as_bytes());
                self.db.write_opt(batch, &self.write_opts)?;
                Ok(())
            }
            (Some(v), Some(d)) => {
                let found = u32::from_be_bytes(v.as_slice().try_into().map_err(|_| StorageError::Corrupt {
                    what: "schema version",
                    detail: format!("{} bytes", v.len()),
                })?);
                if found != SCHEMA_VERSION {
                    return Err(StorageError::SchemaMismatch { found });
                }
                if d != division.as_bytes() {
                    return Err(StorageError::WrongDivision {
                        found: String::from_utf8_lossy(&d).into_owned(),
                        configured: division.to_owned(),
                    });
                }
                Ok(())
            }
            _ => Err(StorageError::Corrupt { what: "meta", detail: "schema version without division".into() }),
        }
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("every column family is created at open")
    }

    pub fn person(&self, key: &PersonKey) -> Result<Option<PersonRecord>, StorageError> {
        self.db
            .get_cf(self.cf(cf::PERSONS), PersonRecordKey(*key).encode())?
            .map(|v| codec::decode("person record", &v))
            .transpose()
    }

    /// Person records in key order, starting after `after` (or from the first).
    pub fn persons_after(
        &self,
        after: Option<PersonKey>,
    ) -> impl Iterator<Item = Result<(PersonKey, PersonRecord), StorageError>> + '_ {
        let start = match after {
            Some(k) => PersonRecordKey(k).encode().to_vec(),
            None => PersonRecordKey::first().to_vec(),
        };
        self.db
            .iterator_cf(self.cf(cf::PERSONS), IteratorMode::From(&start, Direction::Forward))
            .map(|item| {
                let (k, v) = item?;
                let key = PersonRecordKey::decode(&k)
                    .map_err(|e| StorageError::Corrupt { what: "person key", detail: e.to_string() })?;
                Ok((key.0, codec::decode("person record", &v)?))
            })
            .filter(move |item| !matches!((item, after), (Ok((k, _)), Some(a)) if *k == a))
    }

    pub fn audit_head(&self) -> Result<AuditHead, StorageError> {
        Ok(self
            .db
            .get_cf(self.cf(cf::META), MetaKey::AuditHead.encode())?
            .map(|v| codec::decode("audit head", &v))
            .transpose()?
            .unwrap_or_default())
    }

    /// All audit entries in order, for verification of the chain: each entry's key index
    /// and its decoded value (an error for a value that does not decode).
    pub fn audit_entries(
        &self,
    ) -> impl Iterator<Item = Result<(u64, Result<records::AuditEntry, StorageError>), StorageError>> + '_ {
        self.db.iterator_cf(self.cf(cf::AUDIT), IteratorMode::Start).map(|item| {
            let (k, v) = item?;
            let index = keys::AuditKey::decode(&k)
                .map_err(|e| StorageError::Corrupt { what: "audit key", detail: e.to_string() })?
                .0;
            Ok((index, codec::decode("audit entry", &v)))
        })
    }

    pub fn staff(&self, name: &str) -> Result<Option<records::StaffRecord>, StorageError> {
        self.db
            .get_cf(self.cf(cf::STAFF), keys::staff_account(name))?
            .map(|v| codec::decode("staff account", &v))
            .transpose()
    }

    /// Every staff account, in name order.
    pub fn staff_all(&self) -> Result<Vec<records::StaffRecord>, StorageError> {
        let prefix = keys::staff_account("");
        self.db
            .iterator_cf(self.cf(cf::STAFF), IteratorMode::From(&prefix, Direction::Forward))
            .map_while(|item| match item {
                Ok((k, v)) if k.starts_with(&prefix) => Some(codec::decode("staff account", &v)),
                Ok(_) => None,
                Err(e) => Some(Err(e.into())),
            })
            .collect()
    }

    pub fn session(&self, id: &[u8]) -> Result<Option<records::SessionRecord>, StorageError> {
        self.db
            .get_cf(self.cf(cf::STAFF), keys::staff_session(id))?
            .map(|v| codec::decode("staff session", &v))
            .transpose()
    }

    /// Audit entries after index `after`, in order.
    pub fn audit_after(&self, after: u64) -> impl Iterator<Item = Result<records::AuditEntry, StorageError>> + '_ {
        let start = keys::AuditKey(after.saturating_add(1)).encode();
        self.db
            .iterator_cf(self.cf(cf::AUDIT), IteratorMode::From(&start, Direction::Forward))
            .map(|item| codec::decode("audit entry", &item?.1))
    }

    /// A single-valued `meta` entry, as stored.
    pub fn meta(&self, key: MetaKey) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(cf::META), key.encode())?)
    }

    /// Removes a single-valued `meta` entry, as a store written by an older build lacks it.
    #[cfg(test)]
    pub(crate) fn delete_meta(&self, key: MetaKey) -> Result<(), StorageError> {
        Ok(self.db.delete_cf(self.cf(cf::META), key.encode())?)
    }

    /// Replaces a single-valued `meta` entry (one key, so no batch is needed).
    pub fn put_meta(&self, key: MetaKey, value: &[u8]) -> Result<(), StorageError> {
        let written = self.db.put_cf_opt(self.cf(cf::META), key.encode(), value, &self.write_opts);
        self.noted(written)
    }

    /// Records a write's outcome: a failure (a full disk, most often) until a write works
    /// again. RocksDB resumes by itself once space is free; the next write that works, a
    /// change or [`Store::probe_write`], says so.
    fn noted(&self, written: Result<(), rocksdb::Error>) -> Result<(), StorageError> {
        let mut failing = self.disk.failing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match written {
            Ok(()) => {
                if let Some(error) = failing.take() {
                    tracing::info!(after = %error, "the store takes writes again");
                }
                Ok(())
            }
            Err(e) => {
                if failing.is_none() {
                    tracing::error!(error = %e, "the store cannot write; changes are refused until it can");
                }
                *failing = Some(e.to_string());
                Err(e.into())
            }
        }
    }

    /// Rewrites the column families that hold sealed personal data (persons, reports,
    /// outbox) and flushes every memtable, so values overwritten or deleted before, such
    /// as purged fields, leave the SST files and the write-ahead log.
    pub fn compact_personal(&self) -> Result<(), StorageError> {
        let cfs: Vec<_> = cf::ALL.iter().map(|name| self.cf(name)).collect();
        self.db.flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        for name in [cf::PERSONS, cf::REPORTS, cf::OUTBOX] {
            let mut options = rocksdb::CompactOptions::default();
            options.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
            self.db.compact_range_cf_opt(self.cf(name), None::<&[u8]>, None::<&[u8]>, &options);
        }
        Ok(())
    }

    /// The error of the last failed write, while writes fail; after a failed WAL sync, that
    /// error for good (only a restart tells what is durable).
    pub fn write_failure(&self) -> Option<String> {
        if let Some(failed) = self.group.failure() {
            return Some(failed);
        }
        self.disk.failing.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Waits until the write of `ticket`, and so every write before it, is on disk. Many
    /// waiters share one sync (group commit).
    pub fn wait_durable(&self, ticket: Ticket) -> Result<(), StorageError> {
        if !self.sync {
            return Ok(());
        }
        self.group.wait(ticket, || self.db.flush_wal(true).map_err(|e| e.to_string())).map_err(StorageError::SyncFailed)
    }

    /// Waits until every write made so far is on disk: what was read before this call is
    /// then durable, so it can be told to a peer.
    pub fn barrier(&self) -> Result<(), StorageError> {
        self.wait_durable(self.group.last_written())
    }

    /// A small write that shows whether writes work again.
    pub fn probe_write(&self) -> Result<(), StorageError> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.put_meta(MetaKey::WriteProbe, &now.as_millis().to_be_bytes())
    }

    /// Checks the free space of the data directory against `reserve` bytes: below it,
    /// [`Store::check_space`] refuses changes, so the disk never fills with half the
    /// node's work and acks (which free space) can still be written. Returns the free bytes.
    pub fn check_free_space(&self, reserve: u64) -> std::io::Result<u64> {
        let free = free_bytes(self.db.path())?;
        let low = free < reserve;
        if low != self.disk.low.swap(low, Ordering::Relaxed) {
            match low {
                true => tracing::error!(
                    free_mb = free >> 20,
                    reserve_mb = reserve >> 20,
                    "disk almost full: changes are refused until space is freed"
                ),
                false => {
                    tracing::info!(free_mb = free >> 20, "disk space back above the reserve: changes are taken again")
                }
            }
        }
        *self.disk.space.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = (free, reserve);
        Ok(free)
    }

    /// Refuses a change while free space is below the reserve.
    pub fn check_space(&self) -> Result<(), StorageError> {
        if !self.disk.low.load(Ordering::Relaxed) {
            return Ok(());
        }
        let (free, reserve) = *self.disk.space.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Err(StorageError::DiskFull { free_mb: free >> 20, reserve_mb: reserve >> 20 })
    }

    /// Whether changes can be made now: writes work and space is above the reserve.
    pub fn writable(&self) -> bool {
        !self.disk.low.load(Ordering::Relaxed) && self.write_failure().is_none()
    }

    pub fn batch(&self) -> Batch<'_> {
        Batch { store: self, inner: WriteBatch::default() }
    }
}

/// A set of changes applied atomically by [`Batch::commit`].
pub struct Batch<'a> {
    store: &'a Store,
    inner: WriteBatch,
}

impl Batch<'_> {
    pub fn put_person(&mut self, key: &PersonKey, record: &PersonRecord) {
        self.inner.put_cf(self.store.cf(cf::PERSONS), PersonRecordKey(*key).encode(), codec::encode(record));
    }

    /// Appends `entries` to the audit chain and moves its head to `head`, written once.
    pub fn put_audit(&mut self, entries: &[records::AuditEntry], head: &AuditHead) {
        for entry in entries {
            self.inner.put_cf(self.store.cf(cf::AUDIT), keys::AuditKey(entry.seq).encode(), codec::encode(entry));
        }
        self.inner.put_cf(self.store.cf(cf::META), MetaKey::AuditHead.encode(), codec::encode(head));
    }

    pub fn put_staff(&mut self, record: &records::StaffRecord) {
        self.inner.put_cf(self.store.cf(cf::STAFF), keys::staff_account(&record.name), codec::encode(record));
    }

    pub fn put_session(&mut self, id: &[u8], record: &records::SessionRecord) {
        self.inner.put_cf(self.store.cf(cf::STAFF), keys::staff_session(id), codec::encode(record));
    }

    pub fn delete_session(&mut self, id: &[u8]) {
        self.inner.delete_cf(self.store.cf(cf::STAFF), keys::staff_session(id));
    }

    /// Whether the batch holds no change yet.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Writes the batch to the WAL and the memtable without waiting for the disk. The
    /// caller holds the commit order (the registry's writer lock) and passes the ticket to
    /// [`Store::wait_durable`] once it has let go of it.
    pub fn write(self) -> Result<Ticket, StorageError> {
        if let Some(failed) = self.store.group.failure() {
            return Err(StorageError::SyncFailed(failed));
        }
        let written = self.store.db.write_opt(self.inner, &self.store.batch_opts);
        self.store.noted(written)?;
        Ok(self.store.group.written())
    }

    /// Writes the batch and waits until it is durable.
    pub fn commit(self) -> Result<(), StorageError> {
        let store = self.store;
        let ticket = self.write()?;
        store.wait_durable(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u8) -> PersonRecord {
        PersonRecord { person_key: vec![n; 32], division: "410103007".into(), ..Default::default() }
    }

    #[test]
    fn persons_round_trip_and_scan_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "410103007", false).unwrap();
        let mut batch = store.batch();
        for n in [3u8, 1, 2] {
            batch.put_person(&PersonKey([n; 32]), &record(n));
        }
        batch.commit().unwrap();
        assert_eq!(store.person(&PersonKey([2; 32])).unwrap(), Some(record(2)));
        assert_eq!(store.person(&PersonKey([9; 32])).unwrap(), None);
        let all: Vec<_> = store.persons_after(None).map(|r| r.unwrap().0.0[0]).collect();
        assert_eq!(all, [1, 2, 3]);
        let rest: Vec<_> = store.persons_after(Some(PersonKey([1; 32]))).map(|r| r.unwrap().0.0[0]).collect();
        assert_eq!(rest, [2, 3]);
    }

    #[test]
    fn data_directory_is_bound_to_its_division() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path(), "410103007", false).unwrap());
        assert!(Store::open(dir.path(), "410103007", false).is_ok());
        let err = Store::open(dir.path(), "410103008", false).unwrap_err();
        assert!(err.to_string().contains("belongs to division 410103007"), "{err}");
    }

    #[test]
    fn a_batch_that_is_not_committed_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "410103007", false).unwrap();
        let mut batch = store.batch();
        batch.put_person(&PersonKey([1; 32]), &record(1));
        drop(batch);
        assert_eq!(store.persons_after(None).count(), 0);
    }
}
