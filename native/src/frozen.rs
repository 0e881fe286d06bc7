//! Compiled batches counted straight into a frozen bucket's bytes: `freeze(thaw(raw)` then `add_batches`,
//! byte for byte, with no Python object per aggregate (tokentrace/core/frozen.py's `add_batches`).
//!
//! A back-fill makes most of its aggregates new (a month holds some 700 hours of each series): as Python objects
//! each costs a struct, two sketches with four dicts and two lists, and the cycle collector's attention. Here
//! the bucket is read as msgspec wrote it, every aggregate kept as its bytes until a span reaches it, the spans
//! are counted as `BucketState.add` counts them (series cap, attribute key and value caps, overflow counts,
//! dict order), and the bucket is written back as msgspec would write it: untouched aggregates as the bytes
//! they were. A bucket this code does not recognise (another layout, an int beyond 64 bits) makes it decline.

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple, PyType};
use rustc_hash::FxHashMap;
use std::sync::Arc;

use crate::aggregate::{AggregateKernel, Number};
use crate::bucket::BucketKernel;
use crate::msgpack::{write_array_len, write_float, write_int, write_map_len, write_str, Reader, Value};
use crate::wire::{Group, Grouping, WireBatch, WireSpan};

const NANO: f64 = 1_000_000_000.0;
/// `BucketState`'s fields, in the order msgspec writes them.
const BUCKET_FIELDS: [&str; 4] = ["series", "attributes", "overflowed", "overflowed_series"];
/// Fields of an `Aggregate` (array-like) and of a `Sketch`.
const AGGREGATE_LEN: usize = 17;
const SKETCH_LEN: usize = 6;

/// What the aggregates read of one span.
#[derive(Clone, Copy)]
struct Values {
    status: u8,
    cost_nanos: Option<i128>,
    prompt: Option<i64>,
    comp: i64,
    total: i64,
    latency: Option<Number>,
    score: Option<f64>,
}

/// A span's `Values` as a backlog keeps it until its bucket's pass, with its series and grouped attributes as
/// ids of its bucket's texts: 72 bytes, not the 112 of `Values` (an `Option<i128>` aligns it to 16 bytes), and
/// no copy of its texts. Exact: the cost as its two halves, the latency as its int's or its float's bits.
#[derive(Clone, Copy)]
struct Row {
    cost: [u64; 2],
    prompt: i64,
    comp: i64,
    total: i64,
    latency: u64,
    score: f64,
    series: u32,
    /// Its grouped attributes: `Pending.attributes[from..from + count]`.
    from: u32,
    count: u32,
    status: u8,
    /// `HAS_*` and `LATENCY_INT`.
    flags: u8,
}

const HAS_COST: u8 = 1;
const HAS_PROMPT: u8 = 2;
const HAS_LATENCY: u8 = 4;
const LATENCY_INT: u8 = 8;
const HAS_SCORE: u8 = 16;

impl Row {
    fn values(&self) -> Values {
        let has = |flag: u8| self.flags & flag != 0;
        let [low, high] = self.cost;
        Values {
            status: self.status,
            cost_nanos: has(HAS_COST).then(|| (u128::from(low) | (u128::from(high) << 64)) as i128),
            prompt: has(HAS_PROMPT).then_some(self.prompt),
            comp: self.comp,
            total: self.total,
            latency: has(HAS_LATENCY).then(|| match has(LATENCY_INT) {
                true => {
                    let int = self.latency as i64;
                    Number { value: int as f64, int: Some(int) }
                }
                false => Number { value: f64::from_bits(self.latency), int: None },
            }),
            score: has(HAS_SCORE).then_some(self.score),
        }
    }
}

/// A sketch's `min` or `max` as Python holds it: an int stays an int.
#[derive(Clone, Copy)]
enum Extreme {
    Int(i64),
    Float(f64),
}

impl Extreme {
    fn value(self) -> f64 {
        match self {
            Extreme::Int(int) => int as f64,
            Extreme::Float(value) => value,
        }
    }

    /// As msgspec decodes it into the field, a `float`: an int written there comes back a float.
    fn read(reader: &mut Reader<'_>) -> Option<Self> {
        match reader.value()? {
            Value::Int(int) => Some(Extreme::Float(int as f64)),
            Value::Float(value) => Some(Extreme::Float(value)),
            _ => None,
        }
    }

    fn write(self, out: &mut Vec<u8>) -> Option<()> {
        match self {
            Extreme::Int(int) => write_int(out, i128::from(int)),
            Extreme::Float(value) => {
                write_float(out, value);
                Some(())
            }
        }
    }
}

fn read_int(reader: &mut Reader<'_>) -> Option<i128> {
    match reader.value()? {
        Value::Int(int) => Some(i128::from(int)),
        Value::Big(int) => Some(i128::from(int)),
        _ => None,
    }
}

/// Bins past this many are found through a hash index; below, by a scan (most sketches hold a few: a bucket's
/// aggregate of a handful of spans).
const SCANNED_BINS: usize = 16;

/// A dict of ints by int key, in insertion order.
#[derive(Default)]
struct Bins {
    order: Vec<(i64, i128)>,
    /// Key -> place in `order`, once there are more than `SCANNED_BINS`.
    index: Option<FxHashMap<i64, usize>>,
}

impl Bins {
    fn add(&mut self, key: i64) {
        let found = match &self.index {
            Some(index) => index.get(&key).copied(),
            None => self.order.iter().position(|&(bin, _)| bin == key),
        };
        match found {
            Some(at) => self.order[at].1 += 1,
            None => {
                self.order.push((key, 1));
                match &mut self.index {
                    Some(index) => {
                        index.insert(key, self.order.len() - 1);
                    }
                    None if self.order.len() > SCANNED_BINS => self.index = Some(Self::indexed(&self.order)),
                    None => {}
                }
            }
        }
    }

    fn indexed(order: &[(i64, i128)]) -> FxHashMap<i64, usize> {
        order.iter().enumerate().map(|(at, &(key, _))| (key, at)).collect()
    }

    fn read(reader: &mut Reader<'_>) -> Option<Self> {
        let len = reader.map_len()?;
        let mut order = Vec::with_capacity(len);
        for _ in 0..len {
            let key = i64::try_from(read_int(reader)?).ok()?;
            order.push((key, read_int(reader)?));
        }
        let index = (len > SCANNED_BINS).then(|| Self::indexed(&order));
        Some(Bins { order, index })
    }

    fn write(&self, out: &mut Vec<u8>) -> Option<()> {
        write_map_len(out, self.order.len());
        for &(key, n) in &self.order {
            write_int(out, i128::from(key))?;
            write_int(out, n)?;
        }
        Some(())
    }
}

/// A `Sketch`: `[count, min, max, positive, negative, zeros]`.
struct Sketch {
    count: i128,
    min: Extreme,
    max: Extreme,
    positive: Bins,
    negative: Bins,
    zeros: i128,
}

impl Sketch {
    fn new() -> Self {
        Sketch {
            count: 0,
            min: Extreme::Float(f64::INFINITY),
            max: Extreme::Float(f64::NEG_INFINITY),
            positive: Bins::default(),
            negative: Bins::default(),
            zeros: 0,
        }
    }

    /// `Sketch.add`: `value` is `given`'s value (never NaN: the batch refused those).
    fn add(&mut self, kernel: &AggregateKernel, value: f64, given: Extreme) {
        self.count += 1;
        if value < self.min.value() {
            self.min = given;
        }
        if value > self.max.value() {
            self.max = given;
        }
        if value > 0.0 {
            self.positive.add(kernel.key(value));
        } else if value < 0.0 {
            self.negative.add(kernel.key(-value));
        } else {
            self.zeros += 1;
        }
    }

    fn read(reader: &mut Reader<'_>) -> Option<Self> {
        if reader.array_len()? != SKETCH_LEN {
            return None;
        }
        Some(Sketch {
            count: read_int(reader)?,
            min: Extreme::read(reader)?,
            max: Extreme::read(reader)?,
            positive: Bins::read(reader)?,
            negative: Bins::read(reader)?,
            zeros: read_int(reader)?,
        })
    }

    fn write(&self, out: &mut Vec<u8>) -> Option<()> {
        write_array_len(out, SKETCH_LEN);
        write_int(out, self.count)?;
        self.min.write(out)?;
        self.max.write(out)?;
        self.positive.write(out)?;
        self.negative.write(out)?;
        write_int(out, self.zeros)
    }
}

/// An `Aggregate`, its fields in `AGGREGATE_FIELDS` order (aggregate.rs).
struct Aggregate {
    /// count, ok, errors, timeouts, cost_nanos, unpriced, prompt_tokens, comp_tokens, total_tokens,
    /// latency_count, latency_sum_us
    sums: [i128; 11],
    latency: Sketch,
    latency_buckets: Vec<i128>,
    prompt_buckets: Vec<i128>,
    score_count: i128,
    score_sum: i128,
    score: Sketch,
}

const COUNT: usize = 0;
const OK: usize = 1;
const ERRORS: usize = 2;
const TIMEOUTS: usize = 3;
const COST: usize = 4;
const UNPRICED: usize = 5;
const PROMPT: usize = 6;
const COMP: usize = 7;
const TOTAL: usize = 8;
const LATENCY_COUNT: usize = 9;
const LATENCY_SUM: usize = 10;

impl Aggregate {
    fn new(kernel: &AggregateKernel) -> Self {
        Aggregate {
            sums: [0; 11],
            latency: Sketch::new(),
            latency_buckets: vec![0; kernel.latency_bounds.len() + 1],
            prompt_buckets: vec![0; kernel.prompt_bounds.len() + 1],
            score_count: 0,
            score_sum: 0,
            score: Sketch::new(),
        }
    }

    /// `Aggregate.add` of the span.
    fn add(&mut self, kernel: &AggregateKernel, span: &Values) -> Option<()> {
        let sums = &mut self.sums;
        sums[COUNT] += 1;
        sums[match span.status {
            0 => OK,
            1 => ERRORS,
            _ => TIMEOUTS,
        }] += 1;
        match span.cost_nanos {
            None => sums[UNPRICED] += 1,
            Some(nanos) => sums[COST] += nanos,
        }
        if let Some(prompt) = span.prompt {
            sums[PROMPT] += i128::from(prompt);
            *self.prompt_buckets.get_mut(kernel.prompt_bounds.partition_point(|b| *b < prompt as f64))? += 1;
        }
        sums[COMP] += i128::from(span.comp);
        sums[TOTAL] += i128::from(span.total);
        if let Some(latency) = span.latency {
            sums[LATENCY_COUNT] += 1;
            sums[LATENCY_SUM] += match latency.int {
                Some(int) => i128::from(int) * 1000,
                None => (latency.value * 1000.0).round_ties_even() as i128, // Python's round()
            };
            let given = match latency.int {
                Some(int) => Extreme::Int(int),
                None => Extreme::Float(latency.value),
            };
            self.latency.add(kernel, latency.value, given);
            *self.latency_buckets.get_mut(kernel.latency_bounds.partition_point(|b| *b < latency.value))? += 1;
        }
        if let Some(score) = span.score {
            self.score_count += 1;
            self.score_sum += (score * NANO + if score >= 0.0 { 0.5 } else { -0.5 }).trunc() as i128;
            self.score.add(kernel, score, Extreme::Float(score));
        }
        Some(())
    }

    fn read(bytes: &[u8]) -> Option<Self> {
        let mut reader = Reader { buf: bytes, pos: 0 };
        if reader.array_len()? != AGGREGATE_LEN {
            return None;
        }
        let mut sums = [0; 11];
        for sum in &mut sums {
            *sum = read_int(&mut reader)?;
        }
        let latency = Sketch::read(&mut reader)?;
        let mut lists = [Vec::new(), Vec::new()];
        for list in &mut lists {
            let len = reader.array_len()?;
            for _ in 0..len {
                list.push(read_int(&mut reader)?);
            }
        }
        let [latency_buckets, prompt_buckets] = lists;
        let aggregate = Aggregate {
            sums,
            latency,
            latency_buckets,
            prompt_buckets,
            score_count: read_int(&mut reader)?,
            score_sum: read_int(&mut reader)?,
            score: Sketch::read(&mut reader)?,
        };
        (reader.pos == bytes.len()).then_some(aggregate)
    }

    fn write(&self, out: &mut Vec<u8>) -> Option<()> {
        write_array_len(out, AGGREGATE_LEN);
        for &sum in &self.sums {
            write_int(out, sum)?;
        }
        self.latency.write(out)?;
        for list in [&self.latency_buckets, &self.prompt_buckets] {
            write_array_len(out, list.len());
            for &n in list {
                write_int(out, n)?;
            }
        }
        write_int(out, self.score_count)?;
        write_int(out, self.score_sum)?;
        self.score.write(out)
    }
}

/// An aggregate as stored: its bytes until a span reaches it.
enum Slot<'a> {
    Raw(&'a [u8]),
    Live(Box<Aggregate>),
}

impl Slot<'_> {
    /// The aggregate, read from its bytes on first use.
    fn live(&mut self) -> Option<&mut Aggregate> {
        if let Slot::Raw(bytes) = *self {
            *self = Slot::Live(Box::new(Aggregate::read(bytes)?));
        }
        match self {
            Slot::Live(aggregate) => Some(aggregate),
            Slot::Raw(_) => None,
        }
    }

    fn write(&self, out: &mut Vec<u8>) -> Option<()> {
        match self {
            Slot::Raw(bytes) => {
                out.extend_from_slice(bytes);
                Some(())
            }
            Slot::Live(aggregate) => aggregate.write(out),
        }
    }
}

/// A dict by text key, in insertion order.
struct Ordered<'a, V> {
    entries: Vec<(&'a str, V)>,
    index: FxHashMap<&'a str, usize>,
}

impl<'a, V> Ordered<'a, V> {
    fn new() -> Self {
        Ordered { entries: Vec::new(), index: FxHashMap::default() }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn find(&self, key: &str) -> Option<usize> {
        self.index.get(key).copied()
    }

    fn push(&mut self, key: &'a str, value: V) -> usize {
        let at = self.entries.len();
        self.index.insert(key, at);
        self.entries.push((key, value));
        at
    }

    fn read(reader: &mut Reader<'a>, mut value: impl FnMut(&mut Reader<'a>) -> Option<V>) -> Option<Self> {
        let len = reader.map_len()?;
        let mut map = Ordered { entries: Vec::with_capacity(len), index: FxHashMap::default() };
        map.index.reserve(len);
        for _ in 0..len {
            let key = reader.str()?;
            let read = value(reader)?;
            if map.index.insert(key, map.entries.len()).is_some() {
                return None; // a repeated key: not what msgspec writes
            }
            map.entries.push((key, read));
        }
        Some(map)
    }

    fn write(&self, out: &mut Vec<u8>, mut value: impl FnMut(&V, &mut Vec<u8>) -> Option<()>) -> Option<()> {
        write_map_len(out, self.entries.len());
        for (key, item) in &self.entries {
            write_str(out, key);
            value(item, out)?;
        }
        Some(())
    }
}

type Groups<'a> = Ordered<'a, Slot<'a>>;

/// A `BucketState`, its aggregates left as bytes.
struct Bucket<'a> {
    series: Groups<'a>,
    attributes: Ordered<'a, Ordered<'a, Groups<'a>>>,
    overflowed: i128,
    overflowed_series: i128,
}

fn read_groups<'a>(reader: &mut Reader<'a>) -> Option<Groups<'a>> {
    Ordered::read(reader, |reader| reader.raw().map(Slot::Raw))
}

/// The caps and constant texts of a call.
pub struct Rules<'a> {
    pub kernel: &'a AggregateKernel,
    pub overflow: &'a str,
    pub overflow_series: &'a str,
    pub max_attribute_keys: usize,
    pub max_attribute_values: usize,
    pub max_series: usize,
}

impl<'a> Bucket<'a> {
    fn read(raw: &'a [u8]) -> Option<Self> {
        let mut reader = Reader { buf: raw, pos: 0 };
        let mut bucket =
            Bucket { series: Ordered::new(), attributes: Ordered::new(), overflowed: 0, overflowed_series: 0 };
        let fields = reader.map_len()?;
        for _ in 0..fields {
            match reader.str()? {
                "series" => bucket.series = read_groups(&mut reader)?,
                "attributes" => {
                    bucket.attributes =
                        Ordered::read(&mut reader, |reader| Ordered::read(reader, |reader| read_groups(reader)))?
                }
                "overflowed" => bucket.overflowed = read_int(&mut reader)?,
                "overflowed_series" => bucket.overflowed_series = read_int(&mut reader)?,
                _ => return None,
            }
        }
        (reader.pos == raw.len()).then_some(bucket)
    }

    fn write(&self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        write_map_len(&mut out, BUCKET_FIELDS.len());
        write_str(&mut out, BUCKET_FIELDS[0]);
        self.series.write(&mut out, Slot::write)?;
        write_str(&mut out, BUCKET_FIELDS[1]);
        self.attributes
            .write(&mut out, |values, out| values.write(out, |by_series, out| by_series.write(out, Slot::write)))?;
        write_str(&mut out, BUCKET_FIELDS[2]);
        write_int(&mut out, self.overflowed)?;
        write_str(&mut out, BUCKET_FIELDS[3]);
        write_int(&mut out, self.overflowed_series)?;
        Some(out)
    }

    /// `BucketState.add` of one span: its series key, its grouped attributes (name and text) and values.
    fn add(&mut self, own: &'a str, attributes: &[(&'a str, &'a str)], span: &Values, rules: &Rules<'a>) -> Option<()> {
        let kernel = rules.kernel;
        // The series cap (`BucketState._admit`).
        let series = &mut self.series;
        let admitted = series.find(own).is_some()
            || own == rules.overflow_series
            || series.len() - usize::from(series.find(rules.overflow_series).is_some()) < rules.max_series;
        let key = if admitted {
            own
        } else {
            self.overflowed_series += 1;
            rules.overflow_series
        };
        let at = match series.find(key) {
            Some(at) => at,
            None => series.push(key, Slot::Live(Box::new(Aggregate::new(kernel)))),
        };
        series.entries[at].1.live()?.add(kernel, span)?;
        // Attribute groups (`BucketState._attribute_groups`); the score and floats are not among them.
        for &(name, value) in attributes {
            let attributes = &mut self.attributes;
            let values = match attributes.find(name) {
                Some(at) => at,
                None if attributes.len() >= rules.max_attribute_keys => {
                    self.overflowed += 1;
                    continue;
                }
                None => attributes.push(name, Ordered::new()),
            };
            let values = &mut attributes.entries[values].1;
            let by_series = match values.find(value) {
                Some(at) => at,
                None => {
                    let mut slot = value;
                    if values.len() >= rules.max_attribute_values {
                        self.overflowed += 1;
                        slot = rules.overflow;
                    }
                    match values.find(slot) {
                        Some(at) => at,
                        None => values.push(slot, Ordered::new()),
                    }
                }
            };
            let by_series = &mut values.entries[by_series].1;
            let group = match by_series.find(key) {
                Some(at) => at,
                None => by_series.push(key, Slot::Live(Box::new(Aggregate::new(kernel)))),
            };
            by_series.entries[group].1.live()?.add(kernel, span)?;
        }
        Some(())
    }
}

/// Spans waiting for one frozen bucket: their rows and the (name, value) text ids of their grouped attributes
/// (ids of the backlog's `Texts`).
struct Pending {
    rows: Vec<Row>,
    attributes: Vec<(u32, u32)>,
}

/// Room for a few rows from the start: a back-fill adds a row or two to each of hundreds of buckets a batch, and
/// growing each from nothing made most of its allocations.
impl Default for Pending {
    fn default() -> Self {
        Pending { rows: Vec::with_capacity(8), attributes: Vec::with_capacity(8) }
    }
}

impl Pending {
    /// Queue `span` of `batch`, its texts held in `texts` through `ids`.
    fn push(&mut self, batch: &WireBatch, span: &WireSpan, texts: &mut Texts, ids: &mut BatchIds) {
        let from = self.attributes.len();
        for &(name, grouping) in &batch.attributes[span.attributes.0..span.attributes.1] {
            if let Some(value) = grouping {
                let name = ids.string(batch, texts, name);
                let value = ids.string(batch, texts, value);
                self.attributes.push((name, value));
            }
        }
        let mut flags = 0;
        let mut flag = |present: bool, flag: u8| {
            if present {
                flags |= flag;
            }
        };
        flag(span.cost_nanos.is_some(), HAS_COST);
        flag(span.prompt.is_some(), HAS_PROMPT);
        flag(span.latency.is_some(), HAS_LATENCY);
        flag(span.latency.is_some_and(|latency| latency.int.is_some()), LATENCY_INT);
        flag(span.score.is_some(), HAS_SCORE);
        let cost = span.cost_nanos.unwrap_or(0) as u128;
        self.rows.push(Row {
            cost: [cost as u64, (cost >> 64) as u64],
            prompt: span.prompt.unwrap_or(0),
            comp: span.comp,
            total: span.total,
            latency: match span.latency {
                Some(Number { int: Some(int), .. }) => int as u64,
                Some(Number { value, .. }) => value.to_bits(),
                None => 0,
            },
            score: span.score.unwrap_or(0.0),
            series: ids.series(batch, texts, span.series),
            from: from as u32,
            count: (self.attributes.len() - from) as u32,
            status: span.status,
            flags,
        });
    }

    /// Bytes it takes, as allocated (its texts are the backlog's).
    fn memory(&self) -> usize {
        self.rows.capacity() * std::mem::size_of::<Row>()
            + self.attributes.capacity() * std::mem::size_of::<(u32, u32)>()
    }

    /// The frozen bucket `raw` with every row counted, in order; `None` for a layout not recognised.
    fn count_into(&self, raw: &[u8], rules: &Rules<'_>, texts: &Texts) -> Option<Vec<u8>> {
        let mut bucket = Bucket::read(raw)?;
        let mut attributes = Vec::new();
        for row in &self.rows {
            attributes.clear();
            let from = row.from as usize;
            let grouped = &self.attributes[from..from + row.count as usize];
            attributes.extend(grouped.iter().map(|&(name, value)| (texts.get(name), texts.get(value))));
            bucket.add(texts.get(row.series), &attributes, &row.values(), rules)?;
        }
        bucket.write()
    }

    /// Give back the rows' uses of their texts (they are counted or dropped).
    fn release(&self, texts: &mut Texts) {
        for row in &self.rows {
            texts.release(row.series);
        }
        for &(name, value) in &self.attributes {
            texts.release(name);
            texts.release(value);
        }
    }
}

/// Not an id yet (`BatchIds`).
const UNSEEN: u32 = u32::MAX;

/// A batch's series and attribute texts as ids of the backlog's `Texts`, each looked up once a batch: a
/// back-fill's batch spreads over hundreds of buckets, and a hash lookup a text a span made a cache miss or more.
struct BatchIds {
    series: Vec<u32>,
    strings: Vec<u32>,
}

impl BatchIds {
    fn new(batch: &WireBatch) -> Self {
        BatchIds { series: vec![UNSEEN; batch.series.len()], strings: vec![UNSEEN; batch.strings.len()] }
    }

    /// The id of the batch's series `at`, held once more.
    fn series(&mut self, batch: &WireBatch, texts: &mut Texts, at: u32) -> u32 {
        Self::held(&mut self.series[at as usize], batch.text(batch.series[at as usize]), texts)
    }

    /// The id of the batch's attribute text `at`, held once more.
    fn string(&mut self, batch: &WireBatch, texts: &mut Texts, at: u32) -> u32 {
        Self::held(&mut self.strings[at as usize], batch.text(batch.strings[at as usize]), texts)
    }

    fn held(known: &mut u32, text: &str, texts: &mut Texts) -> u32 {
        if *known == UNSEEN {
            *known = texts.id(text);
        }
        texts.hold(*known);
        *known
    }
}

/// The texts of the waiting rows (series keys, attribute names and values), each kept once for the whole
/// backlog with the number of uses the rows make of it, and dropped with its last use (a back-fill whose attribute
/// values never repeat, request ids, holds only the waiting spans' texts). A freed id is given again.
#[derive(Default)]
struct Texts {
    /// By id: the text (`None`: a free id) and its uses.
    all: Vec<(Option<Arc<str>>, u32)>,
    ids: FxHashMap<Arc<str>, u32>,
    free: Vec<u32>,
    bytes: usize,
}

impl Texts {
    /// The id of `text` (a new one has no use yet: `hold` it).
    fn id(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        let kept: Arc<str> = Arc::from(text);
        let id = match self.free.pop() {
            Some(id) => {
                self.all[id as usize] = (Some(Arc::clone(&kept)), 0);
                id
            }
            None => {
                self.all.push((Some(Arc::clone(&kept)), 0));
                (self.all.len() - 1) as u32
            }
        };
        self.ids.insert(kept, id);
        self.bytes += text.len() + 2 * std::mem::size_of::<usize>(); // with its counts
        id
    }

    fn hold(&mut self, id: u32) {
        self.all[id as usize].1 += 1;
    }

    fn release(&mut self, id: u32) {
        let slot = &mut self.all[id as usize];
        slot.1 -= 1;
        if slot.1 == 0 {
            if let Some(text) = slot.0.take() {
                self.ids.remove(&*text);
                self.bytes -= text.len() + 2 * std::mem::size_of::<usize>();
                self.free.push(id);
            }
        }
    }

    fn get(&self, id: u32) -> &str {
        self.all[id as usize].0.as_deref().unwrap_or_default()
    }

    fn memory(&self) -> usize {
        self.bytes
            + self.all.capacity() * std::mem::size_of::<(Option<Arc<str>>, u32)>()
            + self.free.capacity() * std::mem::size_of::<u32>()
            + self.ids.capacity() * (std::mem::size_of::<(Arc<str>, u32)>() + 1)
    }

    fn clear(&mut self) {
        *self = Texts::default();
    }
}

/// Back-filled spans waiting for their frozen buckets (``Timeline._queue``), kept as compact rows rather than
/// their batches: a bucket is counted in one pass over its rows, which sit together in memory (a batch's spans
/// spread over hundreds of buckets; reading them back from the batches made most of the pass cache misses).
///
/// Queueing also counts the spans in the timeline's ``versions`` (a dict of change counts by key): the bucket's
/// ``(kind, start)``, its hour's ``(hour_ms, hour)`` and its day's ``(day_ms, day)``, as ``Timeline._counted`` of
/// each of its minutes does. A back-fill's batch reaches some 600 hours: that bookkeeping in Python cost as much
/// as queueing the rows.
#[pyclass(module = "tokentrace._native")]
pub struct Backlog {
    kernel: Py<BucketKernel>,
    pending: FxHashMap<(i64, i64), Pending>,
    texts: Texts,
    /// Rows in `pending`, all buckets'.
    rows: usize,
    versions: Py<PyDict>,
    /// The key tuples of `versions` bumped lately, made once each: a back-fill bumps the same thousand or so for
    /// each of its batches (at most `KEPT_KEYS`, some 2 MB; then made anew).
    keys: FxHashMap<(i64, i64), Py<PyTuple>>,
    hour_ms: i64,
    day_ms: i64,
}

/// Key tuples a `Backlog` keeps: 30 days of hours and days and 2 of minutes are some 4,500.
const KEPT_KEYS: usize = 16_384;

impl Backlog {
    /// Count the spans just queued for each bucket in `versions` (buckets in the order queued; days after, in
    /// order of first appearance) and in `rows`; returns how many.
    fn count_versions(&mut self, py: Python<'_>, queued: &[((i64, i64), usize)]) -> PyResult<usize> {
        let versions = self.versions.bind(py);
        let keys = &mut self.keys;
        if keys.len() > KEPT_KEYS {
            keys.clear();
        }
        let mut bump = |first: i64, second: i64, count: usize| -> PyResult<()> {
            let key = match keys.entry((first, second)) {
                std::collections::hash_map::Entry::Occupied(kept) => kept.into_mut(),
                std::collections::hash_map::Entry::Vacant(new) => {
                    new.insert(PyTuple::new(py, [first, second])?.unbind())
                }
            }
            .bind(py);
            let now = match versions.get_item(key)? {
                Some(version) => version.extract::<i64>()?,
                None => 0,
            };
            versions.set_item(key, now + count as i64)
        };
        let mut days: Vec<(i64, usize)> = Vec::new();
        let mut added = 0;
        for &((kind, start), count) in queued {
            bump(kind, start, count)?;
            bump(self.hour_ms, start - start.rem_euclid(self.hour_ms), count)?;
            let day = start - start.rem_euclid(self.day_ms);
            match days.iter_mut().find(|(seen, _)| *seen == day) {
                Some(seen) => seen.1 += count,
                None => days.push((day, count)),
            }
            added += count;
        }
        for (day, count) in days {
            bump(self.day_ms, day, count)?;
        }
        self.rows += added;
        Ok(added)
    }
}

impl Backlog {
    /// Queue the spans of each of `groups` (`(start, from, to)`: members of `grouping`) for the bucket
    /// `(kind, start)`, minute by minute in the order of the group's members; returns how many.
    fn queue_groups(
        &mut self,
        py: Python<'_>,
        batch: &WireBatch,
        kind: i64,
        grouping: &Grouping,
        groups: impl Iterator<Item = (i64, usize, usize)>,
    ) -> PyResult<usize> {
        let mut ids = BatchIds::new(batch);
        let mut queued = Vec::with_capacity(groups.size_hint().0);
        for (start, from, to) in groups {
            let minutes = grouping.members[from..to].iter().map(|member| &member.0);
            queued.push(self.queue_bucket(batch, &mut ids, (kind, start), minutes));
        }
        self.count_versions(py, &queued)
    }

    /// Queue the spans of `batch` in each of `minutes`, in that order, for the bucket `key`: the key and how many.
    fn queue_bucket<'m>(
        &mut self,
        batch: &WireBatch,
        ids: &mut BatchIds,
        key: (i64, i64),
        minutes: impl Iterator<Item = &'m i64>,
    ) -> ((i64, i64), usize) {
        let pending = self.pending.entry(key).or_default();
        let before = pending.rows.len();
        for minute in minutes {
            for span in batch.spans_in(std::slice::from_ref(minute)) {
                pending.push(batch, span, &mut self.texts, ids);
            }
        }
        (key, pending.rows.len() - before)
    }
}

#[pymethods]
impl Backlog {
    #[new]
    fn new(kernel: Py<BucketKernel>, versions: Py<PyDict>, hour_ms: i64, day_ms: i64) -> PyResult<Self> {
        if hour_ms <= 0 || day_ms <= 0 {
            return Err(pyo3::exceptions::PyValueError::new_err("hour_ms and day_ms must be positive"));
        }
        Ok(Backlog {
            kernel,
            pending: FxHashMap::default(),
            texts: Texts::default(),
            rows: 0,
            versions,
            keys: FxHashMap::default(),
            hour_ms,
            day_ms,
        })
    }

    /// Queue the spans of ``batch`` for buckets: ``plan`` lists ``(kind, start, minutes)``, the bucket's key
    /// and the batch's minutes that count in it, whose spans are queued minute by minute in that order (as
    /// ``Timeline.add_many`` counts a batch). Returns how many were queued.
    fn add(
        &mut self,
        py: Python<'_>,
        batch: &Bound<'_, WireBatch>,
        plan: Vec<(i64, i64, Vec<i64>)>,
    ) -> PyResult<usize> {
        let batch = batch.get();
        let mut ids = BatchIds::new(batch);
        let mut queued = Vec::with_capacity(plan.len());
        for (kind, start, minutes) in plan {
            queued.push(self.queue_bucket(batch, &mut ids, (kind, start), minutes.iter()));
        }
        self.count_versions(py, &queued)
    }

    /// Queue all the spans of ``batch`` in each of ``hours`` (spans of ``size`` ms, ``WireBatch.split_settled``'s)
    /// for the bucket ``(kind, hour)``: ``add`` of each with the hour's minutes in order of first appearance.
    fn add_whole(
        &mut self,
        py: Python<'_>,
        batch: &Bound<'_, WireBatch>,
        kind: i64,
        size: i64,
        hours: Vec<i64>,
    ) -> PyResult<usize> {
        let batch = batch.get();
        let grouping = batch.grouping(size);
        let ranges: FxHashMap<i64, (usize, usize)> =
            grouping.groups.iter().map(|&(start, from, to)| (start, (from, to))).collect();
        let groups = hours.into_iter().map(|hour| {
            let (from, to) = ranges.get(&hour).copied().unwrap_or_default();
            (hour, from, to)
        });
        self.queue_groups(py, batch, kind, &grouping, groups)
    }

    /// ``WireBatch.split_settled`` and ``add_whole`` of the settled groups, in one call: returns how many spans
    /// were queued and the other groups (no list of the settled ones in between, and the grouping made once).
    #[allow(clippy::too_many_arguments)]
    fn add_settled(
        &mut self,
        py: Python<'_>,
        batch: &Bound<'_, WireBatch>,
        kind: i64,
        size: i64,
        hot_from: i64,
        fine: &Bound<'_, PyDict>,
        coarse: &Bound<'_, PyDict>,
        frozen: &Bound<'_, PyType>,
    ) -> PyResult<(usize, Vec<Group>)> {
        let batch = batch.get();
        let (grouping, whole, others) = batch.settled(size, hot_from, fine, coarse, frozen)?;
        let groups = whole.into_iter().map(|at| grouping.groups[at]);
        Ok((self.queue_groups(py, batch, kind, &grouping, groups)?, others))
    }

    /// Spans queued for the bucket ``(kind, start)``.
    fn queued(&self, kind: i64, start: i64) -> usize {
        self.pending.get(&(kind, start)).map_or(0, |pending| pending.rows.len())
    }

    /// Spans queued, all buckets'.
    fn __len__(&self) -> usize {
        self.rows
    }

    /// Bytes the queued spans take (rows, their texts and the tables holding them), as allocated.
    fn memory(&self) -> usize {
        let tables = self.pending.capacity() * (std::mem::size_of::<((i64, i64), Pending)>() + 1);
        tables + self.pending.values().map(Pending::memory).sum::<usize>() + self.texts.memory()
    }

    /// ``(spans, kind, start)`` of each bucket with spans queued, the most first (then by key); with ``holding``,
    /// only the first buckets that hold that many spans between them (a pass applies those: the background task
    /// asks at each of its slices).
    #[pyo3(signature = (holding=None))]
    fn fullest(&self, holding: Option<usize>) -> Vec<(usize, i64, i64)> {
        let mut buckets: Vec<(usize, i64, i64)> =
            self.pending.iter().map(|(&(kind, start), pending)| (pending.rows.len(), kind, start)).collect();
        buckets.sort_unstable_by(|a, b| b.0.cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
        if let Some(holding) = holding {
            let mut held = 0;
            let first = buckets.iter().take_while(|bucket| {
                let more = held < holding;
                held += bucket.0;
                more
            });
            buckets.truncate(first.count());
        }
        buckets
    }

    /// The frozen bucket ``raw`` (a ``BucketState`` as msgspec encodes it) with the spans queued for
    /// ``(kind, start)`` counted (as ``BucketState.add`` of each in order: caps, overflow counts, dict order),
    /// encoded as msgspec would: the aggregates no span reaches copied as their bytes. ``None``, with the spans
    /// still queued, for a layout not recognised (another build's, or an int beyond 64 bits).
    #[allow(clippy::too_many_arguments)]
    fn count_into<'py>(
        &mut self,
        py: Python<'py>,
        kind: i64,
        start: i64,
        raw: PyBuffer<u8>,
        max_attribute_keys: usize,
        max_attribute_values: usize,
        max_series: usize,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let Some(pending) = self.pending.get(&(kind, start)) else {
            return Ok(None);
        };
        if !raw.is_c_contiguous() {
            return Ok(None);
        }
        // SAFETY: a C-contiguous buffer of `len_bytes` bytes, held (alive and unchanged: msgspec.Raw and bytes
        // are immutable) by `raw` for the whole call.
        let bytes = unsafe { std::slice::from_raw_parts(raw.buf_ptr() as *const u8, raw.len_bytes()) };
        let kernel = self.kernel.get();
        let overflow = kernel.overflow.bind(py).to_str()?;
        let overflow_series = [overflow; 3].join(&kernel.sep);
        let rules = Rules {
            kernel: kernel.aggregates.get(),
            overflow,
            overflow_series: &overflow_series,
            max_attribute_keys,
            max_attribute_values,
            max_series,
        };
        let Some(counted) = pending.count_into(bytes, &rules, &self.texts) else {
            return Ok(None);
        };
        self.discard(kind, start);
        Ok(Some(PyBytes::new(py, &counted)))
    }

    /// Drop what waits for ``(kind, start)`` (the bucket was replaced or retired whole); returns how many spans.
    fn discard(&mut self, kind: i64, start: i64) -> usize {
        let Some(pending) = self.pending.remove(&(kind, start)) else {
            return 0;
        };
        pending.release(&mut self.texts);
        self.rows -= pending.rows.len();
        if self.rows == 0 {
            self.texts.clear(); // its tables too, at their largest until then
        }
        pending.rows.len()
    }

    /// Drop everything queued.
    fn clear(&mut self) {
        self.pending.clear();
        self.texts.clear();
        self.rows = 0;
    }
}
