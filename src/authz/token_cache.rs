//! The verified-token cache: a token whose signature and registered claims
//! verified once is not verified again while the entry is valid. Only the
//! verification is cached, never a decision: rules (scopes, clients) run on
//! every Check.
//!
//! ```text
//!  token (full string, the key) ──► Entry { prepared token, verified under: (Verification, kid, alg, key fingerprint) }
//!
//!  a hit counts only if, now:
//!    * the policy's Verification (issuer, audiences, algorithms, skew, scope claims) equals the entry's,
//!    * the issuer's current JWKS still has a key with that kid for that alg, with the same fingerprint,
//!    * now < min(exp + clock skew, inserted + max TTL).
//!  anything else is a miss: the token is verified in full, and the entry replaced or dropped.
//! ```
//!
//! The key is the whole token compared byte for byte, so no collision can
//! turn one token into another. Failed verifications are never cached, so an
//! attacker cannot fill the cache with garbage: only tokens that verify are
//! inserted, and the cache's TinyLFU admission keeps frequently used entries
//! when it is full.
//!
//! The cache is bounded by bytes as well as by entries: each entry weighs
//! its real size ([`Entry::bytes`]: the token, the claims as parsed, the
//! prepared scopes and the bookkeeping), but at least `max_bytes /
//! max_entries`, so one budget enforces both bounds. A flood of large valid
//! tokens evicts entries instead of growing the process.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;

use crate::jwks::{JwksCache, KeyFingerprint};
use crate::policy::{ServedIssuer, Verification};
use crate::token::{Algorithm, VerifiedToken};

/// Size and lifetime bounds of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCacheSettings {
    /// Most entries held; 0 disables the cache.
    pub max_entries: u64,
    /// Most bytes the entries may take (their counted size); 0 disables the
    /// cache.
    pub max_bytes: u64,
    /// Longest an entry lives, whatever the token's `exp`; zero disables the
    /// cache.
    pub max_ttl: Duration,
}

impl Default for TokenCacheSettings {
    fn default() -> Self {
        TokenCacheSettings {
            max_entries: 100_000,
            max_bytes: DEFAULT_MAX_BYTES,
            max_ttl: Duration::from_secs(300),
        }
    }
}

/// The default byte budget: 64 MiB. With the chart's 256 MiB memory limit
/// it leaves room for 10,000 policies, the runtime and allocator slack
/// under a flood of 16 KiB tokens (measured in docs/security.md).
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

impl TokenCacheSettings {
    /// Whether these settings turn the cache on.
    pub fn enabled(&self) -> bool {
        self.max_entries > 0 && self.max_bytes > 0 && !self.max_ttl.is_zero()
    }

    /// The least an entry weighs, so that `max_bytes` also bounds the
    /// number of entries by `max_entries`.
    fn min_entry_bytes(&self) -> u32 {
        u32::try_from(self.max_bytes.div_ceil(self.max_entries.max(1))).unwrap_or(u32::MAX)
    }
}

/// A verified token with what every Check reads from it prepared once: its
/// scopes, parsed, sorted and joined. Derefs to the [`VerifiedToken`].
#[derive(Debug)]
pub struct PreparedToken {
    token: VerifiedToken,
    scopes: Box<[Box<str>]>,
    scope_line: Box<str>,
    /// The claims as a CEL value, built the first time a condition reads
    /// them and kept with the cached token.
    condition_claims: std::sync::OnceLock<cel::Value>,
}

impl PreparedToken {
    /// Prepares `token`, reading scopes from `scope_claims`.
    pub fn new(token: VerifiedToken, scope_claims: &[Box<str>]) -> Self {
        let scopes = token.scopes(scope_claims);
        let scope_line = scopes.joined().into_boxed_str();
        let scopes = scopes.iter().map(Box::from).collect();
        PreparedToken {
            token,
            scopes,
            scope_line,
            condition_claims: std::sync::OnceLock::new(),
        }
    }

    /// Whether `scope` is granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.binary_search_by(|s| (**s).cmp(scope)).is_ok()
    }

    /// The granted scopes, sorted, deduplicated and space-separated.
    pub fn scope_line(&self) -> &str {
        &self.scope_line
    }

    /// The granted scopes, sorted and deduplicated.
    pub fn scopes(&self) -> &[Box<str>] {
        &self.scopes
    }

    /// The claims as a CEL value (`claims` of conditions), built once.
    pub fn condition_claims(&self) -> &cel::Value {
        self.condition_claims.get_or_init(|| {
            crate::policy::conditions::to_cel(&serde_json::Value::Object(
                self.token.claims().clone(),
            ))
        })
    }

    /// Bytes this value holds, itself included.
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.token.heap_bytes()
            + self
                .scopes
                .iter()
                .map(|s| s.len() + std::mem::size_of::<Box<str>>())
                .sum::<usize>()
            + self.scope_line.len()
    }
}

impl Deref for PreparedToken {
    type Target = VerifiedToken;

    fn deref(&self) -> &VerifiedToken {
        &self.token
    }
}

/// The key a token was verified with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBinding {
    /// The token's `kid`.
    pub kid: Option<Box<str>>,
    /// The token's `alg`.
    pub algorithm: Algorithm,
    /// The verifying key's fingerprint.
    pub fingerprint: KeyFingerprint,
}

struct Entry {
    prepared: Arc<PreparedToken>,
    verification: Arc<Verification>,
    key: KeyBinding,
    /// Unix seconds: the entry serves strictly before this.
    valid_until: u64,
    /// How long the cache keeps it (the same bound, as a duration).
    lifetime: Duration,
    /// What it weighs in the byte budget.
    weight: u32,
}

/// Per-entry bookkeeping of the cache itself (its node, the key's and the
/// entry's `Arc`s, the expiry timer), measured roughly for moka 0.12.
const CACHE_NODE_BYTES: usize = 256;

impl Entry {
    /// The entry's real size: the key (the token), the entry, the prepared
    /// token with its parsed claims, and the cache's own bookkeeping.
    fn bytes(token: &str, prepared: &PreparedToken, key: &KeyBinding) -> usize {
        token.len()
            + std::mem::size_of::<Entry>()
            + prepared.heap_bytes()
            + key.kid.as_ref().map_or(0, |kid| kid.len())
            + CACHE_NODE_BYTES
    }

    /// Whether the entry still holds for a policy with these issuers: one
    /// of them verifies under the entry's rules, and its current keys still
    /// hold the key that verified the token.
    fn still_valid(&self, issuers: &[ServedIssuer], now: u64) -> bool {
        now < self.valid_until
            && issuers
                .iter()
                .find(|issuer| {
                    Arc::ptr_eq(&self.verification, &issuer.verification)
                        || *self.verification == *issuer.verification
                })
                .is_some_and(|issuer| self.key_still_published(&issuer.keys))
    }

    fn key_still_published(&self, keys: &JwksCache) -> bool {
        keys.current().is_some_and(|set| {
            set.fingerprint(self.key.kid.as_deref(), self.key.algorithm)
                == Some(self.key.fingerprint)
        })
    }
}

type Entries = moka::sync::Cache<Box<str>, Arc<Entry>, foldhash::fast::RandomState>;

/// The cache, with hit and miss counters. Cheap to share behind an `Arc`.
pub struct TokenCache {
    entries: Option<Entries>,
    /// See [`TokenCacheSettings::min_entry_bytes`].
    min_entry_bytes: u32,
    max_ttl: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("enabled", &self.entries.is_some())
            .field("hits", &self.hits())
            .field("misses", &self.misses())
            .finish_non_exhaustive()
    }
}

/// Each entry expires at its own `valid_until`.
struct EntryLifetime;

impl Expiry<Box<str>, Arc<Entry>> for EntryLifetime {
    fn expire_after_create(
        &self,
        _: &Box<str>,
        entry: &Arc<Entry>,
        _: Instant,
    ) -> Option<Duration> {
        Some(entry.lifetime)
    }

    fn expire_after_update(
        &self,
        _: &Box<str>,
        entry: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.lifetime)
    }
}

impl TokenCache {
    /// A cache with these bounds (disabled if they say so).
    pub fn new(settings: TokenCacheSettings) -> Self {
        let entries = settings.enabled().then(|| {
            moka::sync::Cache::builder()
                .max_capacity(settings.max_bytes)
                .weigher(|_, entry: &Arc<Entry>| entry.weight)
                .expire_after(EntryLifetime)
                .build_with_hasher(foldhash::fast::RandomState::default())
        });
        TokenCache {
            entries,
            min_entry_bytes: settings.min_entry_bytes(),
            max_ttl: settings.max_ttl,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// A cache that holds nothing: every token is verified in full.
    pub fn disabled() -> Self {
        TokenCache::new(TokenCacheSettings {
            max_entries: 0,
            max_bytes: 0,
            max_ttl: Duration::ZERO,
        })
    }

    /// Whether the cache is on.
    pub fn is_enabled(&self) -> bool {
        self.entries.is_some()
    }

    /// The prepared token cached for `token`, if the entry still holds for
    /// one of a policy's `issuers` (its rules and its current keys) at `now`
    /// (Unix seconds). Counts a hit or a miss; an entry that no longer holds
    /// is dropped.
    pub fn get(
        &self,
        token: &str,
        issuers: &[ServedIssuer],
        now: u64,
    ) -> Option<Arc<PreparedToken>> {
        let entries = self.entries.as_ref()?;
        match entries.get(token) {
            Some(entry) if entry.still_valid(issuers, now) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                crate::metrics::token_cache_hit();
                Some(entry.prepared.clone())
            }
            stale => {
                if stale.is_some() {
                    entries.invalidate(token);
                }
                self.misses.fetch_add(1, Ordering::Relaxed);
                crate::metrics::token_cache_miss();
                None
            }
        }
    }

    /// Caches a token that has just verified under `verification` with the
    /// key `key`, until `exp` (plus the clock skew) or the max TTL, whichever
    /// comes first.
    pub fn insert(
        &self,
        token: &str,
        prepared: Arc<PreparedToken>,
        verification: Arc<Verification>,
        key: KeyBinding,
        now: u64,
    ) {
        let Some(entries) = &self.entries else {
            return;
        };
        let expires = prepared
            .expires_at()
            .saturating_add(verification.issuer.clock_skew_seconds);
        let lifetime = Duration::from_secs(expires.saturating_sub(now)).min(self.max_ttl);
        if lifetime.is_zero() {
            return;
        }
        let bytes = Entry::bytes(token, &prepared, &key);
        let weight = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .max(self.min_entry_bytes);
        let entry = Entry {
            prepared,
            verification,
            key,
            valid_until: now.saturating_add(lifetime.as_secs()),
            lifetime,
            weight,
        };
        entries.insert(token.into(), Arc::new(entry));
    }

    /// Checks served from the cache so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Cache lookups that had to verify the token in full so far (not
    /// counted while the cache is disabled).
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Entries held (approximate: pending evictions may not be applied yet).
    pub fn entry_count(&self) -> u64 {
        self.entries.as_ref().map_or(0, |e| {
            e.run_pending_tasks();
            e.entry_count()
        })
    }

    /// Bytes the entries weigh against the budget (approximate, like
    /// [`TokenCache::entry_count`]): `scopegate_token_cache_bytes`.
    pub fn weighted_bytes(&self) -> u64 {
        self.entries.as_ref().map_or(0, |e| {
            e.run_pending_tasks();
            e.weighted_size()
        })
    }
}
