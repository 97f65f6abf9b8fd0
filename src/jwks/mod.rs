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
//!
//! Every fetch obeys one rule ([`guard`]): `https` only (`http` only to
//! loopback) for discovery, the discovered `jwks_uri` and every redirect,
//! and never a link-local or cloud metadata address, whether named in a URL
//! or answered by DNS.

mod cache;
mod fetch;
mod guard;
mod json;
mod keyset;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

pub use cache::{JwksCache, JwksState, KeysUnavailable};
pub use fetch::FetchError;
pub use guard::{BlockedAddresses, MAX_REDIRECTS, UrlRefusal, check_fetch_url, is_blocked_ip};
pub use json::JsonProblem;
pub(crate) use keyset::public_key_from_jwk;
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

impl JwksSource {
    /// The issuer a discovery source is for. Two issuers that differ only
    /// by a trailing slash share a discovery URL but not a source (at most
    /// one of them matches the document's `issuer`): this tells them apart
    /// in metrics and `/readyz`. `None` for a fixed JWKS URI, which every
    /// issuer naming it shares.
    pub fn issuer(&self) -> Option<&str> {
        match self {
            JwksSource::Uri(_) => None,
            JwksSource::Discovery { issuer, .. } => Some(issuer),
        }
    }
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
    /// Trust anchors for issuer TLS in addition to the system's
    /// (`--jwks-ca-file`; see [`load_ca_file`]).
    pub extra_roots: Vec<reqwest::Certificate>,
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
            extra_roots: Vec::new(),
        }
    }
}

/// A CA file that cannot be used as trust anchors for issuer TLS.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    /// The file cannot be read.
    #[error("cannot read the CA file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a PEM bundle of certificates.
    #[error("{} is not a PEM certificate bundle: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file holds no `CERTIFICATE` block.
    #[error("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// Reads a PEM bundle of CA certificates (`--jwks-ca-file`) to trust, in
/// addition to the system's roots, for issuers behind a private CA.
pub fn load_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, CaFileError> {
    let pem = std::fs::read(path).map_err(|source| CaFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| CaFileError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if roots.is_empty() {
        return Err(CaFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(roots)
}

/// The HTTP client for key fetches could not be built (in practice: an
/// extra root certificate the TLS verifier rejects).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the JWKS HTTP client (check --jwks-ca-file): {0}")]
pub struct ClientError(String);

/// The client every fetch goes through: the redirect policy and the DNS
/// guard of [`guard`], bounded timeouts, and `settings.extra_roots`.
fn build_client(
    settings: &JwksSettings,
    resolver: guard::GuardedResolver,
) -> Result<reqwest::Client, ClientError> {
    reqwest::Client::builder()
        .timeout(settings.fetch_timeout)
        .connect_timeout(settings.fetch_timeout)
        .redirect(guard::redirect_policy())
        .referer(false)
        .dns_resolver(resolver)
        .tls_certs_merge(settings.extra_roots.iter().cloned())
        .user_agent(concat!("scopegate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ClientError(fetch::error_chain(&e)))
}

/// One key source in `/readyz`: its state, and for a discovery source the
/// issuer it is for.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JwksReport {
    /// The cache's state.
    #[serde(flatten)]
    pub state: JwksState,
    /// The issuer whose discovery this source is (absent for a `jwksUri`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
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
    ///
    /// # Panics
    ///
    /// If the HTTP client cannot be built, which only `extra_roots` can
    /// cause: use [`JwksRegistry::try_new`] for settings from outside.
    pub fn new(settings: JwksSettings) -> Self {
        Self::try_new(settings).expect("the HTTP client configuration is valid")
    }

    /// A registry whose caches fetch with `settings`, or why its HTTP
    /// client cannot be built.
    pub fn try_new(settings: JwksSettings) -> Result<Self, ClientError> {
        let client = build_client(&settings, guard::GuardedResolver::system())?;
        Ok(JwksRegistry {
            inner: Arc::new(RegistryInner {
                client,
                settings,
                caches: Mutex::new(HashMap::new()),
            }),
        })
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

    /// Every live cache's state with the issuer of a discovery source, for
    /// `/readyz`: one entry per source.
    pub fn reports(&self) -> Vec<JwksReport> {
        let caches = self
            .inner
            .caches
            .lock()
            .expect("registry lock is never poisoned");
        let mut reports: Vec<JwksReport> = caches
            .iter()
            .filter_map(|(source, weak)| {
                weak.upgrade().map(|cache| JwksReport {
                    state: cache.state(),
                    issuer: source.issuer().map(str::to_string),
                })
            })
            .collect();
        reports.sort_by(|a, b| (&a.state.source, &a.issuer).cmp(&(&b.state.source, &b.issuer)));
        reports
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
