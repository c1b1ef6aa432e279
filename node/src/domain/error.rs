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

/// Masks all but the first 6 and the last 2 characters: `410103********12`.
pub fn mask(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() <= 8 {
        return format!("\"{}\" ({} characters)", "*".repeat(chars.len()), chars.len());
    }
    let head: String = chars[..6].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("\"{head}{}{tail}\"", "*".repeat(chars.len() - 8))
}

#[cfg(test)]
mod tests {
    use super::*;

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
