//! Two facts about real Envoy 1.40 that the MCP wiring relies on, checked
//! with the shipped `manifests/envoy/envoy.yaml` (ports replaced) in front of
//! the real MCP SDK server, and a tiny ext_authz server here in place of
//! scopegate that records every CheckRequest:
//!
//! 1. An ext_authz *denied* response with status 200, a JSON body and
//!    `content-type: application/json` reaches the client unchanged, so
//!    scopegate can answer the RFC 9728 metadata document through ext_authz
//!    itself, with no extra route.
//! 2. With Envoy's MCP filter (`envoy.filters.http.mcp`) before ext_authz
//!    and its namespace in `metadata_context_namespaces`, the Check carries
//!    the JSON-RPC method and tool in
//!    `metadata_context.filter_metadata["envoy.filters.http.mcp"]`; with
//!    `with_request_body` it also carries the body. Both read the same call
//!    through `scopegate::mcp::McpCall`.

mod support;

use std::sync::{Arc, Mutex};

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
    HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use scopegate::mcp::{DEFAULT_MAX_BODY_BYTES, McpBody, McpCall, ProtectedResource};
use serde_json::json;
use support::envoy::{start_envoy_with, with_mcp_filter_and_body};
use support::mcp::{McpServer, run_client};

/// Answers the metadata document as a denied 200; allows everything else.
/// Keeps every CheckRequest.
struct Recorder {
    resource: ProtectedResource,
    seen: Arc<Mutex<Vec<CheckRequest>>>,
}

#[tonic::async_trait]
impl Authorization for Recorder {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let request = request.into_inner();
        let http = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .cloned()
            .unwrap_or_default();
        self.seen.lock().unwrap().push(request);
        let mut response = CheckResponse::with_status(tonic::Status::ok(""));
        if self
            .resource
            .matches_metadata_request(&http.method, &http.path)
        {
            let mut denied = DeniedHttpResponseBuilder::new();
            denied
                .set_http_status(HttpStatusCode::Ok)
                .add_header(
                    "content-type",
                    "application/json",
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    false,
                )
                .add_header(
                    "cache-control",
                    "max-age=300",
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    false,
                )
                .set_body(self.resource.document_body());
            response = CheckResponse::with_status(tonic::Status::permission_denied(""));
            response.set_http_response(denied);
        } else {
            response.set_http_response(OkHttpResponseBuilder::new());
        }
        Ok(tonic::Response::new(response))
    }
}

/// Starts the recorder on a free port.
async fn start_recorder(resource: ProtectedResource) -> (u16, Arc<Mutex<Vec<CheckRequest>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let service = AuthorizationServer::new(Recorder {
        resource,
        seen: seen.clone(),
    });
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap()
    });
    (port, seen)
}

#[tokio::test]
async fn a_denied_200_json_answer_reaches_the_client_unchanged_and_the_check_sees_the_mcp_call() {
    let server = McpServer::start();
    // The resource lives on Envoy's listener, whose port is chosen inside
    // start_envoy_with: a placeholder origin works because the recorder
    // matches on the path only and the document is compared as bytes.
    let resource = ProtectedResource::new(
        "https://mcp.example.com/mcp",
        vec!["https://tenant.example.com/".into()],
        vec!["orders:read".into(), "orders:write".into()],
    )
    .unwrap()
    .with_name("Orders MCP");
    let (authz_port, seen) = start_recorder(resource.clone()).await;
    let (_envoy, port) = start_envoy_with(authz_port, server.port, with_mcp_filter_and_body).await;
    let http = reqwest::Client::new();

    // 1. The metadata document, as a denied 200, on both well-known paths.
    for path in resource.metadata_paths() {
        let response = http
            .get(format!("http://127.0.0.1:{port}{path}?probe=1"))
            .header("host", "mcp.example.com")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        let content_types: Vec<_> = headers.get_all("content-type").iter().collect();
        assert_eq!(content_types, ["application/json"], "{path}: {headers:?}");
        assert_eq!(headers["cache-control"], "max-age=300");
        let body = response.text().await.unwrap();
        assert_eq!(body, resource.document_body(), "{path}: byte-equal");
    }
    // HEAD: same status and type, no body.
    let head = http
        .head(format!(
            "http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-type"], "application/json");
    assert_eq!(head.text().await.unwrap(), "");
    // The upstream answers that path with 404, so the 200s came from ext_authz.
    let direct = reqwest::get(format!(
        "http://127.0.0.1:{}/.well-known/oauth-protected-resource/mcp",
        server.port
    ))
    .await
    .unwrap();
    assert_eq!(direct.status(), 404);

    // 2. A real MCP session through Envoy: allowed, so it works end to end …
    seen.lock().unwrap().clear();
    let summary = run_client(json!({
        "url": format!("http://127.0.0.1:{port}/mcp"),
        "session": true,
        "calls": [{"tool": "delete_order", "arguments": {"id": "7"}}],
    }))
    .await;
    assert_eq!(summary["session"]["connected"], true, "{summary}");
    assert_eq!(summary["session"]["calls"][0]["ok"], true, "{summary}");

    // … and every POST's Check named its call twice, identically: in the
    // MCP filter's metadata and in the body.
    let checks = seen.lock().unwrap().clone();
    let mut calls = Vec::new();
    for check in &checks {
        let attributes = check.attributes.as_ref().unwrap();
        let http = attributes.request.as_ref().unwrap().http.as_ref().unwrap();
        if http.method != "POST" {
            continue;
        }
        let from_metadata = attributes
            .metadata_context
            .as_ref()
            .map(McpCall::from_envoy_metadata)
            .transpose()
            .unwrap()
            .flatten()
            .unwrap_or_else(|| panic!("no MCP metadata in the Check of {http:?}"));
        let length = http
            .headers
            .get("content-length")
            .map(|l| l.parse().unwrap());
        let body = McpBody {
            bytes: &http.raw_body,
            partial: http
                .headers
                .get("x-envoy-auth-partial-body")
                .map(String::as_str)
                == Some("true"),
            declared_length: length,
        };
        let from_body = McpCall::from_body(&body, DEFAULT_MAX_BODY_BYTES).unwrap();
        assert_eq!(from_metadata, from_body);
        calls.push(from_body.to_string());
    }
    assert!(calls.contains(&"initialize".to_string()), "{calls:?}");
    assert!(
        calls.contains(&"tools/call delete_order".to_string()),
        "{calls:?}"
    );
}
