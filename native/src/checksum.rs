//! `zlib.crc32` for the write-ahead log and snapshots (tokentrace/core/checksum.py): the same CRC-32 (IEEE), by
//! `crc32fast`, which folds 64 bytes a step with carry-less multiplication where the CPU has it (zlib's tables
//! take a byte or so a cycle: a 1000-span record's check cost more than decoding a tenth of its spans).

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;

/// The CRC-32 of `data` (any C-contiguous buffer of bytes), continuing from `value` as `zlib.crc32(data, value)`.
#[pyfunction]
#[pyo3(signature = (data, value=0))]
pub fn crc32(data: PyBuffer<u8>, value: u32) -> PyResult<u32> {
    if !data.is_c_contiguous() {
        return Err(pyo3::exceptions::PyBufferError::new_err("crc32 needs a contiguous buffer"));
    }
    // SAFETY: a C-contiguous buffer of `len_bytes` bytes, held by `data` for the whole call; the GIL is held, so
    // no Python code changes it meanwhile.
    let bytes = unsafe { std::slice::from_raw_parts(data.buf_ptr() as *const u8, data.len_bytes()) };
    let mut hasher = crc32fast::Hasher::new_with_initial(value);
    hasher.update(bytes);
    Ok(hasher.finalize())
}
