//! The claims parser and registered-claim checks (as if the signature had
//! verified): any bytes, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scopegate::token::{Algorithm, IssuerRules, ReadClaims as _, validate_unsigned_claims_for_fuzzing};

fuzz_target!(|data: &[u8]| {
    let rules = IssuerRules {
        issuer: "https://fuzz.example/".into(),
        audiences: vec!["api".into()].into(),
        algorithms: [Algorithm::RS256].into_iter().collect(),
        clock_skew_seconds: 60,
        token_types: None,
    };
    if let Ok(token) = validate_unsigned_claims_for_fuzzing(data, &rules, 1_800_000_000) {
        // Whatever passed has the properties validation promises.
        assert!(token.expires_at() + 60 > 1_800_000_000);
        let _ = token.scopes(&["scope".into(), "permissions".into()]);
        for claim in token.claims().keys() {
            if let Some(value) = token.header_value(claim) {
                assert!(!value.chars().any(char::is_control));
            }
        }
    }
});
