//! Reading a span's fields straight from its instance, not through `getattr` (the one adapter to msgspec's
//! Struct layout).
//!
//! The hot path reads some thirty fields of every span (`check_span`, `prepare_spans`, `stamp`), and each
//! `getattr` walks the type's attribute lookup and a member descriptor. Read from the slots, decoding and
//! preparing a span of `POST /spans` takes 21.5k instructions instead of 24.6k (callgrind, 20k spans).
//! A msgspec Struct keeps each field in a fixed slot of its instance (a `member_descriptor`). Where each slot
//! is is not read from msgspec or CPython internals (this module builds against the stable ABI): it is found
//! once, by `register_span` at import, by writing a fresh marker into each field of a sample span and finding
//! the marker among the instance's words; a field found nowhere or twice leaves the whole layout unused.
//! `field` then reads the slot of an object of exactly that class, and takes `getattr` for anything else
//! (another class, a field it does not know, an unset slot): the same object either way.
//! tests/core/test_native_slots.py holds it to `getattr` and fails naming msgspec if the layout is not found.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyTuple, PyType};

use crate::msgpack::Value;

struct Layout {
    class: Py<PyType>,
    /// Each field's interned name (compared by address: `intern!` hands out the interned object) and the
    /// index of its pointer among the instance's words.
    words: Vec<(Py<PyString>, usize)>,
}

static LAYOUT: PyOnceLock<Option<Layout>> = PyOnceLock::new();

/// Find where `sample`'s class keeps each of its fields (`__struct_fields__`) and use it from now on; whether
/// it was found. Called once (later calls return what the first found).
#[pyfunction]
pub fn register_span(py: Python<'_>, sample: &Bound<'_, PyAny>) -> PyResult<bool> {
    let layout = LAYOUT.get_or_try_init(py, || locate(py, sample))?;
    Ok(layout.is_some())
}

fn locate(py: Python<'_>, sample: &Bound<'_, PyAny>) -> PyResult<Option<Layout>> {
    let class = sample.get_type();
    let size: usize = class.getattr("__basicsize__")?.extract()?;
    let words = size / std::mem::size_of::<*mut ffi::PyObject>();
    let fields = class.getattr("__struct_fields__")?.cast_into::<PyTuple>()?;
    let mut found = Vec::with_capacity(fields.len());
    for name in fields.iter() {
        let name = PyString::intern(py, name.cast::<PyString>()?.to_str()?);
        let value = sample.getattr(&name)?;
        let marker = py.eval(c"object()", None, None)?;
        sample.setattr(&name, &marker)?;
        // SAFETY: `sample` is a live object of `size` bytes (its class's basic size: no variable part), read
        // as pointer-sized words while the GIL is held; only addresses are compared, nothing is dereferenced.
        let at: Vec<usize> = (0..words)
            .filter(|&word| unsafe { *(sample.as_ptr() as *const *mut ffi::PyObject).add(word) } == marker.as_ptr())
            .collect();
        sample.setattr(&name, value)?;
        match *at.as_slice() {
            [word] if !found.iter().any(|&(_, other)| other == word) => found.push((name.unbind(), word)),
            _ => return Ok(None),
        }
    }
    Ok(Some(Layout { class: class.unbind(), words: found }))
}

/// The field slot `word` of `span`: a strong reference owned by the instance, or NULL (unset).
///
/// # Safety
/// `span` is an instance of the class the layout was found on and `word` one of that layout's words; the GIL is
/// held.
unsafe fn slot(span: &Bound<'_, PyAny>, word: usize) -> *mut ffi::PyObject {
    *(span.as_ptr() as *const *mut ffi::PyObject).add(word)
}

/// `span.<name>`: read from its slot when `span` is of the registered class, else by `getattr`. `name` must be
/// interned (`intern!`) for the slot to be found.
pub fn field<'py>(span: &Bound<'py, PyAny>, name: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyAny>> {
    let py = span.py();
    if let Some(Some(layout)) = LAYOUT.get(py) {
        // SAFETY: `span` is a live object (borrowed for the call); reading its type pointer is what Py_TYPE does.
        if unsafe { ffi::Py_TYPE(span.as_ptr()) } == layout.class.as_ptr() as *mut ffi::PyTypeObject {
            if let Some(&(_, word)) = layout.words.iter().find(|(known, _)| known.as_ptr() == name.as_ptr()) {
                // SAFETY: an instance of the class the layout was found on, `word` one of its field slots.
                let slot = unsafe { slot(span, word) };
                if !slot.is_null() {
                    // SAFETY: a non-NULL slot is a valid object; the new reference is our own.
                    return Ok(unsafe { Bound::from_borrowed_ptr(py, slot) });
                }
            }
        }
    }
    span.getattr(name)
}

/// `Span`'s fields in `__struct_fields__` order (tokentrace/core/span.py): what `span_layout` reads.
pub const SPAN_FIELDS: [&str; 17] = [
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "model",
    "provider",
    "prompt_tokens",
    "comp_tokens",
    "total_tokens",
    "cost_usd",
    "latency_ms",
    "status",
    "error",
    "caller",
    "started_at",
    "ended_at",
    "attributes",
];

/// The index of a span field in `SPAN_FIELDS`, told apart by length and first letter before one comparison.
pub fn field_index(key: &str) -> Option<usize> {
    let index = match (key.len(), *key.as_bytes().first()?) {
        (8, b't') => 0,
        (7, b's') => 1,
        (14, b'p') => 2,
        (4, b'n') => 3,
        (5, b'm') => 4,
        (8, b'p') => 5,
        (13, b'p') => 6,
        (11, b'c') => 7,
        (12, b't') => 8,
        (8, b'c') => 9,
        (10, b'l') => 10,
        (6, b's') => 11,
        (5, b'e') => 12,
        (6, b'c') => 13,
        (10, b's') => 14,
        (8, b'e') => 15,
        (10, b'a') => 16,
        _ => return None,
    };
    (SPAN_FIELDS[index] == key).then_some(index)
}

/// Indices into `SPAN_FIELDS` (and into what `SpanSlots::read` returns).
pub mod at {
    pub const TRACE_ID: usize = 0;
    pub const SPAN_ID: usize = 1;
    pub const PARENT_SPAN_ID: usize = 2;
    pub const NAME: usize = 3;
    pub const MODEL: usize = 4;
    pub const PROVIDER: usize = 5;
    pub const PROMPT_TOKENS: usize = 6;
    pub const COMP_TOKENS: usize = 7;
    pub const TOTAL_TOKENS: usize = 8;
    pub const COST_USD: usize = 9;
    pub const LATENCY_MS: usize = 10;
    pub const ERROR: usize = 12;
    pub const CALLER: usize = 13;
    pub const STARTED_AT: usize = 14;
    pub const ENDED_AT: usize = 15;
    pub const ATTRIBUTES: usize = 16;
}

/// Where the registered class keeps its fields, when they are exactly `names` in that order: for reading all
/// of a span's fields at once (`SpanSlots::read`).
pub struct SpanSlots<const N: usize> {
    /// The address of the registered class (kept alive by `LAYOUT`), compared with an instance's type.
    class: usize,
    words: [usize; N],
}

pub fn span_slots<const N: usize>(py: Python<'_>, names: &[&str; N]) -> Option<SpanSlots<N>> {
    let layout = LAYOUT.get(py)?.as_ref()?;
    if layout.words.len() != N {
        return None;
    }
    let mut words = [0; N];
    for (at, ((name, word), expected)) in layout.words.iter().zip(names).enumerate() {
        if name.bind(py).to_str().ok()? != *expected {
            return None;
        }
        words[at] = *word;
    }
    Some(SpanSlots { class: layout.class.as_ptr() as usize, words })
}

static SPAN_LAYOUT: PyOnceLock<Option<SpanSlots<17>>> = PyOnceLock::new();

/// `span_slots` of `SPAN_FIELDS`, found once `register_span` has run (None before: the first span, made at
/// import to register the layout, is checked in Python).
pub fn span_layout(py: Python<'_>) -> Option<&SpanSlots<17>> {
    LAYOUT.get(py)?;
    SPAN_LAYOUT.get_or_init(py, || span_slots(py, &SPAN_FIELDS)).as_ref()
}

impl<const N: usize> SpanSlots<N> {
    /// Each field of `span`, borrowed from its slot, when `span` is exactly of the registered class and none is
    /// unset; else None. The references are the instance's own: valid while `span` lives and no field is set.
    pub fn read<'a, 'py>(&self, span: &'a Bound<'py, PyAny>) -> Option<[Borrowed<'a, 'py, PyAny>; N]> {
        // SAFETY: `span` is a live object (borrowed for the call); reading its type pointer is what Py_TYPE does.
        if unsafe { ffi::Py_TYPE(span.as_ptr()) } as usize != self.class {
            return None;
        }
        let mut out = [None; N];
        for (field, &word) in out.iter_mut().zip(&self.words) {
            // SAFETY: an instance of the class the layout was found on, `word` one of its field slots.
            let slot = unsafe { slot(span, word) };
            if slot.is_null() {
                return None;
            }
            // SAFETY: a non-NULL slot is a valid object the instance keeps alive while `span` lives unchanged.
            *field = Some(unsafe { Borrowed::from_ptr(span.py(), slot) });
        }
        Some(out.map(|field| field.expect("every field read")))
    }
}

/// A field's value as the MessagePack encoding of the span holds it: `None` for what this code leaves to
/// msgspec (a subclass of a builtin, an int beyond 64 bits, a container).
pub fn value<'a>(obj: Borrowed<'a, '_, PyAny>) -> Option<Value<'a>> {
    use pyo3::types::{PyBool, PyFloat, PyInt};
    if obj.is_none() {
        Some(Value::Nil)
    } else if obj.is_exact_instance_of::<PyString>() {
        text(obj).map(Value::Str)
    } else if obj.is_exact_instance_of::<PyInt>() {
        obj.extract::<i64>().ok().map(Value::Int)
    } else if obj.is_exact_instance_of::<PyFloat>() {
        // SAFETY: checked to be exactly a float just above.
        Some(Value::Float(unsafe { obj.cast_unchecked::<PyFloat>() }.value()))
    } else if obj.is_exact_instance_of::<PyBool>() {
        Some(Value::Bool(obj.is(&*PyBool::new(obj.py(), true))))
    } else {
        None
    }
}

/// The UTF-8 of an exact `str`, borrowed from it (CPython keeps it with the string); None for a string with a
/// lone surrogate (no UTF-8: msgspec refuses to encode it).
pub fn text<'a>(obj: Borrowed<'a, '_, PyAny>) -> Option<&'a str> {
    let mut size: ffi::Py_ssize_t = 0;
    // SAFETY: `obj` is an exact str, alive for 'a; the UTF-8 buffer CPython returns lives as long as it does.
    let data = unsafe { ffi::PyUnicode_AsUTF8AndSize(obj.as_ptr(), &mut size) };
    if data.is_null() {
        // SAFETY: the failed call set an exception, which is cleared (declined, not raised) with the GIL held.
        unsafe { ffi::PyErr_Clear() };
        return None;
    }
    // SAFETY: `size` bytes of valid UTF-8 at `data`, alive for 'a (see above).
    Some(unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(data as *const u8, size as usize)) })
}

/// The length of an exact `str` in code points (Python's `len`), read without encoding it; None for anything
/// else.
pub fn chars(obj: Borrowed<'_, '_, PyAny>) -> Option<usize> {
    if !obj.is_exact_instance_of::<PyString>() {
        return None;
    }
    // SAFETY: an exact str, with the GIL held; its length is stored, not computed.
    usize::try_from(unsafe { ffi::PyUnicode_GetLength(obj.as_ptr()) }).ok()
}

/// `field` for the tests: ``span.<name>`` as the compiled code reads it.
#[pyfunction]
pub fn span_field<'py>(span: &Bound<'py, PyAny>, name: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyAny>> {
    field(span, &PyString::intern(span.py(), name.to_str()?))
}
