//! The in-memory index of `TokenPolicy` objects seen by the watchers.
//!
//! Watch events are applied here; each object's spec is compiled when it
//! changes (not when only its status or metadata does). An object whose new
//! spec does not compile keeps its last good compiled version, which goes on
//! serving. [`PolicyIndex::candidates`] orders the objects by how long they
//! have been servable, for [`crate::policy::PolicySnapshot::build`]: a host
//! stays with the policy that could serve it first, and a policy that
//! becomes valid later (created later, or fixed later) cannot take it.
//!
//! So that every replica resolves conflicts the same way, "servable since"
//! is the creation time for an object that was valid when first seen, the
//! time of the fix for one that was seen invalid, and objects whose status
//! records a lost host conflict (the leader's decision, read by a replica
//! that starts later) come after all others.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt as _;

use crate::policy::spec::TokenPolicyStatus;
use crate::policy::{
    Candidate, CompiledPolicy, FieldError, HostPattern, PolicyId, TokenPolicy, TokenPolicySpec,
};

/// `namespace/name` of an object, ordered for deterministic iteration.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    fn of(policy: &TokenPolicy) -> Self {
        ObjectKey {
            namespace: policy.namespace().unwrap_or_default(),
            name: policy.name_any(),
        }
    }

    /// The policy id, `namespace/name`.
    pub fn id(&self) -> PolicyId {
        format!("{}/{}", self.namespace, self.name).into()
    }
}

/// What the index knows of one object.
#[derive(Debug, Clone)]
pub struct IndexedPolicy {
    /// `metadata.creationTimestamp`: older policies win host conflicts.
    pub created: Option<Time>,
    /// `metadata.generation`, reported back as `observedGeneration`.
    pub generation: Option<i64>,
    /// The spec as last compiled.
    spec: TokenPolicySpec,
    /// The compilation result.
    pub compiled: Result<CompiledPolicy, Vec<FieldError>>,
    /// The last version that compiled, kept while `compiled` is an error.
    last_good: Option<CompiledPolicy>,
    /// Without `last_good` while `compiled` is an error: the hosts the
    /// object's status says it served (written by a leader that saw its last
    /// good version), held for it so no other policy takes them.
    held_hosts: Vec<HostPattern>,
    /// Since when the object has had a servable version: lower ranks own
    /// contested hosts. `None` while it never compiled.
    servable_since: Option<Rank>,
    /// The status as last seen on the object.
    pub status: Option<TokenPolicyStatus>,
}

impl IndexedPolicy {
    fn is_servable(&self) -> bool {
        self.compiled.is_ok() || self.last_good.is_some() || !self.held_hosts.is_empty()
    }

    /// `status.servedHosts`, parsed (an entry that does not parse is left out).
    fn recorded_hosts(&self) -> Vec<HostPattern> {
        self.status
            .iter()
            .flat_map(|status| &status.served_hosts)
            .filter_map(|host| HostPattern::parse(host).ok())
            .collect()
    }

    /// Whether the object's status says it lost a host conflict for its
    /// current generation (what the leader decided before this replica
    /// started).
    fn recorded_host_conflict(&self) -> bool {
        self.status.as_ref().is_some_and(|status| {
            status.observed_generation == self.generation
                && status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.reason == "HostConflict")
        })
    }
}

/// Which objects one watcher is responsible for: a relist of a scope
/// replaces exactly the objects of that scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every namespace.
    All,
    /// One namespace.
    Namespace(String),
}

impl Scope {
    fn contains(&self, key: &ObjectKey) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespace(ns) => *ns == key.namespace,
        }
    }
}

/// Objects by key, plus relists in progress.
#[derive(Debug, Default)]
pub struct PolicyIndex {
    objects: BTreeMap<ObjectKey, IndexedPolicy>,
    relisting: Vec<(Scope, Vec<TokenPolicy>)>,
}

/// An object's place in host ownership: earlier ranks win.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    /// The object's status, when first seen, recorded a lost host conflict.
    lost_before: bool,
    /// When it became servable (its creation, or the fix this index saw).
    since: Option<k8s_openapi::jiff::Timestamp>,
}

impl PolicyIndex {
    /// Applies an added or modified object. Returns whether the served
    /// policy set may have changed (false when only status or unrelated
    /// metadata changed).
    pub fn apply(&mut self, policy: TokenPolicy) -> bool {
        let key = ObjectKey::of(&policy);
        let previous = match self.objects.remove(&key) {
            Some(mut existing)
                if existing.spec == policy.spec
                    && existing.created == policy.metadata.creation_timestamp =>
            {
                existing.generation = policy.metadata.generation;
                existing.status = policy.status;
                self.objects.insert(key, existing);
                return false;
            }
            // A deleted and re-created object starts anew.
            Some(existing) if existing.created == policy.metadata.creation_timestamp => {
                Some(existing)
            }
            _ => None,
        };
        let mut indexed = compile(&key, policy);
        let first_sight = previous.is_none();
        if let Some(previous) = previous {
            if indexed.compiled.is_err() {
                indexed.last_good = previous.compiled.ok().or(previous.last_good);
                indexed.held_hosts = previous.held_hosts;
            }
            indexed.servable_since = previous.servable_since;
        } else if indexed.compiled.is_err() {
            indexed.held_hosts = indexed.recorded_hosts();
        }
        if indexed.servable_since.is_none() && indexed.is_servable() {
            indexed.servable_since = Some(if first_sight {
                Rank {
                    lost_before: indexed.recorded_host_conflict(),
                    since: indexed.created.as_ref().map(|t| t.0),
                }
            } else {
                Rank {
                    lost_before: false,
                    since: Some(k8s_openapi::jiff::Timestamp::now()),
                }
            });
        }
        self.objects.insert(key, indexed);
        true
    }

    /// Removes a deleted object. Returns whether it was known.
    pub fn delete(&mut self, policy: &TokenPolicy) -> bool {
        self.objects.remove(&ObjectKey::of(policy)).is_some()
    }

    /// A relist of `scope` begins; the current objects keep serving until
    /// [`PolicyIndex::finish_relist`].
    pub fn start_relist(&mut self, scope: Scope) {
        self.relisting.retain(|(s, _)| *s != scope);
        self.relisting.push((scope, Vec::new()));
    }

    /// An object of the relist in progress for `scope`.
    pub fn relisted(&mut self, scope: &Scope, policy: TokenPolicy) {
        if let Some((_, objects)) = self.relisting.iter_mut().find(|(s, _)| s == scope) {
            objects.push(policy);
        }
    }

    /// The relist of `scope` is complete: its objects replace the scope's
    /// previous ones (unchanged specs are not recompiled).
    pub fn finish_relist(&mut self, scope: &Scope) {
        let Some(position) = self.relisting.iter().position(|(s, _)| s == scope) else {
            return;
        };
        let (_, listed) = self.relisting.swap_remove(position);
        let listed_keys: Vec<ObjectKey> = listed.iter().map(ObjectKey::of).collect();
        self.objects
            .retain(|key, _| !scope.contains(key) || listed_keys.contains(key));
        for policy in listed {
            self.apply(policy);
        }
    }

    /// Compiled policies in ownership order (servable longest first, then
    /// creation time, then namespace/name; never-valid ones last), ready for
    /// [`crate::policy::PolicySnapshot::build`].
    pub fn candidates(&self) -> Vec<Candidate> {
        let mut ordered: Vec<(&ObjectKey, &IndexedPolicy)> = self.objects.iter().collect();
        ordered.sort_by_key(|(key, p)| {
            let never_valid = p.servable_since.is_none();
            (never_valid, p.servable_since, *key)
        });
        ordered
            .into_iter()
            .map(|(key, indexed)| Candidate {
                id: key.id(),
                compiled: indexed.compiled.clone(),
                last_good: indexed.last_good.clone(),
                held_hosts: indexed.held_hosts.clone(),
            })
            .collect()
    }

    /// Every indexed object.
    pub fn objects(&self) -> impl Iterator<Item = (&ObjectKey, &IndexedPolicy)> {
        self.objects.iter()
    }
}

fn compile(key: &ObjectKey, policy: TokenPolicy) -> IndexedPolicy {
    let compiled = CompiledPolicy::compile(key.id(), &policy.spec);
    if let Err(errors) = &compiled {
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        tracing::warn!(policy = %key.id(), ?errors, "TokenPolicy does not compile; its last valid version, if any, keeps serving");
    }
    IndexedPolicy {
        created: policy.metadata.creation_timestamp,
        generation: policy.metadata.generation,
        spec: policy.spec,
        compiled,
        last_good: None,
        held_hosts: Vec::new(),
        servable_since: None,
        status: policy.status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicySnapshot;
    use crate::policy::PolicyState;

    /// A TokenPolicy created `created` seconds after the epoch.
    fn policy(ns: &str, name: &str, created: i64, hosts: &[&str]) -> TokenPolicy {
        let spec: TokenPolicySpec = serde_json::from_value(serde_json::json!({
            "hosts": hosts,
            "issuer": {"url": "https://tenant.example.com/", "audiences": ["api"]},
        }))
        .unwrap();
        let mut object = TokenPolicy::new(name, spec);
        object.metadata.namespace = Some(ns.into());
        object.metadata.generation = Some(1);
        object.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
        ));
        object
    }

    fn states(index: &PolicyIndex) -> Vec<(String, PolicyState)> {
        PolicySnapshot::states_of(index.candidates())
            .into_iter()
            .map(|(id, state)| (id.to_string(), state))
            .collect()
    }

    #[test]
    fn status_only_updates_do_not_recompile_or_republish() {
        let mut index = PolicyIndex::default();
        assert!(index.apply(policy("a", "p", 1, &["x.example.com"])));
        let mut with_status = policy("a", "p", 1, &["x.example.com"]);
        with_status.status = Some(TokenPolicyStatus {
            observed_generation: Some(1),
            ..Default::default()
        });
        assert!(!index.apply(with_status));
        let (_, indexed) = index.objects().next().unwrap();
        assert_eq!(
            indexed.status.as_ref().unwrap().observed_generation,
            Some(1)
        );
    }

    #[test]
    fn the_oldest_policy_wins_a_host_whatever_the_event_order() {
        let mut index = PolicyIndex::default();
        index.apply(policy("z", "newer", 20, &["x.example.com"]));
        index.apply(policy("a", "older", 10, &["x.example.com"]));
        let by_age = states(&index);
        assert_eq!(by_age[0], ("a/older".into(), PolicyState::Accepted));
        assert_eq!(
            by_age[1],
            (
                "z/newer".into(),
                PolicyState::HostConflict {
                    host: "x.example.com".into(),
                    winner: "a/older".into(),
                    winner_host: "x.example.com".into(),
                }
            )
        );
        // Same creation time: namespace/name order decides.
        let mut tie = PolicyIndex::default();
        tie.apply(policy("b", "p", 5, &["y.example.com"]));
        tie.apply(policy("a", "p", 5, &["y.example.com"]));
        assert_eq!(states(&tie)[0], ("a/p".into(), PolicyState::Accepted));
    }

    #[test]
    fn deleting_the_winner_hands_the_host_to_the_next_policy() {
        let mut index = PolicyIndex::default();
        let older = policy("a", "older", 10, &["x.example.com"]);
        index.apply(older.clone());
        index.apply(policy("b", "newer", 20, &["x.example.com"]));
        assert!(index.delete(&older));
        assert_eq!(
            states(&index),
            vec![("b/newer".into(), PolicyState::Accepted)]
        );
        assert!(!index.delete(&older), "deleting twice is a no-op");
    }

    #[test]
    fn a_relist_replaces_only_its_scope_and_serves_the_old_set_meanwhile() {
        let mut index = PolicyIndex::default();
        index.apply(policy("a", "gone", 1, &["gone.example.com"]));
        index.apply(policy("a", "kept", 2, &["kept.example.com"]));
        index.apply(policy("b", "other", 3, &["other.example.com"]));

        let scope = Scope::Namespace("a".into());
        index.start_relist(scope.clone());
        index.relisted(&scope, policy("a", "kept", 2, &["kept.example.com"]));
        index.relisted(&scope, policy("a", "new", 4, &["new.example.com"]));
        assert_eq!(
            index.objects().count(),
            3,
            "nothing changes before the relist is done"
        );

        index.finish_relist(&scope);
        let keys: Vec<String> = index.objects().map(|(k, _)| k.id().to_string()).collect();
        assert_eq!(keys, vec!["a/kept", "a/new", "b/other"]);
    }

    #[test]
    fn an_invalid_policy_is_indexed_with_its_errors_and_others_keep_serving() {
        let mut index = PolicyIndex::default();
        index.apply(policy("a", "bad", 1, &[]));
        index.apply(policy("a", "good", 2, &["x.example.com"]));
        let states = states(&index);
        assert_eq!(states[0], ("a/good".into(), PolicyState::Accepted));
        assert!(
            matches!(&states[1], (id, PolicyState::Invalid { errors, serving_last_good: false })
                if id == "a/bad" && errors[0].field == "spec.hosts"),
            "never-valid policies come last: {states:?}"
        );
    }

    /// `policy` with the spec changed to one that does not compile.
    fn broken(mut object: TokenPolicy) -> TokenPolicy {
        object.spec.issuer.as_mut().unwrap().audiences.clear();
        object.metadata.generation = Some(2);
        object
    }

    #[test]
    fn an_invalid_edit_keeps_serving_the_last_good_version_and_its_hosts() {
        let mut index = PolicyIndex::default();
        let owner = policy("a", "owner", 10, &["x.example.com"]);
        index.apply(owner.clone());
        index.apply(policy("b", "rival", 20, &["x.example.com"]));
        assert!(index.apply(broken(owner)));
        let snapshot_states = states(&index);
        assert!(
            matches!(&snapshot_states[0], (id, PolicyState::Invalid { errors, serving_last_good: true })
                if id == "a/owner" && errors[0].field == "spec.issuer.audiences"),
            "{snapshot_states:?}"
        );
        assert_eq!(
            snapshot_states[1].1,
            PolicyState::HostConflict {
                host: "x.example.com".into(),
                winner: "a/owner".into(),
                winner_host: "x.example.com".into(),
            },
            "the rival does not get the host of an owner that turned invalid"
        );
        let candidates = index.candidates();
        assert!(candidates[0].last_good.is_some());
    }

    #[test]
    fn a_policy_fixed_later_does_not_take_hosts_from_one_that_served_meanwhile() {
        let mut index = PolicyIndex::default();
        let early = policy("a", "early", 10, &["x.example.com"]);
        index.apply(broken(early.clone()));
        index.apply(policy("b", "later", 20, &["x.example.com"]));
        let mut fixed = early;
        fixed.metadata.generation = Some(3);
        index.apply(fixed);
        let states = states(&index);
        assert_eq!(states[0], ("b/later".into(), PolicyState::Accepted));
        assert_eq!(
            states[1],
            (
                "a/early".into(),
                PolicyState::HostConflict {
                    host: "x.example.com".into(),
                    winner: "b/later".into(),
                    winner_host: "x.example.com".into(),
                }
            )
        );
    }

    #[test]
    fn a_replica_that_starts_later_keeps_the_recorded_winner() {
        let mut loser = policy("a", "early", 10, &["x.example.com"]);
        loser.status = Some(TokenPolicyStatus {
            observed_generation: Some(1),
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: "HostConflict".into(),
                message: "host x.example.com is already claimed by policy b/later".into(),
                observed_generation: Some(1),
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            }],
            jwks: None,
            issuers: Vec::new(),
            served_hosts: Vec::new(),
        });
        let mut index = PolicyIndex::default();
        let scope = Scope::All;
        index.start_relist(scope.clone());
        index.relisted(&scope, loser);
        index.relisted(&scope, policy("b", "later", 20, &["x.example.com"]));
        index.finish_relist(&scope);
        assert_eq!(states(&index)[0], ("b/later".into(), PolicyState::Accepted));
    }

    #[test]
    fn a_newer_host_under_an_older_wildcard_of_another_namespace_conflicts() {
        let mut index = PolicyIndex::default();
        index.apply(policy("corp", "wide", 10, &["*.corp.example.com"]));
        index.apply(policy("team", "pay", 20, &["pay.corp.example.com"]));
        index.apply(policy("corp", "same-ns", 30, &["hr.corp.example.com"]));
        let states = states(&index);
        assert_eq!(
            states[1].1,
            PolicyState::HostConflict {
                host: "pay.corp.example.com".into(),
                winner: "corp/wide".into(),
                winner_host: "*.corp.example.com".into(),
            }
        );
        assert_eq!(
            states[2].1,
            PolicyState::Accepted,
            "same namespace may carve out"
        );
    }

    /// Finding 1, on a replica that starts after the owner's invalid edit:
    /// it never saw the last good version, but the owner's status records
    /// the hosts it served, so they stay held for it (503), not handed over.
    #[test]
    fn a_replica_that_starts_after_an_invalid_edit_holds_the_owners_hosts() {
        let mut owner = broken(policy("a", "owner", 10, &["*.own.example.com"]));
        owner.status = Some(TokenPolicyStatus {
            observed_generation: Some(1),
            served_hosts: vec!["*.own.example.com".into()],
            ..Default::default()
        });
        let mut index = PolicyIndex::default();
        index.apply(owner);
        index.apply(policy("b", "rival", 20, &["pay.own.example.com"]));
        let states = states(&index);
        assert!(
            matches!(&states[0], (id, PolicyState::Invalid { serving_last_good: false, .. }) if id == "a/owner"),
            "{states:?}"
        );
        assert!(
            matches!(&states[1].1, PolicyState::HostConflict { winner, .. } if &**winner == "a/owner"),
            "{states:?}"
        );
        let registry = crate::jwks::JwksRegistry::new(Default::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let snapshot =
            runtime.block_on(async { PolicySnapshot::build(index.candidates(), &registry) });
        assert!(snapshot.lookup("pay.own.example.com").is_none());
        assert_eq!(
            snapshot.held_by("pay.own.example.com").map(|id| &**id),
            Some("a/owner")
        );
        assert_eq!(
            snapshot.hosts_of("a/owner"),
            vec!["*.own.example.com".to_string()]
        );
    }
}
