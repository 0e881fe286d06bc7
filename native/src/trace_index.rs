//! The payloads of the Redis view's trace index script: `trace_index_payloads` in
//! tokentrace/api/stores/redis_view.py, whose Python code stays the reference.
//!
//! The spans arrive already encoded (msgspec's `encode_lines`, one JSON span per line): this groups them by
//! trace in order of first appearance, keeps each trace's earliest start, and writes the MessagePack arrays
//! the script unpacks, byte for byte as msgspec encodes the Python lists. Any input it does not expect
//! (not a list of `(span, int)` pairs, ids that are not plain `str`, a line count that does not match)
//! returns `None` and the Python code runs.

use std::collections::HashMap;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyList, PyString, PyTuple};

/// One item of a payload: a trace and a run of its spans.
type Item<'t, 'a> = (&'t Trace<'a>, &'t [(&'a str, &'a [u8])]);

struct Trace<'a> {
    id: &'a str,
    start: i64,
    /// (span id, JSON span) in arrival order.
    spans: Vec<(&'a str, &'a [u8])>,
}

/// msgspec's header for a `str` of `len` bytes.
fn str_header(out: &mut Vec<u8>, len: usize) {
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if len < 256 {
        out.extend_from_slice(&[0xd9, len as u8]);
    } else if len < 65_536 {
        out.push(0xda);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

/// msgspec's header for a `list` of `len` items.
fn array_header(out: &mut Vec<u8>, len: usize) {
    if len < 16 {
        out.push(0x90 | len as u8);
    } else if len < 65_536 {
        out.push(0xdc);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0xdd);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

fn write_str(out: &mut Vec<u8>, bytes: &[u8]) {
    str_header(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// One item: `[trace id, start ms as text, [span id, JSON span, ...]]`.
fn write_item(out: &mut Vec<u8>, trace: &Trace<'_>, spans: &[(&str, &[u8])]) {
    array_header(out, 3);
    write_str(out, trace.id.as_bytes());
    write_str(out, trace.start.to_string().as_bytes());
    array_header(out, 2 * spans.len());
    for (span_id, line) in spans {
        write_str(out, span_id.as_bytes());
        write_str(out, line);
    }
}

/// The `INDEX_TRACES` payloads for `spans` (a list of `(span, start ms)`) whose JSON encodings are `lines`
/// (msgspec's `encode_lines` of the spans), or `None` to let the Python code do it.
#[pyfunction]
pub fn trace_index_payloads<'py>(
    py: Python<'py>,
    spans: &Bound<'py, PyAny>,
    lines: &Bound<'py, PyBytes>,
    per_call: usize,
    per_trace: usize,
) -> PyResult<Option<Vec<Bound<'py, PyBytes>>>> {
    let Ok(spans) = spans.cast::<PyList>() else {
        return Ok(None);
    };
    if per_call == 0 || per_trace == 0 {
        return Ok(None);
    }
    let mut json: Vec<&[u8]> = lines.as_bytes().split(|&b| b == b'\n').collect();
    if json.pop() != Some(&b""[..]) || json.len() != spans.len() {
        return Ok(None);
    }
    // The id objects stay referenced here while their text is borrowed below.
    let mut ids: Vec<(Bound<'py, PyString>, Bound<'py, PyString>, i64)> = Vec::with_capacity(spans.len());
    for pair in spans.iter() {
        let Ok(pair) = pair.cast_into::<PyTuple>() else {
            return Ok(None);
        };
        if pair.len() != 2 {
            return Ok(None);
        }
        let at = pair.get_item(1)?;
        if !at.is_exact_instance_of::<PyInt>() {
            return Ok(None);
        }
        let Ok(at) = at.extract::<i64>() else {
            return Ok(None);
        };
        let span = pair.get_item(0)?;
        let trace_id = span.getattr(intern!(py, "trace_id"))?;
        let span_id = span.getattr(intern!(py, "span_id"))?;
        if !trace_id.is_exact_instance_of::<PyString>() || !span_id.is_exact_instance_of::<PyString>() {
            return Ok(None);
        }
        ids.push((trace_id.cast_into::<PyString>()?, span_id.cast_into::<PyString>()?, at));
    }
    let mut traces: Vec<Trace<'_>> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for ((trace_id, span_id, at), line) in ids.iter().zip(json) {
        let (Ok(trace_id), Ok(span_id)) = (trace_id.to_str(), span_id.to_str()) else {
            return Ok(None);
        };
        let slot = *index.entry(trace_id).or_insert_with(|| {
            traces.push(Trace { id: trace_id, start: *at, spans: Vec::new() });
            traces.len() - 1
        });
        let trace = &mut traces[slot];
        trace.start = trace.start.min(*at);
        trace.spans.push((span_id, line));
    }
    let items: Vec<Item<'_, '_>> =
        traces.iter().flat_map(|trace| trace.spans.chunks(per_trace).map(move |chunk| (trace, chunk))).collect();
    let mut payloads = Vec::with_capacity(items.len().div_ceil(per_call));
    for call in items.chunks(per_call) {
        let mut out = Vec::with_capacity(
            call.iter().map(|(_, s)| s.iter().map(|(i, l)| i.len() + l.len() + 10).sum::<usize>() + 64).sum(),
        );
        array_header(&mut out, call.len());
        for (trace, spans) in call {
            write_item(&mut out, trace, spans);
        }
        payloads.push(PyBytes::new(py, &out));
    }
    Ok(Some(payloads))
}
