//! `Aggregate.add_many` (tokentrace/core/aggregate.py) over a list of spans, sketches included.
//!
//! Two passes: the spans' fields are read and checked first (any value the Python code would treat
//! differently from the usual ints and floats makes the kernel decline before it changes anything),
//! then the aggregate is updated once per field. Sums are added with Python's unbounded ints.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

/// Floats hold every integer up to this exactly; beyond it the kernel declines.
const EXACT_INT: i64 = 1 << 53;
const NANO: f64 = 1_000_000_000.0;

/// One number field of a span as the kernel needs it: the value as a float and whether it was an int.
#[derive(Clone, Copy)]
pub struct Number {
    pub value: f64,
    pub int: Option<i64>,
}

impl Number {
    /// The value as Python holds it: an `int` when it was one, else a `float`.
    fn object<'py>(self, py: Python<'py>) -> Bound<'py, PyAny> {
        match self.int {
            Some(int) => int.into_pyobject(py).map(Bound::into_any).unwrap_or_else(|e| match e {}),
            None => PyFloat::new(py, self.value).into_any(),
        }
    }
}

/// `None` for Python's `None`; `Err(())` for anything the kernel leaves to Python.
fn number(obj: &Bound<'_, PyAny>) -> Result<Option<Number>, ()> {
    if obj.is_none() {
        return Ok(None);
    }
    if obj.is_exact_instance_of::<PyFloat>() {
        let value = obj.cast::<PyFloat>().map_err(|_| ())?.value();
        if value.is_nan() {
            return Err(());
        }
        return Ok(Some(Number { value, int: None }));
    }
    if obj.is_instance_of::<PyInt>() {
        let int: i64 = obj.extract().map_err(|_| ())?;
        if !(-EXACT_INT..=EXACT_INT).contains(&int) {
            return Err(());
        }
        return Ok(Some(Number { value: int as f64, int: Some(int) }));
    }
    Err(())
}

/// A token count: `None` or an int (Span.__post_init__ made them whole ints).
fn tokens(obj: &Bound<'_, PyAny>) -> Result<Option<i64>, ()> {
    match number(obj)? {
        None => Ok(None),
        Some(Number { int: Some(int), .. }) => Ok(Some(int)),
        Some(_) => Err(()),
    }
}

/// What the aggregates read of one span; the latency with the Python object it came from, if any (a
/// sketch's min and max keep the value as given: an int stays an int).
pub struct Row<'py> {
    pub status: u8, // 0 ok, 1 error, 2 anything else
    pub cost_nanos: Option<i128>,
    pub prompt: Option<i64>,
    pub comp: i64,
    pub total: i64,
    pub latency: Option<(Number, Option<Bound<'py, PyAny>>)>,
    pub score: Option<f64>,
}

/// What a list of values adds to one `Sketch`, in the order `Sketch.add` would see them.
struct SketchDelta<'py> {
    count: i64,
    zeros: i64,
    low: Option<(f64, Bound<'py, PyAny>)>,
    high: Option<(f64, Bound<'py, PyAny>)>,
    positive: Bins,
    negative: Bins,
}

/// Hashes a sketch key (a small int) by one multiplication: SipHash's flooding resistance buys nothing
/// for keys computed from our own bounded values, and it was a tenth of the kernel's time.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_i64(&mut self, key: i64) {
        self.0 = (key as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Counts per key, keys in first-seen order (new keys enter the Python dict in that order).
#[derive(Default)]
struct Bins {
    order: Vec<(i64, i64)>,
    index: HashMap<i64, usize, BuildHasherDefault<KeyHasher>>,
}

impl Bins {
    fn add(&mut self, key: i64) {
        match self.index.get(&key) {
            Some(&at) => self.order[at].1 += 1,
            None => {
                self.index.insert(key, self.order.len());
                self.order.push((key, 1));
            }
        }
    }

    fn apply(&self, dict: &Bound<'_, PyDict>) -> PyResult<()> {
        for &(key, n) in &self.order {
            let current: i64 = match dict.get_item(key)? {
                Some(value) => value.extract()?,
                None => 0,
            };
            dict.set_item(key, current + n)?;
        }
        Ok(())
    }
}

impl<'py> SketchDelta<'py> {
    fn new() -> Self {
        SketchDelta { count: 0, zeros: 0, low: None, high: None, positive: Bins::default(), negative: Bins::default() }
    }

    fn add(&mut self, kernel: &AggregateKernel, value: f64, object: impl FnOnce() -> Bound<'py, PyAny>) {
        self.count += 1;
        let new_low = self.low.as_ref().is_none_or(|(low, _)| value < *low);
        let new_high = self.high.as_ref().is_none_or(|(high, _)| value > *high);
        if new_low || new_high {
            let object = object();
            if new_low {
                self.low = Some((value, object.clone()));
            }
            if new_high {
                self.high = Some((value, object));
            }
        }
        if value > 0.0 {
            self.positive.add(kernel.key(value));
        } else if value < 0.0 {
            self.negative.add(kernel.key(-value));
        } else {
            self.zeros += 1;
        }
    }

    /// Add into the Python ``Sketch`` ``sketch`` (min and max only where strictly beyond, as ``add``).
    fn apply(&self, py: Python<'py>, sketch: &Bound<'py, PyAny>) -> PyResult<()> {
        if self.count == 0 {
            return Ok(());
        }
        add_int(sketch, intern!(py, "count"), self.count as i128)?;
        add_int(sketch, intern!(py, "zeros"), self.zeros as i128)?;
        if let Some((value, object)) = &self.low {
            let current: f64 = sketch.getattr(intern!(py, "min"))?.extract()?;
            if *value < current {
                sketch.setattr(intern!(py, "min"), object)?;
            }
        }
        if let Some((value, object)) = &self.high {
            let current: f64 = sketch.getattr(intern!(py, "max"))?.extract()?;
            if *value > current {
                sketch.setattr(intern!(py, "max"), object)?;
            }
        }
        self.positive.apply(sketch.getattr(intern!(py, "positive"))?.cast::<PyDict>()?)?;
        self.negative.apply(sketch.getattr(intern!(py, "negative"))?.cast::<PyDict>()?)?;
        Ok(())
    }
}

impl<'py> SketchDelta<'py> {
    /// A new ``Sketch`` holding just this delta: what ``Sketch()`` and then ``apply`` give, built in one call
    /// (fields in ``Sketch.__struct_fields__`` order: count, min, max, positive, negative, zeros).
    fn build(&self, py: Python<'py>, sketch_type: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let low = match &self.low {
            Some((_, object)) => object.clone(),
            None => PyFloat::new(py, f64::INFINITY).into_any(),
        };
        let high = match &self.high {
            Some((_, object)) => object.clone(),
            None => PyFloat::new(py, f64::NEG_INFINITY).into_any(),
        };
        let positive = PyDict::new(py);
        self.positive.apply(&positive)?;
        let negative = PyDict::new(py);
        self.negative.apply(&negative)?;
        sketch_type.call1((self.count, low, high, positive, negative, self.zeros))
    }
}

/// An int as a Python int: through `i64` where it fits (pyo3's `i128` conversion is several calls).
pub(crate) fn int_object(py: Python<'_>, value: i128) -> PyResult<Bound<'_, PyAny>> {
    match i64::try_from(value) {
        Ok(small) => Ok(small.into_pyobject(py)?.into_any()),
        Err(_) => Ok(value.into_pyobject(py)?.into_any()),
    }
}

/// ``target.name += delta`` (in Python's unbounded ints); nothing for 0, which changes no value.
fn add_int(target: &Bound<'_, PyAny>, name: &Bound<'_, PyString>, delta: i128) -> PyResult<()> {
    if delta == 0 {
        return Ok(());
    }
    let current = target.getattr(name)?;
    target.setattr(name, current.add(int_object(target.py(), delta)?)?)
}

fn add_to_list(list: &Bound<'_, PyList>, deltas: &[i64]) -> PyResult<()> {
    for (index, &n) in deltas.iter().enumerate() {
        if n != 0 {
            let current: i64 = list.get_item(index)?.extract()?;
            list.set_item(index, current + n)?;
        }
    }
    Ok(())
}

/// What a set of rows adds to one ``Aggregate``: every field, summed in Rust, written back once.
pub struct Delta<'py> {
    count: i128,
    ok: i128,
    errors: i128,
    timeouts: i128,
    cost: i128,
    unpriced: i128,
    prompt: i128,
    comp: i128,
    total: i128,
    latency_count: i128,
    latency_sum_us: i128,
    score_count: i128,
    score_sum: i128,
    latency_buckets: Vec<i64>,
    prompt_buckets: Vec<i64>,
    latency_sketch: SketchDelta<'py>,
    score_sketch: SketchDelta<'py>,
}

impl<'py> Delta<'py> {
    pub fn new(kernel: &AggregateKernel) -> Self {
        Delta {
            count: 0,
            ok: 0,
            errors: 0,
            timeouts: 0,
            cost: 0,
            unpriced: 0,
            prompt: 0,
            comp: 0,
            total: 0,
            latency_count: 0,
            latency_sum_us: 0,
            score_count: 0,
            score_sum: 0,
            latency_buckets: vec![0; kernel.latency_bounds.len() + 1],
            prompt_buckets: vec![0; kernel.prompt_bounds.len() + 1],
            latency_sketch: SketchDelta::new(),
            score_sketch: SketchDelta::new(),
        }
    }

    /// Count one span, as ``Aggregate.add`` does.
    pub fn add(&mut self, py: Python<'py>, kernel: &AggregateKernel, row: &Row<'py>) {
        self.count += 1;
        match row.status {
            0 => self.ok += 1,
            1 => self.errors += 1,
            _ => self.timeouts += 1,
        }
        match row.cost_nanos {
            None => self.unpriced += 1,
            Some(nanos) => self.cost += nanos,
        }
        if let Some(prompt) = row.prompt {
            self.prompt += prompt as i128;
            // bisect_left: the number of bounds below the value
            self.prompt_buckets[kernel.prompt_bounds.partition_point(|b| *b < prompt as f64)] += 1;
        }
        self.comp += row.comp as i128;
        self.total += row.total as i128;
        if let Some((latency, object)) = &row.latency {
            let latency = *latency;
            self.latency_count += 1;
            self.latency_sum_us += match latency.int {
                Some(int) => int as i128 * 1000,
                None => (latency.value * 1000.0).round_ties_even() as i128, // Python's round()
            };
            self.latency_sketch.add(kernel, latency.value, || match object {
                Some(object) => object.clone(),
                None => latency.object(py),
            });
            self.latency_buckets[kernel.latency_bounds.partition_point(|b| *b < latency.value)] += 1;
        }
        if let Some(score) = row.score {
            self.score_count += 1;
            self.score_sum += (score * NANO + if score >= 0.0 { 0.5 } else { -0.5 }).trunc() as i128;
            self.score_sketch.add(kernel, score, || PyFloat::new(py, score).into_any());
        }
    }

    /// Add everything counted into the Python ``Aggregate`` ``aggregate``.
    pub fn apply(&self, py: Python<'py>, aggregate: &Bound<'py, PyAny>) -> PyResult<()> {
        add_int(aggregate, intern!(py, "count"), self.count)?;
        add_int(aggregate, intern!(py, "ok"), self.ok)?;
        add_int(aggregate, intern!(py, "errors"), self.errors)?;
        add_int(aggregate, intern!(py, "timeouts"), self.timeouts)?;
        add_int(aggregate, intern!(py, "cost_nanos"), self.cost)?;
        add_int(aggregate, intern!(py, "unpriced"), self.unpriced)?;
        add_int(aggregate, intern!(py, "prompt_tokens"), self.prompt)?;
        add_int(aggregate, intern!(py, "comp_tokens"), self.comp)?;
        add_int(aggregate, intern!(py, "total_tokens"), self.total)?;
        add_int(aggregate, intern!(py, "latency_count"), self.latency_count)?;
        add_int(aggregate, intern!(py, "latency_sum_us"), self.latency_sum_us)?;
        add_int(aggregate, intern!(py, "score_count"), self.score_count)?;
        add_int(aggregate, intern!(py, "score_sum_nanos"), self.score_sum)?;
        add_to_list(aggregate.getattr(intern!(py, "prompt_buckets"))?.cast::<PyList>()?, &self.prompt_buckets)?;
        add_to_list(aggregate.getattr(intern!(py, "latency_buckets"))?.cast::<PyList>()?, &self.latency_buckets)?;
        self.latency_sketch.apply(py, &aggregate.getattr(intern!(py, "latency"))?)?;
        self.score_sketch.apply(py, &aggregate.getattr(intern!(py, "score"))?)?;
        Ok(())
    }
}

impl<'py> Delta<'py> {
    /// A new ``Aggregate`` holding just this delta: equal to ``Aggregate()`` after ``apply``, without the
    /// two dozen attribute reads and writes (a back-fill makes most of its aggregates new). Fields in
    /// ``Aggregate.__struct_fields__`` order, checked against ``AGGREGATE_FIELDS`` when the kernel is made.
    pub fn build(
        &self,
        py: Python<'py>,
        aggregate_type: &Bound<'py, PyAny>,
        sketch_type: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let latency_buckets = crate::untrack::untracked_list(py, &self.latency_buckets)?;
        let prompt_buckets = crate::untrack::untracked_list(py, &self.prompt_buckets)?;
        let args = PyTuple::new(
            py,
            [
                int_object(py, self.count)?,
                int_object(py, self.ok)?,
                int_object(py, self.errors)?,
                int_object(py, self.timeouts)?,
                int_object(py, self.cost)?,
                int_object(py, self.unpriced)?,
                int_object(py, self.prompt)?,
                int_object(py, self.comp)?,
                int_object(py, self.total)?,
                int_object(py, self.latency_count)?,
                int_object(py, self.latency_sum_us)?,
                self.latency_sketch.build(py, sketch_type)?,
                latency_buckets.into_any(),
                prompt_buckets.into_any(),
                int_object(py, self.score_count)?,
                int_object(py, self.score_sum)?,
                self.score_sketch.build(py, sketch_type)?,
            ],
        )?;
        aggregate_type.call1(args)
    }
}

/// ``Aggregate.__struct_fields__`` as ``Delta::build`` passes them.
pub const AGGREGATE_FIELDS: [&str; 17] = [
    "count",
    "ok",
    "errors",
    "timeouts",
    "cost_nanos",
    "unpriced",
    "prompt_tokens",
    "comp_tokens",
    "total_tokens",
    "latency_count",
    "latency_sum_us",
    "latency",
    "latency_buckets",
    "prompt_buckets",
    "score_count",
    "score_sum_nanos",
    "score",
];
/// ``Sketch.__struct_fields__`` as ``SketchDelta::build`` passes them.
pub const SKETCH_FIELDS: [&str; 6] = ["count", "min", "max", "positive", "negative", "zeros"];

/// The constants of aggregate.py and sketch.py, handed over once so Python keeps the only copy.
#[pyclass(frozen, module = "tokentrace._native")]
pub struct AggregateKernel {
    pub(crate) latency_bounds: Vec<f64>,
    pub(crate) prompt_bounds: Vec<f64>,
    multiplier: f64,
    offset: f64,
}

impl AggregateKernel {
    /// ``int(ceil(log2(v) * multiplier) + offset)`` as sketch.py computes it (libm's log2, as CPython's).
    pub(crate) fn key(&self, value: f64) -> i64 {
        let ceiled = (value.log2() * self.multiplier).ceil();
        if self.offset == 0.0 {
            ceiled as i64
        } else {
            (ceiled + self.offset).trunc() as i64
        }
    }

    /// The fields of ``span`` the aggregates need; ``Err`` for a value the Python code should handle.
    pub fn row<'py>(&self, py: Python<'py>, span: &Bound<'py, PyAny>) -> Result<Row<'py>, ()> {
        let get = |name: &Bound<'py, PyString>| crate::slots::field(span, name).map_err(|_| ());
        let status_obj = get(intern!(py, "status"))?;
        let status = match status_obj.cast::<PyString>().map_err(|_| ())?.to_str().map_err(|_| ())? {
            "ok" => 0,
            "error" => 1,
            _ => 2,
        };
        let cost_nanos = match number(&get(intern!(py, "cost_usd"))?)? {
            None => None,
            // int(cost * NANO + 0.5): an int cost makes an exact int product, then a float sum.
            Some(Number { int: Some(int), .. }) => {
                let product = int as i128 * 1_000_000_000;
                if product.abs() > EXACT_INT as i128 {
                    return Err(());
                }
                Some(((product as f64) + 0.5).trunc() as i128)
            }
            Some(Number { value, .. }) => Some((value * NANO + 0.5).trunc() as i128),
        };
        let prompt = tokens(&get(intern!(py, "prompt_tokens"))?)?;
        let comp = tokens(&get(intern!(py, "comp_tokens"))?)?.unwrap_or(0);
        let total = tokens(&get(intern!(py, "total_tokens"))?)?.unwrap_or(0);
        let latency_obj = get(intern!(py, "latency_ms"))?;
        let latency = number(&latency_obj)?.map(|n| (n, Some(latency_obj)));
        let attributes = get(intern!(py, "attributes"))?;
        let attributes = attributes.cast::<PyDict>().map_err(|_| ())?;
        let score = if attributes.is_empty() {
            None
        } else {
            match attributes.get_item(intern!(py, "eval.score")).map_err(|_| ())? {
                None => None,
                Some(raw) if raw.is_none() => None,
                Some(raw) => match number(&raw)? {
                    Some(Number { value, .. }) if !raw.is_exact_instance_of::<pyo3::types::PyBool>() => Some(value),
                    _ => return Err(()),
                },
            }
        };
        Ok(Row { status, cost_nanos, prompt, comp, total, latency, score })
    }
}

#[pymethods]
impl AggregateKernel {
    #[new]
    fn new(latency_bounds: Vec<f64>, prompt_bounds: Vec<f64>, multiplier: f64, offset: f64) -> Self {
        AggregateKernel { latency_bounds, prompt_bounds, multiplier, offset }
    }

    /// Count ``spans`` (a list) into ``aggregate`` as ``Aggregate.add_many`` does; ``False`` (nothing
    /// changed) when a span holds a value the Python code should handle.
    fn add_many(&self, py: Python<'_>, aggregate: &Bound<'_, PyAny>, spans: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Ok(spans) = spans.cast::<PyList>() else {
            return Ok(false);
        };
        let mut rows = Vec::with_capacity(spans.len());
        for span in spans.iter() {
            match self.row(py, &span) {
                Ok(row) => rows.push(row),
                Err(()) => return Ok(false),
            }
        }

        let mut delta = Delta::new(self);
        for row in &rows {
            delta.add(py, self, row);
        }
        delta.apply(py, aggregate)?;
        Ok(true)
    }
}
