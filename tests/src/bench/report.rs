//! The one table `ldx-bench` prints: medians of the repetitions, p50/p99 where they
//! apply, the ratios the issue sets targets for, and whether each target was met.

use std::fmt::{self, Write as _};

use super::ldx::LdxResults;
use super::postgres::PgResults;
use super::rocks::RocksResults;
use super::scale::{DirectoryResults, IdleResults};
use super::{BenchConfig, median, percentile};

/// The targets.
pub const RATIO_PG: f64 = 2.0;
pub const FRACTION_ROCKS: f64 = 0.5;
pub const P99_MS: f64 = 20.0;
pub const CATCHUP_SECS: f64 = 30.0;
pub const CATCHUP_ENVELOPES: u64 = 1_000_000;
pub const RSS_MB: f64 = 30.0;

#[derive(Debug, Clone)]
pub struct Report {
    pub config: BenchConfig,
    pub machine: String,
    pub load_before: String,
    pub load_after: String,
    pub rocks: Option<RocksResults>,
    pub pg: Option<PgResults>,
    pub ldx: Option<LdxResults>,
    pub scale: Option<DirectoryResults>,
    pub idle: Option<IdleResults>,
}

struct Row {
    scenario: String,
    result: String,
    detail: String,
    target: String,
    verdict: String,
}

/// The two ratios with targets for one shape: ldx against PostgreSQL and against raw
/// RocksDB, each where both sides ran.
fn ratios(shape: &str, ldx: Option<f64>, pg: Option<f64>, rocks: Option<f64>) -> Vec<Row> {
    let mut rows = Vec::new();
    let ratio = |scenario: String, result: String, target: &str, met: bool| Row {
        scenario,
        result,
        detail: String::new(),
        target: target.to_owned(),
        verdict: verdict(met),
    };
    if let (Some(l), Some(p)) = (ldx, pg) {
        let x = l / p;
        rows.push(ratio(format!("ratio ldx / PostgreSQL, {shape}"), format!("{x:.2}×"), "≥ 2×", x >= RATIO_PG));
    }
    if let (Some(l), Some(r)) = (ldx, rocks) {
        let x = l / r;
        let result = format!("{:.1} %", x * 100.0);
        rows.push(ratio(format!("ldx as a fraction of raw RocksDB, {shape}"), result, "≥ 50 %", x >= FRACTION_ROCKS));
    }
    rows
}

fn verdict(met: bool) -> String {
    if met { "met".into() } else { "**missed**".into() }
}

/// 12345.6 → "12,346".
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn range(samples: &[f64]) -> String {
    let lo = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("n={}, {}–{}", samples.len(), thousands(lo), thousands(hi))
}

impl Report {
    pub fn new(config: BenchConfig) -> Self {
        Self {
            config,
            machine: String::new(),
            load_before: String::new(),
            load_after: String::new(),
            rocks: None,
            pg: None,
            ldx: None,
            scale: None,
            idle: None,
        }
    }

    fn rows(&self) -> Vec<Row> {
        let c = &self.config;
        let mut rows = Vec::new();
        let row = |scenario: String, result: String, detail: String, target: &str, verdict: String| Row {
            scenario,
            result,
            detail,
            target: target.to_owned(),
            verdict,
        };
        let ldx_bulk = self.ldx.as_ref().map(|l| median(&l.bulk));
        let ldx_live = self.ldx.as_ref().map(|l| median(&l.live));
        let pg_bulk = self.pg.as_ref().map(|p| median(&p.bulk));
        let pg_live = self.pg.as_ref().map(|p| median(&p.live));
        let rocks_bulk = self.rocks.as_ref().map(|r| median(&r.batch));
        let rocks_live = self.rocks.as_ref().map(|r| median(&r.threads));

        // Bulk shape.
        if let Some(l) = &self.ldx {
            rows.push(row(
                format!(
                    "1a ldx bulk, 1 client, RegisterMoveIns of 1000, acked when durable, {} notices to the origin",
                    thousands(c.bulk as f64)
                ),
                format!("{} notices/s", thousands(median(&l.bulk))),
                format!("{}; at source {}/s", range(&l.bulk), thousands(median(&l.bulk_source))),
                "",
                String::new(),
            ));
        }
        if let Some(p) = &self.pg {
            rows.push(row(
                "2a PostgreSQL logical replication, 1 client, INSERT of 1000 rows per txn".into(),
                format!("{} rows/s", thousands(median(&p.bulk))),
                format!("{}; at source {}/s", range(&p.bulk), thousands(median(&p.bulk_source))),
                "",
                String::new(),
            ));
        }
        if let Some(r) = &self.rocks {
            rows.push(row(
                "3a raw RocksDB, WriteBatch of 1000 puts, sync".into(),
                format!("{} puts/s", thousands(median(&r.batch))),
                range(&r.batch),
                "",
                String::new(),
            ));
        }
        rows.extend(ratios("bulk", ldx_bulk, pg_bulk, rocks_bulk));

        // Live shape.
        if let Some(l) = &self.ldx {
            rows.push(row(
                format!("1b ldx live, {} clients, 1 move-in per request, acked when durable", c.clients),
                format!("{} notices/s", thousands(median(&l.live))),
                format!(
                    "{}; at source {}/s ({:.2} ms per move-in); ack p50 {:.1} ms / p99 {:.1} ms",
                    range(&l.live),
                    thousands(median(&l.live_source)),
                    1e3 / median(&l.live_source),
                    percentile(&l.live_ack_ms, 50.0),
                    percentile(&l.live_ack_ms, 99.0)
                ),
                "",
                String::new(),
            ));
        }
        if let Some(p) = &self.pg {
            rows.push(row(
                format!("2b PostgreSQL logical replication, pgbench {} clients, 1 row per txn", c.clients),
                format!("{} rows/s", thousands(median(&p.live))),
                format!(
                    "{}; at source {}/s; txn mean {:.1} ms",
                    range(&p.live),
                    thousands(median(&p.live_source)),
                    median(&p.live_latency_ms)
                ),
                "",
                String::new(),
            ));
        }
        if let Some(r) = &self.rocks {
            rows.push(row(
                format!("3b raw RocksDB, {} threads of single synced puts", r.threads_count),
                format!("{} puts/s", thousands(median(&r.threads))),
                format!(
                    "{}; 1 thread: {} puts/s ({:.2} ms per synced put)",
                    range(&r.threads),
                    thousands(median(&r.single)),
                    1e3 / median(&r.single)
                ),
                "",
                String::new(),
            ));
        }
        rows.extend(ratios("live", ldx_live, pg_live, rocks_live));

        let latencies = self.ldx.as_ref().map_or(&[][..], |l| &l.latency[..]);
        for (i, lat) in latencies.iter().enumerate() {
            let p99 = percentile(&lat.end_to_end_ms, 99.0);
            // The target is for the first (configured) rate; a lower rate is context.
            let (target, met) =
                if i == 0 { ("p99 ≤ 20 ms", verdict(p99 <= P99_MS)) } else { ("(context)", String::new()) };
            rows.push(row(
                format!(
                    "4 latency move-in → applied at the origin, {}/s for {} notices",
                    thousands(lat.target_rate as f64),
                    thousands(lat.count as f64)
                ),
                format!("p50 {:.1} ms / p99 {:.1} ms", percentile(&lat.end_to_end_ms, 50.0), p99),
                format!(
                    "issued {}/s; ack p50 {:.1} / p99 {:.1} ms; max {:.0} ms",
                    thousands(lat.issued_rate),
                    percentile(&lat.ack_ms, 50.0),
                    percentile(&lat.ack_ms, 99.0),
                    percentile(&lat.end_to_end_ms, 100.0)
                ),
                target,
                met,
            ));
        }
        if let Some(cu) = self.ldx.as_ref().and_then(|l| l.catchup.as_ref()) {
            let secs = cu.drain.as_secs_f64();
            let per_sec = cu.queued as f64 / (secs - cu.restart.as_secs_f64());
            let (result, target_note, met) = if cu.queued >= CATCHUP_ENVELOPES {
                (format!("{secs:.1} s"), String::new(), secs <= CATCHUP_SECS)
            } else {
                let projected = secs * CATCHUP_ENVELOPES as f64 / cu.queued as f64;
                (
                    format!("{secs:.1} s for {}", thousands(cu.queued as f64)),
                    format!("; 1,000,000 projected linearly: {projected:.0} s"),
                    projected <= CATCHUP_SECS,
                )
            };
            rows.push(row(
                format!(
                    "5 catch-up: origin down while {} envelopes queue, drain after restart",
                    thousands(cu.queued as f64)
                ),
                result,
                format!("{}/s; restart {:.1} s{target_note}", thousands(per_sec), cu.restart.as_secs_f64()),
                "≤ 30 s for 1,000,000",
                if cu.queued >= CATCHUP_ENVELOPES { verdict(met) } else { format!("{} (projected)", verdict(met)) },
            ));
        }
        if let Some(run) = self.ldx.as_ref().and_then(|l| l.ledger.as_ref()) {
            let secs = run.elapsed.as_secs_f64();
            let projected = secs * 100_000.0 / run.rows.max(1) as f64;
            rows.push(row(
                format!("7 ledger import: `ldx-node ledger import` of {} rows", thousands(run.rows as f64)),
                format!("{secs:.1} s"),
                format!(
                    "{}/s; CLI peak RSS {} MiB; node RSS {} → {} MiB",
                    thousands(run.rows as f64 / secs.max(1e-9)),
                    run.cli_peak_kib / 1024,
                    run.node_kib.0 / 1024,
                    run.node_kib.1 / 1024
                ),
                "≤ 10 s for 100,000, memory bounded",
                match run.rows >= 100_000 {
                    true => verdict(secs <= 10.0),
                    false => format!("{} (projected)", verdict(projected <= 10.0)),
                },
            ));
        }
        if let Some(d) = &self.scale {
            rows.push(row(
                format!("6a directory of all {} street offices: route (longest prefix)", thousands(d.entries as f64)),
                format!("{} lookups/s", thousands(median(&d.lookups_per_sec))),
                format!(
                    "load+verify {:.3} s; {} KiB signed; {}",
                    median(&d.load_secs),
                    d.signed_bytes / 1024,
                    range(&d.lookups_per_sec)
                ),
                "",
                String::new(),
            ));
        }
        if let Some(i) = &self.idle {
            let mb: Vec<f64> = i.rss_kib.iter().map(|k| k * 1024.0 / 1e6).collect();
            let med = median(&mb);
            let max = mb.iter().copied().fold(0.0, f64::max);
            let fit = i.mem_available_kib as f64 * 1024.0 / 1e6 / med;
            rows.push(row(
                format!("6b idle nodes: {} started, RSS per node", i.nodes),
                format!("{med:.1} MB median"),
                format!(
                    "max {max:.1} MB; all up in {:.1} s; ~{} more would fit in available memory",
                    i.start_secs,
                    thousands(fit)
                ),
                "≤ 30 MB",
                verdict(max <= RSS_MB),
            ));
        }
        rows
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = self.rows();
        writeln!(f, "| scenario | result (median) | detail | target | met? |")?;
        writeln!(f, "| --- | --- | --- | --- | --- |")?;
        for r in &rows {
            writeln!(f, "| {} | {} | {} | {} | {} |", r.scenario, r.result, r.detail, r.target, r.verdict)?;
        }
        let mut notes = String::new();
        let _ = writeln!(
            notes,
            "\nmachine: {}; load average before {} / after {}",
            self.machine, self.load_before, self.load_after
        );
        let c = &self.config;
        let _ = writeln!(
            notes,
            "config: reps {}, bulk {}, live {}, clients {}, rate {}/s and {}/s × {} s, catch-up {}, idle nodes {}, \
             lookups {}, node log {}",
            c.reps,
            c.bulk,
            c.live,
            c.clients,
            c.rate,
            c.low_rate,
            c.latency_secs,
            c.catchup,
            c.idle_nodes,
            c.lookups,
            c.log_filter
        );
        if let Some(p) = &self.pg {
            let _ =
                writeln!(notes, "PostgreSQL {}: fsync on, synchronous_commit on (source and subscription)", p.version);
        }
        if let Some(r) = &self.rocks {
            let _ = writeln!(notes, "raw RocksDB in {} (same file system as the nodes)", r.dir);
        }
        if let Some(l) = &self.ldx {
            let _ = writeln!(notes, "ldx move-in notice envelope: {:.0} bytes on the wire (mean)", l.envelope_bytes);
            for (what, cpu) in [("live", &l.live_cpu), ("bulk", &l.bulk_cpu)] {
                for (i, u) in cpu.iter().enumerate() {
                    let _ = writeln!(notes, "CPU, ldx {what} rep {}: {u}", i + 1);
                }
            }
            for lat in &l.latency {
                let _ = writeln!(notes, "CPU, ldx latency run at {}/s: {}", lat.target_rate, lat.cpu);
            }
            if let Some(cu) = &l.catchup {
                let _ =
                    writeln!(notes, "CPU, ldx catch-up drain: {}; queued at {}/s", cu.cpu, thousands(cu.queue_rate));
            }
        }
        f.write_str(&notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(-4_300.0), "-4,300");
        assert_eq!(thousands(f64::NAN), "n/a");
    }

    #[test]
    fn a_partial_report_prints_what_ran() {
        let mut report = Report::new(BenchConfig::default());
        report.rocks = Some(RocksResults {
            batch: vec![100.0, 300.0, 200.0],
            threads: vec![10.0],
            threads_count: 16,
            single: vec![5.0],
            dir: "/tmp/x".into(),
        });
        let text = report.to_string();
        assert!(text.contains("| 3a raw RocksDB, WriteBatch of 1000 puts, sync | 200 puts/s |"), "{text}");
        assert!(!text.contains("ratio"), "{text}");
    }
}
