//! One issuer's key cache: lock-free reads, coalesced and rate-limited
//! refetches, background refresh.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use serde::Deserialize;
use tracing::Instrument as _;

use super::fetch::{FetchError, get_bounded};
use super::guard::{check_fetch_url, redacted};
use super::{JwksSettings, JwksSource, KeySet, json};

/// The cached keys of one [`JwksSource`].
pub struct JwksCache {
    source: JwksSource,
    /// `source` as the `jwks_uri` label of metrics and spans.
    label: Arc<str>,
    client: reqwest::Client,
    settings: JwksSettings,
    keys: ArcSwapOption<KeySet>,
    /// Incremented after every fetch attempt; lets waiters see that a fetch
    /// happened while they queued for `fetch_lock`.
    attempts: AtomicU64,
    fetch_lock: tokio::sync::Mutex<FetchState>,
    /// When a miss (unknown `kid`) was last answered by a fresh fetch, its
    /// own or one it waited for: misses within `min_refetch_interval` of it
    /// are answered at once, without queueing behind a fetch in flight (an
    /// issuer that hangs must not make every unknown-`kid` Check wait out
    /// the fetch timeout).
    last_miss_fetch_finished: Mutex<Option<Instant>>,
    report: Mutex<Report>,
    /// Keys given once ([`JwksCache::fixed`]): never fetched, a miss stays a miss.
    fixed: bool,
}

#[derive(Default)]
struct FetchState {
    /// The JWKS URI, once known (from the source or from discovery).
    jwks_uri: Option<reqwest::Url>,
}

#[derive(Default, Clone)]
struct Report {
    jwks_uri: Option<String>,
    last_success: Option<SystemTime>,
    last_error: Option<String>,
}

/// A snapshot of a cache's health, for `/readyz` and policy status.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JwksState {
    /// The configured source (JWKS URI or discovery URL).
    pub source: String,
    /// The JWKS URI in use, once known.
    pub jwks_uri: Option<String>,
    /// Usable keys in the cache.
    pub keys: usize,
    /// When keys were last fetched successfully.
    #[serde(with = "humantime_serde_opt")]
    pub last_success: Option<SystemTime>,
    /// The error of the last fetch, if it failed.
    pub last_error: Option<String>,
    /// Fetch attempts so far.
    pub fetch_attempts: u64,
}

/// No keys have ever been fetched for this issuer: the policy cannot decide
/// and answers 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signing keys of the issuer are not available: {}", last_error.as_deref().unwrap_or("not fetched yet"))]
pub struct KeysUnavailable {
    /// Why the last fetch failed.
    pub last_error: Option<String>,
}

/// The members of an OpenID configuration scopegate reads; absent ones are
/// reported by name (see [`json::required`]).
#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: Option<String>,
    jwks_uri: Option<String>,
}

impl JwksCache {
    /// Creates the cache and starts its refresh task (first fetch at once).
    pub(crate) fn start(
        source: JwksSource,
        client: reqwest::Client,
        settings: JwksSettings,
    ) -> Arc<Self> {
        let cache = Arc::new(JwksCache {
            label: source.to_string().into(),
            source,
            client,
            settings,
            keys: ArcSwapOption::empty(),
            attempts: AtomicU64::new(0),
            fetch_lock: tokio::sync::Mutex::new(FetchState::default()),
            last_miss_fetch_finished: Mutex::new(None),
            report: Mutex::new(Report::default()),
            fixed: false,
        });
        crate::metrics::watch_jwks_cache(&cache);
        tokio::spawn(refresh_loop(Arc::downgrade(&cache)));
        cache
    }

    /// A cache holding `keys` for `source`, which never fetches: for
    /// `scopegate test`, where tokens are signed by an in-memory issuer key.
    pub fn fixed(source: JwksSource, keys: KeySet) -> Arc<Self> {
        Self::never_fetching(source, ArcSwapOption::from_pointee(keys))
    }

    /// A cache without keys that never fetches: for computing policy
    /// states without serving them (`scopegate validate`).
    pub fn unfetched(source: JwksSource) -> Arc<Self> {
        Self::never_fetching(source, ArcSwapOption::empty())
    }

    fn never_fetching(source: JwksSource, keys: ArcSwapOption<KeySet>) -> Arc<Self> {
        Arc::new(JwksCache {
            label: source.to_string().into(),
            source,
            client: reqwest::Client::new(),
            settings: JwksSettings::default(),
            keys,
            attempts: AtomicU64::new(0),
            fetch_lock: tokio::sync::Mutex::new(FetchState::default()),
            last_miss_fetch_finished: Mutex::new(None),
            report: Mutex::new(Report::default()),
            fixed: true,
        })
    }

    /// The source these keys come from.
    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    /// The source, as the `jwks_uri` label of metrics and spans.
    pub fn metric_label(&self) -> &Arc<str> {
        &self.label
    }

    /// The current keys, without any fetching.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    /// Keys that can serve a token with this `kid`. On a miss (or before the
    /// first successful fetch) refetches once: concurrent misses share one
    /// fetch (or the background refresh in flight), and misses cause at most
    /// one fetch per `min_refetch_interval`. Returns the keys as they then
    /// are, so the caller reports an unknown `kid` if it is still missing.
    pub async fn keys_for(&self, kid: Option<&str>) -> Result<Arc<KeySet>, KeysUnavailable> {
        let seen_attempts = self.attempts.load(Ordering::Acquire);
        if let Some(keys) = self.keys.load_full()
            && keys.has_key(kid)
        {
            return Ok(keys);
        }
        if !self.fixed {
            self.refetch_after_miss(seen_attempts).await;
        }
        self.keys.load_full().ok_or_else(|| KeysUnavailable {
            last_error: self.lock_report().last_error.clone(),
        })
    }

    /// The cache's health.
    pub fn state(&self) -> JwksState {
        let report = self.lock_report().clone();
        JwksState {
            source: self.source.to_string(),
            jwks_uri: report.jwks_uri,
            keys: self.keys.load().as_ref().map_or(0, |k| k.len()),
            last_success: report.last_success,
            last_error: report.last_error,
            fetch_attempts: self.attempts.load(Ordering::Acquire),
        }
    }

    async fn refetch_after_miss(&self, seen_attempts: u64) {
        if self.miss_answered_recently() {
            return; // rate-limited: answer now rather than wait on a fetch
        }
        let mut state = self.fetch_lock.lock().await;
        if self.attempts.load(Ordering::Acquire) == seen_attempts {
            if self.miss_answered_recently() {
                return; // another miss was answered while this one queued
            }
            // The outcome is recorded in the report; the caller re-reads the keys.
            let _ = self.fetch_locked(&mut state).await;
        } // else another request fetched while this one waited
        *self.lock_miss_answered() = Some(Instant::now());
    }

    /// Whether a miss was answered by a fresh fetch within
    /// `min_refetch_interval`.
    fn miss_answered_recently(&self) -> bool {
        let min_interval = self.settings.min_refetch_interval;
        self.lock_miss_answered()
            .is_some_and(|at| at.elapsed() < min_interval)
    }

    fn lock_miss_answered(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.last_miss_fetch_finished
            .lock()
            .expect("never poisoned")
    }

    /// Fetches and stores keys; returns the server's max-age on success.
    async fn fetch_locked(&self, state: &mut FetchState) -> Result<Option<Duration>, ()> {
        let span = tracing::debug_span!("jwks.fetch", jwks_uri = %self.label, result = tracing::field::Empty);
        let result = self.fetch(state).instrument(span.clone()).await;
        let result_label = result
            .as_ref()
            .map_or_else(FetchError::label, |_| "success");
        span.record("result", result_label);
        crate::metrics::jwks_fetch(self, result_label);
        let outcome = {
            let mut report = self.lock_report();
            report.jwks_uri = state.jwks_uri.as_ref().map(ToString::to_string);
            match result {
                Ok((keys, max_age)) => {
                    tracing::debug!(source = %self.source, keys = keys.len(), "fetched JWKS");
                    self.keys.store(Some(Arc::new(keys)));
                    report.last_success = Some(SystemTime::now());
                    report.last_error = None;
                    Ok(max_age)
                }
                Err(error) => {
                    if self.keys.load().is_some() {
                        tracing::warn!(source = %self.source, %error, "JWKS fetch failed; keeping cached keys");
                    } else {
                        tracing::warn!(source = %self.source, %error, "JWKS fetch failed and no keys were ever fetched: the policies using this issuer answer 503");
                    }
                    if matches!(self.source, JwksSource::Discovery { .. }) {
                        state.jwks_uri = None; // rediscover next time
                    }
                    report.last_error = Some(error.to_string());
                    Err(())
                }
            }
        };
        // Last: whoever sees the new count also sees the keys and report.
        self.attempts.fetch_add(1, Ordering::AcqRel);
        outcome
    }

    async fn fetch(
        &self,
        state: &mut FetchState,
    ) -> Result<(KeySet, Option<Duration>), FetchError> {
        let jwks_uri = match &state.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let uri = self.resolve_jwks_uri().await?;
                state.jwks_uri = Some(uri.clone());
                uri
            }
        };
        let fetched =
            get_bounded(&self.client, &jwks_uri, self.settings.max_response_bytes).await?;
        let keys = KeySet::from_json(&fetched.body).map_err(|source| FetchError::KeySet {
            url: jwks_uri.to_string(),
            source,
        })?;
        Ok((keys, fetched.max_age))
    }

    async fn resolve_jwks_uri(&self) -> Result<reqwest::Url, FetchError> {
        let (issuer, configuration) = match &self.source {
            JwksSource::Uri(uri) => return Ok(uri.clone()),
            JwksSource::Discovery {
                issuer,
                configuration,
            } => (issuer, configuration),
        };
        let invalid = |reason: String| FetchError::Discovery {
            url: configuration.to_string(),
            reason,
        };
        let fetched = get_bounded(
            &self.client,
            configuration,
            self.settings.max_response_bytes,
        )
        .await?;
        let not_configuration =
            |problem: json::JsonProblem| invalid(format!("not an OpenID configuration: {problem}"));
        let document: DiscoveryDocument = json::parse(&fetched.body).map_err(not_configuration)?;
        let discovered_issuer =
            json::required(document.issuer, "issuer").map_err(not_configuration)?;
        let jwks_uri = json::required(document.jwks_uri, "jwks_uri").map_err(not_configuration)?;
        if discovered_issuer != *issuer {
            // The discovered value is response content: not echoed.
            return Err(invalid(format!(
                "the discovery document's issuer differs from the policy's issuer {issuer:?}"
            )));
        }
        let jwks_uri = reqwest::Url::parse(&jwks_uri)
            .map_err(|e| invalid(format!("jwks_uri is not a URL: {e}")))?;
        check_fetch_url(&jwks_uri).map_err(|reason| FetchError::JwksUriRefused {
            url: configuration.to_string(),
            target: redacted(&jwks_uri),
            reason,
        })?;
        Ok(jwks_uri)
    }

    fn next_refresh(&self, outcome: Result<Option<Duration>, ()>, failures: &mut u32) -> Duration {
        let settings = &self.settings;
        match outcome {
            Ok(max_age) => {
                *failures = 0;
                max_age
                    .unwrap_or(settings.refresh_interval)
                    .clamp(settings.min_refresh_interval, settings.max_refresh_interval)
            }
            Err(()) => {
                *failures = failures.saturating_add(1);
                let backoff = Duration::from_millis(500) * 2u32.saturating_pow((*failures).min(8));
                backoff
                    .min(Duration::from_secs(30))
                    .min(settings.refresh_interval)
            }
        }
    }

    fn lock_report(&self) -> std::sync::MutexGuard<'_, Report> {
        self.report.lock().expect("report lock is never poisoned")
    }
}

/// Refreshes `cache` for as long as some policy holds it.
async fn refresh_loop(cache: Weak<JwksCache>) {
    let mut failures = 0;
    loop {
        let delay = {
            let Some(cache) = cache.upgrade() else { return };
            let mut state = cache.fetch_lock.lock().await;
            let outcome = cache.fetch_locked(&mut state).await;
            cache.next_refresh(outcome, &mut failures)
        };
        tokio::time::sleep(delay).await;
    }
}

mod humantime_serde_opt {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string()),
            None => s.serialize_none(),
        }
    }
}
