//! Delegation (RFC 8693 `act`, DESIGN.md §6) through real Checks: tokens
//! shaped like Auth0's On-Behalf-Of token exchange output (nested `act`),
//! real signatures, a real JWKS server and a real gRPC server.

mod support;

use serde_json::{Value, json};
use support::*;

const DELEGATION_RULES: &str = r#"  rules:
    - paths: ["/orders/**"]
      requireScopes: ["read:orders"]
      actor: {required: true, allowed: ["agent-*"], maxDepth: 2}
    - paths: ["/profile/**"]
      actor: {required: false}
"#;

/// A token whose `act` chain is `actors`, outermost first.
fn delegated(issuer: &str, actors: &[&str]) -> String {
    let mut c = claims(issuer);
    let mut act = Value::Null;
    for actor in actors.iter().rev() {
        let mut entry = json!({"sub": actor});
        if !act.is_null() {
            entry["act"] = act;
        }
        act = entry;
    }
    if !act.is_null() {
        c["act"] = act;
    }
    KEY_A.sign(&c)
}

fn reason(checked: &Checked) -> String {
    checked.0.status.as_ref().unwrap().message.clone()
}

#[tokio::test]
async fn only_the_outermost_allowed_agent_acts_within_the_depth() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let policy = policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), DELEGATION_RULES).replace(
        "{header: x-user-email, claim: \"https://example.com/email\"}",
        "{header: x-agent-actor, claim: /act/sub}",
    );
    let sg = Scopegate::start(&policy).await;
    let issuer = jwks.issuer();

    let agent = sg
        .check_token(
            "GET",
            "/orders/1",
            &delegated(&issuer, &["agent-1", "mcp-server"]),
        )
        .await;
    assert_eq!(agent.http_status(), 200);
    assert_eq!(
        agent.metadata("actor").as_deref(),
        Some("agent-1 mcp-server")
    );
    assert_eq!(agent.header("x-agent-actor").as_deref(), Some("agent-1"));

    for (actors, expected) in [
        (&[][..], "actor_required"),
        (&["evil-bot"][..], "actor_not_allowed"),
        // A nested allowed agent does not make the outer one allowed.
        (&["evil-bot", "agent-1"][..], "actor_not_allowed"),
        (&["agent-1", "a", "b"][..], "delegation_too_deep"),
    ] {
        let checked = sg
            .check_token("GET", "/orders/1", &delegated(&issuer, actors))
            .await;
        assert_eq!(checked.http_status(), 403, "{actors:?}");
        assert_eq!(reason(&checked), expected, "{actors:?}");
        assert_eq!(checked.body()["error"], "access_denied");
    }

    // `required: false`: only the user's own token.
    let own = sg
        .check_token("GET", "/profile/me", &delegated(&issuer, &[]))
        .await;
    assert_eq!(own.http_status(), 200);
    let acting = sg
        .check_token("GET", "/profile/me", &delegated(&issuer, &["agent-1"]))
        .await;
    assert_eq!(
        (acting.http_status(), reason(&acting).as_str()),
        (403, "actor_not_allowed")
    );
}

#[test]
fn contradictory_actor_rules_do_not_compile() {
    let policy = policy_yaml(
        "p",
        "https://tenant.example.com/",
        "https://tenant.example.com/jwks",
        "  rules:\n    - actor: {required: false, allowed: [\"agent-*\"]}\n    - actor: {allowed: []}\n",
    );
    let errors =
        scopegate::policy::files::parse_text(std::path::Path::new("p.yaml"), &policy).unwrap_err();
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert!(
        fields.contains(&"spec.rules[0].actor.required"),
        "{errors:?}"
    );
    assert!(
        fields.contains(&"spec.rules[1].actor.allowed"),
        "{errors:?}"
    );
}
