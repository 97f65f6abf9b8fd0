//! DPoP through real Envoy: proofs made by panva's `dpop` package (code no
//! one here wrote), sent by an HTTP client to Envoy 1.40, which asks
//! scopegate; the upstream sees only what passed. A valid proof, each
//! request-binding failure, a replay, and the server-nonce dance.

mod support;

use std::sync::Arc;

use serde_json::{Value, json};
use support::envoy::{echo_upstream, start_envoy};
use support::*;

/// A policy for Envoy's own host that requires DPoP.
fn dpop_policy(jwks: &JwksServer) -> String {
    policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), "  proofOfPossession: {mechanism: dpop, required: true}\n  rules: [{paths: [\"/orders/**\"]}]\n")
        .replace(&format!("[\"{HOST}\", \"*.orders.internal\"]"), "[\"127.0.0.1\"]")
}

/// A key made by panva's package and a token bound to it (`cnf.jkt`).
fn bound_token(jwks: &JwksServer) -> (Value, String) {
    let key = panva_proofs(json!({"alg": "ES256", "requests": []}));
    let mut c = claims(&jwks.issuer());
    c["cnf"] = json!({"jkt": key["jkt"]});
    (key["privateJwk"].clone(), KEY_A.sign(&c))
}

/// Proofs by that key for (method, url, nonce) requests with `token`.
fn proofs(key: &Value, token: &str, requests: &[(&str, &str, Option<&str>)]) -> Vec<String> {
    let requests: Vec<Value> = requests
        .iter()
        .map(|(htm, htu, nonce)| {
            let mut request = json!({"htm": htm, "htu": htu, "accessToken": token});
            if let Some(nonce) = nonce {
                request["nonce"] = json!(nonce);
            }
            request
        })
        .collect();
    panva_proofs(json!({"privateJwk": key, "requests": requests}))["proofs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

async fn send(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    token: &str,
    proof: &str,
) -> reqwest::Response {
    client
        .request(method.parse().unwrap(), url)
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", proof)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn panva_proofs_through_envoy_are_checked_against_the_request() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let sg = Scopegate::start(&dpop_policy(&jwks)).await;
    let (_envoy, port) = start_envoy(sg.running.grpc_addr().port(), echo_upstream().await).await;
    let url = format!("http://127.0.0.1:{port}/orders/1");
    let (key, token) = bound_token(&jwks);
    let other_url = format!("http://127.0.0.1:{port}/orders/2");
    let [valid, wrong_method, wrong_uri]: [String; 3] = proofs(
        &key,
        &token,
        &[
            ("GET", &url, None),
            ("POST", &url, None),
            ("GET", &other_url, None),
        ],
    )
    .try_into()
    .unwrap();
    let client = reqwest::Client::new();

    let ok = send(&client, "GET", &url, &token, &valid).await;
    assert_eq!(ok.status(), 200);
    let upstream: Value = ok.json().await.unwrap();
    assert!(upstream.get("x-user-id").is_some(), "{upstream}");

    let replay = send(&client, "GET", &url, &token, &valid).await;
    assert_eq!(replay.status(), 401, "a replayed proof");
    for (name, proof) in [("htm", &wrong_method), ("htu", &wrong_uri)] {
        let denied = send(&client, "GET", &url, &token, proof).await;
        assert_eq!(denied.status(), 401, "{name}");
        let challenge = denied.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            challenge.starts_with("DPoP ") && challenge.contains("invalid_dpop_proof"),
            "{name}: {challenge}"
        );
    }
    // The bound token as a bearer token: refused (RFC 9449 §7.2).
    let bearer = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(bearer.status(), 401);
}

#[tokio::test]
async fn the_server_nonce_dance_through_envoy() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let nonces =
        scopegate::pop::NonceIssuer::new(&[7u8; 32], scopegate::pop::NonceIssuer::DEFAULT_PERIOD)
            .unwrap();
    let sg = Scopegate::start_configured(&dpop_policy(&jwks), |config| {
        config.dpop_nonces = Some(Arc::new(nonces));
    })
    .await;
    let (_envoy, port) = start_envoy(sg.running.grpc_addr().port(), echo_upstream().await).await;
    let url = format!("http://127.0.0.1:{port}/orders/1");
    let (key, token) = bound_token(&jwks);
    let client = reqwest::Client::new();

    let [first] = proofs(&key, &token, &[("GET", &url, None)])
        .try_into()
        .unwrap();
    let asked = send(&client, "GET", &url, &token, &first).await;
    assert_eq!(asked.status(), 401);
    let challenge = asked.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.contains("use_dpop_nonce"), "{challenge}");
    let nonce = asked.headers()["dpop-nonce"].to_str().unwrap().to_string();

    let [second] = proofs(&key, &token, &[("GET", &url, Some(&nonce))])
        .try_into()
        .unwrap();
    assert_eq!(
        send(&client, "GET", &url, &token, &second).await.status(),
        200
    );
}
