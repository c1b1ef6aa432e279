//! A short seeded fault run: nodes SIGKILLed and restarted during traffic, their
//! connections dropped, delayed and black-holed by fault proxies, then every channel must
//! have applied every envelope exactly once, in order, and nothing that was not sent.
//!
//! The long run uses the same test: `LDX_FAULT_CYCLES=100 LDX_FAULT_PARTITION_SECS=600
//! cargo test -p ldx-tests --test faults -- --nocapture` (`LDX_FAULT_SEED` picks the
//! schedule).

use std::time::Duration;

use ldx_tests::fault::{self, FaultRun, Kill};

const NODE: &str = env!("CARGO_BIN_EXE_ldx-node-harness");
const GATEWAY: &str = env!("CARGO_BIN_EXE_ldx-gateway-harness");

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(raw) => raw.parse().unwrap_or_else(|_| panic!("{name}: {raw:?} is not a whole number")),
        Err(_) => default,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn seeded_faults_lose_duplicate_and_reorder_nothing() -> anyhow::Result<()> {
    let run = FaultRun {
        cycles: u32::try_from(env_number("LDX_FAULT_CYCLES", 4))?,
        seed: env_number("LDX_FAULT_SEED", 6),
        partition: Duration::from_secs(env_number("LDX_FAULT_PARTITION_SECS", 2)),
        binaries: Some((NODE.into(), GATEWAY.into())),
        ..FaultRun::default()
    };
    let report = fault::run(&run).await?;
    eprintln!("{report}");
    assert_eq!(report.kills, run.cycles, "one SIGKILL per cycle");
    assert!(report.registered > 0, "the load registered nothing");
    assert_eq!(report.persons.registered, report.persons.noticed, "every registered person noticed once");
    assert!(report.channels.iter().any(|c| c.applied > 0), "no channel carried anything");
    if let Some((origin, _, queued)) = &report.long_partition {
        assert!(*queued > 0, "the long partition of {origin} queued nothing: it tested no catch-up");
    }
    // A kill shows as a broken connection (Unavailable, Unknown, Cancelled); Internal is
    // the node failing a request it received.
    assert_eq!(report.failures.get("Internal"), None, "requests failed inside a node:\n{report}");
    assert!(report.is_clean(), "the invariant check failed:\n{report}");
    Ok(())
}

/// Group commit acknowledges a move-in once a WAL sync covers it, while the next ones are
/// written: the sources are SIGKILLed at seeded points while 16 clients write to each,
/// and every acknowledged move-in must be stored, noticed once at her own origin, and the
/// audit chains must verify.
#[tokio::test(flavor = "multi_thread")]
async fn kills_of_the_sources_under_load_lose_no_acknowledged_move_in() -> anyhow::Result<()> {
    let run = FaultRun {
        cycles: u32::try_from(env_number("LDX_KILL_CYCLES", 20))?,
        seed: env_number("LDX_FAULT_SEED", 6),
        partition: Duration::ZERO,
        clients: 16,
        pause: Duration::ZERO,
        binaries: Some((NODE.into(), GATEWAY.into())),
        kill: Kill::Sources,
    };
    let report = fault::run(&run).await?;
    eprintln!("{report}");
    assert_eq!(report.kills, run.cycles, "one SIGKILL per cycle");
    assert!(report.kills_mid_request > 0, "no kill landed while a request was on the wire:\n{report}");
    assert_eq!(report.persons.registered, report.persons.noticed, "every acknowledged move-in noticed once");
    assert!(report.audit_entries > report.registered, "the audit chains hold at least one entry per move-in");
    assert_eq!(report.failures.get("Internal"), None, "requests failed inside a node:\n{report}");
    assert!(report.is_clean(), "the invariant check failed:\n{report}");
    Ok(())
}
