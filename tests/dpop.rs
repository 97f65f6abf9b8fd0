//! DPoP (RFC 9449) through real Checks: a running scopegate, a real JWKS
//! server, DPoP-bound tokens (`cnf.jkt`) and ES256 proofs; the replay store
//! in memory and shared through a real `redis-server` by two scopegates;
//! server nonces shared by two scopegates with the same secret.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use scopegate::pop::NonceIssuer;
use serde_json::Value;
use support::redis::RedisServer;
use support::{Checked, EcKey, HOST, KEY_A, STANDARD_RULES, Scopegate, claims, now, policy_yaml};

/// The `htu` of `GET /orders` on [`HOST`] (Envoy sends no scheme: https).
const HTU: &str = "https://orders.example.com/orders";

/// A unique `jti` per proof.
fn jti() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("jti-{}-{}", now(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The RFC 7638 thumbprint of `key`'s public JWK.
fn jkt(key: &EcKey) -> String {
    let jwk = key.dpop_jwk();
    scopegate::pop::jwk_thumbprint(jwk.as_object().unwrap()).unwrap()
}

/// A token for the standard policy, bound to `key` when given.
fn token(issuer: &str, bound_to: Option<&EcKey>) -> String {
    let mut claims = claims(issuer);
    if let Some(key) = bound_to {
        claims["cnf"] = serde_json::json!({"jkt": jkt(key)});
    }
    KEY_A.sign(&claims)
}

/// A fresh proof by `key` for `GET /orders` and `token`.
fn proof(key: &EcKey, token: &str) -> String {
    key.dpop_proof("GET", HTU, &jti(), now(), Some(token))
}

struct Setup {
    jwks: support::JwksServer,
    sg: Scopegate,
    key: EcKey,
}

/// scopegate with the standard rules plus `spec_extra`.
async fn setup(spec_extra: &str) -> Setup {
    let jwks = support::JwksServer::start(vec![KEY_A.jwk()]).await;
    let sg = Scopegate::start(&policy(&jwks, spec_extra)).await;
    Setup {
        jwks,
        sg,
        key: EcKey::generate("dpop"),
    }
}

fn policy(jwks: &support::JwksServer, spec_extra: &str) -> String {
    let rules = format!("{STANDARD_RULES}{spec_extra}");
    policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), &rules)
}

/// `GET /orders` with `Authorization: <scheme> <token>` and the proof.
async fn get_orders(sg: &Scopegate, scheme: &str, token: &str, proof: Option<&str>) -> Checked {
    let auth = format!("{scheme} {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(proof) = proof {
        headers.push(("dpop", proof));
    }
    sg.check("GET", "/orders", &headers).await
}

/// Asserts a 401 whose `DPoP` challenge carries `error`.
fn assert_dpop_error(checked: &Checked, error: &str) {
    assert_eq!(checked.http_status(), 401, "{:?}", checked.body());
    let challenge = checked.www_authenticate();
    let dpop = challenge
        .find("DPoP realm=")
        .unwrap_or_else(|| panic!("no DPoP challenge in {challenge:?}"));
    assert!(
        challenge[dpop..].contains(&format!("error=\"{error}\"")),
        "{challenge:?}"
    );
    assert!(challenge[dpop..].contains("algs=\"RS256"), "{challenge:?}");
    assert_eq!(checked.body()["error"], Value::from(error));
}

#[tokio::test]
async fn a_bound_token_with_its_proof_is_allowed_and_the_same_proof_replayed_is_not() {
    // No proofOfPossession in the policy: a bound token must prove anyway.
    let Setup { jwks, sg, key } = setup("").await;
    let token = token(&jwks.issuer(), Some(&key));
    let proof = proof(&key, &token);
    let first = get_orders(&sg, "DPoP", &token, Some(&proof)).await;
    assert_eq!(first.http_status(), 200, "{:?}", first.0);
    // The token is now cached; the proof is not.
    let replayed = get_orders(&sg, "DPoP", &token, Some(&proof)).await;
    assert_dpop_error(&replayed, "invalid_dpop_proof");
    assert_eq!(replayed.denied().status.as_ref().unwrap().code, 401);
    // A new proof for the cached token is fine.
    let fresh = get_orders(&sg, "DPoP", &token, Some(&self::proof(&key, &token))).await;
    assert_eq!(fresh.http_status(), 200);
}

/// Milliseconds since the Unix epoch.
fn now_millis() -> u64 {
    scopegate::token::unix_now_millis()
}

/// Sleeps until `at_millis` (milliseconds since the Unix epoch).
async fn sleep_until_millis(at_millis: u64) {
    let wait = at_millis.saturating_sub(now_millis());
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
}

/// Finding 4 of issue 20: a proof used early in a second and replayed in
/// its last accepted second (the next one) is refused, by the replica that
/// saw it (`first`) or another one sharing its store (`second`). The old
/// whole-second record expired a second after first use, a fraction of a
/// second before the proof did. Refused whatever the timing: a replay that
/// lands after the window is too old instead, and only a replay answered
/// within the window must say `replayed`.
async fn assert_replay_refused_in_the_last_second(
    first: &Scopegate,
    second: &Scopegate,
    key: &EcKey,
    token: &str,
) {
    // Start early in a second, so that the replay below comes in the next
    // one, after the old record's expiry.
    sleep_until_millis(now_millis() / 1000 * 1000 + 1000).await;
    let start = now();
    let (max_age, skew) = (
        scopegate::pop::DEFAULT_MAX_AGE_SECONDS,
        scopegate::pop::DEFAULT_CLOCK_SKEW_SECONDS,
    );
    // Accepted through the end of second start + 1.
    let iat = start + 1 - max_age - skew;
    let proof = key.dpop_proof("GET", HTU, &jti(), iat, Some(token));
    let used = get_orders(first, "DPoP", token, Some(&proof)).await;
    assert_eq!(used.http_status(), 200, "{:?}", used.0);
    sleep_until_millis((start + 1) * 1000 + 600).await;
    let replayed = get_orders(second, "DPoP", token, Some(&proof)).await;
    let answered = now_millis();
    assert_dpop_error(&replayed, "invalid_dpop_proof");
    if answered < (start + 2) * 1000 {
        assert_eq!(replayed.reason(), "replayed");
    }
}

#[tokio::test]
async fn finding_4_a_proof_replayed_in_its_last_accepted_second_is_refused_in_memory() {
    let Setup { jwks, sg, key } = setup("").await;
    let token = token(&jwks.issuer(), Some(&key));
    assert_replay_refused_in_the_last_second(&sg, &sg, &key, &token).await;
}

#[tokio::test]
async fn finding_4_a_proof_replayed_in_its_last_accepted_second_is_refused_across_redis() {
    let redis = RedisServer::start().await;
    let jwks = support::JwksServer::start(vec![KEY_A.jwk()]).await;
    let (first, second) = replicas_sharing(&redis, &policy(&jwks, "")).await;
    let key = EcKey::generate("dpop");
    let token = token(&jwks.issuer(), Some(&key));
    assert_replay_refused_in_the_last_second(&first, &second, &key, &token).await;
}

#[tokio::test]
async fn a_bound_token_sent_as_bearer_or_without_a_proof_is_refused() {
    let Setup { jwks, sg, key } = setup("").await;
    let token = token(&jwks.issuer(), Some(&key));
    // RFC 9449 §7.2: no downgrade to Bearer, even with a valid proof.
    let bearer = get_orders(&sg, "Bearer", &token, Some(&proof(&key, &token))).await;
    assert_dpop_error(&bearer, "invalid_token");
    assert_eq!(bearer.body()["error"], "invalid_token");
    let no_proof = get_orders(&sg, "DPoP", &token, None).await;
    assert_dpop_error(&no_proof, "invalid_dpop_proof");
}

#[tokio::test]
async fn proofs_for_another_method_uri_token_or_key_are_invalid_dpop_proofs() {
    let Setup { jwks, sg, key } = setup("").await;
    let token = token(&jwks.issuer(), Some(&key));
    // Another token bound to the same key (RS256 signatures are
    // deterministic: the claims must differ).
    let mut other_claims = claims(&jwks.issuer());
    other_claims["sub"] = "auth0|user-2".into();
    other_claims["cnf"] = serde_json::json!({"jkt": jkt(&key)});
    let other_token = KEY_A.sign(&other_claims);
    let other_key = EcKey::generate("other");
    let cases = [
        (
            "htm",
            key.dpop_proof("POST", HTU, &jti(), now(), Some(&token)),
        ),
        (
            "htu",
            key.dpop_proof(
                "GET",
                "https://orders.example.com/other",
                &jti(),
                now(),
                Some(&token),
            ),
        ),
        (
            "ath",
            key.dpop_proof("GET", HTU, &jti(), now(), Some(&other_token)),
        ),
        (
            "key",
            other_key.dpop_proof("GET", HTU, &jti(), now(), Some(&token)),
        ),
        (
            "iat",
            key.dpop_proof("GET", HTU, &jti(), now() - 3600, Some(&token)),
        ),
    ];
    for (what, proof) in cases {
        let checked = get_orders(&sg, "DPoP", &token, Some(&proof)).await;
        assert_dpop_error(&checked, "invalid_dpop_proof");
        eprintln!("{what}: {}", checked.body()["error_description"]);
    }
    // The htu compares normalized: explicit default port, upper-case host.
    let same = key.dpop_proof(
        "GET",
        "https://ORDERS.example.com:443/orders",
        &jti(),
        now(),
        Some(&token),
    );
    assert_eq!(
        get_orders(&sg, "DPoP", &token, Some(&same))
            .await
            .http_status(),
        200
    );
}

#[tokio::test]
async fn the_dpop_scheme_needs_a_bound_token() {
    let Setup { jwks, sg, key } = setup("").await;
    let unbound = token(&jwks.issuer(), None);
    let checked = get_orders(&sg, "DPoP", &unbound, Some(&proof(&key, &unbound))).await;
    assert_dpop_error(&checked, "invalid_token");
    // Unbound tokens as Bearer are unchanged, challenge included.
    let bearer = get_orders(&sg, "Bearer", &unbound, None).await;
    assert_eq!(bearer.http_status(), 200);
    let none = sg.check("GET", "/orders", &[]).await;
    assert_eq!(none.www_authenticate(), format!("Bearer realm=\"{HOST}\""));
}

#[tokio::test]
async fn a_policy_that_requires_dpop_refuses_unbound_tokens_and_challenges_dpop_only() {
    let extra = "  proofOfPossession: {mechanism: dpop, required: true}\n";
    let Setup { jwks, sg, key } = setup(extra).await;
    let unbound = token(&jwks.issuer(), None);
    let checked = get_orders(&sg, "Bearer", &unbound, None).await;
    assert_dpop_error(&checked, "invalid_token");
    assert!(
        !checked.www_authenticate().contains("Bearer"),
        "{}",
        checked.www_authenticate()
    );
    let none = sg.check("GET", "/orders", &[]).await;
    assert_eq!(none.http_status(), 401);
    assert!(
        none.www_authenticate()
            .starts_with(&format!("DPoP realm=\"{HOST}\", algs=\""))
    );
    let bound = token(&jwks.issuer(), Some(&key));
    let ok = get_orders(&sg, "DPoP", &bound, Some(&proof(&key, &bound))).await;
    assert_eq!(ok.http_status(), 200);
}

#[tokio::test]
async fn an_optional_dpop_policy_challenges_bearer_then_dpop() {
    let extra = "  proofOfPossession: {mechanism: dpop, required: false}\n";
    let Setup { jwks, sg, key: _ } = setup(extra).await;
    let none = sg.check("GET", "/orders", &[]).await;
    let challenge = none.www_authenticate();
    assert!(
        challenge.starts_with(&format!(
            "Bearer realm=\"{HOST}\", DPoP realm=\"{HOST}\", algs=\"RS256 "
        )),
        "{challenge}"
    );
    assert!(challenge.contains("ES256"), "{challenge}");
    // Unbound Bearer tokens are still accepted.
    let unbound = token(&jwks.issuer(), None);
    assert_eq!(
        get_orders(&sg, "Bearer", &unbound, None)
            .await
            .http_status(),
        200
    );
    // A Bearer error stays in the Bearer challenge.
    let bad = get_orders(&sg, "Bearer", "a.b.c", None).await;
    let challenge = bad.www_authenticate();
    let (bearer, dpop) = challenge.split_once(", DPoP ").expect("two challenges");
    assert!(bearer.contains("error=\"invalid_token\""), "{challenge}");
    assert!(!dpop.contains("error="), "{challenge}");
}

/// Two scopegates serving `policy` whose replay store is `redis`.
async fn replicas_sharing(redis: &RedisServer, policy: &str) -> (Scopegate, Scopegate) {
    let url = redis.url();
    let store = |config: &mut scopegate::config::ServeConfig| {
        config.replay_store = scopegate::pop::ReplayStore::from_flag(Some(&url)).unwrap();
    };
    (
        Scopegate::start_configured(policy, store).await,
        Scopegate::start_configured(policy, store).await,
    )
}

/// Two scopegates sharing one `redis-server`: a proof used on one is a
/// replay on the other; Redis down is 503 (never allow); back up, it
/// recovers.
#[tokio::test]
async fn replicas_sharing_redis_refuse_a_proof_replayed_across_them() {
    let mut redis = RedisServer::start().await;
    let jwks = support::JwksServer::start(vec![KEY_A.jwk()]).await;
    let (first, second) = replicas_sharing(&redis, &policy(&jwks, "")).await;
    let key = EcKey::generate("dpop");
    let token = token(&jwks.issuer(), Some(&key));

    let proof = proof(&key, &token);
    assert_eq!(
        get_orders(&first, "DPoP", &token, Some(&proof))
            .await
            .http_status(),
        200
    );
    let replayed = get_orders(&second, "DPoP", &token, Some(&proof)).await;
    assert_dpop_error(&replayed, "invalid_dpop_proof");

    redis.stop().await;
    let down = get_orders(&second, "DPoP", &token, Some(&self::proof(&key, &token))).await;
    assert_eq!(down.http_status(), 503, "{:?}", down.body());
    assert_eq!(down.body()["error"], "temporarily_unavailable");
    // Unbound Bearer tokens do not need the store.
    let unbound = self::token(&jwks.issuer(), None);
    assert_eq!(
        get_orders(&second, "Bearer", &unbound, None)
            .await
            .http_status(),
        200
    );

    redis.restart().await;
    support::eventually("the replay store answers again", || async {
        let proof = self::proof(&key, &token);
        get_orders(&second, "DPoP", &token, Some(&proof))
            .await
            .http_status()
            == 200
    })
    .await;
}

/// A scopegate on the standard policy requiring DPoP server nonces made
/// with `secret` (`--dpop-nonce-secret`).
async fn with_nonce_secret(jwks: &support::JwksServer, secret: &str) -> Scopegate {
    let issuer = NonceIssuer::new(secret.as_bytes(), NonceIssuer::DEFAULT_PERIOD).unwrap();
    Scopegate::start_configured(&policy(jwks, ""), |config| {
        config.dpop_nonces = Some(Arc::new(issuer));
    })
    .await
}

/// A fresh proof by `key` for `GET /orders` and `token` carrying `nonce`.
fn proof_with_nonce(key: &EcKey, token: &str, nonce: &str) -> String {
    key.dpop_proof_with_nonce("GET", HTU, &jti(), now(), Some(token), Some(nonce))
}

#[tokio::test]
async fn server_nonces_are_required_and_every_replica_with_the_secret_accepts_them() {
    const SECRET: &str = "the replicas' shared nonce secret, 32+ bytes";
    const OTHER: &str = "a different secret, also 32 bytes or more";
    let jwks = support::JwksServer::start(vec![KEY_A.jwk()]).await;
    let first = with_nonce_secret(&jwks, SECRET).await;
    let second = with_nonce_secret(&jwks, SECRET).await;
    let stranger = with_nonce_secret(&jwks, OTHER).await;
    let key = EcKey::generate("dpop");
    let token = token(&jwks.issuer(), Some(&key));

    // A valid proof without a nonce: 401 use_dpop_nonce, and a nonce to
    // retry with.
    let refused = get_orders(&first, "DPoP", &token, Some(&proof(&key, &token))).await;
    assert_dpop_error(&refused, "use_dpop_nonce");
    let nonce = refused
        .header("dpop-nonce")
        .expect("a use_dpop_nonce answer carries DPoP-Nonce");

    // Any replica with the same secret accepts the first one's nonce.
    for replica in [&second, &first] {
        let retried = get_orders(
            replica,
            "DPoP",
            &token,
            Some(&proof_with_nonce(&key, &token, &nonce)),
        )
        .await;
        assert_eq!(retried.http_status(), 200, "{:?}", retried.0);
    }

    // A replica with another secret does not, and hands out its own.
    let foreign = get_orders(
        &stranger,
        "DPoP",
        &token,
        Some(&proof_with_nonce(&key, &token, &nonce)),
    )
    .await;
    assert_dpop_error(&foreign, "use_dpop_nonce");
    let its_own = foreign.header("dpop-nonce").expect("a fresh DPoP-Nonce");
    assert_ne!(its_own, nonce);
    let retried = get_orders(
        &stranger,
        "DPoP",
        &token,
        Some(&proof_with_nonce(&key, &token, &its_own)),
    )
    .await;
    assert_eq!(retried.http_status(), 200, "{:?}", retried.0);

    // Nonces never replace the other checks: an invalid proof is reported
    // as invalid, without a nonce header.
    let other_key = EcKey::generate("other");
    let wrong_key = proof_with_nonce(&other_key, &token, &nonce);
    let invalid = get_orders(&second, "DPoP", &token, Some(&wrong_key)).await;
    assert_dpop_error(&invalid, "invalid_dpop_proof");
    assert_eq!(invalid.header("dpop-nonce"), None);
}

#[tokio::test]
async fn without_a_nonce_secret_proofs_need_no_nonce() {
    let Setup { jwks, sg, key } = setup("").await;
    let token = token(&jwks.issuer(), Some(&key));
    let checked = get_orders(&sg, "DPoP", &token, Some(&proof(&key, &token))).await;
    assert_eq!(checked.http_status(), 200, "{:?}", checked.0);
    assert_eq!(checked.header("dpop-nonce"), None);
}

/// With TLS ended before Envoy, the Check sees `http` and an internal host,
/// while the client's proof names the public URL: a policy with `resource`
/// takes `htu`'s origin from `resource.id` (DESIGN §6).
#[tokio::test]
async fn with_a_resource_htu_uses_the_public_origin_of_its_id() {
    let jwks = support::JwksServer::start(vec![KEY_A.jwk()]).await;
    let resource = format!("  resource: {{id: \"{}\"}}\n", support::AUDIENCE);
    for (extra, expected) in [(resource.as_str(), 200), ("", 401)] {
        let sg = Scopegate::start(&policy(&jwks, extra)).await;
        let key = EcKey::generate("dpop");
        let token = token(&jwks.issuer(), Some(&key));
        let proof = proof(&key, &token); // htu: the public https://orders.example.com/orders
        let auth = format!("DPoP {token}");
        let mut request = support::check_request(
            "api.orders.internal:8080",
            "GET",
            "/orders",
            &[("authorization", &auth), ("dpop", &proof)],
            Default::default(),
        );
        support::http_of(&mut request).scheme = "http".into();
        let checked = sg.send(request).await;
        assert_eq!(
            checked.http_status(),
            expected,
            "resource: {}",
            !extra.is_empty()
        );
    }
}
