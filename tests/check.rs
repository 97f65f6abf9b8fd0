//! The Check contract (DESIGN.md §3), end to end over real sockets: a real
//! scopegate gRPC server, a real tonic client, real signed tokens and a real
//! JWKS HTTP server on loopback.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use scopegate::jwks::JwksSettings;
use serde_json::json;
use support::*;

/// A JWKS server with KEY_A and a scopegate with the standard rules and
/// these key settings, once the first fetch is done.
async fn with_keys_fetched(settings: JwksSettings) -> (JwksServer, Scopegate) {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let policy = policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), STANDARD_RULES);
    let sg = Scopegate::start_with(&policy, settings).await;
    sg.wait_for_jwks_attempts_above(0).await;
    (jwks, sg)
}

/// A JWKS server with KEY_A and a scopegate with the standard rules.
async fn standard() -> (JwksServer, Scopegate) {
    standard_with(vec![KEY_A.jwk()]).await
}

#[tokio::test]
async fn valid_token_is_allowed_with_claim_headers_and_metadata() {
    let (jwks, sg) = standard().await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    let checked = sg
        .check_token("GET", "/orders/42?expand=items", &token)
        .await;

    assert_eq!(checked.grpc_code(), 0);
    assert_eq!(checked.header("x-user-id").as_deref(), Some("auth0|user-1"));
    assert_eq!(
        checked.header("x-agent-client-id").as_deref(),
        Some("agent-client")
    );
    // No email claim: the header is removed so a client-sent copy cannot pass.
    assert_eq!(checked.removed_as_named(), vec!["x-user-email"]);
    assert_eq!(checked.metadata("policy").as_deref(), Some("test/orders"));
    assert_eq!(checked.metadata("rule").as_deref(), Some("rules[1]"));
    assert_eq!(checked.metadata("sub").as_deref(), Some("auth0|user-1"));
    assert_eq!(checked.metadata("azp").as_deref(), Some("agent-client"));
    assert_eq!(
        checked.metadata("scope").as_deref(),
        Some("openid read:orders")
    );
}

#[tokio::test]
async fn client_sent_claim_headers_are_overwritten_or_removed() {
    let (jwks, sg) = standard().await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    let auth = format!("Bearer {token}");
    let checked = sg
        .check(
            "GET",
            "/orders",
            &[
                ("authorization", &auth),
                ("x-user-id", "admin"),
                ("x-user-email", "ceo@example.com"),
            ],
        )
        .await;
    let ok = checked.ok();
    let user = ok
        .headers
        .iter()
        .find(|h| h.header.as_ref().unwrap().key == "x-user-id")
        .unwrap();
    assert_eq!(user.header.as_ref().unwrap().value, "auth0|user-1");
    // OVERWRITE_IF_EXISTS_OR_ADD: the spoofed value is replaced, not appended to.
    assert_eq!(user.append_action, 2);
    assert!(ok.headers_to_remove.contains(&"x-user-email".to_string()));
}

#[tokio::test]
async fn missing_token_is_401_with_a_bare_challenge() {
    let (_jwks, sg) = standard().await;
    let checked = sg.check("GET", "/orders", &[]).await;
    assert_eq!(checked.http_status(), 401);
    assert_eq!(
        checked.www_authenticate(),
        format!("Bearer realm=\"{HOST}\"")
    );
    assert_eq!(
        checked.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(checked.body()["error"], "unauthorized");
}

#[tokio::test]
async fn other_authorization_schemes_count_as_no_token() {
    let (_jwks, sg) = standard().await;
    let checked = sg
        .check("GET", "/orders", &[("authorization", "Basic dXNlcjpwYXNz")])
        .await;
    assert_eq!(checked.http_status(), 401);
    assert_eq!(
        checked.www_authenticate(),
        format!("Bearer realm=\"{HOST}\"")
    );
}

#[tokio::test]
async fn malformed_tokens_are_401_invalid_token() {
    let (_jwks, sg) = standard().await;
    for token in [
        "abc",
        "a.b",
        "a.b.c.d",
        "..",
        "eyJhbGciOiJSUzI1NiJ9.e30.@@@",
    ] {
        let auth = format!("Bearer {token}");
        let checked = sg
            .check("GET", "/orders", &[("authorization", &auth)])
            .await;
        let description = checked.assert_invalid_token();
        assert!(description.contains("malformed"), "{token}: {description}");
    }
}

#[tokio::test]
async fn signature_from_another_key_with_the_same_kid_is_rejected() {
    let (jwks, sg) = standard().await;
    let forged = ROGUE.sign(&claims(&jwks.issuer()));
    let description = sg
        .check_token("GET", "/orders", &forged)
        .await
        .assert_invalid_token();
    assert_eq!(description, "token signature is invalid");
}

#[tokio::test]
async fn alg_none_is_rejected() {
    let (jwks, sg) = standard().await;
    for alg in ["none", "None", "NONE"] {
        let header = json!({"alg": alg, "kid": "key-a"});
        let unsigned =
            scopegate::token::encode_compact(&header, &claims(&jwks.issuer()), |_| vec![0]);
        let description = sg
            .check_token("GET", "/orders", &unsigned)
            .await
            .assert_invalid_token();
        assert_eq!(description, "token algorithm is not supported", "{alg}");
        // And with the signature part empty, as `none` tokens are sent.
        let stripped = format!("{}.", unsigned.rsplit_once('.').unwrap().0);
        sg.check_token("GET", "/orders", &stripped)
            .await
            .assert_invalid_token();
    }
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_rejected() {
    let (jwks, sg) = standard().await;
    for secret in [
        KEY_A.public_key_der(),
        KEY_A.jwk()["n"].as_str().unwrap().as_bytes().to_vec(),
    ] {
        let forged = hmac_forged("HS256", &secret, &claims(&jwks.issuer()));
        let description = sg
            .check_token("GET", "/orders", &forged)
            .await
            .assert_invalid_token();
        assert_eq!(description, "token algorithm is not supported");
    }
}

#[tokio::test]
async fn algorithm_not_in_the_policy_is_rejected_even_with_a_valid_signature() {
    let (jwks, sg) = standard().await;
    let header = json!({"alg": "PS256", "kid": "key-a"});
    let token = KEY_A.sign_with_header(&header, &claims(&jwks.issuer()));
    let description = sg
        .check_token("GET", "/orders", &token)
        .await
        .assert_invalid_token();
    assert_eq!(
        description,
        "token algorithm PS256 is not allowed by the policy"
    );
}

#[tokio::test]
async fn wrong_issuer_and_wrong_audience_are_rejected() {
    let (jwks, sg) = standard().await;
    let mut wrong_iss = claims(&jwks.issuer());
    wrong_iss["iss"] = json!(jwks.issuer().trim_end_matches('/'));
    let description = sg
        .check_token("GET", "/orders", &KEY_A.sign(&wrong_iss))
        .await
        .assert_invalid_token();
    assert_eq!(description, "token issuer is not accepted");

    for aud in [
        json!("https://other.example.com/api"),
        json!([]),
        json!(["a", "b"]),
    ] {
        let mut wrong_aud = claims(&jwks.issuer());
        wrong_aud["aud"] = aud;
        let description = sg
            .check_token("GET", "/orders", &KEY_A.sign(&wrong_aud))
            .await
            .assert_invalid_token();
        assert_eq!(description, "token audience is not accepted");
    }
    // A single-string aud that matches is fine.
    let mut string_aud = claims(&jwks.issuer());
    string_aud["aud"] = json!(AUDIENCE);
    assert_eq!(
        sg.check_token("GET", "/orders", &KEY_A.sign(&string_aud))
            .await
            .http_status(),
        200
    );
}

#[tokio::test]
async fn expiry_not_before_and_clock_skew_are_enforced() {
    let (jwks, sg) = standard().await;
    let with = |field: &str, value: serde_json::Value| {
        let mut c = claims(&jwks.issuer());
        c[field] = value;
        KEY_A.sign(&c)
    };
    let status = |token: String| {
        let sg = &sg;
        async move { sg.check_token("GET", "/orders", &token).await }
    };
    // Skew is 60 s: 30 s past expiry still passes, 90 s does not.
    assert_eq!(
        status(with("exp", json!(now() - 30))).await.http_status(),
        200
    );
    assert_eq!(
        status(with("exp", json!(now() - 90)))
            .await
            .assert_invalid_token(),
        "token is expired"
    );
    assert_eq!(
        status(with("nbf", json!(now() + 30))).await.http_status(),
        200
    );
    assert_eq!(
        status(with("nbf", json!(now() + 300)))
            .await
            .assert_invalid_token(),
        "token is not yet valid"
    );

    let mut no_exp = claims(&jwks.issuer());
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        status(KEY_A.sign(&no_exp)).await.assert_invalid_token(),
        "token has no expiry"
    );
    assert_eq!(
        status(with("exp", json!("9999999999")))
            .await
            .assert_invalid_token(),
        "token claim exp has an invalid value"
    );
}

#[tokio::test]
async fn unknown_host_is_403_access_denied() {
    let (jwks, sg) = standard().await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    let auth = format!("Bearer {token}");
    let checked = sg
        .check_host(
            "billing.example.com",
            "GET",
            "/orders",
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(checked.http_status(), 403);
    assert_eq!(checked.body()["error"], "access_denied");
}

#[tokio::test]
async fn hosts_match_case_insensitively_without_port_and_by_wildcard() {
    let (jwks, sg) = standard().await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    let auth = format!("Bearer {token}");
    for host in [
        "ORDERS.example.com:8443",
        "eu.orders.internal",
        "a.b.orders.internal:80",
    ] {
        let checked = sg
            .check_host(host, "GET", "/orders", &[("authorization", &auth)])
            .await;
        assert_eq!(checked.http_status(), 200, "{host}");
    }
    let bare_suffix = sg
        .check_host(
            "orders.internal",
            "GET",
            "/orders",
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(bare_suffix.http_status(), 403);
}

#[tokio::test]
async fn context_extension_host_overrides_the_request_host() {
    let (jwks, sg) = standard().await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    let auth = format!("Bearer {token}");
    let extensions = HashMap::from([("host".to_string(), HOST.to_string())]);
    let request = check_request(
        "10.0.0.7:8080",
        "GET",
        "/orders",
        &[("authorization", &auth)],
        extensions,
    );
    assert_eq!(sg.send(request).await.http_status(), 200);
}

#[tokio::test]
async fn missing_scope_is_403_naming_the_missing_scopes() {
    let (jwks, sg) = standard().await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    let checked = sg.check_token("DELETE", "/orders/42", &token).await;
    assert_eq!(checked.http_status(), 403);
    assert_eq!(checked.grpc_code(), 7);
    let challenge = checked.www_authenticate();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(
        challenge.ends_with("scope=\"delete:orders admin:orders\""),
        "{challenge}"
    );
    assert_eq!(checked.body()["error"], "insufficient_scope");
}

#[tokio::test]
async fn listed_scope_claims_are_a_union_of_a_string_and_an_array() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let rules = format!("  scopeClaims: [scope, permissions]\n{STANDARD_RULES}");
    let sg = Scopegate::start(&policy_yaml(
        "orders",
        &jwks.issuer(),
        &jwks.jwks_uri(),
        &rules,
    ))
    .await;
    let mut c = claims(&jwks.issuer());
    c["scope"] = json!("delete:orders");
    c["permissions"] = json!(["admin:orders"]);
    assert_eq!(
        sg.check_token("DELETE", "/orders/42/items", &KEY_A.sign(&c))
            .await
            .http_status(),
        200
    );

    c.as_object_mut().unwrap().remove("scope");
    c["permissions"] = json!(["read:orders"]);
    assert_eq!(
        sg.check_token("GET", "/orders", &KEY_A.sign(&c))
            .await
            .http_status(),
        200
    );
}

#[tokio::test]
async fn anonymous_rule_needs_no_token_but_validates_one_if_sent() {
    let (jwks, sg) = standard().await;
    let checked = sg
        .check("GET", "/healthz", &[("x-user-id", "spoofed")])
        .await;
    assert_eq!(checked.http_status(), 200);
    let mut removed = checked.removed_as_named();
    removed.sort();
    assert_eq!(
        removed,
        vec!["x-agent-client-id", "x-user-email", "x-user-id"]
    );

    let forged = ROGUE.sign(&claims(&jwks.issuer()));
    sg.check_token("GET", "/healthz", &forged)
        .await
        .assert_invalid_token();
    let good = KEY_A.sign(&claims(&jwks.issuer()));
    let with_token = sg.check_token("GET", "/healthz", &good).await;
    assert_eq!(
        with_token.header("x-user-id").as_deref(),
        Some("auth0|user-1")
    );
}

#[tokio::test]
async fn allowed_clients_restrict_the_azp() {
    let (jwks, sg) = standard().await;
    let mut c = claims(&jwks.issuer());
    c["scope"] = json!("create:orders");
    assert_eq!(
        sg.check_token("POST", "/orders", &KEY_A.sign(&c))
            .await
            .http_status(),
        200
    );

    c["azp"] = json!("some-other-agent");
    let checked = sg.check_token("POST", "/orders", &KEY_A.sign(&c)).await;
    assert_eq!(checked.http_status(), 403);
    assert_eq!(checked.body()["error"], "access_denied");

    // client_id is the fallback when azp is absent.
    c.as_object_mut().unwrap().remove("azp");
    c["client_id"] = json!("agent-client");
    assert_eq!(
        sg.check_token("POST", "/orders", &KEY_A.sign(&c))
            .await
            .http_status(),
        200
    );
}

#[tokio::test]
async fn first_matching_rule_wins_and_unmatched_requests_get_the_default() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let rules = r#"  rules:
    - methods: ["GET"]
      paths: ["/orders/special"]
      requireScopes: ["special:orders"]
    - paths: ["/orders/**"]
      requireScopes: ["read:orders"]
"#;
    let sg = Scopegate::start(&policy_yaml(
        "first-match",
        &jwks.issuer(),
        &jwks.jwks_uri(),
        rules,
    ))
    .await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    let special = sg.check_token("GET", "/orders/special", &token).await;
    assert_eq!(
        special.http_status(),
        403,
        "the earlier, stricter rule decides"
    );
    assert_eq!(
        sg.check_token("POST", "/orders/special", &token)
            .await
            .http_status(),
        200
    );
    let unmatched = sg.check_token("GET", "/invoices", &token).await;
    assert_eq!(unmatched.http_status(), 403);
    assert_eq!(unmatched.body()["error"], "access_denied");
}

#[tokio::test]
async fn default_allow_still_requires_a_valid_token() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let extra = "  defaultAction: allow\n";
    let sg = Scopegate::start(&policy_yaml(
        "default-allow",
        &jwks.issuer(),
        &jwks.jwks_uri(),
        extra,
    ))
    .await;
    assert_eq!(sg.check("GET", "/anything", &[]).await.http_status(), 401);
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    let checked = sg.check_token("GET", "/anything", &token).await;
    assert_eq!(checked.http_status(), 200);
    assert_eq!(checked.metadata("rule").as_deref(), Some("default"));
}

#[tokio::test]
async fn audit_mode_allows_what_it_would_deny_and_says_so() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let extra = format!("{STANDARD_RULES}  mode: audit\n");
    let sg = Scopegate::start(&policy_yaml(
        "audit",
        &jwks.issuer(),
        &jwks.jwks_uri(),
        &extra,
    ))
    .await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    let checked = sg.check_token("DELETE", "/orders/1", &token).await;
    assert_eq!(checked.http_status(), 200);
    assert_eq!(
        checked.metadata("audit_denial").as_deref(),
        Some("insufficient_scope")
    );
    assert_eq!(checked.header("x-user-id").as_deref(), Some("auth0|user-1"));

    let no_token = sg
        .check("GET", "/orders", &[("x-user-id", "spoofed")])
        .await;
    assert_eq!(no_token.http_status(), 200);
    assert!(no_token.removed().contains(&"x-user-id".to_string()));
}

#[tokio::test]
async fn ec_and_ed25519_tokens_verify_against_their_jwks_keys() {
    let ec = EcKey::generate("ec-1");
    let ed = EdKey::generate("ed-1");
    let jwks = JwksServer::start(vec![ec.jwk(), ed.jwk()]).await;
    let sg = Scopegate::start(&policy_yaml(
        "curves",
        &jwks.issuer(),
        &jwks.jwks_uri(),
        STANDARD_RULES,
    ))
    .await;
    assert_eq!(
        sg.check_token("GET", "/orders", &ec.sign(&claims(&jwks.issuer())))
            .await
            .http_status(),
        200
    );
    assert_eq!(
        sg.check_token("GET", "/orders", &ed.sign(&claims(&jwks.issuer())))
            .await
            .http_status(),
        200
    );
}

#[tokio::test]
async fn ambiguous_paths_are_refused() {
    let (jwks, sg) = standard().await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    for path in ["/healthz/../orders", "/orders%2F1", "/./orders"] {
        let checked = sg.check_token("GET", path, &token).await;
        assert_eq!(checked.http_status(), 403, "{path}");
    }
}

#[tokio::test]
async fn new_kid_is_accepted_after_one_refetch_and_removed_kid_is_rejected() {
    let (jwks, sg) = standard().await;
    let issuer = jwks.issuer();
    sg.wait_for_jwks_attempts_above(0).await;
    // Rotation: key-b is published; a token signed with it triggers a refetch.
    jwks.set_keys(vec![KEY_A.jwk(), KEY_B.jwk()]);
    let token_b = KEY_B.sign(&claims(&issuer));
    assert_eq!(
        sg.check_token("GET", "/orders", &token_b)
            .await
            .http_status(),
        200
    );

    // key-a is retired; after the next refresh its tokens are rejected.
    jwks.set_keys(vec![KEY_B.jwk()]);
    sg.wait_for_jwks_attempts_above(sg.jwks_attempts()).await;
    let token_a = KEY_A.sign(&claims(&issuer));
    let description = sg
        .check_token("GET", "/orders", &token_a)
        .await
        .assert_invalid_token();
    assert_eq!(description, "token signing key is not known");
}

#[tokio::test]
async fn cached_keys_keep_verifying_when_the_jwks_server_goes_down() {
    let (jwks, sg) = standard().await;
    sg.wait_for_jwks_attempts_above(0).await;
    jwks.set_reply(JwksReply::Status(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
    ));
    sg.wait_for_jwks_attempts_above(sg.jwks_attempts()).await; // a refresh failed
    jwks.set_reply(JwksReply::Body("<html>not json</html>"));
    sg.wait_for_jwks_attempts_above(sg.jwks_attempts()).await; // a refresh got garbage
    jwks.stop().await;
    sg.wait_for_jwks_attempts_above(sg.jwks_attempts()).await; // a refresh could not connect
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    assert_eq!(
        sg.check_token("GET", "/orders", &token).await.http_status(),
        200
    );

    let readyz: serde_json::Value = reqwest::get(sg.admin_url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let state = &readyz["jwks"][0];
    assert_eq!(state["keys"], 1);
    assert!(state["lastError"].as_str().is_some(), "{readyz}");
    assert!(state["lastSuccess"].as_str().is_some(), "{readyz}");
    assert_eq!(state["jwksUri"], jwks.jwks_uri().as_str(), "{readyz}");
    assert!(state["fetchAttempts"].as_u64().unwrap() >= 2, "{readyz}");
    assert_eq!(readyz["shuttingDown"], false, "{readyz}");
}

#[tokio::test]
async fn jwks_down_from_the_start_denies_with_503_and_never_allows() {
    let unreachable = format!("http://127.0.0.1:{}/jwks.json", free_port());
    let policy = policy_yaml(
        "down",
        "https://tenant.example.com/",
        &unreachable,
        STANDARD_RULES,
    );
    let sg = Scopegate::start(&policy).await;
    let mut c = claims("https://tenant.example.com/");
    c["scope"] = json!("read:orders");
    let checked = sg.check_token("GET", "/orders", &KEY_A.sign(&c)).await;
    assert_eq!(checked.http_status(), 503);
    assert_eq!(checked.grpc_code(), 14);
    assert_eq!(checked.body()["error"], "temporarily_unavailable");
    // Anonymous routes need no keys and keep working.
    assert_eq!(sg.check("GET", "/healthz", &[]).await.http_status(), 200);
}

/// Sends the same Check `n` times concurrently and returns the HTTP statuses.
async fn burst(sg: &Scopegate, token: &str, n: usize) -> Vec<i32> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (client, token) = (sg.client.clone(), token.to_string());
        tasks.spawn(async move { bearer_status(client, &token).await });
    }
    tasks.join_all().await
}

#[tokio::test]
async fn a_thousand_concurrent_unknown_kids_cause_one_fetch() {
    let (jwks, sg) = with_keys_fetched(JwksSettings {
        refresh_interval: Duration::from_secs(3600),
        min_refresh_interval: Duration::from_secs(3600),
        max_refresh_interval: Duration::from_secs(3600),
        min_refetch_interval: Duration::from_secs(3600),
        ..fast_jwks()
    })
    .await;
    let before = jwks.fetches();
    // key-b is in no JWKS: every request misses, yet only one refetch is made.
    let statuses = burst(&sg, &KEY_B.sign(&claims(&jwks.issuer())), 1000).await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(jwks.fetches() - before, 1);
}

#[tokio::test]
async fn a_thousand_concurrent_requests_with_a_new_kid_share_one_refetch() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let policy = policy_yaml(
        "rotation-burst",
        &jwks.issuer(),
        &jwks.jwks_uri(),
        STANDARD_RULES,
    );
    let settings = scopegate::jwks::JwksSettings {
        refresh_interval: Duration::from_secs(3600),
        min_refresh_interval: Duration::from_secs(3600),
        max_refresh_interval: Duration::from_secs(3600),
        min_refetch_interval: Duration::from_secs(3600),
        ..fast_jwks()
    };
    let sg = Scopegate::start_with(&policy, settings).await;
    sg.wait_for_jwks_attempts_above(0).await;
    jwks.set_keys(vec![KEY_A.jwk(), KEY_B.jwk()]);
    let before = jwks.fetches();
    let statuses = burst(&sg, &KEY_B.sign(&claims(&jwks.issuer())), 1000).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(jwks.fetches() - before, 1);
}

#[tokio::test]
async fn oidc_discovery_finds_the_jwks() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let policy = format!(
        r#"apiVersion: scopegate.dev/v1alpha1
kind: TokenPolicy
metadata: {{name: discovered}}
spec:
  hosts: ["{HOST}"]
  issuer: {{url: "{}", audiences: ["{AUDIENCE}"]}}
  defaultAction: allow
"#,
        jwks.issuer()
    );
    let sg = Scopegate::start(&policy).await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    assert_eq!(sg.check_token("GET", "/x", &token).await.http_status(), 200);
}

#[tokio::test]
async fn a_rate_limited_unknown_kid_is_answered_without_waiting_on_a_hanging_fetch() {
    let (jwks, sg) = with_keys_fetched(JwksSettings {
        refresh_interval: Duration::from_millis(300),
        min_refetch_interval: Duration::from_secs(3600),
        fetch_timeout: Duration::from_secs(60),
        ..fast_jwks()
    })
    .await;

    // A miss is answered by a fetch that fails (its own, or a background
    // refresh it waited for); then the background refresh hangs.
    jwks.set_reply(JwksReply::Status(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
    ));
    let unknown = KEY_B.sign(&claims(&jwks.issuer()));
    sg.check_token("GET", "/orders", &unknown)
        .await
        .assert_invalid_token();
    let hanging = serde_json::json!({"keys": [KEY_A.jwk()]});
    jwks.set_reply(JwksReply::SlowKeys(hanging, Duration::from_secs(120)));
    let fetches = jwks.fetches();
    jwks.wait_for_fetches_above(fetches).await;
    let attempts = sg.jwks_attempts();

    // The next miss is rate-limited: answered while that fetch still hangs.
    sg.check_token("GET", "/orders", &unknown)
        .await
        .assert_invalid_token();
    assert_eq!(
        sg.jwks_attempts(),
        attempts,
        "answered before the hanging fetch ended"
    );
}

/// Issue 16 (consent, not authority): with Auth0 RBAC, `scope` holds what the
/// user consented to for this agent, `permissions` everything the user may
/// do. An agent granted `read:orders` must not pass a delete rule because
/// the user could delete.
#[tokio::test]
async fn consent_not_authority_permissions_count_only_when_listed() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let mut consented = claims(&jwks.issuer());
    consented["scope"] = json!("read:orders");
    consented["permissions"] = json!(["read:orders", "delete:orders", "admin:orders"]);
    let token = KEY_A.sign(&consented);

    let by_default = Scopegate::start(&policy_yaml(
        "orders",
        &jwks.issuer(),
        &jwks.jwks_uri(),
        STANDARD_RULES,
    ))
    .await;
    let checked = by_default.check_token("DELETE", "/orders/1", &token).await;
    assert_eq!(checked.http_status(), 403);
    assert_eq!(checked.body()["error"], "insufficient_scope");
    assert_eq!(
        by_default
            .check_token("GET", "/orders/1", &token)
            .await
            .http_status(),
        200
    );

    let machine_to_machine = format!("  scopeClaims: [scope, permissions]\n{STANDARD_RULES}");
    let listed = Scopegate::start(&policy_yaml(
        "orders",
        &jwks.issuer(),
        &jwks.jwks_uri(),
        &machine_to_machine,
    ))
    .await;
    assert_eq!(
        listed
            .check_token("DELETE", "/orders/1", &token)
            .await
            .http_status(),
        200
    );
}

/// `--envoy-metadata false`: allows carry the same headers and no dynamic
/// metadata (the access-log fields cost ~5 µs of CPU per Check; issue 14).
#[tokio::test]
async fn allows_carry_dynamic_metadata_unless_it_is_turned_off() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let policy = policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), STANDARD_RULES);
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    let with = Scopegate::start(&policy).await;
    let without =
        Scopegate::start_configured(&policy, |config| config.envoy_metadata = false).await;

    let allowed = with.check_token("GET", "/orders", &token).await;
    assert_eq!(allowed.metadata("sub").as_deref(), Some("auth0|user-1"));
    assert_eq!(allowed.metadata("policy").as_deref(), Some("test/orders"));

    let allowed = without.check_token("GET", "/orders", &token).await;
    assert_eq!(allowed.http_status(), 200);
    assert_eq!(allowed.header("x-user-id").as_deref(), Some("auth0|user-1"));
    assert!(allowed.0.dynamic_metadata.is_none(), "{:?}", allowed.0);
}
