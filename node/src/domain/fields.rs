//! Validation of free-text fields and calendar dates.

use chrono::NaiveDate;

use super::error::InvalidField;

/// Limits on free-text fields, in characters.
pub const NAME_MAX: usize = 64;
pub const ADDRESS_MAX: usize = 256;
pub const PHONE_MAX: usize = 20;
pub const DETAILS_MAX: usize = 1024;

/// A required text field: trimmed, not empty, at most `max` characters, no control characters.
pub fn required_text(field: &'static str, raw: &str, max: usize, sensitive: bool) -> Result<String, InvalidField> {
    let value = raw.trim();
    if value.is_empty() {
        return Err(InvalidField::new(field, raw, "must not be empty"));
    }
    optional_text(field, raw, max, sensitive)
}

/// An optional text field: empty is allowed, otherwise as [`required_text`].
pub fn optional_text(field: &'static str, raw: &str, max: usize, sensitive: bool) -> Result<String, InvalidField> {
    let value = raw.trim();
    let invalid = |rule: String| {
        if sensitive { InvalidField::sensitive(field, value, rule) } else { InvalidField::new(field, value, rule) }
    };
    let len = value.chars().count();
    if len > max {
        return Err(invalid(format!("is {len} characters long, at most {max} allowed")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters".to_owned()));
    }
    Ok(value.to_owned())
}

/// A phone number: optional; digits with an optional leading `+` and `-` or spaces between.
pub fn phone(field: &'static str, raw: &str) -> Result<String, InvalidField> {
    let value = optional_text(field, raw, PHONE_MAX, true)?;
    let digits = value.chars().filter(char::is_ascii_digit).count();
    let shape_ok =
        value.char_indices().all(|(i, c)| c.is_ascii_digit() || c == '-' || c == ' ' || (c == '+' && i == 0));
    if !value.is_empty() && (!shape_ok || digits < 5) {
        return Err(InvalidField::sensitive(
            field,
            &value,
            "must be at least 5 digits, optionally with a leading + and - or spaces",
        ));
    }
    Ok(value)
}

/// A calendar date `YYYY-MM-DD` that exists and is not after `today`.
pub fn past_date(field: &'static str, raw: &str, today: NaiveDate) -> Result<NaiveDate, InvalidField> {
    let value = raw.trim();
    let well_formed = value.len() == 10
        && value.char_indices().all(|(i, c)| if i == 4 || i == 7 { c == '-' } else { c.is_ascii_digit() });
    if !well_formed {
        return Err(InvalidField::new(field, raw, "must be a date written YYYY-MM-DD"));
    }
    let date = NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map_err(|_| InvalidField::new(field, raw, "is not a calendar date"))?;
    if date > today {
        return Err(InvalidField::new(field, raw, format!("is in the future (today is {today})")));
    }
    if date < NaiveDate::from_ymd_opt(1900, 1, 1).expect("valid") {
        return Err(InvalidField::new(field, raw, "is before 1900-01-01"));
    }
    Ok(date)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()
    }

    #[test]
    fn dates_must_exist_and_not_be_future() {
        assert_eq!(past_date("date", "2026-03-01", today()).unwrap(), NaiveDate::from_ymd_opt(2026, 3, 1).unwrap());
        assert!(past_date("date", "2026-11-23", today()).is_ok());
        let e = past_date("date", "2026-02-30", today()).unwrap_err();
        assert!(e.rule.contains("not a calendar date"), "{e}");
        let e = past_date("date", "2026-11-24", today()).unwrap_err();
        assert!(e.rule.contains("future"), "{e}");
        let e = past_date("date", "23/11/2026", today()).unwrap_err();
        assert!(e.rule.contains("YYYY-MM-DD"), "{e}");
        let e = past_date("date", "1899-12-31", today()).unwrap_err();
        assert!(e.rule.contains("1900"), "{e}");
    }

    #[test]
    fn required_text_rejects_empty_oversized_and_control() {
        assert_eq!(required_text("name", "  王芳 ", NAME_MAX, true).unwrap(), "王芳");
        assert!(required_text("name", "   ", NAME_MAX, true).unwrap_err().rule.contains("empty"));
        let e = required_text("name", &"芳".repeat(65), NAME_MAX, true).unwrap_err();
        assert!(e.rule.contains("65 characters long, at most 64"), "{e}");
        assert!(!e.to_string().contains(&"芳".repeat(20)), "sensitive value must be masked: {e}");
        assert!(required_text("address", "a\u{7}b", ADDRESS_MAX, false).unwrap_err().rule.contains("control"));
        assert_eq!(optional_text("phone", "", PHONE_MAX, true).unwrap(), "");
    }

    #[test]
    fn phone_shape() {
        assert_eq!(phone("phone", "+86 138-0000-0000").unwrap(), "+86 138-0000-0000");
        assert_eq!(phone("phone", "").unwrap(), "");
        assert!(phone("phone", "12a45678").is_err());
        assert!(phone("phone", "1234").is_err());
        assert!(phone("phone", "12+345678").is_err());
    }
}
