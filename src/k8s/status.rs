//! What each `TokenPolicy`'s `status` should say, and the writer that puts
//! it there with server-side apply (only when it changed, only on the
//! leader).
//!
//! The writer's work follows what changed, not how many policies there
//! are: the indexer sends it the inputs of the objects it touched
//! ([`StatusChange`]), key caches are watched for the changes a status
//! shows, and each wake computes the desired status of the objects marked
//! dirty only. It never writes a status the object already has, nor one it
//! wrote itself and the watch has not echoed yet; it waits (boundedly) for
//! a policy's first key fetch before its first write, so that a start does
//! not write `JwksUnavailable` and then `Accepted` to every policy.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::sync::{mpsc, watch};

use super::index::{IndexedPolicy, ObjectKey, StatusChange};
use crate::jwks::{JwksCache, JwksState};
use crate::policy::spec::{IssuerStatus, JwksStatus, TokenPolicyStatus};
use crate::policy::{PolicySnapshot, PolicyState, TokenPolicy};

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "scopegate";

/// How long a written status is not rewritten while the watch has not
/// echoed it yet (when resource versions cannot be compared).
const ECHO_WAIT: Duration = Duration::from_secs(5);

/// How long a policy's first status write waits for its issuers' first key
/// fetch.
const FIRST_FETCH_WAIT: Duration = Duration::from_secs(10);

/// How often `status.jwks.lastFetchTime` is brought up to date when
/// nothing else changed: every refresh would rewrite every policy.
const FETCH_TIME_REFRESH: Duration = Duration::from_secs(3600);

/// Writes in one pass past which the writer hands freed heap back to the OS.
const TRIM_AFTER_WRITES: usize = 256;

/// Status writes in flight at once.
const WRITE_CONCURRENCY: usize = 8;

/// One issuer's key cache, as the status reports it.
#[derive(Debug, Clone)]
pub struct IssuerKeys {
    /// The issuer (`iss`).
    pub url: String,
    /// Its key cache's health.
    pub state: JwksState,
}

/// What one object's status is computed from, as the indexer saw it.
#[derive(Debug, Clone)]
pub struct StatusInput {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `metadata.resourceVersion` of the event the status was seen in.
    pub resource_version: Option<String>,
    /// The status the object has.
    pub observed: Option<TokenPolicyStatus>,
    /// The compiled spec's warnings (`field: message`).
    pub warnings: Vec<String>,
    /// Its state in the snapshot; `None` before it was published.
    pub state: Option<PolicyState>,
    /// The hosts it serves or holds.
    pub served_hosts: Vec<String>,
    /// The issuers of its served version, with their key caches.
    pub issuers: Vec<(String, Arc<JwksCache>)>,
}

impl StatusInput {
    /// The inputs of `indexed` (with its compiled `warnings`) in `snapshot`.
    pub fn of(
        indexed: &IndexedPolicy,
        warnings: &[String],
        snapshot: &PolicySnapshot,
        id: &str,
    ) -> Self {
        let entry = snapshot.policy(id);
        StatusInput {
            generation: indexed.generation,
            resource_version: indexed.resource_version.clone(),
            observed: indexed.status.clone(),
            warnings: warnings.to_vec(),
            state: entry.map(|e| e.state.clone()),
            served_hosts: snapshot.hosts_of(id),
            issuers: entry
                .and_then(|e| e.served.as_ref())
                .map(|served| {
                    served
                        .policy
                        .issuers
                        .iter()
                        .zip(&served.issuers)
                        .map(|(compiled, served)| {
                            (compiled.rules.issuer.to_string(), served.keys.clone())
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Its issuers' key caches now.
    fn issuer_keys(&self) -> Vec<IssuerKeys> {
        self.issuers
            .iter()
            .map(|(url, keys)| IssuerKeys {
                url: url.clone(),
                state: keys.state(),
            })
            .collect()
    }

    /// Whether an issuer's keys have not been fetched even once yet.
    fn awaits_first_fetch(&self) -> bool {
        self.issuers
            .iter()
            .any(|(_, keys)| keys.state().fetch_attempts == 0)
    }
}

/// The status an object with `input` should have, given its issuers' key
/// caches. `lastTransitionTime` is kept from the current condition while
/// the condition's status does not change.
pub fn desired_status(
    input: &StatusInput,
    state: &PolicyState,
    issuers: &[IssuerKeys],
    now: SystemTime,
) -> TokenPolicyStatus {
    // Which issuer a message is about, when there are several.
    let about = |issuer: &IssuerKeys| {
        if issuers.len() > 1 {
            format!("issuer {}: ", issuer.url)
        } else {
            String::new()
        }
    };
    let keyless: Vec<String> = issuers
        .iter()
        .filter(|i| i.state.keys == 0)
        .map(|i| {
            let error = i
                .state
                .last_error
                .as_deref()
                .unwrap_or("signing keys not fetched yet");
            format!("{}{error}", about(i))
        })
        .collect();
    let failing: Vec<String> = issuers
        .iter()
        .filter_map(|i| Some(format!("{}{}", about(i), i.state.last_error.as_deref()?)))
        .collect();
    let served_hosts = input.served_hosts.clone();
    let (ready, reason, message) = match state {
        PolicyState::Invalid {
            errors,
            serving_last_good,
        } => {
            let errors = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            let message = if *serving_last_good {
                format!("{errors} (the last valid version keeps serving)")
            } else if !served_hosts.is_empty() {
                format!(
                    "{errors} (its hosts stay reserved for it, answering 503, until it is fixed or deleted)"
                )
            } else {
                errors
            };
            (false, "Invalid", message)
        }
        conflict @ PolicyState::HostConflict { .. } => (
            false,
            "HostConflict",
            conflict.conflict_message().unwrap_or_default(),
        ),
        PolicyState::Accepted if !keyless.is_empty() => {
            (false, "JwksUnavailable", keyless.join("; "))
        }
        PolicyState::Accepted => {
            let mut notes = Vec::new();
            if !failing.is_empty() {
                notes.push(format!(
                    "serving cached keys; the last JWKS fetch failed: {}",
                    failing.join("; ")
                ));
            }
            notes.extend(input.warnings.iter().map(|w| format!("warning: {w}")));
            (true, "Accepted", notes.join("; "))
        }
    };
    let status = if ready { "True" } else { "False" };
    let previous = input
        .observed
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let last_transition_time = match previous {
        Some(previous) if previous.status == status => previous.last_transition_time.clone(),
        _ => to_time(now),
    };
    TokenPolicyStatus {
        observed_generation: input.generation,
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: input.generation,
            last_transition_time,
        }],
        jwks: issuers.first().map(|i| jwks_status(&i.state)),
        served_hosts,
        issuers: if issuers.len() > 1 {
            issuers
                .iter()
                .map(|i| IssuerStatus {
                    url: i.url.clone(),
                    jwks: jwks_status(&i.state),
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// A key cache as `status.jwks` reports it.
fn jwks_status(state: &JwksState) -> JwksStatus {
    JwksStatus {
        uri: state
            .jwks_uri
            .clone()
            .or_else(|| Some(state.source.clone())),
        keys: u32::try_from(state.keys).unwrap_or(u32::MAX),
        last_fetch_time: state.last_success.map(to_time),
        last_error: state.last_error.clone(),
    }
}

/// Kubernetes times have second precision; truncating keeps a written
/// status equal to the one read back.
fn to_time(t: SystemTime) -> Time {
    let seconds = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Time(
        k8s_openapi::jiff::Timestamp::from_second(i64::try_from(seconds).unwrap_or(i64::MAX))
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Whether `desired` differs from `observed` in more than a
/// `lastFetchTime` that is less than [`FETCH_TIME_REFRESH`] old.
fn worth_writing(desired: &TokenPolicyStatus, observed: Option<&TokenPolicyStatus>) -> bool {
    let Some(observed) = observed else {
        return true;
    };
    if desired == observed {
        return false;
    }
    let fresh_enough = |written: Option<&Time>, now: Option<&Time>| match (written, now) {
        (Some(written), Some(now)) => {
            now.0.as_second() - written.0.as_second() < FETCH_TIME_REFRESH.as_secs() as i64
        }
        (written, now) => written == now,
    };
    let times = |s: &TokenPolicyStatus| {
        let mut times: Vec<Option<Time>> = Vec::new();
        times.extend(s.jwks.iter().map(|j| j.last_fetch_time.clone()));
        times.extend(s.issuers.iter().map(|i| i.jwks.last_fetch_time.clone()));
        times
    };
    let without_times = |s: &TokenPolicyStatus| {
        let mut s = s.clone();
        s.jwks.iter_mut().for_each(|j| j.last_fetch_time = None);
        s.issuers
            .iter_mut()
            .for_each(|i| i.jwks.last_fetch_time = None);
        s
    };
    let (desired_times, observed_times) = (times(desired), times(observed));
    without_times(desired) != without_times(observed)
        || desired_times.len() != observed_times.len()
        || desired_times
            .iter()
            .zip(&observed_times)
            .any(|(now, written)| !fresh_enough(written.as_ref(), now.as_ref()))
}

/// What a key cache's users show of it: a change marks them dirty.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyHealth {
    jwks_uri: Option<String>,
    keys: usize,
    last_error: Option<String>,
    fetched: bool,
    /// The last success, in [`FETCH_TIME_REFRESH`] periods.
    success_period: Option<u64>,
}

impl KeyHealth {
    fn of(cache: &JwksCache) -> Self {
        let state = cache.state();
        KeyHealth {
            jwks_uri: state.jwks_uri,
            keys: state.keys,
            last_error: state.last_error,
            fetched: state.fetch_attempts > 0,
            success_period: state.last_success.map(|t| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() / FETCH_TIME_REFRESH.as_secs())
            }),
        }
    }
}

/// A key cache some policies use.
struct WatchedCache {
    cache: Arc<JwksCache>,
    health: KeyHealth,
    users: HashSet<ObjectKey>,
}

/// A status this replica wrote.
struct Written {
    status: TokenPolicyStatus,
    /// The object's resource version after the write.
    resource_version: Option<String>,
    at: Instant,
}

/// One object the writer knows.
struct Known {
    input: StatusInput,
    /// When its first input arrived (bounds the wait for a first fetch).
    since: Instant,
}

/// Writes statuses while this replica is the leader.
pub struct StatusWriter {
    /// The client used for status patches.
    pub client: kube::Client,
    /// Status inputs from the indexer.
    pub changes: mpsc::UnboundedReceiver<Vec<StatusChange>>,
    /// Whether this replica leads.
    pub leader: watch::Receiver<bool>,
    /// How often key caches are re-checked (their health changes without a
    /// policy change).
    pub resync: Duration,
}

/// The writer's state between wakes.
#[derive(Default)]
struct WriterState {
    known: HashMap<ObjectKey, Known>,
    dirty: BTreeSet<ObjectKey>,
    written: HashMap<ObjectKey, Written>,
    caches: HashMap<usize, WatchedCache>,
}

impl StatusWriter {
    /// Runs until the process stops (or the indexer goes away).
    pub async fn run(mut self) {
        let mut state = WriterState::default();
        let mut leading = *self.leader.borrow();
        // An interval, not a sleep per wake: a steady stream of changes
        // must not starve the key cache checks.
        let mut ticks = tokio::time::interval(self.resync.min(Duration::from_secs(1)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            if leading {
                self.write_dirty(&mut state).await;
            } else {
                state.dirty.clear();
            }
            tokio::select! {
                changes = self.changes.recv() => match changes {
                    Some(changes) => {
                        state.apply(changes);
                        // Drain what else is queued: one pass for a burst.
                        while let Ok(more) = self.changes.try_recv() {
                            state.apply(more);
                        }
                    }
                    None => return,
                },
                changed = self.leader.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now_leading = *self.leader.borrow();
                    if now_leading && !leading {
                        // A new leader checks every object once.
                        state.written.clear();
                        state.dirty.extend(state.known.keys().cloned());
                    }
                    leading = now_leading;
                }
                _ = ticks.tick() => state.check_caches(),
            }
        }
    }

    async fn write_dirty(&self, state: &mut WriterState) {
        let pending = state.pending();
        if pending.is_empty() {
            return;
        }
        let results: Vec<(ObjectKey, TokenPolicyStatus, Option<String>)> =
            futures::stream::iter(pending)
                .map(|(key, status)| async move {
                    let resource_version = self.write(&key, &status).await?;
                    Some((key, status, resource_version))
                })
                .buffer_unordered(WRITE_CONCURRENCY)
                .filter_map(std::future::ready)
                .collect()
                .await;
        let many = results.len() >= TRIM_AFTER_WRITES;
        for (key, status, resource_version) in results {
            state.written.insert(
                key,
                Written {
                    status,
                    resource_version,
                    at: Instant::now(),
                },
            );
        }
        if many {
            // Each write parsed a whole object back: return that heap.
            crate::policy::return_freed_memory();
        }
    }

    /// Patches one status; returns the object's new resource version, or
    /// `None` after logging a failure (the object stays as it was).
    async fn write(&self, key: &ObjectKey, status: &TokenPolicyStatus) -> Option<Option<String>> {
        let api: Api<TokenPolicy> = Api::namespaced(self.client.clone(), &key.namespace);
        let patch = serde_json::json!({
            "apiVersion": "scopegate.dev/v1alpha1",
            "kind": "TokenPolicy",
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api
            .patch_status(&key.name, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(object) => {
                tracing::debug!(policy = %key.id(), "status written");
                crate::metrics::status_write("success");
                Some(object.metadata.resource_version)
            }
            Err(error) => {
                crate::metrics::status_write("error");
                tracing::warn!(policy = %key.id(), %error, "cannot write TokenPolicy status");
                None
            }
        }
    }
}

impl WriterState {
    fn apply(&mut self, changes: Vec<StatusChange>) {
        for change in changes {
            match change {
                StatusChange::Set(key, input) => {
                    // A write the watch has echoed needs no remembering.
                    if self
                        .written
                        .get(&key)
                        .is_some_and(|w| input.observed.as_ref() == Some(&w.status))
                    {
                        self.written.remove(&key);
                    }
                    let since = self.known.get(&key).map_or_else(Instant::now, |k| k.since);
                    self.unwatch(&key);
                    for (_, cache) in &input.issuers {
                        let watched = self
                            .caches
                            .entry(Arc::as_ptr(cache) as usize)
                            .or_insert_with(|| WatchedCache {
                                cache: cache.clone(),
                                health: KeyHealth::of(cache),
                                users: HashSet::new(),
                            });
                        watched.users.insert(key.clone());
                    }
                    self.dirty.insert(key.clone());
                    self.known.insert(
                        key,
                        Known {
                            input: *input,
                            since,
                        },
                    );
                }
                StatusChange::Removed(key) => {
                    self.unwatch(&key);
                    self.known.remove(&key);
                    self.written.remove(&key);
                    self.dirty.remove(&key);
                }
            }
        }
    }

    /// Stops counting `key` as a user of its caches.
    fn unwatch(&mut self, key: &ObjectKey) {
        let Some(known) = self.known.get(key) else {
            return;
        };
        for (_, cache) in &known.input.issuers {
            let id = Arc::as_ptr(cache) as usize;
            if let Some(watched) = self.caches.get_mut(&id) {
                watched.users.remove(key);
                if watched.users.is_empty() {
                    self.caches.remove(&id);
                }
            }
        }
    }

    /// Marks dirty the users of every key cache whose health changed.
    fn check_caches(&mut self) {
        for watched in self.caches.values_mut() {
            let health = KeyHealth::of(&watched.cache);
            if health != watched.health {
                watched.health = health;
                self.dirty.extend(watched.users.iter().cloned());
            }
        }
    }

    /// The dirty objects whose status must be written, with that status.
    /// Objects still waiting for their first key fetch stay dirty.
    fn pending(&mut self) -> Vec<(ObjectKey, TokenPolicyStatus)> {
        let now = SystemTime::now();
        let mut waiting = BTreeSet::new();
        let mut pending = Vec::new();
        for key in std::mem::take(&mut self.dirty) {
            let Some(known) = self.known.get(&key) else {
                continue;
            };
            let input = &known.input;
            let Some(state) = &input.state else {
                continue;
            };
            if input.awaits_first_fetch() && known.since.elapsed() < FIRST_FETCH_WAIT {
                waiting.insert(key);
                continue;
            }
            let desired = desired_status(input, state, &input.issuer_keys(), now);
            if !worth_writing(&desired, input.observed.as_ref()) {
                continue;
            }
            if let Some(written) = self.written.get(&key)
                && written.status == desired
                && echo_pending(written, input)
            {
                continue;
            }
            pending.push((key, desired));
        }
        self.dirty = waiting;
        pending
    }
}

/// Whether the object as the indexer last saw it predates `written`: its
/// status is then not a reason to write again.
fn echo_pending(written: &Written, input: &StatusInput) -> bool {
    let version = |v: Option<&String>| v.and_then(|v| v.parse::<u64>().ok());
    match (
        version(written.resource_version.as_ref()),
        version(input.resource_version.as_ref()),
    ) {
        (Some(written), Some(seen)) => seen < written,
        _ => written.at.elapsed() < ECHO_WAIT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::FieldError;

    fn input(status: Option<TokenPolicyStatus>) -> StatusInput {
        StatusInput {
            generation: Some(3),
            resource_version: None,
            observed: status,
            warnings: Vec::new(),
            state: Some(PolicyState::Accepted),
            served_hosts: Vec::new(),
            issuers: Vec::new(),
        }
    }

    fn jwks(keys: usize, last_error: Option<&str>) -> JwksState {
        JwksState {
            source: "https://tenant.example.com/.well-known/openid-configuration".into(),
            jwks_uri: Some("https://tenant.example.com/.well-known/jwks.json".into()),
            keys,
            last_success: (keys > 0)
                .then_some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
            last_error: last_error.map(String::from),
            fetch_attempts: 1,
        }
    }

    fn one(state: JwksState) -> Vec<IssuerKeys> {
        vec![IssuerKeys {
            url: "https://tenant.example.com/".into(),
            state,
        }]
    }

    fn ready(status: &TokenPolicyStatus) -> (&str, &str, &str) {
        let c = &status.conditions[0];
        (c.status.as_str(), c.reason.as_str(), c.message.as_str())
    }

    #[test]
    fn each_state_maps_to_a_ready_condition() {
        let now = SystemTime::now();
        let policy = input(None);
        let accepted = desired_status(&policy, &PolicyState::Accepted, &one(jwks(2, None)), now);
        assert_eq!(ready(&accepted), ("True", "Accepted", ""));
        assert_eq!(accepted.observed_generation, Some(3));
        assert_eq!(accepted.jwks.as_ref().unwrap().keys, 2);

        let stale = desired_status(
            &policy,
            &PolicyState::Accepted,
            &one(jwks(2, Some("HTTP 500"))),
            now,
        );
        assert_eq!(ready(&stale).0, "True");
        assert!(ready(&stale).2.contains("HTTP 500"));

        let unavailable = desired_status(
            &policy,
            &PolicyState::Accepted,
            &one(jwks(0, Some("refused"))),
            now,
        );
        assert_eq!(ready(&unavailable), ("False", "JwksUnavailable", "refused"));

        let invalid = |serving_last_good| PolicyState::Invalid {
            errors: vec![FieldError {
                field: "spec.hosts".into(),
                message: "empty".into(),
            }],
            serving_last_good,
        };
        assert_eq!(
            ready(&desired_status(&policy, &invalid(false), &[], now)),
            ("False", "Invalid", "spec.hosts: empty")
        );
        assert_eq!(
            ready(&desired_status(&policy, &invalid(true), &[], now)).2,
            "spec.hosts: empty (the last valid version keeps serving)"
        );

        let conflict = PolicyState::HostConflict {
            host: "x.example.com".into(),
            winner: "a/old".into(),
            winner_host: "x.example.com".into(),
        };
        assert_eq!(
            ready(&desired_status(&policy, &conflict, &[], now)).2,
            "host x.example.com is already claimed by policy a/old"
        );
    }

    #[test]
    fn transition_time_is_kept_while_the_status_holds() {
        let first = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let later = first + Duration::from_secs(500);
        let written = desired_status(
            &input(None),
            &PolicyState::Accepted,
            &one(jwks(1, None)),
            first,
        );
        let observed = input(Some(written.clone()));
        let again = desired_status(
            &observed,
            &PolicyState::Accepted,
            &one(jwks(1, None)),
            later,
        );
        assert_eq!(again, written, "nothing changed, so nothing to write");

        let flipped = desired_status(
            &observed,
            &PolicyState::Accepted,
            &one(jwks(0, Some("x"))),
            later,
        );
        assert_eq!(flipped.conditions[0].last_transition_time, to_time(later));
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_fresher_fetch_time_alone_is_not_worth_a_write() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |seconds_ago: u64| {
            let mut state = jwks(2, None);
            state.last_success = Some(now - Duration::from_secs(seconds_ago));
            desired_status(&input(None), &PolicyState::Accepted, &one(state), now)
        };
        let written = at(600);
        assert!(!worth_writing(&at(60), Some(&written)), "10 minutes newer");
        assert!(worth_writing(&at(0), Some(&at(4000))), "over an hour newer");
        let mut failing = jwks(2, Some("HTTP 500"));
        failing.last_success = Some(now - Duration::from_secs(600));
        let failing = desired_status(&input(None), &PolicyState::Accepted, &one(failing), now);
        assert!(
            worth_writing(&failing, Some(&written)),
            "anything else changed"
        );
        assert!(worth_writing(&written, None));
    }

    #[test]
    fn an_old_event_does_not_trigger_a_rewrite_of_an_unechoed_write() {
        let written = Written {
            status: TokenPolicyStatus::default(),
            resource_version: Some("120".into()),
            at: Instant::now(),
        };
        let seen = |rv: &str| StatusInput {
            resource_version: Some(rv.into()),
            ..input(None)
        };
        assert!(
            echo_pending(&written, &seen("100")),
            "an event from before the write"
        );
        assert!(!echo_pending(&written, &seen("120")), "the echo");
        assert!(!echo_pending(&written, &seen("130")), "someone wrote since");
    }

    #[tokio::test]
    async fn a_first_write_waits_for_the_first_key_fetch_and_a_right_status_is_not_written() {
        let source = crate::jwks::JwksSource::Uri(
            "https://tenant.example.com/.well-known/jwks.json"
                .parse()
                .unwrap(),
        );
        let unfetched = JwksCache::unfetched(source);
        let mut state = WriterState::default();
        let waiting = StatusInput {
            issuers: vec![("https://tenant.example.com/".into(), unfetched)],
            ..input(None)
        };
        let right = desired_status(&input(None), &PolicyState::Accepted, &[], SystemTime::now());
        state.apply(vec![
            StatusChange::Set(key("waiting"), Box::new(waiting)),
            StatusChange::Set(key("new"), Box::new(input(None))),
            StatusChange::Set(key("right"), Box::new(input(Some(right)))),
        ]);
        let pending: Vec<String> = state.pending().into_iter().map(|(k, _)| k.name).collect();
        assert_eq!(pending, vec!["new"]);
        assert_eq!(
            state
                .dirty
                .iter()
                .map(|k| k.name.as_str())
                .collect::<Vec<_>>(),
            vec!["waiting"],
            "stays dirty until its keys are fetched (or the wait ends)"
        );
    }
}
