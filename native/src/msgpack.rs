//! The MessagePack this crate reads and writes: scalar values and container headers as msgspec encodes them
//! (the smallest form of each int, every float as float64), and a skip over any value (`Reader::skip`).

/// One MessagePack value of the kinds a span holds.
#[derive(Clone, Copy)]
pub enum Value<'a> {
    Nil,
    Bool(bool),
    Int(i64),
    /// An unsigned int beyond `i64`.
    Big(u64),
    Float(f64),
    Str(&'a str),
}

impl<'a> Value<'a> {
    /// The text of a string, else None.
    pub fn text(self) -> Option<&'a str> {
        match self {
            Value::Str(text) => Some(text),
            _ => None,
        }
    }

    /// The text of a string, None for nil, else not a value of an optional string (None).
    pub fn optional_text(self) -> Option<Option<&'a str>> {
        match self {
            Value::Nil => Some(None),
            Value::Str(text) => Some(Some(text)),
            _ => None,
        }
    }
}

pub struct Reader<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
}

impl<'a> Reader<'a> {
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let bytes = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(bytes)
    }

    pub fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    pub fn be(&mut self, n: usize) -> Option<u64> {
        Some(self.take(n)?.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b)))
    }

    pub fn map_len(&mut self) -> Option<usize> {
        match self.byte()? {
            b @ 0x80..=0x8f => Some(usize::from(b & 0x0f)),
            0xde => Some(self.be(2)? as usize),
            0xdf => Some(self.be(4)? as usize),
            _ => None,
        }
    }

    pub fn array_len(&mut self) -> Option<usize> {
        match self.byte()? {
            b @ 0x90..=0x9f => Some(usize::from(b & 0x0f)),
            0xdc => Some(self.be(2)? as usize),
            0xdd => Some(self.be(4)? as usize),
            _ => None,
        }
    }

    pub fn text(&mut self, n: usize) -> Option<&'a str> {
        let bytes = self.take(n)?;
        if bytes.is_ascii() {
            // SAFETY: ASCII is UTF-8 (checked first: a word at a time, far cheaper than from_utf8 per string).
            return Some(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        std::str::from_utf8(bytes).ok()
    }

    pub fn value(&mut self) -> Option<Value<'a>> {
        let value = match self.byte()? {
            b @ 0x00..=0x7f => Value::Int(i64::from(b)),
            b @ 0xe0..=0xff => Value::Int(i64::from(b as i8)),
            b @ 0xa0..=0xbf => Value::Str(self.text(usize::from(b & 0x1f))?),
            0xd9 => {
                let n = self.be(1)? as usize;
                Value::Str(self.text(n)?)
            }
            0xda => {
                let n = self.be(2)? as usize;
                Value::Str(self.text(n)?)
            }
            0xdb => {
                let n = self.be(4)? as usize;
                Value::Str(self.text(n)?)
            }
            0xc0 => Value::Nil,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xcc => Value::Int(self.be(1)? as i64),
            0xcd => Value::Int(self.be(2)? as i64),
            0xce => Value::Int(self.be(4)? as i64),
            0xcf => {
                let n = self.be(8)?;
                i64::try_from(n).map_or(Value::Big(n), Value::Int)
            }
            0xd0 => Value::Int(i64::from(self.be(1)? as u8 as i8)),
            0xd1 => Value::Int(i64::from(self.be(2)? as u16 as i16)),
            0xd2 => Value::Int(i64::from(self.be(4)? as u32 as i32)),
            0xd3 => Value::Int(self.be(8)? as i64),
            0xcb => Value::Float(f64::from_bits(self.be(8)?)),
            _ => return None, // float32, binary, extensions, nested containers: the Python code decides
        };
        Some(value)
    }

    pub fn str(&mut self) -> Option<&'a str> {
        self.value()?.text()
    }

    pub fn optional_str(&mut self) -> Option<Option<&'a str>> {
        self.value()?.optional_text()
    }
}

impl<'a> Reader<'a> {
    /// Step over one value of any kind, containers whole; `None` for what msgspec never writes (extensions).
    pub fn skip(&mut self) -> Option<()> {
        let mut pending: usize = 1;
        while pending > 0 {
            pending -= 1;
            let n = |reader: &mut Self, size: usize| reader.be(size).map(|n| n as usize);
            match self.byte()? {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => {}
                b @ 0xa0..=0xbf => drop(self.take(usize::from(b & 0x1f))?),
                b @ 0x90..=0x9f => pending += usize::from(b & 0x0f),
                b @ 0x80..=0x8f => pending += 2 * usize::from(b & 0x0f),
                0xcc | 0xd0 => drop(self.take(1)?),
                0xcd | 0xd1 => drop(self.take(2)?),
                0xce | 0xd2 | 0xca => drop(self.take(4)?),
                0xcf | 0xd3 | 0xcb => drop(self.take(8)?),
                0xd9 | 0xc4 => {
                    let len = n(self, 1)?;
                    self.take(len)?;
                }
                0xda | 0xc5 => {
                    let len = n(self, 2)?;
                    self.take(len)?;
                }
                0xdb | 0xc6 => {
                    let len = n(self, 4)?;
                    self.take(len)?;
                }
                0xdc => pending += n(self, 2)?,
                0xdd => pending += n(self, 4)?,
                0xde => pending += 2 * n(self, 2)?,
                0xdf => pending += 2 * n(self, 4)?,
                _ => return None,
            }
        }
        Some(())
    }

    /// The raw bytes of the next value, stepped over.
    pub fn raw(&mut self) -> Option<&'a [u8]> {
        let from = self.pos;
        self.skip()?;
        Some(&self.buf[from..self.pos])
    }
}

/// An int as msgspec writes it; `None` beyond what MessagePack holds (msgspec raises there).
pub fn write_int(out: &mut Vec<u8>, value: i128) -> Option<()> {
    if value >= 0 {
        let value = u64::try_from(value).ok()?;
        match value {
            0..=0x7f => out.push(value as u8),
            0x80..=0xff => out.extend_from_slice(&[0xcc, value as u8]),
            0x100..=0xffff => {
                out.push(0xcd);
                out.extend_from_slice(&(value as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                out.push(0xce);
                out.extend_from_slice(&(value as u32).to_be_bytes());
            }
            _ => {
                out.push(0xcf);
                out.extend_from_slice(&value.to_be_bytes());
            }
        }
        return Some(());
    }
    let value = i64::try_from(value).ok()?;
    if value >= -32 {
        out.push(value as i8 as u8);
    } else if value >= i64::from(i8::MIN) {
        out.extend_from_slice(&[0xd0, value as i8 as u8]);
    } else if value >= i64::from(i16::MIN) {
        out.push(0xd1);
        out.extend_from_slice(&(value as i16).to_be_bytes());
    } else if value >= i64::from(i32::MIN) {
        out.push(0xd2);
        out.extend_from_slice(&(value as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&value.to_be_bytes());
    }
    Some(())
}

pub fn write_float(out: &mut Vec<u8>, value: f64) {
    out.push(0xcb);
    out.extend_from_slice(&value.to_bits().to_be_bytes());
}

pub fn write_str(out: &mut Vec<u8>, text: &str) {
    let len = text.len();
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0xd9, len as u8]);
    } else if len < 0x1_0000 {
        out.push(0xda);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
    out.extend_from_slice(text.as_bytes());
}

fn write_header(out: &mut Vec<u8>, len: usize, fix: u8, short: u8) {
    if len < 16 {
        out.push(fix | len as u8);
    } else if len < 0x1_0000 {
        out.push(short);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(short + 1);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

pub fn write_map_len(out: &mut Vec<u8>, len: usize) {
    write_header(out, len, 0x80, 0xde);
}

pub fn write_array_len(out: &mut Vec<u8>, len: usize) {
    write_header(out, len, 0x90, 0xdc);
}
