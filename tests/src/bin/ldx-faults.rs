//! `ldx-faults --cycles N --seed S [--partition-secs P]`: a fault run against a federation
//! of real node processes behind fault proxies, with the invariant check at the end.
//! Prints the summary and exits 1 unless nothing was lost, duplicated or reordered.

use std::time::Duration;

use anyhow::{Context, bail};
use ldx_tests::fault::{self, FaultRun};

const USAGE: &str = "usage: ldx-faults [--cycles N] [--seed S] [--partition-secs P] [--clients C]";

fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<FaultRun> {
    let mut run = FaultRun::default();
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args.next().with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = || value.parse::<u64>().with_context(|| format!("{flag}: {value:?} is not a whole number"));
        match flag.as_str() {
            "--cycles" => run.cycles = u32::try_from(number()?).context("--cycles: too large")?,
            "--seed" => run.seed = number()?,
            "--partition-secs" => run.partition = Duration::from_secs(number()?),
            "--clients" => run.clients = usize::try_from(number()?).context("--clients: too large")?,
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    Ok(run)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let run = parse(std::env::args().skip(1))?;
    let report = fault::run(&run).await?;
    println!("{report}");
    if !report.is_clean() {
        std::process::exit(1);
    }
    Ok(())
}
