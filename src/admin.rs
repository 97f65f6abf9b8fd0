//! The admin HTTP server: `/healthz` (alive), `/readyz` (policies loaded and
//! keys fetched, with per-policy and per-issuer detail) and `/metrics` (Prometheus text of
//! [`crate::metrics`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::jwks::JwksRegistry;
use crate::policy::{PolicyState, SnapshotHandle};

/// What the admin endpoints report on.
#[derive(Clone)]
pub struct AdminState {
    /// The policy snapshot.
    pub snapshot: SnapshotHandle,
    /// The key caches.
    pub registry: JwksRegistry,
    /// Set when shutdown begins, so that `/readyz` fails and traffic drains.
    pub shutting_down: Arc<AtomicBool>,
    /// Until then, `/readyz` also waits for every issuer's keys (so a new
    /// pod takes traffic with keys in hand); after it, an issuer that is
    /// still unreachable no longer holds readiness back (its policies answer
    /// 503, every other policy serves).
    pub wait_for_keys_until: Instant,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let jwks = state.registry.reports();
    let waiting_for_keys = Instant::now() < state.wait_for_keys_until
        && jwks.iter().any(|source| source.state.keys == 0);
    let ready = state.snapshot.is_loaded()
        && !waiting_for_keys
        && !state.shutting_down.load(Ordering::Acquire);
    let snapshot = state.snapshot.load();
    let policies: Vec<PolicyReport<'_>> = snapshot
        .reported()
        .map(|(id, policy_state, reported)| {
            let report = PolicyReport {
                policy: id,
                state: reported.reason(),
                ..PolicyReport::default()
            };
            match policy_state {
                PolicyState::Accepted => report,
                PolicyState::Invalid {
                    errors,
                    serving_last_good,
                } => PolicyReport {
                    errors: Some(errors.iter().map(ToString::to_string).collect()),
                    serving_last_good: Some(*serving_last_good),
                    state: "Invalid",
                    ..report
                },
                PolicyState::HostConflict {
                    host,
                    winner,
                    winner_host,
                } => PolicyReport {
                    host: Some(host),
                    winner: Some(winner),
                    winner_host: Some(winner_host),
                    state: "HostConflict",
                    ..report
                },
            }
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = ReadyzBody {
        jwks,
        last_reload: state.snapshot.last_reload(),
        policies,
        ready,
        shutting_down: state.shutting_down.load(Ordering::Acquire),
        waiting_for_keys,
    };
    (status, Json(body)).into_response()
}

/// The `/readyz` body. Serialized straight from borrowed parts: a JSON
/// tree per policy would allocate tens of thousands of small values on
/// every probe with 10,000 policies, and glibc would keep the freed memory
/// resident (+16 MiB RSS, measured).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ReadyzBody<'a> {
    jwks: Vec<crate::jwks::JwksReport>,
    last_reload: Option<crate::policy::ReloadReport>,
    policies: Vec<PolicyReport<'a>>,
    ready: bool,
    shutting_down: bool,
    waiting_for_keys: bool,
}

/// One policy in `/readyz`.
#[derive(Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct PolicyReport<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<&'a str>,
    policy: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    serving_last_good: Option<bool>,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    winner: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    winner_host: Option<&'a str>,
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            crate::metrics::PROMETHEUS_CONTENT_TYPE,
        )],
        crate::metrics::prometheus_text(),
    )
}
