//! Rows of a text `COPY` (what pg_dump stores in a custom archive) rewritten into PostgreSQL's
//! binary `COPY` format, on the client.
//!
//! Why: the server's text input functions are most of a table load's time. At 1M Titanium
//! posts a text `COPY` took 2.84 s on the server and a binary `COPY` of the same rows 1.17 s
//! (two `timestamp` and three `varchar`/`text` columns per row). pg_restore's own worker sends
//! text, so one core runs the parse while the other waits. Parsing here moves that work into
//! this process, beside the backend, on the core pg_restore leaves idle.
//!
//! Only types whose text form PostgreSQL prints in one canonical way are converted (integers,
//! `bool`, character types, `date`, `timestamp`, `timestamptz`, `uuid`, `bytea` in hex). A
//! value this module cannot read exactly is a [`ConvertError`], never a guess: the caller then
//! loads the table as text, through the server's own parser. The server still checks every
//! value it receives (text encoding, `varchar(n)` lengths, timestamp ranges).

use memchr::memchr;
use tokio_postgres::types::Type;

/// The binary COPY header: signature, flags (no OIDs), no header extension.
pub(super) const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// The binary COPY trailer: a field count of -1.
pub(super) const TRAILER: &[u8] = &[0xff, 0xff];

/// How a column's text is turned into its binary form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Column {
    /// `text`, `varchar`, `char(n)`: the bytes themselves (the server checks the encoding).
    Bytes,
    Int2,
    Int4,
    Int8,
    Bool,
    Date,
    Timestamp,
    Timestamptz,
    Uuid,
    /// `bytea`, printed as `\x` and hex digits.
    Bytea,
}

impl Column {
    /// The conversion for a column of type `t`; `None` when this module does not convert it.
    pub(super) fn for_type(t: &Type) -> Option<Column> {
        Some(match *t {
            Type::TEXT | Type::VARCHAR | Type::BPCHAR => Column::Bytes,
            Type::INT2 => Column::Int2,
            Type::INT4 => Column::Int4,
            Type::INT8 => Column::Int8,
            Type::BOOL => Column::Bool,
            Type::DATE => Column::Date,
            Type::TIMESTAMP => Column::Timestamp,
            Type::TIMESTAMPTZ => Column::Timestamptz,
            Type::UUID => Column::Uuid,
            Type::BYTEA => Column::Bytea,
            _ => return None,
        })
    }
}

/// A value this module cannot convert exactly.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("row {row}, column {column}: {what}")]
pub(super) struct ConvertError {
    /// The row, from 1.
    pub(super) row: u64,
    /// The column, from 1.
    pub(super) column: usize,
    /// What was wrong with it.
    pub(super) what: &'static str,
}

/// Converts the rows of one table.
pub(super) struct Converter {
    columns: Vec<Column>,
    rows: u64,
    unescaped: Vec<u8>,
}

impl Converter {
    pub(super) fn new(columns: Vec<Column>) -> Self {
        Self {
            columns,
            rows: 0,
            unescaped: Vec::new(),
        }
    }

    /// Appends the binary form of `line` (one text row, without its newline) to `out`.
    ///
    /// # Errors
    /// A field this module cannot read exactly, or a row with too few or too many fields.
    pub(super) fn row(&mut self, line: &[u8], out: &mut Vec<u8>) -> Result<(), ConvertError> {
        self.rows += 1;
        let row = self.rows;
        let fail = |column: usize, what: &'static str| ConvertError { row, column, what };
        let count = i16::try_from(self.columns.len()).map_err(|_| fail(0, "too many columns"))?;
        out.extend_from_slice(&count.to_be_bytes());
        let mut rest = line;
        for (i, column) in self.columns.iter().enumerate() {
            let last = i + 1 == self.columns.len();
            let field = match memchr(b'\t', rest) {
                Some(tab) if !last => {
                    let field = &rest[..tab];
                    rest = &rest[tab + 1..];
                    field
                }
                Some(_) => return Err(fail(i + 1, "more fields than columns")),
                None if last => rest,
                None => return Err(fail(i + 1, "fewer fields than columns")),
            };
            if field == b"\\N" {
                out.extend_from_slice(&(-1i32).to_be_bytes());
                continue;
            }
            let value = if memchr(b'\\', field).is_some() {
                unescape(field, &mut self.unescaped).map_err(|what| fail(i + 1, what))?;
                &self.unescaped[..]
            } else {
                field
            };
            encode(*column, value, out).map_err(|what| fail(i + 1, what))?;
        }
        Ok(())
    }
}

/// Undoes COPY's text escapes (`\t`, `\n`, `\\`, octal `\ooo`, hex `\xhh`, ...) into `out`.
fn unescape(field: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    out.clear();
    let mut i = 0;
    while let Some(at) = memchr(b'\\', &field[i..]) {
        out.extend_from_slice(&field[i..i + at]);
        let mut j = i + at + 1;
        let c = *field.get(j).ok_or("a backslash ends the field")?;
        j += 1;
        let byte = match c {
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 0x0b,
            b'0'..=b'7' => {
                let mut value = u32::from(c - b'0');
                for _ in 0..2 {
                    match field.get(j) {
                        Some(d @ b'0'..=b'7') => {
                            value = (value << 3) + u32::from(d - b'0');
                            j += 1;
                        }
                        _ => break,
                    }
                }
                (value & 0o377) as u8
            }
            b'x' if field.get(j).is_some_and(u8::is_ascii_hexdigit) => {
                let mut value = hex_value(field[j]);
                j += 1;
                if let Some(d) = field.get(j).filter(|d| d.is_ascii_hexdigit()) {
                    value = (value << 4) + hex_value(*d);
                    j += 1;
                }
                value
            }
            other => other,
        };
        out.push(byte);
        i = j;
    }
    out.extend_from_slice(&field[i..]);
    Ok(())
}

fn hex_value(d: u8) -> u8 {
    match d {
        b'0'..=b'9' => d - b'0',
        b'a'..=b'f' => d - b'a' + 10,
        _ => d - b'A' + 10,
    }
}

/// Appends the length-prefixed binary form of `value` (unescaped text) to `out`.
fn encode(column: Column, value: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    let fixed = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    match column {
        Column::Bytes => {
            let len = i32::try_from(value.len()).map_err(|_| "a value over 2 GiB")?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(value);
        }
        Column::Int2 => {
            let v = i16::try_from(integer(value)?).map_err(|_| "out of range for smallint")?;
            fixed(out, &v.to_be_bytes());
        }
        Column::Int4 => {
            let v = i32::try_from(integer(value)?).map_err(|_| "out of range for integer")?;
            fixed(out, &v.to_be_bytes());
        }
        Column::Int8 => fixed(out, &integer(value)?.to_be_bytes()),
        Column::Bool => match value {
            b"t" => fixed(out, &[1]),
            b"f" => fixed(out, &[0]),
            _ => return Err("not a boolean as PostgreSQL prints one"),
        },
        Column::Date => fixed(out, &date(value)?.to_be_bytes()),
        Column::Timestamp => fixed(out, &timestamp(value, false)?.to_be_bytes()),
        Column::Timestamptz => fixed(out, &timestamp(value, true)?.to_be_bytes()),
        Column::Uuid => fixed(out, &uuid(value)?),
        Column::Bytea => {
            let hex = value
                .strip_prefix(b"\\x")
                .ok_or("bytea not in hex output")?;
            if hex.len() % 2 != 0 || !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err("bytea with a bad hex digit");
            }
            let len = i32::try_from(hex.len() / 2).map_err(|_| "a value over 2 GiB")?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend(
                hex.chunks_exact(2)
                    .map(|p| (hex_value(p[0]) << 4) + hex_value(p[1])),
            );
        }
    }
    Ok(())
}

/// A decimal integer as PostgreSQL prints it: an optional `-`, then digits.
fn integer(value: &[u8]) -> Result<i64, &'static str> {
    let (negative, digits) = match value.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, value),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err("not an integer as PostgreSQL prints one");
    }
    // Accumulated negatively so that i64::MIN fits.
    let mut v: i64 = 0;
    for d in digits {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_sub(i64::from(d - b'0')))
            .ok_or("integer out of range")?;
    }
    if negative {
        Ok(v)
    } else {
        v.checked_neg().ok_or("integer out of range")
    }
}

/// A date or timestamp's text: one of the infinities, or a finite value without its ` BC`.
enum Era<'a> {
    Infinity,
    MinusInfinity,
    /// The text before ` BC`, and whether it was there.
    Finite(&'a [u8], bool),
}

fn era(value: &[u8]) -> Era<'_> {
    match value {
        b"infinity" => Era::Infinity,
        b"-infinity" => Era::MinusInfinity,
        _ => match value.strip_suffix(b" BC") {
            Some(v) => Era::Finite(v, true),
            None => Era::Finite(value, false),
        },
    }
}

/// Days from 2000-01-01 of a `date` as PostgreSQL prints it with `DateStyle = ISO`
/// (`YYYY-MM-DD`, `... BC`, `infinity`, `-infinity`).
fn date(value: &[u8]) -> Result<i32, &'static str> {
    let (value, bc) = match era(value) {
        Era::Infinity => return Ok(i32::MAX),
        Era::MinusInfinity => return Ok(i32::MIN),
        Era::Finite(value, bc) => (value, bc),
    };
    let (days, rest) = ymd(value, bc)?;
    if !rest.is_empty() {
        return Err("not a date as PostgreSQL prints one");
    }
    i32::try_from(days).map_err(|_| "date out of range")
}

/// Microseconds from 2000-01-01 00:00 of a `timestamp` (or, `with_zone`, a `timestamptz`, in
/// UTC) as PostgreSQL prints it with `DateStyle = ISO`: `YYYY-MM-DD HH:MM:SS[.ffffff]`, then
/// for `timestamptz` the offset `+HH[:MM[:SS]]`, then ` BC` for years before 1.
fn timestamp(value: &[u8], with_zone: bool) -> Result<i64, &'static str> {
    const BAD: &str = "not a timestamp as PostgreSQL prints one";
    let (value, bc) = match era(value) {
        Era::Infinity => return Ok(i64::MAX),
        Era::MinusInfinity => return Ok(i64::MIN),
        Era::Finite(value, bc) => (value, bc),
    };
    let (days, rest) = ymd(value, bc)?;
    let rest = rest.strip_prefix(b" ").ok_or(BAD)?;
    if rest.len() < 8 || rest[2] != b':' || rest[5] != b':' {
        return Err(BAD);
    }
    let (hour, minute, second) = (
        two_digits(&rest[0..2])?,
        two_digits(&rest[3..5])?,
        two_digits(&rest[6..8])?,
    );
    if hour > 23 || minute > 59 || second > 59 {
        return Err(BAD);
    }
    let mut rest = &rest[8..];
    let mut micros: i64 = 0;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let digits = fraction.iter().take_while(|d| d.is_ascii_digit()).count();
        if digits == 0 || digits > 6 {
            return Err(BAD);
        }
        for d in &fraction[..digits] {
            micros = micros * 10 + i64::from(d - b'0');
        }
        micros *= 10i64.pow(6 - digits as u32);
        rest = &fraction[digits..];
    }
    let offset = if with_zone {
        let (sign, rest_) = match rest.split_first() {
            Some((b'+', r)) => (1, r),
            Some((b'-', r)) => (-1, r),
            _ => return Err(BAD),
        };
        let mut parts = rest_.split(|b| *b == b':');
        let hours = two_digits(parts.next().ok_or(BAD)?)?;
        let minutes = parts.next().map(two_digits).transpose()?.unwrap_or(0);
        let seconds = parts.next().map(two_digits).transpose()?.unwrap_or(0);
        if parts.next().is_some() || minutes > 59 || seconds > 59 {
            return Err(BAD);
        }
        rest = &[];
        sign * (hours * 3600 + minutes * 60 + seconds)
    } else {
        0
    };
    if !rest.is_empty() {
        return Err(BAD);
    }
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    seconds
        .checked_mul(1_000_000)
        .and_then(|s| s.checked_add(micros))
        .ok_or("timestamp out of range")
}

fn two_digits(d: &[u8]) -> Result<i64, &'static str> {
    match d {
        [a @ b'0'..=b'9', b @ b'0'..=b'9'] => Ok(i64::from((a - b'0') * 10 + (b - b'0'))),
        _ => Err("expected two digits"),
    }
}

/// Reads `YYYY-MM-DD` (four or more year digits) from the start of `value`; returns the days
/// from 2000-01-01 and what follows. `bc`: the year is before 1 (year 1 BC is year 0).
fn ymd(value: &[u8], bc: bool) -> Result<(i64, &[u8]), &'static str> {
    const BAD: &str = "not a date as PostgreSQL prints one";
    let year_digits = value.iter().take_while(|d| d.is_ascii_digit()).count();
    if !(4..=7).contains(&year_digits) || value.len() < year_digits + 6 {
        return Err(BAD);
    }
    let mut year: i64 = 0;
    for d in &value[..year_digits] {
        year = year * 10 + i64::from(d - b'0');
    }
    let rest = &value[year_digits..];
    if rest[0] != b'-' || rest[3] != b'-' {
        return Err(BAD);
    }
    let (month, day) = (two_digits(&rest[1..3])?, two_digits(&rest[4..6])?);
    if year == 0 {
        return Err(BAD);
    }
    if bc {
        year = 1 - year;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month) || day < 1 || day > month_days[(month - 1) as usize] {
        return Err(BAD);
    }
    Ok((
        julian_day(year, month, day) - POSTGRES_EPOCH_JDATE,
        &rest[6..],
    ))
}

/// The Julian day of 2000-01-01, PostgreSQL's epoch.
const POSTGRES_EPOCH_JDATE: i64 = 2_451_545;

/// PostgreSQL's `date2j` (proleptic Gregorian, astronomical year numbering).
fn julian_day(year: i64, month: i64, day: i64) -> i64 {
    let (year, month) = if month > 2 {
        (year + 4800, month + 1)
    } else {
        (year + 4799, month + 13)
    };
    let century = year / 100;
    let mut julian = year * 365 - 32167;
    julian += year / 4 - century + century / 4;
    julian + 7834 * month / 256 + day
}

/// A `uuid` as PostgreSQL prints it: 32 hex digits in groups of 8-4-4-4-12.
fn uuid(value: &[u8]) -> Result<[u8; 16], &'static str> {
    const BAD: &str = "not a uuid as PostgreSQL prints one";
    if value.len() != 36 {
        return Err(BAD);
    }
    let mut out = [0u8; 16];
    let mut digits = value
        .iter()
        .enumerate()
        .filter(|(i, _)| ![8, 13, 18, 23].contains(i));
    if [8, 13, 18, 23].iter().any(|i| value[*i] != b'-') {
        return Err(BAD);
    }
    for byte in &mut out {
        let (_, hi) = digits.next().ok_or(BAD)?;
        let (_, lo) = digits.next().ok_or(BAD)?;
        if !hi.is_ascii_hexdigit() || !lo.is_ascii_hexdigit() {
            return Err(BAD);
        }
        *byte = (hex_value(*hi) << 4) + hex_value(*lo);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(columns: Vec<Column>, line: &[u8]) -> Result<Vec<u8>, ConvertError> {
        let mut out = Vec::new();
        Converter::new(columns).row(line, &mut out)?;
        Ok(out)
    }

    #[test]
    fn fields_nulls_and_escapes() {
        let out = convert(
            vec![Column::Int4, Column::Bytes, Column::Bytes],
            b"-7\ta\\tb\\\\c\\nd\\101\\x41\\q\t\\N",
        )
        .unwrap();
        let mut expected = vec![0, 3, 0, 0, 0, 4];
        expected.extend((-7i32).to_be_bytes());
        expected.extend(10i32.to_be_bytes());
        expected.extend(b"a\tb\\c\ndAAq");
        expected.extend((-1i32).to_be_bytes());
        assert_eq!(out, expected);
    }

    #[test]
    fn wrong_field_counts_and_unreadable_values_are_errors() {
        let err = convert(vec![Column::Int4, Column::Int4], b"1").unwrap_err();
        assert_eq!(err.what, "fewer fields than columns");
        let err = convert(vec![Column::Int4], b"1\t2").unwrap_err();
        assert_eq!(err.what, "more fields than columns");
        for (column, text) in [
            (Column::Int4, &b"1.5"[..]),
            (Column::Int4, b"2147483648"),
            (Column::Int2, b"+1"),
            (Column::Bool, b"true"),
            (Column::Date, b"2024-02-30"),
            (Column::Timestamp, b"2024-01-01 24:00:00"),
            (Column::Timestamp, b"2024-01-01T00:00:00"),
            (Column::Timestamptz, b"2024-01-01 00:00:00"),
            (Column::Uuid, b"not-a-uuid"),
            (Column::Bytea, b"\\\\001"),
        ] {
            assert!(convert(vec![column], text).is_err(), "{column:?} {text:?}");
        }
    }

    #[test]
    fn integers_at_their_limits() {
        assert_eq!(integer(b"-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(integer(b"9223372036854775807"), Ok(i64::MAX));
        assert!(integer(b"9223372036854775808").is_err());
        assert!(integer(b"-").is_err());
    }

    #[test]
    fn dates_and_timestamps_count_from_2000() {
        assert_eq!(date(b"2000-01-01"), Ok(0));
        assert_eq!(date(b"1999-12-31"), Ok(-1));
        assert_eq!(date(b"2000-03-01"), Ok(60));
        // 1 BC is the year 0, a leap year.
        assert_eq!(date(b"0001-01-01"), Ok(-730_119));
        assert_eq!(date(b"0001-12-31 BC"), Ok(-730_120));
        assert!(date(b"0001-02-29").is_err());
        assert!(date(b"0001-02-29 BC").is_ok());
        assert_eq!(timestamp(b"2000-01-01 00:00:01.5", false), Ok(1_500_000));
        assert_eq!(timestamp(b"2000-01-01 05:30:00+05:30", true), Ok(0));
        assert_eq!(timestamp(b"1999-12-31 23:59:59-00:00:01", true), Ok(0));
        assert_eq!(timestamp(b"infinity", true), Ok(i64::MAX));
    }
}
