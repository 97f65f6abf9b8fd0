//! Status that tells the truth, proven with the documented alerts: the real
//! binary, one issuer that serves keys and one that never answers, and a
//! policy file that is then broken. What its `/metrics` says is fed, as it
//! was scraped, to Prometheus' own rule engine (`promtool test rules`, from
//! Debian's `prometheus` package, installed by `.ci/install-tools.sh`) with
//! the alerting rules copied from docs/observability.md, which must fire
//! for exactly the broken parts.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::process::ScopegateProcess;
use support::*;

/// `/metrics` as series → value (`name{labels}` exactly as exposed).
fn scrape(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The HTTP status of a Check of `GET /` on `host` with `token`.
async fn status_on(sg: &ScopegateProcess, host: &str, token: &str) -> i32 {
    let authorization = format!("Bearer {token}");
    let request = check_request(
        host,
        "GET",
        "/",
        &[("authorization", &authorization)],
        Default::default(),
    );
    Checked(sg.client().await.check(request).await.unwrap().into_inner()).http_status()
}

/// The alerting rules of docs/observability.md (its ```yaml block with
/// `groups:`), as Prometheus would load them.
fn documented_rules() -> String {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/observability.md"),
    )
    .unwrap();
    doc.split("```yaml\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap())
        .find(|block| block.starts_with("groups:"))
        .expect("docs/observability.md has the alerting rules")
        .to_string()
}

/// A policy for `host` whose keys come from `jwks_uri`.
fn policy(name: &str, host: &str, issuer: &str, jwks_uri: &str) -> String {
    host_policy_yaml(
        name,
        host,
        issuer,
        Some(jwks_uri),
        r#"[{requireScopes: ["read:orders"]}]"#,
    )
}

/// Runs `promtool test rules` on `tests` (its YAML) with the documented
/// rules; returns promtool's output, panicking when it fails.
fn promtool_test(dir: &Path, tests: &Value) {
    std::fs::write(dir.join("rules.yaml"), documented_rules()).unwrap();
    let file = dir.join("alerts_test.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(tests).unwrap()).unwrap();
    let promtool = tool("SCOPEGATE_PROMTOOL", "/usr/bin/promtool");
    let out = std::process::Command::new(promtool)
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .expect("promtool runs (apt-get install prometheus, or .ci/install-tools.sh)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool test rules failed:\n{text}");
    println!("{text}");
}

/// Input series for promtool: each scraped series held at its value for
/// `minutes`, then (if given) at its value in `later` for as long again.
fn input_series(
    earlier: &BTreeMap<String, f64>,
    later: Option<&BTreeMap<String, f64>>,
    minutes: u32,
) -> Vec<Value> {
    let mut names: Vec<&String> = earlier.keys().collect();
    if let Some(later) = later {
        names.extend(later.keys().filter(|k| !earlier.contains_key(*k)));
    }
    names
        .into_iter()
        .map(|series| {
            let at = |scrape: &BTreeMap<String, f64>| {
                scrape
                    .get(series)
                    .map_or_else(|| format!("_x{minutes}"), |v| format!("{v:.3}x{minutes}"))
            };
            let mut values = at(earlier);
            if let Some(later) = later {
                values = format!("{values} {}", at(later));
            }
            json!({"series": series, "values": values})
        })
        .collect()
}

#[tokio::test]
async fn documented_alerts_fire_for_a_policy_without_keys_and_a_rejected_reload() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    // An issuer that never answers: a loopback port nothing listens on.
    let dead = format!("http://127.0.0.1:{}/", free_port());
    let dead_jwks = format!("{dead}.well-known/jwks.json");
    let dir = tempfile::tempdir().unwrap();
    let policies = format!(
        "{}---\n{}",
        policy("served", "a.example.com", &jwks.issuer(), &jwks.jwks_uri()),
        policy("keyless", "b.example.com", &dead, &dead_jwks),
    );
    let sg = ScopegateProcess::serve_policy(
        dir.path(),
        &policies,
        &["--startup-key-wait", "0s", "--jwks-fetch-timeout", "1s"],
        |_| {},
    )
    .await;
    eventually("both key sources were tried", || async {
        sg.readyz_body().await["jwks"]
            .as_array()
            .is_some_and(|sources| {
                sources.len() == 2
                    && sources
                        .iter()
                        .all(|s| s["fetchAttempts"].as_u64() > Some(0))
            })
    })
    .await;

    // /readyz and a Check agree: the keyless policy is not Accepted.
    let state = sg.readyz_body().await;
    let policy_state = |name: &str| {
        state["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["policy"] == format!("test/{name}"))
            .map(|p| p["state"].clone())
    };
    assert_eq!(policy_state("served"), Some(json!("Accepted")), "{state}");
    assert_eq!(
        policy_state("keyless"),
        Some(json!("JwksUnavailable")),
        "{state}"
    );
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    assert_eq!(status_on(&sg, "b.example.com", &token).await, 503);
    assert!(
        sg.log_text().contains("no keys were ever fetched"),
        "the log does not claim cached keys it does not have"
    );

    let healthy = scrape(&sg.metrics_text().await);
    assert_eq!(
        healthy.get(r#"scopegate_policies{state="jwks_unavailable"}"#),
        Some(&1.0)
    );
    assert_eq!(
        healthy.get(r#"scopegate_policies{state="accepted"}"#),
        Some(&1.0)
    );
    assert_eq!(
        healthy.get(&format!(
            r#"scopegate_jwks_last_success_timestamp_seconds{{jwks_uri="{dead_jwks}"}}"#
        )),
        Some(&0.0),
        "a source that never succeeded is exposed as 0"
    );

    // A broken edit of the policy file: rejected, reported, counted.
    std::fs::write(
        dir.path().join("policy.yaml"),
        policies.replace("read:orders", "read orders"),
    )
    .unwrap();
    eventually("the rejected reload shows in /readyz", || async {
        sg.readyz_body().await["lastReload"]["result"] == "invalid"
    })
    .await;
    let last_reload = sg.readyz_body().await["lastReload"].clone();
    let errors = last_reload["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e
            .as_str()
            .unwrap()
            .contains("policy.yaml:1: spec.rules[0].requireScopes[0]")),
        "{last_reload}"
    );
    assert!(
        last_reload["time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{last_reload}"
    );
    let broken = scrape(&sg.metrics_text().await);
    assert_eq!(
        broken.get(r#"scopegate_policy_reloads_total{result="invalid"}"#),
        Some(&1.0)
    );
    assert_eq!(
        status_on(&sg, "a.example.com", &token).await,
        200,
        "the last good policies keep serving"
    );

    // The documented alerts, on exactly what was scraped: the healthy scrape
    // for 20 minutes, then the one after the rejected reload.
    let tests = json!({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": input_series(&healthy, Some(&broken), 20),
            "alert_rule_test": [
                {
                    "eval_time": "19m",
                    "alertname": "ScopegatePoliciesNotServing",
                    "exp_alerts": [{
                        "exp_labels": {"state": "jwks_unavailable"},
                        "exp_annotations": {"summary": "1 policies are jwks_unavailable"},
                    }],
                },
                {
                    // stale after 15 minutes, then `for: 5m`
                    "eval_time": "22m",
                    "alertname": "ScopegateKeysStale",
                    "exp_alerts": [{
                        "exp_labels": {"jwks_uri": dead_jwks},
                        "exp_annotations": {"summary": format!("no successful JWKS fetch from {dead_jwks} for 15 minutes")},
                    }],
                },
                {"eval_time": "19m", "alertname": "ScopegatePolicyReloadFailed", "exp_alerts": []},
                {
                    "eval_time": "25m",
                    "alertname": "ScopegatePolicyReloadFailed",
                    "exp_alerts": [{
                        "exp_labels": {"result": "invalid"},
                        "exp_annotations": {"summary": "a policy file change was rejected; the last good policies keep serving (see /readyz lastReload)"},
                    }],
                },
            ],
        }],
    });
    promtool_test(dir.path(), &tests);
    drop(sg);
    tokio::time::sleep(Duration::from_millis(10)).await;
}
