//! Start and stop: readiness follows the policies and keys, in-flight
//! Checks finish on shutdown, SIGTERM drains the real binary, and an
//! unreachable issuer at start means 503s, never allows.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::process::ScopegateProcess;
use support::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn readyz(sg: &Scopegate) -> u16 {
    reqwest::get(sg.admin_url("/readyz"))
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test]
async fn shutdown_lets_in_flight_checks_finish() {
    let (jwks, sg) = standard_with(vec![KEY_A.jwk()]).await;
    sg.wait_for_jwks_attempts_above(0).await;
    assert_eq!(readyz(&sg).await, 200);

    // key-b is published by a slow issuer: a Check with it waits on the refetch.
    let slow = json!({"keys": [KEY_A.jwk(), KEY_B.jwk()]});
    jwks.set_reply(JwksReply::SlowKeys(slow, Duration::from_millis(1500)));
    let token = KEY_B.sign(&claims(&jwks.issuer()));
    let mut client = sg.client.clone();
    let auth = format!("Bearer {token}");
    let in_flight = tokio::spawn(async move {
        let request = check_request(
            HOST,
            "GET",
            "/orders",
            &[("authorization", &auth)],
            Default::default(),
        );
        client
            .check(request)
            .await
            .map(|r| Checked(r.into_inner()).http_status())
    });
    let fetches = jwks.fetches();
    jwks.wait_for_fetches_above(fetches).await; // the Check is now waiting on the issuer

    sg.running.shutdown().await;
    let answer = in_flight
        .await
        .unwrap()
        .expect("the in-flight Check got an answer, not a reset");
    assert_eq!(answer, 200, "and it is the right one");
}

/// scopegate on the standard policy for an issuer that answers 503, with
/// readiness waiting at most `key_wait` for keys.
async fn start_with_issuer_down(key_wait: Duration) -> (JwksServer, Scopegate) {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    jwks.set_reply(JwksReply::Status(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
    ));
    let policy = policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), STANDARD_RULES);
    let sg =
        Scopegate::start_configured(&policy, |config| config.startup_key_wait = key_wait).await;
    sg.wait_for_jwks_attempts_above(0).await;
    (jwks, sg)
}

#[tokio::test]
async fn an_unreachable_issuer_at_start_means_not_ready_and_503_until_keys_arrive() {
    let (jwks, sg) = start_with_issuer_down(Duration::from_secs(3600)).await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    assert_eq!(
        sg.check_token("GET", "/orders", &token).await.http_status(),
        503
    );
    assert_eq!(readyz(&sg).await, 503, "not ready without keys");

    jwks.set_keys(vec![KEY_A.jwk()]); // the issuer recovers
    eventually("keys arrive and the token is allowed", || async {
        sg.check_token("GET", "/orders", &token).await.http_status() == 200
    })
    .await;
    assert_eq!(readyz(&sg).await, 200);
}

#[tokio::test]
async fn after_the_startup_key_wait_an_unreachable_issuer_no_longer_holds_readiness() {
    let (jwks, sg) = start_with_issuer_down(Duration::from_millis(300)).await;
    eventually("ready once the key wait is over", || async {
        readyz(&sg).await == 200
    })
    .await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    assert_eq!(
        sg.check_token("GET", "/orders", &token).await.http_status(),
        503,
        "the policy itself still answers 503, never allows"
    );
}

#[tokio::test]
async fn sigterm_fails_readiness_and_health_keeps_answering_through_the_drain_then_exits_cleanly() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), STANDARD_RULES);
    let args = ["--shutdown-drain-delay", "4s", "--shutdown-grace", "5s"];
    let mut sg = ScopegateProcess::serve_policy(dir.path(), &policy, &args, |_| {}).await;
    eventually("ready", || async { sg.readyz().await == 200 }).await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    let allowed = async || bearer_status(sg.client().await, &token).await == 200;
    let health = async || {
        let mut client = HealthClient::new(
            tonic::transport::Endpoint::from_shared(format!("http://{}", sg.grpc_addr))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
        let request = tonic_health::pb::HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".into(),
        };
        client.check(request).await.unwrap().into_inner().status()
    };
    assert!(allowed().await);
    assert_eq!(health().await, ServingStatus::Serving);

    let terminated = Instant::now();
    sg.sigterm();
    eventually("readiness fails", || async { sg.readyz().await == 503 }).await;
    assert_eq!(health().await, ServingStatus::NotServing);
    assert!(
        allowed().await,
        "a new connection still gets its Check answered during the drain"
    );
    let status = sg.wait_for_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}; log:\n{}", sg.log_text());
    println!("exited {:?} after SIGTERM", terminated.elapsed());
}
