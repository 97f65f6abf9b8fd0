//! `scopegate serve`: wires the policy source, the key caches, the gRPC
//! service and the admin server together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

use crate::admin::{self, AdminState};
use crate::authz::{CheckService, TokenCache};
use crate::config::{ConfigError, PolicySource, ServeConfig};
use crate::devissuer;
use crate::jwks::JwksRegistry;
use crate::policy::SnapshotHandle;
use crate::policy::files::{self, FileError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An address could not be bound.
    #[error("cannot listen on {addr} ({flag}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The flag that set it.
        flag: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The policy files are invalid.
    #[error("invalid policy files:\n{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Policies(Vec<FileError>),
    /// The policy files cannot be watched.
    #[error("cannot watch the policy files: {0}")]
    Watch(#[from] notify::Error),
    /// The Kubernetes policy source failed to start.
    #[error(transparent)]
    Kubernetes(#[from] crate::k8s::KubernetesError),
    /// The HTTP client for key fetches cannot be built (`--jwks-ca-file`).
    #[error(transparent)]
    JwksClient(#[from] crate::jwks::ClientError),
    /// The gRPC reflection descriptors are broken (a build defect).
    #[error("gRPC reflection: {0}")]
    Reflection(String),
}

/// A running scopegate.
pub struct Running {
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    dev_issuer: Option<Arc<devissuer::DevIssuer>>,
    snapshot: SnapshotHandle,
    registry: JwksRegistry,
    token_cache: Arc<TokenCache>,
    shutting_down: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    _watcher: Option<notify::RecommendedWatcher>,
    health: HealthReporter,
    drain_delay: std::time::Duration,
    grace: std::time::Duration,
}

impl Running {
    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The dev issuer, if one runs.
    pub fn dev_issuer(&self) -> Option<&Arc<devissuer::DevIssuer>> {
        self.dev_issuer.as_ref()
    }

    /// The policy snapshot handle.
    pub fn snapshot(&self) -> &SnapshotHandle {
        &self.snapshot
    }

    /// The key caches.
    pub fn registry(&self) -> &JwksRegistry {
        &self.registry
    }

    /// The verified-token cache (hit and miss counters for metrics).
    pub fn token_cache(&self) -> &Arc<TokenCache> {
        &self.token_cache
    }

    /// Shuts down in three steps: `/readyz` and gRPC health fail at once;
    /// Checks are still answered for the drain delay; then connections stop
    /// being accepted and in-flight Checks get up to the grace period to
    /// finish.
    pub async fn shutdown(mut self) {
        self.shutting_down.store(true, Ordering::Release);
        self.health
            .set_not_serving::<AuthorizationServer<CheckService>>()
            .await;
        if !self.drain_delay.is_zero() {
            tracing::info!(delay = ?self.drain_delay, "draining: not ready, still answering");
            tokio::time::sleep(self.drain_delay).await;
        }
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(self.grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("grace period over; aborting remaining tasks");
            self.tasks.abort_all();
        }
    }
}

/// Starts every part of the service and returns once all listeners are bound
/// and the policies are loaded.
pub async fn start(config: ServeConfig) -> Result<Running, StartError> {
    config.validate()?;
    let grpc_listener = bind(config.listen, "--listen").await?;
    let admin_listener = bind(config.admin_listen, "--admin-listen").await?;
    let grpc_addr = grpc_listener
        .local_addr()
        .expect("a bound listener has an address");
    let admin_addr = admin_listener
        .local_addr()
        .expect("a bound listener has an address");

    let mut tasks = JoinSet::new();
    let (stop, stopped) = watch::channel(false);
    let dev_issuer = match config.dev_issuer {
        Some(addr) => {
            let (issuer, task) = devissuer::start(addr, stopped_future(stopped.clone()))
                .await
                .map_err(|source| StartError::Bind {
                    addr,
                    flag: "--dev-issuer",
                    source,
                })?;
            tasks.spawn(async move {
                let _ = task.await;
            });
            Some(issuer)
        }
        None => None,
    };

    let registry = JwksRegistry::try_new(config.jwks.clone())?;
    let snapshot = SnapshotHandle::default();
    let watcher = match &config.policies {
        PolicySource::Files(paths) => {
            let count = files::load_and_publish(paths, &registry, &snapshot)
                .map_err(StartError::Policies)?;
            tracing::info!(policies = count, "loaded policy files");
            Some(files::watch(
                paths.clone(),
                registry.clone(),
                snapshot.clone(),
            )?)
        }
        PolicySource::Kubernetes(kubernetes) => {
            crate::k8s::start(
                kubernetes.clone(),
                registry.clone(),
                snapshot.clone(),
                &mut tasks,
                stopped.clone(),
            )
            .await?;
            None
        }
    };

    crate::metrics::observe_runtime(tokio::runtime::Handle::current());
    let shutting_down = Arc::new(AtomicBool::new(false));
    let token_cache = Arc::new(TokenCache::new(config.token_cache));
    crate::metrics::watch_token_cache(&token_cache);
    crate::metrics::watch_policies(&snapshot);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AuthorizationServer<CheckService>>()
        .await;
    tasks.spawn(serve_grpc(
        grpc_listener,
        CheckService::with_replay_store(
            snapshot.clone(),
            token_cache.clone(),
            config.replay_store.clone(),
        )
        .with_dpop_nonces(config.dpop_nonces.clone())
        .with_envoy_metadata(config.envoy_metadata),
        health_service,
        stopped.clone(),
    )?);
    let admin = admin::router(AdminState {
        snapshot: snapshot.clone(),
        registry: registry.clone(),
        shutting_down: shutting_down.clone(),
        wait_for_keys_until: std::time::Instant::now() + config.startup_key_wait,
    });
    let admin_stopped = stopped_future(stopped.clone());
    tasks.spawn(async move {
        if let Err(error) = axum::serve(admin_listener, admin)
            .with_graceful_shutdown(admin_stopped)
            .await
        {
            tracing::error!(%error, "admin server failed");
        }
    });
    tracing::info!(%grpc_addr, %admin_addr, "scopegate is serving");
    Ok(Running {
        grpc_addr,
        admin_addr,
        dev_issuer,
        snapshot,
        registry,
        token_cache,
        shutting_down,
        stop,
        tasks,
        _watcher: watcher,
        health,
        drain_delay: config.shutdown_drain_delay,
        grace: config.shutdown_grace,
    })
}

/// The gRPC server future: ext_authz, `grpc.health.v1` and reflection.
fn serve_grpc(
    listener: TcpListener,
    service: CheckService,
    health_service: HealthServer<impl Health>,
    stopped: watch::Receiver<bool>,
) -> Result<impl Future<Output = ()> + Send + 'static, StartError> {
    // Both reflection versions: older clients (grpcurl ≤ 1.8) speak v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_error =
        |e: tonic_reflection::server::Error| StartError::Reflection(e.to_string());
    let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;
    Ok(async move {
        let result = tonic::transport::Server::builder()
            .add_service(service.into_server())
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(
                // Without TCP_NODELAY, small answers wait on the peer's
                // delayed ACK: ~40 ms per Check on Linux.
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                stopped_future(stopped),
            )
            .await;
        if let Err(error) = result {
            tracing::error!(%error, "gRPC server failed");
        }
    })
}

/// Resolves once shutdown is signalled (or the signalling side is gone).
async fn stopped_future(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

async fn bind(addr: SocketAddr, flag: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, flag, source })
}

/// SIGTERM and SIGINT (Ctrl-C), listened for from the moment this is
/// created: install it before starting to serve, so that a SIGTERM that
/// arrives while scopegate starts (a rollout cancelled early) still shuts
/// it down gracefully instead of killing it with the default action.
pub struct ShutdownSignal {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    /// Installs the handlers. Must be called within a Tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(ShutdownSignal {
                term: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(ShutdownSignal {})
    }

    /// Resolves once a signal has arrived (also one that arrived earlier).
    pub async fn received(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.interrupt.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
