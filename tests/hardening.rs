//! Regression tests for the findings of the outside security review
//! (DESIGN.md §4), one test per finding, named after it, over real
//! sockets: a real scopegate gRPC server, a real tonic client, real signed
//! tokens and a real JWKS HTTP server on loopback. Host ownership in a
//! cluster is in tests/kube.rs (a real kube-apiserver); key fetching in
//! tests/jwks_fetch.rs (a real HTTPS server with a test CA).

mod support;

use serde_json::json;
use support::*;

/// `/admin/**` needs a scope; everything else is public: the shape that
/// path tricks attack (a request that skips the first rule falls to the
/// anonymous one).
const ADMIN_THEN_PUBLIC: &str = r#"  rules:
    - paths: ["/admin/**"]
      requireScopes: ["admin"]
    - methods: ["DELETE"]
      paths: ["/orders/**"]
      requireScopes: ["delete:orders"]
    - paths: ["/files/**"]
      matrixParams: true
      anonymous: true
    - paths: ["/**"]
      anonymous: true
"#;

async fn admin_then_public() -> (JwksServer, Scopegate) {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let policy = policy_yaml(
        "orders",
        &jwks.issuer(),
        &jwks.jwks_uri(),
        ADMIN_THEN_PUBLIC,
    );
    (jwks, Scopegate::start(&policy).await)
}

#[tokio::test]
async fn finding_2_path_parameters_do_not_skip_a_rule() {
    let (_jwks, sg) = admin_then_public().await;
    for path in [
        "/admin;x/users",
        "/admin;/users",
        "/admin/users;jsessionid=1",
    ] {
        let checked = sg.check("GET", path, &[]).await;
        assert_eq!(checked.http_status(), 403, "{path}");
        assert_eq!(
            checked.0.status.as_ref().unwrap().message,
            "ambiguous_path",
            "{path}"
        );
    }
    // A rule that opts in matches with the parameters cut off.
    assert_eq!(
        sg.check("GET", "/files;v=2/report", &[])
            .await
            .http_status(),
        200
    );
    // Without parameters, the anonymous rule still serves the rest.
    assert_eq!(
        sg.check("GET", "/public/page", &[]).await.http_status(),
        200
    );
}

#[tokio::test]
async fn finding_2_encoded_unreserved_characters_do_not_skip_a_rule() {
    let (_jwks, sg) = admin_then_public().await;
    for path in ["/%61dmin/users", "/ad%6Din/users", "/admin/%75sers"] {
        let checked = sg.check("GET", path, &[]).await;
        assert_eq!(
            checked.http_status(),
            401,
            "{path}: the admin rule needs a token"
        );
    }
    for path in ["/admin%2fusers", "/x/%2e%2e/admin/users", "/admin/%zz"] {
        assert_eq!(
            sg.check("GET", path, &[]).await.http_status(),
            403,
            "{path}"
        );
    }
}

#[tokio::test]
async fn finding_2_methods_compare_case_insensitively() {
    let (jwks, sg) = admin_then_public().await;
    for method in ["delete", "Delete", "DELETE"] {
        let checked = sg.check(method, "/orders/1", &[]).await;
        assert_eq!(
            checked.http_status(),
            401,
            "{method} falls under the DELETE rule"
        );
    }
    let reader = KEY_A.sign(&claims(&jwks.issuer()));
    let checked = sg.check_token("delete", "/orders/1", &reader).await;
    assert_eq!(checked.http_status(), 403);
    assert_eq!(
        checked.0.status.as_ref().unwrap().message,
        "insufficient_scope"
    );
}

#[tokio::test]
async fn finding_3_a_bearer_credential_after_a_tab_is_validated_on_anonymous_rules() {
    let (jwks, sg) = standard_with(vec![KEY_A.jwk()]).await;
    let forged = ROGUE.sign(&claims(&jwks.issuer()));
    let checked = sg
        .check(
            "GET",
            "/healthz",
            &[("authorization", &format!("Bearer\t{forged}"))],
        )
        .await;
    assert_eq!(
        checked.http_status(),
        401,
        "a forged token never reaches the upstream"
    );
    assert!(
        checked
            .www_authenticate()
            .contains("error=\"invalid_token\"")
    );

    let good = KEY_A.sign(&claims(&jwks.issuer()));
    let checked = sg
        .check(
            "GET",
            "/orders",
            &[("authorization", &format!("Bearer\t{good}"))],
        )
        .await;
    assert_eq!(checked.http_status(), 200);
    assert_eq!(checked.header("x-user-id").as_deref(), Some("auth0|user-1"));
}

#[tokio::test]
async fn finding_3_two_authorization_headers_are_refused_on_anonymous_rules() {
    let (jwks, sg) = standard_with(vec![KEY_A.jwk()]).await;
    let good = format!("Bearer {}", KEY_A.sign(&claims(&jwks.issuer())));
    let forged = format!("Bearer {}", ROGUE.sign(&claims(&jwks.issuer())));
    let raw = check_request_raw(
        HOST,
        "GET",
        "/healthz",
        &[("authorization", &good), ("authorization", &forged)],
    );
    let checked = sg.send(raw).await;
    assert_eq!(checked.http_status(), 401);
    assert!(
        checked
            .www_authenticate()
            .contains("error=\"invalid_request\"")
    );
    assert_eq!(
        checked.0.status.as_ref().unwrap().message,
        "several_credentials"
    );

    // Envoy's `headers` map joins repeated headers with a comma.
    let joined = format!("Basic Zm9vOmJhcg==,{forged}");
    let checked = sg
        .check("GET", "/healthz", &[("authorization", &joined)])
        .await;
    assert_eq!(checked.http_status(), 401);
}

#[tokio::test]
async fn finding_3_credentials_that_are_not_one_token_are_refused() {
    let (_jwks, sg) = standard_with(vec![KEY_A.jwk()]).await;
    for value in ["Bearer", "Bearer a.b.c d.e.f", "DPoP", "DPoP a.b.c d.e.f"] {
        let checked = sg
            .check("GET", "/healthz", &[("authorization", value)])
            .await;
        assert_eq!(checked.http_status(), 401, "{value}");
        assert!(
            checked
                .www_authenticate()
                .contains("error=\"invalid_request\""),
            "{value}"
        );
    }
    // One DPoP word is a token to verify (DPoP is wired, DESIGN §6): a
    // malformed one is `invalid_token`, and still never reaches the
    // upstream through the anonymous rule.
    let checked = sg
        .check("GET", "/healthz", &[("authorization", "DPoP a.b.c")])
        .await;
    assert_eq!(checked.http_status(), 401);
    assert!(
        checked
            .www_authenticate()
            .contains("error=\"invalid_token\""),
        "{}",
        checked.www_authenticate()
    );
    // Other schemes are the upstream's: an anonymous rule passes them on.
    let basic = [("authorization", "Basic Zm9vOmJhcg==")];
    assert_eq!(sg.check("GET", "/healthz", &basic).await.http_status(), 200);
    assert_eq!(sg.check("GET", "/orders", &basic).await.http_status(), 401);
}

#[tokio::test]
async fn finding_5_two_different_subjects_never_render_the_same_header_value() {
    let (jwks, sg) = standard_with(vec![KEY_A.jwk()]).await;
    let user_id = |sub: &str| {
        let mut claims = claims(&jwks.issuer());
        claims["sub"] = json!(sub);
        let token = KEY_A.sign(&claims);
        let sg = &sg;
        async move {
            sg.check_token("GET", "/orders", &token)
                .await
                .header("x-user-id")
        }
    };
    let accented = user_id("josé").await;
    let lookalike = user_id("UTF-8''jos%C3%A9").await;
    assert_eq!(accented.as_deref(), Some("UTF-8''jos%C3%A9"));
    assert!(lookalike.is_some());
    assert_ne!(accented, lookalike);
}

#[test]
fn finding_7_proxy_owned_headers_cannot_be_set_from_claims() {
    for header in [
        "x-forwarded-for",
        "forwarded",
        "x-forwarded-client-cert",
        "x-real-ip",
    ] {
        let yaml = policy_yaml(
            "p",
            "https://tenant.example.com/",
            "https://tenant.example.com/jwks.json",
            "",
        )
        .replace("x-user-email", header);
        let errors = scopegate::policy::files::parse_text(std::path::Path::new("p.yaml"), &yaml)
            .expect_err(header);
        assert!(
            errors
                .iter()
                .any(|e| e.field.ends_with(".header") && e.message.contains("reserved")),
            "{header}: {errors:?}"
        );
    }
}

/// Finding 1, on a replica that started after an owner's invalid edit: the
/// hosts its status recorded stay held for it, and a Check for one of them
/// answers 503 rather than another policy's answer or "unknown host".
#[tokio::test]
async fn finding_1_a_host_held_for_an_invalid_policy_answers_503() {
    use scopegate::authz::{CheckService, TokenCache};
    use scopegate::policy::{
        Candidate, CompiledPolicy, HostPattern, PolicySnapshot, SnapshotHandle,
    };
    let broken: scopegate::policy::TokenPolicySpec = serde_json::from_value(json!({
        "hosts": ["*.own.example.com"],
        "issuer": {"url": "https://tenant.example.com/", "audiences": []},
    }))
    .unwrap();
    let owner = Candidate {
        id: "a/owner".into(),
        compiled: CompiledPolicy::compile("a/owner".into(), &broken),
        last_good: None,
        held_hosts: vec![HostPattern::parse("*.own.example.com").unwrap()],
    };
    let registry = scopegate::jwks::JwksRegistry::new(Default::default());
    let snapshot = SnapshotHandle::default();
    snapshot.publish(PolicySnapshot::build(vec![owner], &registry));
    let service = CheckService::new(snapshot, std::sync::Arc::new(TokenCache::disabled()));
    let request = check_request("pay.own.example.com", "GET", "/", &[], Default::default());
    let checked = Checked(service.check_request(&request).await);
    assert_eq!(checked.http_status(), 503);
    assert_eq!(checked.0.status.as_ref().unwrap().message, "policy_invalid");
    let elsewhere = check_request("other.example.com", "GET", "/", &[], Default::default());
    assert_eq!(
        Checked(service.check_request(&elsewhere).await).http_status(),
        403
    );
}
