//! Exact decimals: the price and quantity type of every K2 table.
//!
//! A [`Decimal`] is an `i128` scaled by 10^18, written to Iceberg as
//! `decimal(38, 18)`. Exchanges send decimal text (Binance) or JSON numbers
//! (Kraken) with up to 10 fractional digits for micro-priced coins, so a fixed
//! 8-digit scale would lose information, and floats would not round-trip the
//! exchange's own text. 18 fractional digits cover every listed instrument,
//! and 20 integer digits every price.
//!
//! **Range.** A `decimal(38, 18)` column holds at most 38 digits, so a value
//! must lie strictly between −10^20 and 10^20. Parsing and arithmetic refuse
//! anything outside (`None`), so no reader ever sees a value its column
//! cannot hold: the decoder turns such a field into a dead letter with the
//! reason.
//!
//! **Arithmetic** is exact or says how it rounds, and every operation is
//! overflow-checked:
//! * [`Decimal::checked_add`] and [`Decimal::checked_sub`] are exact;
//! * [`Decimal::mul_exact`] multiplies into a [`Wide`] (256 bits at scale
//!   36), exact; sums of such products (a VWAP numerator) stay exact;
//! * [`Decimal::checked_mul`] rounds the product to 18 digits, and
//!   [`Decimal::checked_div`] and [`Wide::checked_div`] divide, both with a
//!   stated [`Rounding`].

use arrow_buffer::i256;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Number of fractional digits carried by a [`Decimal`].
pub const DECIMAL_SCALE: u32 = 18;

/// Digits a `decimal(38, 18)` column holds.
pub const MAX_DIGITS: u32 = 38;

/// An exact decimal: `value / 10^18`, with `|value| < 10^38`. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Decimal(pub i128);

/// How a result with more digits than its scale holds is rounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// To the nearest, ties to the even neighbour (banker's rounding; what
    /// `decimal` division in most SQL engines and IEEE 754 do).
    HalfEven,
    /// To the nearest, ties away from zero (what people do by hand).
    HalfUp,
    /// Toward zero (truncation).
    Down,
}

/// 10^38: the first magnitude a `decimal(38, _)` cannot hold.
const LIMIT: i128 = 100_000_000_000_000_000_000_000_000_000_000_000_000;

impl Decimal {
    /// 10^18, the scale factor.
    pub const ONE: i128 = 1_000_000_000_000_000_000;
    /// Zero.
    pub const ZERO: Decimal = Decimal(0);

    /// `value` when it fits `decimal(38, 18)`, else `None`.
    pub fn new(value: i128) -> Option<Decimal> {
        (value > -LIMIT && value < LIMIT).then_some(Decimal(value))
    }

    /// An integer as a decimal (`None` beyond ±10^20).
    pub fn from_int(n: i64) -> Option<Decimal> {
        i128::from(n).checked_mul(Self::ONE).and_then(Decimal::new)
    }

    /// The value as an `f64`, for analytics where exactness is not needed.
    pub fn to_f64(self) -> f64 {
        self.0 as f64 / Self::ONE as f64
    }

    /// `self + other`, exact; `None` outside the column's range.
    pub fn checked_add(self, other: Decimal) -> Option<Decimal> {
        self.0.checked_add(other.0).and_then(Decimal::new)
    }

    /// `self - other`, exact; `None` outside the column's range.
    pub fn checked_sub(self, other: Decimal) -> Option<Decimal> {
        self.0.checked_sub(other.0).and_then(Decimal::new)
    }

    /// `self × other`, exact, at scale 36 (e.g. a price times a quantity).
    pub fn mul_exact(self, other: Decimal) -> Wide {
        // |a|, |b| < 10^38, so |a·b| < 10^76 < 2^255: cannot overflow.
        Wide(i256::from_i128(self.0).wrapping_mul(i256::from_i128(other.0)))
    }

    /// `self × other` rounded to 18 digits; `None` outside the column's range.
    pub fn checked_mul(self, other: Decimal, rounding: Rounding) -> Option<Decimal> {
        let product = self.mul_exact(other).0;
        div_round(product, i256::from_i128(Self::ONE), rounding)
            .and_then(|q| q.to_i128())
            .and_then(Decimal::new)
    }

    /// `self ÷ other` rounded to 18 digits; `None` when `other` is zero or
    /// the quotient is outside the column's range.
    pub fn checked_div(self, other: Decimal, rounding: Rounding) -> Option<Decimal> {
        let num = i256::from_i128(self.0).wrapping_mul(i256::from_i128(Self::ONE));
        div_round(num, i256::from_i128(other.0), rounding)
            .and_then(|q| q.to_i128())
            .and_then(Decimal::new)
    }
}

/// An exact product of two [`Decimal`]s, or a sum of such products: a
/// 256-bit integer at scale 36. Sums of up to ~10^600 / 10^76 products
/// cannot overflow in practice, and every addition is checked anyway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Wide(i256);

impl Wide {
    /// Zero.
    pub const ZERO: Wide = Wide(i256::ZERO);

    /// `self + other`, exact; `None` on 256-bit overflow.
    pub fn checked_add(self, other: Wide) -> Option<Wide> {
        self.0.checked_add(other.0).map(Wide)
    }

    /// `self ÷ divisor` as a [`Decimal`] rounded to 18 digits (e.g. a VWAP:
    /// Σ price·qty ÷ Σ qty); `None` when `divisor` is zero or the quotient is
    /// outside the column's range.
    pub fn checked_div(self, divisor: Decimal, rounding: Rounding) -> Option<Decimal> {
        // scale 36 ÷ scale 18 = scale 18.
        div_round(self.0, i256::from_i128(divisor.0), rounding)
            .and_then(|q| q.to_i128())
            .and_then(Decimal::new)
    }

    /// The value rounded to 18 digits, if it fits a [`Decimal`].
    pub fn to_decimal(self, rounding: Rounding) -> Option<Decimal> {
        div_round(self.0, i256::from_i128(Decimal::ONE), rounding)
            .and_then(|q| q.to_i128())
            .and_then(Decimal::new)
    }
}

impl Serialize for Wide {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0.to_le_bytes())
    }
}

impl<'de> Deserialize<'de> for Wide {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: Vec<u8> = serde_bytes_vec(d)?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("a Wide decimal is 32 bytes"))?;
        Ok(Wide(i256::from_le_bytes(arr)))
    }
}

fn serde_bytes_vec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("32 bytes")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(32);
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
    d.deserialize_bytes(V)
}

/// `num ÷ den`, rounded; `None` for a zero divisor.
fn div_round(num: i256, den: i256, rounding: Rounding) -> Option<i256> {
    if den == i256::ZERO {
        return None;
    }
    let q = num.checked_div(den)?;
    let r = num.checked_rem(den)?;
    if r == i256::ZERO || rounding == Rounding::Down {
        return Some(q);
    }
    // Compare 2|r| with |den| to find which neighbour is nearer.
    let twice = r.wrapping_abs().checked_mul(i256::from_i128(2))?;
    let den_abs = den.wrapping_abs();
    let away = match twice.cmp(&den_abs) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => match rounding {
            Rounding::HalfUp => true,
            Rounding::HalfEven => q.checked_rem(i256::from_i128(2)) != Some(i256::ZERO),
            Rounding::Down => false,
        },
    };
    if !away {
        return Some(q);
    }
    // Away from zero: in the direction of the exact quotient's sign.
    let negative = (num < i256::ZERO) != (den < i256::ZERO);
    if negative {
        q.checked_sub(i256::ONE)
    } else {
        q.checked_add(i256::ONE)
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let neg = self.0 < 0;
        let abs = self.0.unsigned_abs();
        let int = abs / Self::ONE as u128;
        let frac = abs % Self::ONE as u128;
        if neg {
            write!(f, "-")?;
        }
        if frac == 0 {
            return write!(f, "{int}");
        }
        let digits = format!("{frac:018}");
        write!(f, "{int}.{}", digits.trim_end_matches('0'))
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Why a decimal was rejected (internal; [`parse_decimal`] returns `Option`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DecimalError {
    /// Not the JSON number grammar.
    Syntax,
    /// Non-zero digits beyond the 18th fractional digit.
    TooPrecise,
    /// More than 38 digits in all (`decimal(38, 18)`), so beyond ±10^20.
    Overflow,
}

/// Powers of ten that fit in a `u128` (10^0 ..= 10^38).
const POW10: [u128; 39] = {
    let mut table = [1u128; 39];
    let mut i = 1;
    while i < 39 {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};

/// Parses decimal text into a [`Decimal`] exactly, without floating point.
///
/// Accepts the JSON number grammar (see the module docs): an optional `-`,
/// an integer part without leading zeros, an optional fraction with at least
/// one digit, and an optional `e`/`E` exponent. Returns `None` for anything
/// else, for more than 18 non-zero fractional digits, and on overflow.
///
/// ```
/// use k2::record::Decimal;
/// use k2::decimal::parse_decimal;
/// assert_eq!(parse_decimal("0.00100000"), Some(Decimal(1_000_000_000_000_000)));
/// assert_eq!(parse_decimal("1e-18"), Some(Decimal(1)));
/// assert_eq!(parse_decimal(".5"), None);
/// ```
#[inline]
pub fn parse_decimal(text: &str) -> Option<Decimal> {
    parse_decimal_detailed(text).ok().map(Decimal)
}

#[inline]
pub(crate) fn parse_decimal_detailed(text: &str) -> Result<i128, DecimalError> {
    match parse_decimal_fast(text.as_bytes()) {
        Some(v) => Ok(v),
        None => parse_decimal_general(text.as_bytes()),
    }
}

/// The common case in one pass: `-?int(.frac)?` with at most 19 characters
/// after the sign (so at most 19 digits, which fit a `u64`, and at most 17
/// fractional digits), no exponent. `None` means "use the general parser",
/// which also classifies errors.
#[inline]
fn parse_decimal_fast(b: &[u8]) -> Option<i128> {
    let (neg, b) = match b {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, b),
    };
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    let mut acc: u64 = 0;
    let mut i = 0;
    while let Some(v) = eight_digits(&b[i..]) {
        acc = acc * 100_000_000 + v;
        i += 8;
    }
    while i < b.len() {
        let d = b[i].wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        acc = acc * 10 + u64::from(d);
        i += 1;
    }
    if i == 0 || (i > 1 && b[0] == b'0') {
        return None;
    }
    let mut frac_len = 0;
    if i < b.len() {
        if b[i] != b'.' {
            return None;
        }
        i += 1;
        let start = i;
        while let Some(v) = eight_digits(&b[i..]) {
            acc = acc * 100_000_000 + v;
            i += 8;
        }
        while i < b.len() {
            let d = b[i].wrapping_sub(b'0');
            if d > 9 {
                return None;
            }
            acc = acc * 10 + u64::from(d);
            i += 1;
        }
        frac_len = i - start;
        if frac_len == 0 {
            return None;
        }
    }
    // acc < 10^19 and frac_len <= 17, so this cannot overflow an i128.
    let v = i128::from(acc) * POW10[DECIMAL_SCALE as usize - frac_len] as i128;
    Some(if neg { -v } else { v })
}

/// The value of the first 8 bytes of `b` if they are all ASCII digits
/// (SWAR: all eight digits are checked and combined in a few instructions).
#[inline]
pub(crate) fn eight_digits(b: &[u8]) -> Option<u64> {
    const HIGH_NIBBLES: u64 = 0xf0f0_f0f0_f0f0_f0f0;
    let chunk = u64::from_le_bytes(*b.first_chunk::<8>()?);
    let high = chunk & HIGH_NIBBLES;
    let carried = (chunk.wrapping_add(0x0606_0606_0606_0606) & HIGH_NIBBLES) >> 4;
    if high | carried != 0x3333_3333_3333_3333 {
        return None;
    }
    // Combine pairs, then quads, then the two halves (little-endian: the
    // first digit is the lowest byte).
    let v = chunk - 0x3030_3030_3030_3030;
    let v = (v * 10 + (v >> 8)) & 0x00ff_00ff_00ff_00ff;
    let v = (v * 100 + (v >> 16)) & 0x0000_ffff_0000_ffff;
    Some((v * 10_000 + (v >> 32)) & 0xffff_ffff)
}

fn parse_decimal_general(b: &[u8]) -> Result<i128, DecimalError> {
    let len = b.len();
    let mut i = 0;
    let neg = b.first() == Some(&b'-');
    if neg {
        i = 1;
    }

    let int_start = i;
    while i < len && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut int = &b[int_start..i];
    if int.is_empty() || (int.len() > 1 && int[0] == b'0') {
        return Err(DecimalError::Syntax);
    }

    let mut frac: &[u8] = &[];
    if i < len && b[i] == b'.' {
        i += 1;
        let start = i;
        while i < len && b[i].is_ascii_digit() {
            i += 1;
        }
        frac = &b[start..i];
        if frac.is_empty() {
            return Err(DecimalError::Syntax);
        }
    }

    let mut exp: i64 = 0;
    if i < len && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        let exp_neg = match b.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let start = i;
        while i < len && b[i].is_ascii_digit() {
            // Saturate: any exponent this large is out of range anyway.
            exp = (exp * 10 + i64::from(b[i] - b'0')).min(1_000_000_000);
            i += 1;
        }
        if i == start {
            return Err(DecimalError::Syntax);
        }
        if exp_neg {
            exp = -exp;
        }
    }
    if i != len {
        return Err(DecimalError::Syntax);
    }

    // value = digits(int ++ frac) * 10^e; strip zeros that carry no digits.
    let mut e = exp - frac.len() as i64;
    while let [rest @ .., b'0'] = frac {
        frac = rest;
        e += 1;
    }
    if frac.is_empty() {
        while let [rest @ .., b'0'] = int {
            int = rest;
            e += 1;
        }
    }
    while let [b'0', rest @ ..] = int {
        int = rest;
    }
    if int.is_empty() {
        while let [b'0', rest @ ..] = frac {
            frac = rest;
        }
    }
    let digits = (int.len() + frac.len()) as i64;
    if digits == 0 {
        return Ok(0);
    }
    let shift = e + i64::from(DECIMAL_SCALE);
    if shift < 0 {
        return Err(DecimalError::TooPrecise);
    }
    if digits + shift > MAX_DIGITS as i64 {
        return Err(DecimalError::Overflow);
    }
    let mut mag: u128 = 0;
    for &d in int.iter().chain(frac) {
        mag = mag
            .checked_mul(10)
            .and_then(|m| m.checked_add(u128::from(d - b'0')))
            .ok_or(DecimalError::Overflow)?;
    }
    // At most 38 digits: below 10^38 < i128::MAX, so neither can overflow.
    let mag = (mag * POW10[shift as usize]) as i128;
    Ok(if neg { -mag } else { mag })
}

#[cfg(test)]
mod tests {
    use super::*;

    // -- decimals ----------------------------------------------------------

    #[test]
    fn decimal_valid() {
        let one = Decimal::ONE;
        let cases: &[(&str, i128)] = &[
            ("0", 0),
            ("-0", 0),
            ("-0.0", 0),
            ("1", one),
            ("-1", -one),
            ("0.001", one / 1000),
            ("0.00100000", one / 1000),
            ("60123.45000000", 60_123_450_000_000_000_000_000),
            ("0.000012345678", 12_345_678_000_000),
            ("0.000000000000000001", 1),
            ("0.1000000000000000000000000", one / 10),
            ("1e-8", 10_000_000_000),
            ("1E-8", 10_000_000_000),
            ("1.2345e-5", 12_345_000_000_000),
            ("1.5e3", 1500 * one),
            ("1.5E+3", 1500 * one),
            ("15e-1", 15 * one / 10),
            ("1e-18", 1),
            ("1e05", 100_000 * one),
            ("100", 100 * one),
            ("100.00", 100 * one),
            ("0e-999999999999999", 0),
            ("1000000000000000000000e-21", one),
            ("99999999999999999999.999999999999999999", LIMIT - 1),
            ("-99999999999999999999.999999999999999999", 1 - LIMIT),
        ];
        for &(text, want) in cases {
            assert_eq!(parse_decimal(text), Some(Decimal(want)), "{text}");
        }
    }

    #[test]
    fn decimal_invalid() {
        use DecimalError::*;
        let cases: &[(&str, DecimalError)] = &[
            ("", Syntax),
            ("-", Syntax),
            ("+1", Syntax),
            (".5", Syntax),
            ("1.", Syntax),
            ("01", Syntax),
            ("-01", Syntax),
            ("00.1", Syntax),
            ("1e", Syntax),
            ("1e+", Syntax),
            ("1e-", Syntax),
            ("1.2.3", Syntax),
            (" 1", Syntax),
            ("1 ", Syntax),
            ("1,5", Syntax),
            ("NaN", Syntax),
            ("inf", Syntax),
            ("0x10", Syntax),
            ("--1", Syntax),
            ("1.e5", Syntax),
            ("١", Syntax),
            ("0.0000000000000000001", TooPrecise),
            ("1e-19", TooPrecise),
            ("1.5e-18", TooPrecise),
            ("0.1234567890123456789", TooPrecise),
            // 39 digits: an i128 holds them, a decimal(38, 18) column does not.
            ("170141183460469231731.687303715884105727", Overflow),
            ("-170141183460469231731.687303715884105728", Overflow),
            ("100000000000000000000", Overflow),
            ("-100000000000000000000", Overflow),
            ("1e20", Overflow),
            ("1e21", Overflow),
            ("1e999999999999999999999", Overflow),
            ("123456789012345678901234", Overflow),
            ("999999999999999999999999999999999999999999999", Overflow),
        ];
        for &(text, want) in cases {
            assert_eq!(parse_decimal_detailed(text), Err(want), "{text}");
            assert_eq!(parse_decimal(text), None, "{text}");
        }
    }

    #[test]
    fn decimal_roundtrips_display() {
        let mut rng = TestRng(7);
        for _ in 0..10_000 {
            let v = ((rng.next() as i128) << (rng.next() % 64) >> 1) % LIMIT;
            let text = Decimal(v).to_string();
            assert_eq!(parse_decimal(&text), Some(Decimal(v)), "{text}");
        }
    }

    #[test]
    fn decimal_fast_path_agrees_with_general() {
        assert_eq!(eight_digits(b"12345678"), Some(12_345_678));
        assert_eq!(eight_digits(b"00000000x"), Some(0));
        assert_eq!(eight_digits(b"99999999"), Some(99_999_999));
        assert_eq!(eight_digits(b"1234567"), None);
        for bad in [b"1234567:", b"/1234567", b"1234\xff567", b"12 45678"] {
            assert_eq!(eight_digits(bad), None);
        }
        let mut rng = TestRng(3);
        let alphabet = b"0123456789000.-e";
        let mut fast_hits = 0;
        for _ in 0..200_000 {
            let len = 1 + (rng.next() % 22) as usize;
            let text: Vec<u8> = (0..len)
                .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
                .collect();
            let general = parse_decimal_general(&text);
            if let Some(v) = parse_decimal_fast(&text) {
                fast_hits += 1;
                assert_eq!(Ok(v), general, "{}", String::from_utf8_lossy(&text));
            }
        }
        assert!(fast_hits > 1000, "{fast_hits}");
    }

    #[test]
    fn sums_and_products_are_exact_and_checked() {
        let d = |s: &str| parse_decimal(s).unwrap();
        assert_eq!(d("0.1").checked_add(d("0.2")), Some(d("0.3")));
        assert_eq!(
            d("99999999999999999999").checked_add(d("1")),
            None,
            "beyond decimal(38, 18)"
        );
        assert_eq!(
            d("1").checked_sub(d("1.000000000000000001")),
            Some(d("-0.000000000000000001"))
        );
        // A price times a quantity with 18 + 18 fractional digits: exact in Wide.
        let p = d("0.000000000000000003");
        let q = d("0.5");
        assert_eq!(p.checked_mul(q, Rounding::HalfEven), Some(d("0.000000000000000002")));
        assert_eq!(p.checked_mul(q, Rounding::HalfUp), Some(d("0.000000000000000002")));
        assert_eq!(
            d("0.000000000000000001").checked_mul(q, Rounding::HalfEven),
            Some(d("0"))
        );
        assert_eq!(
            d("0.000000000000000001").checked_mul(q, Rounding::HalfUp),
            Some(d("0.000000000000000001"))
        );
        assert_eq!(p.checked_mul(q, Rounding::Down), Some(d("0.000000000000000001")));
        assert_eq!(
            d("-0.000000000000000003").checked_mul(q, Rounding::HalfUp),
            Some(d("-0.000000000000000002"))
        );
        assert_eq!(d("10000000000").checked_mul(d("10000000000"), Rounding::Down), None);
        // VWAP: (1 × 2 + 4 × 1) / 3 = 2 exactly; (1 + 2) / 3 rounds.
        let num = d("1").mul_exact(d("2")).checked_add(d("4").mul_exact(d("1"))).unwrap();
        assert_eq!(num.checked_div(d("3"), Rounding::HalfEven), Some(d("2")));
        assert_eq!(
            d("2").checked_div(d("3"), Rounding::HalfEven),
            Some(d("0.666666666666666667"))
        );
        assert_eq!(
            d("2").checked_div(d("3"), Rounding::Down),
            Some(d("0.666666666666666666"))
        );
        assert_eq!(
            d("-2").checked_div(d("3"), Rounding::HalfUp),
            Some(d("-0.666666666666666667"))
        );
        assert_eq!(d("1").checked_div(d("0"), Rounding::HalfEven), None);
        // Ties: 0.5e-18 rounds to even.
        assert_eq!(
            d("0.000000000000000001").checked_div(d("2"), Rounding::HalfEven),
            Some(d("0"))
        );
        assert_eq!(
            d("0.000000000000000003").checked_div(d("2"), Rounding::HalfEven),
            Some(d("0.000000000000000002"))
        );
        assert_eq!(num.to_decimal(Rounding::HalfEven), Some(d("6")));
        let back: Wide = serde_json::from_str(&serde_json::to_string(&num).unwrap()).unwrap();
        assert_eq!(back, num);
    }

    #[test]
    fn products_match_a_wide_model_on_random_inputs() {
        let mut rng = TestRng(99);
        for _ in 0..20_000 {
            let a = ((rng.next() as i128) << (rng.next() % 40)) % LIMIT;
            let b = (rng.next() as i128 >> (rng.next() % 64)) % LIMIT;
            let exact = i256::from_i128(a) * i256::from_i128(b);
            let got = Decimal(a).mul_exact(Decimal(b));
            assert_eq!(got.0, exact);
            if let Some(down) = Decimal(a).checked_mul(Decimal(b), Rounding::Down) {
                // Truncation toward zero: |down·10^18| ≤ |a·b| < |down·10^18| + 10^18.
                let back = i256::from_i128(down.0) * i256::from_i128(Decimal::ONE);
                let diff = (exact - back).wrapping_abs();
                assert!(diff < i256::from_i128(Decimal::ONE), "{a} × {b}");
            }
        }
    }

    /// SplitMix64, for deterministic test inputs.
    struct TestRng(u64);

    impl TestRng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }
}
