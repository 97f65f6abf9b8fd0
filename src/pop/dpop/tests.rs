//! Every RFC 9449 §4.3 check, with proofs signed by real keys.

use std::sync::LazyLock;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::*;
use crate::pop::NonceIssuer;
use crate::token::encode_compact;

const NOW: u64 = 1_800_000_000;
const URI: &str = "https://api.example.com/orders/42";
const ACCESS_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJl";

/// A client's proof-of-possession key.
enum ClientKey {
    Ec(signature::EcdsaKeyPair),
    Ed(signature::Ed25519KeyPair),
    Rsa(aws_lc_rs::rsa::KeyPair),
}

static EC: LazyLock<ClientKey> = LazyLock::new(|| {
    ClientKey::Ec(
        signature::EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
    )
});
static EC_OTHER: LazyLock<ClientKey> = LazyLock::new(|| {
    ClientKey::Ec(
        signature::EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
    )
});
static ED: LazyLock<ClientKey> =
    LazyLock::new(|| ClientKey::Ed(signature::Ed25519KeyPair::generate().unwrap()));
static RSA: LazyLock<ClientKey> = LazyLock::new(|| {
    ClientKey::Rsa(aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap())
});

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl ClientKey {
    fn alg(&self) -> &'static str {
        match self {
            ClientKey::Ec(_) => "ES256",
            ClientKey::Ed(_) => "EdDSA",
            ClientKey::Rsa(_) => "PS256",
        }
    }

    fn jwk(&self) -> Value {
        match self {
            ClientKey::Ec(pair) => {
                let point = pair.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
            ClientKey::Ed(pair) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())})
            }
            ClientKey::Rsa(pair) => {
                let public = pair.public_key();
                json!({
                    "kty": "RSA",
                    "n": b64(public.modulus().big_endian_without_leading_zero()),
                    "e": b64(public.exponent().big_endian_without_leading_zero()),
                })
            }
        }
    }

    fn thumbprint(&self) -> String {
        jwk_thumbprint(self.jwk().as_object().unwrap()).unwrap()
    }

    fn signature(&self, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            ClientKey::Ec(pair) => pair.sign(&rng, input).unwrap().as_ref().to_vec(),
            ClientKey::Ed(pair) => pair.sign(input).as_ref().to_vec(),
            ClientKey::Rsa(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(&signature::RSA_PSS_SHA256, &rng, input, &mut sig)
                    .unwrap();
                sig
            }
        }
    }

    fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": self.alg(), "jwk": self.jwk()})
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        encode_compact(header, claims, |input| self.signature(input))
    }

    fn proof(&self, claims: &Value) -> String {
        self.sign(&self.header(), claims)
    }
}

/// The claims of a good proof for `GET URI` with `ACCESS_TOKEN`.
fn claims() -> Value {
    json!({
        "jti": "e1j3V_bKic8-LAEB",
        "htm": "GET",
        "htu": URI,
        "iat": NOW,
        "ath": sha256_base64url(ACCESS_TOKEN.as_bytes()),
    })
}

fn claims_with(name: &str, value: Value) -> Value {
    let mut claims = claims();
    if value.is_null() {
        claims.as_object_mut().unwrap().remove(name);
    } else {
        claims[name] = value;
    }
    claims
}

fn header_with(name: &str, value: Value) -> Value {
    let mut header = EC.header();
    if value.is_null() {
        header.as_object_mut().unwrap().remove(name);
    } else {
        header[name] = value;
    }
    header
}

static REQUEST_URI: LazyLock<NormalizedUri> = LazyLock::new(|| URI.parse().unwrap());
static EC_JKT: LazyLock<String> = LazyLock::new(|| EC.thumbprint());

/// The context of `GET URI` with `ACCESS_TOKEN` bound to the `EC` key.
fn context() -> ProofContext<'static> {
    ProofContext::new("GET", &REQUEST_URI).with_access_token(ACCESS_TOKEN, &EC_JKT)
}

fn verify(proof: &str) -> Result<VerifiedProof, DpopError> {
    verify_proof(RequestHeader::One(proof), &context(), NOW)
}

#[test]
fn a_good_proof_verifies_and_names_its_key() {
    let proof = verify(&EC.proof(&claims())).unwrap();
    assert_eq!(proof.jkt, *EC_JKT);
    assert_eq!(proof.jti, "e1j3V_bKic8-LAEB");
    assert_eq!(proof.iat, NOW);
    assert_eq!(proof.htu, *REQUEST_URI);
    assert_eq!(proof.algorithm, Algorithm::ES256);
    assert_eq!(
        proof.replay_until,
        NOW + DEFAULT_MAX_AGE_SECONDS + DEFAULT_CLOCK_SKEW_SECONDS
    );
}

#[test]
fn every_key_family_verifies() {
    for key in [&*EC, &*ED, &*RSA] {
        let jkt = key.thumbprint();
        let context = ProofContext::new("GET", &REQUEST_URI).with_access_token(ACCESS_TOKEN, &jkt);
        let proof = verify_proof(RequestHeader::One(&key.proof(&claims())), &context, NOW);
        assert_eq!(proof.unwrap().jkt, jkt, "{}", key.alg());
    }
}

#[test]
fn without_an_access_token_ath_and_jkt_are_not_required() {
    // A proof to a token endpoint, or a resource accepting unbound tokens.
    let context = ProofContext::new("GET", &REQUEST_URI);
    let proof = EC.proof(&claims_with("ath", Value::Null));
    assert!(verify_proof(RequestHeader::One(&proof), &context, NOW).is_ok());
}

#[test]
fn exactly_one_proof_header() {
    let proof = EC.proof(&claims());
    let context = context();
    let check = |header| verify_proof(header, &context, NOW);
    assert_eq!(check(RequestHeader::Absent), Err(DpopError::MissingProof));
    assert_eq!(check(RequestHeader::Several), Err(DpopError::SeveralProofs));
    let joined = format!("{proof},{proof}");
    assert_eq!(
        check(RequestHeader::One(&joined)),
        Err(DpopError::SeveralProofs)
    );
    // Surrounding whitespace is not part of the value (RFC 9110 §5.5).
    let padded = format!(" {proof}\t");
    assert!(check(RequestHeader::One(&padded)).is_ok());
}

#[test]
fn a_proof_that_is_not_a_compact_jws_is_malformed() {
    let good = EC.proof(&claims());
    let (head, rest) = good.split_once('.').unwrap();
    let array_header = format!("{}.{rest}", b64(b"[1]"));
    let too_long = format!("{good}{}", "A".repeat(MAX_PROOF_BYTES));
    let array_claims = EC.sign(&EC.header(), &json!(["jti"]));
    for proof in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        &format!("{head}..{}", rest.rsplit_once('.').unwrap().1),
        &format!("{head}.{rest}="),
        &format!("{head}!.{rest}"),
        &array_header,
        &too_long,
        &array_claims,
    ] {
        assert!(
            matches!(verify(proof), Err(DpopError::Malformed(_))),
            "{proof:?}: {:?}",
            verify(proof)
        );
    }
}

#[test]
fn typ_must_be_dpop_jwt() {
    for typ in [
        json!(null),
        json!("JWT"),
        json!("at+jwt"),
        json!("dpop"),
        json!(["dpop+jwt"]),
        json!("text/dpop+jwt"),
    ] {
        let proof = EC.sign(&header_with("typ", typ.clone()), &claims());
        assert_eq!(verify(&proof), Err(DpopError::WrongType), "{typ}");
    }
    // A media type: case-insensitive, `application/` implied (RFC 7515 §4.1.9).
    for typ in ["DPoP+JWT", "application/dpop+jwt", "Application/DPOP+jwt"] {
        let proof = EC.sign(&header_with("typ", json!(typ)), &claims());
        assert!(verify(&proof).is_ok(), "{typ}");
    }
}

#[test]
fn alg_must_be_asymmetric_and_allowed() {
    for alg in ["none", "HS256", "HS512", "ES256K", "RS1", "es256", ""] {
        let proof = EC.sign(&header_with("alg", json!(alg)), &claims());
        assert_eq!(verify(&proof), Err(DpopError::AlgorithmNotAllowed), "{alg}");
    }
    // An unsigned proof (`alg: none`, empty signature) is refused too.
    let unsigned = format!(
        "{}.{}.",
        b64(header_with("alg", json!("none")).to_string().as_bytes()),
        b64(claims().to_string().as_bytes())
    );
    assert!(verify(&unsigned).is_err());
    // ES256 is supported but the server accepts only EdDSA proofs.
    let mut only_eddsa = context();
    only_eddsa.algorithms = [Algorithm::EdDSA].into_iter().collect();
    let proof = EC.proof(&claims());
    assert_eq!(
        verify_proof(RequestHeader::One(&proof), &only_eddsa, NOW),
        Err(DpopError::AlgorithmNotAllowed)
    );
}

#[test]
fn critical_header_extensions_are_refused() {
    let proof = EC.sign(&header_with("crit", json!(["exp"])), &claims());
    assert_eq!(verify(&proof), Err(DpopError::CriticalHeader));
}

#[test]
fn the_header_must_carry_a_usable_public_jwk() {
    let proof = EC.sign(&header_with("jwk", Value::Null), &claims());
    assert_eq!(verify(&proof), Err(DpopError::MissingJwk));
    for jwk in [
        json!("a key"),
        json!({"kty": "EC", "crv": "P-384", "x": EC.jwk()["x"], "y": EC.jwk()["y"]}),
        ED.jwk(),
        json!({"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}),
        // A point that is not on the curve.
        json!({"kty": "EC", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[2; 32])}),
    ] {
        let proof = EC.sign(&header_with("jwk", jwk.clone()), &claims());
        assert_eq!(verify(&proof), Err(DpopError::InvalidJwk), "{jwk}");
    }
}

#[test]
fn a_jwk_with_private_key_material_is_refused() {
    for member in PRIVATE_MEMBERS {
        let mut jwk = EC.jwk();
        jwk[member] = json!("c2VjcmV0");
        let proof = EC.sign(&header_with("jwk", jwk), &claims());
        assert_eq!(verify(&proof), Err(DpopError::PrivateKey), "{member}");
    }
    let symmetric = json!({"kty": "oct", "k": "c2VjcmV0"});
    let proof = EC.sign(&header_with("jwk", symmetric), &claims());
    assert_eq!(verify(&proof), Err(DpopError::PrivateKey));
}

#[test]
fn the_signature_must_verify_with_the_header_jwk() {
    // Signed by one key, claiming another's public key.
    let impostor = EC_OTHER.sign(&EC.header(), &claims());
    assert_eq!(verify(&impostor), Err(DpopError::BadSignature));
    // A good proof with its claims changed after signing.
    let good = EC.proof(&claims());
    let mut parts: Vec<&str> = good.split('.').collect();
    let changed = b64(claims_with("htm", json!("POST")).to_string().as_bytes());
    parts[1] = &changed;
    assert_eq!(verify(&parts.join(".")), Err(DpopError::BadSignature));
}

#[test]
fn required_claims_must_be_present_and_well_typed() {
    for name in ["jti", "htm", "htu", "iat", "ath"] {
        let proof = EC.proof(&claims_with(name, Value::Null));
        assert_eq!(verify(&proof), Err(DpopError::MissingClaim(name)), "{name}");
    }
    let cases = [
        ("jti", json!(42)),
        ("jti", json!("")),
        ("jti", json!("j".repeat(MAX_JTI_BYTES + 1))),
        ("htm", json!(["GET"])),
        ("htu", json!(7)),
        ("htu", json!("/orders/42")),
        ("iat", json!("1800000000")),
        ("iat", json!(-1)),
        ("ath", json!(true)),
    ];
    for (name, value) in cases {
        let proof = EC.proof(&claims_with(name, value.clone()));
        assert_eq!(
            verify(&proof),
            Err(DpopError::InvalidClaim(name)),
            "{name}: {value}"
        );
    }
    // The longest accepted jti, and a fractional iat, are fine.
    assert!(verify(&EC.proof(&claims_with("jti", json!("j".repeat(MAX_JTI_BYTES))))).is_ok());
    assert_eq!(
        verify(&EC.proof(&claims_with("iat", json!(NOW as f64 + 0.5))))
            .unwrap()
            .iat,
        NOW
    );
}

#[test]
fn htm_must_be_the_request_method_exactly() {
    for htm in ["POST", "get", "GET "] {
        let proof = EC.proof(&claims_with("htm", json!(htm)));
        assert_eq!(verify(&proof), Err(DpopError::MethodMismatch), "{htm}");
    }
}

#[test]
fn htu_must_be_the_request_uri_after_normalization() {
    for htu in [
        "https://api.example.com/orders/43",
        "http://api.example.com/orders/42",
        "https://api.example.com:8443/orders/42",
        "https://other.example.com/orders/42",
        "https://api.example.com/orders/42/",
        "https://api.example.com/orders%2F42",
    ] {
        let proof = EC.proof(&claims_with("htu", json!(htu)));
        assert_eq!(verify(&proof), Err(DpopError::UriMismatch), "{htu}");
    }
    for htu in [
        "HTTPS://API.Example.com:443/orders/42",
        "https://api.example.com/orders/./x/../42?page=2#top",
        "https://api.example.com/%6Frders/42",
    ] {
        let proof = EC.proof(&claims_with("htu", json!(htu)));
        assert!(verify(&proof).is_ok(), "{htu}");
    }
}

#[test]
fn iat_must_be_within_the_window() {
    let oldest = NOW - DEFAULT_MAX_AGE_SECONDS - DEFAULT_CLOCK_SKEW_SECONDS;
    let newest = NOW + DEFAULT_CLOCK_SKEW_SECONDS;
    assert!(verify(&EC.proof(&claims_with("iat", json!(oldest)))).is_ok());
    assert!(verify(&EC.proof(&claims_with("iat", json!(newest)))).is_ok());
    assert_eq!(
        verify(&EC.proof(&claims_with("iat", json!(oldest - 1)))),
        Err(DpopError::TooOld)
    );
    assert_eq!(
        verify(&EC.proof(&claims_with("iat", json!(newest + 1)))),
        Err(DpopError::IssuedInFuture)
    );
    let mut tight = context();
    tight.max_age_seconds = 10;
    tight.clock_skew_seconds = 0;
    let proof = EC.proof(&claims_with("iat", json!(NOW - 11)));
    assert_eq!(
        verify_proof(RequestHeader::One(&proof), &tight, NOW),
        Err(DpopError::TooOld)
    );
}

#[test]
fn ath_must_hash_the_access_token_sent_with_it() {
    let other_token = sha256_base64url(b"another.access.token");
    let cases = [
        json!(other_token),
        json!(ACCESS_TOKEN),
        json!(sha256_base64url(ACCESS_TOKEN.as_bytes()).to_uppercase()),
    ];
    for ath in cases {
        let proof = EC.proof(&claims_with("ath", ath.clone()));
        assert_eq!(
            verify(&proof),
            Err(DpopError::AccessTokenHashMismatch),
            "{ath}"
        );
    }
}

#[test]
fn the_proof_key_must_be_the_key_the_token_is_bound_to() {
    let proof = EC_OTHER.proof(&claims());
    assert_eq!(verify(&proof), Err(DpopError::KeyMismatch));
}

#[test]
fn server_nonces_are_checked_last() {
    let issuer = NonceIssuer::new(&[7; 32], std::time::Duration::from_secs(60)).unwrap();
    let context = context().with_nonce(&issuer);
    let check = |claims: &Value| verify_proof(RequestHeader::One(&EC.proof(claims)), &context, NOW);
    assert_eq!(check(&claims()), Err(DpopError::UseNonce));
    let stale = issuer.issue(NOW - 180);
    assert_eq!(
        check(&claims_with("nonce", json!(stale))),
        Err(DpopError::UseNonce)
    );
    assert_eq!(
        check(&claims_with("nonce", json!("made-up"))),
        Err(DpopError::UseNonce)
    );
    assert_eq!(
        check(&claims_with("nonce", json!(1))),
        Err(DpopError::InvalidClaim("nonce"))
    );
    assert!(check(&claims_with("nonce", json!(issuer.issue(NOW)))).is_ok());
    // An otherwise invalid proof reports its own error, not the nonce.
    assert_eq!(
        check(&claims_with("htm", json!("PUT"))),
        Err(DpopError::MethodMismatch)
    );
    // Without nonces on, a nonce claim is ignored.
    assert!(verify(&EC.proof(&claims_with("nonce", json!("anything")))).is_ok());
}

#[test]
fn labels_are_distinct_and_codes_follow_rfc_9449() {
    let errors = [
        DpopError::MissingProof,
        DpopError::SeveralProofs,
        DpopError::Malformed("x"),
        DpopError::WrongType,
        DpopError::AlgorithmNotAllowed,
        DpopError::CriticalHeader,
        DpopError::MissingJwk,
        DpopError::PrivateKey,
        DpopError::InvalidJwk,
        DpopError::BadSignature,
        DpopError::MissingClaim("jti"),
        DpopError::InvalidClaim("jti"),
        DpopError::MethodMismatch,
        DpopError::UriMismatch,
        DpopError::TooOld,
        DpopError::IssuedInFuture,
        DpopError::AccessTokenHashMismatch,
        DpopError::KeyMismatch,
        DpopError::UseNonce,
        DpopError::Replayed,
    ];
    let labels: std::collections::HashSet<_> = errors.iter().map(DpopError::label).collect();
    assert_eq!(labels.len(), errors.len());
    for error in &errors {
        let expected = if *error == DpopError::UseNonce {
            "use_dpop_nonce"
        } else {
            "invalid_dpop_proof"
        };
        assert_eq!(error.error_code(), expected, "{error:?}");
    }
}
