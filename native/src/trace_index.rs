//! The commands of the Redis view's trace index: `trace_index_commands` in
//! tokentrace/api/stores/redis_view.py, whose Python code stays the reference.
//!
//! The input is a list of `(span, start ms)` pairs, whose spans arrive already encoded (msgspec's
//! `encode_lines`, one JSON span per line), and of compiled batches (`wire::WireBatch`, which carry their
//! own JSON): this groups the spans by trace in order of first appearance, keeps each trace's earliest start,
//! and writes the `APPEND` commands, then the listing's `ZADD`s in order of start, in the Redis protocol,
//! byte for byte as the Python code does.
//! Any input it does not expect (an item of another kind, ids that are not plain `str`, a line count that
//! does not match the pairs) returns `None` and the Python code runs.

use rustc_hash::FxHashMap;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyList, PyString, PyTuple};

use crate::wire::WireBatch;

/// One item of a payload: a trace and a run of its spans' JSON lines.
type Item<'t, 'a> = (&'t Trace<'a>, &'t [&'a [u8]]);

/// Commands and how many replies they get.
type Pipeline<'py> = (Bound<'py, PyBytes>, usize);

/// An item of the input: a `(span, start ms)` pair's ids and start, or a batch of spans.
enum Source<'py> {
    Pair(Bound<'py, PyString>, i64),
    Batch(Bound<'py, WireBatch>),
}

struct Trace<'a> {
    id: &'a str,
    start: i64,
    /// JSON spans in arrival order.
    spans: Vec<&'a [u8]>,
}

/// A command's header: the array of `args` bulk strings that follows.
fn command_header(out: &mut Vec<u8>, args: usize) {
    out.push(b'*');
    out.extend_from_slice(itoa::Buffer::new().format(args).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// One argument of a command: a bulk string made of `parts`.
fn bulk(out: &mut Vec<u8>, parts: &[&[u8]]) {
    out.push(b'$');
    out.extend_from_slice(itoa::Buffer::new().format(parts.iter().map(|p| p.len()).sum::<usize>()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for part in parts {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"\r\n");
}

/// The `trace_index_commands` pipelines for `spans` (a list of `(span, start ms)`) whose JSON encodings are
/// `lines` (msgspec's `encode_lines` of the spans): `(commands, replies)` pairs, or `None` to let the Python
/// code do it.
#[pyfunction]
pub fn trace_index_commands<'py>(
    py: Python<'py>,
    spans: &Bound<'py, PyAny>,
    lines: &Bound<'py, PyBytes>,
    trace_prefix: &[u8],
    listing: &[u8],
    per_call: usize,
    per_trace: usize,
) -> PyResult<Option<Vec<Pipeline<'py>>>> {
    let Ok(spans) = spans.cast::<PyList>() else {
        return Ok(None);
    };
    if per_call == 0 || per_trace == 0 {
        return Ok(None);
    }
    let lines = lines.as_bytes();
    let mut json: Vec<&[u8]> = Vec::with_capacity(spans.len());
    let mut from = 0;
    for end in memchr::memchr_iter(b'\n', lines) {
        json.push(&lines[from..end]);
        from = end + 1;
    }
    if from != lines.len() {
        return Ok(None);
    }
    // The id objects and batches stay referenced here while their text is borrowed below.
    let mut sources: Vec<Source<'py>> = Vec::with_capacity(spans.len());
    let mut pairs = 0;
    for item in spans.iter() {
        if let Ok(batch) = item.cast::<WireBatch>() {
            sources.push(Source::Batch(batch.clone()));
            continue;
        }
        let Ok(pair) = item.cast_into::<PyTuple>() else {
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
        if !trace_id.is_exact_instance_of::<PyString>() {
            return Ok(None);
        }
        sources.push(Source::Pair(trace_id.cast_into::<PyString>()?, at));
        pairs += 1;
    }
    if json.len() != pairs {
        return Ok(None);
    }
    let mut json = json.into_iter();
    let mut records: Vec<(&str, i64, &[u8])> = Vec::with_capacity(spans.len());
    for source in &sources {
        match source {
            Source::Pair(trace_id, at) => {
                let (Ok(trace_id), Some(line)) = (trace_id.to_str(), json.next()) else {
                    return Ok(None);
                };
                records.push((trace_id, *at, line));
            }
            Source::Batch(batch) => {
                let batch = batch.get();
                for span in &batch.spans {
                    records.push((batch.text(span.trace_id), span.start, batch.line(span)));
                }
            }
        }
    }
    let mut traces: Vec<Trace<'_>> = Vec::new();
    let mut index: FxHashMap<&str, usize> = FxHashMap::default();
    for &(trace_id, at, line) in &records {
        let slot = *index.entry(trace_id).or_insert_with(|| {
            traces.push(Trace { id: trace_id, start: at, spans: Vec::new() });
            traces.len() - 1
        });
        let trace = &mut traces[slot];
        trace.start = trace.start.min(at);
        trace.spans.push(line);
    }
    let items: Vec<Item<'_, '_>> =
        traces.iter().flat_map(|trace| trace.spans.chunks(per_trace).map(move |chunk| (trace, chunk))).collect();
    let mut pipelines = Vec::with_capacity(items.len().div_ceil(per_call) + traces.len().div_ceil(per_call));
    // One buffer for every pipeline, copied into each one's bytes: its pages are touched once per call, not
    // once per pipeline.
    let mut out = Vec::new();
    for call in items.chunks(per_call) {
        let size: usize =
            call.iter().map(|(t, s)| s.iter().map(|l| l.len() + 1).sum::<usize>() + t.id.len() + 48).sum();
        out.clear();
        out.reserve(size + trace_prefix.len() * call.len());
        for (trace, spans) in call {
            command_header(&mut out, 3);
            bulk(&mut out, &[b"APPEND"]);
            bulk(&mut out, &[trace_prefix, trace.id.as_bytes()]);
            let size: usize = spans.iter().map(|line| line.len() + 1).sum();
            out.push(b'$');
            out.extend_from_slice(itoa::Buffer::new().format(size).as_bytes());
            out.extend_from_slice(b"\r\n");
            for line in *spans {
                out.extend_from_slice(line);
                out.push(b'\n');
            }
            out.extend_from_slice(b"\r\n");
        }
        pipelines.push((PyBytes::new(py, &out), call.len()));
    }
    // The listing after every APPEND, in order of start then id (as Python sorts `(start, id)` tuples: Rust
    // compares `str` by UTF-8 bytes, which is code point order).
    let mut listed: Vec<&Trace<'_>> = traces.iter().collect();
    listed.sort_unstable_by(|a, b| (a.start, a.id).cmp(&(b.start, b.id)));
    for call in listed.chunks(per_call) {
        let size: usize = call.iter().map(|t| t.id.len() + 48).sum();
        out.clear();
        out.reserve(size + listing.len() + 32);
        command_header(&mut out, 3 + 2 * call.len());
        bulk(&mut out, &[b"ZADD"]);
        bulk(&mut out, &[listing]);
        bulk(&mut out, &[b"LT"]);
        for trace in call {
            bulk(&mut out, &[itoa::Buffer::new().format(trace.start).as_bytes()]);
            bulk(&mut out, &[trace.id.as_bytes()]);
        }
        pipelines.push((PyBytes::new(py, &out), 1));
    }
    Ok(Some(pipelines))
}
