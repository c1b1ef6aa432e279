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
    ];
    for (label, value) in rows.iter().filter(|(_, v)| !v.is_empty()) {
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
fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
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
        "next_division": p.next_division,
        "origin_division": p.origin_division,
        "services": p.services.iter().map(|s| json!({
            "kind": service_kind(s.kind), "date": s.date, "details": s.details,
        })).collect::<Vec<_>>(),
    })
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
