//! The policy language (DESIGN.md §7) through real Checks: real signed
//! tokens, real JWKS servers on loopback, a real scopegate gRPC server:
//! several issuers, `tokenTypes`, ES512, path captures, `when` conditions
//! over claims, the request, the token and the actor chain, and JSON-pointer
//! claim headers.

mod support;

use serde_json::{Value, json};
use support::*;

/// A policy for [`HOST`] with `issuers_yaml` (a complete `issuer:` or
/// `issuers:` block) and `rest` (rules, claimHeaders, …).
fn policy(issuers_yaml: &str, rest: &str) -> String {
    format!(
        r#"apiVersion: scopegate.dev/v1alpha1
kind: TokenPolicy
metadata: {{name: lang, namespace: test}}
spec:
  hosts: ["{HOST}"]
{issuers_yaml}{rest}"#
    )
}

/// An `issuer:` block for `jwks` accepting these algorithms.
fn issuer_yaml(jwks: &JwksServer, algorithms: &str) -> String {
    format!(
        "  issuer:\n    url: \"{}\"\n    jwksUri: \"{}\"\n    audiences: [\"{AUDIENCE}\"]\n    algorithms: {algorithms}\n",
        jwks.issuer(),
        jwks.jwks_uri()
    )
}

fn reason(checked: &Checked) -> String {
    checked.0.status.as_ref().unwrap().message.clone()
}

#[tokio::test]
async fn several_issuers_each_verify_with_their_own_keys() {
    // An Auth0 tenant reached through its custom domain and its canonical
    // domain: two `iss` values, here two key sets.
    let custom = JwksServer::start(vec![KEY_A.jwk()]).await;
    let canonical = JwksServer::start(vec![KEY_B.jwk()]).await;
    let issuers = format!(
        "  issuers:\n    - {{url: \"{}\", jwksUri: \"{}\", audiences: [\"{AUDIENCE}\"]}}\n    - {{url: \"{}\", jwksUri: \"{}\", audiences: [\"{AUDIENCE}\"]}}\n",
        custom.issuer(),
        custom.jwks_uri(),
        canonical.issuer(),
        canonical.jwks_uri()
    );
    let sg = Scopegate::start(&policy(&issuers, STANDARD_RULES)).await;
    let from_custom = KEY_A.sign(&claims(&custom.issuer()));
    let from_canonical = KEY_B.sign(&claims(&canonical.issuer()));
    for token in [&from_custom, &from_canonical] {
        assert_eq!(
            sg.check_token("GET", "/orders", token).await.http_status(),
            200
        );
        // And again, from the token cache.
        assert_eq!(
            sg.check_token("GET", "/orders", token).await.http_status(),
            200
        );
    }
    // A token naming one issuer but signed with the other's key.
    let crossed = KEY_B.sign(&claims(&custom.issuer()));
    assert_eq!(
        sg.check_token("GET", "/orders", &crossed)
            .await
            .http_status(),
        401
    );
    // An issuer the policy does not list.
    let stranger = KEY_A.sign(&claims("https://elsewhere.example.com/"));
    let checked = sg.check_token("GET", "/orders", &stranger).await;
    assert_eq!(checked.http_status(), 401);
    assert_eq!(reason(&checked), "wrong_issuer");
    // /readyz reports both key sources.
    let readyz: Value = reqwest::get(sg.admin_url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(readyz["jwks"].as_array().unwrap().len(), 2, "{readyz}");
}

#[tokio::test]
async fn token_types_check_typ_case_insensitively_with_an_optional_prefix() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let issuer = issuer_yaml(&jwks, "[RS256]") + "    tokenTypes: [\"at+jwt\"]\n";
    let sg = Scopegate::start(&policy(&issuer, STANDARD_RULES)).await;
    let with_typ = |typ: Value| {
        let mut header = json!({"alg": "RS256", "kid": KEY_A.kid});
        if !typ.is_null() {
            header["typ"] = typ;
        }
        KEY_A.sign_with_header(&header, &claims(&jwks.issuer()))
    };
    for typ in [
        json!("at+jwt"),
        json!("AT+JWT"),
        json!("application/at+jwt"),
    ] {
        let checked = sg
            .check_token("GET", "/orders", &with_typ(typ.clone()))
            .await;
        assert_eq!(checked.http_status(), 200, "{typ}");
    }
    for typ in [
        json!("JWT"),
        json!("dpop+jwt"),
        json!(["at+jwt"]),
        Value::Null,
    ] {
        let checked = sg
            .check_token("GET", "/orders", &with_typ(typ.clone()))
            .await;
        assert_eq!(checked.http_status(), 401, "{typ}");
        assert_eq!(reason(&checked), "wrong_token_type", "{typ}");
    }
}

#[tokio::test]
async fn es512_tokens_verify_with_a_p521_key() {
    let p521 = EcKey::generate_p521("p521");
    let jwks = JwksServer::start(vec![p521.jwk()]).await;
    let sg = Scopegate::start(&policy(&issuer_yaml(&jwks, "[ES512]"), STANDARD_RULES)).await;
    let token = p521.sign(&claims(&jwks.issuer()));
    assert_eq!(
        sg.check_token("GET", "/orders", &token).await.http_status(),
        200
    );
    // ES256 is not in this issuer's list.
    let p256 = EcKey::generate("p521");
    let checked = sg
        .check_token("GET", "/orders", &p256.sign(&claims(&jwks.issuer())))
        .await;
    assert_eq!(checked.http_status(), 401);
}

/// The rules of the condition tests: user binding, Auth0 RAR, organization
/// binding, token and actor variables.
const CONDITION_RULES: &str = r#"  rules:
    - paths: ["/users/{user}/orders/**"]
      requireScopes: ["read:orders"]
      when: ["claims.sub == request.params.user"]
    - methods: [POST]
      paths: ["/payments"]
      when:
        - 'claims.authorization_details.exists(d, d.type == "payment_initiation" && double(d.instructedAmount.amount) <= 100.0)'
    - paths: ["/org/**"]
      when: ['claims.org_id == request.headers["x-org-id"]']
    - paths: ["/agent/**"]
      when: ['"read:orders" in token.scopes', 'size(actor) > 0 && actor[0].sub == "agent-1"']
"#;

#[tokio::test]
async fn conditions_bind_the_request_to_the_user() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let sg = Scopegate::start(&policy(&issuer_yaml(&jwks, "[RS256]"), CONDITION_RULES)).await;
    let token = KEY_A.sign(&claims(&jwks.issuer())); // sub auth0|user-1
    let own = sg
        .check_token("GET", "/users/auth0%7Cuser-1/orders/7", &token)
        .await;
    // `|` is encoded on the wire and stays encoded: not the same user.
    assert_eq!(own.http_status(), 403);
    let mut plain = claims(&jwks.issuer());
    plain["sub"] = json!("user-1");
    let token = KEY_A.sign(&plain);
    assert_eq!(
        sg.check_token("GET", "/users/user-1/orders/7", &token)
            .await
            .http_status(),
        200
    );
    let other = sg
        .check_token("GET", "/users/user-2/orders/7", &token)
        .await;
    assert_eq!(other.http_status(), 403);
    assert_eq!(reason(&other), "condition");
    assert_eq!(other.body()["error"], "access_denied");
}

#[tokio::test]
async fn conditions_read_auth0_rich_authorization_requests() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let sg = Scopegate::start(&policy(&issuer_yaml(&jwks, "[RS256]"), CONDITION_RULES)).await;
    let with_amount = |amount: Value| {
        let mut c = claims(&jwks.issuer());
        c["authorization_details"] = json!([{
            "type": "payment_initiation",
            "instructedAmount": {"currency": "EUR", "amount": amount},
        }]);
        KEY_A.sign(&c)
    };
    assert_eq!(
        sg.check_token("POST", "/payments", &with_amount(json!("42.50")))
            .await
            .http_status(),
        200
    );
    let over = sg
        .check_token("POST", "/payments", &with_amount(json!("500")))
        .await;
    assert_eq!(
        (over.http_status(), reason(&over).as_str()),
        (403, "condition")
    );
    // No authorization_details at all: an evaluation error, never an allow.
    let without = sg
        .check_token("POST", "/payments", &KEY_A.sign(&claims(&jwks.issuer())))
        .await;
    assert_eq!(
        (without.http_status(), reason(&without).as_str()),
        (403, "condition_error")
    );
}

#[tokio::test]
async fn conditions_read_headers_token_and_actor() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let sg = Scopegate::start(&policy(&issuer_yaml(&jwks, "[RS256]"), CONDITION_RULES)).await;
    let mut org = claims(&jwks.issuer());
    org["org_id"] = json!("org_123");
    let auth = format!("Bearer {}", KEY_A.sign(&org));
    let same = sg
        .check(
            "GET",
            "/org/x",
            &[("authorization", &auth), ("x-org-id", "org_123")],
        )
        .await;
    assert_eq!(same.http_status(), 200);
    let other = sg
        .check(
            "GET",
            "/org/x",
            &[("authorization", &auth), ("x-org-id", "org_999")],
        )
        .await;
    assert_eq!(other.http_status(), 403);

    // Auth0 On-Behalf-Of token exchange output: the agent acting for the user.
    let mut delegated = claims(&jwks.issuer());
    delegated["act"] = json!({"sub": "agent-1", "act": {"sub": "mcp-server"}});
    let checked = sg
        .check_token("GET", "/agent/x", &KEY_A.sign(&delegated))
        .await;
    assert_eq!(checked.http_status(), 200);
    delegated["act"]["sub"] = json!("agent-2");
    let checked = sg
        .check_token("GET", "/agent/x", &KEY_A.sign(&delegated))
        .await;
    assert_eq!(checked.http_status(), 403);
    let direct = sg
        .check_token("GET", "/agent/x", &KEY_A.sign(&claims(&jwks.issuer())))
        .await;
    assert_eq!(direct.http_status(), 403, "no act: the actor list is empty");
}

#[tokio::test]
async fn claim_headers_take_json_pointers() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let rest = format!(
        "{STANDARD_RULES}  claimHeaders:\n    - {{header: x-agent-actor, claim: /act/sub}}\n    - {{header: x-org, claim: \"/https:~1~1example.com~1org/id\"}}\n"
    );
    let yaml = policy(&issuer_yaml(&jwks, "[RS256]"), &rest);
    let sg = Scopegate::start(&yaml).await;
    let mut c = claims(&jwks.issuer());
    c["act"] = json!({"sub": "agent-1"});
    c["https://example.com/org"] = json!({"id": "org_123"});
    let checked = sg.check_token("GET", "/orders", &KEY_A.sign(&c)).await;
    assert_eq!(checked.http_status(), 200);
    assert_eq!(checked.header("x-agent-actor").as_deref(), Some("agent-1"));
    assert_eq!(checked.header("x-org").as_deref(), Some("org_123"));
    let plain = sg
        .check_token("GET", "/orders", &KEY_A.sign(&claims(&jwks.issuer())))
        .await;
    assert!(plain.removed().contains(&"x-agent-actor".to_string()));
}

#[test]
fn conditions_and_issuers_that_do_not_compile_name_the_field_and_position() {
    let issuer = "  issuer: {url: \"https://tenant.example.com/\", audiences: [api]}\n";
    let cases = [
        (
            "  rules:\n    - when: ['claims.sub ==']\n".to_string(),
            "spec.rules[0].when[0]",
            "at line:column 1:14",
        ),
        (
            "  rules:\n    - when: ['user.id == claims.sub']\n".to_string(),
            "spec.rules[0].when[0]",
            "unknown variable `user`",
        ),
        (
            "  rules:\n    - {paths: [\"/u/{a}/{a}\"]}\n".to_string(),
            "spec.rules[0].paths[0]",
            "appears twice",
        ),
        (
            "  claimHeaders:\n    - {header: x-a, claim: \"/a~2b\"}\n".to_string(),
            "spec.claimHeaders[0].claim",
            "not a JSON pointer",
        ),
    ];
    for (rest, field, message) in cases {
        let yaml = policy(issuer, &rest);
        let errors = scopegate::policy::files::parse_text(std::path::Path::new("p.yaml"), &yaml)
            .expect_err(field);
        assert!(
            errors
                .iter()
                .any(|e| e.field == field && e.message.contains(message)),
            "{field}: {errors:?}"
        );
    }
    let both =
        format!("{issuer}  issuers: [{{url: \"https://b.example.com/\", audiences: [api]}}]\n");
    let errors =
        scopegate::policy::files::parse_text(std::path::Path::new("p.yaml"), &policy(&both, ""))
            .expect_err("issuer and issuers");
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("exactly one of issuer and issuers")),
        "{errors:?}"
    );
}
