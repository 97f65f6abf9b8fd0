//! End to end with real third-party parts: Envoy 1.40 with the shipped
//! `manifests/envoy/envoy.yaml` (its ports replaced) in front of an upstream, and
//! oauth2-mock-server as a real OIDC issuer. The tools are installed by
//! `.ci/install-tools.sh` (paths overridable with `SCOPEGATE_ENVOY` and
//! `SCOPEGATE_OAUTH2_MOCK_SERVER`).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use support::envoy::{echo_upstream, start_envoy};
use support::*;

/// A child process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn envoy_ext_authz_lets_good_tokens_through_with_claim_headers_and_rejects_bad_ones() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let policies = format!(
        "{}---\n{}",
        policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), STANDARD_RULES),
        policy_yaml(
            "ctx",
            &jwks.issuer(),
            &jwks.jwks_uri(),
            "  defaultAction: allow\n"
        )
        .replace(
            &format!("[\"{HOST}\", \"*.orders.internal\"]"),
            "[\"api.example.test\"]"
        )
    );
    let sg = Scopegate::start(&policies).await;
    let upstream = echo_upstream().await;
    let (_envoy, port) = start_envoy(sg.running.grpc_addr().port(), upstream).await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");

    // A good token reaches the upstream with x-user-id set from `sub`,
    // replacing the client's spoofed value.
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    let response = http
        .get(url("/orders/7"))
        .header("host", HOST)
        .bearer_auth(&token)
        .header("x-user-id", "spoofed-admin")
        .header("x-user-email", "spoofed@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["x-user-id"], "auth0|user-1");
    assert_eq!(seen["x-agent-client-id"], "agent-client");
    assert!(
        seen.get("x-user-email").is_none(),
        "spoofed header removed: {seen}"
    );

    // A forged token gets 401 from Envoy with scopegate's challenge and body.
    let forged = ROGUE.sign(&claims(&jwks.issuer()));
    let response = http
        .get(url("/orders/7"))
        .header("host", HOST)
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.starts_with(&format!("Bearer realm=\"{HOST}\", error=\"invalid_token\"")),
        "{challenge}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token");

    // Missing scope: 403 naming it.
    let response = http
        .delete(url("/orders/7"))
        .header("host", HOST)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.ends_with("scope=\"delete:orders admin:orders\""),
        "{challenge}"
    );

    // No token: 401.
    let response = http
        .get(url("/orders"))
        .header("host", HOST)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // The /ctx/ route names its API host in context_extensions, whatever the client's Host.
    let response = http
        .get(url("/ctx/x"))
        .header("host", "whatever.example")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = http
        .get(url("/x"))
        .header("host", "whatever.example")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        403,
        "unknown host without the route's extension"
    );
}

#[tokio::test]
async fn envoy_fails_closed_when_scopegate_is_down() {
    let upstream = echo_upstream().await;
    let (_envoy, port) = start_envoy(free_port(), upstream).await;
    let response = reqwest::get(format!("http://127.0.0.1:{port}/orders"))
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
}

/// Starts oauth2-mock-server on a free port; returns it and its issuer URL.
fn start_mock_issuer() -> (Process, String) {
    let server = tool(
        "SCOPEGATE_OAUTH2_MOCK_SERVER",
        ".tools/node/node_modules/.bin/oauth2-mock-server",
    );
    let mut child = Command::new(server)
        .args(["-a", "127.0.0.1", "-p", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("oauth2-mock-server starts");
    let stdout = child.stdout.take().unwrap();
    let process = Process(child);
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(issuer) = line.strip_prefix("OAuth 2 issuer is ") {
            return (process, issuer.trim().to_string());
        }
    }
    panic!("oauth2-mock-server printed no issuer");
}

async fn mock_token(issuer: &str, grant: Value) -> String {
    let response: Value = reqwest::Client::new()
        .post(format!("{issuer}/token"))
        .json(&grant)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    response["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn tokens_from_a_real_oidc_issuer_are_checked_via_discovery() {
    let (_issuer_process, issuer) = tokio::task::spawn_blocking(start_mock_issuer)
        .await
        .unwrap();
    let policy = format!(
        r#"apiVersion: scopegate.dev/v1alpha1
kind: TokenPolicy
metadata: {{name: mock-issuer}}
spec:
  hosts: ["{HOST}"]
  issuer: {{url: "{issuer}", audiences: ["{AUDIENCE}"]}}
{STANDARD_RULES}"#
    );
    let sg = Scopegate::start(&policy).await;

    let grant =
        json!({"grant_type": "client_credentials", "scope": "read:orders", "aud": AUDIENCE});
    let token = mock_token(&issuer, grant).await;
    let checked = sg.check_token("GET", "/orders", &token).await;
    assert_eq!(checked.http_status(), 200, "{checked:?}");
    assert_eq!(checked.metadata("scope").as_deref(), Some("read:orders"));

    let missing_scope = sg.check_token("DELETE", "/orders/1", &token).await;
    assert_eq!(missing_scope.http_status(), 403);

    let other_audience = mock_token(
        &issuer,
        json!({"grant_type": "client_credentials", "aud": "https://other/api"}),
    )
    .await;
    let description = sg
        .check_token("GET", "/orders", &other_audience)
        .await
        .assert_invalid_token();
    assert_eq!(description, "token audience is not accepted");
}

#[tokio::test]
async fn grpcurl_reaches_check_health_and_reflection() {
    let (_jwks, sg) = standard_with(vec![KEY_A.jwk()]).await;
    let grpcurl = tool("SCOPEGATE_GRPCURL", ".tools/venv/bin/grpcurl");
    let addr = sg.running.grpc_addr().to_string();
    // grpcurl [flags] ADDRESS [list | METHOD]
    let run = move |flags: Vec<String>, verb: &'static str| {
        let grpcurl = grpcurl.clone();
        let addr = addr.clone();
        async move {
            let out = tokio::process::Command::new(grpcurl)
                .arg("-plaintext")
                .args(flags)
                .arg(addr)
                .arg(verb)
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let services = run(vec![], "list").await;
    for service in [
        "envoy.service.auth.v3.Authorization",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(services.contains(service), "{services}");
    }
    let health_request = r#"{"service": "envoy.service.auth.v3.Authorization"}"#;
    let health = run(
        vec!["-d".into(), health_request.into()],
        "grpc.health.v1.Health/Check",
    )
    .await;
    assert!(health.contains("SERVING"), "{health}");

    // Check through reflection, and through the committed proto/ files.
    let request = json!({"attributes": {"request": {"http": {"host": HOST, "method": "GET", "path": "/orders"}}}}).to_string();
    for mut args in [
        vec![],
        vec![
            "-import-path".to_string(),
            "proto".into(),
            "-proto".into(),
            "envoy/service/auth/v3/external_auth.proto".into(),
        ],
    ] {
        args.extend(["-d".to_string(), request.clone()]);
        let answer: Value =
            serde_json::from_str(&run(args, "envoy.service.auth.v3.Authorization/Check").await)
                .unwrap();
        assert_eq!(
            answer["deniedResponse"]["status"]["code"], "Unauthorized",
            "{answer}"
        );
    }
}
