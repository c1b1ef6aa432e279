//! `ldx-node retention run [--dry-run]`: purges the personal fields of persons who moved
//! out more than `retention.years` ago and have nothing open (the node also does this once
//! a day), or lists who would go.

use clap::Subcommand;
use serde_json::json;

use super::ClientArgs;
use super::client::{connect, status};
use super::output::table;

#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Purge what is due now: each person's sealed fields and her reports' content, audited.
    /// Lists the persons by pseudonymous key only.
    Run {
        /// List who would be purged, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub async fn run(args: &ClientArgs, command: RetentionCommand) -> anyhow::Result<()> {
    let (mut client, _) = connect(args).await?;
    let RetentionCommand::Run { dry_run } = command;
    let resp = client.run_retention(ldx_proto::v1::RunRetentionRequest { dry_run }).await.map_err(status)?.into_inner();
    if args.json {
        let items: Vec<_> = resp
            .items
            .iter()
            .map(|i| json!({ "person_key": i.person_key, "moved_out_on": i.moved_out_on, "reports": i.reports }))
            .collect();
        println!(
            "{}",
            json!({ "dry_run": resp.dry_run, "moved_out_by": resp.moved_out_by, "total": resp.total,
                    "kept_open": resp.kept_open, "items": items })
        );
        return Ok(());
    }
    let rows: Vec<[String; 3]> =
        resp.items.iter().map(|i| [i.person_key.clone(), i.moved_out_on.clone(), i.reports.to_string()]).collect();
    if !rows.is_empty() {
        print!("{}", table(&["PERSON KEY", "MOVED OUT", "REPORTS"], &rows));
    }
    let verb = if resp.dry_run { "would be purged" } else { "purged" };
    let shown = if (resp.items.len() as u64) < u64::from(resp.total) {
        format!(" (the first {} listed)", resp.items.len())
    } else {
        String::new()
    };
    println!(
        "{} person(s) who moved out by {} {verb}{shown}; {} kept because an item of theirs is still open",
        resp.total, resp.moved_out_by, resp.kept_open
    );
    Ok(())
}
