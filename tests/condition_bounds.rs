//! Bounded conditions (DESIGN.md §8; issue 20, findings 2, 3 and 7) through
//! the real binary: `scopegate validate` refuses a `when:` over the cost
//! budget or too deep to evaluate on a worker's stack, `scopegate serve`
//! rejects a reload with one and keeps serving the last good set over real
//! gRPC, and conditions see the request method as rules compare it.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use support::process::ScopegateProcess;
use support::*;

/// A sum of 1,500 terms: 1,500 levels of nesting, which overflowed a
/// worker's 2 MiB stack on the first Check.
fn long_sum() -> String {
    format!("{} > 0", vec!["1"; 1_500].join(" + "))
}

/// [`STANDARD_RULES`] with one more rule, first, for `GET /guarded` with
/// this condition.
fn rules_with_condition(condition: &str) -> String {
    STANDARD_RULES.replacen(
        "  rules:\n",
        &format!("  rules:\n    - paths: [\"/guarded\"]\n      when: ['{condition}']\n"),
        1,
    )
}

/// `scopegate validate FILE` on a policy whose first rule has `condition`.
fn validate(dir: &Path, condition: &str) -> std::process::Output {
    let file = dir.join("policy.yaml");
    let rules = rules_with_condition(condition);
    let issuer = "https://tenant.example.com/";
    std::fs::write(&file, policy_yaml("orders", issuer, issuer, &rules)).unwrap();
    Command::new(process::scopegate_bin())
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap()
}

fn check(
    method: &str,
    path: &str,
    token: &str,
) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    let auth = format!("Bearer {token}");
    check_request(
        HOST,
        method,
        path,
        &[("authorization", &auth)],
        HashMap::new(),
    )
}

#[test]
fn finding_2_validate_refuses_a_condition_over_the_cost_budget_naming_estimate_and_budget() {
    let dir = tempfile::tempdir().unwrap();
    let out = validate(dir.path(), &nested_alls());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("spec.rules[0].when[0]") && stdout.contains("estimated cost "),
        "{stdout}"
    );
    assert!(stdout.contains("exceeds the budget of "), "{stdout}");
    // One comprehension over the largest claims list is within the budget.
    let out = validate(dir.path(), "claims.groups.exists(g, g == \"admins\")");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn finding_3_validate_refuses_a_condition_nested_too_deep_to_evaluate_safely() {
    let dir = tempfile::tempdir().unwrap();
    let out = validate(dir.path(), &long_sum());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("spec.rules[0].when[0]"), "{stdout}");
    // 1,500 terms are 5,999 bytes: over the CRD's 2,048 as well.
    assert!(stdout.contains("at most 2048"), "{stdout}");
    let deep = format!("{} > 0", vec!["1"; 500].join("+"));
    let out = validate(dir.path(), &deep);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("nests more than 32 levels"), "{stdout}");
}

/// Starts the real binary on the standard policy, then rewrites the file
/// with `condition` on `GET /guarded`: the reload must be rejected (naming
/// `expected` in the log) and the last good set keep answering.
async fn serve_refuses_reload_with(condition: &str, expected: &str) {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let dir = tempfile::tempdir().unwrap();
    let good = policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), STANDARD_RULES);
    let sg = ScopegateProcess::serve_policy(dir.path(), &good, &[], |_| {}).await;
    sg.wait_for_jwks_attempts_above(0).await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    assert_eq!(
        sg.send(check("GET", "/orders", &token)).await.http_status(),
        200
    );

    let bad = policy_yaml(
        "orders",
        &jwks.issuer(),
        &jwks.jwks_uri(),
        &rules_with_condition(condition),
    );
    // Whether the edit is applied or rejected, the log says so.
    let reloads = |log: String| {
        log.matches("reloaded policy files").count()
            + log.matches("keeping the last good policies").count()
    };
    let before = reloads(sg.log_text());
    std::fs::write(dir.path().join("policy.yaml"), bad).unwrap();
    eventually("scopegate processed the edit", || async {
        reloads(sg.log_text()) > before
    })
    .await;

    // The last good set: no rule for /guarded (403 no_rule), /orders as
    // before. (Before the bounds, the edit applied and this Check either
    // took ~26 s or overflowed a worker's stack and aborted the process.)
    let guarded = sg.send(check("GET", "/guarded", &token)).await;
    assert_eq!(guarded.http_status(), 403);
    assert_eq!(guarded.0.status.as_ref().unwrap().message, "no_rule");
    assert_eq!(
        sg.send(check("GET", "/orders", &token)).await.http_status(),
        200
    );
    assert!(sg.log_text().contains(expected), "{}", sg.log_text());
}

#[tokio::test]
async fn finding_2_serve_rejects_a_reload_over_the_cost_budget_and_keeps_the_last_good_set() {
    serve_refuses_reload_with(&nested_alls(), "exceeds the budget of ").await;
}

#[tokio::test]
async fn finding_3_a_long_sum_neither_reloads_nor_crashes_the_server() {
    serve_refuses_reload_with(&long_sum(), "a condition may have at most 2048").await;
}

/// The real binary serving one rule, `/orders/**` with `condition`, with
/// its keys fetched.
async fn serve_condition(condition: &str) -> (JwksServer, tempfile::TempDir, ScopegateProcess) {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let dir = tempfile::tempdir().unwrap();
    let rules = format!("  rules:\n    - paths: [\"/orders/**\"]\n      when: ['{condition}']\n");
    let policy = policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), &rules);
    let sg = ScopegateProcess::serve_policy(dir.path(), &policy, &[], |_| {}).await;
    sg.wait_for_jwks_attempts_above(0).await;
    (jwks, dir, sg)
}

#[tokio::test]
async fn finding_7_conditions_see_the_method_upper_case_as_rules_compare_it() {
    let (jwks, _dir, sg) = serve_condition("request.method != \"DELETE\"").await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    assert_eq!(
        sg.send(check("get", "/orders/1", &token))
            .await
            .http_status(),
        200
    );
    for method in ["DELETE", "delete", "Delete"] {
        let denied = sg.send(check(method, "/orders/1", &token)).await;
        assert_eq!(denied.http_status(), 403, "{method}");
        assert_eq!(
            denied.0.status.as_ref().unwrap().message,
            "condition",
            "{method}"
        );
    }
}

/// The cost bound holds only for inputs within the sizes it assumes: a
/// token whose claims are larger than conditions evaluate on is denied on a
/// rule with conditions, never evaluated (and never allowed).
#[tokio::test]
async fn claims_larger_than_conditions_evaluate_are_denied_unevaluated() {
    let (jwks, _dir, sg) = serve_condition("claims.list.all(x, x == 0)").await;
    let largest = largest_condition_token(&KEY_A, &claims(&jwks.issuer()), "list");
    assert_eq!(
        sg.send(check("GET", "/orders/1", &largest))
            .await
            .http_status(),
        200
    );
    let mut larger = claims(&jwks.issuer());
    larger["list"] = serde_json::json!(vec![0; 300]);
    let denied = sg
        .send(check("GET", "/orders/1", &KEY_A.sign(&larger)))
        .await;
    assert_eq!(denied.http_status(), 403);
    assert_eq!(denied.0.status.as_ref().unwrap().message, "condition_error");
    assert!(
        denied.body()["error_description"]
            .as_str()
            .unwrap()
            .contains("larger than conditions evaluate")
    );
}
