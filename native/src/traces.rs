//! `TraceIndex.add_batch` (tokentrace/core/traces.py) for a compiled batch: each trace of the batch, in order of
//! first appearance, found in the index (or made by `IndexedTrace(trace_id)` and put at its end), takes its spans
//! in order, each as its own MessagePack (a slice of the batch's message), its totals (`IndexedTrace.add` for
//! each span: earliest start, latest end, cost in nanos, priced spans, tokens, worst status) and its name (its
//! first root span's), as `IndexedTrace.add` does span by span. The new traces are returned for the caller's
//! eviction queue; evictions stay with the caller.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::aggregate::int_object;
use crate::msgpack::{Reader, Value};
use crate::wire::{read_span, WireBatch};

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

/// `IndexedTrace.__struct_fields__`, in the order a new trace is made with (`make(*fields)`).
const TRACE_FIELDS: [&str; 10] =
    ["trace_id", "spans", "started_ms", "ended_ms", "cost_nanos", "priced", "total_tokens", "status", "name", "rooted"];

/// `target.name += delta` in Python ints (nothing for 0).
fn add_int(target: &Bound<'_, PyAny>, name: &Bound<'_, PyString>, delta: i128) -> PyResult<()> {
    if delta == 0 {
        return Ok(());
    }
    let current = target.getattr(name)?;
    target.setattr(name, current.add(int_object(target.py(), delta)?)?)
}

/// A batch's traces, in order of first appearance: (id, spans, start, end, cost, priced, tokens, rank) each, and
/// each span's trace (its place in the list).
type Group<'a> = (&'a str, usize, i64, i64, i128, i128, i128, u8);

fn trace_groups(batch: &WireBatch) -> (Vec<Group<'_>>, Vec<usize>) {
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut index: FxHashMap<&str, usize> = FxHashMap::default();
    let mut slots: Vec<usize> = Vec::with_capacity(batch.spans.len());
    for span in &batch.spans {
        let id = batch.text(span.trace_id);
        let slot = *index.entry(id).or_insert_with(|| {
            groups.push((id, 0, i64::MAX, 0, 0, 0, 0, 0));
            groups.len() - 1
        });
        slots.push(slot);
        let group = &mut groups[slot];
        group.1 += 1;
        group.2 = group.2.min(span.start);
        group.3 = group.3.max(span.end);
        if let Some(cost) = span.cost_nanos {
            group.4 += cost;
            group.5 += 1;
        }
        group.6 += i128::from(span.total);
        group.7 = group.7.max([0, 2, 1][usize::from(span.status)]);
    }
    (groups, slots)
}

/// Whether the index leaves out a trace of the batch: one it does not hold whose spans here all ended before
/// `horizon` (`TraceIndex.expire`'s test: its latest end, or its start, before it).
fn left_out(table: &Bound<'_, PyDict>, group: &Group<'_>, horizon: Option<i64>) -> PyResult<bool> {
    match horizon {
        Some(horizon) if group.3.max(group.2) < horizon => Ok(!table.contains(group.0)?),
        _ => Ok(false),
    }
}

/// How many spans of `batch` `add_to_traces` adds to `table` at `horizon` (`TraceIndex.add_batch`).
#[pyfunction]
pub fn traces_take(table: &Bound<'_, PyDict>, batch: &Bound<'_, WireBatch>, horizon: Option<i64>) -> PyResult<usize> {
    let batch = batch.get();
    if horizon.is_none_or(|horizon| batch.spans.iter().all(|span| span.end.max(span.start) >= horizon)) {
        return Ok(batch.spans.len());
    }
    let mut taken = 0;
    for group in &trace_groups(batch).0 {
        if !left_out(table, group, horizon)? {
            taken += group.1;
        }
    }
    Ok(taken)
}

/// Add the spans of `batch` (read from or written to the message `payload`) to the index `table` (a dict by trace
/// id; `make` makes a trace from its fields, `TRACE_FIELDS`: a new trace is made whole, its span list untracked by
/// the cycle collector as `IndexedTrace`'s own default is), but for the traces it leaves out at `horizon`
/// (`left_out`: a back-fill's traces older than the trace retention). Returns the new traces, in the order they
/// were made (the caller queues them for eviction).
#[pyfunction]
pub fn add_to_traces<'py>(
    py: Python<'py>,
    table: &Bound<'py, PyDict>,
    make: &Bound<'py, PyAny>,
    payload: &Bound<'py, PyBytes>,
    batch: &Bound<'py, WireBatch>,
    horizon: Option<i64>,
) -> PyResult<Bound<'py, PyList>> {
    let batch = batch.get();
    let payload = payload.as_bytes();
    if batch.spans.iter().any(|span| span.encoded.0 >= span.encoded.1 || span.encoded.1 > payload.len()) {
        return Err(pyo3::exceptions::PyValueError::new_err("the payload is not the batch's"));
    }
    let encoded = |at: usize| {
        let (from, to) = batch.spans[at].encoded;
        PyBytes::new(py, &payload[from..to])
    };
    let fields: Vec<String> = make.getattr(intern!(py, "__struct_fields__"))?.extract()?;
    if fields != TRACE_FIELDS {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "{make}: fields {fields:?}, add_to_traces makes {TRACE_FIELDS:?}"
        )));
    }
    // Each trace's spans are listed together in `members` (in order), from `offsets[trace]` on: two allocations a
    // batch, not one a trace (a back-fill's spans are a trace each).
    let (groups, slots) = trace_groups(batch);
    let mut offsets: Vec<usize> = Vec::with_capacity(groups.len() + 1);
    let mut next = 0;
    for group in &groups {
        offsets.push(next);
        next += group.1;
    }
    offsets.push(next);
    let mut members = vec![0; batch.spans.len()];
    let mut filled = offsets.clone();
    for (at, &slot) in slots.iter().enumerate() {
        members[filled[slot]] = at;
        filled[slot] += 1;
    }
    let statuses = [intern!(py, "ok"), intern!(py, "timeout"), intern!(py, "error")];
    let mut names: FxHashMap<&str, Bound<'_, PyString>> = FxHashMap::default();
    let mut name_of = |at: usize| {
        let text = batch.text(batch.spans[at].name);
        names.entry(text).or_insert_with(|| PyString::new(py, text)).clone()
    };
    let made = PyList::empty(py);
    for (slot, group) in groups.iter().enumerate() {
        if left_out(table, group, horizon)? {
            continue;
        }
        let &(id, _, start, end, cost, priced, tokens, worst) = group;
        let members = &members[offsets[slot]..offsets[slot + 1]];
        let key = PyString::new(py, id);
        let root = members.iter().copied().find(|&at| batch.spans[at].root);
        let Some(trace) = table.get_item(&key)? else {
            let list = PyList::new(py, members.iter().map(|&at| encoded(at)))?;
            crate::untrack::untrack(&list);
            let name = name_of(root.unwrap_or(members[0]));
            let fields = (
                &key,
                list,
                start,
                end,
                int_object(py, cost)?,
                int_object(py, priced)?,
                int_object(py, tokens)?,
                statuses[usize::from(worst)],
                name,
                root.is_some(),
            );
            let trace = make.call1(fields)?;
            table.set_item(&key, &trace)?;
            made.append(trace)?;
            continue;
        };
        let list = trace.getattr(intern!(py, "spans"))?;
        let list = list.cast::<PyList>()?;
        for &at in members {
            list.append(encoded(at))?;
        }
        if let Some(root) = root {
            let rooted = intern!(py, "rooted");
            if !trace.getattr(rooted)?.is_truthy()? {
                trace.setattr(intern!(py, "name"), name_of(root))?;
                trace.setattr(rooted, true)?;
            }
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
            trace.setattr(status, statuses[usize::from(worst)])?;
        }
    }
    Ok(made)
}

/// A kept span's attribute as `TraceFilter` compares it (`_text`: a bool `true`/`false`, an int in decimal, a
/// string itself) is `want`; `None` for a float (Python's `str` of it decides).
fn attribute_is(value: Value<'_>, want: &str) -> Option<bool> {
    let mut digits = itoa::Buffer::new();
    Some(match value {
        Value::Str(text) => text == want,
        Value::Bool(flag) => want == if flag { "true" } else { "false" },
        Value::Int(int) => digits.format(int) == want,
        Value::Big(int) => digits.format(int) == want,
        Value::Float(_) | Value::Nil => return None,
    })
}

/// `TraceIndex._oldest`: how many of the oldest traces of `order` (`IndexedTrace`s, oldest first) hold `excess`
/// spans, and their spans, `(traces, spans)`; `None` when one of them is a trace of `batch` (it would come back
/// holding only the batch's spans) or all of them hold fewer.
#[pyfunction]
pub fn oldest_traces(
    order: &Bound<'_, PyAny>,
    excess: usize,
    batch: &Bound<'_, WireBatch>,
) -> PyResult<Option<(usize, usize)>> {
    let py = order.py();
    let batch = batch.get();
    let added: FxHashSet<&str> = batch.spans.iter().map(|span| batch.text(span.trace_id)).collect();
    let (mut traces, mut freed) = (0, 0);
    for trace in order.try_iter()? {
        let trace = trace?;
        if added.contains(trace.getattr(intern!(py, "trace_id"))?.cast::<PyString>()?.to_str()?) {
            return Ok(None);
        }
        traces += 1;
        freed += trace.getattr(intern!(py, "spans"))?.len()?;
        if freed >= excess {
            return Ok(Some((traces, freed)));
        }
    }
    Ok(None)
}

/// `IndexedTrace.matches`: whether one of `spans` (each its MessagePack) matches every filter given, as
/// `TraceFilter.matches_span` decides it; `None` when one is not such bytes or holds what the Python code
/// should compare (a float attribute filtered on, a field read_span leaves to msgspec).
#[pyfunction]
#[pyo3(signature = (spans, model, caller, status, attributes))]
pub fn match_spans(
    spans: &Bound<'_, PyList>,
    model: Option<&str>,
    caller: Option<&str>,
    status: Option<&str>,
    attributes: Vec<(String, String)>,
) -> Option<bool> {
    for kept in spans.iter() {
        let kept = kept.cast_into::<PyBytes>().ok()?;
        let bytes = kept.as_bytes();
        let mut reader = Reader { buf: bytes, pos: 0 };
        let fields = read_span(&mut reader)?;
        if reader.pos != bytes.len() {
            return None;
        }
        let span_model = fields.model?; // a span without one is not msgspec's
        if model.is_some_and(|model| span_model != model)
            || caller.is_some_and(|caller| fields.caller.unwrap_or("") != caller)
            || status.is_some_and(|status| fields.status.unwrap_or("ok") != status)
        {
            continue;
        }
        let mut all = true;
        for (name, want) in &attributes {
            match fields.attributes.iter().find(|(key, _)| key == name) {
                Some(&(_, value)) if attribute_is(value, want)? => {}
                _ => {
                    all = false;
                    break;
                }
            }
        }
        if all {
            return Some(true);
        }
    }
    Some(false)
}

/// A kept span's `started_at` read from its MessagePack (`""` when None); `None` when it is not there before a
/// container (the fields are written in `Span` order, `started_at` before `attributes`).
fn started_at(bytes: &[u8]) -> Option<&str> {
    let mut reader = Reader { buf: bytes, pos: 0 };
    for _ in 0..reader.map_len()? {
        let key = reader.str()?;
        let value = reader.value()?;
        if key == "started_at" {
            return match value {
                Value::Str(text) => Some(text),
                Value::Nil => Some(""),
                _ => None,
            };
        }
    }
    None
}

/// `TraceIndex.recent_spans`: of the spans of `lists` (each trace's kept spans, in index order: MessagePack, or a
/// span kept as it is), the `limit` with the latest `started_at` (None as `""`), latest first and, among equal
/// ones, in index order (Python's stable sort); `None` when one's `started_at` cannot be read here.
#[pyfunction]
pub fn newest_spans<'py>(lists: Vec<Bound<'py, PyList>>, limit: usize) -> Option<Vec<Bound<'py, PyAny>>> {
    let mut kept: Vec<Bound<'py, PyAny>> = Vec::new();
    let mut objects: Vec<Bound<'py, PyAny>> = Vec::new(); // the `started_at` of spans kept as objects
    for list in &lists {
        for item in list.iter() {
            if !item.is_instance_of::<PyBytes>() {
                objects.push(item.getattr(intern!(item.py(), "started_at")).ok()?);
            }
            kept.push(item);
        }
    }
    let mut order: Vec<(&str, usize)> = Vec::with_capacity(kept.len());
    let mut next_object = objects.iter();
    for (at, item) in kept.iter().enumerate() {
        let started = match item.cast::<PyBytes>() {
            Ok(bytes) => started_at(bytes.as_bytes())?,
            Err(_) => {
                let started = next_object.next()?;
                if started.is_none() {
                    ""
                } else {
                    started.cast::<PyString>().ok()?.to_str().ok()?
                }
            }
        };
        order.push((started, at));
    }
    let newest_first = |a: &(&str, usize), b: &(&str, usize)| b.0.cmp(a.0).then(a.1.cmp(&b.1));
    if limit < order.len() {
        order.select_nth_unstable_by(limit, newest_first); // the first `limit` are the newest, in no order
        order.truncate(limit);
    }
    order.sort_unstable_by(newest_first);
    Some(order.iter().map(|&(_, at)| kept[at].clone()).collect())
}
