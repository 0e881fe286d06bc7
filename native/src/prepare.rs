//! `prepare_batch` (tokentrace/core/ingest.py) for the usual batch, whose Python code stays the reference:
//! every span within the text caps of `core.limits`, its `started_at` normalised (the compiled `stamp`),
//! starting and ending inside the batch's time bounds, and no cached-token attribute on a span to price.
//! A span to price whose model has linear or input-tiered rates (`PriceTable.linear_rates`/`tiered_rates`,
//! handed over as `rates`) is priced here as `PriceTable.cost` prices whole, uncached token counts, to the bit;
//! the others are left to the pricer. Any other batch returns `None` at the first span that is not usual,
//! having changed only what `stamp` fills in the spans before it (`ended_at`, exactly as the Python `stamp`
//! fills it) and their prices (as the pricer sets them), so the Python code then decides the same, error
//! message included.

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyList, PyString};
use rustc_hash::FxHashMap;

use crate::msgpack::Value;
use crate::slots::at;
use crate::span_check::{canonical, format, stamped};

/// The caps of `core.limits`, in characters (code points, as Python's `len`).
#[derive(FromPyObject)]
pub struct TextCaps {
    pub(crate) label: usize,
    pub(crate) name: usize,
    pub(crate) id: usize,
    pub(crate) error: usize,
    pub(crate) attributes: usize,
    pub(crate) attribute_key: usize,
    pub(crate) attribute_value: usize,
    pub(crate) attributes_chars: usize,
}

/// Whether `obj` is an exact `str` of at most `cap` characters; `None` when the Python code should look.
fn within(obj: Borrowed<'_, '_, PyAny>, cap: usize) -> Option<()> {
    (crate::slots::chars(obj)? <= cap).then_some(())
}

/// Whether a span (its `fields`) is within every cap (`text_limit_error` returns None) and, when `cache_keys`
/// are given (it is to be priced), carries none of them as an attribute; `None` when the Python code should look.
fn usual_text(fields: &[Borrowed<'_, '_, PyAny>; 17], caps: &TextCaps, cache_keys: &[String]) -> Option<()> {
    for index in [at::MODEL, at::PROVIDER, at::CALLER] {
        within(fields[index], caps.label)?;
    }
    within(fields[at::TRACE_ID], caps.id)?;
    within(fields[at::SPAN_ID], caps.id)?;
    if !fields[at::PARENT_SPAN_ID].is_none() {
        within(fields[at::PARENT_SPAN_ID], caps.id)?;
    }
    within(fields[at::NAME], caps.name)?;
    if !fields[at::ERROR].is_none() {
        within(fields[at::ERROR], caps.error)?;
    }
    let attributes = fields[at::ATTRIBUTES];
    if !attributes.is_exact_instance_of::<PyDict>() {
        return None;
    }
    // SAFETY: an exact dict, with the GIL held.
    let len = usize::try_from(unsafe { ffi::PyDict_Size(attributes.as_ptr()) }).ok()?;
    if len > caps.attributes {
        return None;
    }
    let mut total = 0;
    let (mut pos, mut key, mut item): (ffi::Py_ssize_t, *mut ffi::PyObject, *mut ffi::PyObject) =
        (0, std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: iterating an exact dict with the GIL held, running no Python code meanwhile, so it cannot change;
    // the key and value are borrowed from it.
    while unsafe { ffi::PyDict_Next(attributes.as_ptr(), &mut pos, &mut key, &mut item) } != 0 {
        // SAFETY: valid objects the dict keeps alive (see above).
        let (key, item) =
            unsafe { (Borrowed::from_ptr(attributes.py(), key), Borrowed::from_ptr(attributes.py(), item)) };
        let length = crate::slots::chars(key)?;
        if length > caps.attribute_key {
            return None;
        }
        total += length;
        if item.is_exact_instance_of::<PyString>() {
            let length = crate::slots::chars(item)?;
            if length > caps.attribute_value {
                return None;
            }
            total += length;
        }
        for cached in cache_keys {
            if length == cached.len() && crate::slots::text(key)? == cached {
                return None;
            }
        }
    }
    (total <= caps.attributes_chars).then_some(())
}

/// A token count as `int(span.x or 0)` reads it (`Span.__post_init__` made it a whole int or `None`).
pub(crate) fn count(value: Value<'_>) -> Option<i64> {
    match value {
        Value::Nil => Some(0),
        Value::Int(count) if (0..=1 << 53).contains(&count) => Some(count),
        _ => None,
    }
}

/// One region's linear rates: `(per_call, input, output, cache_read, cache_write)` (`Rates`' fields).
type Linear = (f64, f64, f64, f64, f64);

/// A model's rates as `rates` holds them: linear, or tiered by input tokens (`(starts, regions)`: region `i`
/// prices calls whose prompt tokens lie in `(starts[i-1], starts[i]]`, as `_Tiered` picks it with
/// `bisect_left`).
pub(crate) enum Entry {
    Linear(Linear),
    Tiered(Vec<i64>, Vec<Linear>),
}

/// The entries of `rates` (`{model: {provider or None: rates or None}}`) a batch has looked up so far, by model
/// and provider (`""`: looked up as None, as `provider or None` does); `None`: none there (the pricer prices).
#[derive(Default)]
pub(crate) struct Prices {
    seen: FxHashMap<String, FxHashMap<String, Option<Entry>>>,
}

impl Prices {
    pub(crate) fn entry(&mut self, rates: &Bound<'_, PyDict>, model: &str, provider: &str) -> Option<&Entry> {
        let known = self.seen.get(model).is_some_and(|by_provider| by_provider.contains_key(provider));
        if !known {
            let found = Self::look_up(rates, model, provider);
            self.seen.entry(model.to_owned()).or_default().insert(provider.to_owned(), found);
        }
        self.seen.get(model)?.get(provider)?.as_ref()
    }

    fn look_up(rates: &Bound<'_, PyDict>, model: &str, provider: &str) -> Option<Entry> {
        let by_provider = rates.get_item(model).ok()??;
        let by_provider = by_provider.cast::<PyDict>().ok()?;
        let entry =
            if provider.is_empty() { by_provider.get_item(rates.py().None()) } else { by_provider.get_item(provider) };
        let entry = entry.ok()??;
        if entry.is_none() {
            return None;
        }
        if let Ok(linear) = entry.extract::<Linear>() {
            return Some(Entry::Linear(linear));
        }
        let (starts, regions): (Vec<i64>, Vec<Linear>) = entry.extract().ok()?;
        Some(Entry::Tiered(starts, regions))
    }
}

/// A span's price from its model's rates (`entry`), as `PriceTable.cost` computes it for uncached tokens:
/// `round(per_call + prompt * input + comp * output)` to `1 / scale` USD; `None` when it is out of range.
pub(crate) fn table_price(entry: &Entry, prompt: i64, comp: i64, scale: f64) -> Option<f64> {
    let (per_call, input, output, _, _) = match entry {
        Entry::Linear(linear) => *linear,
        Entry::Tiered(starts, regions) => *regions.get(starts.partition_point(|start| *start < prompt))?,
    };
    let usd = per_call + prompt as f64 * input + comp as f64 * output;
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
    cache_keys: Vec<String>,
) -> Option<(Vec<i64>, Vec<usize>)> {
    let spans = spans.cast::<PyList>().ok()?;
    let layout = crate::slots::span_layout(py)?;
    let mut starts = Vec::with_capacity(spans.len());
    let mut pricing = Vec::new();
    let mut prices = Prices::default();
    for (index, span) in spans.iter().enumerate() {
        let fields = layout.read(&span)?;
        let field = |index: usize| crate::slots::value(fields[index]);
        let (prompt, comp) = (field(at::PROMPT_TOKENS)?, field(at::COMP_TOKENS)?);
        let price = rates.is_some()
            && matches!(field(at::COST_USD)?, Value::Nil)
            && !(matches!(prompt, Value::Nil) && matches!(comp, Value::Nil));
        usual_text(&fields, &caps, if price { &cache_keys } else { &[] })?;
        let (start, filled) = stamped(field(at::STARTED_AT)?, field(at::ENDED_AT)?, field(at::LATENCY_MS)?)?;
        let ended = match filled {
            Some(ended) => ended,
            None => canonical(field(at::ENDED_AT)?.text()?)?,
        };
        if start < oldest_ms || start > latest_ms || ended > latest_ms {
            return None;
        }
        let usd = match (price, rates) {
            (true, Some(rates)) => {
                let (model, provider) = (field(at::MODEL)?.text()?, field(at::PROVIDER)?.text()?);
                let entry = prices.entry(rates, model, provider);
                Some(entry.and_then(|entry| table_price(entry, count(prompt)?, count(comp)?, scale)))
            }
            _ => None,
        };
        if let Some(ended) = filled {
            span.setattr(intern!(py, "ended_at"), format(ended)).ok()?;
        }
        starts.push(start);
        match usd {
            Some(Some(usd)) => span.setattr(intern!(py, "cost_usd"), PyFloat::new(py, usd)).ok()?,
            Some(None) => pricing.push(index),
            None => {}
        }
    }
    Some((starts, pricing))
}
