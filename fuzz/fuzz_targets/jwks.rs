//! JWKS documents: any bytes, never a panic; a parsed set is never empty.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(keys) = scopegate::jwks::KeySet::from_json(data) {
        assert!(!keys.is_empty());
    }
});
