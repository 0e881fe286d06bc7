//! `prepare_batch` (tokentrace/core/ingest.py) for the usual batch, whose Python code stays the reference:
//! every span within the text caps of `core.limits`, its `started_at` normalised (the compiled `stamp`),
//! starting and ending inside the batch's time bounds, and no cached-token attribute on a span to price.
//! A span to price whose model has linear or input-tiered rates (`PriceTable.linear_rates`/`tiered_rates`,
//! handed over as `rates`) is priced here as `PriceTable.cost` prices whole, uncached token counts, to the bit;
//! the others are left to the pricer. Any other batch returns `None` at the first span that is not usual,
//! having changed only what `stamp` fills in the spans before it (`ended_at`, exactly as the Python `stamp`
//! fills it) and their prices (as the pricer sets them), so the Python code then decides the same, error
//! message included.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt, PyList, PyString};

use crate::span_check::{canonical, stamp};

/// The caps of `core.limits`, in characters (code points, as Python's `len`).
#[derive(FromPyObject)]
pub struct TextCaps {
    label: usize,
    name: usize,
    id: usize,
    error: usize,
    attributes: usize,
    attribute_key: usize,
    attribute_value: usize,
    attributes_chars: usize,
}

/// The length of an exact `str` in code points; `None` for anything else.
fn chars(obj: &Bound<'_, PyAny>) -> Option<usize> {
    if !obj.is_exact_instance_of::<PyString>() {
        return None;
    }
    obj.len().ok()
}

fn within(obj: &Bound<'_, PyAny>, cap: usize) -> Option<()> {
    (chars(obj)? <= cap).then_some(())
}

/// Whether `span` is within every cap (`text_limit_error` returns None) and carries no cached-token attribute
/// when it is to be priced; `None` when the Python code should look.
fn usual_text(
    py: Python<'_>,
    span: &Bound<'_, PyAny>,
    caps: &TextCaps,
    cache_keys: &[Bound<'_, PyString>],
) -> Option<()> {
    for name in [intern!(py, "model"), intern!(py, "provider"), intern!(py, "caller")] {
        within(&crate::slots::field(span, name).ok()?, caps.label)?;
    }
    for name in [intern!(py, "trace_id"), intern!(py, "span_id")] {
        within(&crate::slots::field(span, name).ok()?, caps.id)?;
    }
    let parent = crate::slots::field(span, intern!(py, "parent_span_id")).ok()?;
    if !parent.is_none() {
        within(&parent, caps.id)?;
    }
    within(&crate::slots::field(span, intern!(py, "name")).ok()?, caps.name)?;
    let error = crate::slots::field(span, intern!(py, "error")).ok()?;
    if !error.is_none() {
        within(&error, caps.error)?;
    }
    let attributes = crate::slots::field(span, intern!(py, "attributes")).ok()?;
    let attributes = attributes.cast::<PyDict>().ok()?;
    if attributes.len() > caps.attributes {
        return None;
    }
    let mut total = 0;
    for (key, value) in attributes.iter() {
        let length = chars(&key)?;
        if length > caps.attribute_key {
            return None;
        }
        total += length;
        if value.is_exact_instance_of::<PyString>() {
            let length = value.len().ok()?;
            if length > caps.attribute_value {
                return None;
            }
            total += length;
        }
    }
    if total > caps.attributes_chars {
        return None;
    }
    if !attributes.is_empty() {
        for key in cache_keys {
            if attributes.contains(key).ok()? {
                return None;
            }
        }
    }
    Some(())
}

/// Whether the pricer is to price `span` (`_prepare`: no `cost_usd`, some token split known).
fn to_price(py: Python<'_>, span: &Bound<'_, PyAny>) -> Option<bool> {
    if !crate::slots::field(span, intern!(py, "cost_usd")).ok()?.is_none() {
        return Some(false);
    }
    let known = |name| crate::slots::field(span, name).ok().map(|value: Bound<'_, PyAny>| !value.is_none());
    Some(known(intern!(py, "prompt_tokens"))? || known(intern!(py, "comp_tokens"))?)
}

/// A token count as `int(span.x or 0)` reads it (`Span.__post_init__` made it a whole int or `None`).
fn count(obj: &Bound<'_, PyAny>) -> Option<i64> {
    if obj.is_none() {
        return Some(0);
    }
    if !obj.is_exact_instance_of::<PyInt>() {
        return None;
    }
    obj.extract::<i64>().ok().filter(|value| (0..=1 << 53).contains(value))
}

/// One region's linear rates: `(per_call, input, output, cache_read, cache_write)` (`Rates`' fields).
type Linear = (f64, f64, f64, f64, f64);

/// `span`'s price from its model's rates in `rates` (`{model: {provider or None: rates or None}}`), where the
/// rates are linear (`Linear`) or tiered by input tokens (`(starts, regions)`: region `i` prices calls whose
/// prompt tokens lie in `(starts[i-1], starts[i]]`, as `_Tiered` picks it with `bisect_left`), as
/// `PriceTable.cost` computes it for uncached tokens: `round(per_call + prompt * input + comp * output)` to
/// `1 / scale` USD. `None` when the model has no such rates here (the pricer prices it).
fn table_price(py: Python<'_>, span: &Bound<'_, PyAny>, rates: &Bound<'_, PyDict>, scale: f64) -> Option<f64> {
    let by_provider = rates.get_item(crate::slots::field(span, intern!(py, "model")).ok()?).ok()??;
    let by_provider = by_provider.cast::<PyDict>().ok()?;
    let provider = crate::slots::field(span, intern!(py, "provider")).ok()?;
    let entry = if provider.is_truthy().ok()? {
        by_provider.get_item(provider).ok()??
    } else {
        by_provider.get_item(py.None()).ok()??
    };
    if entry.is_none() {
        return None;
    }
    let prompt = count(&crate::slots::field(span, intern!(py, "prompt_tokens")).ok()?)?;
    let comp = count(&crate::slots::field(span, intern!(py, "comp_tokens")).ok()?)? as f64;
    let (per_call, input, output, _, _) = match entry.extract::<Linear>() {
        Ok(linear) => linear,
        Err(_) => {
            let (starts, regions): (Vec<i64>, Vec<Linear>) = entry.extract().ok()?;
            *regions.get(starts.partition_point(|start| *start < prompt))?
        }
    };
    let usd = per_call + prompt as f64 * input + comp * output;
    let scaled = usd * scale + 0.5;
    if !scaled.is_finite() || !(0.0..9.0e18).contains(&scaled) {
        return None;
    }
    Some(scaled.trunc() / scale)
}

/// `(start of each span, indices of the spans the pricer must price)` for `spans` (a list) when every span is
/// usual (see the module docstring); `None` otherwise. `rates`: the linear rates known so far, by model and
/// provider (`None` when there is no pricer); `scale`: the pricer's rounding (1e10: to 1e-10 USD).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (spans, oldest_ms, latest_ms, rates, scale, caps, cache_keys))]
pub fn prepare_spans(
    py: Python<'_>,
    spans: &Bound<'_, PyAny>,
    oldest_ms: i64,
    latest_ms: i64,
    rates: Option<&Bound<'_, PyDict>>,
    scale: f64,
    caps: TextCaps,
    cache_keys: Vec<Bound<'_, PyString>>,
) -> Option<(Vec<i64>, Vec<usize>)> {
    let spans = spans.cast::<PyList>().ok()?;
    let mut starts = Vec::with_capacity(spans.len());
    let mut pricing = Vec::new();
    for (index, span) in spans.iter().enumerate() {
        let price = rates.is_some() && to_price(py, &span)?;
        usual_text(py, &span, &caps, if price { &cache_keys } else { &[] })?;
        let start = stamp(py, &span)?;
        if start < oldest_ms || start > latest_ms {
            return None;
        }
        let ended = crate::slots::field(&span, intern!(py, "ended_at")).ok()?;
        let ended = canonical(ended.cast::<PyString>().ok()?.to_str().ok()?)?;
        if ended > latest_ms {
            return None;
        }
        starts.push(start);
        if let (true, Some(rates)) = (price, rates) {
            match table_price(py, &span, rates, scale) {
                Some(usd) => span.setattr(intern!(py, "cost_usd"), PyFloat::new(py, usd)).ok()?,
                None => pricing.push(index),
            }
        }
    }
    Some((starts, pricing))
}
