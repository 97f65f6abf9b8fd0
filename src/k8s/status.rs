//! What each `TokenPolicy`'s `status` should say, and the writer that puts
//! it there with server-side apply (only when it changed, only on the
//! leader).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::sync::{Notify, watch};

use super::index::{IndexedPolicy, ObjectKey, PolicyIndex};
use crate::jwks::JwksState;
use crate::policy::spec::{IssuerStatus, JwksStatus, TokenPolicyStatus};
use crate::policy::{PolicyState, SnapshotHandle, TokenPolicy};

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "scopegate";

/// How long a written status is not rewritten while the watch has not
/// echoed it yet; entries older than this are pruned.
const ECHO_WAIT: Duration = Duration::from_secs(5);

/// One issuer's key cache, as the status reports it.
#[derive(Debug, Clone)]
pub struct IssuerKeys {
    /// The issuer (`iss`).
    pub url: String,
    /// Its key cache's health.
    pub state: JwksState,
}

/// The status `indexed` should have, given its state in the snapshot and its
/// issuers' key caches. `lastTransitionTime` is kept from the current
/// condition while the condition's status does not change.
pub fn desired_status(
    indexed: &IndexedPolicy,
    state: &PolicyState,
    issuers: &[IssuerKeys],
    served_hosts: Vec<String>,
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
            notes.extend(warnings(indexed));
            (true, "Accepted", notes.join("; "))
        }
    };
    let status = if ready { "True" } else { "False" };
    let previous = indexed
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let last_transition_time = match previous {
        Some(previous) if previous.status == status => previous.last_transition_time.clone(),
        _ => to_time(now),
    };
    TokenPolicyStatus {
        observed_generation: indexed.generation,
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: indexed.generation,
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

/// The compiled policy's warnings, `warning: field: message` each.
fn warnings(indexed: &IndexedPolicy) -> Vec<String> {
    indexed.compiled.as_ref().map_or_else(
        |_| Vec::new(),
        |policy| {
            policy
                .warnings
                .iter()
                .map(|w| format!("warning: {w}"))
                .collect()
        },
    )
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

/// Writes statuses while this replica is the leader.
pub struct StatusWriter {
    /// The client used for status patches.
    pub client: kube::Client,
    /// The watched objects.
    pub index: Arc<Mutex<PolicyIndex>>,
    /// The served snapshot (for policy states and key caches).
    pub snapshot: SnapshotHandle,
    /// Woken after every snapshot change.
    pub changed: Arc<Notify>,
    /// Whether this replica leads.
    pub leader: watch::Receiver<bool>,
    /// How often to re-check (key caches change without a snapshot change).
    pub resync: Duration,
}

impl StatusWriter {
    /// Runs until the process stops.
    pub async fn run(mut self) {
        let mut recently_written: HashMap<ObjectKey, (TokenPolicyStatus, Instant)> = HashMap::new();
        loop {
            if *self.leader.borrow() {
                self.write_changed(&mut recently_written).await;
            }
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = self.leader.changed() => {}
                _ = tokio::time::sleep(self.resync) => {}
            }
        }
    }

    async fn write_changed(
        &self,
        recently_written: &mut HashMap<ObjectKey, (TokenPolicyStatus, Instant)>,
    ) {
        recently_written.retain(|_, (_, at)| at.elapsed() < ECHO_WAIT);
        for (key, status) in self.pending(recently_written) {
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
                Ok(_) => {
                    tracing::debug!(policy = %key.id(), "status written");
                    recently_written.insert(key, (status, Instant::now()));
                }
                Err(error) => {
                    tracing::warn!(policy = %key.id(), %error, "cannot write TokenPolicy status")
                }
            }
        }
    }

    /// Objects whose status differs from what it should be, skipping writes
    /// made in the last few seconds that the watch has not echoed yet.
    fn pending(
        &self,
        recently_written: &HashMap<ObjectKey, (TokenPolicyStatus, Instant)>,
    ) -> Vec<(ObjectKey, TokenPolicyStatus)> {
        let snapshot = self.snapshot.load();
        let states: HashMap<&str, &PolicyState> =
            snapshot.states().iter().map(|(id, s)| (&**id, s)).collect();
        let jwks: HashMap<&str, Vec<IssuerKeys>> = snapshot
            .served()
            .iter()
            .map(|p| {
                let issuers = p
                    .policy
                    .issuers
                    .iter()
                    .zip(&p.issuers)
                    .map(|(compiled, served)| IssuerKeys {
                        url: compiled.rules.issuer.to_string(),
                        state: served.keys.state(),
                    })
                    .collect();
                (&*p.policy.id, issuers)
            })
            .collect();
        let index = self.index.lock().expect("index lock is never poisoned");
        let now = SystemTime::now();
        index
            .objects()
            .filter_map(|(key, indexed)| {
                let id = key.id();
                let state = states.get(&*id)?;
                let issuers = jwks.get(&*id).map_or(&[][..], Vec::as_slice);
                let desired = desired_status(indexed, state, issuers, snapshot.hosts_of(&id), now);
                let unchanged = indexed.status.as_ref() == Some(&desired);
                let just_written = recently_written
                    .get(key)
                    .is_some_and(|(s, at)| *s == desired && at.elapsed() < ECHO_WAIT);
                (!unchanged && !just_written).then(|| (key.clone(), desired))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::FieldError;

    fn indexed(status: Option<TokenPolicyStatus>) -> IndexedPolicy {
        let mut index = PolicyIndex::default();
        let spec = serde_json::from_value(serde_json::json!({
            "hosts": ["x.example.com"],
            "issuer": {"url": "https://tenant.example.com/", "audiences": ["api"]},
        }))
        .unwrap();
        let mut object = TokenPolicy::new("p", spec);
        object.metadata.namespace = Some("ns".into());
        object.metadata.generation = Some(3);
        object.status = status;
        index.apply(object);
        index.objects().next().unwrap().1.clone()
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
        let policy = indexed(None);
        let accepted = desired_status(
            &policy,
            &PolicyState::Accepted,
            &one(jwks(2, None)),
            Vec::new(),
            now,
        );
        assert_eq!(ready(&accepted), ("True", "Accepted", ""));
        assert_eq!(accepted.observed_generation, Some(3));
        assert_eq!(accepted.jwks.as_ref().unwrap().keys, 2);

        let stale = desired_status(
            &policy,
            &PolicyState::Accepted,
            &one(jwks(2, Some("HTTP 500"))),
            Vec::new(),
            now,
        );
        assert_eq!(ready(&stale).0, "True");
        assert!(ready(&stale).2.contains("HTTP 500"));

        let unavailable = desired_status(
            &policy,
            &PolicyState::Accepted,
            &one(jwks(0, Some("refused"))),
            Vec::new(),
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
            ready(&desired_status(
                &policy,
                &invalid(false),
                &[],
                Vec::new(),
                now
            )),
            ("False", "Invalid", "spec.hosts: empty")
        );
        assert_eq!(
            ready(&desired_status(
                &policy,
                &invalid(true),
                &[],
                Vec::new(),
                now
            ))
            .2,
            "spec.hosts: empty (the last valid version keeps serving)"
        );

        let conflict = PolicyState::HostConflict {
            host: "x.example.com".into(),
            winner: "a/old".into(),
            winner_host: "x.example.com".into(),
        };
        assert_eq!(
            ready(&desired_status(&policy, &conflict, &[], Vec::new(), now)).2,
            "host x.example.com is already claimed by policy a/old"
        );
    }

    #[test]
    fn transition_time_is_kept_while_the_status_holds() {
        let first = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let later = first + Duration::from_secs(500);
        let written = desired_status(
            &indexed(None),
            &PolicyState::Accepted,
            &one(jwks(1, None)),
            Vec::new(),
            first,
        );
        let observed = indexed(Some(written.clone()));
        let again = desired_status(
            &observed,
            &PolicyState::Accepted,
            &one(jwks(1, None)),
            Vec::new(),
            later,
        );
        assert_eq!(again, written, "nothing changed, so nothing to write");

        let flipped = desired_status(
            &observed,
            &PolicyState::Accepted,
            &one(jwks(0, Some("x"))),
            Vec::new(),
            later,
        );
        assert_eq!(flipped.conditions[0].last_transition_time, to_time(later));
    }
}
