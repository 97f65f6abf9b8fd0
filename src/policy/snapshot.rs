//! The set of policies in force, indexed by host and swapped atomically.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::builder::{Seniority, SnapshotBuilder};
use super::compile::{ClaimHeader, CompiledIssuer, CompiledPolicy, FieldError, PolicyId};
use super::matching::HostPattern;
use super::sharded::ShardedMap;
use crate::jwks::{JwksCache, JwksRegistry, JwksSource};
use crate::token::{ClaimSelection, IssuerRules};

/// A compiled policy bound to its issuers' key caches.
#[derive(Debug)]
pub struct ServedPolicy {
    /// The compiled policy.
    pub policy: CompiledPolicy,
    /// One per `policy.issuers` entry, in the same order.
    pub issuers: Box<[ServedIssuer]>,
    /// The claims its Checks can read: what a cached token must keep.
    pub claims: Arc<ClaimSelection>,
}

/// One issuer of a served policy.
#[derive(Debug)]
pub struct ServedIssuer {
    /// The issuer's keys.
    pub keys: Arc<JwksCache>,
    /// What verifying a token of this issuer depends on, shared with the
    /// token cache entries verified under it.
    pub verification: Arc<Verification>,
}

impl ServedPolicy {
    /// Binds `policy` to its issuers' key caches, one per issuer, taken
    /// from `keys_for`, with its verification rules and claim selection
    /// shared through `shared`.
    pub(super) fn new(
        policy: CompiledPolicy,
        mut keys_for: impl FnMut(&JwksSource) -> Arc<JwksCache>,
        shared: &mut Shared,
    ) -> Self {
        let policy = shared.share_parts(policy);
        let issuers = policy
            .issuers
            .iter()
            .map(|issuer| ServedIssuer {
                keys: keys_for(&issuer.jwks_source),
                verification: intern(
                    &mut shared.verifications,
                    Verification {
                        issuer: issuer.rules.clone(),
                        scope_claims: policy.scope_claims.clone(),
                    },
                ),
            })
            .collect();
        let claims = intern(&mut shared.selections, policy.claim_selection());
        ServedPolicy {
            policy,
            issuers,
            claims,
        }
    }

    /// Whether some issuer has never had a key: its tokens are answered 503.
    pub fn lacks_keys(&self) -> bool {
        self.issuers.iter().any(|i| i.keys.current().is_none())
    }
}

/// Equal verification rules and claim selections of one snapshot's
/// policies, allocated once: the 10,000 policies of one issuer share one
/// `Verification`, and a token cached under one of them hits under the
/// others by pointer.
/// The same holds for the parts most policies of a cluster have in common
/// (their issuers, scope claims and claim headers): about a third of a
/// compiled policy's memory.
#[derive(Default)]
pub(super) struct Shared {
    verifications: HashSet<Arc<Verification>>,
    selections: HashSet<Arc<ClaimSelection>>,
    issuers: HashSet<Arc<[CompiledIssuer]>>,
    scope_claims: HashSet<Arc<[Box<str>]>>,
    claim_headers: HashSet<Arc<[ClaimHeader]>>,
    /// How many shared copies were left by the last prune.
    size_after_prune: usize,
}

impl Shared {
    /// `policy` with its common parts replaced by the shared copies.
    fn share_parts(&mut self, mut policy: CompiledPolicy) -> CompiledPolicy {
        policy.issuers = intern_arc(&mut self.issuers, policy.issuers);
        policy.scope_claims = intern_arc(&mut self.scope_claims, policy.scope_claims);
        policy.claim_headers = intern_arc(&mut self.claim_headers, policy.claim_headers);
        policy
    }

    /// Forgets the shared copies no policy uses any more (only this set
    /// holds them), once the sets have doubled since the last time: an
    /// amortized constant cost per insertion.
    pub(super) fn prune(&mut self) {
        if self.size() < 2 * self.size_after_prune.max(64) {
            return;
        }
        self.verifications.retain(|v| Arc::strong_count(v) > 1);
        self.selections.retain(|v| Arc::strong_count(v) > 1);
        self.issuers.retain(|v| Arc::strong_count(v) > 1);
        self.scope_claims.retain(|v| Arc::strong_count(v) > 1);
        self.claim_headers.retain(|v| Arc::strong_count(v) > 1);
        self.size_after_prune = self.size();
    }

    fn size(&self) -> usize {
        self.verifications.len()
            + self.selections.len()
            + self.issuers.len()
            + self.scope_claims.len()
            + self.claim_headers.len()
    }
}

/// The shared copy of `value`.
fn intern<T: Hash + Eq>(set: &mut HashSet<Arc<T>>, value: T) -> Arc<T> {
    if let Some(shared) = set.get(&value) {
        return shared.clone();
    }
    let shared = Arc::new(value);
    set.insert(shared.clone());
    shared
}

/// The shared copy of `value`, an `Arc` already (dropped if one is shared).
fn intern_arc<T: Hash + Eq + ?Sized>(set: &mut HashSet<Arc<T>>, value: Arc<T>) -> Arc<T> {
    if let Some(shared) = set.get(&value) {
        return shared.clone();
    }
    set.insert(value.clone());
    value
}

/// The parts of a policy a cached token verification depends on: a cached
/// verification is reused only under an equal `Verification` (the keys are
/// checked separately, by fingerprint).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Verification {
    /// Issuer, audiences, algorithms and clock skew.
    pub issuer: IssuerRules,
    /// The claims scopes are read from (the cached token's scopes are parsed
    /// with them).
    pub scope_claims: Arc<[Box<str>]>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("source", self.source())
            .finish()
    }
}

/// Whether a policy is in force, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyState {
    /// Compiled and serving all its hosts.
    Accepted,
    /// The spec does not compile. A policy that compiled before keeps its
    /// hosts and serves its last good version; one that never compiled
    /// serves and claims nothing.
    Invalid {
        /// What is wrong with the current spec.
        errors: Vec<FieldError>,
        /// Whether the last good version keeps serving.
        serving_last_good: bool,
    },
    /// An older policy already covers one of its hosts (see
    /// [`PolicySnapshot::build`]); this one serves none.
    HostConflict {
        /// The contested host pattern of this policy.
        host: String,
        /// The policy that keeps it.
        winner: PolicyId,
        /// The winner's pattern that covers `host` (`host` itself, or a
        /// wildcard such as `*.corp.example.com`).
        winner_host: String,
    },
}

impl PolicyState {
    /// For a host conflict, what the status says: `host X is already
    /// claimed by policy NS/NAME` (and by which of its hosts when that is a
    /// covering wildcard).
    pub fn conflict_message(&self) -> Option<String> {
        let PolicyState::HostConflict {
            host,
            winner,
            winner_host,
        } = self
        else {
            return None;
        };
        let mut message = format!("host {host} is already claimed by policy {winner}");
        if winner_host != host {
            message.push_str(&format!(" (its {winner_host} covers it; only a policy in the same namespace may serve a more specific host)"));
        }
        Some(message)
    }

    /// The `Ready` reason this state is reported with.
    pub fn reason(&self) -> &'static str {
        match self {
            PolicyState::Accepted => "Accepted",
            PolicyState::Invalid { .. } => "Invalid",
            PolicyState::HostConflict { .. } => "HostConflict",
        }
    }
}

/// How a policy is reported (`/readyz`, `scopegate_policies{state}`,
/// `status`): its [`PolicyState`], with an accepted policy whose issuer keys
/// were never fetched told apart, since it answers 503 to every Check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportedState {
    /// Serving, with keys.
    Accepted,
    /// Accepted, but no signing key was ever fetched: every Check is a 503.
    JwksUnavailable,
    /// The spec does not compile.
    Invalid,
    /// Lost a host to an older policy.
    HostConflict,
}

impl ReportedState {
    /// Every state, in metric order.
    pub const ALL: [ReportedState; 4] = [
        ReportedState::Accepted,
        ReportedState::JwksUnavailable,
        ReportedState::Invalid,
        ReportedState::HostConflict,
    ];

    /// The `Ready` reason and `/readyz` state: `Accepted`, `JwksUnavailable`, ….
    pub fn reason(self) -> &'static str {
        match self {
            ReportedState::Accepted => "Accepted",
            ReportedState::JwksUnavailable => "JwksUnavailable",
            ReportedState::Invalid => "Invalid",
            ReportedState::HostConflict => "HostConflict",
        }
    }

    /// The `state` label of `scopegate_policies`: `accepted`, `jwks_unavailable`, ….
    pub fn metric_label(self) -> &'static str {
        match self {
            ReportedState::Accepted => "accepted",
            ReportedState::JwksUnavailable => "jwks_unavailable",
            ReportedState::Invalid => "invalid",
            ReportedState::HostConflict => "host_conflict",
        }
    }
}

/// A policy offered to [`PolicySnapshot::build`].
#[derive(Debug)]
pub struct Candidate {
    /// `namespace/name`.
    pub id: PolicyId,
    /// The compilation result of the current spec.
    pub compiled: Result<CompiledPolicy, Vec<FieldError>>,
    /// The last version that compiled, served (and owning its hosts) while
    /// the current spec is invalid.
    pub last_good: Option<CompiledPolicy>,
    /// For an invalid candidate without `last_good`: the hosts its status
    /// records it served (`status.servedHosts`) — a replica that started
    /// after the invalid edit still holds them for it, answering 503,
    /// instead of handing them to another policy.
    pub held_hosts: Vec<HostPattern>,
}

impl Candidate {
    /// A candidate with no earlier version.
    pub fn new(id: PolicyId, compiled: Result<CompiledPolicy, Vec<FieldError>>) -> Self {
        Candidate {
            id,
            compiled,
            last_good: None,
            held_hosts: Vec::new(),
        }
    }
}

/// What a host pattern resolves to.
#[derive(Debug, Clone)]
pub enum HostEntry {
    /// The policy that serves it.
    Served(Arc<ServedPolicy>),
    /// Held for an invalid policy whose last good version this replica
    /// never loaded (see [`Candidate::held_hosts`]): answered 503, never by
    /// another policy.
    Held(PolicyId),
}

/// One candidate of a snapshot: its state and what it serves or holds.
#[derive(Debug)]
pub struct PolicyEntry {
    /// Its place in host ownership.
    pub(super) seniority: Seniority,
    /// Whether it is in force, and if not, why.
    pub state: PolicyState,
    /// The version that serves its hosts, if any.
    pub served: Option<Arc<ServedPolicy>>,
    /// The hosts held for it without a serving version.
    pub held_hosts: Box<[HostPattern]>,
}

/// Policies in force, indexed by host, plus the state of every candidate.
///
/// Its tables share their unchanged parts with the snapshots before and
/// after it ([`ShardedMap`]): publishing an edit costs what the edit
/// touched.
#[derive(Debug, Default, Clone)]
pub struct PolicySnapshot {
    exact: ShardedMap<Box<str>, HostEntry>,
    wildcard: ShardedMap<Box<str>, HostEntry>,
    policies: ShardedMap<PolicyId, Arc<PolicyEntry>>,
}

impl PolicySnapshot {
    /// Indexes `candidates`, which must be in ownership order (the policy
    /// that has served longest first): a host an earlier candidate covers
    /// stays with it, and a later candidate that claims it is not served
    /// (`HostConflict`). An invalid candidate serves its last good version,
    /// if it has one. Key caches come from `registry` (shared with the
    /// previous snapshot where the source is unchanged).
    pub fn build(candidates: Vec<Candidate>, registry: &JwksRegistry) -> Self {
        Self::build_with(candidates, |source| registry.cache(source))
    }

    /// [`PolicySnapshot::build`], with key caches from `keys_for`.
    pub fn build_with(
        candidates: Vec<Candidate>,
        keys_for: impl FnMut(&JwksSource) -> Arc<JwksCache> + Send,
    ) -> Self {
        let mut builder = SnapshotBuilder::new(keys_for);
        for (position, candidate) in candidates.into_iter().enumerate() {
            builder.upsert(
                Seniority::position(position, candidate.id.clone()),
                candidate,
            );
        }
        builder.publish().0
    }

    pub(super) fn from_tables(
        exact: ShardedMap<Box<str>, HostEntry>,
        wildcard: ShardedMap<Box<str>, HostEntry>,
        policies: ShardedMap<PolicyId, Arc<PolicyEntry>>,
    ) -> Self {
        PolicySnapshot {
            exact,
            wildcard,
            policies,
        }
    }

    /// The state each candidate would get from [`PolicySnapshot::build`],
    /// in the candidates' order, without binding key caches (for
    /// validation). A candidate whose id comes again later takes the later
    /// one's state.
    pub fn states_of(candidates: Vec<Candidate>) -> Vec<(PolicyId, PolicyState)> {
        let ids: Vec<PolicyId> = candidates.iter().map(|c| c.id.clone()).collect();
        let mut caches: HashMap<JwksSource, Arc<JwksCache>> = HashMap::new();
        let snapshot = Self::build_with(candidates, |source| {
            caches
                .entry(source.clone())
                .or_insert_with(|| JwksCache::unfetched(source.clone()))
                .clone()
        });
        ids.into_iter()
            .filter_map(|id| {
                let state = snapshot.policies.get(&id)?.state.clone();
                Some((id, state))
            })
            .collect()
    }

    /// What a normalized host resolves to: the most specific pattern that
    /// covers it (an exact host first, else the wildcard with the longest
    /// suffix), whether it is served or held. A held host answers 503
    /// before any less specific pattern is consulted.
    pub fn resolve(&self, host: &str) -> Option<&HostEntry> {
        if let Some(entry) = self.exact.get(host) {
            return Some(entry);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        host.match_indices('.')
            .filter(|(i, _)| *i > 0)
            .find_map(|(i, _)| self.wildcard.get(&host[i..]))
    }

    /// The policy that serves a normalized host (see
    /// [`PolicySnapshot::resolve`]); `None` when none does or the host is held.
    pub fn lookup(&self, host: &str) -> Option<&Arc<ServedPolicy>> {
        match self.resolve(host)? {
            HostEntry::Served(served) => Some(served),
            HostEntry::Held(_) => None,
        }
    }

    /// The hosts this snapshot serves or holds for policy `id`.
    pub fn hosts_of(&self, id: &str) -> Vec<String> {
        let Some(entry) = self.policies.get(id) else {
            return Vec::new();
        };
        let hosts = match &entry.served {
            Some(served) => &served.policy.hosts[..],
            None => &entry.held_hosts[..],
        };
        hosts.iter().map(ToString::to_string).collect()
    }

    /// One candidate's entry.
    pub fn policy(&self, id: &str) -> Option<&Arc<PolicyEntry>> {
        self.policies.get(id)
    }

    /// Every candidate, in ownership order (oldest first).
    pub fn entries(&self) -> Vec<(&PolicyId, &Arc<PolicyEntry>)> {
        let mut entries: Vec<_> = self.policies.iter().collect();
        entries.sort_by(|a, b| a.1.seniority.cmp(&b.1.seniority));
        entries
    }

    /// The policies being served, in ownership order.
    pub fn served(&self) -> Vec<&Arc<ServedPolicy>> {
        self.entries()
            .into_iter()
            .filter_map(|(_, entry)| entry.served.as_ref())
            .collect()
    }

    /// Every candidate's state, in ownership order.
    pub fn states(&self) -> Vec<(&PolicyId, &PolicyState)> {
        self.entries()
            .into_iter()
            .map(|(id, entry)| (id, &entry.state))
            .collect()
    }

    /// The served policy with this id.
    pub fn served_by_id(&self, id: &str) -> Option<&Arc<ServedPolicy>> {
        self.policies.get(id)?.served.as_ref()
    }

    /// How many candidates the snapshot holds.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether it holds no candidate.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Every candidate's state and how it is reported now (key caches
    /// change between snapshots, so this is computed on each call), in
    /// ownership order.
    pub fn reported(&self) -> impl Iterator<Item = (&PolicyId, &PolicyState, ReportedState)> {
        self.entries()
            .into_iter()
            .map(|(id, entry)| (id, &entry.state, entry.reported()))
    }
}

impl PolicyEntry {
    /// How the policy is reported now.
    pub fn reported(&self) -> ReportedState {
        match &self.state {
            PolicyState::Accepted => match &self.served {
                Some(served) if served.lacks_keys() => ReportedState::JwksUnavailable,
                _ => ReportedState::Accepted,
            },
            PolicyState::Invalid { .. } => ReportedState::Invalid,
            PolicyState::HostConflict { .. } => ReportedState::HostConflict,
        }
    }
}

/// Returns the heap pages malloc holds free to the OS. Parsing and
/// compiling 10,000 policies peaks at about twice what the snapshot keeps;
/// glibc would otherwise keep that peak resident for the life of the
/// process (measured in docs/performance.md).
#[allow(unsafe_code)]
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of malloc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The shared, atomically swapped current snapshot. Readers never block.
#[derive(Clone, Default)]
pub struct SnapshotHandle {
    current: Arc<ArcSwap<PolicySnapshot>>,
    loaded: Arc<std::sync::atomic::AtomicBool>,
    last_reload: Arc<std::sync::Mutex<Option<ReloadReport>>>,
}

/// The outcome of the policy source's last reload (files mode), for
/// `/readyz`: a rejected reload keeps the last good policies serving and is
/// reported here until a reload succeeds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadReport {
    /// When it happened (RFC 3339).
    pub time: String,
    /// `success` or `invalid`.
    pub result: &'static str,
    /// `file:document: field: message` lines of a rejected reload.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl SnapshotHandle {
    /// The snapshot in force.
    pub fn load(&self) -> arc_swap::Guard<Arc<PolicySnapshot>> {
        self.current.load()
    }

    /// Replaces the snapshot; the first call marks policies as loaded.
    pub fn publish(&self, snapshot: PolicySnapshot) {
        drop(self.current.swap(Arc::new(snapshot)));
        self.loaded
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// [`SnapshotHandle::publish`] after a full build, then hands the
    /// memory freed by building it (parsed YAML, the replaced snapshot)
    /// back to the OS.
    pub fn publish_and_trim(&self, snapshot: PolicySnapshot) {
        self.publish(snapshot);
        return_freed_memory();
    }

    /// Whether a snapshot has been published.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records a reload of the policy source: `errors` empty for one that
    /// was published, else why it was rejected. Counts
    /// `scopegate_policy_reloads_total{result}`.
    pub fn record_reload(&self, errors: Vec<String>) {
        let result = if errors.is_empty() {
            "success"
        } else {
            "invalid"
        };
        crate::metrics::policy_reload(result);
        let report = ReloadReport {
            time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            result,
            errors,
        };
        *self.last_reload.lock().expect("never poisoned") = Some(report);
    }

    /// The last reload's outcome, if the source reloads.
    pub fn last_reload(&self) -> Option<ReloadReport> {
        self.last_reload.lock().expect("never poisoned").clone()
    }
}
