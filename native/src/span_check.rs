//! The usual case of `Span.__post_init__` (tokentrace/core/span.py) and of reading a normalised timestamp
//! (tokentrace/core/timefmt.py).
//!
//! `check_span` accepts a span only when every check passes on the common path: ASCII printable names,
//! int token counts, canonical `YYYY-MM-DDTHH:MM:SS.mmmZ` timestamps, both ids present. It then fills what
//! `__post_init__` derives (`total_tokens`, `latency_ms`) and returns `True`. Anything else, valid or not,
//! returns `False` before a field is touched, and `__post_init__` runs its Python checks, which phrase every
//! error. The bounds are passed in by the Python side so they are written down once.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt, PyString};

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
pub fn canonical(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 24 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if b[19] != b'.' || b[23] != b'Z' {
        return None;
    }
    let (year, month, day) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (hour, minute, second) = (digits(&b[11..13])?, digits(&b[14..16])?, digits(&b[17..19])?);
    let millis = digits(&b[20..23])?;
    if year < 1970 || !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let month_days = [31, if is_leap(year) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if day < 1 || day > month_days[(month - 1) as usize] {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(seconds * 1000 + millis)
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
    let started = crate::slots::field(span, intern!(py, "started_at")).ok()?;
    let start = canonical(started.cast::<PyString>().ok()?.to_str().ok()?)?;
    let ended = crate::slots::field(span, intern!(py, "ended_at")).ok()?;
    if ended.is_none() {
        let latency = crate::slots::field(span, intern!(py, "latency_ms")).ok()?;
        let rounded = if latency.is_none() {
            0
        } else if latency.is_exact_instance_of::<PyFloat>() {
            let value = latency.cast::<PyFloat>().ok()?.value();
            if !(0.0..=1e15).contains(&value) {
                return None;
            }
            value.round_ties_even() as i64
        } else if latency.is_exact_instance_of::<PyInt>() {
            let value: i64 = latency.extract().ok()?;
            if !(0..=1_000_000_000_000_000).contains(&value) {
                return None;
            }
            value
        } else {
            return None;
        };
        let text = format((start + rounded).min(LAST_MS));
        span.setattr(intern!(py, "ended_at"), text).ok()?;
    }
    Some(start)
}

pub fn printable_ascii(text: &str) -> bool {
    text.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// `None` or an int token count in bounds; `Err` for anything else.
fn token_count(obj: &Bound<'_, PyAny>, max_tokens: i64) -> Result<Option<i64>, ()> {
    if obj.is_none() {
        return Ok(None);
    }
    if !obj.is_exact_instance_of::<PyInt>() {
        return Err(());
    }
    let value: i64 = obj.extract().map_err(|_| ())?;
    if (0..=max_tokens).contains(&value) {
        Ok(Some(value))
    } else {
        Err(())
    }
}

/// `None`, or an int or float in `0..=high` (as `__post_init__` bounds costs and latencies).
fn bounded(obj: &Bound<'_, PyAny>, high: f64) -> Result<bool, ()> {
    if obj.is_none() {
        return Ok(false);
    }
    if (0.0..=high).contains(&exact_number(obj)?) {
        Ok(true)
    } else {
        Err(())
    }
}

/// The value of an exact `float`, or of an exact `int` a float holds exactly; `Err` for anything else
/// (bool, subclasses, larger ints).
fn exact_number(obj: &Bound<'_, PyAny>) -> Result<f64, ()> {
    if obj.is_exact_instance_of::<PyFloat>() {
        return Ok(obj.cast::<PyFloat>().map_err(|_| ())?.value());
    }
    if !obj.is_exact_instance_of::<PyInt>() {
        return Err(());
    }
    let int: i64 = obj.extract().map_err(|_| ())?;
    if int.unsigned_abs() > 1 << 53 {
        return Err(());
    }
    Ok(int as f64)
}

fn timestamp(obj: &Bound<'_, PyAny>) -> Result<Option<i64>, ()> {
    if obj.is_none() {
        return Ok(None);
    }
    let text = obj.cast::<PyString>().map_err(|_| ())?.to_str().map_err(|_| ())?;
    match canonical(text) {
        Some(millis) if millis <= LAST_MS => Ok(Some(millis)),
        _ => Err(()),
    }
}

fn attributes_ok(attributes: &Bound<'_, PyDict>, score_key: &Bound<'_, PyString>, max_score: f64) -> Result<(), ()> {
    for (_, value) in attributes.iter() {
        if value.is_exact_instance_of::<PyInt>() {
            // MessagePack integers: -2**63 ..= 2**64 - 1
            let fits = value.extract::<i64>().is_ok() || value.extract::<u64>().is_ok();
            if !fits {
                return Err(());
            }
        }
    }
    if let Some(score) = attributes.get_item(score_key).map_err(|_| ())? {
        if score.is_none() {
            return Ok(());
        }
        if !(-max_score..=max_score).contains(&exact_number(&score)?) {
            return Err(());
        }
    }
    Ok(())
}

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
        let get = |name: &Bound<'py, PyString>| crate::slots::field(span, name).map_err(|_| ());
        for name in [intern!(py, "trace_id"), intern!(py, "span_id")] {
            if get(name)?.cast::<PyString>().map_err(|_| ())?.to_str().map_err(|_| ())?.is_empty() {
                return Err(()); // __post_init__ generates the id
            }
        }
        for name in [intern!(py, "model"), intern!(py, "provider"), intern!(py, "caller")] {
            let value = get(name)?;
            let text = value.cast::<PyString>().map_err(|_| ())?.to_str().map_err(|_| ())?;
            if !printable_ascii(text) {
                return Err(());
            }
        }
        if get(intern!(py, "model"))?.cast::<PyString>().map_err(|_| ())?.to_str().map_err(|_| ())?.is_empty() {
            return Err(());
        }
        let prompt = token_count(&get(intern!(py, "prompt_tokens"))?, max_tokens)?;
        let comp = token_count(&get(intern!(py, "comp_tokens"))?, max_tokens)?;
        let total = token_count(&get(intern!(py, "total_tokens"))?, max_tokens)?;
        if prompt.is_none() && comp.is_none() && total.is_none() {
            return Err(());
        }
        bounded(&get(intern!(py, "cost_usd"))?, max_cost)?;
        let has_latency = bounded(&get(intern!(py, "latency_ms"))?, max_latency)?;
        let started = timestamp(&get(intern!(py, "started_at"))?)?;
        let ended = timestamp(&get(intern!(py, "ended_at"))?)?;
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
        let attributes = get(intern!(py, "attributes"))?;
        let attributes = attributes.cast::<PyDict>().map_err(|_| ())?;
        if !attributes.is_empty() {
            attributes_ok(attributes, intern!(py, "eval.score"), max_score)?;
        }
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
