//! Lists of counts the cycle collector need not walk: `untracked_zeros` and `untrack_state`.
//!
//! Every `Aggregate` holds two lists of ints (its histogram buckets), and a list is a container the
//! collector tracks from birth. A list of ints can never be part of a reference cycle, yet each full
//! collection walks every one of them, holding the GIL (and so the event loop): ~7x as long as with
//! them untracked, for a server's 300k spans over 30 days (bench/gc_pause.py, bench/RESULTS.md). Untracking them
//! (`PyObject_GC_UnTrack`, the stable C API's own call, idempotent) changes nothing else: the list is freed
//! by its reference count as before, and it stays untracked since nothing but ints is ever stored in it. The
//! Python twin is the plain `[0] * n` the collector tracks (`tokentrace/core/aggregate.py`): the same values,
//! walked for nothing.

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// Stop the collector tracking `list` (which holds only ints, or objects that cannot be part of a cycle).
pub(crate) fn untrack(list: &Bound<'_, PyList>) {
    // SAFETY: `list` is a live list object and the GIL is held; untracking an untracked object is a no-op.
    unsafe { ffi::PyObject_GC_UnTrack(list.as_ptr().cast()) }
}

/// A list of `counts`, untracked by the cycle collector.
pub fn untracked_list<'py>(py: Python<'py>, counts: &[i64]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::new(py, counts)?;
    untrack(&list);
    Ok(list)
}

/// `[0] * n`, untracked by the cycle collector.
#[pyfunction]
pub fn untracked_zeros(py: Python<'_>, n: usize) -> PyResult<Bound<'_, PyList>> {
    untracked_list(py, &vec![0; n])
}

/// Untrack the two bucket lists of `aggregate` (an `Aggregate`).
fn untrack_aggregate(aggregate: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = aggregate.py();
    for name in [intern!(py, "latency_buckets"), intern!(py, "prompt_buckets")] {
        if let Ok(list) = aggregate.getattr(name)?.cast_into::<PyList>() {
            untrack(&list);
        }
    }
    Ok(())
}

/// Untrack the bucket lists of every aggregate of a `BucketState` (its series and attribute groups), as
/// decoding builds them tracked; the number of aggregates seen.
#[pyfunction]
pub fn untrack_state(state: &Bound<'_, PyAny>) -> PyResult<usize> {
    let py = state.py();
    let mut seen = 0;
    let series = state.getattr(intern!(py, "series"))?;
    for aggregate in series.cast::<PyDict>()?.values() {
        untrack_aggregate(&aggregate)?;
        seen += 1;
    }
    let attributes = state.getattr(intern!(py, "attributes"))?;
    for values in attributes.cast::<PyDict>()?.values() {
        for by_series in values.cast::<PyDict>()?.values() {
            for aggregate in by_series.cast::<PyDict>()?.values() {
                untrack_aggregate(&aggregate)?;
                seen += 1;
            }
        }
    }
    Ok(seen)
}
