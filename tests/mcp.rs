//! MCP-ready policies (DESIGN.md §5): RFC 9728 protected resource metadata,
//! challenges with `resource_metadata` and the rule's full `scope`, and
//! `mcp:` rules on the JSON-RPC method and tool. First through real Checks
//! (a real gRPC server, real signed tokens, a real JWKS server), then end
//! to end: real Envoy in front of a real MCP server built with the official
//! TypeScript SDK, scopegate as ext_authz, and the SDK's own client
//! functions as the agent.

mod support;

use std::collections::HashMap;

use serde_json::{Value, json};
use support::envoy::{start_envoy_on, with_mcp_filter_and_body};
use support::mcp::{McpServer, run_client};
use support::*;

/// An MCP policy for `host` whose resource (and audience) is `resource_id`.
fn mcp_policy(host: &str, resource_id: &str, jwks: &JwksServer) -> String {
    format!(
        r#"apiVersion: scopegate.dev/v1alpha1
kind: TokenPolicy
metadata: {{name: orders-mcp, namespace: test}}
spec:
  hosts: ["{host}"]
  issuer: {{url: "{issuer}", jwksUri: "{uri}", audiences: ["{resource_id}"]}}
  resource: {{id: "{resource_id}", name: "Orders MCP"}}
  rules:
    - methods: [GET, DELETE]
      paths: ["/mcp"]
    - mcp: {{methods: ["tools/call"], tools: ["delete_*"]}}
      requireScopes: ["orders:read", "orders:write"]
    - mcp: {{methods: ["tools/call"], tools: ["read_*"]}}
      requireScopes: ["orders:read"]
    - mcp: {{methods: ["initialize", "notifications/*", "ping", "tools/list"]}}
  claimHeaders:
    - {{header: x-user-id, claim: sub}}
"#,
        issuer = jwks.issuer(),
        uri = jwks.jwks_uri(),
    )
}

const RESOURCE: &str = "https://mcp.example.com/mcp";

/// A token for `audience` with these scopes.
fn token(jwks: &JwksServer, audience: &str, scope: &str) -> String {
    let mut c = claims(&jwks.issuer());
    c["aud"] = json!(audience);
    c["scope"] = json!(scope);
    KEY_A.sign(&c)
}

/// A Check of `POST /mcp` with a JSON-RPC body.
fn rpc(
    body: &Value,
    token: Option<&str>,
) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    rpc_bytes(body.to_string().into_bytes(), token)
}

/// A Check of `POST /mcp` with these body bytes.
fn rpc_bytes(
    body: Vec<u8>,
    token: Option<&str>,
) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let mut request = check_request("mcp.example.com", "POST", "/mcp", &headers, HashMap::new());
    http_of(&mut request).raw_body = body;
    request
}

fn tool_call(name: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": {}}})
}

#[tokio::test]
async fn the_metadata_document_is_answered_without_a_token() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let sg = Scopegate::start(&mcp_policy("mcp.example.com", RESOURCE, &jwks)).await;
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let checked = sg.check_host("mcp.example.com", "GET", path, &[]).await;
        assert_eq!(checked.http_status(), 200, "{path}");
        assert_eq!(
            checked.header("content-type").as_deref(),
            Some("application/json")
        );
        let document: Value = serde_json::from_str(&checked.denied().body).unwrap();
        assert_eq!(document["resource"], RESOURCE, "byte-equal to the id");
        assert_eq!(document["authorization_servers"], json!([jwks.issuer()]));
        assert_eq!(
            document["scopes_supported"],
            json!(["orders:read", "orders:write"])
        );
        assert_eq!(document["bearer_methods_supported"], json!(["header"]));
        assert_eq!(document["resource_name"], "Orders MCP");
    }
}

#[tokio::test]
async fn challenges_name_the_metadata_and_every_scope_of_the_rule() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let sg = Scopegate::start(&mcp_policy("mcp.example.com", RESOURCE, &jwks)).await;
    let metadata =
        "resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\"";

    let anonymous = sg.send(rpc(&tool_call("delete_order"), None)).await;
    assert_eq!(anonymous.http_status(), 401);
    let challenge = anonymous.www_authenticate();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains("scope=\"orders:read orders:write\""),
        "{challenge}"
    );
    assert!(challenge.contains(metadata), "{challenge}");

    let reader = token(&jwks, RESOURCE, "orders:read");
    assert_eq!(
        sg.send(rpc(&tool_call("read_orders"), Some(&reader)))
            .await
            .http_status(),
        200
    );
    let denied = sg
        .send(rpc(&tool_call("delete_order"), Some(&reader)))
        .await;
    assert_eq!(denied.http_status(), 403);
    let challenge = denied.www_authenticate();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("scope=\"orders:read orders:write\""),
        "the full set: {challenge}"
    );
    assert!(challenge.contains(metadata), "{challenge}");
    assert!(!challenge.contains("name="), "{challenge}");
    assert_eq!(denied.body()["missing_scopes"], "orders:write");

    // An unlisted method matches no rule.
    let other = sg
        .send(rpc(
            &json!({"jsonrpc": "2.0", "id": 2, "method": "resources/list"}),
            Some(&reader),
        ))
        .await;
    assert_eq!(other.http_status(), 403);
}

#[tokio::test]
async fn a_body_that_is_not_one_json_rpc_request_is_a_400() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let sg = Scopegate::start(&mcp_policy("mcp.example.com", RESOURCE, &jwks)).await;
    let reader = token(&jwks, RESOURCE, "orders:read");
    for (body, label) in [
        (json!([tool_call("read_orders")]), "batch"),
        (json!({"id": 1, "method": "tools/list"}), "not_jsonrpc2"),
    ] {
        let checked = sg.send(rpc(&body, Some(&reader))).await;
        assert_eq!(checked.http_status(), 400, "{body}");
        assert!(
            checked
                .www_authenticate()
                .contains("error=\"invalid_request\"")
        );
        assert!(
            checked.0.status.as_ref().unwrap().message.contains(label),
            "{label}: {:?}",
            checked.0.status
        );
    }
    let not_json = rpc_bytes(
        b"{\"jsonrpc\": \"2.0\", \"method\": ".to_vec(),
        Some(&reader),
    );
    assert_eq!(sg.send(not_json).await.http_status(), 400);
}

#[test]
fn the_resource_must_be_one_of_the_audiences() {
    let yaml = r#"apiVersion: scopegate.dev/v1alpha1
kind: TokenPolicy
metadata: {name: p, namespace: test}
spec:
  hosts: ["mcp.example.com"]
  issuer: {url: "https://tenant.example.com/", audiences: ["https://other.example.com/api"]}
  resource: {id: "https://mcp.example.com/mcp"}
"#;
    let errors =
        scopegate::policy::files::parse_text(std::path::Path::new("p.yaml"), yaml).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.field == "spec.resource.id" && e.message.contains("audiences")),
        "{errors:?}"
    );
}

/// The SDK, through real Envoy and scopegate, to the SDK's MCP server.
#[tokio::test]
async fn the_mcp_sdk_discovers_the_resource_and_steps_up_on_403() {
    let server = McpServer::start();
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let listen = free_port();
    let url = format!("http://127.0.0.1:{listen}/mcp");
    let sg = Scopegate::start(&mcp_policy("127.0.0.1", &url, &jwks)).await;
    let (_envoy, _) = start_envoy_on(
        listen,
        sg.running.grpc_addr().port(),
        server.port,
        with_mcp_filter_and_body,
    )
    .await;

    // No token: the SDK finds the metadata from the challenge and accepts it.
    let seen = run_client(json!({"url": url, "discover": true})).await;
    let challenge = &seen["challenge"];
    assert_eq!(challenge["status"], 401, "{seen}");
    assert_eq!(
        challenge["resource_metadata"],
        format!("http://127.0.0.1:{listen}/.well-known/oauth-protected-resource/mcp"),
        "{seen}"
    );
    assert_eq!(seen["metadata"]["resource"], url, "{seen}");
    assert_eq!(
        seen["metadata"]["selected_resource"], url,
        "the SDK accepts it: {seen}"
    );

    // A reader lists tools and reads; the write tool is a 403 whose scope
    // the SDK reads as the full set to ask the user for.
    let reader = token(&jwks, &url, "orders:read");
    let seen = run_client(json!({
        "url": url, "token": reader, "session": true,
        "calls": [{"tool": "read_orders", "arguments": {}}, {"tool": "delete_order", "arguments": {"id": "7"}}],
    }))
    .await;
    let session = &seen["session"];
    assert_eq!(
        session["tools"],
        json!(["read_orders", "delete_order"]),
        "{seen}"
    );
    assert_eq!(session["calls"][0]["ok"], true, "{seen}");
    assert_eq!(session["calls"][1]["ok"], false, "{seen}");
    assert_eq!(session["calls"][1]["status"], 403, "{seen}");
    let step_up = &session["calls"][1]["challenge"];
    assert_eq!(step_up["scope"], "orders:read orders:write", "{seen}");
    assert_eq!(
        step_up["resource_metadata"],
        format!("http://127.0.0.1:{listen}/.well-known/oauth-protected-resource/mcp"),
        "{seen}"
    );
    println!("SDK through Envoy and scopegate: {seen}");

    // A token for another audience: 401.
    let stranger = token(
        &jwks,
        "https://other.example.com/api",
        "orders:read orders:write",
    );
    let seen = run_client(json!({"url": url, "token": stranger, "session": true})).await;
    assert!(seen["session"].to_string().contains("401"), "{seen}");
}
