//! Quarters: the period of a service report, written `2026Q1`.

use std::fmt;

use chrono::{Datelike, NaiveDate};

use super::InvalidField;

/// A calendar quarter (China Standard Time dates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    year: i32,
    /// 1..=4.
    quarter: u8,
}

impl Period {
    /// The quarter containing `date`.
    pub fn of(date: NaiveDate) -> Self {
        let quarter = u8::try_from(date.month0() / 3 + 1).expect("1..=4");
        Self { year: date.year(), quarter }
    }

    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidField> {
        let rule = "must be a quarter such as 2026Q1";
        let (year, quarter) = raw.split_once('Q').ok_or_else(|| InvalidField::new(field, raw, rule))?;
        let year: i32 = match year.parse() {
            Ok(y) if year.len() == 4 && (2000..=2999).contains(&y) => y,
            _ => return Err(InvalidField::new(field, raw, rule)),
        };
        let quarter = match quarter {
            "1" => 1,
            "2" => 2,
            "3" => 3,
            "4" => 4,
            _ => return Err(InvalidField::new(field, raw, rule)),
        };
        Ok(Self { year, quarter })
    }

    pub fn first_day(self) -> NaiveDate {
        NaiveDate::from_ymd_opt(self.year, u32::from(self.quarter) * 3 - 2, 1).expect("valid quarter start")
    }

    pub fn last_day(self) -> NaiveDate {
        self.next().first_day().pred_opt().expect("not the first day of all time")
    }

    pub fn contains(self, date: NaiveDate) -> bool {
        Self::of(date) == self
    }

    pub fn next(self) -> Self {
        if self.quarter == 4 {
            Self { year: self.year + 1, quarter: 1 }
        } else {
            Self { quarter: self.quarter + 1, ..self }
        }
    }

    pub fn previous(self) -> Self {
        if self.quarter == 1 {
            Self { year: self.year - 1, quarter: 4 }
        } else {
            Self { quarter: self.quarter - 1, ..self }
        }
    }

    /// A number that orders like the periods, for keys.
    pub fn index(self) -> u32 {
        u32::try_from(self.year).expect("years are validated positive") * 4 + u32::from(self.quarter) - 1
    }

    pub fn from_index(index: u32) -> Self {
        let year = i32::try_from(index / 4).expect("small");
        Self { year, quarter: u8::try_from(index % 4 + 1).expect("1..=4") }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}Q{}", self.year, self.quarter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn quarters_have_their_calendar_bounds() {
        let q = Period::parse("period", "2026Q1").unwrap();
        assert_eq!((q.first_day(), q.last_day()), (day("2026-01-01"), day("2026-03-31")));
        let q4 = Period::parse("period", "2026Q4").unwrap();
        assert_eq!((q4.first_day(), q4.last_day()), (day("2026-10-01"), day("2026-12-31")));
        assert_eq!(q4.next().to_string(), "2027Q1");
        assert_eq!(q.previous().to_string(), "2025Q4");
        assert_eq!(Period::of(day("2026-05-20")).to_string(), "2026Q2");
        assert!(q.contains(day("2026-03-31")) && !q.contains(day("2026-04-01")));
    }

    #[test]
    fn index_orders_and_round_trips() {
        let a = Period::parse("p", "2025Q4").unwrap();
        let b = Period::parse("p", "2026Q1").unwrap();
        assert!(a.index() < b.index());
        assert_eq!(Period::from_index(b.index()), b);
        assert_eq!(a.next(), b);
    }

    #[test]
    fn malformed_periods_name_the_rule() {
        for bad in ["", "2026", "2026Q5", "2026Q0", "26Q1", "2026q1", "Q1", "2026Q1 "] {
            let err = Period::parse("period", bad).unwrap_err().to_string();
            assert!(err.contains("period") && err.contains("2026Q1"), "{bad}: {err}");
        }
    }
}
