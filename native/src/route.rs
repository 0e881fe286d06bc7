//! `Applier._route` (tokentrace/processors/state.py) for the usual message, whose Python code stays the
//! reference: every span's `started_at` normalised (the compiled `stamp`), inside the time bounds, priced
//! already (or nothing to price), and in a bucket past the retired horizon. It then groups the spans by
//! entry key as the Python loop does, in the same order. Any other message returns `None`; the only change
//! made by then is `stamp`'s filling of `ended_at`, exactly as the Python `stamp` would fill it, so the
//! Python code then decides the same.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use rustc_hash::FxHashMap;

use crate::span_check::stamp;

/// Whether the span still needs a price from the pricer (`_prepare`: no `cost_usd`, some token split known).
fn needs_price(py: Python<'_>, span: &Bound<'_, PyAny>) -> PyResult<bool> {
    if !crate::slots::field(span, intern!(py, "cost_usd"))?.is_none() {
        return Ok(false);
    }
    Ok(!crate::slots::field(span, intern!(py, "prompt_tokens"))?.is_none()
        || !crate::slots::field(span, intern!(py, "comp_tokens"))?.is_none())
}

/// `(spans by entry key, [(span, start ms), ...])` for `spans` (a list) when every span is accepted as
/// described above; `key_of(bucket start)` names a bucket's entry (called once per bucket).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn route_spans<'py>(
    py: Python<'py>,
    spans: &Bound<'py, PyAny>,
    oldest_ms: i64,
    latest_ms: i64,
    bucket_ms: i64,
    horizon_ms: i64,
    priced: bool,
    key_of: &Bound<'py, PyAny>,
) -> PyResult<Option<(Bound<'py, PyDict>, Bound<'py, PyList>)>> {
    let Ok(spans) = spans.cast::<PyList>() else {
        return Ok(None);
    };
    if bucket_ms <= 0 {
        return Ok(None);
    }
    let mut starts = Vec::with_capacity(spans.len());
    for span in spans.iter() {
        let Some(start) = stamp(py, &span) else {
            return Ok(None);
        };
        if start < oldest_ms || start > latest_ms || (priced && needs_price(py, &span)?) {
            return Ok(None);
        }
        let bucket = start - start.rem_euclid(bucket_ms);
        if bucket < horizon_ms {
            return Ok(None);
        }
        starts.push((start, bucket));
    }
    let by_key = PyDict::new(py);
    let pairs = PyList::empty(py);
    let mut members: FxHashMap<i64, Bound<'py, PyList>> = FxHashMap::default();
    for (span, (start, bucket)) in spans.iter().zip(starts) {
        let list = match members.get(&bucket) {
            Some(list) => list,
            None => {
                let key = key_of.call1((bucket,))?;
                let list = match by_key.get_item(&key)? {
                    Some(found) => found.cast_into::<PyList>()?, // an hour entry taking several minutes
                    None => {
                        let list = PyList::empty(py);
                        by_key.set_item(&key, &list)?;
                        list
                    }
                };
                members.entry(bucket).or_insert(list)
            }
        };
        list.append(&span)?;
        pairs.append(PyTuple::new(py, [span.into_any(), start.into_pyobject(py)?.into_any()])?)?;
    }
    Ok(Some((by_key, pairs)))
}
