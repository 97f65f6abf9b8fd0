//! scopegate's DPoP verifier against proofs made by code no one here wrote:
//! panva's `dpop` npm package (installed by `.ci/install-tools.sh`), run by
//! `tests/dpop/proof.mjs`. Valid proofs verify; each tampered variant is
//! refused with the error naming what was changed.

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use scopegate::authz::RequestHeader;
use scopegate::pop::{
    DpopError, Freshness, InMemoryReplayStore, NonceIssuer, NormalizedUri, ProofContext,
    ReplayStore, VerifiedProof, verify_proof,
};
use scopegate::token::{Algorithm, unix_now};
use serde_json::{Value, json};

const HTU: &str = "https://api.example.com/orders/42";
const ACCESS_TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJl";

struct NodeProofs {
    jkt: String,
    proofs: Vec<String>,
}

/// One key of `alg`, one proof per request (`htm`, `htu`, `accessToken`,
/// `nonce`), from panva's `dpop`.
fn node_proofs(alg: &str, requests: Value) -> NodeProofs {
    let answer = support::panva_proofs(json!({"alg": alg, "requests": requests}));
    NodeProofs {
        jkt: answer["jkt"].as_str().unwrap().to_string(),
        proofs: answer["proofs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect(),
    }
}

fn uri() -> NormalizedUri {
    HTU.parse().unwrap()
}

fn check(proof: &str, context: &ProofContext<'_>) -> Result<VerifiedProof, DpopError> {
    verify_proof(RequestHeader::One(proof), context, unix_now())
}

/// Replaces one part of a compact JWS.
fn with_part(proof: &str, index: usize, part: &str) -> String {
    let mut parts: Vec<&str> = proof.split('.').collect();
    parts[index] = part;
    parts.join(".")
}

#[tokio::test]
async fn panva_dpop_proofs_verify_and_tampered_ones_do_not() {
    let uri = uri();
    for (alg, expected) in [
        ("ES256", Algorithm::ES256),
        ("RS256", Algorithm::RS256),
        ("PS256", Algorithm::PS256),
    ] {
        let made = node_proofs(
            alg,
            json!([
                {"htm": "GET", "htu": HTU, "accessToken": ACCESS_TOKEN},
                {"htm": "POST", "htu": "https://API.example.com:443/orders/42?draft=1", "accessToken": ACCESS_TOKEN},
            ]),
        );
        let get = ProofContext::new("GET", &uri).with_access_token(ACCESS_TOKEN, &made.jkt);
        let post = ProofContext::new("POST", &uri).with_access_token(ACCESS_TOKEN, &made.jkt);
        let (get_proof, post_proof) = (&made.proofs[0], &made.proofs[1]);

        let verified = check(get_proof, &get).unwrap_or_else(|e| panic!("{alg}: {e:?}"));
        assert_eq!(verified.jkt, made.jkt, "{alg}: our thumbprint is panva's");
        assert_eq!(verified.algorithm, expected);
        // htu differs in case, default port and query: the same resource.
        assert!(check(post_proof, &post).is_ok(), "{alg}");

        // Each tampering, refused for what it changed.
        let other_uri: NormalizedUri = "https://api.example.com/orders/43".parse().unwrap();
        let other_key = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
        let (header, payload, signature) = {
            let p: Vec<&str> = get_proof.split('.').collect();
            (p[0].to_string(), p[1].to_string(), p[2].to_string())
        };
        let mut flipped = URL_SAFE_NO_PAD.decode(&signature).unwrap();
        flipped[0] ^= 0x01;
        let post_payload = post_proof.split('.').nth(1).unwrap();
        let mut claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&payload).unwrap()).unwrap();
        claims["htm"] = json!("DELETE");
        let mut no_typ: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&header).unwrap()).unwrap();
        no_typ["typ"] = json!("JWT");
        let cases: Vec<(String, ProofContext<'_>, DpopError)> = vec![
            (get_proof.clone(), post, DpopError::MethodMismatch),
            (
                get_proof.clone(),
                ProofContext::new("GET", &other_uri).with_access_token(ACCESS_TOKEN, &made.jkt),
                DpopError::UriMismatch,
            ),
            (
                get_proof.clone(),
                ProofContext::new("GET", &uri).with_access_token("another.access.token", &made.jkt),
                DpopError::AccessTokenHashMismatch,
            ),
            (
                get_proof.clone(),
                ProofContext::new("GET", &uri).with_access_token(ACCESS_TOKEN, other_key),
                DpopError::KeyMismatch,
            ),
            (
                with_part(get_proof, 2, &URL_SAFE_NO_PAD.encode(&flipped)),
                get,
                DpopError::BadSignature,
            ),
            (
                with_part(get_proof, 1, post_payload),
                get,
                DpopError::BadSignature,
            ),
            (
                with_part(get_proof, 1, &URL_SAFE_NO_PAD.encode(claims.to_string())),
                get,
                DpopError::BadSignature,
            ),
            (
                with_part(get_proof, 0, &URL_SAFE_NO_PAD.encode(no_typ.to_string())),
                get,
                DpopError::WrongType,
            ),
        ];
        for (proof, context, error) in cases {
            assert_eq!(
                check(&proof, &context),
                Err(error.clone()),
                "{alg}: {error:?}"
            );
        }
        // Later than the window: the same proof is too old.
        let later = unix_now() + 120;
        assert_eq!(
            verify_proof(RequestHeader::One(get_proof), &get, later),
            Err(DpopError::TooOld)
        );
        // Only some algorithms accepted for proofs.
        let mut es_only = get;
        es_only.algorithms = [Algorithm::ES256].into_iter().collect();
        if expected != Algorithm::ES256 {
            assert_eq!(
                check(get_proof, &es_only),
                Err(DpopError::AlgorithmNotAllowed)
            );
        }
    }
}

#[tokio::test]
async fn a_panva_proof_is_accepted_once() {
    let uri = uri();
    let made = node_proofs("ES256", json!([{"htm": "GET", "htu": HTU}]));
    let context = ProofContext::new("GET", &uri);
    let store = ReplayStore::InMemory(InMemoryReplayStore::new(1_000));
    let now = unix_now();
    let first = check(&made.proofs[0], &context).unwrap();
    assert_eq!(store.check(&first, now).await, Ok(Freshness::Fresh));
    let again = check(&made.proofs[0], &context).unwrap();
    assert_eq!(store.check(&again, now).await, Ok(Freshness::Replayed));
}

#[tokio::test]
async fn panva_proofs_carry_the_server_nonce() {
    let uri = uri();
    let issuer = NonceIssuer::new(&[42; 32], NonceIssuer::DEFAULT_PERIOD).unwrap();
    let nonce = issuer.issue(unix_now());
    let made = node_proofs(
        "ES256",
        json!([
            {"htm": "GET", "htu": HTU, "accessToken": ACCESS_TOKEN, "nonce": nonce},
            {"htm": "GET", "htu": HTU, "accessToken": ACCESS_TOKEN},
            {"htm": "GET", "htu": HTU, "accessToken": ACCESS_TOKEN, "nonce": "not-ours"},
        ]),
    );
    let context = ProofContext::new("GET", &uri)
        .with_access_token(ACCESS_TOKEN, &made.jkt)
        .with_nonce(&issuer);
    assert!(check(&made.proofs[0], &context).is_ok());
    let refused = check(&made.proofs[1], &context).unwrap_err();
    assert_eq!(
        (refused.clone(), refused.error_code()),
        (DpopError::UseNonce, "use_dpop_nonce")
    );
    assert_eq!(check(&made.proofs[2], &context), Err(DpopError::UseNonce));
}

/// panva's `dpop` 2.x signs Ed25519 proofs with the fully-specified
/// `alg: Ed25519` (RFC 9864); scopegate's algorithm set knows only `EdDSA`
/// so far. This pins the current behaviour: when `Ed25519` joins
/// `token::Algorithm`, this test must change to expect acceptance.
#[tokio::test]
async fn panva_ed25519_proofs_use_an_alg_name_scopegate_does_not_accept_yet() {
    let uri = uri();
    let made = node_proofs("Ed25519", json!([{"htm": "GET", "htu": HTU}]));
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(made.proofs[0].split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "Ed25519");
    assert_eq!(
        check(&made.proofs[0], &ProofContext::new("GET", &uri)),
        Err(DpopError::AlgorithmNotAllowed)
    );
}
