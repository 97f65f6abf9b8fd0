//! The admin HTTP server: `/healthz` (alive), `/readyz` (policies loaded,
//! with per-policy and per-issuer detail) and `/metrics` (Prometheus text of
//! [`crate::metrics`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
    let ready = state.snapshot.is_loaded() && !state.shutting_down.load(Ordering::Acquire);
    let snapshot = state.snapshot.load();
    let policies: Vec<_> = snapshot
        .states()
        .iter()
        .map(|(id, policy_state)| match policy_state {
            PolicyState::Accepted => json!({"policy": &**id, "state": "Accepted"}),
            PolicyState::Invalid(errors) => json!({
                "policy": &**id,
                "state": "Invalid",
                "errors": errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
            PolicyState::HostConflict { host, winner } => json!({
                "policy": &**id, "state": "HostConflict", "host": host, "winner": &**winner,
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
        "policies": policies,
        "jwks": state.registry.states(),
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
