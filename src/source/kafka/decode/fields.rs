//! Field access shared by the exchange decoders: every field is captured as
//! raw JSON first and converted here, so that each error names its field.

use super::DecodeError;
use crate::decimal::{Decimal, DecimalError, eight_digits, parse_decimal_detailed};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// Deserializes a field as raw JSON, so that `null` is kept (as `Some("null")`)
/// and only an absent field is `None` (via `#[serde(default)]`).
pub(super) fn present<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&'de RawValue as Deserialize<'de>>::deserialize(deserializer).map(Some)
}

/// Names a field for error messages without allocating until an error occurs.
#[derive(Clone, Copy)]
pub(super) struct Field {
    /// Index in Kraken's `data` array, if the field is inside a trade.
    index: Option<usize>,
    name: &'static str,
}

impl Field {
    pub(super) fn top(name: &'static str) -> Field {
        Field { index: None, name }
    }

    pub(super) fn data(index: usize, name: &'static str) -> Field {
        Field {
            index: Some(index),
            name,
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.index, self.name) {
            (Some(i), "") => write!(f, "data[{i}]"),
            (Some(i), name) => write!(f, "data[{i}].{name}"),
            (None, name) => f.write_str(name),
        }
    }
}

pub(super) fn invalid(field: Field, problem: String) -> DecodeError {
    DecodeError::InvalidField {
        field: field.to_string(),
        problem,
    }
}

pub(super) fn required(field: Field, value: Option<&RawValue>) -> Result<&str, DecodeError> {
    value
        .map(RawValue::get)
        .ok_or_else(|| DecodeError::MissingField(field.to_string()))
}

/// At most 40 characters of `s`, for quoting values in error messages.
pub(super) fn snippet(s: &str) -> Cow<'_, str> {
    match s.char_indices().nth(40) {
        None => Cow::Borrowed(s),
        Some((end, _)) => Cow::Owned(format!("{}...", &s[..end])),
    }
}

/// Describes the JSON type (and, for scalars, the value) of raw JSON text.
pub(super) fn describe(raw: &str) -> String {
    match raw.as_bytes().first() {
        Some(b'"') => format!("string {}", snippet(raw)),
        Some(b't' | b'f') => format!("boolean {raw}"),
        Some(b'n') => "null".to_owned(),
        Some(b'[') => "an array".to_owned(),
        Some(b'{') => "an object".to_owned(),
        _ => format!("number {}", snippet(raw)),
    }
}

pub(super) fn wrong_type(field: Field, expected: &str, raw: &str) -> DecodeError {
    invalid(field, format!("expected {expected}, found {}", describe(raw)))
}

/// The content of a JSON string, borrowed unless it contains escapes.
pub(super) fn string_field<'a>(field: Field, raw: &'a str, expected: &str) -> Result<Cow<'a, str>, DecodeError> {
    if !raw.starts_with('"') {
        return Err(wrong_type(field, expected, raw));
    }
    let inner = raw
        .get(1..raw.len().saturating_sub(1))
        .ok_or_else(|| wrong_type(field, expected, raw))?;
    if !inner.contains('\\') {
        return Ok(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(raw)
        .map(Cow::Owned)
        .map_err(|e| invalid(field, format!("invalid string: {e}")))
}

pub(super) fn u64_field(field: Field, raw: &str) -> Result<u64, DecodeError> {
    let b = raw.as_bytes();
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return Err(wrong_type(field, "an unsigned integer", raw));
    }
    if b.len() <= 19 {
        // At most 19 digits: cannot overflow.
        let mut v: u64 = 0;
        let mut rest = b;
        while let Some(chunk) = eight_digits(rest) {
            v = v * 100_000_000 + chunk;
            rest = &rest[8..];
        }
        return Ok(rest.iter().fold(v, |v, &d| v * 10 + u64::from(d - b'0')));
    }
    let mut v: u64 = 0;
    for &d in b {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or_else(|| invalid(field, format!("unsigned integer out of range: {}", snippet(raw))))?;
    }
    Ok(v)
}

pub(super) fn bool_field(field: Field, raw: &str) -> Result<bool, DecodeError> {
    match raw {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(wrong_type(field, "a boolean", raw)),
    }
}

/// A JSON number (not a string), parsed exactly.
pub(super) fn number_field(field: Field, raw: &str) -> Result<Decimal, DecodeError> {
    match raw.as_bytes().first() {
        Some(b'-' | b'0'..=b'9') => positive_decimal(field, raw),
        _ => Err(wrong_type(field, "a number", raw)),
    }
}

pub(super) fn positive_decimal(field: Field, text: &str) -> Result<Decimal, DecodeError> {
    match parse_decimal_detailed(text) {
        Ok(v) if v > 0 => Ok(Decimal(v)),
        Ok(_) => Err(invalid(field, format!("must be positive, found {:?}", snippet(text)))),
        Err(e) => {
            let why = match e {
                DecimalError::Syntax => "",
                DecimalError::TooPrecise => " (more than 18 fractional digits)",
                DecimalError::Overflow => " (more than 38 digits: out of the decimal(38, 18) column's range)",
            };
            Err(invalid(field, format!("invalid decimal {:?}{why}", snippet(text))))
        }
    }
}

/// Rejects a top-level array up front: serde's derived structs would
/// otherwise accept `[...]` as a positional struct.
pub(super) fn reject_array(text: &str) -> Result<(), DecodeError> {
    if text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('[') {
        return Err(DecodeError::Shape("expected a JSON object, found an array".to_owned()));
    }
    Ok(())
}

/// Maps a serde_json error to a [`DecodeError`]. Data errors come from
/// well-formed JSON of the wrong shape (a scalar instead of an object, a
/// duplicated key).
pub(super) fn json_error(e: &serde_json::Error) -> DecodeError {
    use serde_json::error::Category;
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let reason = full.strip_suffix(&suffix).unwrap_or(&full);
    match e.classify() {
        Category::Data => DecodeError::Shape(reason.to_owned()),
        Category::Syntax | Category::Eof | Category::Io => DecodeError::InvalidJson {
            line: e.line(),
            column: e.column(),
            reason: reason.to_owned(),
        },
    }
}

/// A trade id: an unsigned integer that fits the table's `long` column.
pub(super) fn trade_id_field(field: Field, raw: &str) -> Result<u64, DecodeError> {
    let id = u64_field(field, raw)?;
    if id > i64::MAX as u64 {
        return Err(invalid(
            field,
            format!(
                "trade id {id} is beyond the table's range (a signed 64-bit long, at most {})",
                i64::MAX
            ),
        ));
    }
    Ok(id)
}
