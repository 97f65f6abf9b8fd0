//! DPoP `jti` replay detection (RFC 9449 §11.1): a proof is accepted once
//! per key and URI while its `iat` is in the window.
//!
//! * [`ReplayStore::InMemory`] remembers proofs in this replica only: a
//!   proof replayed to another replica behind the same load balancer is not
//!   caught. Bounded: when full, the least recently recorded proofs are
//!   forgotten first (they are the ones closest to leaving the window).
//! * [`ReplayStore::Redis`] shares them across replicas with one round trip
//!   per proof (`SET key 1 NX PX <ms>`) on a multiplexed, automatically
//!   reconnecting connection. When Redis is down or slow the answer is
//!   [`ReplayError::Unavailable`] — never "not seen": the Check must then
//!   fail closed (503).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::dpop::VerifiedProof;

/// The prefix of every key scopegate writes to Redis.
pub const REDIS_KEY_PREFIX: &str = "scopegate:dpop:";

/// Whether a proof was seen before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// First use: recorded now.
    Fresh,
    /// The same `jti` was already used with this key and URI.
    Replayed,
}

/// Why a replay store cannot answer: the Check answers 503, never allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The shared store did not answer in time or failed.
    #[error("the DPoP replay store {store} is unavailable: {cause}")]
    Unavailable {
        /// The store's address (without credentials).
        store: String,
        /// What went wrong.
        cause: String,
    },
}

impl ReplayError {
    /// A short, stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ReplayError::Unavailable { .. } => "replay_store_unavailable",
        }
    }
}

/// Why a replay store cannot be configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayConfigError {
    /// The `--replay-store` value is not `memory` or a `redis://` URL.
    #[error(
        "--replay-store must be \"memory\" or redis://[user:password@]HOST:PORT[/DB]; got a {0} URL"
    )]
    UnsupportedScheme(String),
    /// The Redis URL does not parse.
    #[error("--replay-store is not a valid Redis URL: {0}")]
    InvalidRedisUrl(String),
}

/// What identifies one use of a proof: SHA-256 over the key's thumbprint,
/// the normalized `htu` and the `jti`, each length-prefixed so no two
/// triples hash alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplayKey([u8; 32]);

impl ReplayKey {
    /// The key for a (`jkt`, `htu`, `jti`) triple.
    pub fn new(jkt: &str, htu: &str, jti: &str) -> Self {
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for part in [jkt, htu, jti] {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part.as_bytes());
        }
        let mut digest = [0; 32];
        digest.copy_from_slice(context.finish().as_ref());
        ReplayKey(digest)
    }

    /// The key of a verified proof.
    pub fn of(proof: &VerifiedProof) -> Self {
        ReplayKey::new(&proof.jkt, proof.htu.as_str(), &proof.jti)
    }

    /// The Redis key: [`REDIS_KEY_PREFIX`] + the hash in hex.
    pub fn redis_key(&self) -> String {
        let mut key = String::with_capacity(REDIS_KEY_PREFIX.len() + 64);
        key.push_str(REDIS_KEY_PREFIX);
        for byte in self.0 {
            key.push_str(&format!("{byte:02x}"));
        }
        key
    }
}

/// How long, from `now_millis`, a proof's record must live: until
/// [`VerifiedProof::rejected_from_millis`], to the millisecond (at least one
/// millisecond). Both stores start the TTL when they write the record, after
/// `now_millis` was read, so the record never ends before the proof's
/// acceptance does.
pub fn record_ttl(proof: &VerifiedProof, now_millis: u64) -> Duration {
    Duration::from_millis(
        proof
            .rejected_from_millis()
            .saturating_sub(now_millis)
            .max(1),
    )
}

/// Where proofs are remembered.
#[derive(Clone)]
pub enum ReplayStore {
    /// This replica's memory.
    InMemory(InMemoryReplayStore),
    /// A Redis server shared by all replicas.
    Redis(RedisReplayStore),
}

impl ReplayStore {
    /// A store from the `--replay-store` value: `memory` (or nothing) for an
    /// in-memory store, `redis://…` for Redis. Connects lazily.
    pub fn from_flag(value: Option<&str>) -> Result<Self, ReplayConfigError> {
        match value {
            None | Some("memory") => Ok(ReplayStore::InMemory(InMemoryReplayStore::new(
                InMemoryReplayStore::DEFAULT_MAX_ENTRIES,
            ))),
            Some(url) => Ok(ReplayStore::Redis(RedisReplayStore::new(
                url,
                RedisReplayStore::DEFAULT_TIMEOUT,
            )?)),
        }
    }

    /// Records `proof` at `now_millis` (milliseconds since the Unix epoch)
    /// and says whether it was new. The record lasts [`record_ttl`]: through
    /// the last millisecond at which the proof is accepted.
    pub async fn check(
        &self,
        proof: &VerifiedProof,
        now_millis: u64,
    ) -> Result<Freshness, ReplayError> {
        self.check_key(ReplayKey::of(proof), record_ttl(proof, now_millis))
            .await
    }

    /// Records `key` for `ttl` unless it is already recorded.
    pub async fn check_key(&self, key: ReplayKey, ttl: Duration) -> Result<Freshness, ReplayError> {
        match self {
            ReplayStore::InMemory(store) => Ok(store.check_key(key, ttl)),
            ReplayStore::Redis(store) => store.check_key(key, ttl).await,
        }
    }
}

impl fmt::Debug for ReplayStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayStore::InMemory(store) => f
                .debug_tuple("InMemory")
                .field(&store.cache.entry_count())
                .finish(),
            ReplayStore::Redis(store) => f.debug_tuple("Redis").field(&store.address()).finish(),
        }
    }
}

/// A bounded in-memory record of proofs, each kept for its own TTL.
#[derive(Clone)]
pub struct InMemoryReplayStore {
    cache: moka::sync::Cache<ReplayKey, Duration>,
    /// Look-up-then-insert runs under the key's stripe lock, so that of
    /// concurrent uses of one proof exactly one is fresh (moka's entry API
    /// alone let two through under load).
    stripes: Arc<[std::sync::Mutex<()>; STRIPES]>,
}

/// Lock stripes of the in-memory store.
const STRIPES: usize = 64;

/// Expires each record after the TTL stored as its value.
struct RecordTtl;

impl moka::Expiry<ReplayKey, Duration> for RecordTtl {
    fn expire_after_create(&self, _: &ReplayKey, ttl: &Duration, _: Instant) -> Option<Duration> {
        Some(*ttl)
    }
}

impl InMemoryReplayStore {
    /// 100 000 records (an estimated 10–20 MB): about 1 500 DPoP requests a
    /// second per replica for the default 65-second window.
    pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;

    /// A store remembering at most `max_entries` proofs.
    pub fn new(max_entries: u64) -> Self {
        InMemoryReplayStore {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                // LRU, not TinyLFU: every new proof must be admitted; the
                // oldest records go first.
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .expire_after(RecordTtl)
                .build(),
            stripes: Arc::new(std::array::from_fn(|_| std::sync::Mutex::new(()))),
        }
    }

    /// Records `key` for `ttl` unless it is already recorded (atomic: of
    /// concurrent callers with the same key, exactly one sees `Fresh`).
    pub fn check_key(&self, key: ReplayKey, ttl: Duration) -> Freshness {
        let stripe = usize::from(key.0[0]) % STRIPES;
        let _guard = self.stripes[stripe]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.cache.contains_key(&key) {
            return Freshness::Replayed;
        }
        self.cache.insert(key, ttl);
        Freshness::Fresh
    }
}

/// Proof records in Redis, shared by every replica.
#[derive(Clone)]
pub struct RedisReplayStore {
    inner: Arc<RedisInner>,
}

struct RedisInner {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// Set by the first check that connects; the manager then reconnects
    /// by itself after a failure.
    connection: OnceCell<ConnectionManager>,
    address: String,
    timeout: Duration,
}

impl RedisReplayStore {
    /// The default bound on one check, connecting included.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);

    /// A store on the Redis server at `url` (`redis://HOST:PORT[/DB]`,
    /// optionally with credentials). Connects on first use, so scopegate
    /// starts while Redis is down, and reconnects by itself; each check
    /// waits at most `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, ReplayConfigError> {
        let scheme = url.split_once("://").map_or("scheme-less", |(s, _)| s);
        if scheme != "redis" {
            return Err(ReplayConfigError::UnsupportedScheme(scheme.to_string()));
        }
        let client = redis::Client::open(url)
            .map_err(|e| ReplayConfigError::InvalidRedisUrl(e.to_string()))?;
        let address = client.get_connection_info().addr.to_string();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            // Fail this check fast; the next one reconnects.
            .set_number_of_retries(0);
        Ok(RedisReplayStore {
            inner: Arc::new(RedisInner {
                client,
                config,
                connection: OnceCell::new(),
                address,
                timeout,
            }),
        })
    }

    /// The server's `host:port`.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// Records `key` for `ttl` unless it is already recorded: one
    /// `SET key 1 NX PX ttl` round trip (after the first connection),
    /// bounded by the timeout.
    pub async fn check_key(&self, key: ReplayKey, ttl: Duration) -> Result<Freshness, ReplayError> {
        let timeout = self.inner.timeout;
        tokio::time::timeout(timeout, self.set_nx(key, ttl))
            .await
            .map_err(|_| self.unavailable(format!("no answer within {timeout:?}")))?
    }

    async fn set_nx(&self, key: ReplayKey, ttl: Duration) -> Result<Freshness, ReplayError> {
        let inner = &*self.inner;
        let mut connection = inner
            .connection
            .get_or_try_init(|| {
                ConnectionManager::new_with_config(inner.client.clone(), inner.config.clone())
            })
            .await
            .map_err(|e| self.unavailable(e.to_string()))?
            .clone();
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let reply: redis::Value = redis::cmd("SET")
            .arg(key.redis_key())
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(millis)
            .query_async(&mut connection)
            .await
            .map_err(|e| self.unavailable(e.to_string()))?;
        match reply {
            redis::Value::Okay => Ok(Freshness::Fresh),
            redis::Value::SimpleString(s) if s == "OK" => Ok(Freshness::Fresh),
            redis::Value::Nil => Ok(Freshness::Replayed),
            other => Err(self.unavailable(format!("unexpected reply to SET NX: {other:?}"))),
        }
    }

    fn unavailable(&self, cause: String) -> ReplayError {
        ReplayError::Unavailable {
            store: self.inner.address.clone(),
            cause,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_their_parts() {
        let key = ReplayKey::new("jkt", "https://e.com/", "jti");
        assert_eq!(key, ReplayKey::new("jkt", "https://e.com/", "jti"));
        assert_ne!(key, ReplayKey::new("jkt", "https://e.com/", "jti2"));
        assert_ne!(key, ReplayKey::new("jkt2", "https://e.com/", "jti"));
        assert_ne!(key, ReplayKey::new("jkt", "https://e.com/x", "jti"));
        // Moving a byte from one part to the next is another key.
        assert_ne!(
            ReplayKey::new("ab", "c", "d"),
            ReplayKey::new("a", "bc", "d")
        );
        let redis_key = key.redis_key();
        assert!(redis_key.starts_with("scopegate:dpop:"));
        assert_eq!(redis_key.len(), REDIS_KEY_PREFIX.len() + 64);
    }

    #[test]
    fn in_memory_records_once_then_forgets_after_the_ttl() {
        let store = InMemoryReplayStore::new(100);
        let key = ReplayKey::new("jkt", "https://e.com/", "jti");
        let ttl = Duration::from_millis(300);
        assert_eq!(store.check_key(key, ttl), Freshness::Fresh);
        assert_eq!(store.check_key(key, ttl), Freshness::Replayed);
        let other = ReplayKey::new("jkt", "https://e.com/", "jti-2");
        assert_eq!(store.check_key(other, ttl), Freshness::Fresh);
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(store.check_key(key, ttl), Freshness::Fresh);
    }

    /// A proof verified with `replay_until` (the default window, ES256).
    fn proof_until(replay_until: u64) -> VerifiedProof {
        VerifiedProof {
            jkt: "jkt".into(),
            jti: "jti".into(),
            iat: replay_until - 65,
            htu: "https://e.com/".parse().unwrap(),
            algorithm: crate::token::Algorithm::ES256,
            replay_until,
        }
    }

    #[test]
    fn a_record_lives_through_the_proofs_last_accepted_millisecond() {
        let until = 1_700_000_065;
        let proof = proof_until(until);
        let rejected_from = (until + 1) * 1000;
        // First use at any millisecond the proof is accepted in.
        for first_use in (until - 65) * 1000..rejected_from {
            let ttl = u64::try_from(record_ttl(&proof, first_use).as_millis()).unwrap();
            assert_eq!(first_use + ttl, rejected_from, "first use at {first_use}");
        }
        // Never less than a millisecond.
        assert_eq!(
            record_ttl(&proof, rejected_from + 5),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn in_memory_is_bounded_and_keeps_the_newest() {
        let store = InMemoryReplayStore::new(1_000);
        let ttl = Duration::from_secs(60);
        let key = |i: u32| ReplayKey::new("jkt", "https://e.com/", &i.to_string());
        for i in 0..5_000 {
            assert_eq!(store.check_key(key(i), ttl), Freshness::Fresh);
        }
        store.cache.run_pending_tasks();
        assert!(
            store.cache.entry_count() <= 1_000,
            "{}",
            store.cache.entry_count()
        );
        // LRU admits every new record: the most recent ones are all kept.
        for i in 4_900..5_000 {
            assert_eq!(store.check_key(key(i), ttl), Freshness::Replayed, "{i}");
        }
    }

    #[test]
    fn concurrent_uses_of_one_proof_see_one_fresh() {
        let store = InMemoryReplayStore::new(100);
        let key = ReplayKey::new("jkt", "https://e.com/", "jti");
        let fresh: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| store.check_key(key, Duration::from_secs(60))))
                .collect();
            handles
                .into_iter()
                .map(|h| usize::from(h.join().unwrap() == Freshness::Fresh))
                .sum()
        });
        assert_eq!(fresh, 1);
    }

    #[tokio::test]
    async fn the_flag_selects_the_store() {
        assert!(matches!(
            ReplayStore::from_flag(None),
            Ok(ReplayStore::InMemory(_))
        ));
        assert!(matches!(
            ReplayStore::from_flag(Some("redis://127.0.0.1:6379")),
            Ok(ReplayStore::Redis(_))
        ));
        assert_eq!(
            ReplayStore::from_flag(Some("rediss://cache:6380")).unwrap_err(),
            ReplayConfigError::UnsupportedScheme("rediss".into())
        );
        assert!(matches!(
            ReplayStore::from_flag(Some("redis://cache:notaport")),
            Err(ReplayConfigError::InvalidRedisUrl(_))
        ));
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_unavailable_not_fresh() {
        // A port nothing listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = RedisReplayStore::new(
            &format!("redis://127.0.0.1:{port}"),
            Duration::from_millis(200),
        )
        .unwrap();
        let result = store
            .check_key(ReplayKey::new("a", "b", "c"), Duration::from_secs(1))
            .await;
        assert!(
            matches!(result, Err(ReplayError::Unavailable { .. })),
            "{result:?}"
        );
    }
}
