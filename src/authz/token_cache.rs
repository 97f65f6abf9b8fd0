//! The verified-token cache: a token whose signature and registered claims
//! verified once is not verified again while the entry is valid. Only the
//! verification is cached, never a decision: rules (scopes, clients) run on
//! every Check.
//!
//! ```text
//!  SHA-256(token) + length ──► Entry { prepared token (kept claims, scopes, exp, Verification), key: (kid, alg, fingerprint) }
//!
//!  a hit counts only if, now:
//!    * the policy's Verification (issuer, audiences, algorithms, skew, scope claims) equals the entry's,
//!    * the entry kept every claim the policy reads (its ClaimSelection),
//!    * the issuer's current JWKS still has a key with that kid for that alg, with the same fingerprint,
//!    * now < min(exp + clock skew, inserted + max TTL).
//!  anything else is a miss: the token is verified in full, and the entry replaced or dropped.
//! ```
//!
//! **The key** is the token's SHA-256 digest plus its length, not the token:
//! 36 bytes instead of ~1 KiB for an Auth0 access token, the largest single
//! saving per entry. It cannot be made to collide: to be served another
//! token's entry, a forged token would need the same SHA-256 digest, a
//! second preimage (2^256 work), and the length check rules out everything
//! but same-length preimages on top. Hashing costs ~0.5 µs per Check with
//! the CPU's SHA extensions. Failed verifications are never cached, so an
//! attacker cannot fill the cache with garbage: only tokens that verify are
//! inserted, and the cache's TinyLFU admission keeps frequently used entries
//! when it is full.
//!
//! **An entry keeps what a Check reads, not the token**: the claims its
//! policy can read ([`ClaimSelection`]: `sub`, `azp`, `client_id`, `act`,
//! `cnf`, the claim headers' claims, the claims conditions name), `exp`, the
//! scopes sorted and joined once, and the verification rules. A policy that
//! reads a claim the entry did not keep (added later, or another policy of
//! the same issuer) misses once and re-verifies.
//!
//! The cache is bounded by bytes as well as by entries: each entry weighs
//! its real size ([`Entry::bytes`]), but at least `max_bytes /
//! max_entries`, so one budget enforces both bounds. A flood of large valid
//! tokens evicts entries instead of growing the process.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;

use crate::jwks::{JwksCache, KeyFingerprint};
use crate::policy::{ServedIssuer, Verification};
use crate::token::{
    Algorithm, ClaimSelection, ReadClaims, RetainedClaims, ScopeList, VerifiedToken,
};

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

/// A verified token reduced to what a Check reads from it: the claims its
/// policy can read ([`ClaimSelection`]), `exp`, the scopes parsed, sorted
/// and joined once, and the rules it verified under.
#[derive(Debug)]
pub struct PreparedToken {
    claims: RetainedClaims,
    expires_at: u64,
    verification: Arc<Verification>,
    /// The granted scopes, sorted and deduplicated.
    scopes: ScopeList,
    /// The claims as a CEL value, built the first time a condition reads
    /// them and kept with the cached token.
    condition_claims: std::sync::OnceLock<cel::Value>,
}

impl PreparedToken {
    /// Prepares `token`, verified under `verification` (its scopes read
    /// from the scope claims there), keeping the claims `selection` names.
    pub fn new(
        token: VerifiedToken,
        verification: Arc<Verification>,
        selection: &Arc<ClaimSelection>,
    ) -> Self {
        let scopes = ScopeList::from(token.scopes(&verification.scope_claims));
        let expires_at = token.expires_at();
        PreparedToken {
            claims: token.retain(selection),
            expires_at,
            verification,
            scopes,
            condition_claims: std::sync::OnceLock::new(),
        }
    }

    /// Whether `scope` is granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }

    /// The granted scopes, sorted, deduplicated and space-separated.
    pub fn scope_line(&self) -> &str {
        self.scopes.line()
    }

    /// The granted scopes, sorted and deduplicated.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scopes.iter()
    }

    /// `exp`, in seconds since the Unix epoch.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// The issuer (`iss`) it verified under.
    pub fn issuer(&self) -> &str {
        &self.verification.issuer.issuer
    }

    /// The claims as a CEL value (`claims` of conditions), built once.
    pub fn condition_claims(&self) -> &cel::Value {
        self.condition_claims.get_or_init(|| {
            let claims: serde_json::Map<String, serde_json::Value> = self
                .claims
                .iter()
                .map(|(name, value)| (name.to_string(), value.clone()))
                .collect();
            crate::policy::conditions::to_cel(&serde_json::Value::Object(claims))
        })
    }

    /// Bytes this value holds, itself included.
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.claims.heap_bytes() + self.scopes.heap_bytes()
    }
}

impl ReadClaims for PreparedToken {
    fn top_level_claim(&self, name: &str) -> Option<&serde_json::Value> {
        self.claims.top_level_claim(name)
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

/// The cache key of a token: its SHA-256 digest and its length. Finding
/// another token with the same key is a SHA-256 second preimage, so a key
/// stands for its token as surely as the token itself would, in 36 bytes
/// instead of the token's ~1 KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TokenKey {
    digest: [u8; 32],
    length: u32,
}

impl TokenKey {
    fn of(token: &str) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        TokenKey {
            digest: digest
                .as_ref()
                .try_into()
                .expect("a SHA-256 digest has 32 bytes"),
            length: u32::try_from(token.len()).unwrap_or(u32::MAX),
        }
    }
}

struct Entry {
    prepared: Arc<PreparedToken>,
    key: KeyBinding,
    /// Unix seconds: the entry serves strictly before this.
    valid_until: u64,
    /// How long the cache keeps it (the same bound, as a duration).
    lifetime: Duration,
    /// What it weighs in the byte budget.
    weight: u32,
}

/// Per-entry bookkeeping of the cache itself (its node, the key's and the
/// entry's `Arc`s, the expiry timer, ~300 bytes for moka 0.12) plus
/// malloc's per-allocation overhead over an entry's dozen allocations:
/// with it, an Auth0-shaped entry counts ~1 KiB, what it adds to RSS
/// (1,030 bytes per entry over 100,000 entries, docs/performance.md).
const CACHE_NODE_BYTES: usize = 600;

impl Entry {
    /// The entry's real size: the key, the entry, the prepared token with
    /// its kept claims, and the cache's own bookkeeping.
    fn bytes(prepared: &PreparedToken, key: &KeyBinding) -> usize {
        std::mem::size_of::<TokenKey>()
            + std::mem::size_of::<Entry>()
            + prepared.heap_bytes()
            + key.kid.as_ref().map_or(0, |kid| kid.len())
            + CACHE_NODE_BYTES
    }

    /// Whether the entry still holds for a policy with these issuers that
    /// reads the `wanted` claims: it kept them, one of the issuers verifies
    /// under the entry's rules, and its current keys still hold the key that
    /// verified the token.
    fn still_valid(&self, issuers: &[ServedIssuer], wanted: &ClaimSelection, now: u64) -> bool {
        let verification = &self.prepared.verification;
        now < self.valid_until
            && self.prepared.claims.cover(wanted)
            && issuers
                .iter()
                .find(|issuer| {
                    Arc::ptr_eq(verification, &issuer.verification)
                        || **verification == *issuer.verification
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

type Entries = moka::sync::Cache<TokenKey, Arc<Entry>, foldhash::fast::RandomState>;

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

impl Expiry<TokenKey, Arc<Entry>> for EntryLifetime {
    fn expire_after_create(
        &self,
        _: &TokenKey,
        entry: &Arc<Entry>,
        _: Instant,
    ) -> Option<Duration> {
        Some(entry.lifetime)
    }

    fn expire_after_update(
        &self,
        _: &TokenKey,
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
    /// (Unix seconds) and kept the claims the policy reads (`wanted`).
    /// Counts a hit or a miss; an entry that no longer holds is dropped.
    pub fn get(
        &self,
        token: &str,
        issuers: &[ServedIssuer],
        wanted: &ClaimSelection,
        now: u64,
    ) -> Option<Arc<PreparedToken>> {
        let entries = self.entries.as_ref()?;
        let key = TokenKey::of(token);
        match entries.get(&key) {
            Some(entry) if entry.still_valid(issuers, wanted, now) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                crate::metrics::token_cache_hit();
                Some(entry.prepared.clone())
            }
            stale => {
                if stale.is_some() {
                    entries.invalidate(&key);
                }
                self.misses.fetch_add(1, Ordering::Relaxed);
                crate::metrics::token_cache_miss();
                None
            }
        }
    }

    /// Caches a token that has just verified with the key `key`, until
    /// `exp` (plus the clock skew) or the max TTL, whichever comes first.
    pub fn insert(&self, token: &str, prepared: Arc<PreparedToken>, key: KeyBinding, now: u64) {
        let Some(entries) = &self.entries else {
            return;
        };
        let expires = prepared
            .expires_at()
            .saturating_add(prepared.verification.issuer.clock_skew_seconds);
        let lifetime = Duration::from_secs(expires.saturating_sub(now)).min(self.max_ttl);
        if lifetime.is_zero() {
            return;
        }
        let bytes = Entry::bytes(&prepared, &key);
        let weight = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .max(self.min_entry_bytes);
        let entry = Entry {
            prepared,
            key,
            valid_until: now.saturating_add(lifetime.as_secs()),
            lifetime,
            weight,
        };
        entries.insert(TokenKey::of(token), Arc::new(entry));
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
