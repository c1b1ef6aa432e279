//! The 18-digit resident ID number (GB 11643-1999): six-digit division, birth date,
//! sequence number and an ISO 7064 MOD 11-2 check character.

use std::fmt;

use chrono::NaiveDate;

use super::error::InvalidField;

/// Weights of the first 17 digits in the MOD 11-2 checksum: 2^(17-i) mod 11.
const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
/// Check character for each value of the weighted sum mod 11.
const CHECK: [u8; 11] = *b"10X98765432";

/// A validated resident ID number. Its `Debug` form is masked so it never reaches a log.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ResidentId(String);

impl ResidentId {
    /// Validates length, characters, birth date and check digit. A lowercase `x` is
    /// accepted and normalised to `X`. The division prefix is checked by the caller against
    /// the division table.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidField> {
        let value = raw.trim().to_ascii_uppercase();
        let bytes = value.as_bytes();
        if bytes.len() != 18 {
            return Err(InvalidField::sensitive(
                field,
                raw,
                format!("must be 18 characters, got {}", raw.trim().chars().count()),
            ));
        }
        if !bytes[..17].iter().all(u8::is_ascii_digit) || !(bytes[17].is_ascii_digit() || bytes[17] == b'X') {
            return Err(InvalidField::sensitive(field, raw, "must be 17 digits followed by a digit or X"));
        }
        if birth_date(bytes).is_none() {
            return Err(InvalidField::sensitive(field, raw, "holds an impossible birth date (digits 7-14)"));
        }
        let expected = check_char(bytes);
        if bytes[17] != expected {
            return Err(InvalidField::sensitive(field, raw, "fails the GB 11643 check digit (ISO 7064 MOD 11-2)"));
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The six-digit division code of the household registration at issue.
    pub fn division_prefix(&self) -> &str {
        &self.0[..6]
    }

    pub fn birth_date(&self) -> NaiveDate {
        birth_date(self.0.as_bytes()).expect("validated at parse")
    }
}

impl fmt::Debug for ResidentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResidentId({})", super::error::mask(&self.0))
    }
}

fn check_char(bytes: &[u8]) -> u8 {
    let sum: u32 = bytes[..17].iter().zip(WEIGHTS).map(|(d, w)| u32::from(d - b'0') * w).sum();
    CHECK[(sum % 11) as usize]
}

fn birth_date(bytes: &[u8]) -> Option<NaiveDate> {
    let digits = std::str::from_utf8(&bytes[6..14]).ok()?;
    let date = NaiveDate::parse_from_str(digits, "%Y%m%d").ok()?;
    (date >= NaiveDate::from_ymd_opt(1900, 1, 1)?).then_some(date)
}

/// Completes 17 digits with their check character: for synthetic test data.
pub fn with_check_digit(first17: &str) -> String {
    assert!(first17.len() == 17 && first17.bytes().all(|b| b.is_ascii_digit()));
    let mut s = first17.to_owned();
    s.push(check_char(first17.as_bytes()) as char);
    s
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn accepts_the_standard_example() {
        let id = ResidentId::parse("id_number", "11010519491231002X").unwrap();
        assert_eq!(id.division_prefix(), "110105");
        assert_eq!(id.birth_date(), NaiveDate::from_ymd_opt(1949, 12, 31).unwrap());
    }

    #[test]
    fn lowercase_x_is_normalised() {
        let id = ResidentId::parse("id_number", "11010519491231002x").unwrap();
        assert_eq!(id.as_str(), "11010519491231002X");
    }

    #[test]
    fn wrong_check_digit_is_rejected() {
        let e = ResidentId::parse("id_number", "110105194912310021").unwrap_err();
        assert_eq!(e.field, "id_number");
        assert!(e.rule.contains("check digit"), "{e}");
    }

    #[test]
    fn wrong_length_is_rejected() {
        let e = ResidentId::parse("id_number", "1101051949123100").unwrap_err();
        assert!(e.rule.contains("18 characters, got 16"), "{e}");
    }

    #[test]
    fn letters_are_rejected() {
        let e = ResidentId::parse("id_number", "1101051949A231002X").unwrap_err();
        assert!(e.rule.contains("17 digits"), "{e}");
    }

    #[test]
    fn impossible_birth_date_is_rejected() {
        let id = with_check_digit("41010319990231002");
        let e = ResidentId::parse("id_number", &id).unwrap_err();
        assert!(e.rule.contains("birth date"), "{e}");
    }

    #[test]
    fn debug_is_masked() {
        let id = ResidentId::parse("id_number", "11010519491231002X").unwrap();
        assert!(!format!("{id:?}").contains("19491231"));
    }

    proptest! {
        #[test]
        fn completed_ids_validate_and_any_changed_digit_fails(
            day in 0u32..20000, seq in 0u32..1000, pos in 0usize..17, delta in 1u8..10,
        ) {
            let birth = NaiveDate::from_ymd_opt(1950, 1, 1).unwrap() + chrono::Days::new(u64::from(day));
            let first17 = format!("410103{}{seq:03}", birth.format("%Y%m%d"));
            let id = with_check_digit(&first17);
            prop_assert!(ResidentId::parse("id_number", &id).is_ok());
            // MOD 11-2 detects every single-digit substitution.
            let mut bytes = id.into_bytes();
            bytes[pos] = b'0' + (bytes[pos] - b'0' + delta) % 10;
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert!(ResidentId::parse("id_number", &changed).is_err());
        }
    }
}
