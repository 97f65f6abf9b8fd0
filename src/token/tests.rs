//! Verification of real signatures against pre-parsed JWKS keys.

use std::sync::LazyLock;

use serde_json::{Value, json};

use super::*;
use crate::devissuer::DevIssuer;
use crate::jwks::KeySet;

const ISSUER: &str = "https://tenant.example.com/";
const AUDIENCE: &str = "api://orders";
const NOW: u64 = 1_800_000_000;

static SIGNER: LazyLock<DevIssuer> = LazyLock::new(|| DevIssuer::generate(ISSUER).unwrap());

fn keys() -> KeySet {
    KeySet::from_json(SIGNER.jwks().to_string().as_bytes()).unwrap()
}

fn rules() -> IssuerRules {
    IssuerRules {
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into()].into(),
        algorithms: [Algorithm::RS256].into_iter().collect(),
        clock_skew_seconds: 60,
        token_types: None,
    }
}

fn claims() -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "user", "exp": NOW + 300, "scope": "a b"})
}

fn verify(token: &str) -> Result<VerifiedToken, TokenError> {
    let keys = keys();
    let rules = rules();
    let parsed = UnverifiedToken::parse(token, rules.algorithms)?;
    let key = keys.verifier(parsed.key_id(), parsed.algorithm())?;
    parsed.verify(key, &rules, NOW)
}

fn with(field: &str, value: Value) -> String {
    let mut c = claims();
    if value.is_null() {
        c.as_object_mut().unwrap().remove(field);
    } else {
        c[field] = value;
    }
    SIGNER.sign(&c)
}

#[test]
fn a_packed_scope_list_keeps_scopes_that_hold_spaces_apart() {
    let mut c = claims();
    c["scope"] = json!("write:orders read:orders read:orders");
    c["permissions"] = json!(["a b", "admin"]);
    let token = verify(&SIGNER.sign(&c)).unwrap();
    let list = ScopeList::from(token.scopes(&["scope".into(), "permissions".into()]));
    assert_eq!(list.line(), "a b admin read:orders write:orders");
    assert_eq!(
        list.iter().collect::<Vec<_>>(),
        ["a b", "admin", "read:orders", "write:orders"]
    );
    for granted in ["a b", "admin", "read:orders", "write:orders"] {
        assert!(list.contains(granted), "{granted}");
    }
    for not_granted in ["a", "b", "", "read", "admin read:orders", "zzz"] {
        assert!(!list.contains(not_granted), "{not_granted:?}");
    }
    assert!(!ScopeList::default().contains(""));
}

#[test]
fn a_good_token_verifies_and_exposes_its_claims() {
    let token = verify(&SIGNER.sign(&claims())).unwrap();
    assert_eq!(token.subject(), Some("user"));
    assert_eq!(token.expires_at(), NOW + 300);
    let scopes = token.scopes(&["scope".into()]);
    assert!(scopes.contains("a") && scopes.contains("b") && !scopes.contains("c"));
}

#[test]
fn claim_checks_reject_with_the_right_error() {
    let cases = [
        (with("exp", json!(NOW - 61)), TokenError::Expired),
        (with("exp", Value::Null), TokenError::MissingExpiry),
        (with("exp", json!("2030")), TokenError::InvalidClaim("exp")),
        (with("exp", json!(-5)), TokenError::InvalidClaim("exp")),
        (with("exp", json!(1e300)), TokenError::InvalidClaim("exp")),
        (with("nbf", json!(NOW + 61)), TokenError::NotYetValid),
        (
            with("iss", json!("https://tenant.example.com")),
            TokenError::WrongIssuer,
        ),
        (
            with("iss", json!(" https://tenant.example.com/")),
            TokenError::WrongIssuer,
        ),
        (with("iss", Value::Null), TokenError::WrongIssuer),
        (with("iss", json!(["x"])), TokenError::InvalidClaim("iss")),
        (with("aud", json!("api://other")), TokenError::WrongAudience),
        (with("aud", json!([])), TokenError::WrongAudience),
        (
            with("aud", json!({"a": AUDIENCE})),
            TokenError::InvalidClaim("aud"),
        ),
        (
            with("aud", json!([[AUDIENCE]])),
            TokenError::InvalidClaim("aud"),
        ),
        (with("aud", Value::Null), TokenError::WrongAudience),
    ];
    for (token, expected) in cases {
        assert_eq!(verify(&token).unwrap_err(), expected);
    }
}

#[test]
fn clock_skew_bounds_are_inclusive_of_the_skew_only() {
    assert!(verify(&with("exp", json!(NOW - 59))).is_ok());
    assert_eq!(
        verify(&with("exp", json!(NOW - 60))).unwrap_err(),
        TokenError::Expired
    );
    assert!(verify(&with("nbf", json!(NOW + 60))).is_ok());
    assert!(verify(&with("exp", json!((NOW + 10) as f64 + 0.5))).is_ok());
}

#[test]
fn structural_problems_are_malformed() {
    let good = SIGNER.sign(&claims());
    let (signing_input, signature) = good.rsplit_once('.').unwrap();
    let cases = [
        "".to_string(),
        "a.b".to_string(),
        format!("{good}.extra"),
        format!("{signing_input}."),
        format!("{signing_input}.{signature}="),
        format!("{signing_input}.{}", signature.replace(['-', '_'], "+")),
        format!("{}.{signature}", signing_input.replace('.', "..")),
        "x".repeat(MAX_TOKEN_BYTES + 1),
    ];
    for token in cases {
        assert!(
            matches!(
                UnverifiedToken::parse(&token, rules().algorithms),
                Err(TokenError::Malformed(_))
            ) || matches!(
                verify(&token),
                Err(TokenError::BadSignature | TokenError::Malformed(_))
            ),
            "{token:.60}"
        );
    }
}

#[test]
fn non_canonical_base64_in_the_signature_is_rejected() {
    // Changing the last character's unused low bits re-encodes the same
    // signature bytes non-canonically; strict decoding refuses it.
    let good = SIGNER.sign(&claims());
    let last = good.chars().last().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let index = alphabet.find(last).unwrap();
    let sibling = alphabet.chars().nth(index ^ 1).unwrap();
    let tweaked = format!("{}{sibling}", &good[..good.len() - 1]);
    assert!(verify(&tweaked).is_err());
}

#[test]
fn header_rules_are_enforced_before_any_key_is_used() {
    let sign = |header: Value| encode_compact(&header, &claims(), |_| vec![1; 256]);
    let allowed = rules().algorithms;
    let parse = |token: &str| {
        UnverifiedToken::parse(token, allowed)
            .map(|_| ())
            .expect_err(token)
    };
    assert_eq!(
        parse(&sign(json!({"alg": "none"}))),
        TokenError::UnsupportedAlgorithm
    );
    assert_eq!(
        parse(&sign(json!({"alg": "HS256"}))),
        TokenError::UnsupportedAlgorithm
    );
    assert_eq!(
        parse(&sign(json!({"alg": "rs256"}))),
        TokenError::UnsupportedAlgorithm
    );
    assert_eq!(
        parse(&sign(json!({"alg": "ES256"}))),
        TokenError::AlgorithmNotAllowed(Algorithm::ES256)
    );
    assert_eq!(
        parse(&sign(json!({"alg": "RS256", "crit": ["exp"]}))),
        TokenError::CriticalHeader
    );
    assert!(matches!(
        parse(&sign(json!({"kid": "x"}))),
        TokenError::Malformed(_)
    ));
    assert!(matches!(
        parse(&sign(json!(["RS256"]))),
        TokenError::Malformed(_)
    ));
}

#[test]
fn key_lookup_needs_a_known_kid_or_a_single_key() {
    let keys = keys();
    assert_eq!(
        keys.verifier(Some("nope"), Algorithm::RS256).unwrap_err(),
        TokenError::UnknownKey
    );
    assert!(
        keys.verifier(None, Algorithm::RS256).is_ok(),
        "single key: no kid needed"
    );
    assert_eq!(
        keys.verifier(Some(SIGNER.kid()), Algorithm::ES256)
            .unwrap_err(),
        TokenError::KeyAlgorithmMismatch,
        "an RSA key never verifies ES256"
    );
    let two = json!({"keys": [SIGNER.jwks()["keys"][0], {"kty": "RSA", "kid": "other", "n": SIGNER.jwks()["keys"][0]["n"], "e": "AQAB"}]});
    let two = KeySet::from_json(two.to_string().as_bytes()).unwrap();
    assert_eq!(
        two.verifier(None, Algorithm::RS256).unwrap_err(),
        TokenError::AmbiguousKey
    );
}

#[test]
fn unusable_jwks_entries_are_skipped() {
    let rsa = SIGNER.jwks()["keys"][0].clone();
    let mut encryption = rsa.clone();
    encryption["use"] = json!("enc");
    encryption["kid"] = json!("enc");
    let symmetric = json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"});
    let broken = json!({"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"});
    let document = json!({"keys": [encryption, symmetric, broken, rsa]});
    let keys = KeySet::from_json(document.to_string().as_bytes()).unwrap();
    assert_eq!(keys.key_ids().collect::<Vec<_>>(), vec![SIGNER.kid()]);

    let none_usable = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]});
    assert!(KeySet::from_json(none_usable.to_string().as_bytes()).is_err());
    assert!(KeySet::from_json(b"{\"keys\": 5}").is_err());
}

#[test]
fn header_values_from_claims_are_safe() {
    let token = verify(&SIGNER.sign(&json!({
        "iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 300,
        "email": "a@example.com", "n": 7, "ok": true, "groups": ["x", "y"],
        "evil": "a\r\nx-admin: true", "obj": {"a": 1}, "big": "x".repeat(5000),
        "name": "José Müller",
    })))
    .unwrap();
    assert_eq!(
        token.header_value("email").as_deref(),
        Some("a@example.com")
    );
    assert_eq!(token.header_value("n").as_deref(), Some("7"));
    assert_eq!(token.header_value("ok").as_deref(), Some("true"));
    assert_eq!(token.header_value("groups").as_deref(), Some("x y"));
    assert_eq!(
        token.header_value("name").as_deref(),
        Some("UTF-8''Jos%C3%A9%20M%C3%BCller")
    );
    for unsafe_claim in ["evil", "obj", "big", "missing"] {
        assert_eq!(token.header_value(unsafe_claim), None, "{unsafe_claim}");
    }
}

/// Finding 5 of the security review: `UTF-8''jos%C3%A9` (ASCII) rendered
/// the same `x-user-id` as `josé`, and `["a b"]` the same as `["a", "b"]`.
#[test]
fn two_different_claim_values_never_render_the_same_header_value() {
    let token = verify(&SIGNER.sign(&json!({
        "iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 300,
        "accented": "josé", "lookalike": "UTF-8''jos%C3%A9", "lower": "utf-8'en'x",
        "words": ["a", "b"], "spaced": ["a b"], "empty": [""], "sneaky": ["UTF-8''a"],
        "quote": "it's", "accented_words": ["josé", "b"],
    })))
    .unwrap();
    let value = |claim| token.header_value(claim).map(|v| v.into_owned());
    assert_eq!(value("accented").as_deref(), Some("UTF-8''jos%C3%A9"));
    assert_eq!(
        value("lookalike").as_deref(),
        Some("UTF-8''UTF-8%27%27jos%25C3%25A9"),
        "an ASCII value that reads as an ext-value is encoded too"
    );
    assert_eq!(value("lower").as_deref(), Some("UTF-8''utf-8%27en%27x"));
    assert_eq!(
        value("quote").as_deref(),
        Some("it's"),
        "one quote is no ext-value"
    );
    assert_eq!(value("words").as_deref(), Some("a b"));
    for ambiguous in ["spaced", "empty", "sneaky"] {
        assert_eq!(value(ambiguous), None, "{ambiguous}");
    }
    assert_eq!(
        value("accented_words").as_deref(),
        Some("UTF-8''jos%C3%A9%20b")
    );
}
