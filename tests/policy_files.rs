//! Policy files: validation messages, hot reload, and the last good set
//! serving through a bad edit.

mod support;

use std::time::Duration;

use support::process::{ScopegateProcess, dev_policy_with_tests, run, write};
use support::*;

#[test]
fn validate_accepts_the_examples() {
    let out = run(["validate", "examples/policies"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok: 3 policies"
    );
}

#[test]
fn validate_reports_file_document_field_and_message() {
    let dir = tempfile::tempdir().unwrap();
    let good = policy_yaml(
        "good",
        "https://tenant.example.com/",
        "https://tenant.example.com/jwks",
        "",
    );
    let bad = r#"apiVersion: scopegate.dev/v1alpha1
kind: TokenPolicy
metadata: {name: bad}
spec:
  hosts: ["api.example.com:443"]
  issuer:
    url: "https://tenant.example.com/"
    jwksUri: "http://tenant.example.com/jwks"
    audiences: []
    algorithms: ["HS256"]
  rules:
    - paths: ["/a/**/b"]
      requireScopes: ["read orders"]
  claimHeaders:
    - {header: X-User, claim: sub}
    - {header: x-user-id, claim: sub}
    - {header: x_user_id, claim: azp}
    - {header: x-a-b-c-d-e-f, claim: sub}
"#;
    let typo = "apiVersion: scopegate.dev/v1alpha1\nkind: TokenPolicy\nmetadata: {name: typo}\nspec:\n  hosts: [a.example.com]\n  isuer: {}\n";
    let file = write(
        dir.path(),
        "policies.yaml",
        &format!("{good}---\n{bad}---\n{typo}"),
    );
    let out = run([std::path::Path::new("validate"), dir.path()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let f = file.display();
    for expected in [
        format!("{f}:2: spec.hosts[0]: must not contain a port"),
        format!("{f}:2: spec.issuer.audiences: must list at least one audience"),
        format!("{f}:2: spec.issuer.algorithms[0]: \"HS256\": unsupported algorithm"),
        format!("{f}:2: spec.issuer.jwksUri: \"http://tenant.example.com/jwks\" must use https"),
        format!("{f}:2: spec.rules[0].paths[0]: \"**\" may only be the last segment"),
        format!("{f}:2: spec.rules[0].requireScopes[0]: must be one non-empty scope"),
        format!("{f}:2: spec.claimHeaders[0].header: \"X-User\" must be lowercase"),
        format!(
            "{f}:2: spec.claimHeaders[2].header: is set by an earlier entry (upstreams read `_` as `-`"
        ),
        format!(
            "{f}:2: spec.claimHeaders[3].header: \"x-a-b-c-d-e-f\" has 6 '-' or '_'; at most 5"
        ),
        format!("{f}:3: spec.isuer: unknown field `isuer`"),
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(&expected)),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains(":1:"),
        "the good document has no errors:\n{stdout}"
    );
}

#[test]
fn validate_rejects_duplicate_hosts_and_names_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = "https://tenant.example.com/";
    write(
        dir.path(),
        "a.yaml",
        &policy_yaml("orders", issuer, "https://tenant.example.com/jwks", ""),
    );
    write(
        dir.path(),
        "b.yaml",
        &policy_yaml("orders-copy", issuer, "https://tenant.example.com/jwks", ""),
    );
    let out = run([std::path::Path::new("validate"), dir.path()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("b.yaml:1: spec.hosts: policy test/orders-copy: host orders.example.com is already claimed by policy test/orders"),
        "{stdout}"
    );
}

/// Finding 1 of the security review, in files mode: a host under another
/// namespace's wildcard is a validate error naming both policies.
#[test]
fn finding_1_validate_rejects_a_host_under_another_namespaces_wildcard() {
    let dir = tempfile::tempdir().unwrap();
    let policy = |namespace: &str, name: &str, host: &str| {
        format!(
            r#"apiVersion: scopegate.dev/v1alpha1
kind: TokenPolicy
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: ["{host}"]
  issuer: {{url: "https://tenant.example.com/", audiences: ["api"]}}
"#
        )
    };
    write(
        dir.path(),
        "a.yaml",
        &policy("corp", "wide", "*.corp.example.com"),
    );
    write(
        dir.path(),
        "b.yaml",
        &policy("team", "pay", "pay.corp.example.com"),
    );
    write(
        dir.path(),
        "c.yaml",
        &policy("corp", "hr", "hr.corp.example.com"),
    );
    let out = run([std::path::Path::new("validate"), dir.path()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("b.yaml:1: spec.hosts: policy team/pay: host pay.corp.example.com is already claimed by policy corp/wide (its *.corp.example.com covers it"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("c.yaml"),
        "the same namespace may carve out: {stdout}"
    );
}

#[test]
fn serve_refuses_to_start_on_an_invalid_file_and_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "p.yaml",
        "apiVersion: scopegate.dev/v1alpha1\nkind: TokenPolicy\nmetadata: {name: x}\nspec: {hosts: [], issuer: {url: 'https://t/', audiences: [a]}}\n",
    );
    let out = run([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--policies",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("p.yaml:1: spec.hosts: must list at least one host"),
        "{stderr}"
    );
}

#[test]
fn serve_without_a_policy_source_names_the_flag() {
    let out = run([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--policies (SCOPEGATE_POLICIES)"));
}

#[tokio::test]
async fn invalid_edit_keeps_the_last_good_policy_and_a_valid_edit_applies() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let policy = policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), STANDARD_RULES);
    let sg = Scopegate::start(&policy).await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    assert_eq!(
        sg.check_token("GET", "/orders", &token).await.http_status(),
        200
    );

    // A broken edit: the old policy keeps serving.
    write(
        sg.policy_dir(),
        "policies.yaml",
        "apiVersion: scopegate.dev/v1alpha1\nkind: TokenPolicy\nspec: [\n",
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        sg.check_token("GET", "/orders", &token).await.http_status(),
        200
    );

    // A valid edit that requires a scope the token lacks takes effect.
    let stricter = STANDARD_RULES.replace(
        "requireScopes: [\"read:orders\"]",
        "requireScopes: [\"read:all\"]",
    );
    write(
        sg.policy_dir(),
        "policies.yaml",
        &policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), &stricter),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let checked = sg.check_token("GET", "/orders", &token).await;
        if checked.http_status() == 403 {
            assert!(checked.www_authenticate().contains("scope=\"read:all\""));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the edit was not applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Only a change that can change the policies reloads them: a log file
/// written next to the policies (or notes, or an editor's swap file) used
/// to reload all of them on every write (issue 14: with 10,000 policies and
/// the log in the same directory, scopegate reloaded in a loop).
#[tokio::test]
async fn only_policy_files_in_the_watched_directory_trigger_a_reload() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let policy = policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), STANDARD_RULES);
    let sg = Scopegate::start(&policy).await;
    let reloads = || sg.running.snapshot().last_reload();

    write(sg.policy_dir(), "scopegate.log", "a log line\n");
    write(sg.policy_dir(), "notes.txt", "not a policy\n");
    write(sg.policy_dir(), ".policies.yaml.swp", "swap\n");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(reloads(), None, "no policy file changed");

    write(sg.policy_dir(), "policies.yaml", &policy);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reloads().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a policy file change was not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reloads().unwrap().result, "success");
}

#[test]
fn crd_command_prints_the_custom_resource_definition() {
    let out = run(["crd"]);
    assert!(out.status.success());
    let crd: serde_json::Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
    assert_eq!(crd["kind"], "CustomResourceDefinition");
    assert_eq!(crd["metadata"]["name"], "tokenpolicies.scopegate.dev");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "tp");
}

#[test]
fn committed_crd_manifest_is_the_generated_one() {
    let out = run(["crd"]);
    let committed =
        std::fs::read_to_string("manifests/crds/tokenpolicies.scopegate.dev.yaml").unwrap();
    assert!(
        committed == String::from_utf8(out.stdout).unwrap(),
        "manifests/crds/ is stale: run `cargo run -- crd > manifests/crds/tokenpolicies.scopegate.dev.yaml`"
    );
}

/// Every complete `TokenPolicy` in a ```yaml block of the README and docs/
/// (a block with `kind: TokenPolicy`), and every example file, passes
/// `scopegate validate` — each on its own, since examples may share hosts.
#[test]
fn documented_policies_validate() {
    let dir = tempfile::tempdir().unwrap();
    let mut pages = vec![std::path::PathBuf::from("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir("docs")
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    let mut files = vec![
        std::path::PathBuf::from("manifests/examples/auth0-tokenpolicy.yaml"),
        std::path::PathBuf::from("examples/policies/two-apis.yaml"),
    ];
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for (i, block) in text.split("```yaml\n").skip(1).enumerate() {
            let block = block.split("```").next().unwrap();
            if block.lines().any(|line| line.trim() == "kind: TokenPolicy") {
                let name = page.file_stem().unwrap().to_string_lossy();
                files.push(write(dir.path(), &format!("{name}-{i}.yaml"), block));
            }
        }
    }
    assert!(files.len() >= 4, "found only {files:?}");
    for file in files {
        let out = run([std::path::Path::new("validate"), &file]);
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// Issue 16: listing Auth0's `permissions` compiles, with a warning that
/// says why it is rarely right.
#[test]
fn validate_warns_when_a_policy_counts_permissions_as_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_yaml(
        "m2m",
        "https://tenant.example.com/",
        "https://tenant.example.com/jwks",
        "  scopeClaims: [scope, permissions]\n",
    );
    write(dir.path(), "m2m.yaml", &policy);
    let out = run([std::path::Path::new("validate"), dir.path()]);
    assert_eq!(out.status.code(), Some(0), "a warning is not an error");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("m2m.yaml:1: spec.scopeClaims[1]: warning: \"permissions\" holds every permission the user has"),
        "{stdout}"
    );
    assert!(stdout.contains("ok: 1 policies"), "{stdout}");
}

/// `scopegate test` runs the shipped example tests, one line per case.
#[test]
fn policy_tests_of_the_examples_pass() {
    for dir in ["examples/policies", "manifests/examples"] {
        let out = run(["test", dir]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{dir}: {stdout}");
        assert!(stdout.lines().any(|l| l.starts_with("ok   ")), "{stdout}");
        assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    }
}

/// A case whose expectation does not hold fails with what was expected
/// and what the Check answered, and the exit status is 1.
#[test]
fn a_failing_policy_test_says_why_and_exits_1() {
    let dir = dev_policy_with_tests(
        r#"apiVersion: scopegate.dev/v1alpha1
kind: TokenPolicyTest
metadata: {name: wrong}
spec:
  cases:
    - name: creating needs more than read
      request: {host: orders.localhost, method: POST, path: /orders}
      claims: {sub: u, azp: dev-agent, scope: "read:orders"}
      expect: {decision: allow}
    - name: reading works
      request: {host: orders.localhost, path: /orders}
      claims: {sub: u, scope: "read:orders"}
      expect: {decision: allow, headers: {x-user-id: u}}
"#,
    );
    let out = run([std::path::Path::new("test"), dir.path()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL ") && stdout.contains("wrong: creating needs more than read: expected allow, got deny 403 (insufficient_scope)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok   ") && stdout.contains("policy tests: 1 passed, 1 failed"),
        "{stdout}"
    );
}

/// Files mode keeps the last good policies through a reload that reads a
/// half-written file (unparseable) or an emptied one (no policy left), and
/// counts both as failed reloads; the policies keep answering over gRPC. An
/// empty file used to publish an empty set: every Check then answered
/// `unknown_host`.
#[tokio::test]
async fn a_half_written_or_emptied_file_keeps_the_last_good_policies() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), STANDARD_RULES);
    let sg = ScopegateProcess::serve_policy(dir.path(), &policy, &[], |_| {}).await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    eventually("the policy allows with fetched keys", || async {
        bearer_status(sg.client().await, &token).await == 200
    })
    .await;
    let failed_reloads = || sg.series("scopegate_policy_reloads_total", &[("result", "invalid")]);
    assert_eq!(failed_reloads().await, vec![0.0]);

    let half_written = &policy[..policy.find("audiences").unwrap()];
    for (n, contents) in [
        (1.0, format!("{half_written}    audiences: [\"http")),
        (2.0, String::new()),
    ] {
        write(dir.path(), "policy.yaml", &contents);
        eventually("the reload is counted as failed", || async {
            failed_reloads().await == vec![n]
        })
        .await;
        assert_eq!(
            bearer_status(sg.client().await, &token).await,
            200,
            "the last good policy keeps answering after {contents:?}"
        );
    }
    let last_reload = sg.readyz_body().await["lastReload"].clone();
    assert_eq!(last_reload["result"], "invalid", "{last_reload}");
    assert!(
        last_reload["errors"][0]
            .as_str()
            .unwrap()
            .contains("no TokenPolicy left"),
        "{last_reload}"
    );
    assert_eq!(
        sg.series("scopegate_policy_reloads_total", &[("result", "success")])
            .await,
        vec![0.0]
    );
}
