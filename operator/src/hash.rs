//! Stable fingerprints and the one hex encoder.

use sha2::Digest;

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of lower- or upper-case hex; None when it is not hex.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Hash of a configuration, stable across runs (serde_json maps are ordered).
pub fn config_hash(v: &serde_json::Value) -> String {
    hex(&sha2::Sha256::digest(v.to_string().as_bytes())[..12])
}
