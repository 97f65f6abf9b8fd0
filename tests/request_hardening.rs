//! Regression tests for tenant isolation (DESIGN.md §8, issue 20): what a
//! request carries means one thing to scopegate and to the upstream. Over
//! real sockets: a real scopegate gRPC server, a real tonic client, real
//! signed tokens and a real JWKS HTTP server on loopback. The same through
//! real Envoy is in tests/headers_envoy.rs; DPoP replay at the edge of a
//! proof's window in tests/dpop.rs and tests/dpop_store.rs.

mod support;

use serde_json::{Value, json};
use support::*;

/// A condition that a request header must be absent for: the shape a
/// bypass through unread headers attacks. With an MCP rule and RFC 9728
/// metadata.
const NO_IMPERSONATION: &str = r#"  resource: {id: "https://orders.example.com/api"}
  rules:
    - paths: ["/orders/**"]
      requireScopes: ["read:orders"]
      when: ['!("x-impersonate" in request.headers)']
    - paths: ["/public/**"]
      anonymous: true
    - mcp: {methods: ["tools/list"]}
      paths: ["/mcp"]
"#;

async fn scopegate(rules: &str) -> (JwksServer, Scopegate) {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let policy = policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), rules);
    (jwks, Scopegate::start(&policy).await)
}

fn with_claims(jwks: &JwksServer, extra: Value) -> String {
    let mut claims = claims(&jwks.issuer());
    for (name, value) in extra.as_object().unwrap() {
        claims[name] = value.clone();
    }
    KEY_A.sign(&claims)
}

#[tokio::test]
async fn finding_5_claim_values_with_edge_spaces_never_render_as_the_trimmed_value() {
    let (jwks, sg) = scopegate(STANDARD_RULES).await;
    let mut rendered = Vec::new();
    for sub in ["alice", " alice", "alice ", "  alice  "] {
        let token = with_claims(&jwks, json!({"sub": sub}));
        let checked = sg.check_token("GET", "/orders", &token).await;
        assert_eq!(checked.http_status(), 200, "{sub:?}");
        let value = checked.header("x-user-id").expect("x-user-id is set");
        // What an upstream's HTTP parser keeps of it.
        rendered.push(value.trim_matches([' ', '\t']).to_string());
    }
    assert_eq!(rendered[0], "alice");
    assert_eq!(rendered[1], "UTF-8''%20alice");
    assert_eq!(rendered[2], "UTF-8''alice%20");
    let mut distinct = rendered.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), rendered.len(), "{rendered:?}");
}

/// Allowed with a good token, unless `x-impersonate` is sent: read from the
/// `headers` map and from the raw `header_map` alike.
#[tokio::test]
async fn finding_6_conditions_read_headers_from_header_map_too() {
    let (jwks, sg) = scopegate(NO_IMPERSONATION).await;
    let auth = format!("Bearer {}", KEY_A.sign(&claims(&jwks.issuer())));
    for (raw, impersonate, expected) in [
        (false, false, 200),
        (false, true, 403),
        (true, false, 200),
        (true, true, 403),
    ] {
        let mut headers = vec![("authorization", auth.as_str())];
        if impersonate {
            headers.push(("x-impersonate", "admin"));
        }
        let request = if raw {
            check_request_raw(HOST, "GET", "/orders/1", &headers)
        } else {
            check_request(HOST, "GET", "/orders/1", &headers, Default::default())
        };
        let checked = sg.send(request).await;
        let case = format!("raw {raw}, x-impersonate {impersonate}");
        assert_eq!(checked.http_status(), expected, "{case}");
        if expected == 403 {
            assert_eq!(checked.reason(), "condition", "{case}");
        }
    }
}

/// Envoy's partial-body flag and `content-length` count in raw headers as
/// in the map: a cut body is never read as the whole request.
#[tokio::test]
async fn finding_6_the_partial_body_flag_and_content_length_are_read_from_header_map() {
    let (_jwks, sg) = scopegate(NO_IMPERSONATION).await;
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let declared = (body.len() + 100).to_string();
    for (headers, reason) in [
        (vec![("x-envoy-auth-partial-body", "true")], "partial"),
        (vec![("content-length", declared.as_str())], "partial"),
    ] {
        let mut request = check_request_raw(HOST, "POST", "/mcp", &headers);
        http_of(&mut request).raw_body = body.to_vec();
        let checked = sg.send(request).await;
        assert_eq!(checked.http_status(), 400, "{headers:?}");
        assert_eq!(checked.reason(), reason, "{headers:?}");
    }
    // The whole body, said so: read.
    let length = body.len().to_string();
    let mut request = check_request_raw(HOST, "POST", "/mcp", &[("content-length", &length)]);
    http_of(&mut request).raw_body = body.to_vec();
    assert_eq!(sg.send(request).await.reason(), "missing_token");
}

#[tokio::test]
async fn hardening_every_spelling_of_a_claim_header_is_removed() {
    let (jwks, sg) = scopegate(STANDARD_RULES).await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    let auth = format!("Bearer {token}");
    let checked = sg
        .check(
            "GET",
            "/orders",
            &[("authorization", &auth), ("x_user_id", "spoofed-admin")],
        )
        .await;
    assert_eq!(checked.header("x-user-id").as_deref(), Some("auth0|user-1"));
    let removed = checked.removed();
    for spelling in [
        "x_user_id",
        "x_user-id",
        "x-user_id",
        "x_agent_client_id",
        "x-agent_client-id",
        "x_user_email",
        // Absent claim: the header itself too.
        "x-user-email",
    ] {
        assert!(
            removed.iter().any(|r| r == spelling),
            "{spelling}: {removed:?}"
        );
    }
    assert!(!removed.iter().any(|r| r == "x-user-id"), "{removed:?}");
    // On anonymous rules too: nobody's claim header reaches the upstream.
    let (_jwks, sg) = scopegate(NO_IMPERSONATION).await;
    let checked = sg
        .check("GET", "/public/x", &[("x_user_id", "admin")])
        .await;
    assert_eq!(checked.http_status(), 200);
    assert!(checked.removed().iter().any(|r| r == "x_user_id"));
}

#[tokio::test]
async fn hardening_jwts_of_other_kinds_are_refused_without_token_types() {
    let (jwks, sg) = scopegate(STANDARD_RULES).await;
    let with_typ = |typ: Option<&str>| {
        let mut header = json!({"alg": "RS256", "kid": KEY_A.kid});
        if let Some(typ) = typ {
            header["typ"] = json!(typ);
        }
        KEY_A.sign_with_header(&header, &claims(&jwks.issuer()))
    };
    for typ in [
        "oauth-id-jag+jwt",
        "txntoken+jwt",
        "wimse-id+jwt",
        "dpop+jwt",
        "secevent+jwt",
        "logout+jwt",
        "application/TxnToken+JWT",
    ] {
        let checked = sg.check_token("GET", "/orders", &with_typ(Some(typ))).await;
        let description = checked.assert_invalid_token();
        assert_eq!(checked.reason(), "token_type", "{typ}");
        assert!(description.contains("not an access token"), "{description}");
    }
    for typ in [
        None,
        Some("JWT"),
        Some("at+jwt"),
        Some("application/at+jwt"),
    ] {
        let checked = sg.check_token("GET", "/orders", &with_typ(typ)).await;
        assert_eq!(checked.http_status(), 200, "{typ:?}");
    }
}

#[tokio::test]
async fn hardening_an_access_token_query_parameter_is_refused_on_every_rule() {
    let (jwks, sg) = scopegate(NO_IMPERSONATION).await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    for query in [
        "access_token=x",
        "a=1&access_token=",
        "access_token",
        "ACCESS_TOKEN=x",
        "access%5Ftoken=x",
        "%61ccess_token=x",
        "access.token=x",
        "access+token=x",
        "access_token[]=x",
        "a=1;access_token=x",
    ] {
        for path in [
            "/public/x",
            "/orders/1",
            "/.well-known/oauth-protected-resource/api",
        ] {
            let checked = sg
                .check_token("GET", &format!("{path}?{query}"), &token)
                .await;
            assert_eq!(checked.http_status(), 400, "{path}?{query}");
            assert_eq!(checked.reason(), "query_token", "{path}?{query}");
            assert_eq!(checked.body()["error"], "invalid_request");
        }
    }
    let metadata = sg
        .check("GET", "/.well-known/oauth-protected-resource/api?x=1", &[])
        .await;
    assert_eq!(metadata.reason(), "resource_metadata");
    for query in [
        "my_access_token=x",
        "q=access_token",
        "access_tokens=1",
        "x#access_token=1",
    ] {
        let checked = sg.check("GET", &format!("/public/x?{query}"), &[]).await;
        assert_eq!(checked.http_status(), 200, "{query}");
    }
}

#[tokio::test]
async fn hardening_scope_strings_split_on_spaces_only() {
    let (jwks, sg) = scopegate(STANDARD_RULES).await;
    for (scope, expected) in [
        ("openid read:orders", 200),
        ("openid  read:orders ", 200),
        ("openid\tread:orders", 403),
        ("openid\u{c}read:orders", 403),
        ("read:orders\u{b}admin", 403),
    ] {
        let token = with_claims(&jwks, json!({"scope": scope}));
        let checked = sg.check_token("GET", "/orders", &token).await;
        assert_eq!(checked.http_status(), expected, "{scope:?}");
    }
}
