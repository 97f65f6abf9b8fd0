//! The verified-token cache over real sockets with real signed tokens: a
//! cached verification is reused only while the key, the policy and the
//! token's lifetime still allow it, and never skips the rules.

mod support;

use std::time::Duration;

use scopegate::token::Algorithm;
use serde_json::json;
use support::*;

/// A JWKS server with `keys` and a scopegate with the standard rules.
async fn started(keys: Vec<serde_json::Value>) -> (JwksServer, Scopegate) {
    let jwks = JwksServer::start(keys).await;
    let policy = policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), STANDARD_RULES);
    let scopegate = Scopegate::start(&policy).await;
    (jwks, scopegate)
}

fn hits(sg: &Scopegate) -> u64 {
    sg.running.token_cache().hits()
}

fn misses(sg: &Scopegate) -> u64 {
    sg.running.token_cache().misses()
}

/// Polls `condition` every 10 ms until it holds; panics after 10 s.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

/// The fingerprint of the key `kid` in the JWKS scopegate currently holds for [`HOST`].
fn served_key(sg: &Scopegate, kid: &str) -> Option<scopegate::jwks::KeyFingerprint> {
    let snapshot = sg.running.snapshot().load();
    let served = snapshot.lookup(HOST)?;
    served.issuers[0]
        .keys
        .current()?
        .fingerprint(Some(kid), Algorithm::RS256)
}

/// Sends the token twice and asserts the second Check was a cache hit.
async fn allow_twice_second_from_cache(sg: &Scopegate, token: &str) {
    let (hits_before, misses_before) = (hits(sg), misses(sg));
    assert_eq!(
        sg.check_token("GET", "/orders", token).await.http_status(),
        200
    );
    assert_eq!(misses(sg), misses_before + 1, "the first Check verifies");
    assert_eq!(
        sg.check_token("GET", "/orders", token).await.http_status(),
        200
    );
    assert_eq!(hits(sg), hits_before + 1, "the second Check is a cache hit");
}

#[tokio::test]
async fn a_repeated_token_is_verified_once_and_answered_the_same() {
    let (jwks, sg) = started(vec![KEY_A.jwk()]).await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    let first = sg.check_token("GET", "/orders/7", &token).await;
    let second = sg.check_token("GET", "/orders/7", &token).await;
    assert_eq!((hits(&sg), misses(&sg)), (1, 1));
    for checked in [&first, &second] {
        assert_eq!(checked.header("x-user-id").as_deref(), Some("auth0|user-1"));
        assert_eq!(checked.removed_as_named(), vec!["x-user-email"]);
        assert_eq!(
            checked.metadata("scope").as_deref(),
            Some("openid read:orders")
        );
    }
}

#[tokio::test]
async fn a_cache_hit_still_runs_the_scope_and_client_rules() {
    let (jwks, sg) = started(vec![KEY_A.jwk()]).await;
    let mut claims = claims(&jwks.issuer());
    claims["azp"] = json!("some-other-agent");
    let token = KEY_A.sign(&claims);
    allow_twice_second_from_cache(&sg, &token).await;

    let hits_before = hits(&sg);
    let post = sg.check_token("POST", "/orders", &token).await;
    assert_eq!(hits(&sg), hits_before + 1, "verified from the cache");
    assert_eq!(post.http_status(), 403);
    assert!(
        post.www_authenticate().contains("error=\"access_denied\""),
        "allowedClients still applies: {}",
        post.www_authenticate()
    );

    let delete = sg.check_token("DELETE", "/orders/7", &token).await;
    assert_eq!(hits(&sg), hits_before + 2, "verified from the cache");
    assert_eq!(delete.http_status(), 403);
    assert!(
        delete
            .www_authenticate()
            .contains("scope=\"delete:orders admin:orders\""),
        "requireScopes still applies: {}",
        delete.www_authenticate()
    );
}

#[tokio::test]
async fn a_cached_token_is_denied_once_its_key_leaves_the_jwks() {
    let (jwks, sg) = started(vec![KEY_A.jwk(), KEY_B.jwk()]).await;
    let token = KEY_B.sign(&claims(&jwks.issuer()));
    wait_until("key-b is served", || served_key(&sg, "key-b").is_some()).await;
    allow_twice_second_from_cache(&sg, &token).await;

    jwks.set_keys(vec![KEY_A.jwk()]);
    wait_until("key-b is gone", || served_key(&sg, "key-b").is_none()).await;
    let description = sg
        .check_token("GET", "/orders", &token)
        .await
        .assert_invalid_token();
    assert_eq!(description, "token signing key is not known");
}

#[tokio::test]
async fn a_cached_token_is_denied_once_its_kid_names_another_key() {
    let (jwks, sg) = started(vec![KEY_A.jwk()]).await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    wait_until("key-a is served", || served_key(&sg, "key-a").is_some()).await;
    let original = served_key(&sg, "key-a");
    allow_twice_second_from_cache(&sg, &token).await;

    // ROGUE reuses the kid "key-a" with different key material.
    jwks.set_keys(vec![ROGUE.jwk()]);
    wait_until("key-a is replaced", || served_key(&sg, "key-a") != original).await;
    let description = sg
        .check_token("GET", "/orders", &token)
        .await
        .assert_invalid_token();
    assert_eq!(description, "token signature is invalid");
}

#[tokio::test]
async fn a_cached_token_is_denied_once_it_expires() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let policy = policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), STANDARD_RULES)
        .replace("clockSkewSeconds: 60", "clockSkewSeconds: 0");
    let sg = Scopegate::start(&policy).await;
    let mut claims = claims(&jwks.issuer());
    let expires_at = now() + 5;
    claims["exp"] = json!(expires_at);
    let token = KEY_A.sign(&claims);
    allow_twice_second_from_cache(&sg, &token).await;

    while now() < expires_at {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let description = sg
        .check_token("GET", "/orders", &token)
        .await
        .assert_invalid_token();
    assert_eq!(description, "token is expired");
}

#[tokio::test]
async fn a_cached_token_is_denied_when_the_policy_audience_changes() {
    let (jwks, sg) = started(vec![KEY_A.jwk()]).await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    allow_twice_second_from_cache(&sg, &token).await;

    let changed = policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), STANDARD_RULES)
        .replace(AUDIENCE, "https://billing.example.com/api");
    std::fs::write(sg.policy_dir().join("policies.yaml"), changed).unwrap();
    wait_until("the new audience is served", || {
        let snapshot = sg.running.snapshot().load();
        snapshot.lookup(HOST).is_some_and(|s| {
            *s.policy.issuers[0].rules.audiences[0] == *"https://billing.example.com/api"
        })
    })
    .await;
    let description = sg
        .check_token("GET", "/orders", &token)
        .await
        .assert_invalid_token();
    assert_eq!(description, "token audience is not accepted");
}

/// A cache entry keeps only the claims its policy reads (issue 14): a
/// policy that starts reading another claim must re-verify the token, not
/// answer from an entry that lacks it.
#[tokio::test]
async fn a_policy_that_reads_a_claim_the_entry_did_not_keep_verifies_again() {
    let (jwks, sg) = started(vec![KEY_A.jwk()]).await;
    let mut claims = claims(&jwks.issuer());
    claims["org_id"] = json!("org-acme");
    let token = KEY_A.sign(&claims);
    allow_twice_second_from_cache(&sg, &token).await;
    let entry = sg.running.token_cache();
    assert_eq!(entry.entry_count(), 1);

    let rules = STANDARD_RULES.replace(
        r#"      requireScopes: ["read:orders"]"#,
        "      requireScopes: [\"read:orders\"]\n      when: [\"claims.org_id == 'org-acme'\"]",
    );
    let changed = policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), &rules).replace(
        "  claimHeaders:\n",
        "  claimHeaders:\n    - {header: x-org, claim: org_id}\n",
    );
    std::fs::write(sg.policy_dir().join("policies.yaml"), changed).unwrap();
    wait_until("the policy reading org_id is served", || {
        let snapshot = sg.running.snapshot().load();
        snapshot
            .lookup(HOST)
            .is_some_and(|s| s.policy.claim_headers.iter().any(|h| *h.header == *"x-org"))
    })
    .await;

    let (hits_before, misses_before) = (hits(&sg), misses(&sg));
    let checked = sg.check_token("GET", "/orders", &token).await;
    assert_eq!(
        checked.http_status(),
        200,
        "the condition reads the kept org_id"
    );
    assert_eq!(checked.header("x-org").as_deref(), Some("org-acme"));
    assert_eq!(
        (hits(&sg), misses(&sg)),
        (hits_before, misses_before + 1),
        "the entry lacked org_id: verified again"
    );
    let again = sg.check_token("GET", "/orders", &token).await;
    assert_eq!(again.header("x-org").as_deref(), Some("org-acme"));
    assert_eq!(hits(&sg), hits_before + 1, "the new entry serves");
}

#[tokio::test]
async fn a_forged_signature_on_a_cached_token_is_rejected() {
    let (jwks, sg) = started(vec![KEY_A.jwk()]).await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    allow_twice_second_from_cache(&sg, &token).await;

    // Same header and payload as the cached token, another key's signature.
    let (signing_input, _) = token.rsplit_once('.').unwrap();
    let forged_signature = ROGUE.sign(&claims(&jwks.issuer()));
    let forged = format!(
        "{signing_input}.{}",
        forged_signature.rsplit_once('.').unwrap().1
    );
    let description = sg
        .check_token("GET", "/orders", &forged)
        .await
        .assert_invalid_token();
    assert_eq!(description, "token signature is invalid");
    // The good token is still served from the cache: the bad one evicted nothing.
    let hits_before = hits(&sg);
    assert_eq!(
        sg.check_token("GET", "/orders", &token).await.http_status(),
        200
    );
    assert_eq!(hits(&sg), hits_before + 1);
}

#[tokio::test]
async fn rejected_tokens_are_never_cached() {
    let (jwks, sg) = started(vec![KEY_A.jwk()]).await;
    let token = ROGUE.sign(&claims(&jwks.issuer()));
    for _ in 0..3 {
        sg.check_token("GET", "/orders", &token)
            .await
            .assert_invalid_token();
    }
    assert_eq!(hits(&sg), 0);
    assert_eq!(misses(&sg), 3);
    assert_eq!(sg.running.token_cache().entry_count(), 0);
}

#[tokio::test]
async fn a_zero_max_ttl_turns_the_cache_off() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let policy = policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), STANDARD_RULES);
    let sg = Scopegate::start_configured(&policy, |config| {
        config.token_cache.max_ttl = Duration::ZERO;
    })
    .await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    for _ in 0..3 {
        assert_eq!(
            sg.check_token("GET", "/orders", &token).await.http_status(),
            200
        );
    }
    assert!(!sg.running.token_cache().is_enabled());
    assert_eq!(hits(&sg), 0);
    assert_eq!(sg.running.token_cache().entry_count(), 0);
}

/// Claims of a valid token padded so that its compact form is close to
/// 16 KiB, the largest token scopegate accepts; `n` makes each one distinct.
/// The padding is inside `act`, a claim every cache entry keeps (the
/// delegation chain), so the entries are as large as a token can make them.
fn large_claims(issuer: &str, n: usize) -> serde_json::Value {
    let mut claims = claims(issuer);
    claims["jti"] = json!(format!("flood-{n}"));
    // base64url grows the payload by 4/3: 11.5 KiB of claims ≈ 15.5 KiB.
    claims["act"] = json!({"sub": "agent", "padding": "p".repeat(11_500)});
    claims
}

/// Sends `count` distinct, valid, ~16 KiB tokens to the real binary, 8 at a
/// time, and checks every one is allowed.
async fn flood(sg: &support::process::ScopegateProcess, issuer: &str, count: usize) {
    let client = sg.client().await;
    let chunks: Vec<Vec<usize>> = (0..count)
        .collect::<Vec<_>>()
        .chunks(count.div_ceil(8))
        .map(<[usize]>::to_vec)
        .collect();
    let tasks = chunks.into_iter().map(|chunk| {
        let mut client = client.clone();
        let issuer = issuer.to_string();
        tokio::spawn(async move {
            for n in chunk {
                let token = EC.sign(&large_claims(&issuer, n));
                assert!(
                    token.len() > 15 * 1024 && token.len() <= 16 * 1024,
                    "{}",
                    token.len()
                );
                let response = client
                    .check(bearer_request(&token))
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(Checked(response).http_status(), 200);
            }
        })
    });
    for task in tasks {
        task.await.unwrap();
    }
}

/// Finding 6 of the security review: the cache was bounded by entry count
/// only (~3.3 KiB per Auth0-shaped entry, far more for large tokens), so a
/// flood of large valid tokens grew every replica until it was OOM-killed.
/// Now each entry weighs its real size against `--token-cache-max-bytes`.
#[tokio::test]
async fn finding_6_a_flood_of_large_valid_tokens_stays_within_the_byte_budget() {
    const BUDGET: f64 = 8.0 * 1024.0 * 1024.0;
    let jwks = JwksServer::start(vec![EC.jwk()]).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), STANDARD_RULES);
    let sg = support::process::ScopegateProcess::serve_policy(
        dir.path(),
        &policy,
        &["--token-cache-max-bytes", "8Mi"],
        |_| {},
    )
    .await;
    sg.wait_for_jwks_attempts_above(0).await;
    flood(&sg, &jwks.issuer(), 100).await; // warm up allocator and connections
    let before = sg.resources().await;

    // 1,500 entries of ~12 KiB (the kept `act` claim) would be ~18 MiB.
    flood(&sg, &jwks.issuer(), 1_500).await;
    let held = sg
        .metric("scopegate_token_cache_bytes")
        .await
        .expect("the bytes gauge");
    let entries = sg
        .metric("scopegate_token_cache_entries")
        .await
        .expect("the entries gauge");
    let after = sg.resources().await;
    let grown = after.rss_bytes - before.rss_bytes;
    println!(
        "held {:.1} MiB in {entries} entries ({:.1} KiB each); RSS {:.1} → {:.1} MiB",
        held / 1048576.0,
        held / entries / 1024.0,
        before.rss_bytes / 1048576.0,
        after.rss_bytes / 1048576.0
    );
    assert!(held <= BUDGET, "{held} bytes held");
    assert!(held >= BUDGET / 2.0, "the cache is used: {held} bytes held");
    assert!(
        held / entries >= 11.5 * 1024.0,
        "an entry weighs at least its kept claims: {held} bytes in {entries} entries"
    );
    assert!(
        grown < 3.0 * BUDGET,
        "RSS grew by {:.1} MiB for a {:.0} MiB budget",
        grown / 1048576.0,
        BUDGET / 1048576.0
    );
}
