//! base64url without padding (RFC 4648 §5), the one binary encoding on the wire.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Encodes bytes as base64url without padding.
pub(crate) fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding; rejects padding, the standard alphabet
/// and non-canonical trailing bits, so every value has exactly one spelling
/// (a signature or key cannot be re-encoded into a second accepted form).
pub(crate) fn decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

/// Decodes base64url into exactly `N` bytes.
pub(crate) fn decode_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    decode(s).and_then(|v| <[u8; N]>::try_from(v.as_slice()).ok())
}
