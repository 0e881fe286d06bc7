//! A span-topic message decoded straight into what a worker needs of it, no Python object per span:
//! `Applier._apply_one` (tokentrace/processors/state.py) for the usual message, whose Python code stays the
//! reference.
//!
//! The usual message is this build's wire format (`encode_wire`: a map `{"v": 1, "spans": [...]}` whose spans
//! are maps of their field names) where every span is one that `Span.__post_init__`'s compiled check passes
//! (`span_check.rs`: both ids, ASCII printable names, int token counts, normalised timestamps), has a
//! `started_at`, counts inside the message's time bounds in a bucket past the retired horizon, and needs no
//! price. Such a message becomes a `WireBatch`: per span, what the aggregates read (`aggregate::Row`), its
//! series and attribute groups, its bucket, and its JSON as msgspec encodes the stamped `Span` (for the trace
//! index). Anything else, valid or not (an unknown or repeated field, a float token count, a value of another
//! type, a span to price or to reject), makes `decode_batch` return `None` and the Python code decide.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PySet, PyType};

use std::sync::OnceLock;

use rustc_hash::FxHashMap;

use crate::aggregate::Number;
use crate::msgpack::{Reader, Value};
use crate::slots::{field_index, SPAN_FIELDS};
use crate::span_check::{canonical, format_into, printable_ascii, rounded_latency, LAST_MS};

/// How `encode_wire` starts every message, then the key of its span array.
const PREFIX: &[u8] = b"\x82\xa1v\x01\xa5spans";
const EXACT_INT: u64 = 1 << 53;
const NANO: f64 = 1_000_000_000.0;
const SCORE_KEY: &str = "eval.score";
/// Later than any bucket.
const NEVER: i64 = 1 << 62;

/// A number field as the span holds it.
#[derive(Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    fn value(self) -> f64 {
        match self {
            Num::Int(int) => int as f64,
            Num::Float(value) => value,
        }
    }

    fn number(self) -> Number {
        match self {
            Num::Int(int) => Number { value: int as f64, int: Some(int) },
            Num::Float(value) => Number { value, int: None },
        }
    }
}

/// `None`, or an int or float that a float holds exactly (`span_check::exact_number`).
fn optional_number(value: Value<'_>) -> Option<Option<Num>> {
    match value {
        Value::Nil => Some(None),
        Value::Int(int) if int.unsigned_abs() <= EXACT_INT => Some(Some(Num::Int(int))),
        Value::Float(float) => Some(Some(Num::Float(float))),
        _ => None,
    }
}

/// `None` or an int token count in bounds.
fn token_count(value: Value<'_>, max_tokens: i64) -> Option<Option<i64>> {
    match value {
        Value::Nil => Some(None),
        Value::Int(int) if (0..=max_tokens).contains(&int) => Some(Some(int)),
        _ => None,
    }
}

/// `None`, or a number in `0..=high`.
fn bounded(value: Value<'_>, high: f64) -> Option<Option<Num>> {
    let number = optional_number(value)?;
    match number {
        Some(n) if !(0.0..=high).contains(&n.value()) => None,
        _ => Some(number),
    }
}

/// A piece of `WireBatch.text`: `(start, end)`.
pub type Text = (usize, usize);

/// One accepted span.
pub struct WireSpan {
    pub trace_id: (usize, usize),
    pub span_id: (usize, usize),
    pub start: i64,
    /// Its `ended_at` (as given, or as `Span.stamp` fills it), in epoch ms.
    pub end: i64,
    pub bucket: i64,
    pub status: u8,
    pub cost_nanos: Option<i128>,
    pub prompt: Option<i64>,
    pub comp: i64,
    pub total: i64,
    pub latency: Option<Number>,
    pub score: Option<f64>,
    /// `model SEP provider SEP caller`: its index in `WireBatch.series`.
    pub series: u32,
    /// Its attributes in `WireBatch.attributes`, as `(start, end)`.
    pub attributes: (usize, usize),
    /// The span's JSON line in `WireBatch.json` (without its newline).
    pub json: (usize, usize),
    /// The span's own MessagePack in the message it was read from or written to, as `(start, end)`.
    pub encoded: (usize, usize),
    /// Its `name`, and whether it is a root (no `parent_span_id`): what names its trace.
    pub name: Text,
    pub root: bool,
}

/// Buckets grouped by a longer span (`WireBatch.split_settled`): its start, the buckets' starts, their spans,
/// their places among the batch's buckets, and the spans of all.
pub(crate) type Group = (i64, Vec<i64>, Vec<usize>, Vec<usize>, usize);

/// `WireBatch.grouping`: per group `(start, from, to)`, a range of `members`, which lists each bucket as
/// `(start, spans, place among the batch's buckets)`.
pub struct Grouping {
    pub groups: Vec<(i64, usize, usize)>,
    pub members: Vec<(i64, usize, usize)>,
}

/// The spans' indices sorted by bucket, and each bucket's range in them.
type BucketIndex = (Vec<u32>, FxHashMap<i64, (usize, usize)>);

/// The accepted spans of one message (see the module docstring).
#[pyclass(frozen, module = "tokentrace._native")]
pub struct WireBatch {
    pub spans: Vec<WireSpan>,
    /// The spans' ids, series and attribute texts.
    pub text: String,
    /// Every span's attributes but the score, in order: the name and the text it groups by (`None` for a
    /// float: a measurement, not a group), as indices in `strings`.
    pub attributes: Vec<(u32, Option<u32>)>,
    /// The distinct attribute names and texts of the batch, each once.
    pub strings: Vec<Text>,
    /// The distinct series of the batch, each once.
    pub series: Vec<Text>,
    /// One JSON span per line, each ending in `\n`.
    pub json: Vec<u8>,
    /// The spans' indices sorted by bucket (in order within each), and each bucket's range of them (`spans_in`),
    /// made on first use.
    by_bucket: OnceLock<BucketIndex>,
}

/// The limits of `Span.__post_init__`, the message's bounds and the worker's settings.
pub struct Limits<'a> {
    pub max_tokens: i64,
    pub max_cost: f64,
    pub max_latency: f64,
    pub max_score: f64,
    pub oldest_ms: i64,
    pub latest_ms: i64,
    pub bucket_ms: i64,
    pub horizon_ms: i64,
    pub priced: bool,
    pub sep: &'a str,
    /// The spans are the caller's own, stamped in memory: a span without `latency_ms` holds none there (its
    /// decoded copy would derive one from the stamped timestamps), so it is left to the Python code; and no
    /// JSON is written (`lines` is then empty: the caller has the spans).
    pub live: bool,
}

impl<'a> Limits<'a> {
    /// The limits in the order `decode_batch` and `compile_spans` take them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        oldest_ms: i64,
        latest_ms: i64,
        bucket_ms: i64,
        horizon_ms: i64,
        priced: bool,
        max_tokens: i64,
        max_cost: f64,
        max_latency: f64,
        max_score: f64,
        sep: &'a str,
        live: bool,
    ) -> Self {
        Limits {
            max_tokens,
            max_cost,
            max_latency,
            max_score,
            oldest_ms,
            latest_ms,
            bucket_ms,
            horizon_ms,
            priced,
            sep,
            live,
        }
    }
}

/// The fields of one span as read (before any check).
#[derive(Default)]
pub(crate) struct Fields<'a> {
    pub(crate) trace_id: Option<&'a str>,
    pub(crate) span_id: Option<&'a str>,
    pub(crate) parent_span_id: Option<&'a str>,
    pub(crate) name: Option<&'a str>,
    pub(crate) model: Option<&'a str>,
    pub(crate) provider: Option<&'a str>,
    pub(crate) prompt: Option<Value<'a>>,
    pub(crate) comp: Option<Value<'a>>,
    pub(crate) total: Option<Value<'a>>,
    pub(crate) cost: Option<Value<'a>>,
    pub(crate) latency: Option<Value<'a>>,
    pub(crate) status: Option<&'a str>,
    pub(crate) error: Option<&'a str>,
    pub(crate) caller: Option<&'a str>,
    pub(crate) started_at: Option<&'a str>,
    pub(crate) ended_at: Option<&'a str>,
    pub(crate) attributes: Vec<(&'a str, Value<'a>)>,
}

/// Where a span's field values are read from, as its fields come (a message's MessagePack, a request's JSON).
pub(crate) trait FieldSource<'a> {
    fn text(&mut self) -> Option<&'a str>;
    /// A string, or nil (None).
    fn optional_text(&mut self) -> Option<Option<&'a str>>;
    fn scalar(&mut self) -> Option<Value<'a>>;
    /// The attribute map's pairs, each read with `Fields::push_attribute`.
    fn attributes(&mut self) -> Option<Vec<(&'a str, Value<'a>)>>;
}

impl<'a> Fields<'a> {
    /// Read the value of the field named `key` from `source` into its place; `None` for a field that is not the
    /// span's or that came before (`seen`: a bit per field read). msgspec ignores an unknown field and keeps the
    /// last of a repeated one: the Python code decides those.
    pub(crate) fn read_field(&mut self, key: &str, seen: &mut u32, source: &mut impl FieldSource<'a>) -> Option<()> {
        let index = field_index(key)?;
        if *seen & (1 << index) != 0 {
            return None;
        }
        *seen |= 1 << index;
        match index {
            0 => self.trace_id = Some(source.text()?),
            1 => self.span_id = Some(source.text()?),
            2 => self.parent_span_id = source.optional_text()?,
            3 => self.name = Some(source.text()?),
            4 => self.model = Some(source.text()?),
            5 => self.provider = Some(source.text()?),
            6 => self.prompt = Some(source.scalar()?),
            7 => self.comp = Some(source.scalar()?),
            8 => self.total = Some(source.scalar()?),
            9 => self.cost = Some(source.scalar()?),
            10 => self.latency = Some(source.scalar()?),
            11 => self.status = Some(source.text()?),
            12 => self.error = source.optional_text()?,
            13 => self.caller = Some(source.text()?),
            14 => self.started_at = source.optional_text()?,
            15 => self.ended_at = source.optional_text()?,
            _ => self.attributes = source.attributes()?,
        }
        Some(())
    }

    /// Add an attribute read from a span's map; `None` for nil (not an attribute value) or a repeated name.
    pub(crate) fn push_attribute(
        attributes: &mut Vec<(&'a str, Value<'a>)>,
        name: &'a str,
        value: Value<'a>,
    ) -> Option<()> {
        if matches!(value, Value::Nil) || attributes.iter().any(|(seen, _)| *seen == name) {
            return None;
        }
        attributes.push((name, value));
        Some(())
    }
}

impl<'a> FieldSource<'a> for Reader<'a> {
    fn text(&mut self) -> Option<&'a str> {
        self.str()
    }

    fn optional_text(&mut self) -> Option<Option<&'a str>> {
        self.optional_str()
    }

    fn scalar(&mut self) -> Option<Value<'a>> {
        self.value()
    }

    fn attributes(&mut self) -> Option<Vec<(&'a str, Value<'a>)>> {
        let n = self.map_len()?;
        let mut attributes = Vec::with_capacity(n);
        for _ in 0..n {
            let name = self.str()?;
            Fields::push_attribute(&mut attributes, name, self.value()?)?;
        }
        Some(attributes)
    }
}

pub(crate) fn read_span<'a>(reader: &mut Reader<'a>) -> Option<Fields<'a>> {
    let mut fields = Fields::default();
    let mut seen = 0u32;
    for _ in 0..reader.map_len()? {
        let key = reader.str()?;
        fields.read_field(key, &mut seen, reader)?;
    }
    Some(fields)
}

/// `"text"` as msgspec's JSON encoder writes it.
fn json_str(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    if !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    out.push(b'"');
    let mut from = 0;
    for (at, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[from..at]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0x0f)]);
        } else {
            out.extend_from_slice(escape);
        }
        from = at + 1;
    }
    out.extend_from_slice(&bytes[from..]);
    out.push(b'"');
}

fn json_int(out: &mut Vec<u8>, value: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// A finite float as msgspec writes it: the shortest digits that read back (ryu's, laid out as ryu does).
fn json_float(out: &mut Vec<u8>, value: f64) {
    out.extend_from_slice(ryu::Buffer::new().format_finite(value).as_bytes());
}

fn json_num(out: &mut Vec<u8>, value: Option<Num>) {
    match value {
        None => out.extend_from_slice(b"null"),
        Some(Num::Int(int)) => json_int(out, int),
        Some(Num::Float(float)) => json_float(out, float),
    }
}

fn json_optional_str(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => out.extend_from_slice(b"null"),
        Some(text) => json_str(out, text),
    }
}

fn json_value(out: &mut Vec<u8>, value: Value<'_>) {
    match value {
        Value::Nil => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Int(int) => json_int(out, int),
        Value::Big(int) => json_int(out, int),
        Value::Float(float) => json_float(out, float),
        Value::Str(text) => json_str(out, text),
    }
}

fn push_text(arena: &mut String, parts: &[&str]) -> Text {
    let start = arena.len();
    for part in parts {
        arena.push_str(part);
    }
    (start, arena.len())
}

/// The distinct texts of a batch being decoded, so that adding its spans looks each up once, not per span.
#[derive(Default)]
pub(crate) struct Interner {
    strings: FxHashMap<Box<str>, u32>,
    series: FxHashMap<Box<str>, u32>,
    buffer: String,
}

impl Interner {
    fn string(&mut self, batch: &mut WireBatch, text: &str) -> u32 {
        if let Some(&at) = self.strings.get(text) {
            return at;
        }
        let at = batch.strings.len() as u32;
        batch.strings.push(push_text(&mut batch.text, &[text]));
        self.strings.insert(text.into(), at);
        at
    }

    fn series(&mut self, batch: &mut WireBatch, parts: &[&str]) -> u32 {
        self.buffer.clear();
        for part in parts {
            self.buffer.push_str(part);
        }
        if let Some(&at) = self.series.get(self.buffer.as_str()) {
            return at;
        }
        let at = batch.series.len() as u32;
        batch.series.push(push_text(&mut batch.text, &[&self.buffer]));
        self.series.insert(self.buffer.as_str().into(), at);
        at
    }
}

/// Check, derive, stamp and route one span; `None` unless it is the usual, accepted span.
pub(crate) fn accept(
    fields: &Fields<'_>,
    limits: &Limits<'_>,
    batch: &mut WireBatch,
    interner: &mut Interner,
) -> Option<()> {
    // Span.__post_init__'s compiled check (span_check::check_span), on the values as decoded.
    let (trace_id, span_id) = (fields.trace_id?, fields.span_id?);
    if trace_id.is_empty() || span_id.is_empty() {
        return None; // __post_init__ generates the id
    }
    let model = fields.model?;
    let (provider, caller) = (fields.provider.unwrap_or(""), fields.caller.unwrap_or(""));
    if model.is_empty() || !printable_ascii(model) || !printable_ascii(provider) || !printable_ascii(caller) {
        return None;
    }
    let status = match fields.status.unwrap_or("ok") {
        "ok" => 0,
        "error" => 1,
        "timeout" => 2,
        _ => return None, // not a Status: msgspec refuses it
    };
    let max_tokens = limits.max_tokens;
    let prompt = token_count(fields.prompt.unwrap_or(Value::Nil), max_tokens)?;
    let comp = token_count(fields.comp.unwrap_or(Value::Nil), max_tokens)?;
    let total = token_count(fields.total.unwrap_or(Value::Nil), max_tokens)?;
    if prompt.is_none() && comp.is_none() && total.is_none() {
        return None;
    }
    if limits.live && matches!(fields.latency, None | Some(Value::Nil)) {
        return None;
    }
    let cost = bounded(fields.cost.unwrap_or(Value::Nil), limits.max_cost)?;
    let mut latency = bounded(fields.latency.unwrap_or(Value::Nil), limits.max_latency)?;
    let start = canonical(fields.started_at?)?; // no started_at: stamped with the arrival time, in Python
    let ended = match fields.ended_at {
        None => None,
        Some(text) => Some(canonical(text).filter(|ms| *ms <= LAST_MS)?),
    };
    if let Some(ended) = ended {
        if ended < start {
            return None;
        }
        if latency.is_none() {
            if (ended - start) as f64 > limits.max_latency {
                return None;
            }
            latency = Some(Num::Int(ended - start));
        }
    }
    let mut score = None;
    let first_attribute = batch.attributes.len();
    for &(name, value) in &fields.attributes {
        if name == SCORE_KEY {
            let number = match value {
                Value::Int(int) if int.unsigned_abs() <= EXACT_INT => int as f64,
                Value::Float(float) => float,
                _ => return None,
            };
            if !(-limits.max_score..=limits.max_score).contains(&number) {
                return None;
            }
            score = Some(number);
            continue;
        }
        let grouping = match value {
            Value::Str(text) => Some(interner.string(batch, text)),
            Value::Bool(flag) => Some(interner.string(batch, if flag { "true" } else { "false" })),
            Value::Int(int) => Some(interner.string(batch, itoa::Buffer::new().format(int))),
            Value::Big(int) => Some(interner.string(batch, itoa::Buffer::new().format(int))),
            Value::Float(float) if float.is_finite() => None,
            Value::Float(_) | Value::Nil => return None, // msgspec writes a non-finite float as null
        };
        let name = interner.string(batch, name);
        batch.attributes.push((name, grouping));
    }
    let attributes = (first_attribute, batch.attributes.len());
    let total = total.unwrap_or(prompt.unwrap_or(0) + comp.unwrap_or(0));

    // Span.stamp: fill ended_at from the start and the latency (Python's round).
    let end = match ended {
        Some(ended) => ended,
        None => {
            let rounded = match latency {
                None => 0,
                Some(Num::Float(value)) => rounded_latency(Value::Float(value))?,
                Some(Num::Int(value)) => rounded_latency(Value::Int(value))?,
            };
            (start + rounded).min(LAST_MS)
        }
    };

    // Applier._route: bounds, price and horizon, decided by the message alone.
    if start < limits.oldest_ms || start > limits.latest_ms || end > limits.latest_ms {
        return None; // too old, or starting or ending too far in the future: rejected in Python
    }
    if limits.priced && cost.is_none() && (prompt.is_some() || comp.is_some()) {
        return None;
    }
    let bucket = start - start.rem_euclid(limits.bucket_ms);
    if bucket < limits.horizon_ms {
        return None;
    }

    // What the aggregates read (aggregate::AggregateKernel::row).
    let cost_nanos = match cost {
        None => None,
        Some(Num::Int(int)) => {
            let product = i128::from(int) * 1_000_000_000;
            if product.unsigned_abs() > u128::from(EXACT_INT) {
                return None;
            }
            Some(((product as f64) + 0.5).trunc() as i128)
        }
        Some(Num::Float(value)) => Some((value * NANO + 0.5).trunc() as i128),
    };

    // msgspec's JSON of the stamped span, field by field in the struct's order (not for a live batch: the
    // caller has the spans themselves).
    let json = if limits.live {
        (0, 0)
    } else {
        let out = &mut batch.json;
        let from = out.len();
        out.extend_from_slice(b"{\"trace_id\":");
        json_str(out, trace_id);
        out.extend_from_slice(b",\"span_id\":");
        json_str(out, span_id);
        out.extend_from_slice(b",\"parent_span_id\":");
        json_optional_str(out, fields.parent_span_id);
        out.extend_from_slice(b",\"name\":");
        json_str(out, fields.name.unwrap_or(""));
        out.extend_from_slice(b",\"model\":");
        json_str(out, model);
        out.extend_from_slice(b",\"provider\":");
        json_str(out, provider);
        out.extend_from_slice(b",\"prompt_tokens\":");
        json_num(out, prompt.map(Num::Int));
        out.extend_from_slice(b",\"comp_tokens\":");
        json_num(out, comp.map(Num::Int));
        out.extend_from_slice(b",\"total_tokens\":");
        json_int(out, total);
        out.extend_from_slice(b",\"cost_usd\":");
        json_num(out, cost);
        out.extend_from_slice(b",\"latency_ms\":");
        json_num(out, latency);
        out.extend_from_slice(b",\"status\":");
        json_str(out, ["ok", "error", "timeout"][usize::from(status)]);
        out.extend_from_slice(b",\"error\":");
        json_optional_str(out, fields.error);
        out.extend_from_slice(b",\"caller\":");
        json_str(out, caller);
        out.extend_from_slice(b",\"started_at\":");
        json_str(out, fields.started_at?);
        out.extend_from_slice(b",\"ended_at\":");
        let mut stamped = [0u8; 24];
        let ended_text = match fields.ended_at {
            Some(text) => text,
            None => {
                format_into(end, &mut stamped);
                // SAFETY: format_into writes ASCII digits and separators only.
                unsafe { std::str::from_utf8_unchecked(&stamped) }
            }
        };
        json_str(out, ended_text);
        out.extend_from_slice(b",\"attributes\":{");
        for (at, &(name, value)) in fields.attributes.iter().enumerate() {
            if at > 0 {
                out.push(b',');
            }
            json_str(out, name);
            out.push(b':');
            json_value(out, value);
        }
        out.extend_from_slice(b"}}");
        let json = (from, out.len());
        out.push(b'\n');
        json
    };

    let arena = &mut batch.text;
    let (trace_id, span_id) = (push_text(arena, &[trace_id]), push_text(arena, &[span_id]));
    let name = push_text(arena, &[fields.name.unwrap_or("")]);
    let series = interner.series(batch, &[model, limits.sep, provider, limits.sep, caller]);
    batch.spans.push(WireSpan {
        trace_id,
        span_id,
        start,
        end,
        bucket,
        status,
        cost_nanos,
        prompt,
        comp: comp.unwrap_or(0),
        total,
        latency: latency.map(Num::number),
        score,
        series,
        attributes,
        json,
        encoded: (0, 0),
        name,
        root: fields.parent_span_id.is_none(),
    });
    Some(())
}

/// The least int key of `buckets`, or later than any bucket when it has none.
fn first_key(buckets: &Bound<'_, PyDict>) -> PyResult<i64> {
    let mut first = NEVER;
    for (key, _) in buckets.iter() {
        first = first.min(key.extract::<i64>()?);
    }
    Ok(first)
}

impl WireBatch {
    /// `split_settled`: the grouping, the places in its groups of the settled groups, and the other groups.
    pub(crate) fn settled(
        &self,
        size: i64,
        hot_from: i64,
        fine: &Bound<'_, PyDict>,
        coarse: &Bound<'_, PyDict>,
        frozen: &Bound<'_, PyType>,
    ) -> PyResult<(Grouping, Vec<usize>, Vec<Group>)> {
        let grouping = self.grouping(size);
        let mut whole = Vec::new();
        let mut others = Vec::new();
        let mut fine_from: Option<i64> = None;
        for (at, &(start, from, to)) in grouping.groups.iter().enumerate() {
            if start < hot_from {
                if let Some(stored) = coarse.get_item(start)? {
                    if stored.get_type().is(frozen) {
                        let first = match fine_from {
                            Some(first) => first,
                            None => *fine_from.insert(first_key(fine)?),
                        };
                        if start + size <= first {
                            whole.push(at);
                            continue;
                        }
                    }
                }
            }
            let members = &grouping.members[from..to];
            others.push((
                start,
                members.iter().map(|member| member.0).collect(),
                members.iter().map(|member| member.1).collect(),
                members.iter().map(|member| member.2).collect(),
                members.iter().map(|member| member.1).sum(),
            ));
        }
        Ok((grouping, whole, others))
    }

    pub fn text(&self, range: Text) -> &str {
        &self.text[range.0..range.1]
    }

    /// The batch's buckets (`buckets`) grouped by the span of `size` ms each falls in, groups and their buckets
    /// in order of first appearance, in two arrays (no allocation per group: a back-fill's batch spans hundreds).
    pub(crate) fn grouping(&self, size: i64) -> Grouping {
        let buckets = self.buckets();
        let mut index: FxHashMap<i64, usize> = FxHashMap::default();
        let mut sizes: Vec<(i64, usize)> = Vec::new();
        let mut group_of = Vec::with_capacity(buckets.len());
        for &(bucket, _) in &buckets {
            let start = bucket - bucket.rem_euclid(size);
            let at = *index.entry(start).or_insert_with(|| {
                sizes.push((start, 0));
                sizes.len() - 1
            });
            sizes[at].1 += 1;
            group_of.push(at);
        }
        let mut groups = Vec::with_capacity(sizes.len());
        let mut next = Vec::with_capacity(sizes.len());
        let mut from = 0;
        for (start, members) in sizes {
            groups.push((start, from, from + members));
            next.push(from);
            from += members;
        }
        let mut members = vec![(0, 0, 0); buckets.len()];
        for (place, ((bucket, spans), at)) in buckets.into_iter().zip(group_of).enumerate() {
            members[next[at]] = (bucket, spans, place);
            next[at] += 1;
        }
        Grouping { groups, members }
    }

    /// The spans of the buckets starting at `starts`, in order: one lookup for a single bucket (a back-fill
    /// lists each minute apart, and a batch may hold hundreds of them).
    pub fn spans_in<'s>(&'s self, starts: &'s [i64]) -> Box<dyn Iterator<Item = &'s WireSpan> + 's> {
        if let [start] = starts {
            let (order, ranges) = self.by_bucket.get_or_init(|| {
                let mut order: Vec<u32> = (0..self.spans.len() as u32).collect();
                order.sort_by_key(|&at| self.spans[at as usize].bucket); // stable: in order within a bucket
                let mut ranges: FxHashMap<i64, (usize, usize)> = FxHashMap::default();
                for (position, &at) in order.iter().enumerate() {
                    ranges.entry(self.spans[at as usize].bucket).or_insert((position, position)).1 = position + 1;
                }
                (order, ranges)
            });
            let (from, to) = ranges.get(start).copied().unwrap_or((0, 0));
            return Box::new(order[from..to].iter().map(|&at| &self.spans[at as usize]));
        }
        Box::new(self.spans.iter().filter(move |span| starts.contains(&span.bucket)))
    }

    pub fn line(&self, span: &WireSpan) -> &[u8] {
        &self.json[span.json.0..span.json.1]
    }

    /// A batch of no span yet, with room for `spans` spans, `text` bytes of their texts and `json` of their lines.
    pub(crate) fn empty(spans: usize, text: usize, json: usize) -> WireBatch {
        WireBatch {
            spans: Vec::with_capacity(spans),
            text: String::with_capacity(text),
            attributes: Vec::new(),
            strings: Vec::new(),
            series: Vec::new(),
            json: Vec::with_capacity(json),
            by_bucket: OnceLock::new(),
        }
    }

    fn decode(payload: &[u8], limits: &Limits<'_>) -> Option<WireBatch> {
        if limits.bucket_ms <= 0 || !payload.starts_with(PREFIX) {
            return None;
        }
        let mut reader = Reader { buf: payload, pos: PREFIX.len() };
        let count = reader.array_len()?;
        let mut batch =
            WireBatch::empty(count.min(payload.len()), payload.len(), if limits.live { 0 } else { payload.len() * 2 });
        let mut interner = Interner::default();
        for _ in 0..count {
            let from = reader.pos;
            let fields = read_span(&mut reader)?;
            accept(&fields, limits, &mut batch, &mut interner)?;
            batch.spans.last_mut()?.encoded = (from, reader.pos);
        }
        (reader.pos == payload.len()).then_some(batch)
    }
}

#[pymethods]
impl WireBatch {
    fn __len__(&self) -> usize {
        self.spans.len()
    }

    /// The spans' buckets in order of first appearance: `(bucket start, spans in it)`.
    fn buckets(&self) -> Vec<(i64, usize)> {
        let mut seen: Vec<(i64, usize)> = Vec::new();
        let mut index: FxHashMap<i64, usize> = FxHashMap::default();
        for span in &self.spans {
            let at = *index.entry(span.bucket).or_insert_with(|| {
                seen.push((span.bucket, 0));
                seen.len() - 1
            });
            seen[at].1 += 1;
        }
        seen
    }

    /// The batch's buckets grouped by the span of `size` ms each falls in (`grouping`), split for
    /// `Timeline.add_batch`: the groups starting before `hot_from` whose bucket in `coarse` is frozen (its type
    /// exactly `frozen`) and that end by the first bucket of `fine` (all their spans count in that settled bucket),
    /// as `(start, spans)`; and the other groups as `(start, their buckets' starts, their spans, their places in
    /// buckets, the spans of all)`.
    #[allow(clippy::type_complexity)]
    fn split_settled(
        &self,
        size: i64,
        hot_from: i64,
        fine: &Bound<'_, PyDict>,
        coarse: &Bound<'_, PyDict>,
        frozen: &Bound<'_, PyType>,
    ) -> PyResult<(Vec<(i64, usize)>, Vec<Group>)> {
        let (grouping, whole, others) = self.settled(size, hot_from, fine, coarse, frozen)?;
        let whole = whole
            .into_iter()
            .map(|at| {
                let (start, from, to) = grouping.groups[at];
                (start, grouping.members[from..to].iter().map(|member| member.1).sum())
            })
            .collect();
        Ok((whole, others))
    }

    /// The stamped spans as msgspec's JSON, one per line (`encode_lines`).
    fn lines<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.json)
    }

    /// The time each span counts at, in order.
    fn starts(&self) -> Vec<i64> {
        self.spans.iter().map(|span| span.start).collect()
    }

    /// The distinct trace ids of the batch.
    fn trace_ids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PySet>> {
        let ids = PySet::empty(py)?;
        let mut seen: rustc_hash::FxHashSet<&str> = rustc_hash::FxHashSet::default();
        for span in &self.spans {
            let id = self.text(span.trace_id);
            if seen.insert(id) {
                ids.add(id)?;
            }
        }
        Ok(ids)
    }

    /// Whether one of `trace_ids` is a trace of the batch (the index must not evict a trace the batch adds to).
    fn touches(&self, trace_ids: Vec<String>) -> bool {
        let ids: rustc_hash::FxHashSet<&str> = self.spans.iter().map(|span| self.text(span.trace_id)).collect();
        trace_ids.iter().any(|id| ids.contains(id.as_str()))
    }
}

/// The message as a `WireBatch` when it is the usual message (see the module docstring); `None` otherwise.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (payload, oldest_ms, latest_ms, bucket_ms, horizon_ms, priced, max_tokens, max_cost, max_latency, max_score, sep, live=false))]
pub fn decode_batch(
    py: Python<'_>,
    payload: &Bound<'_, PyBytes>,
    oldest_ms: i64,
    latest_ms: i64,
    bucket_ms: i64,
    horizon_ms: i64,
    priced: bool,
    max_tokens: i64,
    max_cost: f64,
    max_latency: f64,
    max_score: f64,
    sep: &str,
    live: bool,
) -> Option<WireBatch> {
    let limits = Limits::new(
        oldest_ms,
        latest_ms,
        bucket_ms,
        horizon_ms,
        priced,
        max_tokens,
        max_cost,
        max_latency,
        max_score,
        sep,
        live,
    );
    let bytes = payload.as_bytes();
    // Reading the message takes no Python object: other threads (Faust's consumer) run meanwhile.
    py.detach(|| WireBatch::decode(bytes, &limits))
}

/// The prefix of `encode_wire`'s message: `{"v": 1, "spans": ` (the array's header follows).
pub(crate) const BATCH_PREFIX: &[u8] = b"\x82\xa1v\x01\xa5spans";

/// `value` as msgspec's MessagePack encoder writes it.
pub(crate) fn write_value(out: &mut Vec<u8>, value: Value<'_>) -> Option<()> {
    use crate::msgpack::{write_float, write_int, write_str};
    match value {
        Value::Nil => out.push(0xc0),
        Value::Bool(flag) => out.push(if flag { 0xc3 } else { 0xc2 }),
        Value::Int(int) => write_int(out, i128::from(int))?,
        Value::Big(int) => write_int(out, i128::from(int))?,
        Value::Float(float) => write_float(out, float),
        Value::Str(text) => write_str(out, text),
    }
    Some(())
}

/// `encode_wire(spans)` and `decode_batch` of it in one pass over the spans' fields (read from their slots):
/// `(message, batch)`, the message byte for byte msgspec's, the batch the one `decode_batch` makes of it; `None`
/// when any span is not exactly a registered `Span` holding plain values, or `decode_batch` would return None
/// (the caller then takes those two steps). Decoding and preparing a `POST /spans` span then encoding and
/// compiling it took 41.8k instructions, 34.6k this way (callgrind).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (spans, oldest_ms, latest_ms, bucket_ms, horizon_ms, priced, max_tokens, max_cost, max_latency, max_score, sep, *, live=false))]
pub fn compile_spans<'py>(
    py: Python<'py>,
    spans: &Bound<'py, pyo3::types::PyList>,
    oldest_ms: i64,
    latest_ms: i64,
    bucket_ms: i64,
    horizon_ms: i64,
    priced: bool,
    max_tokens: i64,
    max_cost: f64,
    max_latency: f64,
    max_score: f64,
    sep: &str,
    live: bool,
) -> Option<(Bound<'py, PyBytes>, WireBatch)> {
    use crate::msgpack::{write_array_len, write_map_len, write_str};
    use pyo3::types::PyDict;
    let limits = Limits::new(
        oldest_ms,
        latest_ms,
        bucket_ms,
        horizon_ms,
        priced,
        max_tokens,
        max_cost,
        max_latency,
        max_score,
        sep,
        live,
    );
    let slots = crate::slots::span_layout(py)?;
    let count = spans.len();
    if bucket_ms <= 0 || count == 0 {
        return None;
    }
    let keys: Vec<Vec<u8>> = SPAN_FIELDS
        .iter()
        .map(|name| {
            let mut key = Vec::new();
            write_str(&mut key, name);
            key
        })
        .collect();
    let mut out: Vec<u8> = Vec::with_capacity(count * 512 + 16);
    out.extend_from_slice(BATCH_PREFIX);
    write_array_len(&mut out, count);
    let mut batch = WireBatch::empty(count, count * 256, if live { 0 } else { count * 768 });
    let mut interner = Interner::default();
    for (done, span) in spans.iter().enumerate() {
        let objs = slots.read(&span)?;
        let attributes = objs[16];
        if !attributes.is_exact_instance_of::<PyDict>() {
            return None;
        }
        let mut values = [Value::Nil; 16];
        let from = out.len();
        write_map_len(&mut out, 17);
        for (at, obj) in objs[..16].iter().enumerate() {
            let value = crate::slots::value(*obj)?;
            out.extend_from_slice(&keys[at]);
            write_value(&mut out, value)?;
            values[at] = value;
        }
        out.extend_from_slice(&keys[16]);
        // SAFETY: checked to be exactly a dict above; its length read with the GIL held.
        let len = unsafe { ffi::PyDict_Size(attributes.as_ptr()) };
        write_map_len(&mut out, usize::try_from(len).ok()?);
        let mut pairs = Vec::with_capacity(len as usize);
        let (mut pos, mut key, mut item): (ffi::Py_ssize_t, *mut ffi::PyObject, *mut ffi::PyObject) =
            (0, std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: iterating an exact dict with the GIL held, running no Python code meanwhile (nothing below
        // calls back into Python), so it cannot change; the key and value are borrowed from it.
        while unsafe { ffi::PyDict_Next(attributes.as_ptr(), &mut pos, &mut key, &mut item) } != 0 {
            // SAFETY: valid objects the dict keeps alive (see above).
            let (name, value) = unsafe { (Borrowed::from_ptr(py, key), Borrowed::from_ptr(py, item)) };
            let name = crate::slots::value(name)?.text()?;
            let value = crate::slots::value(value)?;
            if matches!(value, Value::Nil) {
                return None; // as `read_span`: the Python code decides
            }
            write_str(&mut out, name);
            write_value(&mut out, value)?;
            pairs.push((name, value));
        }
        let fields = Fields {
            trace_id: Some(values[0].text()?),
            span_id: Some(values[1].text()?),
            parent_span_id: values[2].optional_text()?,
            name: Some(values[3].text()?),
            model: Some(values[4].text()?),
            provider: Some(values[5].text()?),
            prompt: Some(values[6]),
            comp: Some(values[7]),
            total: Some(values[8]),
            cost: Some(values[9]),
            latency: Some(values[10]),
            status: Some(values[11].text()?),
            error: values[12].optional_text()?,
            caller: Some(values[13].text()?),
            started_at: values[14].optional_text()?,
            ended_at: values[15].optional_text()?,
            attributes: pairs,
        };
        accept(&fields, &limits, &mut batch, &mut interner)?;
        batch.spans.last_mut()?.encoded = (from, out.len());
        if done == 0 {
            out.reserve((out.len() - BATCH_PREFIX.len()) * count + count * 16);
        }
    }
    Some((PyBytes::new(py, &out), batch))
}
