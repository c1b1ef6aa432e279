//! Storage of the exchange: outbox, channel state, message log and due items, read by
//! [`Store`] and written only through a [`Batch`], together with the change that caused
//! them.

use rocksdb::{Direction, IteratorMode};

use super::keys::{ChannelKey, DueKey, LogKey, MetaKey, OutboxKey, ReportIdKey, ReportKey, StatementKey};
use super::records::{DueItem, InChannel, LogRecord, OutChannel, OutboxEntry, ReportRecord};
use super::{Batch, StorageError, Store, cf, codec};

/// Above this many envelopes, an ack deletes them with one range tombstone.
const OUTBOX_POINT_DELETES_MAX: u64 = 4096;

fn corrupt(what: &'static str) -> impl Fn(super::keys::KeyDecodeError) -> StorageError {
    move |e| StorageError::Corrupt { what, detail: e.to_string() }
}

impl Store {
    /// Every channel this node sends on, in peer order.
    pub fn out_channels(&self) -> Result<Vec<(String, OutChannel)>, StorageError> {
        let prefix = ChannelKey::out_prefix();
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::CHANNELS), IteratorMode::From(&prefix, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let ChannelKey::Out { peer } = ChannelKey::decode(&k).map_err(corrupt("channel key"))? else {
                break;
            };
            out.push((peer, codec::decode("outbound channel", &v)?));
        }
        Ok(out)
    }

    /// Every channel this node receives on, as `(from, to, state)`.
    pub fn in_channels(&self) -> Result<Vec<(String, String, InChannel)>, StorageError> {
        let prefix = ChannelKey::in_prefix();
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::CHANNELS), IteratorMode::From(&prefix, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let ChannelKey::In { from, to } = ChannelKey::decode(&k).map_err(corrupt("channel key"))? else {
                break;
            };
            out.push((from, to, codec::decode("inbound channel", &v)?));
        }
        Ok(out)
    }

    pub fn in_channel(&self, from: &str, to: &str) -> Result<InChannel, StorageError> {
        let key = ChannelKey::In { from: from.to_owned(), to: to.to_owned() }.encode();
        Ok(self
            .db
            .get_cf(self.cf(cf::CHANNELS), key)?
            .map(|v| codec::decode("inbound channel", &v))
            .transpose()?
            .unwrap_or_default())
    }

    /// Envelopes of the channel to `peer` from `first` on: at most `max_count`, and no more
    /// than `max_bytes` in all unless the first alone is larger.
    pub fn outbox_from(
        &self,
        peer: &str,
        first: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, OutboxEntry)>, StorageError> {
        let prefix = OutboxKey::channel_prefix(peer);
        let start = OutboxKey { peer: peer.to_owned(), seq: first }.encode();
        let mut out = Vec::new();
        let mut bytes = 0;
        for item in self.db.iterator_cf(self.cf(cf::OUTBOX), IteratorMode::From(&start, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) || out.len() == max_count || (!out.is_empty() && bytes + v.len() > max_bytes) {
                break;
            }
            bytes += v.len();
            let key = OutboxKey::decode(&k).map_err(corrupt("outbox key"))?;
            out.push((key.seq, codec::decode("outbox entry", &v)?));
        }
        Ok(out)
    }

    /// Index of the last message-log entry (0 when the log is empty).
    pub fn log_head(&self) -> Result<u64, StorageError> {
        self.meta_u64(MetaKey::LogHead, "log head")
    }

    /// How many certificate queries this node answered without a certificate.
    pub fn certificates_refused(&self) -> Result<u64, StorageError> {
        self.meta_u64(MetaKey::CertificatesRefused, "certificates refused")
    }

    fn meta_u64(&self, key: MetaKey, what: &'static str) -> Result<u64, StorageError> {
        match self.meta(key)? {
            None => Ok(0),
            Some(v) => Ok(u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| StorageError::Corrupt { what, detail: format!("{} bytes", v.len()) })?,
            )),
        }
    }

    /// Message-log entries after `after`, at most `limit`.
    pub fn log_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, LogRecord)>, StorageError> {
        let start = LogKey(after.saturating_add(1)).encode();
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::LOG), IteratorMode::From(&start, Direction::Forward)).take(limit) {
            let (k, v) = item?;
            let key = LogKey::decode(&k).map_err(corrupt("log key"))?;
            out.push((key.0, codec::decode("log entry", &v)?));
        }
        Ok(out)
    }

    /// Every open due item.
    pub fn due_items(&self) -> Result<Vec<(DueKey, DueItem)>, StorageError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::DUE), IteratorMode::Start) {
            let (k, v) = item?;
            out.push((DueKey::decode(&k).map_err(corrupt("due key"))?, codec::decode("due item", &v)?));
        }
        Ok(out)
    }
}

impl Store {
    pub fn report(&self, key: &ReportKey) -> Result<Option<ReportRecord>, StorageError> {
        match self.db.get_cf(self.cf(cf::REPORTS), key.encode())? {
            Some(v) => Ok(Some(codec::decode("report", &v)?)),
            None => Ok(None),
        }
    }

    /// Every report about `person`, in period order.
    pub fn reports_of(
        &self,
        person: &crate::crypto::PersonKey,
    ) -> Result<Vec<(ReportKey, ReportRecord)>, StorageError> {
        self.reports_from(&ReportKey::person_prefix(person))
    }

    /// Reports in key order (person, period, issuer), from just after the stored key
    /// `after` (`None`: the first), read lazily.
    pub fn reports_after(
        &self,
        after: Option<Vec<u8>>,
    ) -> impl Iterator<Item = Result<(ReportKey, ReportRecord), StorageError>> + '_ {
        let start = after.clone().unwrap_or_else(|| ReportKey::first().to_vec());
        let prefix = ReportKey::first();
        self.db
            .iterator_cf(self.cf(cf::REPORTS), IteratorMode::From(&start, Direction::Forward))
            .take_while(move |item| item.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
            .filter(move |item| !matches!((item, &after), (Ok((k, _)), Some(a)) if **k == **a))
            .map(|item| {
                let (k, v) = item?;
                Ok((ReportKey::decode(&k).map_err(corrupt("report key"))?, codec::decode("report", &v)?))
            })
    }

    /// The reports with this ID (an issuer's ID can repeat another issuer's), found in
    /// the `report_ids` index.
    pub fn reports_with_id(&self, report_id: &str) -> Result<Vec<(ReportKey, ReportRecord)>, StorageError> {
        let Some(prefix) = ReportIdKey::prefix(report_id) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::REPORT_IDS), IteratorMode::From(&prefix, Direction::Forward)) {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let key = ReportIdKey::decode(report_id, &k).map_err(corrupt("report id key"))?;
            if let Some(record) = self.report(&key)? {
                out.push((key, record));
            }
        }
        Ok(out)
    }

    /// Indexes every stored report by its ID, once: a store written before the index
    /// existed gets it at its first start.
    pub fn index_report_ids(&self) -> Result<(), StorageError> {
        if self.meta(MetaKey::ReportIdIndex)?.is_some() {
            return Ok(());
        }
        let mut batch = self.batch();
        for (key, record) in self.reports()? {
            batch.put_report_id(&key, &record);
        }
        batch.inner.put_cf(self.cf(cf::META), MetaKey::ReportIdIndex.encode(), [1]);
        batch.commit()
    }

    /// Every report at this node, by person and period.
    pub fn reports(&self) -> Result<Vec<(ReportKey, ReportRecord)>, StorageError> {
        self.reports_from(&ReportKey::first())
    }

    fn reports_from(&self, prefix: &[u8]) -> Result<Vec<(ReportKey, ReportRecord)>, StorageError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::REPORTS), IteratorMode::From(prefix, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((ReportKey::decode(&k).map_err(corrupt("report key"))?, codec::decode("report", &v)?));
        }
        Ok(out)
    }
}

impl Store {
    /// Statements of one quarter, sent (`received == false`) or received, by counterpart.
    pub fn statements(&self, received: bool, period: u32) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let prefix = StatementKey::period_prefix(received, period);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::STATEMENTS), IteratorMode::From(&prefix, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push((StatementKey::decode(&k).map_err(corrupt("statement key"))?.counterpart, v.to_vec()));
        }
        Ok(out)
    }
}

impl Batch<'_> {
    /// `statement` is the encoded, signed `ldx.v1.AssessmentStatement`.
    pub fn put_statement(&mut self, key: &StatementKey, statement: &[u8]) {
        self.inner.put_cf(self.store.cf(cf::STATEMENTS), key.encode(), statement);
    }

    pub fn put_report(&mut self, key: &ReportKey, record: &ReportRecord) {
        self.inner.put_cf(self.store.cf(cf::REPORTS), key.encode(), codec::encode(record));
        self.put_report_id(key, record);
    }

    fn put_report_id(&mut self, key: &ReportKey, record: &ReportRecord) {
        if let Some(index) = ReportIdKey::encode(&record.report_id, key) {
            self.inner.put_cf(self.store.cf(cf::REPORT_IDS), index, []);
        }
    }

    pub fn put_outbox(&mut self, peer: &str, seq: u64, entry: &OutboxEntry) {
        let key = OutboxKey { peer: peer.to_owned(), seq }.encode();
        self.inner.put_cf(self.store.cf(cf::OUTBOX), key, codec::encode(entry));
    }

    /// Removes the channel's envelopes with `first <= seq <= last`.
    pub fn delete_outbox(&mut self, peer: &str, first: u64, last: u64) {
        // An ack covers a batch or a few: point deletes. Every read of the outbox must
        // fragment the range tombstones in its memtable, so one per ack would slow each
        // sender's read by the number of acks since the last flush.
        if last >= first && last - first < OUTBOX_POINT_DELETES_MAX {
            for seq in first..=last {
                self.inner.delete_cf(self.store.cf(cf::OUTBOX), OutboxKey { peer: peer.to_owned(), seq }.encode());
            }
            return;
        }
        let from = OutboxKey { peer: peer.to_owned(), seq: first }.encode();
        let to = match last.checked_add(1) {
            Some(end) => OutboxKey { peer: peer.to_owned(), seq: end }.encode(),
            None => {
                let mut end = OutboxKey::channel_prefix(peer);
                *end.last_mut().expect("non-empty") += 1;
                end
            }
        };
        self.inner.delete_range_cf(self.store.cf(cf::OUTBOX), from, to);
    }

    pub fn put_out_channel(&mut self, peer: &str, state: &OutChannel) {
        let key = ChannelKey::Out { peer: peer.to_owned() }.encode();
        self.inner.put_cf(self.store.cf(cf::CHANNELS), key, codec::encode(state));
    }

    pub fn put_in_channel(&mut self, from: &str, to: &str, state: &InChannel) {
        let key = ChannelKey::In { from: from.to_owned(), to: to.to_owned() }.encode();
        self.inner.put_cf(self.store.cf(cf::CHANNELS), key, codec::encode(state));
    }

    /// Appends log entry `index`, which must follow the stored head by one.
    /// Appends `records` to the message log after `head` and moves its head, written once.
    pub fn put_log(&mut self, head: u64, records: &[LogRecord]) -> u64 {
        let mut index = head;
        for record in records {
            index += 1;
            self.inner.put_cf(self.store.cf(cf::LOG), LogKey(index).encode(), codec::encode(record));
        }
        if index != head {
            self.inner.put_cf(self.store.cf(cf::META), MetaKey::LogHead.encode(), index.to_be_bytes());
        }
        index
    }

    pub fn put_certificates_refused(&mut self, count: u64) {
        self.inner.put_cf(self.store.cf(cf::META), MetaKey::CertificatesRefused.encode(), count.to_be_bytes());
    }

    pub fn put_due(&mut self, key: &DueKey, item: &DueItem) {
        self.inner.put_cf(self.store.cf(cf::DUE), key.encode(), codec::encode(item));
    }

    pub fn delete_due(&mut self, key: &DueKey) {
        self.inner.delete_cf(self.store.cf(cf::DUE), key.encode());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8) -> OutboxEntry {
        OutboxEntry { created_at_ms: i64::from(n), sealed: vec![n; 10] }
    }

    #[test]
    fn outbox_reads_one_channel_in_order_within_limits_and_deletes_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "410103007", false).unwrap();
        let mut batch = store.batch();
        for seq in 1..=5u8 {
            batch.put_outbox("411421", u64::from(seq), &entry(seq));
            batch.put_outbox("41142", u64::from(seq), &entry(seq + 100));
        }
        batch.commit().unwrap();
        let all: Vec<u64> = store.outbox_from("411421", 1, 100, 1 << 20).unwrap().into_iter().map(|e| e.0).collect();
        assert_eq!(all, [1, 2, 3, 4, 5]);
        assert_eq!(store.outbox_from("411421", 3, 2, 1 << 20).unwrap().len(), 2);
        let encoded = codec::encode(&entry(1)).len();
        assert_eq!(store.outbox_from("411421", 1, 100, encoded * 2).unwrap().len(), 2);
        assert_eq!(store.outbox_from("411421", 1, 100, 1).unwrap().len(), 1, "the first always fits");
        let mut batch = store.batch();
        batch.delete_outbox("411421", 1, 3);
        batch.commit().unwrap();
        let rest: Vec<u64> = store.outbox_from("411421", 1, 100, 1 << 20).unwrap().into_iter().map(|e| e.0).collect();
        assert_eq!(rest, [4, 5]);
        assert_eq!(store.outbox_from("41142", 1, 100, 1 << 20).unwrap().len(), 5, "other channel untouched");
        // A long range (a peer that resumes far ahead) is one range tombstone.
        let mut batch = store.batch();
        for seq in 6..=OUTBOX_POINT_DELETES_MAX + 10 {
            batch.put_outbox("411421", seq, &entry(1));
        }
        batch.commit().unwrap();
        let mut batch = store.batch();
        batch.delete_outbox("411421", 4, OUTBOX_POINT_DELETES_MAX + 8);
        batch.commit().unwrap();
        let rest: Vec<u64> = store.outbox_from("411421", 1, 100, 1 << 20).unwrap().into_iter().map(|e| e.0).collect();
        assert_eq!(rest, [OUTBOX_POINT_DELETES_MAX + 9, OUTBOX_POINT_DELETES_MAX + 10]);
        assert_eq!(store.outbox_from("41142", 1, 100, 1 << 20).unwrap().len(), 5, "other channel untouched");
    }

    #[test]
    fn channels_log_and_due_items_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "410103007", false).unwrap();
        let mut batch = store.batch();
        batch.put_out_channel("411421", &OutChannel { head_seq: 3, head_hash: vec![1], acked_seq: 2 });
        batch.put_in_channel("411421", "410103007", &InChannel { applied_seq: 9, ..Default::default() });
        let head =
            batch.put_log(0, &[LogRecord { seq: 1, ..Default::default() }, LogRecord { seq: 2, ..Default::default() }]);
        assert_eq!(head, 2);
        let due = DueKey { person: crate::crypto::PersonKey([7; 32]), what: 1 };
        batch.put_due(&due, &DueItem { due_day: 5, ..Default::default() });
        batch.commit().unwrap();
        assert_eq!(store.out_channels().unwrap()[0].1.head_seq, 3);
        assert_eq!(store.in_channels().unwrap()[0].2.applied_seq, 9);
        assert_eq!(store.in_channel("411421", "410103007").unwrap().applied_seq, 9);
        assert_eq!(store.in_channel("411422", "410103007").unwrap(), InChannel::default());
        assert_eq!(store.log_head().unwrap(), 2);
        assert_eq!(store.log_after(1, 10).unwrap().iter().map(|e| e.0).collect::<Vec<_>>(), [2]);
        assert_eq!(store.due_items().unwrap().len(), 1);
        let mut batch = store.batch();
        batch.delete_due(&due);
        batch.commit().unwrap();
        assert!(store.due_items().unwrap().is_empty());
    }

    #[test]
    fn reports_are_read_per_person_in_period_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "411421", false).unwrap();
        let (a, b) = (crate::crypto::PersonKey([1; 32]), crate::crypto::PersonKey([2; 32]));
        let mut batch = store.batch();
        for (person, period) in [(a, 8105), (b, 8104), (a, 8104)] {
            let key = ReportKey { person, period, issuer: "410103007".into() };
            batch.put_report(&key, &ReportRecord { report_id: format!("{period}"), ..Default::default() });
        }
        batch.commit().unwrap();
        let of_a: Vec<u32> = store.reports_of(&a).unwrap().iter().map(|(k, _)| k.period).collect();
        assert_eq!(of_a, [8104, 8105]);
        assert_eq!(store.reports().unwrap().len(), 3);
        let key = ReportKey { person: b, period: 8104, issuer: "410103007".into() };
        assert_eq!(store.report(&key).unwrap().unwrap().report_id, "8104");
        assert!(store.report(&ReportKey { issuer: "410103003".into(), ..key }).unwrap().is_none());
    }

    #[test]
    fn reports_are_found_by_id_and_an_older_store_is_indexed_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "411421", false).unwrap();
        let key = |person: u8, issuer: &str| ReportKey {
            person: crate::crypto::PersonKey([person; 32]),
            period: 8104,
            issuer: issuer.into(),
        };
        let record = |id: &str| ReportRecord { report_id: id.into(), ..Default::default() };
        let mut batch = store.batch();
        batch.put_report(&key(1, "410103007"), &record("410103007-2026Q1-aa"));
        // Another issuer may choose the same ID: both are found.
        batch.put_report(&key(2, "410103003"), &record("410103007-2026Q1-aa"));
        batch.put_report(&key(3, "410103007"), &record(&"x".repeat(ReportIdKey::ID_MAX + 1)));
        batch.commit().unwrap();
        let found: Vec<u8> =
            store.reports_with_id("410103007-2026Q1-aa").unwrap().iter().map(|(k, _)| k.person.0[0]).collect();
        assert_eq!(found, [1, 2]);
        assert!(store.reports_with_id("410103007-2026Q1-ab").unwrap().is_empty());
        assert!(store.reports_with_id(&"x".repeat(ReportIdKey::ID_MAX + 1)).unwrap().is_empty(), "too long to index");

        // A report written before the index existed.
        let mut old = store.batch();
        old.inner.put_cf(store.cf(cf::REPORTS), key(4, "410103007").encode(), codec::encode(&record("old-id")));
        old.commit().unwrap();
        assert!(store.reports_with_id("old-id").unwrap().is_empty());
        store.index_report_ids().unwrap();
        assert_eq!(store.reports_with_id("old-id").unwrap().len(), 1);
        assert_eq!(store.meta(MetaKey::ReportIdIndex).unwrap().as_deref(), Some(&[1u8][..]));
    }
}
