//! `TraceIndex.add_batch` (tokentrace/core/traces.py) for a compiled batch: each trace of the batch, in order of
//! first appearance, found in the index (or made by `Trace(trace_id)` and put at its end), takes its spans in
//! order and its totals (`Trace.add` for each span: earliest start, latest end, cost in nanos, priced spans,
//! tokens, worst status), as the Python loop over `WireBatch.traces()` does. Evictions stay with the caller.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use rustc_hash::FxHashMap;

use crate::wire::WireBatch;

/// `Trace.add`'s rank of a status (`ok` 0, `timeout` 1, `error` 2) from the batch's code (`ok` 0, `error` 1,
/// `timeout` 2); `None` for text that is no status.
fn rank(status: &str) -> Option<u8> {
    match status {
        "ok" => Some(0),
        "timeout" => Some(1),
        "error" => Some(2),
        _ => None,
    }
}

const STATUS: [&str; 3] = ["ok", "timeout", "error"];

/// `target.name += delta` in Python ints (nothing for 0).
fn add_int(target: &Bound<'_, PyAny>, name: &Bound<'_, PyString>, delta: i128) -> PyResult<()> {
    if delta == 0 {
        return Ok(());
    }
    let current = target.getattr(name)?;
    target.setattr(name, current.add(delta)?)
}

/// Add the spans of `batch` (`spans`: the same spans as objects, in order) to the index `table` (an ordered
/// dict by trace id; `make` makes a trace for an id).
#[pyfunction]
pub fn add_to_traces(
    py: Python<'_>,
    table: &Bound<'_, PyAny>,
    make: &Bound<'_, PyAny>,
    spans: &Bound<'_, PyList>,
    batch: &Bound<'_, WireBatch>,
) -> PyResult<()> {
    let batch = batch.get();
    if spans.len() != batch.spans.len() {
        return Err(pyo3::exceptions::PyValueError::new_err("the spans are not the batch's"));
    }
    // (id, members, start, end, cost, priced, tokens, rank) per trace, in order of first appearance.
    type Group<'a> = (&'a str, Vec<usize>, i64, i64, i128, i128, i128, u8);
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut index: FxHashMap<&str, usize> = FxHashMap::default();
    for (at, span) in batch.spans.iter().enumerate() {
        let id = batch.text(span.trace_id);
        let slot = *index.entry(id).or_insert_with(|| {
            groups.push((id, Vec::new(), i64::MAX, 0, 0, 0, 0, 0));
            groups.len() - 1
        });
        let group = &mut groups[slot];
        group.1.push(at);
        group.2 = group.2.min(span.start);
        group.3 = group.3.max(span.end);
        if let Some(cost) = span.cost_nanos {
            group.4 += cost;
            group.5 += 1;
        }
        group.6 += i128::from(span.total);
        group.7 = group.7.max([0, 2, 1][usize::from(span.status)]);
    }
    let lookup = table.cast::<PyDict>()?; // an OrderedDict: read as a dict, written through its own __setitem__
    for (id, members, start, end, cost, priced, tokens, worst) in groups {
        let key = PyString::new(py, id);
        let trace = match lookup.get_item(&key)? {
            Some(trace) => trace,
            None => {
                let trace = make.call1((&key,))?;
                table.set_item(&key, &trace)?;
                trace
            }
        };
        let list = trace.getattr(intern!(py, "spans"))?;
        let list = list.cast::<PyList>()?;
        for at in members {
            list.append(spans.get_item(at)?)?;
        }
        let started = intern!(py, "started_ms");
        if start < trace.getattr(started)?.extract::<i64>()? {
            trace.setattr(started, start)?;
        }
        let ended = intern!(py, "ended_ms");
        if end > trace.getattr(ended)?.extract::<i64>()? {
            trace.setattr(ended, end)?;
        }
        add_int(&trace, intern!(py, "cost_nanos"), cost)?;
        add_int(&trace, intern!(py, "priced"), priced)?;
        add_int(&trace, intern!(py, "total_tokens"), tokens)?;
        let status = intern!(py, "status");
        let current = trace.getattr(status)?;
        let current = rank(current.cast::<PyString>()?.to_str()?).unwrap_or(0);
        if worst > current {
            trace.setattr(status, STATUS[usize::from(worst)])?;
        }
    }
    Ok(())
}
