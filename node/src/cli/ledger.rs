//! `ldx-node ledger import|export`: a ledger CSV in, as registrations at the running node,
//! or every person at the node out, as a ledger CSV.
//!
//! Import sends up to [`IN_FLIGHT`] requests at once over one connection. A person with one
//! row and no move-out goes with others in one `RegisterMoveIns` of up to [`BATCH`] rows;
//! the rows of a person with several, or with a move-out, go in file order, one after the
//! other, so a repeated ID meets its earlier row.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, anyhow};
use ldx_proto::v1 as pb;
use ldx_proto::v1::registry_client::RegistryClient;

use serde_json::json;
use tokio::task::JoinSet;

use super::{ClientArgs, LedgerCommand};
use crate::clock::{Clock, SystemClock};
use crate::ledger::{self, Row, RowError, Step};
use crate::staff::client::StaffChannel;

/// Requests in flight at once.
const IN_FLIGHT: usize = 16;
/// Rows of one `RegisterMoveIns` request (the node's limit).
const BATCH: usize = crate::registry::MOVE_INS_MAX;
/// Rows between two updates of the progress line.
const PROGRESS_EVERY: usize = 200;

pub async fn run(args: &ClientArgs, command: LedgerCommand) -> anyhow::Result<()> {
    match command {
        LedgerCommand::Import { file, errors } => import(args, &file, errors.as_deref()).await,
        LedgerCommand::Export { output } => export(args, output.as_deref()).await,
    }
}

/// How one row went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Stored,
    Unchanged,
}

/// Why a row did not go in: its own fault, or the node's, which stops the import.
enum Failure {
    Row(RowError),
    Node(tonic::Status),
}

/// What the rows of one person came to; `fatal` when the node failed part-way.
struct PersonReport {
    rows: Vec<(u64, Result<Outcome, RowError>)>,
    fatal: Option<(u64, tonic::Status)>,
}

#[derive(Debug, Default)]
struct Tally {
    done: usize,
    stored: usize,
    unchanged: usize,
    errors: usize,
}

async fn import(args: &ClientArgs, file: &Path, errors_file: Option<&Path>) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let parsed = ledger::read(&bytes, SystemClock.today())?;
    drop(bytes);
    let (channel, _) = super::client::connect_channel(args).await?;
    let started = Instant::now();
    let total = parsed.len();
    let mut errors = parsed.errors;
    let mut tally = Tally { done: errors.len(), errors: errors.len(), ..Tally::default() };
    let mut progress = Progress::new(total);

    let mut work = batched(by_person(parsed.rows)).into_iter();
    let mut tasks = JoinSet::new();
    let mut fatal: Option<(u64, tonic::Status)> = None;
    loop {
        while fatal.is_none() && tasks.len() < IN_FLIGHT {
            let client = RegistryClient::new(channel.clone());
            match work.next() {
                Some(Work::Batch(rows)) => tasks.spawn(import_batch(client, rows)),
                Some(Work::Person(rows)) => tasks.spawn(import_person(client, rows)),
                None => break,
            };
        }
        let Some(joined) = tasks.join_next().await else { break };
        let report = joined.context("an import task failed")?;
        for (_, result) in report.rows {
            tally.done += 1;
            match result {
                Ok(Outcome::Stored) => tally.stored += 1,
                Ok(Outcome::Unchanged) => tally.unchanged += 1,
                Err(e) => {
                    tally.errors += 1;
                    errors.push(e);
                }
            }
        }
        if fatal.is_none() {
            fatal = report.fatal;
        }
        progress.update(&tally);
    }
    progress.finish(&tally);
    errors.sort_by_key(|e| e.row);

    let elapsed = started.elapsed().as_secs_f64();
    if args.json {
        let list: Vec<_> =
            errors.iter().map(|e| json!({ "row": e.row, "field": e.field, "message": e.message })).collect();
        println!(
            "{}",
            json!({
                "rows": total, "done": tally.done, "stored": tally.stored, "unchanged": tally.unchanged,
                "failed": tally.errors, "seconds": elapsed, "errors": list,
            })
        );
    } else {
        let rate = if elapsed > 0.0 { tally.done as f64 / elapsed } else { 0.0 };
        println!(
            "{total} rows: {} stored, {} unchanged, {} errors ({elapsed:.1} s, {rate:.0} rows/s)",
            tally.stored, tally.unchanged, tally.errors
        );
    }
    match errors_file {
        Some(path) => {
            write_error_report(path, &errors)?;
            if !args.json {
                println!("error report: {}", path.display());
            }
        }
        None if !args.json => {
            for e in &errors {
                println!("{e}");
            }
        }
        None => {}
    }

    if let Some((row, status)) = fatal {
        return Err(anyhow!(
            "the node failed at row {row} ({:?}: {}); {} of {total} rows were done, the rest not tried; \
             importing the same file again continues safely",
            status.code(),
            status.message(),
            tally.done
        ));
    }
    if !errors.is_empty() {
        let where_ = errors_file.map_or_else(|| "listed above".to_owned(), |p| format!("listed in {}", p.display()));
        return Err(anyhow!(
            "{} of {total} rows were not imported ({where_}); the other rows are stored",
            errors.len()
        ));
    }
    Ok(())
}

/// Rows grouped by ID number, in the order each ID first appears.
fn by_person(rows: Vec<Row>) -> Vec<Vec<Row>> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut groups: Vec<Vec<Row>> = Vec::new();
    for row in rows {
        let id = row.move_in.id_number.trim().to_ascii_uppercase();
        match index.get(&id) {
            Some(&i) => groups[i].push(row),
            None => {
                index.insert(id, groups.len());
                groups.push(vec![row]);
            }
        }
    }
    groups
}

/// What one import task sends.
enum Work {
    /// Persons of one row each, without a move-out: one `RegisterMoveIns`.
    Batch(Vec<Row>),
    /// One person's rows, one request after the other.
    Person(Vec<Row>),
}

/// Persons of a single move-in row go in batches of up to [`BATCH`]; the others alone.
fn batched(persons: Vec<Vec<Row>>) -> Vec<Work> {
    let mut work = Vec::new();
    let mut batch = Vec::new();
    for mut rows in persons {
        if rows.len() == 1 && rows[0].move_out.is_none() {
            batch.push(rows.pop().expect("one row"));
            if batch.len() == BATCH {
                work.push(Work::Batch(std::mem::take(&mut batch)));
            }
        } else {
            work.push(Work::Person(rows));
        }
    }
    if !batch.is_empty() {
        work.push(Work::Batch(batch));
    }
    work
}

/// Move-ins of different persons in one request. A node without `RegisterMoveIns` (an
/// older build) gets them one by one.
async fn import_batch(mut client: RegistryClient<StaffChannel>, rows: Vec<Row>) -> PersonReport {
    let mut report = PersonReport { rows: Vec::with_capacity(rows.len()), fatal: None };
    let request = pb::RegisterMoveInsRequest { move_ins: rows.iter().map(|r| r.move_in.clone()).collect() };
    let results = match client.register_move_ins(request).await {
        Ok(response) => response.into_inner().results,
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            for row in rows {
                let one = import_person(client.clone(), vec![row]).await;
                report.rows.extend(one.rows);
                if one.fatal.is_some() {
                    report.fatal = one.fatal;
                    break;
                }
            }
            return report;
        }
        Err(status) => {
            report.fatal = Some((rows[0].number, status));
            return report;
        }
    };
    if results.len() != rows.len() {
        let status =
            tonic::Status::internal(format!("the node answered {} results for {} move-ins", results.len(), rows.len()));
        report.fatal = Some((rows[0].number, status));
        return report;
    }
    for (row, result) in rows.iter().zip(results) {
        if result.person.is_some() {
            let outcome = if result.created { Outcome::Stored } else { Outcome::Unchanged };
            report.rows.push((row.number, Ok(outcome)));
            continue;
        }
        let status = tonic::Status::new(tonic::Code::from(result.error_code), result.error);
        match failure(row.number, Step::MoveIn, status) {
            Failure::Row(e) => report.rows.push((row.number, Err(e))),
            Failure::Node(status) => {
                report.fatal.get_or_insert((row.number, status));
            }
        }
    }
    report
}

/// One person's rows, in order. Stops at a failure of the node itself.
async fn import_person(mut client: RegistryClient<StaffChannel>, rows: Vec<Row>) -> PersonReport {
    let mut report = PersonReport { rows: Vec::with_capacity(rows.len()), fatal: None };
    for row in rows {
        match import_row(&mut client, &row).await {
            Ok(outcome) => report.rows.push((row.number, Ok(outcome))),
            Err(Failure::Row(e)) => report.rows.push((row.number, Err(e))),
            Err(Failure::Node(status)) => {
                report.fatal = Some((row.number, status));
                break;
            }
        }
    }
    report
}

/// A move-in, then the move-out when the row has one. A row with a move-out that the node
/// already holds exactly is left alone: a second move-in would start a new stay.
async fn import_row(client: &mut RegistryClient<StaffChannel>, row: &Row) -> Result<Outcome, Failure> {
    if row.move_out.is_some() {
        let get = pb::GetPersonRequest { id_number: row.move_in.id_number.clone() };
        match client.get_person(get).await {
            Ok(resp) if resp.get_ref().person.as_ref().is_some_and(|p| ledger::is_recorded(p, row)) => {
                return Ok(Outcome::Unchanged);
            }
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(failure(row.number, Step::MoveIn, s)),
        }
    }
    let resp = client
        .register_move_in(row.move_in.clone())
        .await
        .map_err(|s| failure(row.number, Step::MoveIn, s))?
        .into_inner();
    let Some(move_out) = &row.move_out else {
        return Ok(if resp.created { Outcome::Stored } else { Outcome::Unchanged });
    };
    client.register_move_out(move_out.clone()).await.map_err(|s| failure(row.number, Step::MoveOut, s))?;
    Ok(Outcome::Stored)
}

/// Refusals of the row's content are row errors; anything else is the node's failure.
fn failure(row: u64, step: Step, status: tonic::Status) -> Failure {
    match status.code() {
        tonic::Code::InvalidArgument
        | tonic::Code::AlreadyExists
        | tonic::Code::FailedPrecondition
        | tonic::Code::NotFound => Failure::Row(RowError::from_node(row, step, status.message())),
        _ => Failure::Node(status),
    }
}

fn write_error_report(path: &Path, errors: &[RowError]) -> anyhow::Result<()> {
    let mut out = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_path(path)
        .with_context(|| format!("creating {}", path.display()))?;
    out.write_record(["row", "field", "message"])?;
    for e in errors {
        out.write_record([e.row.to_string().as_str(), &e.field, &e.message])?;
    }
    out.flush().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A `\r`-updated line on stderr, only when stderr is a terminal. Counts only: never an ID
/// number or a name.
struct Progress {
    enabled: bool,
    total: usize,
    shown: usize,
}

impl Progress {
    fn new(total: usize) -> Self {
        Self { enabled: std::io::stderr().is_terminal(), total, shown: 0 }
    }

    fn update(&mut self, t: &Tally) {
        if self.enabled && t.done >= self.shown + PROGRESS_EVERY {
            self.shown = t.done;
            self.print(t);
        }
    }

    fn finish(&mut self, t: &Tally) {
        if self.enabled {
            self.print(t);
            eprintln!();
        }
    }

    fn print(&self, t: &Tally) {
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{}/{} rows: {} stored, {} unchanged, {} errors",
            t.done, self.total, t.stored, t.unchanged, t.errors
        );
        let _ = err.flush();
    }
}

async fn export(args: &ClientArgs, output: Option<&Path>) -> anyhow::Result<()> {
    let mut client = RegistryClient::new(super::client::connect_channel(args).await?.0);
    let Some(path) = output else {
        let (out, unreadable) = write_persons(&mut client, std::io::BufWriter::new(std::io::stdout())).await?;
        out.into_inner().map_err(|e| e.into_error()).context("writing to standard output")?;
        super::output::warn_unreadable(unreadable);
        return Ok(());
    };
    // Written aside and renamed, so a failed export never leaves a partial ledger behind.
    let name = path.file_name().with_context(|| format!("{} is not a file name", path.display()))?;
    let partial = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    let file = create_private(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let result = async {
        let (out, unreadable) = write_persons(&mut client, std::io::BufWriter::new(file)).await?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&partial, path)?;
        anyhow::Ok(unreadable)
    }
    .await;
    match result {
        Ok(unreadable) => {
            super::output::warn_unreadable(unreadable);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e.context(format!("exporting to {}", path.display())))
        }
    }
}

/// Every person, all pages, as ledger rows; with how many records did not open.
async fn write_persons<W: Write>(client: &mut RegistryClient<StaffChannel>, out: W) -> anyhow::Result<(W, u32)> {
    let mut writer = ledger::Writer::new(out)?;
    let mut unreadable = 0;
    let mut req = pb::ListPersonsRequest { page_size: crate::registry::PAGE_SIZE_MAX, ..Default::default() };
    loop {
        let page = client.list_persons(req.clone()).await.map_err(|s| anyhow!("{:?}: {}", s.code(), s.message()))?;
        let page = page.into_inner();
        unreadable += page.unreadable;
        for p in &page.persons {
            writer.person(p)?;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        req.page_token = page.next_page_token;
    }
    Ok((writer.finish()?, unreadable))
}

/// A new or truncated file only its owner can read: it holds personal data.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(number: u64, id: &str) -> Row {
        Row {
            number,
            move_in: pb::RegisterMoveInRequest { id_number: id.into(), ..Default::default() },
            move_out: None,
        }
    }

    #[test]
    fn rows_of_one_person_stay_together_in_file_order() {
        let groups = by_person(vec![row(1, "a"), row(2, "b"), row(3, "A "), row(4, "c"), row(5, "b")]);
        let numbers: Vec<Vec<u64>> = groups.iter().map(|g| g.iter().map(|r| r.number).collect()).collect();
        assert_eq!(numbers, [vec![1, 3], vec![2, 5], vec![4]]);
    }

    #[test]
    fn only_refusals_of_the_row_are_row_errors() {
        let f = failure(3, Step::MoveIn, tonic::Status::invalid_argument("name: \"\" must not be empty"));
        assert!(matches!(f, Failure::Row(ref e) if e.field == "name" && e.row == 3));
        let f = failure(3, Step::MoveIn, tonic::Status::already_exists("already registered here"));
        assert!(matches!(f, Failure::Row(ref e) if e.field == "id_number"));
        assert!(matches!(failure(3, Step::MoveIn, tonic::Status::unavailable("down")), Failure::Node(_)));
        assert!(matches!(failure(3, Step::MoveIn, tonic::Status::internal("see log")), Failure::Node(_)));
    }
}
