//! Host ownership, maintained incrementally: the [`SnapshotBuilder`] keeps
//! every candidate policy, who wants which host, and who owns it, and turns
//! a batch of changes into the next [`PolicySnapshot`] at a cost that
//! follows the changes, not the number of policies.
//!
//! ```text
//!  upsert / remove ──► claimants (host → candidates, oldest first)
//!        │                     │
//!        └──► dirty (by seniority) ──evaluate──► outcome changed? ──► dirty += later claimants
//!                                                       │                 of the same hosts
//!                                                       ▼
//!                            touched hosts / policies ──► copy-on-write tables ──► PolicySnapshot
//! ```
//!
//! The rule is the one a full pass would apply (candidates in seniority
//! order, each claiming only hosts no earlier owner covers, see
//! [`SnapshotBuilder::contested`]); a candidate's outcome depends only on
//! the owners of its own hosts and of the wildcards above them, so an edit
//! re-evaluates the edited candidate and, when its ownership changes, the
//! later candidates that want the same hosts (and so on, in seniority
//! order: each candidate at most once per batch).

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::compile::{CompiledPolicy, FieldError, PolicyId};
use super::matching::HostPattern;
use super::sharded::ShardedMap;
use super::snapshot::{
    Candidate, HostEntry, PolicyEntry, PolicySnapshot, PolicyState, ServedPolicy, Shared,
};
use crate::jwks::{JwksCache, JwksSource};

/// Where a candidate stands in host ownership: a lower seniority owns the
/// hosts it contests with a higher one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Seniority {
    /// `(class, since)`: lower first.
    rank: (u8, i128),
    /// Ties: namespace, then name.
    id: PolicyId,
}

impl Seniority {
    /// The `index`-th candidate of an ordered list (files mode).
    pub fn position(index: usize, id: PolicyId) -> Self {
        Seniority {
            rank: (0, index as i128),
            id,
        }
    }

    /// A candidate of class `class` (lower first) servable since `since`
    /// (nanoseconds since the epoch; `None` first).
    pub fn ranked(class: u8, since: Option<i128>, id: PolicyId) -> Self {
        Seniority {
            rank: (class, since.unwrap_or(i128::MIN)),
            id,
        }
    }

    /// The policy.
    pub fn id(&self) -> &PolicyId {
        &self.id
    }
}

impl Ord for Seniority {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank
            .cmp(&other.rank)
            .then_with(|| split_id(&self.id).cmp(&split_id(&other.id)))
    }
}

impl PartialOrd for Seniority {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// `(namespace, name)` of a `namespace/name` id.
fn split_id(id: &str) -> (&str, &str) {
    id.split_once('/').unwrap_or(("", id))
}

/// What a candidate does with the hosts it wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// Nothing (conflict, never valid, not evaluated yet).
    Nothing,
    /// Serves them (its current or its last good version).
    Serving,
    /// Holds them for an invalid version this replica never saw serve:
    /// they answer 503.
    Holding,
}

/// One candidate.
struct Entry {
    seniority: Seniority,
    /// The current spec's errors; `None` when it compiles.
    errors: Option<Vec<FieldError>>,
    /// The version that serves: the current one, or the last good one.
    serving: Option<Arc<ServedPolicy>>,
    /// Hosts held without a serving version (see [`Candidate::held_hosts`]).
    held_hosts: Vec<HostPattern>,
    claim: Claim,
    state: Option<PolicyState>,
}

impl Entry {
    /// The hosts it would claim.
    fn wanted(&self) -> &[HostPattern] {
        match (&self.serving, &self.errors) {
            (Some(serving), _) => &serving.policy.hosts,
            (None, Some(_)) => &self.held_hosts,
            (None, None) => &[],
        }
    }
}

/// Where a served policy gets the key cache of each of its issuers.
type KeysFor<'k> = Box<dyn FnMut(&JwksSource) -> Arc<JwksCache> + Send + 'k>;

/// Builds snapshots incrementally (see the module docs).
pub struct SnapshotBuilder<'k> {
    entries: HashMap<PolicyId, Entry>,
    /// Who wants each host pattern, oldest first.
    claimants: HashMap<HostPattern, BTreeSet<Seniority>>,
    /// For each wildcard, the wanted patterns under it.
    covered: HashMap<HostPattern, HashSet<HostPattern>>,
    /// Candidates to evaluate, oldest first.
    dirty: BTreeSet<Seniority>,
    /// Host table entries to recompute.
    touched_hosts: HashSet<HostPattern>,
    /// Policy table entries to recompute.
    touched_policies: HashSet<PolicyId>,
    shared: Shared,
    keys_for: KeysFor<'k>,
    exact: ShardedMap<Box<str>, HostEntry>,
    wildcard: ShardedMap<Box<str>, HostEntry>,
    policies: ShardedMap<PolicyId, Arc<PolicyEntry>>,
}

impl<'k> SnapshotBuilder<'k> {
    /// An empty builder whose policies take their key caches from `keys_for`.
    pub fn new(keys_for: impl FnMut(&JwksSource) -> Arc<JwksCache> + Send + 'k) -> Self {
        SnapshotBuilder {
            entries: HashMap::new(),
            claimants: HashMap::new(),
            covered: HashMap::new(),
            dirty: BTreeSet::new(),
            touched_hosts: HashSet::new(),
            touched_policies: HashSet::new(),
            shared: Shared::default(),
            keys_for: Box::new(keys_for),
            exact: ShardedMap::default(),
            wildcard: ShardedMap::default(),
            policies: ShardedMap::default(),
        }
    }

    /// Adds or replaces a candidate, with the last good version it brings.
    pub fn upsert(&mut self, seniority: Seniority, candidate: Candidate) {
        let (errors, serving) = match candidate.compiled {
            Ok(policy) => (None, Some(policy)),
            Err(errors) => (Some(errors), candidate.last_good),
        };
        let serving = serving.map(|policy| self.serve(policy));
        self.insert(seniority, errors, serving, candidate.held_hosts);
    }

    /// Adds or replaces a candidate whose earlier version this builder
    /// holds: when `compiled` is an error, the version that served so far
    /// (the previous current one, or its last good one) keeps serving.
    pub fn update(
        &mut self,
        seniority: Seniority,
        compiled: Result<CompiledPolicy, Vec<FieldError>>,
        held_hosts: Vec<HostPattern>,
    ) {
        let (errors, serving) = match compiled {
            Ok(policy) => (None, Some(self.serve(policy))),
            Err(errors) => (
                Some(errors),
                self.entries
                    .get(&seniority.id)
                    .and_then(|previous| previous.serving.clone()),
            ),
        };
        self.insert(seniority, errors, serving, held_hosts);
    }

    /// Removes a candidate; its hosts go to the next in line.
    pub fn remove(&mut self, id: &str) {
        if self.take(id).is_some() {
            self.touched_policies.insert(id.into());
        }
    }

    /// Whether the builder holds a version of `id` that serves.
    pub fn has_serving_version(&self, id: &str) -> bool {
        self.entries.get(id).is_some_and(|e| e.serving.is_some())
    }

    fn serve(&mut self, policy: CompiledPolicy) -> Arc<ServedPolicy> {
        Arc::new(ServedPolicy::new(
            policy,
            &mut *self.keys_for,
            &mut self.shared,
        ))
    }

    fn insert(
        &mut self,
        seniority: Seniority,
        errors: Option<Vec<FieldError>>,
        serving: Option<Arc<ServedPolicy>>,
        held_hosts: Vec<HostPattern>,
    ) {
        self.take(&seniority.id);
        let entry = Entry {
            seniority: seniority.clone(),
            errors,
            serving,
            held_hosts,
            claim: Claim::Nothing,
            state: None,
        };
        for host in entry.wanted() {
            self.claimants
                .entry(host.clone())
                .or_default()
                .insert(seniority.clone());
            for wildcard in host.covering_wildcards() {
                self.covered
                    .entry(wildcard)
                    .or_default()
                    .insert(host.clone());
            }
            self.touched_hosts.insert(host.clone());
        }
        self.touched_policies.insert(seniority.id.clone());
        self.dirty.insert(seniority.clone());
        self.entries.insert(seniority.id.clone(), entry);
    }

    /// Takes a candidate out of the index; the candidates that want its
    /// hosts are evaluated again.
    fn take(&mut self, id: &str) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.dirty.remove(&entry.seniority);
        let claimed = entry.claim != Claim::Nothing;
        for host in entry.wanted() {
            if let Some(claimants) = self.claimants.get_mut(host) {
                claimants.remove(&entry.seniority);
                if claimants.is_empty() {
                    self.claimants.remove(host);
                    for wildcard in host.covering_wildcards() {
                        if let Some(covered) = self.covered.get_mut(&wildcard) {
                            covered.remove(host);
                            if covered.is_empty() {
                                self.covered.remove(&wildcard);
                            }
                        }
                    }
                }
            }
            self.touched_hosts.insert(host.clone());
        }
        if claimed {
            for host in entry.wanted() {
                self.mark_rivals(host, None);
            }
        }
        Some(entry)
    }

    /// Marks dirty the candidates (later than `after`, if given) whose
    /// outcome may depend on who owns `host`: those that want it, and,
    /// for a wildcard, those that want a host under it.
    fn mark_rivals(&mut self, host: &HostPattern, after: Option<&Seniority>) {
        let under = self.covered.get(host).into_iter().flatten();
        for pattern in std::iter::once(host).chain(under) {
            let Some(claimants) = self.claimants.get(pattern) else {
                continue;
            };
            let later = claimants
                .iter()
                .filter(|s| after.is_none_or(|after| *s > after));
            self.dirty.extend(later.cloned());
        }
    }

    /// The earliest candidate before `seniority` that owns `host`.
    fn owner_before(&self, host: &HostPattern, seniority: &Seniority) -> Option<&PolicyId> {
        self.claimants
            .get(host)?
            .range(..seniority)
            .find(|s| self.entries[&s.id].claim != Claim::Nothing)
            .map(|s| &s.id)
    }

    /// The first of `hosts` that an earlier owner covers, with that owner
    /// and its covering pattern: the same pattern (whoever owns it), or a
    /// more specific one under an owner's wildcard (`pay.corp.example.com`
    /// or `*.pay.corp.example.com` under `*.corp.example.com`) unless both
    /// are in the same namespace. A new wildcard over an owned exact host
    /// is no conflict: lookup prefers the exact host.
    fn contested(
        &self,
        seniority: &Seniority,
        hosts: &[HostPattern],
    ) -> Option<(String, PolicyId, String)> {
        let namespace = split_id(&seniority.id).0;
        hosts.iter().find_map(|host| {
            if let Some(owner) = self.owner_before(host, seniority) {
                return Some((host.to_string(), owner.clone(), host.to_string()));
            }
            host.covering_wildcards()
                .find_map(|wildcard| Some((self.owner_before(&wildcard, seniority)?, wildcard)))
                .filter(|(owner, _)| split_id(owner).0 != namespace)
                .map(|(owner, wildcard)| (host.to_string(), owner.clone(), wildcard.to_string()))
        })
    }

    /// A candidate's claim and state, given the owners before it.
    fn evaluate(&self, entry: &Entry) -> (Claim, PolicyState) {
        let Some(serving) = &entry.serving else {
            let errors = entry.errors.clone().unwrap_or_default();
            let holds = !entry.held_hosts.is_empty()
                && self
                    .contested(&entry.seniority, &entry.held_hosts)
                    .is_none();
            let state = PolicyState::Invalid {
                errors,
                serving_last_good: false,
            };
            return (
                if holds {
                    Claim::Holding
                } else {
                    Claim::Nothing
                },
                state,
            );
        };
        let conflict = self.contested(&entry.seniority, &serving.policy.hosts);
        let claim = if conflict.is_none() {
            Claim::Serving
        } else {
            Claim::Nothing
        };
        let state = match (&entry.errors, conflict) {
            // A last good version that lost its hosts (only possible when
            // an older policy appeared meanwhile) serves nothing.
            (Some(errors), conflict) => PolicyState::Invalid {
                errors: errors.clone(),
                serving_last_good: conflict.is_none(),
            },
            (None, Some((host, winner, winner_host))) => PolicyState::HostConflict {
                host,
                winner,
                winner_host,
            },
            (None, None) => PolicyState::Accepted,
        };
        (claim, state)
    }

    /// Evaluates the pending changes and returns the next snapshot, with
    /// the ids of the policies whose state or served version changed.
    pub fn publish(&mut self) -> (PolicySnapshot, Vec<PolicyId>) {
        while let Some(seniority) = self.dirty.pop_first() {
            let Some(entry) = self.entries.get(&seniority.id) else {
                continue;
            };
            let (claim, state) = self.evaluate(entry);
            let claim_changed = claim != entry.claim;
            let state_changed = entry.state.as_ref() != Some(&state);
            if claim_changed {
                let wanted = entry.wanted().to_vec();
                for host in &wanted {
                    self.mark_rivals(host, Some(&seniority));
                }
                self.touched_hosts.extend(wanted);
            }
            if claim_changed || state_changed {
                self.touched_policies.insert(seniority.id.clone());
            }
            let entry = self
                .entries
                .get_mut(&seniority.id)
                .expect("dirty entries exist");
            entry.claim = claim;
            entry.state = Some(state);
        }
        for host in std::mem::take(&mut self.touched_hosts) {
            self.refresh_host(host);
        }
        let changed: Vec<PolicyId> = std::mem::take(&mut self.touched_policies)
            .into_iter()
            .collect();
        for id in &changed {
            self.refresh_policy(id);
        }
        self.shared.prune();
        let snapshot = PolicySnapshot::from_tables(
            self.exact.clone(),
            self.wildcard.clone(),
            self.policies.clone(),
        );
        (snapshot, changed)
    }

    /// Points `host` at its owner, or removes it.
    fn refresh_host(&mut self, host: HostPattern) {
        let owner = self.claimants.get(&host).and_then(|claimants| {
            claimants
                .iter()
                .map(|s| &self.entries[&s.id])
                .find(|e| e.claim != Claim::Nothing)
        });
        let value = owner.map(|entry| match (&entry.serving, entry.claim) {
            (Some(served), Claim::Serving) => HostEntry::Served(served.clone()),
            _ => HostEntry::Held(entry.seniority.id.clone()),
        });
        let (table, key) = match host {
            HostPattern::Exact(name) => (&mut self.exact, name),
            HostPattern::Wildcard(suffix) => (&mut self.wildcard, suffix),
        };
        match value {
            Some(value) => table.insert(key, value),
            None => table.remove(&*key),
        }
    }

    fn refresh_policy(&mut self, id: &PolicyId) {
        let Some(entry) = self.entries.get(id) else {
            self.policies.remove(id);
            return;
        };
        let report = PolicyEntry {
            seniority: entry.seniority.clone(),
            state: entry.state.clone().expect("evaluated before refresh"),
            served: entry
                .serving
                .clone()
                .filter(|_| entry.claim == Claim::Serving),
            held_hosts: if entry.claim == Claim::Holding {
                entry.held_hosts.clone().into()
            } else {
                Box::default()
            },
        };
        self.policies.insert(id.clone(), Arc::new(report));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::TokenPolicySpec;

    /// One policy of the model: its hosts, whether its current spec
    /// compiles, and what it brings when it does not.
    #[derive(Clone, Debug)]
    struct Model {
        seniority: Seniority,
        hosts: Vec<&'static str>,
        valid: bool,
        last_good: Option<Vec<&'static str>>,
        held: Vec<&'static str>,
    }

    fn compiled(
        id: &PolicyId,
        hosts: &[&str],
        valid: bool,
    ) -> Result<CompiledPolicy, Vec<FieldError>> {
        let spec: TokenPolicySpec = serde_json::from_value(serde_json::json!({
            "hosts": hosts,
            "issuer": {
                "url": "https://tenant.example.com/",
                "audiences": if valid { vec!["api"] } else { vec![] },
            },
        }))
        .unwrap();
        CompiledPolicy::compile(id.clone(), &spec)
    }

    fn candidate(model: &Model) -> Candidate {
        let id = model.seniority.id().clone();
        Candidate {
            compiled: compiled(&id, &model.hosts, model.valid),
            last_good: model
                .last_good
                .as_ref()
                .map(|hosts| compiled(&id, hosts, true).unwrap()),
            held_hosts: model
                .held
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
            id,
        }
    }

    /// A builder whose policies share one key cache per source (that never
    /// fetches).
    fn builder() -> SnapshotBuilder<'static> {
        let mut caches: HashMap<JwksSource, Arc<JwksCache>> = HashMap::new();
        SnapshotBuilder::new(move |source| {
            caches
                .entry(source.clone())
                .or_insert_with(|| JwksCache::unfetched(source.clone()))
                .clone()
        })
    }

    /// Who answers each probe host, and every policy's state.
    fn observe(snapshot: &PolicySnapshot) -> (Vec<Option<String>>, Vec<(String, PolicyState)>) {
        const PROBES: [&str; 8] = [
            "a.x.example.com",
            "b.x.example.com",
            "q.a.x.example.com",
            "z.x.example.com",
            "x.example.com",
            "c.y.example.com",
            "w.y.example.com",
            "other.example.org",
        ];
        let owners = PROBES
            .iter()
            .map(|host| {
                snapshot.resolve(host).map(|entry| match entry {
                    HostEntry::Served(served) => format!("served by {}", served.policy.id),
                    HostEntry::Held(id) => format!("held for {id}"),
                })
            })
            .collect();
        let mut states: Vec<(String, PolicyState)> = snapshot
            .states()
            .into_iter()
            .map(|(id, state)| (id.to_string(), state.clone()))
            .collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        (owners, states)
    }

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
        }
    }

    /// After every batch of random edits, the incrementally maintained
    /// snapshot answers exactly as one built from scratch from the same
    /// policies: same owner for every host, same state for every policy.
    #[test]
    fn incremental_publishes_match_a_full_build() {
        const HOSTS: [&str; 8] = [
            "a.x.example.com",
            "b.x.example.com",
            "*.x.example.com",
            "*.a.x.example.com",
            "x.example.com",
            "c.y.example.com",
            "*.y.example.com",
            "*.example.com",
        ];
        const NAMESPACES: [&str; 3] = ["n1", "n2", "n3"];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let pick_hosts = |rng: &mut Rng| -> Vec<&'static str> {
            let mut hosts: Vec<&'static str> = (0..1 + rng.below(2))
                .map(|_| HOSTS[rng.below(HOSTS.len())])
                .collect();
            hosts.dedup();
            hosts
        };
        for round in 0..20 {
            let mut incremental = builder();
            let mut models: HashMap<PolicyId, Model> = HashMap::new();
            for _ in 0..25 {
                for _ in 0..1 + rng.below(3) {
                    let name = format!(
                        "{}/p{}",
                        NAMESPACES[rng.below(NAMESPACES.len())],
                        rng.below(8)
                    );
                    let id: PolicyId = name.into();
                    if rng.below(5) == 0 {
                        incremental.remove(&id);
                        models.remove(&id);
                        continue;
                    }
                    let valid = rng.below(4) != 0;
                    let model = Model {
                        seniority: Seniority::ranked(
                            rng.below(2) as u8,
                            Some(rng.below(6) as i128),
                            id.clone(),
                        ),
                        hosts: pick_hosts(&mut rng),
                        valid,
                        last_good: (!valid && rng.below(2) == 0).then(|| pick_hosts(&mut rng)),
                        held: if !valid && rng.below(2) == 0 {
                            pick_hosts(&mut rng)
                        } else {
                            Vec::new()
                        },
                    };
                    incremental.upsert(model.seniority.clone(), candidate(&model));
                    models.insert(id, model);
                }
                let (snapshot, _) = incremental.publish();
                let mut full = builder();
                for model in models.values() {
                    full.upsert(model.seniority.clone(), candidate(model));
                }
                let (expected, _) = full.publish();
                assert_eq!(
                    observe(&snapshot),
                    observe(&expected),
                    "round {round}: {models:#?}"
                );
            }
        }
    }

    /// An edit reports the policies whose state it changed, not the others.
    #[test]
    fn a_publish_reports_only_what_changed() {
        let mut builder = builder();
        let model = |name: &str, rank: i128, hosts: Vec<&'static str>| Model {
            seniority: Seniority::ranked(0, Some(rank), format!("ns/{name}").into()),
            hosts,
            valid: true,
            last_good: None,
            held: Vec::new(),
        };
        for i in 0..100 {
            // p0 and p2 want h0; every other policy has a host of its own.
            let host = if i == 2 { 0 } else { i };
            let host: &'static str = Box::leak(format!("h{host}.example.com").into_boxed_str());
            let m = model(&format!("p{i}"), i as i128, vec![host]);
            builder.upsert(m.seniority.clone(), candidate(&m));
        }
        let _ = builder.publish();
        // p0 moves to another host and p2 takes h0.
        let moved = model("p0", 0, vec!["elsewhere.example.com"]);
        builder.upsert(moved.seniority.clone(), candidate(&moved));
        let (snapshot, mut changed) = builder.publish();
        changed.sort();
        assert_eq!(
            changed,
            vec![PolicyId::from("ns/p0"), PolicyId::from("ns/p2")]
        );
        assert!(matches!(
            snapshot.resolve("h0.example.com"),
            Some(HostEntry::Served(p)) if &*p.policy.id == "ns/p2"
        ));
    }
}
