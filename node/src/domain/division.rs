//! Administrative division codes, checked against the official code list shipped in
//! `data/divisions.tsv` (turned into a sorted binary table at build time).

use std::fmt;

use super::error::InvalidField;

static CODES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/division_codes.bin"));
static NAME_ENDS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/division_name_ends.bin"));
static NAMES: &str = include_str!(concat!(env!("OUT_DIR"), "/division_names.txt"));

/// Level of a division, told by the length of its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Province,
    City,
    /// County or district (区/县): 6 digits. Origins are counties.
    County,
    /// Street office, town or township: 9 digits.
    Township,
}

/// A division code known to the official list.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Division(String);

impl Division {
    /// Accepts a code of any level that is in the official list.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidField> {
        let code = raw.trim();
        if !matches!(code.len(), 2 | 4 | 6 | 9) || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidField::new(field, raw, "must be a division code of 2, 4, 6 or 9 digits"));
        }
        if index_of(code).is_none() {
            return Err(InvalidField::new(field, raw, "is not in the official division code list"));
        }
        Ok(Self(code.to_owned()))
    }

    /// Accepts a county (6 digits) or a street office / township (9 digits): the levels at
    /// which nodes run and people live.
    pub fn parse_node_level(field: &'static str, raw: &str) -> Result<Self, InvalidField> {
        let division = Self::parse(field, raw)?;
        match division.level() {
            Level::County | Level::Township => Ok(division),
            _ => Err(InvalidField::new(
                field,
                raw,
                "must be a county (6 digits) or a street office or township (9 digits)",
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn level(&self) -> Level {
        match self.0.len() {
            2 => Level::Province,
            4 => Level::City,
            6 => Level::County,
            _ => Level::Township,
        }
    }

    /// The official name, e.g. `大学路街道` for 410103007.
    pub fn name(&self) -> &'static str {
        name_at(index_of(&self.0).expect("validated at parse"))
    }

    /// The county this division belongs to (itself for a county).
    pub fn county(&self) -> Option<Division> {
        (self.0.len() >= 6).then(|| Division(self.0[..6].to_owned()))
    }

    /// The city whose districts count as one place of residence (seed 000 五: a move
    /// between districts of one municipality or prefecture-level city is no migration):
    /// the province for the four municipalities, else the prefecture-level city, and the
    /// county itself for a county directly under its province (省直辖县级行政区划).
    pub fn city(&self) -> Division {
        let code = &self.0;
        if code.len() <= 2 || matches!(&code[..2], "11" | "12" | "31" | "50") {
            return Division(code[..2].to_owned());
        }
        let prefecture = &code[..4];
        match index_of(prefecture).map(name_at) {
            Some(name) if !name.contains("直辖县级") => Division(prefecture.to_owned()),
            _ => Division(code[..code.len().min(6)].to_owned()),
        }
    }

    /// Whether `other` lies within this division (or is this division).
    pub fn contains(&self, other: &Division) -> bool {
        other.0.starts_with(&self.0)
    }
}

impl fmt::Display for Division {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Division {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Division({})", self.0)
    }
}

/// Number of divisions in the table.
pub fn count() -> usize {
    CODES.len() / 4
}

fn code_at(i: usize) -> u32 {
    u32::from_le_bytes(CODES[i * 4..i * 4 + 4].try_into().expect("4 bytes"))
}

fn name_at(i: usize) -> &'static str {
    let end = |j: usize| u32::from_le_bytes(NAME_ENDS[j * 4..j * 4 + 4].try_into().expect("4 bytes")) as usize;
    let start = if i == 0 { 0 } else { end(i - 1) };
    &NAMES[start..end(i)]
}

/// Codes of different lengths never collide as numbers: a 9-digit code is at least
/// 110101001 and a 6-digit one at most 659xxx, so one numeric table holds all levels.
fn index_of(code: &str) -> Option<usize> {
    let wanted: u32 = code.parse().ok()?;
    let (mut lo, mut hi) = (0, count());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match code_at(mid).cmp(&wanted) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Some(mid),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_holds_every_level() {
        // 31 provinces, 342 cities, 2,978 counties, 41,352 street offices and townships.
        assert_eq!(count(), 31 + 342 + 2978 + 41352);
        assert!((1..count()).all(|i| code_at(i - 1) < code_at(i)), "codes must be sorted");
    }

    #[test]
    fn known_codes_resolve_with_names() {
        let d = Division::parse("division", "410103007").unwrap();
        assert_eq!(d.name(), "大学路街道");
        assert_eq!(d.level(), Level::Township);
        assert_eq!(d.county().unwrap().name(), "二七区");
        assert_eq!(Division::parse("division", "41").unwrap().name(), "河南省");
        assert_eq!(Division::parse("division", "110101001").unwrap().name(), "东华门街道");
    }

    #[test]
    fn unknown_codes_are_rejected() {
        let e = Division::parse("division", "410103999").unwrap_err();
        assert_eq!(e.field, "division");
        assert!(e.rule.contains("official division code list"), "{e}");
    }

    #[test]
    fn malformed_codes_are_rejected() {
        for raw in ["", "4101030", "41010300A", "4101030071"] {
            let e = Division::parse("division", raw).unwrap_err();
            assert!(e.rule.contains("2, 4, 6 or 9 digits"), "{raw}: {e}");
        }
    }

    #[test]
    fn node_level_excludes_provinces_and_cities() {
        assert!(Division::parse_node_level("division", "410103").is_ok());
        let e = Division::parse_node_level("division", "4101").unwrap_err();
        assert!(e.rule.contains("county"), "{e}");
    }

    #[test]
    fn containment_is_by_prefix() {
        let county = Division::parse("d", "410103").unwrap();
        let street = Division::parse("d", "410103007").unwrap();
        let other = Division::parse("d", "410102001").unwrap();
        assert!(county.contains(&street));
        assert!(street.contains(&street));
        assert!(!county.contains(&other));
        assert!(!street.contains(&county));
    }

    #[test]
    fn a_city_is_the_prefecture_the_municipality_or_a_county_under_its_province() {
        let city = |code: &str| Division::parse("d", code).unwrap().city().as_str().to_owned();
        assert_eq!(city("410102"), "4101");
        assert_eq!(city("410103007"), "4101");
        assert_eq!(city("411421"), "4114");
        assert_eq!(city("110105"), "11");
        assert_eq!(city("500101"), city("500229"));
        assert_eq!(city("419001"), "419001", "济源 is directly under Henan: a city of its own");
    }
}
