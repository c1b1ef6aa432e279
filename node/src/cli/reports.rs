//! `ldx-node report …`, `ldx-node work list` and `ldx-node person photo`: quarterly
//! service reports, their verification at the origin, and what is due at this node.

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use clap::{Subcommand, ValueEnum};
use ldx_proto::v1 as pb;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::ClientArgs;
use super::client::{connect, status};
use super::output::table;

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// At her residence: issue her quarterly report (signed by this node) and send it to
    /// her origin. Repeating it shows the report already issued.
    Issue {
        /// 18-digit resident ID number.
        id: String,
        /// Quarter, e.g. 2026Q1 (default: the current quarter).
        #[arg(long)]
        period: Option<String>,
    },
    /// Reports issued here, or received here for verification.
    List {
        #[arg(long, value_enum)]
        status: Option<ReportStatusArg>,
        /// Quarter, e.g. 2026Q1.
        #[arg(long)]
        period: Option<String>,
        /// Only reports of persons of this 9-digit township.
        #[arg(long)]
        township: Option<String>,
    },
    /// At her origin: decide a report that awaits verification (the photo could not be
    /// matched automatically). The signed verdict goes back to her residence.
    Verify {
        /// Report ID, as `report list` shows it.
        report_id: String,
        /// The photo is her: the report is qualified.
        #[arg(long, conflicts_with = "reject", required_unless_present = "reject")]
        accept: bool,
        /// Reject it, with this reason.
        #[arg(long, value_enum)]
        reject: Option<RejectArg>,
        /// A note for the residence.
        #[arg(long, default_value = "")]
        detail: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum WorkCommand {
    /// What is due and overdue at this node, and the service calendar.
    List {
        /// Show items due before this date, YYYY-MM-DD, at most 366 days ahead (default:
        /// every duty falling due this quarter or the next). Overdue items always show.
        #[arg(long)]
        due_before: Option<String>,
        /// Only items of persons of this 9-digit township.
        #[arg(long)]
        township: Option<String>,
    },
}

/// `ldx-node assessment`: this node's figures of the two-way assessment per counterpart,
/// beside the counterpart's own figures when it has sent them (after the quarter closed).
pub async fn assessment(args: &ClientArgs, period: Option<String>) -> anyhow::Result<()> {
    use crate::clock::Clock as _;
    let period = period.unwrap_or_else(|| crate::domain::Period::of(crate::clock::SystemClock.today()).to_string());
    let (channel, _) = super::client::connect_channel(args).await?;
    let mut client = ldx_proto::v1::assessment_client::AssessmentClient::new(channel);
    let resp = client.statements(pb::StatementsRequest { period: period.clone() }).await.map_err(status)?.into_inner();
    let figure = |i: &pb::Indicator| {
        let decided = i.total - i.pending;
        let pending = if i.pending > 0 { format!(" +{} pending", i.pending) } else { String::new() };
        format!("{}/{decided}{pending}", i.on_time)
    };
    let mut rows: Vec<[String; 6]> = Vec::new();
    let mut out = Vec::new();
    for mine in &resp.statements {
        let theirs = resp.received.iter().find(|r| r.node == mine.counterpart);
        for i in &mine.indicators {
            let other = theirs.and_then(|t| t.indicators.iter().find(|o| o.name == i.name));
            let differs = other.is_some_and(|o| (o.total, o.on_time, o.pending) != (i.total, i.on_time, i.pending));
            rows.push([
                mine.counterpart.clone(),
                i.name.clone(),
                i.assessed.clone(),
                figure(i),
                other.map_or_else(|| "-".to_owned(), figure),
                if differs { "DIFFERS".into() } else { String::new() },
            ]);
            out.push(json!({
                "counterpart": mine.counterpart, "indicator": i.name, "assessed": i.assessed,
                "total": i.total, "on_time": i.on_time, "pending": i.pending, "missed": i.missed,
                "theirs": other.map(|o| json!({ "total": o.total, "on_time": o.on_time, "pending": o.pending })),
            }));
        }
    }
    if args.json {
        println!("{}", json!({ "period": period, "indicators": out }));
        return Ok(());
    }
    println!(
        "two-way assessment 双向考核 {period}: on time / decided, as this node measured and as the counterpart did"
    );
    print!("{}", table(&["COUNTERPART", "INDICATOR", "ASSESSED", "MINE", "THEIRS", ""], &rows));
    Ok(())
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReportStatusArg {
    Issued,
    AwaitingVerification,
    Qualified,
    Rejected,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RejectArg {
    WrongIssuer,
    NotHerResidence,
    PhotoMismatch,
    DuplicatePeriod,
    Malformed,
}

impl From<ReportStatusArg> for pb::ReportStatus {
    fn from(s: ReportStatusArg) -> Self {
        match s {
            ReportStatusArg::Issued => Self::Issued,
            ReportStatusArg::AwaitingVerification => Self::AwaitingVerification,
            ReportStatusArg::Qualified => Self::Qualified,
            ReportStatusArg::Rejected => Self::Rejected,
        }
    }
}

impl From<RejectArg> for pb::RejectReason {
    fn from(r: RejectArg) -> Self {
        match r {
            RejectArg::WrongIssuer => Self::WrongIssuer,
            RejectArg::NotHerResidence => Self::NotHerResidence,
            RejectArg::PhotoMismatch => Self::PhotoMismatch,
            RejectArg::DuplicatePeriod => Self::DuplicatePeriod,
            RejectArg::Malformed => Self::Malformed,
        }
    }
}

pub async fn report(args: &ClientArgs, command: ReportCommand) -> anyhow::Result<()> {
    let (mut client, _) = connect(args).await?;
    match command {
        ReportCommand::Issue { id, period } => {
            let req = pb::IssueReportRequest { id_number: id, period: period.unwrap_or_default() };
            let resp = client.issue_report(req).await.map_err(status)?.into_inner();
            if !args.json && !resp.created {
                println!("already issued; nothing changed");
            }
            print_reports(&[resp.report.context("the node answered without a report")?], args.json);
        }
        ReportCommand::List { status: filter, period, township } => {
            let mut req = pb::ListReportsRequest {
                status: filter.map_or(0, |s| pb::ReportStatus::from(s) as i32),
                period: period.unwrap_or_default(),
                page_size: crate::registry::REPORT_PAGE_SIZE_MAX,
                township: township.unwrap_or_default(),
                ..Default::default()
            };
            let (mut reports, mut unreadable) = (Vec::new(), 0);
            loop {
                let page = client.list_reports(req.clone()).await.map_err(status)?.into_inner();
                reports.extend(page.reports);
                unreadable += page.unreadable;
                if page.next_page_token.is_empty() {
                    break;
                }
                req.page_token = page.next_page_token;
            }
            print_reports(&reports, args.json);
            super::output::warn_unreadable(unreadable);
        }
        ReportCommand::Verify { report_id, accept, reject, detail } => {
            let req = pb::VerifyReportRequest {
                report_id,
                accept,
                reason: reject.map_or(0, |r| pb::RejectReason::from(r) as i32),
                detail,
            };
            let resp = client.verify_report(req).await.map_err(status)?.into_inner();
            if !args.json && !resp.created {
                println!("already decided; nothing changed");
            }
            print_reports(&[resp.report.context("the node answered without a report")?], args.json);
        }
    }
    Ok(())
}

pub async fn work(args: &ClientArgs, command: WorkCommand) -> anyhow::Result<()> {
    let (mut client, _) = connect(args).await?;
    let WorkCommand::List { due_before, township } = command;
    let asked = due_before.is_some();
    let mut req = pb::ListWorkRequest {
        due_before: due_before.unwrap_or_default(),
        township: township.unwrap_or_default(),
        ..Default::default()
    };
    let mut list = client.list_work(req.clone()).await.map_err(status)?.into_inner();
    // Every page, with the first page's horizon (a later page may not cross midnight).
    req.due_before.clone_from(&list.due_before);
    while !list.next_page_token.is_empty() {
        req.page_token = std::mem::take(&mut list.next_page_token);
        let page = client.list_work(req.clone()).await.map_err(status)?.into_inner();
        list.items.extend(page.items);
        list.unreadable = list.unreadable.max(page.unreadable);
        list.next_page_token = page.next_page_token;
    }
    if args.json {
        let items: Vec<_> = list
            .items
            .iter()
            .map(|i| {
                json!({
                    "kind": i.kind, "due": i.due, "overdue": i.overdue, "person_key": i.person_key,
                    "id_number": i.id_number, "peer": i.peer, "period": i.period,
                    "report_id": i.report_id, "detail": i.detail,
                })
            })
            .collect();
        let calendar: Vec<_> = list
            .calendar
            .iter()
            .map(|c| json!({ "first_day": c.first_day, "last_day": c.last_day, "kind": c.kind, "detail": c.detail }))
            .collect();
        println!(
            "{}",
            json!({
                "today": list.today, "due_before": list.due_before, "items": items, "calendar": calendar,
                "unreadable": list.unreadable,
            })
        );
        return Ok(());
    }
    let horizon = if asked { "" } else { " (this quarter and the next; --due-before looks further, up to a year)" };
    println!("today {}; due before {}{horizon}", list.today, list.due_before);
    let header = ["DUE", "", "WHAT", "ID NUMBER", "PERIOD", "PEER", "DETAIL"];
    let rows: Vec<[String; 7]> = list
        .items
        .iter()
        .map(|i| {
            [
                i.due.clone(),
                if i.overdue { "OVERDUE".into() } else { String::new() },
                i.kind.clone(),
                i.id_number.clone(),
                i.period.clone(),
                i.peer.clone(),
                [i.report_id.as_str(), i.detail.as_str()].join(" ").trim().to_owned(),
            ]
        })
        .collect();
    print!("{}", table(&header, &rows));
    println!("{} item(s), {} overdue", list.items.len(), list.items.iter().filter(|i| i.overdue).count());
    super::output::warn_unreadable(list.unreadable);
    if !list.calendar.is_empty() {
        println!("\ncalendar");
        for c in &list.calendar {
            let days = if c.first_day == c.last_day {
                c.first_day.clone()
            } else {
                format!("{} to {}", c.first_day, c.last_day)
            };
            println!("{days:<24}  {}", c.detail);
        }
    }
    Ok(())
}

/// `ldx-node person photo ID (--file PATH | --digest HEX)`: only the SHA-256 leaves this
/// machine; the photo stays where it is.
pub async fn photo(args: &ClientArgs, id: String, file: Option<PathBuf>, digest: Option<String>) -> anyhow::Result<()> {
    let digest = match (file, digest) {
        (Some(path), None) => {
            let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            hex::encode(Sha256::digest(&bytes))
        }
        (None, Some(d)) => d,
        _ => return Err(anyhow!("give exactly one of --file or --digest")),
    };
    let (mut client, _) = connect(args).await?;
    let resp =
        client.record_photo(pb::RecordPhotoRequest { id_number: id, photo_digest: digest }).await.map_err(status)?;
    super::output::person(&resp.into_inner().person.context("the node answered without a person")?, args.json);
    Ok(())
}

fn status_name(v: i32) -> &'static str {
    pb::ReportStatus::try_from(v).map_or("unknown", |s| match s {
        pb::ReportStatus::Unspecified => "-",
        pb::ReportStatus::Issued => "issued",
        pb::ReportStatus::AwaitingVerification => "awaiting-verification",
        pb::ReportStatus::Qualified => "qualified",
        pb::ReportStatus::Rejected => "rejected",
    })
}

fn reason_name(v: i32) -> &'static str {
    pb::RejectReason::try_from(v).map_or("unknown", |r| match r {
        pb::RejectReason::Unspecified => "",
        pb::RejectReason::WrongIssuer => "wrong-issuer",
        pb::RejectReason::NotHerResidence => "not-her-residence",
        pb::RejectReason::PhotoMismatch => "photo-mismatch",
        pb::RejectReason::DuplicatePeriod => "duplicate-period",
        pb::RejectReason::Malformed => "malformed",
        pb::RejectReason::Late => "late",
    })
}

fn print_reports(reports: &[pb::Report], as_json: bool) {
    if as_json {
        let list: Vec<_> = reports
            .iter()
            .map(|r| {
                json!({
                    "report_id": r.report_id, "period": r.period, "issuer": r.issuer, "origin": r.origin,
                    "person_key": r.person_key, "issued_on": r.issued_on, "status": status_name(r.status),
                    "reason": reason_name(r.reason), "detail": r.detail, "received_on": r.received_on,
                    "verdict_on": r.verdict_on, "issued_here": r.issued_here, "late": r.late,
                    "services": r.services.iter().map(|s| json!({ "date": s.date, "details": s.details })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", json!({ "reports": list }));
        return;
    }
    let header = ["REPORT", "PERIOD", "ISSUER", "ORIGIN", "ISSUED", "STATUS", "REASON", "VERDICT", "DETAIL"];
    let rows: Vec<[String; 9]> = reports
        .iter()
        .map(|r| {
            [
                r.report_id.clone(),
                r.period.clone(),
                r.issuer.clone(),
                r.origin.clone(),
                if r.late { format!("{} (late)", r.issued_on) } else { r.issued_on.clone() },
                status_name(r.status).to_owned(),
                reason_name(r.reason).to_owned(),
                r.verdict_on.clone(),
                r.detail.clone(),
            ]
        })
        .collect();
    print!("{}", table(&header, &rows));
    println!("{} report(s)", reports.len());
}
