//! `BucketState.add_many` (tokentrace/core/buckets.py): spans grouped by series and attribute value, with
//! the caps, each aggregate then updated once with what its spans add (as its `add_many` would).
//!
//! The spans are checked and read first (names and attribute keys exact `str`, attribute values exact `str`,
//! `bool`, `int` or `float`, the aggregated fields as `AggregateKernel` reads them); anything else makes the
//! kernel decline before it changes anything. After that it does what the Python code does, in the same
//! order: attribute dicts and aggregates are created in span order (which decides dict order and what the
//! caps let in), series aggregates in first-seen order. Each span is read once, whatever it counts in.

use std::borrow::Cow;

use rustc_hash::FxHashMap;

use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString};

use crate::aggregate::{AggregateKernel, Delta, Row, AGGREGATE_FIELDS, SKETCH_FIELDS};
use crate::wire::{WireBatch, WireSpan};

/// How an attribute value groups: as this text, or not at all (floats are measurements).
enum Grouping<'py> {
    Text(Bound<'py, PyString>),
    Skip,
}

fn grouping<'py>(py: Python<'py>, raw: &Bound<'py, PyAny>) -> Result<Grouping<'py>, ()> {
    if raw.is_exact_instance_of::<PyString>() {
        return Ok(Grouping::Text(raw.cast::<PyString>().map_err(|_| ())?.clone()));
    }
    if raw.is_exact_instance_of::<PyBool>() {
        let text = if raw.is_truthy().map_err(|_| ())? { intern!(py, "true") } else { intern!(py, "false") };
        return Ok(Grouping::Text(text.clone()));
    }
    if raw.is_exact_instance_of::<PyInt>() {
        return Ok(Grouping::Text(raw.str().map_err(|_| ())?));
    }
    if raw.is_exact_instance_of::<PyFloat>() {
        return Ok(Grouping::Skip);
    }
    Err(())
}

/// One span as the grouping needs it; its attributes are the range `attributes` of `Entries::attributes`.
struct Entry<'py> {
    row: Row<'py>,
    series: Cow<'py, str>,
    attributes: (usize, usize),
}

/// The spans of a call, their attributes in one vector (not one allocation per span).
#[derive(Default)]
struct Entries<'py> {
    spans: Vec<Entry<'py>>,
    attributes: Vec<(Bound<'py, PyString>, Grouping<'py>)>,
}

#[pyclass(frozen, module = "tokentrace._native")]
pub struct BucketKernel {
    pub(crate) sep: String,
    pub(crate) overflow: Py<PyString>,
    score_key: String,
    new_aggregate: Py<PyAny>,
    pub(crate) aggregates: Py<AggregateKernel>,
    /// ``type(new_aggregate().latency)``: the ``Sketch`` class, for building new aggregates whole.
    sketch_type: Py<PyAny>,
}

fn exact_str(obj: &Bound<'_, PyAny>) -> Result<String, ()> {
    if !obj.is_exact_instance_of::<PyString>() {
        return Err(());
    }
    Ok(obj.cast::<PyString>().map_err(|_| ())?.to_str().map_err(|_| ())?.to_owned())
}

impl BucketKernel {
    fn entry<'py>(&self, py: Python<'py>, span: Bound<'py, PyAny>, entries: &mut Entries<'py>) -> Result<(), ()> {
        let get = |name: &Bound<'py, PyString>| crate::slots::field(&span, name).map_err(|_| ());
        let model = exact_str(&get(intern!(py, "model"))?)?;
        let provider = exact_str(&get(intern!(py, "provider"))?)?;
        let caller = exact_str(&get(intern!(py, "caller"))?)?;
        let series = Cow::Owned([model, provider, caller].join(&self.sep));
        let raw = get(intern!(py, "attributes"))?;
        let dict = raw.cast::<PyDict>().map_err(|_| ())?;
        let from = entries.attributes.len();
        for (name, value) in dict.iter() {
            if !name.is_exact_instance_of::<PyString>() {
                return Err(());
            }
            let name = name.cast::<PyString>().map_err(|_| ())?.clone();
            if name.to_str().map_err(|_| ())? == self.score_key {
                continue;
            }
            entries.attributes.push((name, grouping(py, &value)?));
        }
        let row = self.aggregates.get().row(py, &span)?;
        let attributes = (from, entries.attributes.len());
        entries.spans.push(Entry { row, series, attributes });
        Ok(())
    }
}

#[pymethods]
impl BucketKernel {
    /// ``new_aggregate``: the ``Aggregate`` class, whose fields (and its sketches') must be in the order
    /// ``Delta::build`` passes them: a ``TypeError`` here otherwise, not wrong counts later.
    #[new]
    fn new(
        py: Python<'_>,
        sep: String,
        overflow: Py<PyString>,
        score_key: String,
        new_aggregate: Py<PyAny>,
        aggregates: Py<AggregateKernel>,
    ) -> PyResult<Self> {
        let check = |class: &Bound<'_, PyAny>, expected: &[&str]| -> PyResult<()> {
            let fields: Vec<String> = class.getattr(intern!(py, "__struct_fields__"))?.extract()?;
            if fields != expected {
                return Err(PyTypeError::new_err(format!(
                    "{class}: fields {fields:?}, the kernel builds {expected:?}"
                )));
            }
            Ok(())
        };
        let aggregate_type = new_aggregate.bind(py);
        check(aggregate_type, &AGGREGATE_FIELDS)?;
        let sketch_type = aggregate_type.call0()?.getattr(intern!(py, "latency"))?.get_type().into_any();
        check(&sketch_type, &SKETCH_FIELDS)?;
        let sketch_type = sketch_type.unbind();
        Ok(BucketKernel { sep, overflow, score_key, new_aggregate, aggregates, sketch_type })
    }

    /// Count ``spans`` (a list) into the ``BucketState`` ``state`` as its ``add_many`` does; ``False``,
    /// with nothing changed, when a span holds a value the Python code should handle.
    fn add_many(
        &self,
        py: Python<'_>,
        state: &Bound<'_, PyAny>,
        spans: &Bound<'_, PyAny>,
        max_attribute_keys: usize,
        max_attribute_values: usize,
        max_series: usize,
    ) -> PyResult<bool> {
        let Ok(spans) = spans.cast::<PyList>() else {
            return Ok(false);
        };
        let mut entries = Entries { spans: Vec::with_capacity(spans.len()), attributes: Vec::new() };
        for span in spans.iter() {
            if self.entry(py, span, &mut entries).is_err() {
                return Ok(false);
            }
        }
        self.add_entries(py, state, &entries, (max_attribute_keys, max_attribute_values, max_series))?;
        Ok(true)
    }

    /// Count the spans of one compiled ``batch`` into several states: ``targets`` lists ``(state, bucket
    /// starts)`` pairs, each state taking the batch's spans in those buckets, in order, as ``add_batches`` of
    /// ``[(batch, starts)]`` on each state in turn would (the batch's texts are made Python strings once, and
    /// its spans are sorted to their targets in one pass, whatever the number of buckets).
    fn add_batch_to_states(
        &self,
        py: Python<'_>,
        batch: &Bound<'_, WireBatch>,
        targets: &Bound<'_, PyList>,
        max_attribute_keys: usize,
        max_attribute_values: usize,
        max_series: usize,
    ) -> PyResult<()> {
        let targets: Vec<(Bound<'_, PyAny>, Vec<i64>)> =
            targets.iter().map(|target| target.extract()).collect::<PyResult<_>>()?;
        let batch = batch.get();
        let strings: Vec<Bound<'_, PyString>> =
            batch.strings.iter().map(|&range| PyString::new(py, batch.text(range))).collect();
        let mut target_of: FxHashMap<i64, usize> = FxHashMap::default();
        for (at, (_, starts)) in targets.iter().enumerate() {
            for &start in starts {
                target_of.entry(start).or_insert(at);
            }
        }
        let mut entries: Vec<Entries<'_>> = targets.iter().map(|_| Entries::default()).collect();
        for span in &batch.spans {
            let Some(&at) = target_of.get(&span.bucket) else { continue };
            push_batch_span(batch, span, &strings, &mut entries[at]);
        }
        for ((state, _), entries) in targets.iter().zip(&entries) {
            self.add_entries(py, state, entries, (max_attribute_keys, max_attribute_values, max_series))?;
        }
        Ok(())
    }

    /// Count the spans of ``segments`` (``(WireBatch, bucket starts)`` pairs: each batch's spans in those
    /// buckets, in order) into ``state``, as ``add_many`` of the equal ``Span`` objects would.
    fn add_batches(
        &self,
        py: Python<'_>,
        state: &Bound<'_, PyAny>,
        segments: &Bound<'_, PyList>,
        max_attribute_keys: usize,
        max_attribute_values: usize,
        max_series: usize,
    ) -> PyResult<()> {
        // One Python string per distinct text of the call (batches intern theirs: one lookup per batch, not per
        // span), so equal texts are the same objects and the group resolution below hits its cache.
        let segments: Vec<(Bound<'_, WireBatch>, Vec<i64>)> =
            segments.iter().map(|segment| segment.extract()).collect::<PyResult<_>>()?;
        let mut texts: FxHashMap<&str, Bound<'_, PyString>> = FxHashMap::default();
        let mut entries = Entries::default();
        for (batch, buckets) in &segments {
            let batch = batch.get();
            let strings: Vec<Bound<'_, PyString>> = batch
                .strings
                .iter()
                .map(|&range| {
                    let value = batch.text(range);
                    texts.entry(value).or_insert_with(|| PyString::new(py, value)).clone()
                })
                .collect();
            for span in batch.spans_in(buckets) {
                push_batch_span(batch, span, &strings, &mut entries);
            }
        }
        self.add_entries(py, state, &entries, (max_attribute_keys, max_attribute_values, max_series))
    }
}

/// One span of a compiled batch as an entry (``strings``: the batch's texts as Python strings).
fn push_batch_span<'a, 'py>(
    batch: &'a WireBatch,
    span: &WireSpan,
    strings: &[Bound<'py, PyString>],
    entries: &mut Entries<'py>,
) where
    'a: 'py,
{
    let from = entries.attributes.len();
    entries.attributes.extend(batch.attributes[span.attributes.0..span.attributes.1].iter().map(
        |&(name, grouping)| {
            let grouping = match grouping {
                Some(value) => Grouping::Text(strings[value as usize].clone()),
                None => Grouping::Skip,
            };
            (strings[name as usize].clone(), grouping)
        },
    ));
    let attributes = (from, entries.attributes.len());
    let row = Row {
        status: span.status,
        cost_nanos: span.cost_nanos,
        prompt: span.prompt,
        comp: span.comp,
        total: span.total,
        latency: span.latency.map(|n| (n, None)),
        score: span.score,
    };
    let series = Cow::Borrowed(batch.text(batch.series[span.series as usize]));
    entries.spans.push(Entry { row, series, attributes });
}

/// An attribute group's aggregate: one the state holds, or a new one for ``by_series[key]``, made whole
/// (``Delta::build``) once the call's spans are summed.
enum Group<'py> {
    Existing(Bound<'py, PyAny>),
    New(Bound<'py, PyDict>, Bound<'py, PyString>),
}

/// Where a span's attribute counts: nowhere (a new key past the key cap), or a group, perhaps the overflow
/// value's (past the value cap: counted in ``overflowed`` each time).
#[derive(Clone, Copy)]
enum Resolution {
    Refused,
    Group(usize, bool),
}

impl BucketKernel {
    /// The group of ``(name, value, series key)`` in the state's ``attributes``, created as ``_attribute_groups``
    /// creates it, with its index in ``groups``.
    #[allow(clippy::too_many_arguments)]
    fn resolve<'py>(
        &self,
        py: Python<'py>,
        attributes: &Bound<'py, PyDict>,
        (name, value, key): (&Bound<'py, PyString>, &Bound<'py, PyString>, &Bound<'py, PyString>),
        (max_attribute_keys, max_attribute_values): (usize, usize),
        groups: &mut Vec<(Group<'py>, Delta<'py>)>,
        group_index: &mut FxHashMap<(usize, usize), usize>,
        kernel: &AggregateKernel,
    ) -> PyResult<Resolution> {
        let values = match attributes.get_item(name)? {
            Some(values) => values,
            None => {
                if attributes.len() >= max_attribute_keys {
                    return Ok(Resolution::Refused);
                }
                let values = PyDict::new(py).into_any();
                attributes.set_item(name, &values)?;
                values
            }
        };
        let values = values.cast::<PyDict>()?;
        let mut spilled = false;
        let by_series = match values.get_item(value)? {
            Some(by_series) => by_series,
            None => {
                let mut slot = value.clone();
                let mut found = None;
                if values.len() >= max_attribute_values {
                    spilled = true;
                    slot = self.overflow.bind(py).clone();
                    found = values.get_item(&slot)?;
                }
                match found {
                    Some(by_series) => by_series,
                    None => {
                        let by_series = PyDict::new(py).into_any();
                        values.set_item(&slot, &by_series)?;
                        by_series
                    }
                }
            }
        };
        let by_series = by_series.cast_into::<PyDict>()?;
        // A group is its (dict, key) pair: a new one is created, whole, when the deltas are written.
        let identity = (by_series.as_ptr() as usize, key.as_ptr() as usize);
        if let Some(&at) = group_index.get(&identity) {
            return Ok(Resolution::Group(at, spilled));
        }
        let group = match by_series.get_item(key)? {
            Some(aggregate) => Group::Existing(aggregate),
            None => Group::New(by_series, key.clone()),
        };
        groups.push((group, Delta::new(kernel)));
        group_index.insert(identity, groups.len() - 1);
        Ok(Resolution::Group(groups.len() - 1, spilled))
    }

    /// Count checked spans into ``state`` as ``BucketState.add_many`` does.
    fn add_entries(
        &self,
        py: Python<'_>,
        state: &Bound<'_, PyAny>,
        entries: &Entries<'_>,
        (max_attribute_keys, max_attribute_values, max_series): (usize, usize, usize),
    ) -> PyResult<()> {
        let kernel = self.aggregates.get();
        let series = state.getattr(intern!(py, "series"))?;
        let series = series.cast::<PyDict>()?;
        // The series cap (``BucketState._admit_all``): a series the state does not hold, once it holds
        // ``max_series`` (the overflow series aside), counts in the overflow series.
        let overflow_series = [self.overflow.bind(py).to_str()?; 3].join(&self.sep);
        let held = series.len() - usize::from(series.contains(overflow_series.as_str())?);
        let mut room = max_series.saturating_sub(held);
        // Room for a new series per span: nothing can fold, no need to look the keys up.
        let roomy = room >= entries.spans.len();
        let mut overflowed_series: i64 = 0;
        let mut series_order: Vec<(Cow<'_, str>, Delta<'_>)> = Vec::new();
        let mut series_index: FxHashMap<&str, (usize, bool)> = FxHashMap::default();
        let mut overflow_slot: Option<usize> = None;
        let mut slots: Vec<usize> = Vec::with_capacity(entries.spans.len());
        for entry in &entries.spans {
            let key = entry.series.as_ref();
            let (at, folded) = match series_index.get(key) {
                Some(&found) => found,
                None => {
                    let is_overflow = key == overflow_series;
                    let held = !is_overflow && !roomy && series.contains(key)?;
                    let admitted = is_overflow || held || room > 0;
                    let found = if admitted && !is_overflow {
                        if !held {
                            room -= 1;
                        }
                        series_order.push((Cow::Borrowed(key), Delta::new(kernel)));
                        (series_order.len() - 1, false)
                    } else {
                        let at = *overflow_slot.get_or_insert_with(|| {
                            series_order.push((Cow::Owned(overflow_series.clone()), Delta::new(kernel)));
                            series_order.len() - 1
                        });
                        (at, !admitted)
                    };
                    series_index.insert(key, found);
                    found
                }
            };
            overflowed_series += i64::from(folded);
            slots.push(at);
            series_order[at].1.add(py, kernel, &entry.row);
        }

        // Attribute groups in span order, each with its spans (keyed by its dict's and key's identity).
        let attributes = state.getattr(intern!(py, "attributes"))?;
        let attributes = attributes.cast::<PyDict>()?;
        let mut overflowed: i64 = 0;
        let mut groups: Vec<(Group<'_>, Delta<'_>)> = Vec::new();
        let mut group_index: FxHashMap<(usize, usize), usize> = FxHashMap::default();
        // The group a (name, value, series) resolves to, by the objects' identity: fixed within a call, since
        // the dicts only grow (a value refused by a cap stays refused), but for the overflow text itself once
        // spilled. Batches share their text objects, so most spans skip the dict walk.
        let mut resolved: FxHashMap<(usize, usize, usize), Resolution> = FxHashMap::default();
        let mut series_keys: Vec<Option<Bound<'_, PyString>>> = vec![None; series_order.len()];
        for (entry, &slot) in entries.spans.iter().zip(&slots) {
            let (from, to) = entry.attributes;
            if from == to {
                continue;
            }
            let key = series_keys[slot].get_or_insert_with(|| PyString::new(py, &series_order[slot].0));
            for (name, value) in &entries.attributes[from..to] {
                let Grouping::Text(value) = value else { continue };
                let identity = (name.as_ptr() as usize, value.as_ptr() as usize, key.as_ptr() as usize);
                let resolution = match resolved.get(&identity) {
                    Some(resolution) => *resolution,
                    None => {
                        let resolution = self.resolve(
                            py,
                            attributes,
                            (name, value, key),
                            (max_attribute_keys, max_attribute_values),
                            &mut groups,
                            &mut group_index,
                            kernel,
                        )?;
                        // Spilling a value makes the overflow slot: the overflow text itself then finds it.
                        let spilled_overflow = matches!(resolution, Resolution::Group(_, true))
                            && value.as_any().eq(self.overflow.bind(py))?;
                        if !spilled_overflow {
                            resolved.insert(identity, resolution);
                        }
                        resolution
                    }
                };
                match resolution {
                    Resolution::Refused => overflowed += 1,
                    Resolution::Group(at, spilled) => {
                        overflowed += i64::from(spilled);
                        groups[at].1.add(py, kernel, &entry.row);
                    }
                }
            }
        }

        let (aggregate_type, sketch_type) = (self.new_aggregate.bind(py), self.sketch_type.bind(py));
        for (key, delta) in &series_order {
            let key = PyString::new(py, key);
            match series.get_item(&key)? {
                Some(aggregate) => delta.apply(py, &aggregate)?,
                None => series.set_item(&key, delta.build(py, aggregate_type, sketch_type)?)?,
            }
        }
        for (group, delta) in &groups {
            match group {
                Group::Existing(aggregate) => delta.apply(py, aggregate)?,
                Group::New(by_series, key) => by_series.set_item(key, delta.build(py, aggregate_type, sketch_type)?)?,
            }
        }
        if overflowed != 0 {
            let current = state.getattr(intern!(py, "overflowed"))?;
            state.setattr(intern!(py, "overflowed"), current.add(overflowed)?)?;
        }
        if overflowed_series != 0 {
            let current = state.getattr(intern!(py, "overflowed_series"))?;
            state.setattr(intern!(py, "overflowed_series"), current.add(overflowed_series)?)?;
        }
        Ok(())
    }
}
