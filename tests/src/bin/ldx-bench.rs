//! `ldx-bench [--only PARTS] [--reps N] [--catchup N] ...`: runs the benchmark scenarios
//! against real node processes, PostgreSQL and raw RocksDB, and prints one table. Every
//! option also has an `LDX_BENCH_*` environment variable; options win.

use anyhow::{Context, bail};
use ldx_tests::bench::{self, BenchConfig};

const USAGE: &str = "usage: ldx-bench [--only rocks,pg,ldx,scale,idle] [--reps N] [--bulk N] [--live N] \
                     [--clients N] [--rate N] [--low-rate N] [--latency-secs N] [--catchup N] [--ledger N] [--idle-nodes N] [--lookups N] \
                     [--divisions DIR] [--pg-bin DIR]";

fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<BenchConfig> {
    let mut c = BenchConfig::from_env()?;
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args.next().with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = || {
            value.replace('_', "").parse::<u64>().with_context(|| format!("{flag}: {value:?} is not a whole number"))
        };
        match flag.as_str() {
            "--only" => c.set_only(&value)?,
            "--reps" => c.reps = usize::try_from(number()?)?,
            "--bulk" => c.bulk = number()?,
            "--live" => c.live = number()?,
            "--clients" => c.clients = usize::try_from(number()?)?,
            "--rate" => c.rate = number()?,
            "--low-rate" => c.low_rate = number()?,
            "--latency-secs" => c.latency_secs = number()?,
            "--catchup" => c.catchup = number()?,
            "--ledger" => c.ledger_rows = number()?,
            "--idle-nodes" => c.idle_nodes = usize::try_from(number()?)?,
            "--lookups" => c.lookups = number()?,
            "--divisions" => c.divisions = value.into(),
            "--pg-bin" => c.pg_bin = value.into(),
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    c.validate()?;
    Ok(c)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = parse(std::env::args().skip(1))?;
    let report = bench::run(&config).await?;
    println!("\n{report}");
    Ok(())
}
