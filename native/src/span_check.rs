//! The usual case of `Span.__post_init__` (tokentrace/core/span.py) and of reading a normalised timestamp
//! (tokentrace/core/timefmt.py).
//!
//! `check_span` accepts a span only when every check passes on the common path: ASCII printable names,
//! int token counts, canonical `YYYY-MM-DDTHH:MM:SS.mmmZ` timestamps, both ids present. It then fills what
//! `__post_init__` derives (`total_tokens`, `latency_ms`) and returns `True`. Anything else, valid or not,
//! returns `False` before a field is touched, and `__post_init__` runs its Python checks, which phrase every
//! error. The bounds are passed in by the Python side so they are written down once.

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict, PyInt, PyString};

use crate::msgpack::Value;
use crate::slots::at;

/// 9999-12-31T23:59:59.999Z, the last instant a timestamp may name.
pub const LAST_MS: i64 = 253_402_300_799_999;

fn digits(bytes: &[u8]) -> Option<i64> {
    let mut value = 0i64;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(b - b'0');
    }
    Some(value)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Epoch milliseconds of a valid timestamp in the normalised form, from 1970 on; `None` otherwise.
///
/// The spans of a batch mostly share their hour: the last hour read (`YYYY-MM-DDTHH`, checked and converted
/// by `hour_ms`) is kept, so a timestamp in it only has its minutes, seconds and milliseconds read.
pub fn canonical(text: &str) -> Option<i64> {
    thread_local! {
        static LAST_HOUR: std::cell::Cell<([u8; 13], i64)> = const { std::cell::Cell::new(([0; 13], -1)) };
    }
    let b = text.as_bytes();
    if b.len() != 24 || b[13] != b':' || b[16] != b':' || b[19] != b'.' || b[23] != b'Z' {
        return None;
    }
    let (minute, second, millis) = (digits(&b[14..16])?, digits(&b[17..19])?, digits(&b[20..23])?);
    if minute > 59 || second > 59 {
        return None;
    }
    let prefix: [u8; 13] = b[..13].try_into().ok()?;
    let (last, last_ms) = LAST_HOUR.get();
    let hour = if last_ms >= 0 && last == prefix {
        last_ms
    } else {
        let hour = hour_ms(&prefix)?;
        LAST_HOUR.set((prefix, hour));
        hour
    };
    Some(hour + minute * 60_000 + second * 1000 + millis)
}

/// Epoch milliseconds of a valid `YYYY-MM-DDTHH` from 1970 on; `None` otherwise.
fn hour_ms(b: &[u8; 13]) -> Option<i64> {
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let (year, month, day, hour) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?, digits(&b[11..13])?);
    if year < 1970 || !(1..=12).contains(&month) || hour > 23 {
        return None;
    }
    let month_days = [31, if is_leap(year) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if day < 1 || day > month_days[(month - 1) as usize] {
        return None;
    }
    Some((days_from_civil(year, month, day) * 24 + hour) * 3_600_000)
}

/// The epoch milliseconds of a normalised timestamp (``YYYY-MM-DDTHH:MM:SS.mmmZ``, 1970 on), or ``None``
/// for any other text (which the caller parses in Python).
#[pyfunction]
pub fn canonical_ms(text: &Bound<'_, PyAny>) -> Option<i64> {
    let text = text.cast::<PyString>().ok()?;
    canonical(text.to_str().ok()?)
}

/// The civil date of a day count since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// ``format_ms`` (timefmt.py) for 1970-01-01 ..= 9999-12-31: ``YYYY-MM-DDTHH:MM:SS.mmmZ``.
pub fn format(millis: i64) -> String {
    let mut text = [0u8; 24];
    format_into(millis, &mut text);
    String::from_utf8_lossy(&text).into_owned()
}

/// ``format`` into a buffer (no allocation, no formatting machinery: it is on the worker's hot path).
pub fn format_into(millis: i64, out: &mut [u8; 24]) {
    fn digits(out: &mut [u8], mut value: i64) {
        for slot in out.iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    let (seconds, ms) = (millis.div_euclid(1000), millis.rem_euclid(1000));
    let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    *out = *b"0000-00-00T00:00:00.000Z";
    digits(&mut out[0..4], year);
    digits(&mut out[5..7], month);
    digits(&mut out[8..10], day);
    digits(&mut out[11..13], rest / 3600);
    digits(&mut out[14..16], rest % 3600 / 60);
    digits(&mut out[17..19], rest % 60);
    digits(&mut out[20..23], ms);
}

/// ``Span.stamp`` for a span whose ``started_at`` is normalised: fills ``ended_at`` (from the start and the
/// latency, rounded as Python's ``round``) when absent and returns the start's epoch ms; ``None``, with
/// nothing changed, for any other span (``stamp`` then runs in Python).
#[pyfunction]
pub fn stamp(py: Python<'_>, span: &Bound<'_, PyAny>) -> Option<i64> {
    let fields = crate::slots::span_layout(py)?.read(span)?;
    let field = |index| crate::slots::value(fields[index]);
    let (start, ended) = stamped(field(at::STARTED_AT)?, field(at::ENDED_AT)?, field(at::LATENCY_MS)?)?;
    if let Some(ended) = ended {
        span.setattr(intern!(py, "ended_at"), format(ended)).ok()?;
    }
    Some(start)
}

/// `stamp` on a span's `started_at`, `ended_at` and `latency_ms`: the start's epoch ms and, when `ended_at` is
/// to be filled, the epoch ms it names.
pub fn stamped(started: Value<'_>, ended: Value<'_>, latency: Value<'_>) -> Option<(i64, Option<i64>)> {
    let start = canonical(started.text()?)?;
    if !matches!(ended, Value::Nil) {
        return Some((start, None));
    }
    let rounded = if matches!(latency, Value::Nil) { 0 } else { rounded_latency(latency)? };
    Some((start, Some((start + rounded).min(LAST_MS))))
}

/// A latency as Python's `round` reads it for `Span.stamp` (ties to even); `None` for anything but a number in
/// `0..=1e15`.
pub fn rounded_latency(latency: Value<'_>) -> Option<i64> {
    match latency {
        Value::Float(value) if (0.0..=1e15).contains(&value) => Some(value.round_ties_even() as i64),
        Value::Int(value) if (0..=1_000_000_000_000_000).contains(&value) => Some(value),
        _ => None,
    }
}

pub fn printable_ascii(text: &str) -> bool {
    text.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// `None` or an int token count in bounds; `Err` for anything else.
fn token_count(value: Value<'_>, max_tokens: i64) -> Result<Option<i64>, ()> {
    match value {
        Value::Nil => Ok(None),
        Value::Int(count) if (0..=max_tokens).contains(&count) => Ok(Some(count)),
        _ => Err(()),
    }
}

/// `None`, or an int or float in `0..=high` (as `__post_init__` bounds costs and latencies).
fn bounded(value: Value<'_>, high: f64) -> Result<bool, ()> {
    if matches!(value, Value::Nil) {
        return Ok(false);
    }
    if (0.0..=high).contains(&number(value)?) {
        Ok(true)
    } else {
        Err(())
    }
}

/// A float, or an int a float holds exactly; `Err` for anything else (bool, larger ints).
fn number(value: Value<'_>) -> Result<f64, ()> {
    match value {
        Value::Float(number) => Ok(number),
        Value::Int(int) if int.unsigned_abs() <= 1 << 53 => Ok(int as f64),
        _ => Err(()),
    }
}

fn timestamp(value: Value<'_>) -> Result<Option<i64>, ()> {
    match value {
        Value::Nil => Ok(None),
        Value::Str(text) => match canonical(text) {
            Some(millis) if millis <= LAST_MS => Ok(Some(millis)),
            _ => Err(()),
        },
        _ => Err(()),
    }
}

/// Every int attribute fits MessagePack (`-2**63 ..= 2**64 - 1`), every key is an exact `str`, and
/// `eval.score`, when present and not None, is a number within `max_score`.
fn attributes_ok(attributes: Borrowed<'_, '_, PyDict>, max_score: f64) -> Result<(), ()> {
    let py = attributes.py();
    let (mut pos, mut key, mut item): (ffi::Py_ssize_t, *mut ffi::PyObject, *mut ffi::PyObject) =
        (0, std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: iterating a dict with the GIL held, running no Python code meanwhile (`extract` of an exact int
    // runs none), so it cannot change; the key and value are borrowed from it.
    while unsafe { ffi::PyDict_Next(attributes.as_ptr(), &mut pos, &mut key, &mut item) } != 0 {
        // SAFETY: valid objects the dict keeps alive (see above).
        let (key, value) = unsafe { (Borrowed::from_ptr(py, key), Borrowed::from_ptr(py, item)) };
        if value.is_exact_instance_of::<PyInt>() && value.extract::<i64>().is_err() && value.extract::<u64>().is_err() {
            return Err(());
        }
        if crate::slots::chars(key).ok_or(())? == EVAL_SCORE.len() && crate::slots::text(key).ok_or(())? == EVAL_SCORE {
            let score = crate::slots::value(value).ok_or(())?;
            if !matches!(score, Value::Nil) && !(-max_score..=max_score).contains(&number(score)?) {
                return Err(());
            }
        }
    }
    Ok(())
}

/// The attribute holding a span's quality score (`EVAL_SCORE` of tokentrace/core/span.py).
const EVAL_SCORE: &str = "eval.score";

/// `Span.__post_init__`'s usual case: ``True`` when ``span`` passed every check (and had ``total_tokens``
/// and ``latency_ms`` derived where absent), ``False``, with nothing changed, for the Python checks to decide.
#[pyfunction]
#[pyo3(signature = (span, max_tokens, max_cost, max_latency, max_score))]
pub fn check_span<'py>(
    py: Python<'py>,
    span: &Bound<'py, PyAny>,
    max_tokens: i64,
    max_cost: f64,
    max_latency: f64,
    max_score: f64,
) -> bool {
    let run = || -> Result<bool, ()> {
        let fields = crate::slots::span_layout(py).ok_or(())?.read(span).ok_or(())?;
        let field = |index: usize| crate::slots::value(fields[index]).ok_or(());
        let text = |index: usize| field(index)?.text().ok_or(());
        if text(at::TRACE_ID)?.is_empty() || text(at::SPAN_ID)?.is_empty() {
            return Err(()); // __post_init__ generates the id
        }
        let model = text(at::MODEL)?;
        if model.is_empty() || !printable_ascii(model) {
            return Err(());
        }
        if !printable_ascii(text(at::PROVIDER)?) || !printable_ascii(text(at::CALLER)?) {
            return Err(());
        }
        let prompt = token_count(field(at::PROMPT_TOKENS)?, max_tokens)?;
        let comp = token_count(field(at::COMP_TOKENS)?, max_tokens)?;
        let total = token_count(field(at::TOTAL_TOKENS)?, max_tokens)?;
        if prompt.is_none() && comp.is_none() && total.is_none() {
            return Err(());
        }
        bounded(field(at::COST_USD)?, max_cost)?;
        let has_latency = bounded(field(at::LATENCY_MS)?, max_latency)?;
        let started = timestamp(field(at::STARTED_AT)?)?;
        let ended = timestamp(field(at::ENDED_AT)?)?;
        let mut derived_latency = None;
        if let (Some(started), Some(ended)) = (started, ended) {
            if ended < started {
                return Err(());
            }
            if !has_latency {
                if (ended - started) as f64 > max_latency {
                    return Err(());
                }
                derived_latency = Some(ended - started);
            }
        }
        attributes_ok(fields[at::ATTRIBUTES].cast::<PyDict>().map_err(|_| ())?, max_score)?;
        // Every check passed: derive what __post_init__ derives.
        if total.is_none() {
            let sum = prompt.unwrap_or(0) + comp.unwrap_or(0);
            span.setattr(intern!(py, "total_tokens"), sum).map_err(|_| ())?;
        }
        if let Some(latency) = derived_latency {
            span.setattr(intern!(py, "latency_ms"), latency).map_err(|_| ())?;
        }
        Ok(true)
    };
    run().unwrap_or(false)
}

/// `Span.__post_init__` as one compiled call, without a Python frame for the usual span: `check_span` with these
/// bounds while `globals["_check_span"]` is set (the tests' Python path unsets it), then, unless it passed,
/// `checked(span)`: the Python checks, which phrase every error.
#[pyfunction]
pub fn compiled_post_init<'py>(
    py: Python<'py>,
    checked: Bound<'py, PyAny>,
    globals: Bound<'py, PyDict>,
    max_tokens: i64,
    max_cost: f64,
    max_latency: f64,
    max_score: f64,
) -> PyResult<Bound<'py, PyCFunction>> {
    let (checked, globals) = (checked.unbind(), globals.unbind());
    let post_init = move |args: &Bound<'_, pyo3::types::PyTuple>, _: Option<&Bound<'_, PyDict>>| -> PyResult<()> {
        let py = args.py();
        let span = args.get_item(0)?;
        let enabled = globals.bind(py).get_item(intern!(py, "_check_span"))?.is_some_and(|check| !check.is_none());
        if !(enabled && check_span(py, &span, max_tokens, max_cost, max_latency, max_score)) {
            checked.call1(py, (span,))?;
        }
        Ok(())
    };
    PyCFunction::new_closure(py, Some(c"__post_init__"), None, post_init)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_timestamps() {
        assert_eq!(canonical("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(canonical("2024-02-29T23:59:59.999Z"), Some(1_709_251_199_999));
        assert_eq!(canonical("9999-12-31T23:59:59.999Z"), Some(LAST_MS));
        assert_eq!(canonical("2023-02-29T00:00:00.000Z"), None);
        assert_eq!(canonical("2024-13-01T00:00:00.000Z"), None);
        assert_eq!(canonical("2024-01-01T24:00:00.000Z"), None);
        assert_eq!(canonical("2024-01-01 00:00:00.000Z"), None);
        assert_eq!(canonical("1969-12-31T23:59:59.999Z"), None);
        // The kept hour is only used for text in that hour.
        assert_eq!(canonical("2024-02-29T23:00:00.000Z"), Some(1_709_247_600_000));
        assert_eq!(canonical("2024-02-29T23:60:00.000Z"), None);
        assert_eq!(canonical("2024-02-29T23:00:00,000Z"), None);
        assert_eq!(canonical("2024-02-29T22:59:59.999Z"), Some(1_709_247_599_999));
        assert_eq!(canonical("2023-02-29T23:00:00.000Z"), None);
    }

    #[test]
    fn format_reads_back() {
        for millis in [0, 1, 999, 86_399_999, 951_782_400_000, 1_709_251_199_999, LAST_MS] {
            assert_eq!(canonical(&format(millis)), Some(millis), "{millis}");
        }
        assert_eq!(format(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format(LAST_MS), "9999-12-31T23:59:59.999Z");
    }
}
