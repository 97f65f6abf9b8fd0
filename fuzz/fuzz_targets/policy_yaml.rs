//! Policy YAML → compiled policies: any text, never a panic; every error
//! names a document.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(errors) = scopegate::policy::files::parse_text(std::path::Path::new("fuzz.yaml"), text) {
        assert!(!errors.is_empty());
    }
});
