//! `TraceIndex.add_batch` (tokentrace/core/traces.py) for a compiled batch: each trace of the batch, in order of
//! first appearance, found in the index (or made by `Trace(trace_id)` and put at its end), takes its spans in
//! order and its totals (`Trace.add` for each span: earliest start, latest end, cost in nanos, priced spans,
//! tokens, worst status), as the Python loop over `WireBatch.traces()` does. Evictions stay with the caller.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use rustc_hash::FxHashMap;

use crate::aggregate::int_object;
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

/// `StoredTrace.__struct_fields__`, in the order a new trace is made with (`make(*fields)`).
const TRACE_FIELDS: [&str; 8] =
    ["trace_id", "spans", "started_ms", "ended_ms", "cost_nanos", "priced", "total_tokens", "status"];

/// `target.name += delta` in Python ints (nothing for 0).
fn add_int(target: &Bound<'_, PyAny>, name: &Bound<'_, PyString>, delta: i128) -> PyResult<()> {
    if delta == 0 {
        return Ok(());
    }
    let current = target.getattr(name)?;
    target.setattr(name, current.add(int_object(target.py(), delta)?)?)
}

/// Add the spans of `batch` (`spans`: the same spans as objects, in order) to the index `table` (an ordered
/// dict by trace id; `make` makes a trace from its fields, `TRACE_FIELDS`: a new trace is made whole, its span
/// list untracked by the cycle collector as `StoredTrace`'s own default is).
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
    let fields: Vec<String> = make.getattr(intern!(py, "__struct_fields__"))?.extract()?;
    if fields != TRACE_FIELDS {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "{make}: fields {fields:?}, add_to_traces makes {TRACE_FIELDS:?}"
        )));
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
        let Some(trace) = lookup.get_item(&key)? else {
            let list = PyList::new(py, members.iter().map(|&at| spans.get_item(at)).collect::<PyResult<Vec<_>>>()?)?;
            crate::untrack::untrack(&list);
            let fields = (
                &key,
                list,
                start,
                end,
                int_object(py, cost)?,
                int_object(py, priced)?,
                int_object(py, tokens)?,
                STATUS[usize::from(worst)],
            );
            table.set_item(&key, make.call1(fields)?)?;
            continue;
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
