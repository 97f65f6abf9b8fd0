//! Request headers through real Envoy 1.40 (the shipped
//! `manifests/envoy/envoy.yaml`, ports replaced): conditions read the same
//! headers whether Envoy sends them in the Check's `headers` map or, with
//! `encode_raw_headers: true`, in its raw `header_map`; a client's copy of a
//! claim header under another spelling (`x_user_id`) never reaches the
//! upstream, whether Envoy refuses underscore names (the shipped
//! `headers_with_underscores_action: REJECT_REQUEST`) or lets them through
//! (`ALLOW`, Envoy's and Istio's default) and scopegate removes them.

mod support;

use serde_json::{Value, json};
use support::envoy::{echo_upstream, http_filters, json_to_yaml, start_envoy_with};
use support::*;

/// A policy for Envoy's own host: `/orders/**` needs `read:orders` and no
/// `x-impersonate` header.
fn policy(jwks: &JwksServer) -> String {
    let rules = r#"  rules:
    - paths: ["/orders/**"]
      requireScopes: ["read:orders"]
      when: ['!("x-impersonate" in request.headers)']
"#;
    policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), rules).replace(
        &format!("[\"{HOST}\", \"*.orders.internal\"]"),
        "[\"127.0.0.1\"]",
    )
}

/// The ext_authz filter's settings in `config`.
fn ext_authz(config: &mut serde_yaml_ng::Value) -> &mut serde_yaml_ng::Value {
    let filter = http_filters(config)
        .iter_mut()
        .find(|f| f["name"] == "envoy.filters.http.ext_authz")
        .expect("envoy.yaml has ext_authz");
    &mut filter["typed_config"]
}

/// The shipped config, ext_authz sending raw headers or not, with the
/// header the condition reads listed in `allowed_headers` (as envoy.yaml
/// tells operators to do), and underscore header names handled by
/// `underscores` (`None`: as shipped).
fn configure(raw: bool, underscores: Option<&str>) -> impl FnOnce(&mut serde_yaml_ng::Value) {
    let underscores = underscores.map(str::to_string);
    move |config| {
        if let Some(action) = underscores {
            let manager = &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
                [0]["typed_config"];
            manager["common_http_protocol_options"]["headers_with_underscores_action"] =
                json_to_yaml(json!(action));
        }
        let settings = ext_authz(config);
        settings["encode_raw_headers"] = json_to_yaml(json!(raw));
        settings["allowed_headers"]["patterns"]
            .as_sequence_mut()
            .expect("allowed_headers.patterns")
            .push(json_to_yaml(json!({"exact": "x-impersonate"})));
    }
}

async fn get(port: u16, token: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/orders/1"))
        .bearer_auth(token);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn finding_6_conditions_see_the_same_headers_with_and_without_encode_raw_headers() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let sg = Scopegate::start(&policy(&jwks)).await;
    let upstream = echo_upstream().await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    for raw in [false, true] {
        let (_envoy, port) = start_envoy_with(
            sg.running.grpc_addr().port(),
            upstream,
            configure(raw, None),
        )
        .await;
        let plain = get(port, &token, &[]).await;
        assert_eq!(plain.status(), 200, "encode_raw_headers: {raw}");
        let seen: Value = plain.json().await.unwrap();
        assert_eq!(
            seen["x-user-id"], "auth0|user-1",
            "encode_raw_headers: {raw}"
        );
        let impersonating = get(port, &token, &[("x-impersonate", "admin")]).await;
        assert_eq!(impersonating.status(), 403, "encode_raw_headers: {raw}");
        let body: Value = impersonating.json().await.unwrap();
        assert_eq!(body["error"], "access_denied", "encode_raw_headers: {raw}");
    }
}

#[tokio::test]
async fn hardening_underscore_spellings_of_claim_headers_never_reach_the_upstream() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let sg = Scopegate::start(&policy(&jwks)).await;
    let upstream = echo_upstream().await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    let spoofed = [
        ("x_user_id", "spoofed-admin"),
        ("x-user_id", "spoofed-admin"),
        ("x_user_email", "spoofed@example.com"),
    ];
    // As shipped: Envoy refuses underscore header names itself.
    let (envoy, port) = start_envoy_with(
        sg.running.grpc_addr().port(),
        upstream,
        configure(false, None),
    )
    .await;
    assert_eq!(get(port, &token, &spoofed[..1]).await.status(), 400);
    drop(envoy);
    // Envoy's and Istio's default lets them through: scopegate removes them,
    // whichever way Envoy sends the Check's headers.
    for raw in [false, true] {
        let (_envoy, port) = start_envoy_with(
            sg.running.grpc_addr().port(),
            upstream,
            configure(raw, Some("ALLOW")),
        )
        .await;
        let response = get(port, &token, &spoofed).await;
        assert_eq!(response.status(), 200, "encode_raw_headers: {raw}");
        let seen: Value = response.json().await.unwrap();
        assert_eq!(seen["x-user-id"], "auth0|user-1", "{seen}");
        for (name, _) in spoofed {
            assert!(seen.get(name).is_none(), "{name} reached the upstream");
        }
        assert!(
            seen.get("x-user-email").is_none(),
            "x-user-email reached the upstream"
        );
    }
}

/// Envoy's partial-body signals (`x-envoy-auth-partial-body`, Envoy's own,
/// and `content-length`) are read in both encodings: a body cut where its
/// prefix happens to be a whole JSON-RPC request is never read as the
/// whole request.
#[tokio::test]
async fn finding_6_a_cut_mcp_body_is_refused_with_and_without_encode_raw_headers() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let rules = r#"  rules:
    - mcp: {methods: ["tools/list"]}
      paths: ["/mcp"]
"#;
    let policy = policy_yaml("mcp", &jwks.issuer(), &jwks.jwks_uri(), rules).replace(
        &format!("[\"{HOST}\", \"*.orders.internal\"]"),
        "[\"127.0.0.1\"]",
    );
    let sg = Scopegate::start(&policy).await;
    let upstream = echo_upstream().await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    // Cut by Envoy inside the trailing whitespace.
    let body = format!("{call}{}", " ".repeat(200));
    for raw in [false, true] {
        let edit = move |config: &mut serde_yaml_ng::Value| {
            let settings = ext_authz(config);
            settings["encode_raw_headers"] = json_to_yaml(json!(raw));
            settings["with_request_body"] = json_to_yaml(json!({
                "max_request_bytes": call.len() + 10,
                "allow_partial_message": true,
                "pack_as_bytes": true,
            }));
        };
        let (_envoy, port) = start_envoy_with(sg.running.grpc_addr().port(), upstream, edit).await;
        let post = |body: String| {
            reqwest::Client::new()
                .post(format!("http://127.0.0.1:{port}/mcp"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body)
                .send()
        };
        let whole = post(call.to_string()).await.unwrap();
        assert_eq!(whole.status(), 200, "encode_raw_headers: {raw}");
        let cut = post(body.clone()).await.unwrap();
        assert_eq!(cut.status(), 400, "encode_raw_headers: {raw}");
        let answer: Value = cut.json().await.unwrap();
        let description = answer["error_description"].as_str().unwrap();
        assert!(
            description.contains("only part of the request body"),
            "{description}"
        );
    }
}
