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
use serde_json::json;

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
    let jwks = state.registry.states();
    let waiting_for_keys =
        Instant::now() < state.wait_for_keys_until && jwks.iter().any(|source| source.keys == 0);
    let ready = state.snapshot.is_loaded()
        && !waiting_for_keys
        && !state.shutting_down.load(Ordering::Acquire);
    let snapshot = state.snapshot.load();
    let policies: Vec<_> = snapshot
        .reported()
        .map(|(id, policy_state, reported)| match policy_state {
            PolicyState::Accepted => json!({"policy": &**id, "state": reported.reason()}),
            PolicyState::Invalid {
                errors,
                serving_last_good,
            } => json!({
                "policy": &**id,
                "state": "Invalid",
                "errors": errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "servingLastGood": serving_last_good,
            }),
            PolicyState::HostConflict {
                host,
                winner,
                winner_host,
            } => json!({
                "policy": &**id, "state": "HostConflict", "host": host, "winner": &**winner,
                "winnerHost": winner_host,
            }),
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "shuttingDown": state.shutting_down.load(Ordering::Acquire),
        "waitingForKeys": waiting_for_keys,
        "policies": policies,
        "jwks": jwks,
        "lastReload": state.snapshot.last_reload(),
    });
    (status, Json(body))
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
