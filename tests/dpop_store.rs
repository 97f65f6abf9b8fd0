//! DPoP `jti` replay detection shared through a real `redis-server`: two
//! independent stores play two scopegate replicas; Redis is stopped and
//! restarted under them.

mod support;

use std::time::{Duration, Instant};

use scopegate::authz::RequestHeader;
use scopegate::pop::{
    Freshness, NormalizedUri, ProofContext, RedisReplayStore, ReplayError, ReplayKey, ReplayStore,
    VerifiedProof, verify_proof,
};
use scopegate::token::{unix_now, unix_now_millis};
use support::EcKey;
use support::redis::RedisServer;

const TIMEOUT: Duration = Duration::from_millis(300);
const HTU: &str = "https://api.example.com/orders/42";

fn redis_store(server: &RedisServer) -> ReplayStore {
    ReplayStore::Redis(RedisReplayStore::new(&server.url(), TIMEOUT).unwrap())
}

/// A proof made now by `key` and verified, as a replica would before asking
/// the store.
fn verified(key: &EcKey, jti: &str) -> VerifiedProof {
    let uri: NormalizedUri = HTU.parse().unwrap();
    let now = unix_now();
    let proof = key.dpop_proof("GET", HTU, jti, now, None);
    verify_proof(
        RequestHeader::One(&proof),
        &ProofContext::new("GET", &uri),
        now,
    )
    .unwrap()
}

#[tokio::test]
async fn a_proof_recorded_by_one_replica_is_replayed_at_another() {
    let redis = RedisServer::start().await;
    let (replica_a, replica_b) = (redis_store(&redis), redis_store(&redis));
    let key = EcKey::generate("client");
    let proof = verified(&key, "jti-1");
    let now = unix_now_millis();

    assert_eq!(replica_a.check(&proof, now).await, Ok(Freshness::Fresh));
    assert_eq!(replica_b.check(&proof, now).await, Ok(Freshness::Replayed));
    assert_eq!(replica_a.check(&proof, now).await, Ok(Freshness::Replayed));
    // Another jti, or the same jti from another key, is a new proof.
    assert_eq!(
        replica_b.check(&verified(&key, "jti-2"), now).await,
        Ok(Freshness::Fresh)
    );
    let other_key = EcKey::generate("other-client");
    assert_eq!(
        replica_b.check(&verified(&other_key, "jti-1"), now).await,
        Ok(Freshness::Fresh)
    );

    let redis_key = ReplayKey::of(&proof).redis_key();
    assert!(redis_key.starts_with("scopegate:dpop:"));
    assert_record_spans_the_window(&redis, &proof).await;
}

/// The record of `proof` expires when the proof stops being accepted: not
/// before (the end of second `replay_until`, to the millisecond), and not
/// much after. Read as Redis's absolute expiry, so no timing is involved.
async fn assert_record_spans_the_window(redis: &RedisServer, proof: &VerifiedProof) {
    let redis_key = ReplayKey::of(proof).redis_key();
    let expires_at: u64 = redis.command(&["PEXPIRETIME", &redis_key]).await[1..]
        .parse()
        .unwrap();
    let rejected_from = proof.rejected_from_millis();
    assert!(
        (rejected_from..rejected_from + 2_000).contains(&expires_at),
        "the record expires at {expires_at} ms; the proof is accepted until {rejected_from} ms"
    );
}

/// Finding 4 of issue 20: a proof whose last accepted second is the next
/// one is remembered through the end of that second (the old whole-second
/// TTL, counted from first use, let it go as many milliseconds early as the
/// first use was into its second).
#[tokio::test]
async fn finding_4_a_proof_is_remembered_until_its_last_accepted_millisecond() {
    let redis = RedisServer::start().await;
    let store = redis_store(&redis);
    let key = EcKey::generate("client");
    let uri: NormalizedUri = HTU.parse().unwrap();
    let context = ProofContext::new("GET", &uri);
    // iat puts the proof's last accepted second right after this one.
    let now = unix_now();
    let iat = now + 1 - context.max_age_seconds - context.clock_skew_seconds;
    let proof = key.dpop_proof("GET", HTU, "edge", iat, None);
    let proof = verify_proof(RequestHeader::One(&proof), &context, now).unwrap();
    assert_eq!(proof.replay_until, now + 1);
    let first_use = unix_now_millis();
    assert_eq!(store.check(&proof, first_use).await, Ok(Freshness::Fresh));
    assert_record_spans_the_window(&redis, &proof).await;
    assert_eq!(
        store.check(&proof, unix_now_millis()).await,
        Ok(Freshness::Replayed)
    );
}

#[tokio::test]
async fn redis_down_is_unavailable_within_the_timeout_and_restart_recovers() {
    let mut redis = RedisServer::start().await;
    let store = redis_store(&redis);
    let key = EcKey::generate("client");
    let now = unix_now_millis();
    assert_eq!(
        store.check(&verified(&key, "before"), now).await,
        Ok(Freshness::Fresh)
    );

    redis.stop().await;
    for attempt in 0..3 {
        let started = Instant::now();
        let result = store
            .check(&verified(&key, &format!("down-{attempt}")), now)
            .await;
        let took = started.elapsed();
        assert!(
            matches!(result, Err(ReplayError::Unavailable { .. })),
            "attempt {attempt}: {result:?}"
        );
        assert_eq!(result.unwrap_err().label(), "replay_store_unavailable");
        assert!(took < TIMEOUT + Duration::from_millis(200), "took {took:?}");
    }

    // Same store object: it reconnects by itself once Redis is back.
    redis.restart().await;
    let recovered = support::eventually("the store answers again", || async {
        store
            .check(&verified(&key, "after"), unix_now_millis())
            .await
            .is_ok()
    })
    .await;
    assert!(recovered < Duration::from_secs(5), "took {recovered:?}");
    let proof = verified(&key, "after-2");
    assert_eq!(
        store.check(&proof, unix_now_millis()).await,
        Ok(Freshness::Fresh)
    );
    assert_eq!(
        store.check(&proof, unix_now_millis()).await,
        Ok(Freshness::Replayed)
    );
}

#[tokio::test]
async fn a_store_made_while_redis_is_down_connects_when_it_comes_up() {
    let mut redis = RedisServer::start().await;
    redis.stop().await;
    let store = redis_store(&redis);
    let key = EcKey::generate("client");
    let proof = verified(&key, "early");
    assert!(matches!(
        store.check(&proof, unix_now_millis()).await,
        Err(ReplayError::Unavailable { .. })
    ));
    redis.restart().await;
    assert_eq!(
        store.check(&proof, unix_now_millis()).await,
        Ok(Freshness::Fresh)
    );
    assert_eq!(
        store.check(&proof, unix_now_millis()).await,
        Ok(Freshness::Replayed)
    );
}

#[tokio::test]
async fn a_silent_redis_is_unavailable_after_the_timeout() {
    // Accepts connections and never answers: a hung Redis, not a dead one.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let store =
        ReplayStore::Redis(RedisReplayStore::new(&format!("redis://{address}"), TIMEOUT).unwrap());
    let started = Instant::now();
    let result = store
        .check(
            &verified(&EcKey::generate("client"), "hung"),
            unix_now_millis(),
        )
        .await;
    let took = started.elapsed();
    assert!(
        matches!(result, Err(ReplayError::Unavailable { .. })),
        "{result:?}"
    );
    assert!(
        took >= TIMEOUT - Duration::from_millis(50) && took < TIMEOUT + Duration::from_millis(300),
        "took {took:?}"
    );
}
