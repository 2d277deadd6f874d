//! Why an event was refused: a stable, machine-readable reason code plus the
//! offending field and a human-readable detail.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The reason an input line is not a valid event. The string forms
/// (`as_str`) are stable: they appear in dead-letter records, in the
/// `rejected` table and as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Not well-formed JSON (syntax error, invalid UTF-8, trailing data, truncated).
    InvalidJson,
    /// Well-formed JSON, but not an object.
    NotAnObject,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong JSON type (e.g. a string where an integer belongs, or `null` for a required field).
    WrongType,
    /// A number written with a fraction or exponent where an integer belongs.
    NotAnInteger,
    /// An integer below 0 or above the configured maximum.
    OutOfRange,
    /// A required string is empty.
    EmptyValue,
    /// A string is longer than its limit.
    TooLong,
    /// `ts` is neither epoch milliseconds nor an RFC 3339 time with offset, or is outside 1970-01-01..=2105-12-31.
    InvalidTs,
    /// A value outside its allowed set (e.g. `status` other than "ok"/"error").
    InvalidValue,
    /// The same known field appears twice in one object.
    DuplicateField,
    /// Arrays or objects nested deeper than the limit (`max_depth`).
    TooDeep,
    /// The record is larger than the limit (`max_record_bytes`).
    TooLarge,
}

impl RejectReason {
    pub const ALL: [RejectReason; 13] = [
        RejectReason::InvalidJson,
        RejectReason::NotAnObject,
        RejectReason::MissingField,
        RejectReason::WrongType,
        RejectReason::NotAnInteger,
        RejectReason::OutOfRange,
        RejectReason::EmptyValue,
        RejectReason::TooLong,
        RejectReason::InvalidTs,
        RejectReason::InvalidValue,
        RejectReason::DuplicateField,
        RejectReason::TooDeep,
        RejectReason::TooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::MissingField => "missing_field",
            RejectReason::WrongType => "wrong_type",
            RejectReason::NotAnInteger => "not_an_integer",
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::EmptyValue => "empty_value",
            RejectReason::TooLong => "too_long",
            RejectReason::InvalidTs => "invalid_ts",
            RejectReason::InvalidValue => "invalid_value",
            RejectReason::DuplicateField => "duplicate_field",
            RejectReason::TooDeep => "too_deep",
            RejectReason::TooLarge => "too_large",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused input: the reason, the field concerned (if any) and a detail
/// message for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub reason: RejectReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, field: Option<&'static str>, detail: String) -> Self {
        Rejection {
            reason,
            field,
            detail,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

impl std::error::Error for Rejection {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_forms_are_unique_and_match_serde() {
        let mut seen = std::collections::BTreeSet::new();
        for r in RejectReason::ALL {
            assert!(seen.insert(r.as_str()), "duplicate {}", r);
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
        }
    }
}
