//! `TokenPolicy` objects as the policy source: watch → index → snapshot,
//! with statuses written back by the elected leader.
//!
//! ```text
//!  kube watcher (per namespace, or all) ──events──► indexer thread: PolicyIndex + SnapshotBuilder
//!        relist on 410 / errors, with backoff         │ compiles changed specs, coalesces a burst,
//!                                                     │ publishes once (cost ∝ what changed)
//!                                                     ├──► PolicySnapshot ──(ArcSwap)──► Check
//!                                                     └──status inputs──► StatusWriter ── SSA patch (leader only)
//!  Lease election ──is_leader──────────────────────────────────────────────────┘
//! ```
//!
//! The Check path never waits on the API server nor on the indexer: it
//! reads the last published snapshot without a lock, and all indexing work
//! runs on a thread of its own, off the request workers. While the watch
//! is down or relisting, the last snapshot keeps serving.

pub mod index;
pub mod leader;
pub mod status;

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt as _;
use kube::api::{Api, ListParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::jwks::JwksRegistry;
use crate::policy::{SnapshotHandle, TokenPolicy};
use index::{PolicyIndex, Scope, StatusChange};
pub use leader::LeaderSettings;

/// Kubernetes-mode settings.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// Namespaces to watch; empty: all namespaces.
    pub namespaces: Vec<String>,
    /// A kubeconfig file; `None`: `KUBECONFIG`, `~/.kube/config` or the
    /// in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// Leader election for the status writer.
    pub leader: LeaderSettings,
    /// How often statuses are re-checked without a policy change (key cache
    /// health changes on its own).
    pub status_resync: Duration,
}

/// Why the Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// No usable client configuration.
    #[error("cannot configure the Kubernetes client (--kubeconfig, KUBECONFIG or in-cluster): {0}")]
    Config(String),
    /// The TokenPolicy resource is not served.
    #[error(
        "the TokenPolicy CRD is not installed (kubectl apply -f manifests/crds/tokenpolicies.scopegate.dev.yaml)"
    )]
    CrdMissing,
    /// The service account may not list TokenPolicies.
    #[error("not allowed to list TokenPolicies{scope}; apply manifests/rbac.yaml: {message}")]
    Forbidden {
        /// ` in namespace NS`, or empty for all namespaces.
        scope: String,
        /// The API server's message.
        message: String,
    },
    /// Any other API error.
    #[error("the Kubernetes API answered: {0}")]
    Api(#[from] kube::Error),
}

/// Builds a client from `kubeconfig`, or the usual inference.
pub async fn client(kubeconfig: Option<&PathBuf>) -> Result<kube::Client, KubernetesError> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| KubernetesError::Config(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| KubernetesError::Config(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubernetesError::Config(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| KubernetesError::Config(e.to_string()))
}

/// Starts the watchers, the status writer and the leader election as tasks
/// in `tasks`. Returns after checking that TokenPolicies can be listed; the
/// snapshot is published (and readiness turns true) once every watcher has
/// listed its scope.
pub async fn start(
    config: KubernetesConfig,
    registry: JwksRegistry,
    snapshot: SnapshotHandle,
    tasks: &mut JoinSet<()>,
    stopped: watch::Receiver<bool>,
) -> Result<(), KubernetesError> {
    let client = client(config.kubeconfig.as_ref()).await?;
    let scopes: Vec<Scope> = if config.namespaces.is_empty() {
        vec![Scope::All]
    } else {
        config
            .namespaces
            .iter()
            .cloned()
            .map(Scope::Namespace)
            .collect()
    };
    for scope in &scopes {
        check_access(&client, scope).await?;
    }

    let (events, events_received) = mpsc::unbounded_channel();
    let (status_changes, changes) = mpsc::unbounded_channel();
    let (is_leader, leader) = watch::channel(false);

    tasks.spawn(forward_events(
        client.clone(),
        scopes.clone(),
        events,
        stopped.clone(),
    ));
    let indexer = Indexer {
        index: PolicyIndex::new(move |source| registry.cache(source)),
        scopes,
        snapshot,
        status_changes,
    };
    // On a blocking thread: compiling and indexing never take a request
    // worker, and the thread still has the runtime's context (key caches
    // start their refresh tasks from it).
    tasks.spawn(async move {
        let _ = tokio::task::spawn_blocking(move || indexer.run(events_received)).await;
    });
    let writer = status::StatusWriter {
        client: client.clone(),
        changes,
        leader,
        resync: config.status_resync,
    };
    let mut writer_stopped = stopped.clone();
    tasks.spawn(async move {
        tokio::select! {
            _ = writer.run() => {}
            _ = writer_stopped.wait_for(|s| *s) => {}
        }
    });
    let leases = Api::namespaced(client, &config.leader.namespace);
    tasks.spawn(leader::run(leases, config.leader, is_leader, stopped));
    Ok(())
}

fn api_for(client: &kube::Client, scope: &Scope) -> Api<TokenPolicy> {
    match scope {
        Scope::All => Api::all(client.clone()),
        Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
    }
}

/// Lists one object to turn "CRD missing" and "forbidden" into clear errors
/// at start instead of a watcher retrying forever.
async fn check_access(client: &kube::Client, scope: &Scope) -> Result<(), KubernetesError> {
    match api_for(client, scope)
        .list(&ListParams::default().limit(1))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(KubernetesError::CrdMissing),
        Err(kube::Error::Api(e)) if e.code == 403 => Err(KubernetesError::Forbidden {
            scope: match scope {
                Scope::All => String::new(),
                Scope::Namespace(ns) => format!(" in namespace {ns}"),
            },
            message: e.message,
        }),
        Err(e) => Err(e.into()),
    }
}

/// A watch event of one scope.
type ScopedEvent = (Scope, Result<Event<TokenPolicy>, watcher::Error>);

/// Forwards the watch events of every scope to the indexer, as they come.
async fn forward_events(
    client: kube::Client,
    scopes: Vec<Scope>,
    events: mpsc::UnboundedSender<ScopedEvent>,
    mut stopped: watch::Receiver<bool>,
) {
    let streams = scopes.iter().map(|scope| {
        let scope = scope.clone();
        watcher::watcher(api_for(&client, &scope), watcher::Config::default())
            .default_backoff()
            .map(move |event| (scope.clone(), event))
            .boxed()
    });
    let mut stream = futures::stream::select_all(streams);
    loop {
        let item = tokio::select! {
            next = stream.next() => match next {
                Some(item) => item,
                None => return,
            },
            _ = stopped.wait_for(|s| *s) => return,
        };
        if events.send(slim(item)).is_err() {
            return;
        }
    }
}

/// The event without what the index never reads: managed fields and
/// annotations (`kubectl apply` keeps a whole copy of the object in one)
/// are most of an object's size, and a relist holds every object at once.
fn slim((scope, event): ScopedEvent) -> ScopedEvent {
    let strip = |mut policy: TokenPolicy| {
        policy.metadata.managed_fields = None;
        policy.metadata.annotations = None;
        policy.metadata.labels = None;
        policy
    };
    let event = event.map(|event| match event {
        Event::Apply(policy) => Event::Apply(strip(policy)),
        Event::InitApply(policy) => Event::InitApply(strip(policy)),
        Event::Delete(policy) => Event::Delete(strip(policy)),
        other => other,
    });
    (scope, event)
}

/// Events in one batch past which the indexer hands freed heap back to
/// the OS (a relist, a large backlog).
const TRIM_AFTER: usize = 256;

/// Most events one publish takes in (a backlog is published in steps of
/// this size, so a Check sees progress during a long relist).
const MAX_BATCH: usize = 4_096;

/// Applies watch events to the index and publishes snapshots, on a thread
/// of its own.
struct Indexer {
    index: PolicyIndex,
    scopes: Vec<Scope>,
    snapshot: SnapshotHandle,
    status_changes: mpsc::UnboundedSender<Vec<StatusChange>>,
}

impl Indexer {
    /// Runs until the event channel closes: takes every event queued (a
    /// burst of edits is one publish), then publishes once.
    fn run(mut self, mut events: mpsc::UnboundedReceiver<ScopedEvent>) {
        let mut listed: Vec<Scope> = Vec::new();
        let mut published_once = false;
        while let Some(first) = events.blocking_recv() {
            let mut next = Some(first);
            let mut taken = 0;
            while let Some((scope, event)) = next {
                self.apply(scope, event, &mut listed);
                taken += 1;
                next = if taken < MAX_BATCH {
                    events.try_recv().ok()
                } else {
                    None
                };
            }
            let all_listed = self.scopes.iter().all(|s| listed.contains(s));
            if !all_listed {
                continue;
            }
            let republish = self.index.has_unpublished_changes() || !published_once;
            let (snapshot, changes) = self.index.publish();
            if republish {
                let policies = snapshot.len();
                if published_once {
                    self.snapshot.publish(snapshot);
                    tracing::debug!(policies, events = taken, "TokenPolicy snapshot updated");
                } else {
                    // The first publish replaces the parse's peak: return it.
                    self.snapshot.publish_and_trim(snapshot);
                    tracing::info!(policies, "TokenPolicy snapshot published");
                }
                published_once = true;
            }
            if taken >= TRIM_AFTER {
                crate::policy::return_freed_memory();
            }
            if !changes.is_empty() && self.status_changes.send(changes).is_err() {
                tracing::debug!("status writer stopped");
            }
        }
    }

    fn apply(
        &mut self,
        scope: Scope,
        event: Result<Event<TokenPolicy>, watcher::Error>,
        listed: &mut Vec<Scope>,
    ) {
        match event {
            Ok(Event::Init) => self.index.start_relist(scope),
            Ok(Event::InitApply(policy)) => self.index.relisted(&scope, policy),
            Ok(Event::InitDone) => {
                self.index.finish_relist(&scope);
                if !listed.contains(&scope) {
                    listed.push(scope);
                }
            }
            Ok(Event::Apply(policy)) => {
                self.index.apply(policy);
            }
            Ok(Event::Delete(policy)) => {
                self.index.delete(&policy);
            }
            Err(error) => {
                tracing::warn!(%error, "TokenPolicy watch failed; retrying with backoff, the last policies keep serving");
            }
        }
    }
}

/// A unique identity for leader election: `POD_NAME`, else the host name,
/// with a random suffix so that replicas never collide.
pub fn default_identity() -> String {
    let base = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "scopegate".into());
    let mut suffix = [0u8; 4];
    aws_lc_rs::rand::fill(&mut suffix).expect("the system RNG works");
    format!(
        "{base}-{}",
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// The Lease namespace: `POD_NAMESPACE`, else the in-cluster service
/// account's namespace, else `default`.
pub fn default_lease_namespace() -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok()
        })
        .map(|ns| ns.trim().to_string())
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| "default".into())
}
