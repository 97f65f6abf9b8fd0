//! The `envoy.service.auth.v3.Authorization` gRPC service.
//!
//! ```text
//! CheckRequest ─► host (context_extensions["host"] or :authority) ─► snapshot.lookup
//!                  └─► decision::decide (rules, token, scopes) ─► response::{allow, deny}
//! ```
//!
//! The Check path reads the current [`SnapshotHandle`] and never waits on a
//! policy source; the only network I/O it may do is a JWKS refetch on an
//! unknown `kid`.

mod decision;
pub mod response;
pub mod token_cache;

use std::sync::Arc;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};

pub use decision::{Allowed, Decision, Denial, HttpAttributes, decide, verify};
pub use token_cache::{PreparedToken, TokenCache, TokenCacheSettings};

use crate::policy::{SnapshotHandle, normalize_host};

/// The ext_authz service: answers Checks from the current policy snapshot.
#[derive(Clone)]
pub struct CheckService {
    snapshot: SnapshotHandle,
    token_cache: Arc<TokenCache>,
}

impl CheckService {
    /// A service answering from `snapshot`, reusing verifications from
    /// `token_cache`.
    pub fn new(snapshot: SnapshotHandle, token_cache: Arc<TokenCache>) -> Self {
        CheckService {
            snapshot,
            token_cache,
        }
    }

    /// The tonic server wrapping this service.
    pub fn into_server(self) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self)
    }

    /// Decides one Check.
    pub async fn check_request(&self, request: &CheckRequest) -> CheckResponse {
        let Some(attributes) = request.attributes.as_ref() else {
            return response::deny("", &Denial::malformed_request());
        };
        let Some(http) = attributes.request.as_ref().and_then(|r| r.http.as_ref()) else {
            return response::deny("", &Denial::malformed_request());
        };
        let raw_host = attributes
            .context_extensions
            .get("host")
            .unwrap_or(&http.host);
        let host = normalize_host(raw_host);
        let Some(served) = self.snapshot.load().lookup(&host).cloned() else {
            let denial = Denial::unknown_host();
            log_denial("-", &host, &http.method, &http.path, &denial);
            return response::deny(&host, &denial);
        };
        let attributes = HttpAttributes {
            host: &host,
            method: &http.method,
            path: &http.path,
            authorization: authorization_header(http),
        };
        match decide(&served, &self.token_cache, &attributes).await {
            Decision::Allow(allowed) => {
                if let Some(denial) = &allowed.audited_denial {
                    tracing::warn!(
                        policy = %served.policy.id,
                        rule = %allowed.rule,
                        reason = denial.reason,
                        host = %host,
                        method = %http.method,
                        path = %without_query(&http.path),
                        "audit: would deny"
                    );
                } else {
                    tracing::debug!(
                        policy = %served.policy.id,
                        rule = %allowed.rule,
                        sub = allowed.token.as_ref().and_then(|t| t.subject()),
                        azp = allowed.token.as_ref().and_then(|t| t.client_id()),
                        "allow"
                    );
                }
                response::allow(&served.policy, &allowed)
            }
            Decision::Deny(denial) => {
                log_denial(&served.policy.id, &host, &http.method, &http.path, &denial);
                response::deny(&host, &denial)
            }
        }
    }
}

#[tonic::async_trait]
impl Authorization for CheckService {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            self.check_request(request.get_ref()).await,
        ))
    }
}

/// The `authorization` header, from the header map Envoy sends (lowercase
/// keys) or from `header_map` when Envoy sends raw headers. Two
/// `Authorization` headers arrive comma-joined and fail token parsing.
fn authorization_header(
    http: &envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest,
) -> Option<&str> {
    if let Some(value) = http.headers.get("authorization") {
        return Some(value);
    }
    let raw = http.header_map.as_ref()?;
    let mut values = raw
        .headers
        .iter()
        .filter(|h| h.key.eq_ignore_ascii_case("authorization"));
    let first = values.next()?;
    if values.next().is_some() {
        return Some(","); // several: never a valid token
    }
    if first.raw_value.is_empty() {
        Some(&first.value)
    } else {
        std::str::from_utf8(&first.raw_value).ok()
    }
}

fn without_query(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

fn log_denial(policy: &str, host: &str, method: &str, path: &str, denial: &Denial) {
    tracing::info!(
        policy,
        rule = denial.rule.as_deref().unwrap_or("-"),
        reason = denial.reason,
        status = denial.status,
        host,
        method,
        path = without_query(path),
        "deny"
    );
}
