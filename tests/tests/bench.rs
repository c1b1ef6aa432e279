//! `ldx-bench` as a test: runs every benchmark scenario and prints the table. Ignored by
//! default (it takes minutes and loads the machine); run it with
//! `cargo test -p ldx-tests --test bench -- --ignored --nocapture`, sizes from `LDX_BENCH_*`.

use ldx_tests::bench::{self, BenchConfig};

const NODE: &str = env!("CARGO_BIN_EXE_ldx-node-harness");
const GATEWAY: &str = env!("CARGO_BIN_EXE_ldx-gateway-harness");

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: minutes of load; run with --ignored --nocapture"]
async fn benchmark() -> anyhow::Result<()> {
    let mut config = BenchConfig::from_env()?;
    config.binaries = Some((NODE.into(), GATEWAY.into()));
    let report = bench::run(&config).await?;
    println!("\n{report}");
    Ok(())
}
