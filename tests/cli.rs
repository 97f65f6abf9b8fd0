//! The command line as a new user meets it, run as the real binary: what
//! `validate`, `test` and `check` say about paths with nothing to do, other
//! kinds, conflicts across folders, unreachable servers, repeated headers
//! and denies, and that a closed stdout (`| head`, `| grep -q`) is a normal
//! exit.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use support::process::{
    ScopegateProcess, dev_policy_with_tests, run, run_expecting, scopegate_bin, write,
};
use support::*;

/// Runs the binary with its stdout a pipe whose reading end is closed
/// before it writes anything, as `| head -0` or an early `grep -q` leaves
/// it; returns the exit code and stderr.
fn run_with_closed_stdout(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(scopegate_bin())
        .args(args)
        .env_remove("SCOPEGATE_POLICIES")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A dev-issuer policy for `orders.localhost` whose keys come from `jwks`.
fn orders_policy(jwks: &JwksServer) -> String {
    host_policy_yaml(
        "orders",
        "orders.localhost",
        &jwks.issuer(),
        Some(&jwks.jwks_uri()),
        r#"[{methods: ["GET"], paths: ["/orders"], requireScopes: ["read:orders"]}]"#,
    )
}

/// `scopegate check ARGS --addr <sg>`, expecting exit `code` and each of
/// `expected` in its output.
fn check(sg: &ScopegateProcess, args: &[&str], code: i32, expected: &[&str]) -> String {
    let addr = sg.grpc_addr.to_string();
    let mut all = vec!["check", "--addr", &addr];
    all.extend_from_slice(args);
    run_expecting(all, code, expected)
}

#[tokio::test]
async fn a_closed_stdout_is_a_normal_exit_not_a_panic() {
    for args in [&["validate", "examples/policies"][..], &["crd"]] {
        let (code, stderr) = run_with_closed_stdout(args);
        assert_eq!(code, Some(0), "scopegate {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let dir = tempfile::tempdir().unwrap();
    let sg = ScopegateProcess::serve_policy(dir.path(), &orders_policy(&jwks), &[], |_| {}).await;
    let addr = sg.grpc_addr.to_string();
    // A deny: exit 1 (the decision), whether or not anyone reads the output.
    let (code, stderr) = run_with_closed_stdout(&[
        "check",
        "--addr",
        &addr,
        "--host",
        "orders.localhost",
        "--path",
        "/orders",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Runs the binary expecting exit 2, and `cause` exactly once in stderr.
fn fails_saying_once(args: &[String], cause: &str) -> String {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.matches(cause).count(), 1, "{stderr}");
    stderr
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(ToString::to_string).collect()
}

#[test]
fn error_texts_say_their_cause_once_and_check_hints_at_addr_and_serve() {
    let nothing = format!("127.0.0.1:{}", free_port());
    let stderr = fails_saying_once(
        &strings(&["check", "--addr", &nothing, "--host", "h"]),
        "Connection refused",
    );
    assert!(
        stderr.contains("--addr") && stderr.contains("scopegate serve"),
        "{stderr}"
    );
    fails_saying_once(
        &strings(&["serve", "--jwks-ca-file", "/nonexistent/ca.pem"]),
        "No such file or directory",
    );
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (policies, listen) = (
        dir.path().display().to_string(),
        busy.local_addr().unwrap().to_string(),
    );
    fails_saying_once(
        &strings(&[
            "serve",
            "--policies",
            &policies,
            "--listen",
            &listen,
            "--admin-listen",
            "127.0.0.1:0",
        ]),
        "Address already in use",
    );
}

#[tokio::test]
async fn check_sends_a_repeated_header_twice_and_prints_rule_and_reason_on_a_deny() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let dir = tempfile::tempdir().unwrap();
    let sg = ScopegateProcess::serve_policy(dir.path(), &orders_policy(&jwks), &[], |_| {}).await;
    eventually("the issuer's keys are fetched", || async {
        sg.readyz().await == 200
    })
    .await;
    let mut claims = claims(&jwks.issuer());
    claims["scope"] = "read:orders".into();
    let bearer = format!("authorization: Bearer {}", KEY_A.sign(&claims));
    let request = ["--host", "orders.localhost", "--path", "/orders"];

    // One Authorization header: allowed.
    check(
        &sg,
        &[&request[..], &["--header", &bearer]].concat(),
        0,
        &["ALLOW"],
    );
    // The same header twice reaches scopegate as two: 401 invalid_request.
    let twice = [&request[..], &["--header", &bearer, "--header", &bearer]].concat();
    check(
        &sg,
        &twice,
        1,
        &[
            "DENY 401 (several_credentials)",
            "error=\"invalid_request\"",
        ],
    );
    // A deny names the rule that matched and why.
    claims["scope"] = "other".into();
    let token = KEY_A.sign(&claims);
    check(
        &sg,
        &[&request[..], &["--token", &token]].concat(),
        1,
        &["metadata: policy=test/orders reason=insufficient_scope rule=rules[0]"],
    );
}

#[test]
fn validate_and_test_say_when_there_is_nothing_to_do() {
    let empty = tempfile::tempdir().unwrap();
    run_expecting(
        [Path::new("validate"), empty.path()],
        1,
        &["no TokenPolicy in "],
    );
    // Policies but no tests.
    run_expecting(
        ["test", "examples/policies/dev.yaml"],
        1,
        &["no TokenPolicyTest cases in examples/policies/dev.yaml (1 policies loaded)"],
    );
    // Tests whose policies were not given.
    run_expecting(
        ["test", "examples/policies/dev.test.yaml"],
        1,
        &["(0 policies loaded)"],
    );
}

#[test]
fn files_of_other_kinds_are_named_by_their_kind() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 1, template: {}}\n",
    );
    write(
        dir.path(),
        "envoy.yaml",
        "admin: {address: {}}\nstatic_resources: {}\n",
    );
    let stdout = run_expecting(
        [Path::new("validate"), dir.path()],
        1,
        &[
            "deploy.yaml:1: kind: not a TokenPolicy (kind: Deployment)",
            "envoy.yaml:1: kind: not a TokenPolicy (the document has no apiVersion and no kind)",
        ],
    );
    assert!(!stdout.contains("unknown field"), "{stdout}");
}

#[test]
fn policy_tests_can_expect_unknown_host_and_wrong_issuer() {
    let dir = dev_policy_with_tests(
        r#"apiVersion: scopegate.dev/v1alpha1
kind: TokenPolicyTest
metadata: {name: mistakes}
spec:
  cases:
    - name: a host no policy serves
      request: {host: shop.localhost, path: /orders}
      claims: {sub: u, scope: "read:orders"}
      expect: {decision: deny, status: 403, reason: unknown_host}
    - name: the issuer with a trailing slash it does not have
      request: {host: orders.localhost, path: /orders}
      claims: {iss: "http://127.0.0.1:9080/", sub: u, scope: "read:orders"}
      expect: {decision: deny, status: 401, reason: wrong_issuer}
"#,
    );
    run_expecting(
        [Path::new("test"), dir.path()],
        0,
        &["policy tests: 2 passed, 0 failed (1 policies loaded)"],
    );
}

#[test]
fn validate_warns_of_an_auth0_issuer_without_the_trailing_slash() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = "https://tenant.us.auth0.com";
    let policy = host_policy_yaml("orders", "orders.example.com", issuer, None, "[]");
    write(dir.path(), "p.yaml", &policy);
    run_expecting(
        [Path::new("validate"), dir.path()],
        0,
        &[
            "p.yaml:1: spec.issuer.url: warning: Auth0 tokens carry iss \"https://tenant.us.auth0.com/\"",
        ],
    );
}

/// Several folders in one call are one policy set: the same policy in two
/// of them is reported once, as defined twice, naming both files (it used
/// to conflict "with itself", naming no other file).
#[test]
fn conflicts_across_folders_name_both_files() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let policy = |name| {
        host_policy_yaml(
            name,
            "orders.example.com",
            "https://t.example.com/",
            None,
            "[]",
        )
    };
    let first = write(a.path(), "orders.yaml", &policy("orders"));
    write(b.path(), "orders.yaml", &policy("orders"));
    let twice = format!(
        "policy test/orders is defined more than once (also in {}:1; the paths given together form one policy set)",
        first.display()
    );
    let stdout = run_expecting([Path::new("validate"), a.path(), b.path()], 1, &[&twice]);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");

    write(b.path(), "orders.yaml", &policy("orders-copy"));
    let claimed = format!(
        "host orders.example.com is already claimed by policy test/orders in {}:1",
        first.display()
    );
    run_expecting([Path::new("validate"), a.path(), b.path()], 1, &[&claimed]);
}

#[tokio::test]
async fn serve_on_a_folder_without_policies_warns() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    let sg = ScopegateProcess::serve(
        &["--policies", policies.to_str().unwrap()],
        &dir.path().join("scopegate.log"),
        |_| {},
    )
    .await;
    eventually("the warning is logged", || async {
        sg.log_text().contains("no TokenPolicy in the policy files")
    })
    .await;
}
