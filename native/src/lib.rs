//! The compiled hot path of tokentrace's core, as the Python module `tokentrace._native`.
//!
//! Everything here has a Python twin in `tokentrace/core/` that stays the reference: each function
//! gives the same result, to the byte once encoded, or declines (returns `False` having changed
//! nothing) so the caller runs the Python code. The tests compare the two on generated input
//! (`tests/core/test_native.py`).

use pyo3::prelude::*;

mod aggregate;
mod bucket;
mod checksum;
mod frozen;
mod json_batch;
mod msgpack;
mod prepare;
mod route;
mod slots;
mod span_check;
mod trace_index;
mod traces;
mod untrack;
mod wire;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<aggregate::AggregateKernel>()?;
    m.add_class::<bucket::BucketKernel>()?;
    m.add_class::<frozen::Backlog>()?;
    m.add_function(wrap_pyfunction!(checksum::crc32, m)?)?;
    m.add_function(wrap_pyfunction!(slots::register_span, m)?)?;
    m.add_function(wrap_pyfunction!(slots::span_field, m)?)?;
    m.add_function(wrap_pyfunction!(span_check::check_span, m)?)?;
    m.add_function(wrap_pyfunction!(span_check::compiled_post_init, m)?)?;
    m.add_function(wrap_pyfunction!(span_check::canonical_ms, m)?)?;
    m.add_function(wrap_pyfunction!(span_check::stamp, m)?)?;
    m.add_function(wrap_pyfunction!(trace_index::trace_index_commands, m)?)?;
    m.add_function(wrap_pyfunction!(route::route_spans, m)?)?;
    m.add_function(wrap_pyfunction!(prepare::prepare_spans, m)?)?;
    m.add_function(wrap_pyfunction!(traces::add_to_traces, m)?)?;
    m.add_function(wrap_pyfunction!(traces::traces_take, m)?)?;
    m.add_function(wrap_pyfunction!(traces::match_spans, m)?)?;
    m.add_function(wrap_pyfunction!(traces::oldest_traces, m)?)?;
    m.add_function(wrap_pyfunction!(traces::newest_spans, m)?)?;
    m.add_function(wrap_pyfunction!(untrack::untracked_zeros, m)?)?;
    m.add_function(wrap_pyfunction!(untrack::untrack_state, m)?)?;
    m.add_class::<wire::WireBatch>()?;
    m.add_function(wrap_pyfunction!(wire::decode_batch, m)?)?;
    m.add_function(wrap_pyfunction!(wire::compile_spans, m)?)?;
    m.add_function(wrap_pyfunction!(json_batch::compile_json, m)?)?;
    Ok(())
}
