//! Validation errors of domain rules: each names the field, the offending value and the rule.

use std::fmt;

/// A rule that input broke. The message names the field, the value and the rule, so an
/// operator can fix the input without reading code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {value} {rule}")]
pub struct InvalidField {
    pub field: &'static str,
    /// The offending value, quoted and shortened for display. Never holds a full ID number
    /// when the value is sensitive (see [`InvalidField::sensitive`]).
    pub value: String,
    pub rule: String,
}

impl InvalidField {
    pub fn new(field: &'static str, value: impl fmt::Debug, rule: impl Into<String>) -> Self {
        let mut value = format!("{value:?}");
        if value.chars().count() > 48 {
            value = value.chars().take(45).collect::<String>() + "...";
        }
        Self { field, value, rule: rule.into() }
    }

    /// For personal data (an ID number, a name): the value is masked in the message so it
    /// never reaches a log in clear, while its length and shape still help the operator.
    pub fn sensitive(field: &'static str, value: &str, rule: impl Into<String>) -> Self {
        Self { field, value: mask(value), rule: rule.into() }
    }
}

/// Masks all but the first 6 and the last 2 characters: `410103********12`. A value longer
/// than an ID number shows at most [`MASK_STARS_MAX`] stars and its length, so a huge value
/// never makes a huge message.
pub fn mask(value: &str) -> String {
    let count = value.chars().count();
    if count <= 8 {
        return format!("\"{}\" ({count} characters)", "*".repeat(count));
    }
    let head: String = value.chars().take(6).collect();
    let tail: String = value.chars().skip(count - 2).collect();
    if count - 8 > MASK_STARS_MAX {
        return format!("\"{head}{}...{tail}\" ({count} characters)", "*".repeat(MASK_STARS_MAX));
    }
    format!("\"{head}{}{tail}\"", "*".repeat(count - 8))
}

/// The most stars a masked value shows (an 18-digit ID number shows 10).
pub const MASK_STARS_MAX: usize = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_sensitive_value_gives_a_short_message() {
        let huge = "名".repeat(3_000_000);
        let e = InvalidField::sensitive("name", &huge, "is too long");
        assert_eq!(e.value, format!("\"名名名名名名{}...名名\" (3000000 characters)", "*".repeat(MASK_STARS_MAX)));
        assert_eq!(mask("411421199001010025"), "\"411421**********25\"");
    }

    #[test]
    fn message_names_field_value_and_rule() {
        let e = InvalidField::new("date", "2026-02-30", "is not a calendar date");
        assert_eq!(e.to_string(), "date: \"2026-02-30\" is not a calendar date");
    }

    #[test]
    fn long_values_are_shortened() {
        let e = InvalidField::new("name", "x".repeat(100), "is too long");
        assert!(e.value.len() < 60, "{}", e.value);
    }

    #[test]
    fn sensitive_values_are_masked() {
        let e = InvalidField::sensitive("id_number", "11010519491231002X", "has a wrong check digit");
        assert_eq!(e.value, "\"110105**********2X\"");
        assert!(!e.to_string().contains("19491231"));
        assert_eq!(mask("abc"), "\"***\" (3 characters)");
    }
}
