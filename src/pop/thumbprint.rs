//! JWK SHA-256 thumbprints (RFC 7638): the `jkt` that binds a DPoP access
//! token (`cnf.jkt`, RFC 9449 §6.1) to the key that signs its proofs.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

/// Why a JWK has no thumbprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ThumbprintError {
    /// `kty` is missing or not `RSA`, `EC` or `OKP`.
    #[error("the JWK key type is missing or not RSA, EC or OKP")]
    UnsupportedKeyType,
    /// A member the key type requires (RFC 7638 §3.2) is missing or not a string.
    #[error("the JWK lacks the required string member {0:?}")]
    MissingMember(&'static str),
}

/// The required members of each key type, in lexicographic order
/// (RFC 7638 §3.2 and §3.3; RFC 8037 §2 for `OKP`).
fn required_members(kty: &str) -> Option<&'static [&'static str]> {
    match kty {
        "RSA" => Some(&["e", "kty", "n"]),
        "EC" => Some(&["crv", "kty", "x", "y"]),
        "OKP" => Some(&["crv", "kty", "x"]),
        _ => None,
    }
}

/// The base64url (unpadded) SHA-256 thumbprint of a public JWK: the hash of
/// the JSON object of only its required members, in lexicographic order,
/// without whitespace. Other members (`kid`, `alg`, `use`, …) do not count.
pub fn jwk_thumbprint(jwk: &Map<String, Value>) -> Result<String, ThumbprintError> {
    let members = jwk
        .get("kty")
        .and_then(Value::as_str)
        .and_then(required_members)
        .ok_or(ThumbprintError::UnsupportedKeyType)?;
    let mut canonical = String::from("{");
    for (i, &name) in members.iter().enumerate() {
        let value = jwk
            .get(name)
            .and_then(Value::as_str)
            .ok_or(ThumbprintError::MissingMember(name))?;
        if i > 0 {
            canonical.push(',');
        }
        // serde_json writes a string with exactly the escaping RFC 7638 §3.3
        // asks for (RFC 7159, no optional escapes of printable characters).
        canonical.push_str(&Value::from(name).to_string());
        canonical.push(':');
        canonical.push_str(&Value::from(value).to_string());
    }
    canonical.push('}');
    Ok(sha256_base64url(canonical.as_bytes()))
}

/// base64url(SHA-256(`bytes`)), unpadded: the form of `jkt`, `ath` and
/// `x5t#S256`.
pub fn sha256_base64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    /// RFC 7638 §3.1's example RSA key and its thumbprint.
    #[test]
    fn the_rfc_7638_example_key_has_the_rfc_thumbprint() {
        let jwk = object(json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        }));
        assert_eq!(
            jwk_thumbprint(&jwk).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn only_the_required_members_count_in_lexicographic_order() {
        let ec = json!({"kty": "EC", "crv": "P-256", "x": "AAA", "y": "BBB"});
        let expected = sha256_base64url(br#"{"crv":"P-256","kty":"EC","x":"AAA","y":"BBB"}"#);
        assert_eq!(jwk_thumbprint(&object(ec.clone())).unwrap(), expected);
        let mut decorated = object(ec);
        decorated.insert("kid".into(), json!("k1"));
        decorated.insert("use".into(), json!("sig"));
        assert_eq!(jwk_thumbprint(&decorated).unwrap(), expected);

        let okp = json!({"x": "XXX", "crv": "Ed25519", "kty": "OKP", "alg": "EdDSA"});
        assert_eq!(
            jwk_thumbprint(&object(okp)).unwrap(),
            sha256_base64url(br#"{"crv":"Ed25519","kty":"OKP","x":"XXX"}"#)
        );
    }

    #[test]
    fn keys_without_their_required_members_have_no_thumbprint() {
        let cases = [
            (
                json!({"kty": "oct", "k": "c2VjcmV0"}),
                ThumbprintError::UnsupportedKeyType,
            ),
            (
                json!({"n": "x", "e": "AQAB"}),
                ThumbprintError::UnsupportedKeyType,
            ),
            (
                json!({"kty": "RSA", "n": "x"}),
                ThumbprintError::MissingMember("e"),
            ),
            (
                json!({"kty": "EC", "crv": "P-256", "x": "x"}),
                ThumbprintError::MissingMember("y"),
            ),
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": 5}),
                ThumbprintError::MissingMember("x"),
            ),
        ];
        for (jwk, error) in cases {
            assert_eq!(jwk_thumbprint(&object(jwk.clone())), Err(error), "{jwk}");
        }
    }
}
