//! The node's RocksDB: one column family per concern, typed keys, versioned values, and
//! every multi-key change as one `WriteBatch`.

pub mod cf;
pub mod codec;
mod exchange;
pub mod keys;
pub mod records;

use std::path::Path;

use rocksdb::{
    ColumnFamilyDescriptor, DB, DBCompressionType, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};

use crate::crypto::PersonKey;
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
}

pub struct Store {
    db: DB,
    write_opts: WriteOptions,
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
            ColumnFamilyDescriptor::new(name, cf_opts)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(sync);
        let store = Self { db, write_opts };
        store.check_identity(division)?;
        Ok(store)
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

    /// All audit entries in order, for verification of the chain.
    pub fn audit_entries(&self) -> impl Iterator<Item = Result<records::AuditEntry, StorageError>> + '_ {
        self.db.iterator_cf(self.cf(cf::AUDIT), IteratorMode::Start).map(|item| codec::decode("audit entry", &item?.1))
    }

    /// A single-valued `meta` entry, as stored.
    pub fn meta(&self, key: MetaKey) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(cf::META), key.encode())?)
    }

    /// Replaces a single-valued `meta` entry (one key, so no batch is needed).
    pub fn put_meta(&self, key: MetaKey, value: &[u8]) -> Result<(), StorageError> {
        self.db.put_cf_opt(self.cf(cf::META), key.encode(), value, &self.write_opts)?;
        Ok(())
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

    pub fn put_audit(&mut self, entry: &records::AuditEntry, head: &AuditHead) {
        self.inner.put_cf(self.store.cf(cf::AUDIT), keys::AuditKey(entry.seq).encode(), codec::encode(entry));
        self.inner.put_cf(self.store.cf(cf::META), MetaKey::AuditHead.encode(), codec::encode(head));
    }

    pub fn commit(self) -> Result<(), StorageError> {
        self.store.db.write_opt(self.inner, &self.store.write_opts)?;
        Ok(())
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
