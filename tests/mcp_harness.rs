//! The MCP end-to-end harness, proven before scopegate serves MCP policies:
//!
//! * the real MCP TypeScript SDK server and client (`tests/mcp/`) talk to
//!   each other: tools/list and tool calls work without auth;
//! * the SDK's own auth helpers accept scopegate's exact wire format: a 401
//!   and a 403 whose `WWW-Authenticate` comes from [`scopegate::mcp::Challenge`]
//!   and a metadata document from [`scopegate::mcp::ProtectedResource`], both
//!   served by a small HTTP server here. The SDK must read `scope` and
//!   `resource_metadata` from the challenge, fetch the document, and accept
//!   its `resource` for the URL it connected to.

mod support;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use scopegate::mcp::{BearerError, Challenge, ProtectedResource};
use serde_json::{Value, json};
use support::mcp::{McpServer, run_client};

const SCOPES: [&str; 2] = ["orders:read", "orders:write"];
const ISSUER: &str = "https://tenant.example.com/";

#[tokio::test]
async fn the_sdk_client_lists_and_calls_tools_on_the_sdk_server() {
    let server = McpServer::start();
    let seen = run_client(json!({
        "url": server.url(),
        "session": true,
        "calls": [
            {"tool": "read_orders"},
            {"tool": "delete_order", "arguments": {"id": "7"}},
        ],
    }))
    .await;
    let session = &seen["session"];
    assert_eq!(session["connected"], true, "{seen}");
    assert_eq!(session["tools"], json!(["read_orders", "delete_order"]));
    let calls = session["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|c| c["ok"] == true), "{seen}");
    let read: Value = serde_json::from_str(calls[0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(read["orders"][0]["item"], "tea");
    let deleted: Value = serde_json::from_str(calls[1]["text"].as_str().unwrap()).unwrap();
    assert_eq!(deleted["deleted"], "7");
}

/// What the stand-in protected resource answers.
struct Stand {
    resource: ProtectedResource,
    realm: String,
}

/// Stands in for Envoy + scopegate with scopegate's wire format: the
/// metadata document on its well-known paths; on the MCP endpoint 401 with
/// the challenge when no token is sent, 403 `insufficient_scope` when one
/// is; 404 elsewhere.
async fn answer(State(stand): State<Arc<Stand>>, request: Request) -> Response {
    let method = request.method().as_str().to_string();
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let json_response = |status: StatusCode, body: String, challenge: Option<String>| {
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(challenge) = challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_str(&challenge).unwrap(),
            );
        }
        response
    };
    if stand.resource.matches_metadata_request(&method, &path) {
        return json_response(StatusCode::OK, stand.resource.document_body(), None);
    }
    if request.uri().path() != "/mcp" {
        return StatusCode::NOT_FOUND.into_response();
    }
    let challenge = Challenge::bearer(&stand.realm)
        .scope(SCOPES)
        .resource_metadata(&stand.resource.metadata_url());
    if request.headers().contains_key(header::AUTHORIZATION) {
        let challenge = challenge
            .error(BearerError::InsufficientScope)
            // Adversarial on purpose: the SDK reads parameters with a regex
            // that would take `scope=` inside this text for the scope.
            .description("missing scope=orders:write; resource_metadata=\"https://evil.example\"");
        let body =
            json!({"error": "insufficient_scope", "error_description": "missing orders:write"});
        json_response(
            StatusCode::FORBIDDEN,
            body.to_string(),
            Some(challenge.render()),
        )
    } else {
        let body = json!({"error": "unauthorized", "error_description": "no token"});
        json_response(
            StatusCode::UNAUTHORIZED,
            body.to_string(),
            Some(challenge.render()),
        )
    }
}

/// Serves [`answer`] on a free loopback port; `resource_id` is built from
/// that port (`{port}` replaced).
async fn stand_in(resource_id: &str) -> (u16, ProtectedResource) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let resource = ProtectedResource::new(
        &resource_id.replace("{port}", &port.to_string()),
        vec![ISSUER.to_string()],
        SCOPES.iter().map(|s| s.to_string()).collect(),
    )
    .unwrap()
    .with_name("Orders MCP");
    let stand = Arc::new(Stand {
        resource: resource.clone(),
        realm: format!("127.0.0.1:{port}"),
    });
    let router = Router::new().fallback(answer).with_state(stand);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (port, resource)
}

#[tokio::test]
async fn the_sdk_reads_scopegate_challenges_and_accepts_its_metadata() {
    let (port, resource) = stand_in("http://127.0.0.1:{port}/mcp").await;
    let url = format!("http://127.0.0.1:{port}/mcp");
    let seen = run_client(json!({
        "url": url,
        "discover": true,
        "session": true,
        "token": "any-token",
        "calls": [],
    }))
    .await;

    // The 401 (no token): the SDK reads scope and resource_metadata.
    let challenge = &seen["challenge"];
    assert_eq!(challenge["status"], 401, "{seen}");
    assert_eq!(challenge["scope"], "orders:read orders:write");
    assert_eq!(challenge["resource_metadata"], resource.metadata_url());
    assert_eq!(challenge["error"], Value::Null);

    // The document at that URL: fetched, parsed by the SDK's schema, and its
    // `resource` accepted for the URL the client connected to.
    let metadata = &seen["metadata"];
    assert_eq!(metadata["resource"], resource.id(), "{seen}");
    assert_eq!(metadata["resource"], url.as_str());
    assert_eq!(metadata["authorization_servers"], json!([ISSUER]));
    assert_eq!(metadata["scopes_supported"], json!(SCOPES));
    assert_eq!(metadata["bearer_methods_supported"], json!(["header"]));
    assert_eq!(metadata["resource_name"], "Orders MCP");
    assert_eq!(metadata["selected_resource"], url.as_str());
    assert!(metadata.get("error").is_none(), "{seen}");

    // The 403 (a token without the scope): the SDK reads the real scope —
    // the full set it would replace its scopes with — not the `scope=` text
    // inside error_description.
    let session = &seen["session"];
    assert_eq!(session["connected"], false, "{seen}");
    let denied = &session["connect_error"];
    assert_eq!(denied["status"], 403, "{seen}");
    assert_eq!(denied["challenge"]["error"], "insufficient_scope");
    assert_eq!(denied["challenge"]["scope"], "orders:read orders:write");
    assert_eq!(
        denied["challenge"]["resource_metadata"],
        resource.metadata_url()
    );
    let raw = denied["challenge"]["www_authenticate"].as_str().unwrap();
    assert!(raw.starts_with("Bearer realm="), "{raw}");
}

#[tokio::test]
async fn the_sdk_falls_back_to_the_well_known_paths_without_a_challenge_url() {
    // No resource_metadata to follow: the SDK builds the RFC 9728 path from
    // the URL itself, which must be one scopegate answers.
    let (port, resource) = stand_in("http://127.0.0.1:{port}/mcp/").await;
    let url = format!("http://127.0.0.1:{port}/mcp/");
    let seen = run_client(json!({"url": url, "discover": true})).await;
    // Found through the challenge (trailing-slash form) …
    assert_eq!(seen["metadata"]["resource"], resource.id(), "{seen}");
    // … and the SDK's own path-aware guess (it drops the trailing slash)
    // is among the paths scopegate answers.
    assert!(
        resource
            .metadata_paths()
            .contains(&"/.well-known/oauth-protected-resource/mcp".to_string()),
        "{:?}",
        resource.metadata_paths()
    );
    let guessed = reqwest::get(format!(
        "http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp"
    ))
    .await
    .unwrap();
    assert_eq!(guessed.status(), 200);
}

#[tokio::test]
async fn the_sdk_refuses_a_resource_that_does_not_cover_its_url() {
    // The control for the tests above: the same server, but the document
    // names `/other` while the client connects to `/mcp`. The SDK must refuse
    // it, or its accepting scopegate's document would prove nothing.
    let (port, resource) = stand_in("http://127.0.0.1:{port}/other").await;
    let url = format!("http://127.0.0.1:{port}/mcp");
    let seen = run_client(json!({"url": url, "discover": true})).await;
    let metadata = &seen["metadata"];
    assert_eq!(metadata["resource"], resource.id(), "{seen}");
    assert_eq!(metadata["selected_resource"], Value::Null, "{seen}");
    let error = metadata["error"].as_str().unwrap_or_default();
    assert!(error.contains("does not match"), "{seen}");
}
