//! The admin HTTP server: `/healthz` (alive), `/readyz` (policies loaded,
//! with per-policy and per-issuer detail) and `/metrics` (Prometheus text).

use std::fmt::Write as _;
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

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let snapshot = state.snapshot.load();
    let mut out = String::new();
    out.push_str(
        "# HELP scopegate_build_info scopegate version.\n# TYPE scopegate_build_info gauge\n",
    );
    let _ = writeln!(
        out,
        "scopegate_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    out.push_str("# HELP scopegate_policies Policies by state.\n# TYPE scopegate_policies gauge\n");
    for label in ["accepted", "invalid", "host_conflict"] {
        let count = snapshot
            .states()
            .iter()
            .filter(|(_, s)| state_label(s) == label)
            .count();
        let _ = writeln!(out, "scopegate_policies{{state=\"{label}\"}} {count}");
    }
    out.push_str("# HELP scopegate_jwks_keys Usable keys per JWKS source.\n# TYPE scopegate_jwks_keys gauge\n");
    for jwks in state.registry.states() {
        let _ = writeln!(
            out,
            "scopegate_jwks_keys{{jwks_uri=\"{}\"}} {}",
            jwks.source.replace('\\', "\\\\").replace('"', "\\\""),
            jwks.keys
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

fn state_label(state: &PolicyState) -> &'static str {
    match state {
        PolicyState::Accepted => "accepted",
        PolicyState::Invalid(_) => "invalid",
        PolicyState::HostConflict { .. } => "host_conflict",
    }
}
