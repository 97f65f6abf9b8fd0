//! The token front end: parse any bytes as a compact JWS, look the key up
//! in a real JWKS and verify. Must never panic; must never verify.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use scopegate::devissuer::DevIssuer;
use scopegate::jwks::KeySet;
use scopegate::token::{Algorithm, IssuerRules, UnverifiedToken};

static KEYS: LazyLock<KeySet> = LazyLock::new(|| {
    let issuer = DevIssuer::generate("https://fuzz.example/").expect("key generation");
    KeySet::from_json(issuer.jwks().to_string().as_bytes()).expect("a valid JWKS")
});

static RULES: LazyLock<IssuerRules> = LazyLock::new(|| IssuerRules {
    issuer: "https://fuzz.example/".into(),
    audiences: vec!["api".into()].into(),
    algorithms: Algorithm::ALL.into_iter().collect(),
    clock_skew_seconds: 60,
    token_types: None,
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(token) = UnverifiedToken::parse(text, RULES.algorithms) else { return };
    let Ok(key) = KEYS.verifier(token.key_id(), token.algorithm()) else { return };
    assert!(token.verify(key, &RULES, 1_800_000_000).is_err(), "a fuzzed token verified");
});
