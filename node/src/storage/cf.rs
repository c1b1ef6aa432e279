//! Column families: one per concern. Names are part of the on-disk format.

/// Person records at this node, keyed by `person_key`.
pub const PERSONS: &str = "persons";
/// Envelopes waiting for a peer's ack, per peer and sequence number.
pub const OUTBOX: &str = "outbox";
/// Per-peer channel state: sequence numbers sent, acked and applied.
pub const CHANNELS: &str = "channels";
/// Message log, time-ordered, kept for audit and assessment.
pub const LOG: &str = "log";
/// Worklist index: what is due when.
pub const DUE: &str = "due";
/// Service reports issued here, or received here for verification, per person and quarter.
pub const REPORTS: &str = "reports";
/// Index of `reports` by report ID: ID ‖ report key, no value.
pub const REPORT_IDS: &str = "report_ids";
/// Assessment statements sent to and received from counterparts, per quarter.
pub const STATEMENTS: &str = "statements";
/// Every read or write of personal data, hash-chained.
pub const AUDIT: &str = "audit";
/// Staff accounts (`a` ‖ name) and their log-in sessions (`s` ‖ session id).
pub const STAFF: &str = "staff";
/// Schema version, audit chain head, directory cache.
pub const META: &str = "meta";

pub const ALL: [&str; 11] = [PERSONS, OUTBOX, CHANNELS, LOG, DUE, REPORTS, REPORT_IDS, STATEMENTS, AUDIT, STAFF, META];
