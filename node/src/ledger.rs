//! The ledger (台帐) as CSV: one row per person, read into move-in (and move-out) requests
//! and written from the node's records, so an export imports back unchanged.
//!
//! The file is UTF-8 with a header row, comma-separated, quoted as in RFC 4180. Columns go
//! by name, in any order; the optional ones may be left out. A row that cannot become a
//! request is a [`RowError`] naming its row and column; the rest of the file still reads,
//! and so does a row longer than [`ROW_BYTES_MAX`] (refused as a row error).
//!
//! A spreadsheet runs a cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage
//! return as a formula. An export writes such a cell with a leading `'` (the spreadsheet
//! shows the text, the formula never runs), and an import takes that `'` off again, so
//! the file still imports back unchanged.

use std::collections::HashMap;
use std::io;

use chrono::NaiveDate;
use ldx_proto::v1 as pb;

use crate::domain::{InvalidField, MoveOut};

/// Every column, in the order an export writes them.
pub const COLUMNS: [&str; 11] = [
    "id_number",
    "name",
    "phone",
    "category",
    "role",
    "division",
    "address",
    "move_in_date",
    "household_division",
    "move_out_date",
    "next_division",
];

/// Columns a file may leave out (an empty cell means the same).
const OPTIONAL: [&str; 4] = ["phone", "household_division", "move_out_date", "next_division"];

/// The longest data row read, in bytes: every column at its longest fits well within it.
pub const ROW_BYTES_MAX: usize = 16 * 1024;

/// What a spreadsheet takes as the start of a formula.
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// `cell` as an export writes it: a leading `'` before what would start a formula.
fn neutralised(cell: String) -> String {
    if cell.starts_with(FORMULA_STARTS) { format!("'{cell}") } else { cell }
}

/// `cell` as an import reads it: the `'` an export put before a formula start taken off.
fn restored(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if rest.starts_with(FORMULA_STARTS) => rest,
        _ => cell,
    }
}

/// The column a row error names when the row's shape, not one cell, is wrong.
pub const SHAPE: &str = "columns";

/// Category spellings, as the CLI writes them (`--category`).
const CATEGORIES: [(&str, pb::Category); 6] = [
    ("closed-community", pb::Category::ClosedCommunity),
    ("mixed-community", pb::Category::MixedCommunity),
    ("urban-village", pb::Category::UrbanVillage),
    ("market", pb::Category::Market),
    ("organisation", pb::Category::Organisation),
    ("out-migrant", pb::Category::OutMigrant),
];

/// Role spellings, as the CLI writes them (`--role`).
const ROLES: [(&str, pb::Role); 3] =
    [("origin", pb::Role::Origin), ("residence", pb::Role::Residence), ("workplace", pb::Role::Workplace)];

/// One data row of a ledger, as the requests that register it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 1-based data row number; the header is row 0.
    pub number: u64,
    pub move_in: pb::RegisterMoveInRequest,
    /// When the row has a move-out date: sent after the move-in.
    pub move_out: Option<pb::RegisterMoveOutRequest>,
}

/// A row that was not imported: its number, the column at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("row {row}: {field}: {message}")]
pub struct RowError {
    pub row: u64,
    pub field: String,
    pub message: String,
}

/// What a ledger file read into: the rows that became requests and the rows that did not.
#[derive(Debug, Default)]
pub struct Ledger {
    pub rows: Vec<Row>,
    pub errors: Vec<RowError>,
}

impl Ledger {
    /// Data rows in the file (blank rows aside).
    pub fn len(&self) -> usize {
        self.rows.len() + self.errors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A failure of the whole file rather than of one row.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("row 0 (header): {0}")]
    Header(String),
    #[error("reading the ledger: {0}")]
    Read(#[source] csv::Error),
    #[error("writing the ledger: {0}")]
    Write(#[source] csv::Error),
}

/// Which request a node's answer was about: its `date` is a different column for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    MoveIn,
    MoveOut,
}

impl RowError {
    fn new(row: u64, field: &str, message: impl Into<String>) -> Self {
        Self { row, field: field.to_owned(), message: message.into() }
    }

    /// A rule of the request `step` broke, named by its request field.
    fn invalid(row: u64, step: Step, e: &InvalidField) -> Self {
        Self::new(row, column_of(step, e.field), format!("{} {}", e.value, e.rule))
    }

    /// The node refused row `row`'s request `step` with `message`. Its messages start with
    /// the request field (`date: "2026-02-30" is not a calendar date`); one without a field
    /// (already registered, moved out) is about the person as a whole, her ID number.
    pub fn from_node(row: u64, step: Step, message: &str) -> Self {
        match message.split_once(": ") {
            Some((field, rest)) if !field.is_empty() && field.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') => {
                Self::new(row, column_of(step, field), rest)
            }
            _ => Self::new(row, "id_number", message),
        }
    }
}

/// The ledger column of request field `field`.
fn column_of(step: Step, field: &str) -> &str {
    match (step, field) {
        (Step::MoveIn, "date") => "move_in_date",
        (Step::MoveOut, "date") => "move_out_date",
        (_, field) => field,
    }
}

/// Reads a whole ledger file. `today` (China Standard Time) bounds move-out dates, which
/// are checked here so that a row is never half-imported: moved in, move-out refused.
pub fn read(input: &[u8], today: NaiveDate) -> Result<Ledger, LedgerError> {
    let mut reader =
        csv::ReaderBuilder::new().has_headers(false).flexible(true).trim(csv::Trim::All).from_reader(input);
    let mut records = reader.byte_records();
    let header = match records.next() {
        Some(record) => record.map_err(LedgerError::Read)?,
        None => return Err(LedgerError::Header("the file is empty; the first row must name the columns".into())),
    };
    let columns = Columns::from_header(&header)?;
    let mut ledger = Ledger::default();
    for (number, record) in (1u64..).zip(records) {
        let record = record.map_err(LedgerError::Read)?;
        if record.iter().all(<[u8]>::is_empty) {
            continue;
        }
        if record.as_slice().len() > ROW_BYTES_MAX {
            let message = format!("the row is {} bytes long, at most {ROW_BYTES_MAX} allowed", record.as_slice().len());
            ledger.errors.push(RowError::new(number, SHAPE, message));
            continue;
        }
        match columns.row(number, &record, today) {
            Ok(row) => ledger.rows.push(row),
            Err(e) => ledger.errors.push(e),
        }
    }
    Ok(ledger)
}

/// Where each column is in the file.
struct Columns {
    index: HashMap<&'static str, usize>,
    count: usize,
}

impl Columns {
    fn from_header(header: &csv::ByteRecord) -> Result<Self, LedgerError> {
        let mut index = HashMap::new();
        for (i, raw) in header.iter().enumerate() {
            let name = std::str::from_utf8(raw).map_err(|_| {
                LedgerError::Header(format!("column {} is not UTF-8 (save the file as CSV UTF-8)", i + 1))
            })?;
            let Some(column) = COLUMNS.iter().find(|c| **c == name) else {
                if !header.iter().any(|h| COLUMNS.iter().any(|c| c.as_bytes() == h)) {
                    return Err(LedgerError::Header(format!(
                        "the first row must name the columns: {}",
                        COLUMNS.join(",")
                    )));
                }
                // Quoted only when it looks like a column name: never a row's personal data.
                let shown = if name.len() <= 32 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    format!("{name:?}")
                } else {
                    format!("{}", i + 1)
                };
                return Err(LedgerError::Header(format!(
                    "unknown column {shown}; the columns are {}",
                    COLUMNS.join(",")
                )));
            };
            if index.insert(*column, i).is_some() {
                return Err(LedgerError::Header(format!("column {name} appears twice")));
            }
        }
        let missing: Vec<_> = COLUMNS.iter().filter(|c| !index.contains_key(*c) && !OPTIONAL.contains(c)).collect();
        if !missing.is_empty() {
            let missing: Vec<&str> = missing.into_iter().copied().collect();
            return Err(LedgerError::Header(format!("missing column {}", missing.join(", "))));
        }
        Ok(Self { index, count: header.len() })
    }

    fn row(&self, number: u64, record: &csv::ByteRecord, today: NaiveDate) -> Result<Row, RowError> {
        if record.len() != self.count {
            return Err(RowError::new(
                number,
                SHAPE,
                format!("has {} fields, the header has {}", record.len(), self.count),
            ));
        }
        let mut cells = HashMap::new();
        for (column, &i) in &self.index {
            let cell = std::str::from_utf8(&record[i]).map_err(|_| {
                RowError::new(number, column, "is not UTF-8 text (save the file as CSV UTF-8)".to_owned())
            })?;
            cells.insert(*column, restored(cell));
        }
        let cell = |column: &str| cells.get(column).copied().unwrap_or_default().to_owned();
        let category = spelled(&CATEGORIES, &cell("category"))
            .ok_or_else(|| RowError::new(number, "category", unknown(&cell("category"), &CATEGORIES)))?;
        let role = spelled(&ROLES, &cell("role"))
            .ok_or_else(|| RowError::new(number, "role", unknown(&cell("role"), &ROLES)))?;
        let move_in = pb::RegisterMoveInRequest {
            id_number: cell("id_number"),
            name: cell("name"),
            phone: cell("phone"),
            category: category as i32,
            role: role as i32,
            division: cell("division"),
            address: cell("address"),
            date: cell("move_in_date"),
            household_division: cell("household_division"),
            urgent: false,
            reason_of_stay: 0,
        };
        let move_out = match (cell("move_out_date"), cell("next_division")) {
            (date, next) if date.is_empty() && !next.is_empty() => {
                return Err(RowError::new(
                    number,
                    "next_division",
                    format!("{next:?} is only allowed with a move_out_date"),
                ));
            }
            (date, _) if date.is_empty() => None,
            (date, next_division) => {
                let req = pb::RegisterMoveOutRequest { id_number: move_in.id_number.clone(), date, next_division };
                let out = MoveOut::validate(&req, today).map_err(|e| RowError::invalid(number, Step::MoveOut, &e))?;
                if let Ok(moved_in) = NaiveDate::parse_from_str(&move_in.date, "%Y-%m-%d")
                    && out.date < moved_in
                {
                    return Err(RowError::new(
                        number,
                        "move_out_date",
                        format!("{:?} is before her move_in_date {moved_in}", req.date),
                    ));
                }
                Some(req)
            }
        };
        Ok(Row { number, move_in, move_out })
    }
}

/// The value a spelling names; case and `_` for `-` do not matter (`MIXED_COMMUNITY`).
fn spelled<T: Copy>(table: &[(&str, T)], raw: &str) -> Option<T> {
    let wanted = raw.trim().to_ascii_lowercase().replace('_', "-");
    table.iter().find(|(name, _)| *name == wanted).map(|(_, v)| *v)
}

fn unknown<T>(raw: &str, table: &[(&str, T)]) -> String {
    let names: Vec<&str> = table.iter().map(|(name, _)| *name).collect();
    format!("{raw:?} must be one of {}", names.join(", "))
}

fn spelling<T: PartialEq>(table: &[(&'static str, T)], value: &T) -> &'static str {
    table.iter().find(|(_, v)| v == value).map_or("", |(name, _)| *name)
}

/// A person's ledger row: [`COLUMNS`] in order. The household division is written only
/// when her origin is not the county her ID number names.
pub fn record(p: &pb::Person) -> [String; 11] {
    let category = pb::Category::try_from(p.category).map_or("", |c| spelling(&CATEGORIES, &c));
    let role = pb::Role::try_from(p.role).map_or("", |r| spelling(&ROLES, &r));
    let household_division = if p.id_number.get(..6) == Some(p.origin_division.as_str()) {
        String::new()
    } else {
        p.origin_division.clone()
    };
    [
        p.id_number.clone(),
        p.name.clone(),
        p.phone.clone(),
        category.to_owned(),
        role.to_owned(),
        p.division.clone(),
        p.address.clone(),
        p.move_in_date.clone(),
        household_division,
        p.move_out_date.clone(),
        p.next_division.clone(),
    ]
}

/// Whether `p` already is exactly what `row` records, moved out as it says. A move-in of
/// someone who moved out starts a new stay, so the importer asks before repeating one.
pub fn is_recorded(p: &pb::Person, row: &Row) -> bool {
    let Some(out) = &row.move_out else { return false };
    let m = &row.move_in;
    let origin = if m.household_division.is_empty() { m.id_number.get(..6) } else { m.household_division.get(..6) };
    p.status == pb::PersonStatus::MovedOut as i32
        && p.id_number == m.id_number.to_ascii_uppercase()
        && (p.name.as_str(), p.phone.as_str(), p.address.as_str())
            == (m.name.as_str(), m.phone.as_str(), m.address.as_str())
        && (p.category, p.role) == (m.category, m.role)
        && p.division == m.division
        && Some(p.origin_division.as_str()) == origin
        && p.move_in_date == m.date
        && p.move_out_date == out.date
        && p.next_division == out.next_division
}

/// Writes a ledger: the header, then one row per person.
pub struct Writer<W: io::Write> {
    csv: csv::Writer<W>,
    rows: usize,
}

impl<W: io::Write> std::fmt::Debug for Writer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("rows", &self.rows).finish_non_exhaustive()
    }
}

impl<W: io::Write> Writer<W> {
    pub fn new(out: W) -> Result<Self, LedgerError> {
        // CRLF as RFC 4180 has it; quotes only where a cell needs them.
        let mut csv = csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(out);
        csv.write_record(COLUMNS).map_err(LedgerError::Write)?;
        Ok(Self { csv, rows: 0 })
    }

    pub fn person(&mut self, p: &pb::Person) -> Result<(), LedgerError> {
        self.csv.write_record(record(p).map(neutralised)).map_err(LedgerError::Write)?;
        self.rows += 1;
        Ok(())
    }

    /// Persons written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Flushes and hands back the output.
    pub fn finish(self) -> Result<W, LedgerError> {
        self.csv.into_inner().map_err(|e| LedgerError::Write(e.into_error().into()))
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;
    use crate::cli::{CategoryArg, RoleArg};
    use crate::domain::id::with_check_digit;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()
    }

    const HEADER: &str = "id_number,name,phone,category,role,division,address,move_in_date,household_division,move_out_date,next_division";

    fn id() -> String {
        with_check_digit("41142119900101002")
    }

    fn good_line() -> String {
        format!("{},王芳,13800000000,mixed-community,residence,410103007,大学路 12 号,2026-03-01,,,", id())
    }

    fn person() -> pb::Person {
        pb::Person {
            person_key: "ab".into(),
            id_number: id(),
            name: "王芳".into(),
            phone: String::new(),
            role: pb::Role::Workplace as i32,
            category: pb::Category::Organisation as i32,
            status: pb::PersonStatus::MovedOut as i32,
            division: "410103007".into(),
            address: "大学路 12 号, \"东\" 单元\n3 室".into(),
            move_in_date: "2026-03-01".into(),
            move_out_date: "2026-10-15".into(),
            next_division: "410102001".into(),
            origin_division: "411723".into(),
            services: Vec::new(),
            sync: None,
            local_resident: false,
        }
    }

    fn one_error(text: &str) -> RowError {
        let ledger = read(text.as_bytes(), today()).unwrap();
        assert!(ledger.rows.is_empty(), "{:?}", ledger.rows);
        assert_eq!(ledger.errors.len(), 1, "{:?}", ledger.errors);
        ledger.errors[0].clone()
    }

    fn export(persons: &[pb::Person]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new()).unwrap();
        for p in persons {
            w.person(p).unwrap();
        }
        assert_eq!(w.rows(), persons.len());
        w.finish().unwrap()
    }

    #[test]
    fn a_row_becomes_its_move_in() {
        let ledger = read(format!("{HEADER}\n{}\n", good_line()).as_bytes(), today()).unwrap();
        assert!(ledger.errors.is_empty(), "{:?}", ledger.errors);
        let row = &ledger.rows[0];
        assert_eq!(row.number, 1);
        assert_eq!(row.move_in.id_number, id());
        assert_eq!(row.move_in.name, "王芳");
        assert_eq!(row.move_in.category, pb::Category::MixedCommunity as i32);
        assert_eq!(row.move_in.role, pb::Role::Residence as i32);
        assert_eq!(row.move_in.date, "2026-03-01");
        assert!(row.move_out.is_none());
    }

    #[test]
    fn export_reads_back_as_the_same_registration() {
        let mut active = person();
        active.status = pb::PersonStatus::Active as i32;
        active.move_out_date = String::new();
        active.next_division = String::new();
        active.origin_division = "411421".into();
        active.phone = "+86 139-0000-0000".into();
        let persons = [person(), active];
        let bytes = export(&persons);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(&format!("{HEADER}\r\n")), "{text}");
        assert!(text.contains("\"大学路 12 号, \"\"东\"\" 单元\n3 室\""), "RFC 4180 quoting: {text}");

        let ledger = read(&bytes, today()).unwrap();
        assert!(ledger.errors.is_empty(), "{:?}", ledger.errors);
        assert_eq!(ledger.len(), 2);
        let (out, back) = (&ledger.rows[0], &ledger.rows[1]);
        assert_eq!(out.number, 1);
        assert_eq!(back.number, 2);
        // Her origin differs from her ID's county, so it travels as household_division.
        assert_eq!(out.move_in.household_division, "411723");
        assert_eq!(back.move_in.household_division, "");
        let move_out = out.move_out.as_ref().unwrap();
        assert_eq!((move_out.date.as_str(), move_out.next_division.as_str()), ("2026-10-15", "410102001"));
        assert!(back.move_out.is_none());
        for (p, row) in persons.iter().zip(&ledger.rows) {
            let m = &row.move_in;
            assert_eq!(
                (&m.id_number, &m.name, &m.phone, &m.division, &m.address, &m.date),
                (&p.id_number, &p.name, &p.phone, &p.division, &p.address, &p.move_in_date)
            );
            assert_eq!((m.category, m.role), (p.category, p.role));
        }
        assert!(is_recorded(&persons[0], out));
        assert!(!is_recorded(&persons[1], back), "only a moved-out row can be already recorded");
        let mut other_stay = persons[0].clone();
        other_stay.move_in_date = "2026-02-01".into();
        assert!(!is_recorded(&other_stay, out));

        // A second export of what was read is the same bytes.
        assert_eq!(export(&persons), bytes);
    }

    #[test]
    fn formula_cells_are_exported_as_text_and_import_back_unchanged() {
        let mut p = person();
        p.name = "=HYPERLINK(\"http://x\",\"y\")".into();
        p.address = "@SUM(A1:A9)".into();
        p.phone = "+1+1".into();
        let bytes = export(std::slice::from_ref(&p));
        let text = String::from_utf8(bytes.clone()).unwrap();
        let row = text.lines().nth(1).unwrap();
        assert!(row.contains("\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""), "{row}");
        assert!(row.contains(",'@SUM(A1:A9),") && row.contains(",'+1+1,"), "{row}");
        let ledger = read(&bytes, today()).unwrap();
        let m = &ledger.rows[0].move_in;
        assert_eq!((m.name.as_str(), m.address.as_str(), m.phone.as_str()), (p.name.as_str(), "@SUM(A1:A9)", "+1+1"));
        // A quote before anything else is the cell's own text.
        assert_eq!(restored("'twas"), "'twas");
    }

    #[test]
    fn an_overlong_row_is_a_row_error_and_the_rest_reads() {
        let huge = "名".repeat(ROW_BYTES_MAX);
        let line = format!("{},{huge},,mixed-community,residence,410103007,x,2026-03-01,,,", id());
        let text = format!("{HEADER}\n{line}\n{}\n", good_line());
        let ledger = read(text.as_bytes(), today()).unwrap();
        assert_eq!(ledger.rows.len(), 1);
        assert_eq!(ledger.rows[0].number, 2);
        assert_eq!(ledger.errors.len(), 1);
        let e = &ledger.errors[0];
        assert_eq!((e.row, e.field.as_str()), (1, SHAPE));
        assert!(e.message.ends_with(&format!("at most {ROW_BYTES_MAX} allowed")), "{e}");
        assert!(!e.message.contains('名'), "no personal data in the message: {e}");
    }

    #[test]
    fn columns_go_by_name_and_optional_ones_may_be_missing() {
        let text = format!(
            "name,move_in_date,id_number,category,role,division,address\n王芳,2026-03-01,{},market,workplace,410103007,x\n",
            id()
        );
        let ledger = read(text.as_bytes(), today()).unwrap();
        assert!(ledger.errors.is_empty(), "{:?}", ledger.errors);
        let m = &ledger.rows[0].move_in;
        assert_eq!((m.name.as_str(), m.date.as_str(), m.phone.as_str()), ("王芳", "2026-03-01", ""));
        assert_eq!(m.role, pb::Role::Workplace as i32);
    }

    #[test]
    fn a_bom_blank_rows_and_spaces_are_tolerated() {
        let text = format!(
            "\u{feff}{HEADER}\r\n\r\n{}\r\n,,,,,,,,,,\r\n {} , 王芳 ,, Mixed_Community ,RESIDENCE,410103007,x,2026-03-01,,,\r\n",
            good_line(),
            id()
        );
        let ledger = read(text.as_bytes(), today()).unwrap();
        assert!(ledger.errors.is_empty(), "{:?}", ledger.errors);
        assert_eq!(ledger.rows.len(), 2);
        assert_eq!(ledger.rows[1].number, 3, "a blank row still has its number");
        assert_eq!(ledger.rows[1].move_in.id_number, id());
        assert_eq!(ledger.rows[1].move_in.category, pb::Category::MixedCommunity as i32);
    }

    /// The good row with the given move-out cells.
    fn line(move_out_date: &str, next_division: &str) -> String {
        format!(
            "{},王芳,13800000000,mixed-community,residence,410103007,大学路 12 号,2026-03-01,,{move_out_date},{next_division}",
            id()
        )
    }

    #[test]
    fn every_row_error_names_its_row_and_column() {
        let good = good_line();
        let bad_id = format!("{}{}", &id()[..17], if id().ends_with('1') { '2' } else { '1' });
        let cases: Vec<(&str, String)> = vec![
            (SHAPE, format!("{good},extra")),
            (SHAPE, good.strip_suffix(',').unwrap().to_owned()),
            ("category", good.replace("mixed-community", "shop")),
            ("category", good.replace("mixed-community", "")),
            ("role", good.replace("residence", "tenant")),
            ("move_out_date", line("2026-02-30", "")),
            ("move_out_date", line("2026/10/01", "")),
            ("move_out_date", line("2026-02-01", "")),
            ("move_out_date", line("2026-12-01", "")),
            ("next_division", line("", "410102001")),
            ("next_division", line("2026-10-01", "12")),
            ("id_number", line("2026-10-01", "").replace(&id(), &bad_id)),
        ];
        for (field, line) in cases {
            let ledger = read(format!("{HEADER}\n{line}\n").as_bytes(), today()).unwrap();
            assert_eq!(ledger.errors.len(), 1, "{line}: {:?}", ledger.rows);
            let e = &ledger.errors[0];
            assert_eq!((e.row, e.field.as_str()), (1, field), "{line}: {e}");
            assert!(!e.to_string().contains(&id()[6..14]), "an ID number in clear: {e}");
        }
        let e = one_error(&format!("{HEADER}\n{}\n", good.replace("mixed-community", "shop")));
        assert_eq!(
            e.to_string(),
            "row 1: category: \"shop\" must be one of closed-community, mixed-community, urban-village, market, organisation, out-migrant"
        );
        let e = one_error(&format!("{HEADER}\n{},x\n", good));
        assert_eq!(e.to_string(), "row 1: columns: has 12 fields, the header has 11");
        let e = one_error(&format!("{HEADER}\n{}\n", line("2026-02-01", "")));
        assert_eq!(e.to_string(), "row 1: move_out_date: \"2026-02-01\" is before her move_in_date 2026-03-01");
    }

    #[test]
    fn a_cell_that_is_not_utf8_names_its_column() {
        let mut bytes = format!("{HEADER}\n").into_bytes();
        bytes.extend(
            good_line().replace("王芳", "@").bytes().flat_map(|b| if b == b'@' { vec![0xcd, 0xf5] } else { vec![b] }),
        );
        let ledger = read(&bytes, today()).unwrap();
        assert_eq!(ledger.errors.len(), 1);
        assert_eq!(ledger.errors[0].field, "name");
        assert!(ledger.errors[0].message.contains("UTF-8"));
    }

    #[test]
    fn a_bad_row_does_not_stop_the_next() {
        let text = format!("{HEADER}\n{}\n{},x\n{}\n", good_line(), good_line(), good_line());
        let ledger = read(text.as_bytes(), today()).unwrap();
        assert_eq!(ledger.rows.iter().map(|r| r.number).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(ledger.errors.iter().map(|e| e.row).collect::<Vec<_>>(), [2]);
        assert_eq!(ledger.len(), 3);
    }

    #[test]
    fn header_errors_refuse_the_file() {
        let e = read(b"", today()).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        for (text, wanted) in [
            (good_line(), "the first row must name the columns"),
            (HEADER.replace(",address", ""), "missing column address"),
            (HEADER.replace("address", "住址"), "unknown column 7;"),
            (HEADER.replace("move_out_date", "move_out_dat"), "unknown column \"move_out_dat\""),
            (format!("{HEADER},name"), "column name appears twice"),
        ] {
            let e = read(format!("{text}\n{}\n", good_line()).as_bytes(), today()).unwrap_err();
            assert!(matches!(e, LedgerError::Header(_)), "{e}");
            assert!(e.to_string().contains(wanted), "{text}: {e}");
            assert!(e.to_string().starts_with("row 0 (header): "), "{e}");
            assert!(!e.to_string().contains(&id()[6..14]), "an ID number in clear: {e}");
        }
    }

    #[test]
    fn node_messages_name_the_ledger_column() {
        let e = RowError::from_node(7, Step::MoveIn, "date: \"2026-02-30\" is not a calendar date");
        assert_eq!(e.to_string(), "row 7: move_in_date: \"2026-02-30\" is not a calendar date");
        let e = RowError::from_node(7, Step::MoveOut, "date: \"2026-01-01\" is before her move-in on 2026-03-01");
        assert_eq!(e.field, "move_out_date");
        let e = RowError::from_node(7, Step::MoveIn, "household_division: \"999999\" is not a division code");
        assert_eq!(e.field, "household_division");
        let conflict =
            "already registered here as RESIDENCE since 2026-03-01; a changed registration needs a move-out first";
        let e = RowError::from_node(8, Step::MoveIn, conflict);
        assert_eq!((e.field.as_str(), e.message.as_str()), ("id_number", conflict));
        let e = RowError::from_node(8, Step::MoveOut, "she moved out of this node's division on 2026-03-01");
        assert_eq!(e.field, "id_number");
    }

    #[test]
    fn spellings_are_the_cli_ones() {
        for arg in CategoryArg::value_variants() {
            let name = arg.to_possible_value().unwrap().get_name().to_owned();
            assert_eq!(spelled(&CATEGORIES, &name), Some(pb::Category::from(*arg)), "{name}");
        }
        for arg in RoleArg::value_variants() {
            let name = arg.to_possible_value().unwrap().get_name().to_owned();
            assert_eq!(spelled(&ROLES, &name), Some(pb::Role::from(*arg)), "{name}");
        }
        assert_eq!(CATEGORIES.len(), CategoryArg::value_variants().len());
        assert_eq!(ROLES.len(), RoleArg::value_variants().len());
    }
}
