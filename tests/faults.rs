//! Faults under load: the real scopegate binary serves a steady stream of
//! Checks (good tokens, tokens of a key not yet published, and six kinds of
//! tokens that must never pass) while its issuer's JWKS server goes down,
//! answers 500, answers garbage, hangs past the fetch timeout, rotates its
//! keys and recovers, and while its policy file gets an invalid edit.
//!
//! Asserted in every phase: not one false allow, not one Check without an
//! answer; cached keys keep good tokens allowed through every JWKS fault;
//! rotated keys are picked up and recovered without a restart; open file
//! descriptors and live tasks end where they started. Latency per phase is
//! printed (`--nocapture`), never asserted. Each phase lasts
//! `SCOPEGATE_FAULT_PHASE_SECS` (default 2) seconds of load.

mod support;

use std::time::Duration;

use support::load::{Load, NEVER_ALLOWED, PhaseReport, mixed_tokens};
use support::process::ScopegateProcess;
use support::*;

fn phase_length() -> Duration {
    let secs = std::env::var("SCOPEGATE_FAULT_PHASE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

/// What must hold in one phase, beyond "never allowed stays denied".
struct Expect {
    /// key-a tokens: `Some(true)` all allowed, `Some(false)` none allowed.
    good_a: Option<bool>,
    /// key-b tokens, likewise.
    good_b: Option<bool>,
}

const KEY_A_ONLY: Expect = Expect {
    good_a: Some(true),
    good_b: Some(false),
};

/// Ends the transition into phase `name` (recorded since the previous
/// phase ended, while the test set the fault up) and checks it against
/// `transition`; then records `name` for one phase length in its steady
/// state and checks it against `steady`.
async fn hold(load: &Load, name: &str, transition: Expect, steady: Expect) {
    let report = load.next_phase(name);
    println!("{}", report.summary());
    assert_phase(&report, transition);
    tokio::time::sleep(phase_length()).await;
    let report = load.next_phase("transition");
    println!("{}", report.summary());
    assert!(report.checks() > 0, "{name}: the load sent Checks");
    assert_phase(&report, steady);
}

fn assert_phase(report: &PhaseReport, expect: Expect) {
    let name = &report.name;
    assert_eq!(report.failed(), 0, "{name}: every Check was answered");
    for kind in NEVER_ALLOWED {
        let counts = report.kind(kind);
        assert_eq!(counts.allowed, 0, "{name}: {kind} tokens were allowed");
        assert!(
            counts
                .denied
                .keys()
                .all(|status| [401, 503].contains(status)),
            "{name}: {kind} denied with {:?}",
            counts.denied
        );
    }
    for (kind, expected) in [("good-a", expect.good_a), ("good-b", expect.good_b)] {
        let counts = report.kind(kind);
        match expected {
            Some(true) => assert_eq!(
                counts.denied_total(),
                0,
                "{name}: {kind} tokens were denied: {:?}",
                counts.denied
            ),
            Some(false) => assert_eq!(counts.allowed, 0, "{name}: {kind} tokens were allowed"),
            None => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_false_allow_and_full_recovery_through_jwks_and_policy_faults_under_load() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let dir = tempfile::tempdir().unwrap();
    let good_policy = policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), STANDARD_RULES);
    let sg = ScopegateProcess::serve_policy(
        dir.path(),
        &good_policy,
        &[
            "--jwks-refresh-interval",
            "300ms",
            "--jwks-min-refresh-interval",
            "100ms",
            "--jwks-min-refetch-interval",
            "200ms",
            "--jwks-fetch-timeout",
            "500ms",
        ],
        |_| {},
    )
    .await;
    let policy_file = dir.path().join("policy.yaml");
    sg.wait_for_jwks_attempts_above(0).await;

    let kinds = mixed_tokens(&jwks.issuer(), 200);
    let (token_a, token_b) = (kinds[0].tokens[0].clone(), kinds[1].tokens[0].clone());
    let client = sg.client().await;
    let status_of = async |token: &str| bearer_status(client.clone(), token).await;
    assert_eq!(status_of(&token_a).await, 200);

    let load = Load::start(sg.grpc_addr, kinds, 8, None, "warm-up").await;
    hold(&load, "healthy", KEY_A_ONLY, KEY_A_ONLY).await;
    let warm = sg.resources().await;

    // (a) down: connections refused.
    jwks.stop().await;
    sg.wait_for_jwks_attempts_above(sg.jwks_attempts().await)
        .await;
    hold(&load, "jwks-down", KEY_A_ONLY, KEY_A_ONLY).await;

    // (b) 500s.
    jwks.set_reply(JwksReply::Status(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
    ));
    jwks.restart().await;
    jwks.wait_for_fetches_above(jwks.fetches()).await;
    hold(&load, "jwks-500", KEY_A_ONLY, KEY_A_ONLY).await;

    // (c) garbage.
    jwks.set_reply(JwksReply::Body("<html>502 Bad Gateway</html>"));
    jwks.wait_for_fetches_above(jwks.fetches()).await;
    hold(&load, "jwks-garbage", KEY_A_ONLY, KEY_A_ONLY).await;

    // (d) hangs past the 500 ms fetch timeout.
    let keys_a = serde_json::json!({"keys": [KEY_A.jwk()]});
    jwks.set_reply(JwksReply::SlowKeys(keys_a, Duration::from_secs(3)));
    let attempts = sg.jwks_attempts().await;
    jwks.wait_for_fetches_above(jwks.fetches()).await;
    sg.wait_for_jwks_attempts_above(attempts).await; // one timed out
    hold(&load, "jwks-hang", KEY_A_ONLY, KEY_A_ONLY).await;

    // An invalid policy edit (alg none): rejected, the last good policy
    // keeps serving.
    jwks.set_keys(vec![KEY_A.jwk()]);
    let rejections = |log: &str| log.matches("keeping the last good policies").count();
    let before = rejections(&sg.log_text());
    replace_file(
        &policy_file,
        &good_policy.replace(
            r#"algorithms: ["RS256", "ES256", "EdDSA"]"#,
            r#"algorithms: ["none"]"#,
        ),
    );
    eventually("the invalid edit was rejected", || async {
        rejections(&sg.log_text()) > before
    })
    .await;
    hold(&load, "policy-invalid", KEY_A_ONLY, KEY_A_ONLY).await;

    // (e) rotation: key-a is retired, key-b published.
    replace_file(&policy_file, &good_policy);
    jwks.set_keys(vec![KEY_B.jwk()]);
    eventually("key-b is picked up and key-a dropped", || async {
        status_of(&token_b).await == 200 && status_of(&token_a).await == 401
    })
    .await;
    let either = Expect {
        good_a: None,
        good_b: None,
    };
    let key_b_only = Expect {
        good_a: Some(false),
        good_b: Some(true),
    };
    hold(&load, "rotated", either, key_b_only).await;

    // (f) recovery: both keys published.
    jwks.set_keys(vec![KEY_A.jwk(), KEY_B.jwk()]);
    eventually("key-a is back", || async {
        status_of(&token_a).await == 200
    })
    .await;
    let both = || Expect {
        good_a: Some(true),
        good_b: Some(true),
    };
    let transition = Expect {
        good_a: None,
        good_b: Some(true),
    };
    hold(&load, "recovered", transition, both()).await;
    let end = sg.resources().await;
    let last = load.stop().await;
    assert_phase(&last, both());

    println!("resources after the healthy phase: {warm}");
    println!("resources after the last phase:    {end}");
    assert!(
        end.open_fds <= warm.open_fds + 4.0,
        "file descriptors grew: {warm} → {end}"
    );
    assert!(end.tasks <= warm.tasks + 4.0, "tasks grew: {warm} → {end}");
    assert!(
        end.rss_bytes <= warm.rss_bytes + 64.0 * 1024.0 * 1024.0,
        "memory grew by more than 64 MiB: {warm} → {end}"
    );
}

/// Replaces `path` atomically (write a sibling, then rename), as editors and
/// ConfigMap updates do: a reload never reads a half-written file.
fn replace_file(path: &std::path::Path, contents: &str) {
    let staged = path.with_extension("yaml.tmp");
    std::fs::write(&staged, contents).unwrap();
    std::fs::rename(&staged, path).unwrap();
}
