//! Start and stop: readiness follows the policies, in-flight Checks finish
//! on shutdown, and an unreachable issuer at start means 503s, never allows.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

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

#[tokio::test]
async fn an_unreachable_issuer_at_start_means_503_until_keys_arrive() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    jwks.set_reply(JwksReply::Status(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
    ));
    let sg = Scopegate::start(&policy_yaml(
        "orders",
        &jwks.issuer(),
        &jwks.jwks_uri(),
        STANDARD_RULES,
    ))
    .await;
    sg.wait_for_jwks_attempts_above(0).await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    assert_eq!(
        sg.check_token("GET", "/orders", &token).await.http_status(),
        503
    );
    assert_eq!(
        readyz(&sg).await,
        200,
        "policies are loaded; the policy itself answers 503"
    );

    jwks.set_keys(vec![KEY_A.jwk()]); // the issuer recovers
    eventually("keys arrive and the token is allowed", || async {
        sg.check_token("GET", "/orders", &token).await.http_status() == 200
    })
    .await;
}
