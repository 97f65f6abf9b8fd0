//! Lease-based leader election (`coordination.k8s.io/v1`): exactly one
//! replica writes statuses; every replica serves Checks.
//!
//! The holder renews the Lease every `lease_duration / 3`. Another replica
//! takes over once `renewTime + leaseDurationSeconds` has passed, or at once
//! when the holder releases the Lease on shutdown. Updates carry the
//! observed `resourceVersion`, so two replicas can never both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

/// How to take part in the election.
#[derive(Debug, Clone)]
pub struct LeaderSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity (unique among replicas).
    pub identity: String,
    /// How long a Lease is valid without renewal.
    pub lease_duration: Duration,
}

/// Runs the election until `stopped` flips, publishing leadership to
/// `is_leader`; releases the Lease on the way out if held.
pub async fn run(
    api: Api<Lease>,
    settings: LeaderSettings,
    is_leader: watch::Sender<bool>,
    mut stopped: watch::Receiver<bool>,
) {
    let retry = settings.lease_duration / 3;
    loop {
        let leading = match try_acquire_or_renew(&api, &settings).await {
            Ok(leading) => leading,
            Err(error) => {
                tracing::warn!(%error, lease = %settings.lease_name, "leader election: cannot read or update the Lease");
                false
            }
        };
        if is_leader.send_replace(leading) != leading {
            tracing::info!(identity = %settings.identity, leading, "leadership changed");
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = stopped.wait_for(|s| *s) => break,
        }
    }
    if *is_leader.borrow() {
        is_leader.send_replace(false);
        if let Err(error) = release(&api, &settings).await {
            tracing::warn!(%error, "could not release the Lease; another replica takes over when it expires");
        }
    }
}

/// One election round: create, renew or take over the Lease. Returns
/// whether this replica holds it afterwards.
pub async fn try_acquire_or_renew(
    api: &Api<Lease>,
    settings: &LeaderSettings,
) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let Some(mut lease) = api.get_opt(&settings.lease_name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(settings.lease_name.clone()),
                namespace: Some(settings.namespace.clone()),
                ..Default::default()
            },
            spec: Some(held_by(settings, now, None)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false), // another replica created it first
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let ours = spec.holder_identity.as_deref() == Some(settings.identity.as_str());
    if !ours && !expired(&spec, now) {
        return Ok(false);
    }
    let previous = (!ours).then_some(spec);
    lease.spec = Some(held_by(settings, now, previous.as_ref()));
    match api
        .replace(&settings.lease_name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false), // someone else updated it first
        Err(e) => Err(e),
    }
}

/// A Lease spec held by this replica; `taken_from` is the previous holder's
/// spec when taking over.
fn held_by(settings: &LeaderSettings, now: Timestamp, taken_from: Option<&LeaseSpec>) -> LeaseSpec {
    let seconds = i32::try_from(settings.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let (acquire_time, transitions) = match taken_from {
        None => (Some(MicroTime(now)), Some(0)),
        Some(previous) => (
            Some(MicroTime(now)),
            Some(previous.lease_transitions.unwrap_or(0) + 1),
        ),
    };
    LeaseSpec {
        holder_identity: Some(settings.identity.clone()),
        lease_duration_seconds: Some(seconds),
        acquire_time,
        renew_time: Some(MicroTime(now)),
        lease_transitions: transitions,
        ..Default::default()
    }
}

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let (Some(renewed), Some(seconds)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return true;
    };
    spec.holder_identity.as_deref().is_none_or(str::is_empty)
        || renewed.0 + SignedDuration::from_secs(i64::from(seconds)) < now
}

/// Gives the Lease up so that another replica takes over at once.
async fn release(api: &Api<Lease>, settings: &LeaderSettings) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&settings.lease_name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    api.replace(&settings.lease_name, &PostParams::default(), &lease)
        .await?;
    Ok(())
}
