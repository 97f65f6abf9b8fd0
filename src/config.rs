//! The validated configuration of `scopegate serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::authz::TokenCacheSettings;
use crate::jwks::JwksSettings;

/// Where policies come from.
#[derive(Debug, Clone)]
pub enum PolicySource {
    /// YAML files or directories, watched for changes.
    Files(Vec<PathBuf>),
    /// `TokenPolicy` objects in the cluster.
    Kubernetes(crate::k8s::KubernetesConfig),
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// gRPC listen address (ext_authz, health, reflection).
    pub listen: SocketAddr,
    /// HTTP admin listen address (`/healthz`, `/readyz`, `/metrics`).
    pub admin_listen: SocketAddr,
    /// The policy source.
    pub policies: PolicySource,
    /// Run a dev issuer on this address.
    pub dev_issuer: Option<SocketAddr>,
    /// JWKS fetching.
    pub jwks: JwksSettings,
    /// The verified-token cache.
    pub token_cache: TokenCacheSettings,
    /// Where DPoP proof `jti`s are remembered (`--replay-store`): this
    /// replica's memory, or a Redis server shared by every replica.
    pub replay_store: crate::pop::ReplayStore,
    /// Server nonces for DPoP proofs (`--dpop-nonce-secret`): `None` when
    /// off; replicas with the same secret accept each other's nonces.
    pub dpop_nonces: Option<std::sync::Arc<crate::pop::NonceIssuer>>,
    /// Whether allows carry dynamic metadata for Envoy's access logs
    /// (`--envoy-metadata`).
    pub envoy_metadata: bool,
    /// How long after start `/readyz` waits for every issuer's keys before
    /// it stops counting an unreachable issuer against readiness.
    pub startup_key_wait: Duration,
    /// How long scopegate keeps answering after a shutdown signal, with
    /// `/readyz` and gRPC health already not-serving, before it stops
    /// accepting connections (lets load balancers without a `preStop` hook
    /// move away first).
    pub shutdown_drain_delay: Duration,
    /// How long in-flight Checks may take to finish once scopegate stops
    /// accepting connections.
    pub shutdown_grace: Duration,
}

/// A configuration error that names the offending flag or variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Neither `--policies` nor `--kubernetes` was given, or both were.
    #[error("{0}")]
    PolicySource(&'static str),
    /// A setting's value is out of range.
    #[error("{flag}: {message}")]
    Invalid {
        /// The flag (and its environment variable).
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl ServeConfig {
    /// A configuration for policy files, with defaults everywhere else;
    /// convenient for embedding and tests.
    pub fn with_policy_files(paths: Vec<PathBuf>) -> Self {
        ServeConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 9001)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            policies: PolicySource::Files(paths),
            dev_issuer: None,
            jwks: JwksSettings::default(),
            token_cache: TokenCacheSettings::default(),
            replay_store: crate::pop::ReplayStore::InMemory(crate::pop::InMemoryReplayStore::new(
                crate::pop::InMemoryReplayStore::DEFAULT_MAX_ENTRIES,
            )),
            dpop_nonces: None,
            envoy_metadata: true,
            startup_key_wait: Duration::from_secs(10),
            shutdown_drain_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(10),
        }
    }

    /// Checks cross-field constraints.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let PolicySource::Files(paths) = &self.policies
            && paths.is_empty()
        {
            return Err(ConfigError::PolicySource(
                "--policies (SCOPEGATE_POLICIES): give at least one policy file or directory, or use --kubernetes",
            ));
        }
        let jwks = &self.jwks;
        if jwks.min_refresh_interval > jwks.max_refresh_interval {
            return Err(ConfigError::Invalid {
                flag: "--jwks-min-refresh-interval (SCOPEGATE_JWKS_MIN_REFRESH_INTERVAL)",
                message: "must not exceed --jwks-max-refresh-interval".into(),
            });
        }
        if jwks.fetch_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                flag: "--jwks-fetch-timeout (SCOPEGATE_JWKS_FETCH_TIMEOUT)",
                message: "must be greater than zero".into(),
            });
        }
        if jwks.refresh_interval.is_zero() {
            return Err(ConfigError::Invalid {
                flag: "--jwks-refresh-interval (SCOPEGATE_JWKS_REFRESH_INTERVAL)",
                message: "must be greater than zero".into(),
            });
        }
        let cache_ttl = self.token_cache.max_ttl;
        if !cache_ttl.is_zero() && cache_ttl < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                flag: "--token-cache-max-ttl (SCOPEGATE_TOKEN_CACHE_MAX_TTL)",
                message: "must be 0 (cache off) or at least 1s".into(),
            });
        }
        Ok(())
    }
}
