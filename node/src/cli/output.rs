//! How staff subcommands print: aligned tables for people, JSON for scripts.

use ldx_proto::v1 as pb;
use serde_json::json;

pub fn person(p: &pb::Person, as_json: bool) {
    if as_json {
        println!("{}", person_json(p));
        return;
    }
    let rows = [
        ("person key", p.person_key.clone()),
        ("ID number", p.id_number.clone()),
        ("name", p.name.clone()),
        ("phone", p.phone.clone()),
        ("role", role(p.role).to_owned()),
        ("category", category(p.category).to_owned()),
        ("status", status(p.status).to_owned()),
        ("division", p.division.clone()),
        ("address", p.address.clone()),
        ("moved in", p.move_in_date.clone()),
        ("moved out", p.move_out_date.clone()),
        ("next division", p.next_division.clone()),
        ("origin", p.origin_division.clone()),
        (
            "local resident",
            if p.local_resident {
                "yes: her household is in this city (no notice, no reports)".into()
            } else {
                String::new()
            },
        ),
    ];
    for (label, value) in rows.iter().filter(|(_, v)| !v.is_empty()) {
        println!("{label:<14} {value}");
    }
    let sync = p.sync.clone().unwrap_or_default();
    let certificate = match pb::CertificateStatus::try_from(sync.certificate) {
        Ok(pb::CertificateStatus::Unspecified) | Err(_) => String::new(),
        Ok(c) => format!("{} {} {}", certificate(c as i32), sync.certificate_number, sync.certificate_valid_until)
            .trim()
            .to_owned(),
    };
    let sync_rows = [
        ("notified by", format!("{} {}", sync.notified_by, sync.notified_division).trim().to_owned()),
        (
            "feedback",
            format!(
                "{} {}",
                sync.feedback,
                if sync.feedback == "awaiting" { format!("by {}", sync.feedback_due) } else { String::new() }
            )
            .trim()
            .to_owned(),
        ),
        ("certificate", certificate),
        ("transfer", format!("{} {}", sync.transfer, sync.transfer_peer).trim().to_owned()),
        ("residence", sync.residence.clone()),
        ("served", sync.served_periods.join(" ")),
    ];
    for (label, value) in sync_rows.iter().filter(|(_, v)| !v.is_empty()) {
        println!("{label:<14} {value}");
    }
    for s in &p.services {
        println!(
            "{:<14} {} {}{}",
            "service",
            s.date,
            service_kind(s.kind),
            if s.details.is_empty() { String::new() } else { format!(": {}", s.details) }
        );
    }
}

/// Warns on stderr (so it never mixes into JSON or a ledger on stdout) that `count` records
/// did not open with the node's data key and were left out.
pub fn warn_unreadable(count: u32) {
    if count > 0 {
        eprintln!(
            "warning: {count} record(s) did not open with this node's data key and are left out (see the node's log)"
        );
    }
}

pub fn person_list(persons: &[pb::Person], next_page_token: &str, as_json: bool) {
    if as_json {
        let list: Vec<_> = persons.iter().map(person_json).collect();
        println!("{}", json!({ "persons": list, "next_page_token": next_page_token }));
        return;
    }
    let header = ["ID NUMBER", "NAME", "ROLE", "CATEGORY", "STATUS", "DIVISION", "MOVED IN"];
    let rows: Vec<[String; 7]> = persons
        .iter()
        .map(|p| {
            [
                p.id_number.clone(),
                p.name.clone(),
                role(p.role).to_owned(),
                category(p.category).to_owned(),
                status(p.status).to_owned(),
                p.division.clone(),
                p.move_in_date.clone(),
            ]
        })
        .collect();
    print!("{}", table(&header, &rows));
    println!("{} person(s)", persons.len());
    if !next_page_token.is_empty() {
        println!("more: --page-token {next_page_token} (or --all)");
    }
}

/// Columns padded to the widest cell; CJK characters count as two columns.
pub(super) fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(width);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            text.push_str(cell);
            if i + 1 < N {
                text.push_str(&" ".repeat(w - width(cell) + 2));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn width(s: &str) -> usize {
    s.chars().map(|c| if ('\u{1100}'..='\u{ffdc}').contains(&c) && !c.is_ascii() { 2 } else { 1 }).sum()
}

fn person_json(p: &pb::Person) -> serde_json::Value {
    json!({
        "person_key": p.person_key,
        "id_number": p.id_number,
        "name": p.name,
        "phone": p.phone,
        "role": role(p.role),
        "category": category(p.category),
        "status": status(p.status),
        "division": p.division,
        "address": p.address,
        "move_in_date": p.move_in_date,
        "move_out_date": p.move_out_date,
        "local_resident": p.local_resident,
        "next_division": p.next_division,
        "origin_division": p.origin_division,
        "services": p.services.iter().map(|s| json!({
            "kind": service_kind(s.kind), "date": s.date, "details": s.details,
        })).collect::<Vec<_>>(),
        "sync": p.sync.as_ref().map(|s| json!({
            "notified_by": s.notified_by,
            "notified_division": s.notified_division,
            "feedback": s.feedback,
            "feedback_due": s.feedback_due,
            "certificate": certificate(s.certificate),
            "certificate_number": s.certificate_number,
            "certificate_valid_until": s.certificate_valid_until,
            "transfer": s.transfer,
            "transfer_peer": s.transfer_peer,
            "residence": s.residence,
            "served_periods": s.served_periods,
        })),
    })
}

fn certificate(v: i32) -> &'static str {
    match pb::CertificateStatus::try_from(v) {
        Ok(pb::CertificateStatus::None) => "none",
        Ok(pb::CertificateStatus::Valid) => "valid",
        Ok(pb::CertificateStatus::UnknownPerson) => "unknown-person",
        _ => "",
    }
}

/// Age of a UTC-millisecond instant relative to `now`, e.g. `3.2s ago`; `never` for 0.
fn ago(at_ms: i64, now_ms: i64) -> String {
    if at_ms == 0 {
        return "never".into();
    }
    duration((now_ms - at_ms).max(0)) + " ago"
}

fn duration(ms: i64) -> String {
    match ms {
        ms if ms < 10_000 => format!("{:.1}s", ms as f64 / 1000.0),
        ms if ms < 3_600_000 => format!("{}s", ms / 1000),
        ms => format!("{:.1}h", ms as f64 / 3_600_000.0),
    }
}

/// `ldx-node status`: the node's channels with exact lag.
pub fn status_report(s: &pb::StatusResponse, as_json: bool) {
    if as_json {
        let out: Vec<_> = s
            .outbound
            .iter()
            .map(|c| {
                json!({
                    "peer": c.peer, "head_seq": c.head_seq, "acked_seq": c.acked_seq, "pending": c.pending,
                    "oldest_pending_age_ms": c.oldest_pending_age_ms, "last_contact_ms": c.last_contact_ms,
                    "last_error": c.last_error, "bytes_sent": c.bytes_sent, "envelopes_sent": c.envelopes_sent,
                })
            })
            .collect();
        let inb: Vec<_> = s
            .inbound
            .iter()
            .map(|c| {
                json!({
                    "peer": c.peer, "to": c.to, "applied_seq": c.applied_seq,
                    "last_applied_ms": c.last_applied_ms, "refused": c.refused,
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "division": s.division, "directory_version": s.directory_version, "certificates_refused": s.certificates_refused,
                "directory_fetched_ms": s.directory_fetched_ms, "directory_attempted_ms": s.directory_attempted_ms,
                "directory_error": s.directory_error, "now_ms": s.now_ms,
                "directory_issued_ms": s.directory_issued_ms, "directory_not_after_ms": s.directory_not_after_ms,
                "outbound": out, "inbound": inb,
            })
        );
        return;
    }
    println!(
        "node {}  directory version {} (fetched {})",
        s.division,
        s.directory_version,
        ago(s.directory_fetched_ms, s.now_ms)
    );
    if s.directory_attempted_ms != 0 {
        println!("directory last asked {}", ago(s.directory_attempted_ms, s.now_ms));
    }
    if s.directory_not_after_ms != 0 {
        let until = chrono::DateTime::from_timestamp_millis(s.directory_not_after_ms)
            .map_or_else(|| s.directory_not_after_ms.to_string(), |t| t.to_rfc3339());
        if s.directory_not_after_ms < s.now_ms {
            println!("directory STALE since {until}: no peer is admitted or sent to until a current one comes");
        } else {
            println!("directory signed {}, valid until {until}", ago(s.directory_issued_ms, s.now_ms));
        }
    }
    if !s.directory_error.is_empty() {
        println!("directory not updated: {}", s.directory_error);
    }
    println!("\noutbound channels");
    let header = ["PEER", "HEAD", "ACKED", "PENDING", "OLDEST PENDING", "LAST CONTACT", "SENT", "LAST ERROR"];
    let rows: Vec<[String; 8]> = s
        .outbound
        .iter()
        .map(|c| {
            [
                c.peer.clone(),
                c.head_seq.to_string(),
                c.acked_seq.to_string(),
                c.pending.to_string(),
                if c.pending == 0 { "-".into() } else { duration(c.oldest_pending_age_ms) },
                ago(c.last_contact_ms, s.now_ms),
                format!("{} ({} B)", c.envelopes_sent, c.bytes_sent),
                c.last_error.clone(),
            ]
        })
        .collect();
    print!("{}", table(&header, &rows));
    println!("\ninbound channels");
    let header = ["PEER", "TO", "APPLIED", "REFUSED", "LAST APPLIED"];
    let rows: Vec<[String; 5]> = s
        .inbound
        .iter()
        .map(|c| {
            [
                c.peer.clone(),
                c.to.clone(),
                c.applied_seq.to_string(),
                c.refused.to_string(),
                ago(c.last_applied_ms, s.now_ms),
            ]
        })
        .collect();
    print!("{}", table(&header, &rows));
}

/// `ldx-node log`: one tab-separated line per entry, for people and scripts alike.
pub fn log_entries(entries: &[pb::LogEntry]) {
    for e in entries {
        let direction = match pb::Direction::try_from(e.direction) {
            Ok(pb::Direction::Sent) => "sent",
            Ok(pb::Direction::Applied) => "applied",
            Ok(pb::Direction::Refused) => "refused",
            _ => "unknown",
        };
        println!(
            "{}\t{direction}\t{}\t{}\t{}\t{}\t{}\t{}",
            e.index, e.peer, e.to, e.seq, e.kind, e.person_key, e.reason
        );
    }
}

fn role(v: i32) -> &'static str {
    pb::Role::try_from(v).map_or("unknown", |r| match r {
        pb::Role::Origin => "origin",
        pb::Role::Residence => "residence",
        pb::Role::Workplace => "workplace",
        pb::Role::Unspecified => "unspecified",
    })
}

fn category(v: i32) -> &'static str {
    pb::Category::try_from(v).map_or("unknown", |c| match c {
        pb::Category::ClosedCommunity => "closed-community",
        pb::Category::MixedCommunity => "mixed-community",
        pb::Category::UrbanVillage => "urban-village",
        pb::Category::Market => "market",
        pb::Category::Organisation => "organisation",
        pb::Category::OutMigrant => "out-migrant",
        pb::Category::Unspecified => "unspecified",
    })
}

fn status(v: i32) -> &'static str {
    pb::PersonStatus::try_from(v).map_or("unknown", |s| match s {
        pb::PersonStatus::Active => "active",
        pb::PersonStatus::MovedOut => "moved-out",
        pb::PersonStatus::Unspecified => "unspecified",
    })
}

fn service_kind(v: i32) -> &'static str {
    match pb::ServiceKind::try_from(v) {
        Ok(pb::ServiceKind::HealthCheck) => "health-check",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_wide_characters() {
        let rows = [["王芳".to_owned(), "x".to_owned()], ["Li".to_owned(), "y".to_owned()]];
        let text = table(&["NAME", "X"], &rows);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines, ["NAME  X", "王芳  x", "Li    y"]);
    }
}
