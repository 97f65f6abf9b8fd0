//! The in-memory index of `TokenPolicy` objects seen by the watchers.
//!
//! Watch events are applied here; each object's spec is compiled when it
//! changes (not when only its status or metadata does) and handed to the
//! [`SnapshotBuilder`], which keeps the compiled versions and host
//! ownership and publishes the next snapshot at a cost that follows what
//! changed. An object whose new spec does not compile keeps its last good
//! compiled version, which goes on serving.
//!
//! Ownership follows how long an object has been servable: a host stays
//! with the policy that could serve it first, and a policy that becomes
//! valid later (created later, or fixed later) cannot take it. So that
//! every replica resolves conflicts the same way, "servable since" is the
//! creation time for an object that was valid when first seen, the time of
//! the fix for one that was seen invalid, and objects whose status records
//! a lost host conflict (the leader's decision, read by a replica that
//! starts later) come after all others.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt as _;

use super::status::StatusInput;
use crate::jwks::{JwksCache, JwksSource};
use crate::policy::spec::TokenPolicyStatus;
use crate::policy::{
    CompiledPolicy, HostPattern, PolicyId, PolicySnapshot, Seniority, SnapshotBuilder, TokenPolicy,
    TokenPolicySpec,
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

/// What the index keeps of one object: what its status and its place in
/// host ownership are computed from. The compiled versions live in the
/// [`SnapshotBuilder`], once.
#[derive(Debug, Clone)]
pub struct IndexedPolicy {
    /// `metadata.creationTimestamp`: older policies win host conflicts.
    pub created: Option<Time>,
    /// `metadata.generation`, reported back as `observedGeneration`.
    pub generation: Option<i64>,
    /// `metadata.resourceVersion` of the last event seen.
    pub resource_version: Option<String>,
    /// SHA-256 of the spec as last compiled: an event with the same digest
    /// changed only status or metadata.
    spec_digest: [u8; 32],
    /// Whether the current spec compiles.
    compiles: bool,
    /// The compiled spec's warnings (`field: message`), for the status.
    warnings: Vec<String>,
    /// Whether an earlier version compiled (and so serves while the
    /// current one does not).
    has_last_good: bool,
    /// Without a last good version while the spec does not compile: the
    /// hosts the object's status says it served (written by a leader that
    /// saw its last good version), held for it so no other policy takes
    /// them.
    held_hosts: Vec<HostPattern>,
    /// Since when the object has had a servable version: lower ranks own
    /// contested hosts. `None` while it never compiled.
    servable_since: Option<Rank>,
    /// The status as last seen on the object.
    pub status: Option<TokenPolicyStatus>,
}

impl IndexedPolicy {
    fn is_servable(&self) -> bool {
        self.compiles || self.has_last_good || !self.held_hosts.is_empty()
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

    /// Its place in host ownership: servable ones by rank, never-valid ones
    /// last; ties by namespace/name.
    fn seniority(&self, id: PolicyId) -> Seniority {
        match self.servable_since {
            None => Seniority::ranked(2, None, id),
            Some(rank) => Seniority::ranked(
                u8::from(rank.lost_before),
                rank.since.map(|t| t.as_nanosecond()),
                id,
            ),
        }
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

/// Objects by key, relists in progress, and the builder of the snapshot
/// they make.
pub struct PolicyIndex {
    objects: BTreeMap<ObjectKey, IndexedPolicy>,
    relisting: Vec<(Scope, Vec<TokenPolicy>)>,
    builder: SnapshotBuilder<'static>,
    /// Objects whose status may have to change since the last publish:
    /// edited, deleted, or a status or generation seen.
    touched: HashSet<ObjectKey>,
    /// Whether the served set may have changed since the last publish.
    unpublished: bool,
}

/// An object's place in host ownership: earlier ranks win.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    /// The object's status, when first seen, recorded a lost host conflict.
    lost_before: bool,
    /// When it became servable (its creation, or the fix this index saw).
    since: Option<k8s_openapi::jiff::Timestamp>,
}

/// What one object's status should now be computed from, or that it is gone.
#[derive(Debug)]
pub enum StatusChange {
    /// The object's current inputs.
    Set(ObjectKey, Box<StatusInput>),
    /// The object was deleted.
    Removed(ObjectKey),
}

impl PolicyIndex {
    /// An empty index whose policies take their key caches from `keys_for`.
    pub fn new(keys_for: impl FnMut(&JwksSource) -> Arc<JwksCache> + Send + 'static) -> Self {
        PolicyIndex {
            objects: BTreeMap::new(),
            relisting: Vec::new(),
            builder: SnapshotBuilder::new(keys_for),
            touched: HashSet::new(),
            unpublished: false,
        }
    }

    /// Applies an added or modified object. Returns whether the served
    /// policy set may have changed (false when only status or unrelated
    /// metadata changed).
    pub fn apply(&mut self, policy: TokenPolicy) -> bool {
        let key = ObjectKey::of(&policy);
        self.touched.insert(key.clone());
        let digest = spec_digest(&policy.spec);
        let previous = match self.objects.remove(&key) {
            Some(mut existing)
                if existing.spec_digest == digest
                    && existing.created == policy.metadata.creation_timestamp =>
            {
                existing.generation = policy.metadata.generation;
                existing.resource_version = policy.metadata.resource_version;
                existing.status = policy.status;
                self.objects.insert(key, existing);
                return false;
            }
            // A deleted and re-created object starts anew.
            Some(existing) if existing.created == policy.metadata.creation_timestamp => {
                Some(existing)
            }
            Some(_) => {
                self.builder.remove(&key.id());
                None
            }
            None => None,
        };
        let id = key.id();
        let compiled = CompiledPolicy::compile(id.clone(), &policy.spec);
        if let Err(errors) = &compiled {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            tracing::warn!(policy = %id, ?errors, "TokenPolicy does not compile; its last valid version, if any, keeps serving");
        }
        let mut indexed = IndexedPolicy {
            created: policy.metadata.creation_timestamp,
            generation: policy.metadata.generation,
            resource_version: policy.metadata.resource_version,
            spec_digest: digest,
            compiles: compiled.is_ok(),
            warnings: compiled.as_ref().map_or_else(
                |_| Vec::new(),
                |p| p.warnings.iter().map(ToString::to_string).collect(),
            ),
            has_last_good: false,
            held_hosts: Vec::new(),
            servable_since: None,
            status: policy.status,
        };
        let first_sight = previous.is_none();
        if let Some(previous) = previous {
            if !indexed.compiles {
                indexed.has_last_good = previous.compiles || previous.has_last_good;
                indexed.held_hosts = previous.held_hosts;
            }
            indexed.servable_since = previous.servable_since;
        } else if !indexed.compiles {
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
        self.builder
            .update(indexed.seniority(id), compiled, indexed.held_hosts.clone());
        self.objects.insert(key, indexed);
        self.unpublished = true;
        true
    }

    /// Removes a deleted object. Returns whether it was known.
    pub fn delete(&mut self, policy: &TokenPolicy) -> bool {
        let key = ObjectKey::of(policy);
        self.remove(&key)
    }

    fn remove(&mut self, key: &ObjectKey) -> bool {
        if self.objects.remove(key).is_none() {
            return false;
        }
        self.builder.remove(&key.id());
        self.touched.insert(key.clone());
        self.unpublished = true;
        true
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
        let listed_keys: HashSet<ObjectKey> = listed.iter().map(ObjectKey::of).collect();
        let gone: Vec<ObjectKey> = self
            .objects
            .keys()
            .filter(|key| scope.contains(key) && !listed_keys.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            self.remove(&key);
        }
        for policy in listed {
            self.apply(policy);
        }
        self.unpublished = true;
    }

    /// Whether the served set may have changed since the last
    /// [`PolicyIndex::publish`].
    pub fn has_unpublished_changes(&self) -> bool {
        self.unpublished
    }

    /// The next snapshot, and the status inputs of every object whose
    /// status may have changed since the last call (edited or deleted
    /// objects, objects whose state in the snapshot changed, objects whose
    /// status or generation was seen to change).
    pub fn publish(&mut self) -> (PolicySnapshot, Vec<StatusChange>) {
        let (snapshot, changed) = self.builder.publish();
        self.unpublished = false;
        let mut touched = std::mem::take(&mut self.touched);
        touched.extend(changed.iter().filter_map(|id| {
            let (namespace, name) = id.split_once('/')?;
            Some(ObjectKey {
                namespace: namespace.into(),
                name: name.into(),
            })
        }));
        let changes = touched
            .into_iter()
            .map(|key| match self.objects.get(&key) {
                Some(indexed) => {
                    let input = StatusInput::of(indexed, &indexed.warnings, &snapshot, &key.id());
                    StatusChange::Set(key, Box::new(input))
                }
                None => StatusChange::Removed(key),
            })
            .collect();
        (snapshot, changes)
    }

    /// Every indexed object.
    pub fn objects(&self) -> impl Iterator<Item = (&ObjectKey, &IndexedPolicy)> {
        self.objects.iter()
    }
}

/// SHA-256 of the spec's JSON form: equal specs, equal digests, and a
/// different spec never passes for an unchanged one.
fn spec_digest(spec: &TokenPolicySpec) -> [u8; 32] {
    let json = serde_json::to_vec(spec).expect("a spec serializes");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &json);
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
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

    /// An index whose key caches never fetch.
    fn test_index() -> PolicyIndex {
        PolicyIndex::new(|source| crate::jwks::JwksCache::unfetched(source.clone()))
    }

    fn states(index: &mut PolicyIndex) -> Vec<(String, PolicyState)> {
        index
            .publish()
            .0
            .states()
            .into_iter()
            .map(|(id, state)| (id.to_string(), state.clone()))
            .collect()
    }

    #[test]
    fn status_only_updates_do_not_recompile_or_republish() {
        let mut index = test_index();
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
        let mut index = test_index();
        index.apply(policy("z", "newer", 20, &["x.example.com"]));
        index.apply(policy("a", "older", 10, &["x.example.com"]));
        let by_age = states(&mut index);
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
        let mut tie = test_index();
        tie.apply(policy("b", "p", 5, &["y.example.com"]));
        tie.apply(policy("a", "p", 5, &["y.example.com"]));
        assert_eq!(states(&mut tie)[0], ("a/p".into(), PolicyState::Accepted));
    }

    #[test]
    fn deleting_the_winner_hands_the_host_to_the_next_policy() {
        let mut index = test_index();
        let older = policy("a", "older", 10, &["x.example.com"]);
        index.apply(older.clone());
        index.apply(policy("b", "newer", 20, &["x.example.com"]));
        assert!(index.delete(&older));
        assert_eq!(
            states(&mut index),
            vec![("b/newer".into(), PolicyState::Accepted)]
        );
        assert!(!index.delete(&older), "deleting twice is a no-op");
    }

    #[test]
    fn a_relist_replaces_only_its_scope_and_serves_the_old_set_meanwhile() {
        let mut index = test_index();
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
        let mut index = test_index();
        index.apply(policy("a", "bad", 1, &[]));
        index.apply(policy("a", "good", 2, &["x.example.com"]));
        let states = states(&mut index);
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
        let mut index = test_index();
        let owner = policy("a", "owner", 10, &["x.example.com"]);
        index.apply(owner.clone());
        index.apply(policy("b", "rival", 20, &["x.example.com"]));
        assert!(index.apply(broken(owner)));
        let snapshot_states = states(&mut index);
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
        assert!(index.builder.has_serving_version("a/owner"));
    }

    #[test]
    fn a_policy_fixed_later_does_not_take_hosts_from_one_that_served_meanwhile() {
        let mut index = test_index();
        let early = policy("a", "early", 10, &["x.example.com"]);
        index.apply(broken(early.clone()));
        index.apply(policy("b", "later", 20, &["x.example.com"]));
        let mut fixed = early;
        fixed.metadata.generation = Some(3);
        index.apply(fixed);
        let states = states(&mut index);
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
        let mut index = test_index();
        let scope = Scope::All;
        index.start_relist(scope.clone());
        index.relisted(&scope, loser);
        index.relisted(&scope, policy("b", "later", 20, &["x.example.com"]));
        index.finish_relist(&scope);
        assert_eq!(
            states(&mut index)[0],
            ("b/later".into(), PolicyState::Accepted)
        );
    }

    #[test]
    fn a_newer_host_under_an_older_wildcard_of_another_namespace_conflicts() {
        let mut index = test_index();
        index.apply(policy("corp", "wide", 10, &["*.corp.example.com"]));
        index.apply(policy("team", "pay", 20, &["pay.corp.example.com"]));
        index.apply(policy("corp", "same-ns", 30, &["hr.corp.example.com"]));
        let states = states(&mut index);
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
        let mut index = test_index();
        index.apply(owner);
        index.apply(policy("b", "rival", 20, &["pay.own.example.com"]));
        let states = states(&mut index);
        assert!(
            matches!(&states[0], (id, PolicyState::Invalid { serving_last_good: false, .. }) if id == "a/owner"),
            "{states:?}"
        );
        assert!(
            matches!(&states[1].1, PolicyState::HostConflict { winner, .. } if &**winner == "a/owner"),
            "{states:?}"
        );
        let snapshot = index.publish().0;
        assert!(snapshot.lookup("pay.own.example.com").is_none());
        assert!(matches!(
            snapshot.resolve("pay.own.example.com"),
            Some(crate::policy::HostEntry::Held(id)) if &**id == "a/owner"
        ));
        assert_eq!(
            snapshot.hosts_of("a/owner"),
            vec!["*.own.example.com".to_string()]
        );
    }
}
