//! A `POST /spans` body straight to its log record and compiled batch, no Python object per span: what
//! `decode_json_spans`, `prepare_batch` (tokentrace/core/ingest.py), `LabelCaps.admit` and `compile_spans` do
//! to the usual body, in one pass over its bytes. The Python code stays the reference.
//!
//! The usual body is a JSON array of span objects (or one span object) in the form the SDKs write: only the
//! span's own fields, each once; every span one that `compile_spans` takes once
//! prepared (both ids, ASCII printable labels, int token counts, normalised timestamps, a latency given or
//! derived from them), within the text caps of `core.limits` and the batch's time bounds, priced from the
//! linear or tiered rates `prepare_batch` learnt (when it has no cost and a pricer is set), and of a series
//! the label caps admitted before. Anything else, valid or not, returns `None` having changed nothing, and the
//! Python code decides (its error messages included).

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PySet, PyString};

use crate::msgpack::{write_array_len, write_map_len, write_str, Value};
use crate::prepare::{count, table_price, Prices, TextCaps};
use crate::slots::SPAN_FIELDS;
use crate::span_check::{canonical, format_into, rounded_latency, LAST_MS};
use crate::wire::{accept, write_value, FieldSource, Fields, Interner, Limits, WireBatch, BATCH_PREFIX};

/// Room kept for the span array's header, written once the spans are counted (`0xdd` and a u32 at most).
const HEADER_ROOM: usize = 5;

/// A reader of the usual body (see the module docstring): `None` at anything else.
struct Json<'a> {
    text: &'a str,
    /// The strings with escapes, unescaped.
    arena: &'a typed_arena::Arena<String>,
    pos: usize,
    /// Whether the body holds a byte below 0x20 (JSON whitespace or not) anywhere.
    controls: bool,
}

impl<'a> Json<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// The next byte that is not JSON whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        let bytes = self.bytes();
        while let Some(&byte) = bytes.get(self.pos) {
            if !matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(byte);
            }
            self.pos += 1;
        }
        None
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        (self.bytes().get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// A string: borrowed from the body, or unescaped into the arena when it has an escape.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.pos;
        let content = &self.bytes()[start..];
        let end = memchr::memchr2(b'"', b'\\', content)?;
        if content[end] == b'\\' {
            return self.unescaped(start);
        }
        // A raw control character: JSON refuses it (looked for only in a body that has one; compact JSON has not).
        if self.controls && content[..end].iter().any(|&byte| byte < 0x20) {
            return None;
        }
        self.pos = start + end + 1;
        // Both ends are next to a `"`, so on character boundaries of the (valid UTF-8) text.
        self.text.get(start..start + end)
    }

    /// The string from `start` (just after its `"`) with its escapes read as JSON reads them; `None` for an
    /// invalid escape or one naming a lone surrogate (which UTF-8 cannot hold: Python decides).
    fn unescaped(&mut self, start: usize) -> Option<&'a str> {
        let bytes = self.bytes();
        let mut text = String::new();
        let mut at = start;
        loop {
            let run = at + memchr::memchr2(b'"', b'\\', &bytes[at..])?;
            let plain = self.text.get(at..run)?;
            if self.controls && plain.bytes().any(|byte| byte < 0x20) {
                return None;
            }
            text.push_str(plain);
            if bytes[run] == b'"' {
                self.pos = run + 1;
                return Some(self.arena.alloc(text).as_str());
            }
            let escape = *bytes.get(run + 1)?;
            at = run + 2;
            let unit = match escape {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => {
                    let high = self.hex4(at)?;
                    at += 4;
                    if (0xd800..0xdc00).contains(&high) {
                        if bytes.get(at..at + 2)? != b"\\u" {
                            return None;
                        }
                        let low = self.hex4(at + 2)?;
                        if !(0xdc00..0xe000).contains(&low) {
                            return None;
                        }
                        at += 6;
                        char::from_u32(0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00))?
                    } else {
                        char::from_u32(high)? // a lone low surrogate is no char
                    }
                }
                _ => return None,
            };
            text.push(unit);
        }
    }

    /// Four hex digits at `at`, as a `\u` escape gives them.
    fn hex4(&self, at: usize) -> Option<u32> {
        let digits = self.text.get(at..at + 4)?;
        if !digits.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(digits, 16).ok()
    }

    /// A number as msgspec reads it: an int (`Big` past `i64`) unless it has a fraction or an exponent.
    fn number(&mut self) -> Option<Value<'a>> {
        let (bytes, start) = (self.bytes(), self.pos);
        let mut at = start;
        let digits = |at: &mut usize| {
            let from = *at;
            while bytes.get(*at).is_some_and(u8::is_ascii_digit) {
                *at += 1;
            }
            *at > from
        };
        if bytes.get(at) == Some(&b'-') {
            at += 1;
        }
        if bytes.get(at) == Some(&b'0') {
            at += 1;
        } else if !digits(&mut at) {
            return None;
        }
        let mut float = false;
        if bytes.get(at) == Some(&b'.') {
            at += 1;
            float = true;
            if !digits(&mut at) {
                return None;
            }
        }
        if matches!(bytes.get(at), Some(b'e' | b'E')) {
            at += 1;
            float = true;
            if matches!(bytes.get(at), Some(b'+' | b'-')) {
                at += 1;
            }
            if !digits(&mut at) {
                return None;
            }
        }
        self.pos = at;
        let text = self.text.get(start..at)?;
        if float {
            let value: f64 = text.parse().ok()?;
            return value.is_finite().then_some(Value::Float(value)); // msgspec: "Number out of range"
        }
        if let Ok(int) = text.parse::<i64>() {
            return Some(Value::Int(int));
        }
        text.parse::<u64>().ok().map(Value::Big)
    }

    /// A scalar: string, number, `true`, `false` or `null`.
    fn scalar(&mut self) -> Option<Value<'a>> {
        match self.peek()? {
            b'"' => self.string().map(Value::Str),
            b't' => self.literal(b"true").map(|()| Value::Bool(true)),
            b'f' => self.literal(b"false").map(|()| Value::Bool(false)),
            b'n' => self.literal(b"null").map(|()| Value::Nil),
            _ => self.number(),
        }
    }

    /// After an object's or array's member: whether another follows (`,`) or it ends (`close`).
    fn more(&mut self, close: u8) -> Option<bool> {
        match self.peek()? {
            b',' => {
                self.pos += 1;
                Some(true)
            }
            byte if byte == close => {
                self.pos += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// One span object's fields, as `wire::read_span` reads them from a message.
    fn span(&mut self) -> Option<Fields<'a>> {
        self.eat(b'{')?;
        let mut fields = Fields::default();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(fields);
        }
        let mut seen = 0u32;
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            fields.read_field(key, &mut seen, self)?;
            if !self.more(b'}')? {
                return Some(fields);
            }
        }
    }
}

impl<'a> FieldSource<'a> for Json<'a> {
    fn text(&mut self) -> Option<&'a str> {
        self.string()
    }

    fn optional_text(&mut self) -> Option<Option<&'a str>> {
        self.scalar()?.optional_text()
    }

    fn scalar(&mut self) -> Option<Value<'a>> {
        Json::scalar(self)
    }

    fn attributes(&mut self) -> Option<Vec<(&'a str, Value<'a>)>> {
        self.eat(b'{')?;
        let mut attributes = Vec::new();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(attributes);
        }
        loop {
            let name = self.string()?;
            self.eat(b':')?;
            Fields::push_attribute(&mut attributes, name, Json::scalar(self)?)?;
            if !self.more(b'}')? {
                return Some(attributes);
            }
        }
    }
}

/// Whether `text` has at most `cap` characters (code points, as Python's `len`).
fn within(text: &str, cap: usize) -> bool {
    text.len() <= cap || text.chars().count() <= cap
}

/// `text_limit_error` returns None for the span, and (when it is to be priced) it has no cached-token attribute.
fn usual_text(fields: &Fields<'_>, caps: &TextCaps, cache_keys: &[String]) -> bool {
    let labels = [fields.model, fields.provider, fields.caller];
    let ids = [fields.trace_id, fields.span_id, fields.parent_span_id];
    if !labels.iter().all(|text| within(text.unwrap_or(""), caps.label))
        || !ids.iter().all(|text| within(text.unwrap_or(""), caps.id))
        || !within(fields.name.unwrap_or(""), caps.name)
        || !within(fields.error.unwrap_or(""), caps.error)
        || fields.attributes.len() > caps.attributes
    {
        return false;
    }
    let mut total = 0;
    for &(name, value) in &fields.attributes {
        let length = name.chars().count();
        if length > caps.attribute_key || cache_keys.iter().any(|cached| cached == name) {
            return false;
        }
        total += length;
        if let Value::Str(text) = value {
            let length = text.chars().count();
            if length > caps.attribute_value {
                return false;
            }
            total += length;
        }
    }
    total <= caps.attributes_chars
}

/// `given`, or the normalised timestamp of `millis` (written to `room`) when none was given.
fn stamped<'t>(given: Option<&'t str>, millis: i64, room: &'t mut [u8; 24]) -> &'t str {
    given.unwrap_or_else(|| {
        format_into(millis, room);
        // SAFETY: format_into writes ASCII digits and separators only.
        unsafe { std::str::from_utf8_unchecked(room) }
    })
}

/// The batch's bounds and prices, as `compile_json` takes them.
struct Batch<'a, 'py> {
    arrival_ms: i64,
    oldest_ms: i64,
    latest_ms: i64,
    rates: Option<&'a Bound<'py, PyDict>>,
    scale: f64,
    caps: TextCaps,
    cache_keys: Vec<String>,
}

/// Write one span, checked, derived (`Span.__post_init__`), stamped and priced (`prepare_batch`), to `out` as
/// `encode_wire` writes the prepared `Span`, and add it to `batch`; `None` unless it is the usual span.
fn add_span(
    fields: Fields<'_>,
    bounds: &Batch<'_, '_>,
    prices: &mut Prices,
    limits: &Limits<'_>,
    out: &mut Vec<u8>,
    batch: &mut WireBatch,
    interner: &mut Interner,
) -> Option<()> {
    let (prompt, comp) = (fields.prompt.unwrap_or(Value::Nil), fields.comp.unwrap_or(Value::Nil));
    let cost = fields.cost.unwrap_or(Value::Nil);
    let priced = bounds.rates.is_some()
        && matches!(cost, Value::Nil)
        && !(matches!(prompt, Value::Nil) && matches!(comp, Value::Nil));
    if !usual_text(&fields, &bounds.caps, if priced { &bounds.cache_keys } else { &[] }) {
        return None;
    }
    // __post_init__ derives the total and, from both timestamps, a missing latency; `stamp` gives a span without
    // timestamps its arrival time, and fills `ended_at` from the start and the latency.
    let total = match fields.total.unwrap_or(Value::Nil) {
        Value::Nil => Value::Int(count(prompt)?.checked_add(count(comp)?)?),
        given => given,
    };
    let mut latency = fields.latency.unwrap_or(Value::Nil);
    let (start, ended) = match (fields.started_at, fields.ended_at) {
        (Some(started), None) => (canonical(started)?, None),
        (Some(started), Some(ended)) => {
            let (start, ended) = (canonical(started)?, canonical(ended)?);
            if !(start..=LAST_MS).contains(&ended) {
                return None; // ended before started: refused in Python
            }
            (start, Some(ended))
        }
        (None, None) => (bounds.arrival_ms, None),
        (None, Some(_)) => return None,
    };
    if let (Some(ended), Value::Nil) = (ended, latency) {
        latency = Value::Int(ended - start);
    }
    let ended = match ended {
        Some(ended) => ended,
        None => (start + rounded_latency(latency)?).min(LAST_MS),
    };
    if start < bounds.oldest_ms || start > bounds.latest_ms || ended > bounds.latest_ms {
        return None; // rejected (too old, or in the future) in Python, which says why
    }
    let cost = match bounds.rates {
        Some(rates) if priced => {
            let (model, provider) = (fields.model?, fields.provider.unwrap_or(""));
            let entry = prices.entry(rates, model, provider)?; // no rates learnt: the pricer prices
            Value::Float(table_price(entry, count(prompt)?, count(comp)?, bounds.scale)?)
        }
        _ => cost,
    };
    let (mut started_text, mut ended_text) = ([0u8; 24], [0u8; 24]);
    let prepared = Fields {
        prompt: Some(prompt),
        comp: Some(comp),
        total: Some(total),
        cost: Some(cost),
        latency: Some(latency),
        started_at: Some(stamped(fields.started_at, start, &mut started_text)),
        ended_at: Some(stamped(fields.ended_at, ended, &mut ended_text)),
        ..fields
    };
    let from = out.len();
    write_prepared(out, &prepared)?;
    accept(&prepared, limits, batch, interner)?;
    batch.spans.last_mut()?.encoded = (from, out.len());
    Some(())
}

/// The prepared span as msgspec's MessagePack encoder writes the `Span`: its 17 fields in order.
fn write_prepared<'a>(out: &mut Vec<u8>, fields: &Fields<'a>) -> Option<()> {
    let text = |text: Option<&'a str>| text.map_or(Value::Str(""), Value::Str);
    let optional = |text: Option<&'a str>| text.map_or(Value::Nil, Value::Str);
    let values = [
        text(fields.trace_id),
        text(fields.span_id),
        optional(fields.parent_span_id),
        text(fields.name),
        text(fields.model),
        text(fields.provider),
        fields.prompt?,
        fields.comp?,
        fields.total?,
        fields.cost?,
        fields.latency?,
        Value::Str(fields.status.unwrap_or("ok")),
        optional(fields.error),
        text(fields.caller),
        optional(fields.started_at),
        optional(fields.ended_at),
    ];
    write_map_len(out, SPAN_FIELDS.len());
    for (name, value) in SPAN_FIELDS.iter().zip(values) {
        write_str(out, name);
        write_value(out, value)?;
    }
    write_str(out, SPAN_FIELDS[16]);
    write_map_len(out, fields.attributes.len());
    for &(name, value) in &fields.attributes {
        write_str(out, name);
        write_value(out, value)?;
    }
    Some(())
}

/// `(message, batch)` for a `POST /spans` body when it is the usual body (see the module docstring): the
/// message byte for byte `encode_wire` of the spans `decode_json_spans` and `prepare_batch` make of it, the batch
/// `compile_spans`'s of them (`live`); `None` for any other body, or one of more than `max_spans` spans, or a
/// span of a series not in `admitted` (`LabelCaps`' series: it would fold or admit it).
///
/// `arrival_ms`, `oldest_ms`, `latest_ms`, `rates`, `scale`, `caps` and `cache_keys`: `prepare_batch`'s (the
/// compiled `prepare_spans`'); then the bounds `compile_spans` takes.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (
    body, max_spans, admitted, arrival_ms, oldest_ms, latest_ms, rates, scale, caps, cache_keys,
    bucket_ms, max_tokens, max_cost, max_latency, max_score, sep,
))]
pub fn compile_json<'py>(
    py: Python<'py>,
    body: &Bound<'py, PyBytes>,
    max_spans: usize,
    admitted: &Bound<'py, PySet>,
    arrival_ms: i64,
    oldest_ms: i64,
    latest_ms: i64,
    rates: Option<&Bound<'py, PyDict>>,
    scale: f64,
    caps: TextCaps,
    cache_keys: Vec<String>,
    bucket_ms: i64,
    max_tokens: i64,
    max_cost: f64,
    max_latency: f64,
    max_score: f64,
    sep: &str,
) -> Option<(Bound<'py, PyBytes>, WireBatch)> {
    if bucket_ms <= 0 {
        return None;
    }
    let text = std::str::from_utf8(body.as_bytes()).ok()?;
    let controls = text.bytes().fold(false, |seen, byte| seen | (byte < 0x20));
    let arena = typed_arena::Arena::new();
    let mut json = Json { text, arena: &arena, pos: 0, controls };
    let bounds = Batch { arrival_ms, oldest_ms, latest_ms, rates, scale, caps, cache_keys };
    let limits = Limits::new(
        i64::MIN,
        i64::MAX,
        bucket_ms,
        i64::MIN,
        false,
        max_tokens,
        max_cost,
        max_latency,
        max_score,
        sep,
        true,
    );
    let expected = text.len() / 256 + 1;
    let mut out: Vec<u8> = Vec::with_capacity(text.len() + text.len() / 2 + 64);
    out.extend_from_slice(BATCH_PREFIX);
    out.resize(BATCH_PREFIX.len() + HEADER_ROOM, 0);
    let mut batch = WireBatch::empty(expected, expected * 128, 0);
    let (mut interner, mut prices) = (Interner::default(), Prices::default());
    let array = json.peek()? == b'[';
    if array {
        json.pos += 1;
    }
    loop {
        let fields = json.span()?;
        if batch.spans.len() == max_spans {
            return None;
        }
        add_span(fields, &bounds, &mut prices, &limits, &mut out, &mut batch, &mut interner)?;
        if !array || !json.more(b']')? {
            break;
        }
    }
    if json.peek().is_some() {
        return None; // trailing data: msgspec refuses it
    }
    for &(start, end) in &batch.series {
        if !admitted.contains(PyString::new(py, &batch.text[start..end])).ok()? {
            return None; // a series the label caps have not seen: they admit or fold it, in Python
        }
    }
    // The span array's header, now that the spans are counted, where the room was kept for it.
    let mut header = Vec::with_capacity(HEADER_ROOM);
    write_array_len(&mut header, batch.spans.len());
    let shift = HEADER_ROOM - header.len();
    let at = BATCH_PREFIX.len();
    out.copy_within(at + HEADER_ROOM.., at + header.len());
    out.truncate(out.len() - shift);
    out[at..at + header.len()].copy_from_slice(&header);
    for span in &mut batch.spans {
        span.encoded = (span.encoded.0 - shift, span.encoded.1 - shift);
    }
    Some((PyBytes::new(py, &out), batch))
}
