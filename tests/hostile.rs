//! The hostile-token corpus: tokens and headers an attacker can send. Every
//! case must be answered 401 — never an allow, never a 5xx, never a panic —
//! by a real scopegate over gRPC, with a real JWKS server holding two keys.

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use support::*;

/// `header.payload.signature` from raw JSON texts (to express duplicate
/// keys and other things `serde_json::Value` cannot hold), RS256-signed by
/// KEY_A: the signature is valid, only the content is hostile.
fn raw_signed(header: &str, payload: &str) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = KEY_A.rs256_signature(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn with_claim(issuer: &str, name: &str, value: Value) -> String {
    let mut c = claims(issuer);
    if value.is_null() {
        c.as_object_mut().unwrap().remove(name);
    } else {
        c[name] = value;
    }
    KEY_A.sign(&c)
}

fn with_header(issuer: &str, header: Value) -> String {
    KEY_A.sign_with_header(&header, &claims(issuer))
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// Every hostile case: (name, `Authorization` header value).
fn corpus(issuer: &str, attacker: &str) -> Vec<(String, String)> {
    let good = KEY_A.sign(&claims(issuer));
    let (input, signature) = good.rsplit_once('.').unwrap();
    let (header_b64, payload_b64) = input.split_once('.').unwrap();
    let pem = format!(
        "-----BEGIN RSA PUBLIC KEY-----\n{}\n-----END RSA PUBLIC KEY-----\n",
        STANDARD.encode(KEY_A.public_key_der())
    );
    let attacker_key = RsaKey::generate("attacker");
    let bearer = |token: String| format!("Bearer {token}");
    let mut cases: Vec<(&str, String)> = vec![
        ("alg none", bearer(format!("{}.{payload_b64}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#)))),
        ("alg None", bearer(format!("{}.{payload_b64}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"None","kid":"key-a"}"#)))),
        ("alg NONE", bearer(format!("{}.{payload_b64}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"NONE"}"#)))),
        ("alg nOnE with a signature", bearer(format!("{}.{payload_b64}.{signature}", URL_SAFE_NO_PAD.encode(r#"{"alg":"nOnE"}"#)))),
        ("HS256 keyed with the RSA public key DER", bearer(hmac_forged("HS256", &KEY_A.public_key_der(), &claims(issuer)))),
        ("HS384 keyed with the RSA public key DER", bearer(hmac_forged("HS384", &KEY_A.public_key_der(), &claims(issuer)))),
        ("HS512 keyed with the RSA public key DER", bearer(hmac_forged("HS512", &KEY_A.public_key_der(), &claims(issuer)))),
        ("HS256 keyed with the RSA public key PEM", bearer(hmac_forged("HS256", pem.as_bytes(), &claims(issuer)))),
        ("HS256 keyed with the JWK n", bearer(hmac_forged("HS256", KEY_A.jwk()["n"].as_str().unwrap().as_bytes(), &claims(issuer)))),
        ("RS256 header, ES256 signature", bearer(format!("{input}.{}", EC.sign(&claims(issuer)).rsplit_once('.').unwrap().1))),
        ("ES256 header on the RSA key's kid", bearer(with_header(issuer, json!({"alg": "ES256", "kid": "key-a"})))),
        ("no kid while the JWKS has several keys", bearer(with_header(issuer, json!({"alg": "RS256"})))),
        ("kid with path traversal", bearer(with_header(issuer, json!({"alg": "RS256", "kid": "../../../../etc/passwd"})))),
        ("kid with SQL", bearer(with_header(issuer, json!({"alg": "RS256", "kid": "' OR '1'='1' --"})))),
        ("kid 8 KiB long", bearer(with_header(issuer, json!({"alg": "RS256", "kid": "k".repeat(8192)})))),
        ("jku to the attacker's JWKS", bearer(attacker_key.sign_with_header(
            &json!({"alg": "RS256", "kid": "attacker", "jku": format!("{attacker}/.well-known/jwks.json")}), &claims(issuer)))),
        ("x5u to the attacker", bearer(attacker_key.sign_with_header(
            &json!({"alg": "RS256", "kid": "attacker", "x5u": format!("{attacker}/cert.pem")}), &claims(issuer)))),
        ("embedded jwk of the attacker", bearer(attacker_key.sign_with_header(
            &json!({"alg": "RS256", "jwk": attacker_key.jwk()}), &claims(issuer)))),
        ("embedded jwk with the real kid", bearer(attacker_key.sign_with_header(
            &json!({"alg": "RS256", "kid": "key-a", "jwk": attacker_key.jwk()}), &claims(issuer)))),
        ("x5c with garbage", bearer(attacker_key.sign_with_header(
            &json!({"alg": "RS256", "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]}), &claims(issuer)))),
        ("crit with an unknown extension", bearer(with_header(issuer, json!({"alg": "RS256", "kid": "key-a", "crit": ["exp"], "exp": 1})))),
        ("crit null", bearer(with_header(issuer, json!({"alg": "RS256", "kid": "key-a", "crit": null})))),
        ("crit b64=false", bearer(with_header(issuer, json!({"alg": "RS256", "kid": "key-a", "crit": ["b64"], "b64": false})))),
        ("duplicate alg in the header", bearer(raw_signed(r#"{"alg":"RS256","kid":"key-a","alg":"none"}"#, &claims(issuer).to_string()))),
        ("duplicate sub in the payload", bearer(raw_signed(r#"{"alg":"RS256","kid":"key-a"}"#,
            &claims(issuer).to_string().replacen('{', r#"{"sub":"admin","#, 1)))),
        ("header is a JSON array", bearer(raw_signed(r#"["RS256"]"#, &claims(issuer).to_string()))),
        ("exp as a string", bearer(with_claim(issuer, "exp", json!((now() + 600).to_string())))),
        ("exp as a float in the past", bearer(with_claim(issuer, "exp", json!(now() as f64 - 3600.5)))),
        ("exp negative", bearer(with_claim(issuer, "exp", json!(-1)))),
        ("exp huge (u64::MAX)", bearer(with_claim(issuer, "exp", json!(u64::MAX)))),
        ("exp 1e308", bearer(with_claim(issuer, "exp", json!(1e308)))),
        ("exp missing", bearer(with_claim(issuer, "exp", Value::Null))),
        ("nbf as a string", bearer(with_claim(issuer, "nbf", json!("0")))),
        ("iat as a string", bearer(with_claim(issuer, "iat", json!("yesterday")))),
        ("iat huge", bearer(with_claim(issuer, "iat", json!(u64::MAX)))),
        ("aud as an object", bearer(with_claim(issuer, "aud", json!({"aud": AUDIENCE})))),
        ("aud as an empty array", bearer(with_claim(issuer, "aud", json!([])))),
        ("aud nested in an array", bearer(with_claim(issuer, "aud", json!([[AUDIENCE]])))),
        ("iss with a trailing space", bearer(with_claim(issuer, "iss", json!(format!("{issuer} "))))),
        ("iss with a leading space", bearer(with_claim(issuer, "iss", json!(format!(" {issuer}"))))),
        ("iss in upper case", bearer(with_claim(issuer, "iss", json!(issuer.to_uppercase())))),
        ("payload not JSON", bearer(raw_signed(r#"{"alg":"RS256","kid":"key-a"}"#, "not json at all"))),
        ("payload nested 5,000 deep", bearer(raw_signed(r#"{"alg":"RS256","kid":"key-a"}"#, &format!(r#"{{"x":{}}}"#, nested(5000))))),
        ("payload nested 10,000 deep", bearer(raw_signed(r#"{"alg":"RS256","kid":"key-a"}"#, &format!(r#"{{"x":{}}}"#, nested(10_000))))),
        ("1 MiB token", bearer(format!("{input}.{}", "A".repeat(1 << 20)))),
        ("standard base64 characters", bearer(format!("{input}.{}", signature.replace('-', "+").replace('_', "/") + "+/"))),
        ("padded signature", bearer(format!("{good}=="))),
        ("four segments", bearer(format!("{good}.{signature}"))),
        ("empty payload segment", bearer(format!("{header_b64}..{signature}"))),
        ("all segments empty", bearer("..".into())),
        ("JWE compact (five parts)", bearer(format!("{header_b64}.{payload_b64}.{payload_b64}.{payload_b64}.{signature}"))),
        ("signature re-encoded with other trailing bits", bearer(reencode_last_char(&good))),
        ("signature truncated", bearer(good[..good.len() - 4].to_string())),
        ("Bearer with an empty token", "Bearer ".into()),
        ("two Authorization headers (as Envoy joins them)", format!("Bearer {good},Bearer {good}")),
    ];
    cases.push((
        "token from another issuer's key with our kid",
        bearer(ROGUE.sign(&claims(issuer))),
    ));
    cases
        .into_iter()
        .map(|(name, header)| (name.to_string(), header))
        .collect()
}

/// Flips the unused low bits of the last base64url character of the
/// signature: same bytes to a lenient decoder, a different string.
fn reencode_last_char(token: &str) -> String {
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = token.chars().last().unwrap();
    let sibling = alphabet
        .chars()
        .nth(alphabet.find(last).unwrap() ^ 1)
        .unwrap();
    format!("{}{sibling}", &token[..token.len() - 1])
}

#[tokio::test]
async fn every_hostile_token_is_a_clean_401() {
    let jwks = JwksServer::start(vec![KEY_A.jwk(), KEY_B.jwk(), EC.jwk()]).await;
    let attacker = JwksServer::start(vec![]).await;
    let policy = policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), STANDARD_RULES);
    let sg = Scopegate::start(&policy).await;
    let corpus = corpus(&jwks.issuer(), &format!("http://{}", attacker.addr));
    assert!(corpus.len() >= 40, "{} cases", corpus.len());

    let mut failures = Vec::new();
    for (name, authorization) in &corpus {
        let checked = sg
            .check("GET", "/orders", &[("authorization", authorization)])
            .await;
        if checked.http_status() != 401 || checked.grpc_code() != 16 {
            failures.push(format!(
                "{name}: HTTP {} / gRPC {}",
                checked.http_status(),
                checked.grpc_code()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "not a clean 401:\n{}",
        failures.join("\n")
    );
    assert_eq!(
        attacker.fetches(),
        0,
        "header-supplied key URLs are never fetched"
    );

    // The same server still allows a good token afterwards.
    let good = KEY_A.sign(&claims(&jwks.issuer()));
    assert_eq!(
        sg.check_token("GET", "/orders", &good).await.http_status(),
        200
    );
}

#[tokio::test]
async fn accepted_variations_of_the_bearer_scheme() {
    // RFC 9110 §11: the scheme is case-insensitive; DESIGN §4: any
    // whitespace separates it from the token.
    let (jwks, sg) = standard_with(vec![KEY_A.jwk()]).await;
    let good = KEY_A.sign(&claims(&jwks.issuer()));
    for authorization in [
        format!("bearer {good}"),
        format!("BEARER {good}"),
        format!("Bearer  {good}"),
        format!("Bearer\t{good}"),
    ] {
        let checked = sg
            .check("GET", "/orders", &[("authorization", &authorization)])
            .await;
        assert_eq!(checked.http_status(), 200, "{authorization:.20}");
    }
}

#[tokio::test]
async fn duplicate_authorization_headers_in_raw_header_map_are_rejected() {
    let (jwks, sg) = standard_with(vec![KEY_A.jwk()]).await;
    let good = format!("Bearer {}", KEY_A.sign(&claims(&jwks.issuer())));
    let request = check_request_raw(
        HOST,
        "GET",
        "/orders",
        &[("authorization", &good), ("authorization", &good)],
    );
    let checked = sg.send(request).await;
    assert_eq!(checked.http_status(), 401);
}
