//! The set of policies in force, indexed by host and swapped atomically.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::compile::{ClaimHeader, CompiledIssuer, CompiledPolicy, FieldError, PolicyId};
use super::matching::HostPattern;
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
    fn new(
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
struct Shared {
    verifications: HashSet<Arc<Verification>>,
    selections: HashSet<Arc<ClaimSelection>>,
    issuers: HashSet<Arc<[CompiledIssuer]>>,
    scope_claims: HashSet<Arc<[Box<str>]>>,
    claim_headers: HashSet<Arc<[ClaimHeader]>>,
}

impl Shared {
    /// `policy` with its common parts replaced by the shared copies.
    fn share_parts(&mut self, mut policy: CompiledPolicy) -> CompiledPolicy {
        policy.issuers = intern_arc(&mut self.issuers, policy.issuers);
        policy.scope_claims = intern_arc(&mut self.scope_claims, policy.scope_claims);
        policy.claim_headers = intern_arc(&mut self.claim_headers, policy.claim_headers);
        policy
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

/// Policies in force, indexed by host, plus the state of every candidate.
#[derive(Debug, Default)]
pub struct PolicySnapshot {
    served: Vec<Arc<ServedPolicy>>,
    exact: HashMap<Box<str>, usize>,
    wildcard: HashMap<Box<str>, usize>,
    /// Hosts held by invalid policies whose last good version this replica
    /// never saw (see [`Candidate::held_hosts`]).
    held_exact: HashMap<Box<str>, PolicyId>,
    held_wildcard: HashMap<Box<str>, PolicyId>,
    states: Vec<(PolicyId, PolicyState)>,
    /// `served` by policy id.
    served_by_id: HashMap<PolicyId, usize>,
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
        mut keys_for: impl FnMut(&JwksSource) -> Arc<JwksCache>,
    ) -> Self {
        let (accepted, held, states) = assign_hosts(candidates);
        let mut shared = Shared::default();
        let mut snapshot = PolicySnapshot {
            states,
            ..PolicySnapshot::default()
        };
        for (id, hosts) in held {
            for host in hosts {
                match host {
                    HostPattern::Exact(h) => snapshot.held_exact.insert(h, id.clone()),
                    HostPattern::Wildcard(s) => snapshot.held_wildcard.insert(s, id.clone()),
                };
            }
        }
        for policy in accepted {
            let index = snapshot.served.len();
            for host in &policy.hosts {
                match host {
                    HostPattern::Exact(h) => snapshot.exact.insert(h.clone(), index),
                    HostPattern::Wildcard(s) => snapshot.wildcard.insert(s.clone(), index),
                };
            }
            snapshot.served_by_id.insert(policy.id.clone(), index);
            snapshot.served.push(Arc::new(ServedPolicy::new(
                policy,
                &mut keys_for,
                &mut shared,
            )));
        }
        snapshot
    }

    /// The state each candidate would get from [`PolicySnapshot::build`],
    /// without binding key caches (for validation).
    pub fn states_of(candidates: Vec<Candidate>) -> Vec<(PolicyId, PolicyState)> {
        assign_hosts(candidates).2
    }

    /// The policy for a normalized host: an exact host first, else the
    /// wildcard with the longest suffix.
    pub fn lookup(&self, host: &str) -> Option<&Arc<ServedPolicy>> {
        most_specific(&self.exact, &self.wildcard, host).map(|(&i, _)| &self.served[i])
    }

    /// The invalid policy that holds `host` without serving it (its last
    /// good version unknown to this replica), when no served policy has a
    /// more specific pattern for it: such a host answers 503.
    pub fn held_by(&self, host: &str) -> Option<&PolicyId> {
        let (id, held) = most_specific(&self.held_exact, &self.held_wildcard, host)?;
        let served = most_specific(&self.exact, &self.wildcard, host).map(|(_, length)| length);
        (served.is_none_or(|length| held > length)).then_some(id)
    }

    /// The hosts this snapshot serves or holds for policy `id`.
    pub fn hosts_of(&self, id: &str) -> Vec<String> {
        if let Some(served) = self.served_by_id(id) {
            return served
                .policy
                .hosts
                .iter()
                .map(ToString::to_string)
                .collect();
        }
        let exact = self
            .held_exact
            .iter()
            .filter(|(_, h)| &***h == id)
            .map(|(e, _)| e.to_string());
        let wildcard = self
            .held_wildcard
            .iter()
            .filter(|(_, h)| &***h == id)
            .map(|(s, _)| format!("*{s}"));
        let mut hosts: Vec<String> = exact.chain(wildcard).collect();
        hosts.sort();
        hosts
    }

    /// The policies being served.
    pub fn served(&self) -> &[Arc<ServedPolicy>] {
        &self.served
    }

    /// Every candidate's state, in build order.
    pub fn states(&self) -> &[(PolicyId, PolicyState)] {
        &self.states
    }

    /// The served policy with this id.
    pub fn served_by_id(&self, id: &str) -> Option<&Arc<ServedPolicy>> {
        self.served_by_id.get(id).map(|&i| &self.served[i])
    }

    /// Every candidate's state and how it is reported now (key caches
    /// change between snapshots, so this is computed on each call).
    pub fn reported(&self) -> impl Iterator<Item = (&PolicyId, &PolicyState, ReportedState)> {
        self.states.iter().map(|(id, state)| {
            let reported = match state {
                PolicyState::Accepted => match self.served_by_id(id) {
                    Some(served) if served.lacks_keys() => ReportedState::JwksUnavailable,
                    _ => ReportedState::Accepted,
                },
                PolicyState::Invalid { .. } => ReportedState::Invalid,
                PolicyState::HostConflict { .. } => ReportedState::HostConflict,
            };
            (id, state, reported)
        })
    }
}

/// The value for `host` in an exact/wildcard index: an exact host first,
/// else the wildcard with the longest suffix; with the match's length (how
/// specific it is).
fn most_specific<'m, V>(
    exact: &'m HashMap<Box<str>, V>,
    wildcard: &'m HashMap<Box<str>, V>,
    host: &str,
) -> Option<(&'m V, usize)> {
    if let Some(value) = exact.get(host) {
        return Some((value, usize::MAX));
    }
    if wildcard.is_empty() {
        return None;
    }
    host.match_indices('.')
        .filter(|(i, _)| *i > 0)
        .find_map(|(i, _)| wildcard.get(&host[i..]).map(|v| (v, host.len() - i)))
}

/// Hosts held for invalid policies, by policy.
type HeldHosts = Vec<(PolicyId, Vec<HostPattern>)>;

/// Splits candidates into the policies that are served (in order), the
/// hosts held for invalid ones, and the state of every candidate.
/// Candidates come in ownership order (oldest first): each one may claim
/// only hosts that no earlier served policy covers (see
/// [`HostOwners::contested`]).
fn assign_hosts(
    candidates: Vec<Candidate>,
) -> (Vec<CompiledPolicy>, HeldHosts, Vec<(PolicyId, PolicyState)>) {
    let mut accepted = Vec::with_capacity(candidates.len());
    let mut held = Vec::new();
    let mut states = Vec::with_capacity(candidates.len());
    let mut owners = HostOwners::default();
    for candidate in candidates {
        let (serving, invalid) = match candidate.compiled {
            Ok(policy) => (Some(policy), None),
            Err(errors) => (candidate.last_good, Some(errors)),
        };
        if serving.is_none()
            && invalid.is_some()
            && !candidate.held_hosts.is_empty()
            && owners
                .contested(&candidate.id, &candidate.held_hosts)
                .is_none()
        {
            owners.claim(&candidate.id, &candidate.held_hosts);
            held.push((candidate.id.clone(), candidate.held_hosts));
        }
        let conflict = serving
            .as_ref()
            .and_then(|policy| owners.contested(&policy.id, &policy.hosts));
        let serves = serving.is_some() && conflict.is_none();
        let state = match (invalid, conflict) {
            // A last good version that lost its hosts (only possible when
            // an older policy appeared meanwhile) serves nothing.
            (Some(errors), _) => PolicyState::Invalid {
                errors,
                serving_last_good: serves,
            },
            (None, Some((host, winner, winner_host))) => PolicyState::HostConflict {
                host,
                winner,
                winner_host,
            },
            (None, None) => PolicyState::Accepted,
        };
        if let Some(policy) = serving.filter(|_| serves) {
            owners.claim(&policy.id, &policy.hosts);
            accepted.push(policy);
        }
        states.push((candidate.id, state));
    }
    (accepted, held, states)
}

/// The host patterns claimed so far, with the policy (and its namespace)
/// that owns each.
#[derive(Default)]
struct HostOwners(HashMap<HostPattern, PolicyId>);

impl HostOwners {
    /// The first of `policy`'s hosts that an owner already covers, with
    /// that owner: the same pattern (whoever owns it), or a more specific
    /// one under an owner's wildcard (`pay.corp.example.com` or
    /// `*.pay.corp.example.com` under `*.corp.example.com`) unless both
    /// policies are in the same namespace. A new wildcard over an owned
    /// exact host is no conflict: lookup prefers the exact host.
    fn contested(&self, id: &str, hosts: &[HostPattern]) -> Option<(String, PolicyId, String)> {
        let namespace = namespace_of(id);
        hosts.iter().find_map(|host| {
            if let Some(owner) = self.0.get(host) {
                return Some((host.to_string(), owner.clone(), host.to_string()));
            }
            host.covering_wildcards()
                .find_map(|wildcard| Some((self.0.get(&wildcard)?, wildcard)))
                .filter(|(owner, _)| namespace_of(owner) != namespace)
                .map(|(owner, wildcard)| (host.to_string(), owner.clone(), wildcard.to_string()))
        })
    }

    fn claim(&mut self, id: &PolicyId, hosts: &[HostPattern]) {
        for host in hosts {
            self.0.insert(host.clone(), id.clone());
        }
    }
}

/// The namespace part of a `namespace/name` id.
fn namespace_of(id: &str) -> &str {
    id.split_once('/').map_or("", |(namespace, _)| namespace)
}

/// Returns the heap pages malloc holds free to the OS. Parsing and
/// compiling 10,000 policies peaks at about twice what the snapshot keeps;
/// glibc would otherwise keep that peak resident for the life of the
/// process (measured in docs/performance.md).
#[allow(unsafe_code)]
fn return_freed_memory() {
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
    /// Then hands the memory freed by building it (parsed YAML, the
    /// replaced snapshot) back to the OS.
    pub fn publish(&self, snapshot: PolicySnapshot) {
        drop(self.current.swap(Arc::new(snapshot)));
        self.loaded
            .store(true, std::sync::atomic::Ordering::Release);
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
