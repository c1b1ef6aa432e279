//! Group commit. Changes are written to RocksDB (memtable and WAL) one after another, in
//! the order their writer chose, without waiting for the disk; each then waits until a WAL
//! sync covers it. Whoever finds no sync running starts one for everything written so
//! far, so while one sync runs the next group gathers and one fsync answers all of it.
//!
//! The WAL keeps the order of writes and recovery replays a prefix of it, so a change
//! that is durable implies every change written before it is too. A failed sync leaves
//! the durable state unknown: it is kept as the store's failure until the node restarts.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// A write's place in the WAL order: durable once a sync has covered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

#[derive(Debug, Default)]
pub(super) struct GroupSync {
    state: Mutex<SyncState>,
    synced: Condvar,
}

#[derive(Debug, Default)]
struct SyncState {
    /// Tickets given out: every write up to this one is in the WAL.
    written: u64,
    /// Every write up to this one is on disk.
    synced: u64,
    /// A sync is running (its caller syncs for everyone).
    syncing: bool,
    /// The error of a failed sync. Nothing is acknowledged after it.
    failed: Option<String>,
}

impl GroupSync {
    fn state(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The ticket of a write that has just reached the WAL. Called in WAL order: by the
    /// writer that holds the order (the registry's writer lock) right after its write.
    pub fn written(&self) -> Ticket {
        let mut state = self.state();
        state.written += 1;
        Ticket(state.written)
    }

    /// The ticket of the last write so far: waiting for it makes everything read before
    /// this call durable.
    pub fn last_written(&self) -> Ticket {
        Ticket(self.state().written)
    }

    /// Waits until `ticket` is on disk, running the sync itself when none is running.
    /// `sync` makes every write so far durable (RocksDB's `FlushWAL(sync = true)`).
    pub fn wait(&self, ticket: Ticket, sync: impl Fn() -> Result<(), String>) -> Result<(), String> {
        let mut state = self.state();
        loop {
            if state.synced >= ticket.0 {
                return Ok(());
            }
            if let Some(error) = &state.failed {
                return Err(error.clone());
            }
            if !state.syncing {
                state.syncing = true;
                let upto = state.written;
                let group = upto - state.synced;
                drop(state);
                let started = Instant::now();
                let outcome = sync();
                metrics::histogram!(crate::metrics::names::WAL_SYNC_SECONDS).record(started.elapsed().as_secs_f64());
                metrics::histogram!(crate::metrics::names::COMMIT_GROUP_SIZE).record(group as f64);
                state = self.state();
                state.syncing = false;
                match outcome {
                    Ok(()) => state.synced = state.synced.max(upto),
                    Err(e) => {
                        tracing::error!(error = %e, "the WAL could not be synced: nothing more is acknowledged until the node restarts");
                        state.failed.get_or_insert(e);
                    }
                }
                self.synced.notify_all();
                continue;
            }
            state = self.synced.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The error of a failed sync, once there was one.
    pub fn failure(&self) -> Option<String> {
        self.state().failed.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn one_sync_answers_every_write_made_before_it_started() {
        let group = GroupSync::default();
        let (a, b) = (group.written(), group.written());
        let syncs = AtomicU64::new(0);
        let sync = || {
            syncs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        };
        group.wait(b, sync).unwrap();
        group.wait(a, sync).unwrap();
        assert_eq!(syncs.load(Ordering::SeqCst), 1, "the first sync covered both writes");
        let c = group.written();
        group.wait(c, sync).unwrap();
        assert_eq!(syncs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn concurrent_writers_share_syncs() {
        let group = Arc::new(GroupSync::default());
        let syncs = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (group, syncs) = (group.clone(), syncs.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let ticket = group.written();
                        group
                            .wait(ticket, || {
                                syncs.fetch_add(1, Ordering::SeqCst);
                                std::thread::sleep(std::time::Duration::from_millis(1));
                                Ok(())
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let syncs = syncs.load(Ordering::SeqCst);
        assert!(syncs < 400, "{syncs} syncs for 400 writes by 8 writers: no group formed");
    }

    #[test]
    fn a_failed_sync_fails_every_later_wait() {
        let group = GroupSync::default();
        let a = group.written();
        let err = group.wait(a, || Err("EIO".to_owned())).unwrap_err();
        assert_eq!(err, "EIO");
        let b = group.written();
        assert_eq!(group.wait(b, || Ok(())).unwrap_err(), "EIO", "nothing is acknowledged after a failed sync");
        assert_eq!(group.failure().as_deref(), Some("EIO"));
    }
}
