//! National scale: a signed directory with one entry per street office and township of
//! mainland China (`streets.csv`, 41,352 codes) verified, loaded and routed; and idle
//! nodes started side by side to measure memory per node.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use ldx_proto::directory::{Directory, sign};
use ldx_proto::identity::SignKey;
use ldx_proto::v1::{DirectoryBody, DirectoryEntry};
use prost::Message;

use super::{BenchConfig, median, rate, sys};
use crate::cluster::Cluster;

#[derive(Debug, Clone, Default)]
pub struct DirectoryResults {
    pub entries: usize,
    /// Bytes of the signed directory.
    pub signed_bytes: usize,
    /// Seconds to verify the signature and index every entry, one per repetition.
    pub load_secs: Vec<f64>,
    /// Route lookups per second, one per repetition.
    pub lookups_per_sec: Vec<f64>,
    pub lookups: u64,
}

#[derive(Debug, Clone, Default)]
pub struct IdleResults {
    pub nodes: usize,
    /// VmRSS of each node process, KiB.
    pub rss_kib: Vec<f64>,
    /// VmRSS of the gateway process is not counted; MemAvailable after start, KiB.
    pub mem_available_kib: u64,
    /// Seconds until every node served and used the directory.
    pub start_secs: f64,
}

/// The 9-digit codes of `streets.csv` in the division tables.
pub fn street_codes(dir: &Path) -> anyhow::Result<Vec<String>> {
    let path = dir.join("streets.csv");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {} (set LDX_BENCH_DIVISIONS to the division tables)", path.display()))?;
    let codes: Vec<String> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next())
        .filter(|c| c.len() == 9 && c.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_owned)
        .collect();
    ensure!(!codes.is_empty(), "{} holds no 9-digit codes", path.display());
    Ok(codes)
}

/// A directory entry for `code`: a distinct certificate fingerprint and a shared signing
/// key (routing does not look at either).
fn entry(code: &str, n: usize, signing_key: &[u8]) -> DirectoryEntry {
    let mut fingerprint = [0u8; 32];
    fingerprint[..8].copy_from_slice(&(n as u64).to_be_bytes());
    DirectoryEntry {
        division: code.to_owned(),
        endpoint: format!("https://10.{}.{}.{}:7302", n >> 16 & 255, n >> 8 & 255, n & 255),
        tls_cert_sha256: fingerprint.to_vec(),
        signing_key: signing_key.to_vec(),
    }
}

pub async fn directory(config: &BenchConfig) -> anyhow::Result<DirectoryResults> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || directory_blocking(&config)).await?
}

fn directory_blocking(config: &BenchConfig) -> anyhow::Result<DirectoryResults> {
    let codes = street_codes(&config.divisions)?;
    let federation = SignKey::generate();
    let node_key = SignKey::generate().public().to_bytes();
    let entries: Vec<_> = codes.iter().enumerate().map(|(n, c)| entry(c, n, &node_key)).collect();
    let body = DirectoryBody { version: 1, issued_at_ms: 0, entries, ..Default::default() };
    let signed = sign(&body, &federation);
    let mut out = DirectoryResults {
        entries: codes.len(),
        signed_bytes: signed.encoded_len(),
        lookups: config.lookups,
        ..Default::default()
    };
    // Lookups for every code in a scattered order, and for codes one level below (a
    // 12-digit village code routes to its street office by longest prefix).
    let targets: Vec<String> = (0..codes.len())
        .map(|i| {
            let code = &codes[i.wrapping_mul(7919) % codes.len()];
            if i % 2 == 0 { code.clone() } else { format!("{code}001") }
        })
        .collect();
    for rep in 0..config.reps {
        let start = Instant::now();
        let directory = Directory::verify(signed.clone(), &federation.public())?;
        let load = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let mut routed = 0u64;
        for i in 0..config.lookups {
            let target = &targets[(i % targets.len() as u64) as usize];
            if directory.route(target).is_some() {
                routed += 1;
            }
        }
        let per_sec = rate(config.lookups, start.elapsed());
        ensure!(routed == config.lookups, "{} of {} lookups found no node", config.lookups - routed, config.lookups);
        eprintln!(
            "   directory of {} entries ({} bytes signed), rep {}: loaded in {load:.3} s, {per_sec:.0} lookups/s",
            codes.len(),
            out.signed_bytes,
            rep + 1
        );
        out.load_secs.push(load);
        out.lookups_per_sec.push(per_sec);
    }
    Ok(out)
}

/// Starts `idle_nodes` nodes (street offices of Zhengzhou and beyond), lets them settle
/// and reads each one's resident memory.
pub async fn idle_nodes(config: &BenchConfig) -> anyhow::Result<IdleResults> {
    let codes = street_codes(&config.divisions)?;
    let start_at = codes.iter().position(|c| c.starts_with("4101")).unwrap_or(0);
    let divisions: Vec<String> = codes.iter().cycle().skip(start_at).take(config.idle_nodes).cloned().collect();
    let mut builder = Cluster::builder().nodes(divisions).sync_writes(true).log_filter(config.log_filter.clone());
    if let Some((node, gateway)) = &config.binaries {
        builder = builder.binaries(node, gateway);
    }
    let start = Instant::now();
    let cluster = builder.start().await?;
    let start_secs = start.elapsed().as_secs_f64();
    // Idle means after start-up: let allocators and the directory poll settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_kib: Vec<f64> = cluster.nodes().filter_map(|n| n.pid().and_then(sys::rss_kib)).map(|k| k as f64).collect();
    ensure!(rss_kib.len() == config.idle_nodes, "read the memory of {} of {} nodes", rss_kib.len(), config.idle_nodes);
    let out = IdleResults {
        nodes: config.idle_nodes,
        mem_available_kib: sys::meminfo("MemAvailable").unwrap_or(0),
        rss_kib,
        start_secs,
    };
    eprintln!(
        "   {} idle nodes up in {start_secs:.1} s: RSS median {:.1} MiB, max {:.1} MiB; {:.1} GiB still available",
        out.nodes,
        median(&out.rss_kib) / 1024.0,
        out.rss_kib.iter().copied().fold(0.0, f64::max) / 1024.0,
        out.mem_available_kib as f64 / (1024.0 * 1024.0)
    );
    drop(cluster);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_distinct_and_valid() {
        let key = SignKey::generate();
        let pk = key.public().to_bytes();
        let body = DirectoryBody {
            version: 1,
            issued_at_ms: 0,
            entries: vec![entry("410103007", 0, &pk), entry("410103008", 1, &pk)],
            ..Default::default()
        };
        let dir = Directory::verify(sign(&body, &key), &key.public()).unwrap();
        assert_eq!(dir.route("410103007001").unwrap().division, "410103007");
    }
}
