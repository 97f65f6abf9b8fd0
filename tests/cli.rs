//! The command line as a new user meets it, run as the real binary: what
//! `validate`, `test` and `check` say about paths with nothing to do, other
//! kinds, conflicts across folders, unreachable servers, repeated headers
//! and denies, and that a closed stdout (`| head`, `| grep -q`) is a normal
//! exit.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::process::{ScopegateProcess, scopegate_bin};
use support::*;

/// Runs the scopegate binary with `args` and collects its output.
fn run<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    Command::new(scopegate_bin())
        .args(args)
        .env_remove("SCOPEGATE_POLICIES")
        .env_remove("SCOPEGATE_ADDR")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, contents: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

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
    (output.status.code(), text(&output.stderr))
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

/// `scopegate check ARGS --addr <sg>`.
fn check(sg: &ScopegateProcess, args: &[&str]) -> Output {
    let addr = sg.grpc_addr.to_string();
    let mut all = vec!["check", "--addr", &addr];
    all.extend_from_slice(args);
    run(all)
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

#[test]
fn error_texts_say_their_cause_once_and_check_hints_at_addr_and_serve() {
    let port = free_port().to_string();
    let out = run([
        "check",
        "--addr",
        &format!("127.0.0.1:{port}"),
        "--host",
        "h",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.matches("Connection refused").count(), 1, "{stderr}");
    assert!(
        stderr.contains("--addr") && stderr.contains("scopegate serve"),
        "{stderr}"
    );

    let out = run(["serve", "--jwks-ca-file", "/nonexistent/ca.pem"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = run([
        "serve".to_string(),
        "--policies".into(),
        dir.path().display().to_string(),
        "--listen".into(),
        busy.local_addr().unwrap().to_string(),
        "--admin-listen".into(),
        "127.0.0.1:0".into(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "{stderr}"
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
    let token = KEY_A.sign(&claims);
    let bearer = format!("authorization: Bearer {token}");

    // One Authorization header: allowed.
    let out = check(
        &sg,
        &[
            "--host",
            "orders.localhost",
            "--path",
            "/orders",
            "--header",
            &bearer,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));

    // The same header twice reaches scopegate as two: 401 invalid_request.
    let out = check(
        &sg,
        &[
            "--host",
            "orders.localhost",
            "--path",
            "/orders",
            "--header",
            &bearer,
            "--header",
            &bearer,
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.starts_with("DENY 401"), "{stdout}");
    assert!(stdout.contains("invalid_request"), "{stdout}");

    // A deny names the rule that matched and why.
    claims["scope"] = "other".into();
    let out = check(
        &sg,
        &[
            "--host",
            "orders.localhost",
            "--path",
            "/orders",
            "--token",
            &KEY_A.sign(&claims),
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("metadata: policy=test/orders reason=insufficient_scope rule=rules[0]"),
        "{stdout}"
    );
}

#[test]
fn validate_and_test_say_when_there_is_nothing_to_do() {
    let empty = tempfile::tempdir().unwrap();
    let out = run([Path::new("validate"), empty.path()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("no TokenPolicy in "), "{stdout}");

    // Policies but no tests.
    let out = run(["test", "examples/policies/dev.yaml"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout
            .contains("no TokenPolicyTest cases in examples/policies/dev.yaml (1 policies loaded)"),
        "{stdout}"
    );

    // Tests whose policies were not given.
    let out = run(["test", "examples/policies/dev.test.yaml"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("(0 policies loaded)"), "{stdout}");
}

#[test]
fn files_of_other_kinds_are_named_by_their_kind() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 1, template: {}}\n",
    );
    let out = run([Path::new("validate"), dir.path()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("deploy.yaml:1: kind: not a TokenPolicy (kind: Deployment)"),
        "{stdout}"
    );
    assert!(!stdout.contains("unknown field"), "{stdout}");
}

#[test]
fn policy_tests_can_expect_unknown_host_and_wrong_issuer() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("examples/policies/dev.yaml", dir.path().join("dev.yaml")).unwrap();
    write(
        dir.path(),
        "dev.test.yaml",
        r#"apiVersion: scopegate.dev/v1alpha1
kind: TokenPolicyTest
metadata: {name: mistakes}
spec:
  cases:
    - name: a host no policy serves
      request: {host: shop.localhost, path: /orders}
      claims: {sub: u, scope: "read:orders"}
      expect: {decision: deny, status: 403, reason: unknown_host}
    - name: the issuer without its trailing slash
      request: {host: orders.localhost, path: /orders}
      claims: {iss: "http://127.0.0.1:9080/", sub: u, scope: "read:orders"}
      expect: {decision: deny, status: 401, reason: wrong_issuer}
"#,
    );
    let out = run([Path::new("test"), dir.path()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("policy tests: 2 passed, 0 failed (1 policies loaded)"),
        "{stdout}"
    );
}

#[test]
fn validate_warns_of_an_auth0_issuer_without_the_trailing_slash() {
    let dir = tempfile::tempdir().unwrap();
    let policy = host_policy_yaml(
        "orders",
        "orders.example.com",
        "https://tenant.us.auth0.com",
        None,
        "[]",
    );
    write(dir.path(), "p.yaml", &policy);
    let out = run([Path::new("validate"), dir.path()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("p.yaml:1: spec.issuer.url: warning: Auth0 tokens carry iss \"https://tenant.us.auth0.com/\""),
        "{stdout}"
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
    let out = run([Path::new("validate"), a.path(), b.path()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "policy test/orders is defined more than once (also in {}:1; the paths given together form one policy set)",
            first.display()
        )),
        "{stdout}"
    );

    write(b.path(), "orders.yaml", &policy("orders-copy"));
    let out = run([Path::new("validate"), a.path(), b.path()]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "host orders.example.com is already claimed by policy test/orders in {}:1",
            first.display()
        )),
        "{stdout}"
    );
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
