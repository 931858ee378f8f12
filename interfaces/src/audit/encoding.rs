//! The primitive encodings of the specification: big-endian integers,
//! length-prefixed strings and optional values.

use super::Hash;

pub(super) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// `str`: a `u32` byte length, then the UTF-8 bytes.
pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    // Strings over 4 GiB cannot occur in a record (inputs are validated and
    // bounded long before); saturating keeps the function total.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// `opt<str>`: `0x00`, or `0x01` and the string.
pub(super) fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

/// `opt<u64>`: `0x00`, or `0x01` and the integer.
pub(super) fn put_opt_u64(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put_u64(out, v);
        }
    }
}

/// `opt<[32]>`: `0x00`, or `0x01` and the 32 bytes.
pub(super) fn put_opt_hash(out: &mut Vec<u8>, h: Option<&Hash>) {
    match h {
        None => out.push(0),
        Some(h) => {
            out.push(1);
            out.extend_from_slice(h);
        }
    }
}
