//! Issuer signing keys: OIDC discovery, JWKS fetching, caching and refresh.
//!
//! ```text
//!  JwksRegistry ── one JwksCache per source (JWKS URI or issuer discovery),
//!       │          shared by every policy that names it, dropped with the
//!       │          last policy that uses it
//!       ▼
//!  JwksCache ── keys: ArcSwap<KeySet>   (read lock-free on every Check)
//!            ├─ background refresh      (Cache-Control max-age, clamped)
//!            └─ refetch on unknown kid  (coalesced + rate-limited)
//! ```
//!
//! A failed fetch never discards keys that were fetched before.

mod cache;
mod fetch;
mod keyset;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

pub use cache::{JwksCache, JwksState, KeysUnavailable};
pub use fetch::FetchError;
pub use keyset::{KeyFingerprint, KeySet, KeySetError};

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JwksSource {
    /// A JWKS document at a fixed URI.
    Uri(reqwest::Url),
    /// OIDC discovery: `jwks_uri` from `{issuer}/.well-known/openid-configuration`,
    /// whose `issuer` must equal the configured one.
    Discovery {
        /// The configured issuer (`iss`).
        issuer: String,
        /// The discovery document's URL.
        configuration: reqwest::Url,
    },
}

impl fmt::Display for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksSource::Uri(uri) => write!(f, "{uri}"),
            JwksSource::Discovery { configuration, .. } => write!(f, "{configuration}"),
        }
    }
}

/// Timeouts, bounds and intervals of JWKS fetching.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    /// Refresh interval when the response has no `Cache-Control: max-age`.
    pub refresh_interval: Duration,
    /// Lower bound for the refresh interval (also for `max-age`).
    pub min_refresh_interval: Duration,
    /// Upper bound for the refresh interval (also for `max-age`).
    pub max_refresh_interval: Duration,
    /// Minimum time between two fetches caused by unknown `kid`s.
    pub min_refetch_interval: Duration,
    /// Whole-request timeout of one HTTP fetch.
    pub fetch_timeout: Duration,
    /// Largest accepted response body.
    pub max_response_bytes: usize,
}

impl Default for JwksSettings {
    fn default() -> Self {
        JwksSettings {
            refresh_interval: Duration::from_secs(300),
            min_refresh_interval: Duration::from_secs(30),
            max_refresh_interval: Duration::from_secs(24 * 3600),
            min_refetch_interval: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(5),
            max_response_bytes: 1024 * 1024,
        }
    }
}

/// Hands out one shared [`JwksCache`] per [`JwksSource`].
///
/// The registry holds caches weakly: a cache (and its refresh task) lives as
/// long as some compiled policy holds it.
#[derive(Clone)]
pub struct JwksRegistry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    client: reqwest::Client,
    settings: JwksSettings,
    caches: Mutex<HashMap<JwksSource, Weak<JwksCache>>>,
}

impl JwksRegistry {
    /// A registry whose caches fetch with `settings`.
    pub fn new(settings: JwksSettings) -> Self {
        let client = reqwest::Client::builder()
            .timeout(settings.fetch_timeout)
            .connect_timeout(settings.fetch_timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("scopegate/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client configuration is static and valid");
        JwksRegistry {
            inner: Arc::new(RegistryInner {
                client,
                settings,
                caches: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The cache for `source`, created (and its refresh task started) on
    /// first use. Must be called within a Tokio runtime.
    pub fn cache(&self, source: &JwksSource) -> Arc<JwksCache> {
        let mut caches = self
            .inner
            .caches
            .lock()
            .expect("registry lock is never poisoned");
        if let Some(existing) = caches.get(source).and_then(Weak::upgrade) {
            return existing;
        }
        caches.retain(|_, weak| weak.strong_count() > 0);
        let cache = JwksCache::start(
            source.clone(),
            self.inner.client.clone(),
            self.inner.settings.clone(),
        );
        caches.insert(source.clone(), Arc::downgrade(&cache));
        cache
    }

    /// The state of every live cache, for readiness and status reporting.
    pub fn states(&self) -> Vec<JwksState> {
        let caches = self
            .inner
            .caches
            .lock()
            .expect("registry lock is never poisoned");
        caches
            .values()
            .filter_map(Weak::upgrade)
            .map(|cache| cache.state())
            .collect()
    }
}
