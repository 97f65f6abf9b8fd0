//! The `envoy.service.auth.v3.Authorization` gRPC service.
//!
//! ```text
//! CheckRequest ─► host (context_extensions["host"] or :authority) ─► snapshot.lookup
//!                  └─► decision::decide (rules, token, DPoP proof, scopes) ─► response::{allow, deny}
//! ```
//!
//! The Check path reads the current [`SnapshotHandle`] and never waits on a
//! policy source; the only network I/O it may do is a JWKS refetch on an
//! unknown `kid`.
//!
//! Every Check runs in a `check` span (exported only when OpenTelemetry is
//! on, then joined to the caller's trace from the request's headers) and ends
//! in one `Outcome` report: span attributes (`policy`, `rule`, `decision`,
//! `reason`, `issuer`, `azp`), `scopegate_check_*` metrics and a decision log
//! line (deny and audit would-deny at info, allow at debug).

mod actor;
mod conditions;
mod credentials;
mod decision;
mod mcp_call;
pub mod proof;
mod request;
pub mod response;
pub mod token_cache;
mod trace_context;

use std::sync::Arc;

use std::time::Instant;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use tracing::Instrument as _;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub use decision::{Allowed, Decision, Denial, decide, verify};
pub use proof::{ProofError, ProofStage};
pub use request::{HttpAttributes, McpSource, ProofRequest, RequestHeader};
pub use token_cache::{PreparedToken, TokenCache, TokenCacheSettings};
pub use trace_context::extract_parent;

use crate::mcp::McpBody;
use crate::metrics::{self, DecisionLabel};
use crate::policy::{HostEntry, ServedPolicy, SnapshotHandle, normalize_host};
use crate::pop::{InMemoryReplayStore, NonceIssuer, ReplayStore};
use crate::token::{ReadClaims as _, unix_now};
use request::RequestHeaders;

/// The ext_authz service: answers Checks from the current policy snapshot.
#[derive(Clone)]
pub struct CheckService {
    snapshot: SnapshotHandle,
    token_cache: Arc<TokenCache>,
    proofs: ProofStage,
    /// Whether allows carry dynamic metadata ([`response::allow`]).
    envoy_metadata: bool,
}

impl CheckService {
    /// A service answering from `snapshot`, reusing verifications from
    /// `token_cache`, with an in-memory DPoP replay store.
    pub fn new(snapshot: SnapshotHandle, token_cache: Arc<TokenCache>) -> Self {
        let replay = ReplayStore::InMemory(InMemoryReplayStore::new(
            InMemoryReplayStore::DEFAULT_MAX_ENTRIES,
        ));
        CheckService::with_replay_store(snapshot, token_cache, replay)
    }

    /// A service that records DPoP proofs in `replay` (shared by every
    /// clone of the service, and across replicas for Redis).
    pub fn with_replay_store(
        snapshot: SnapshotHandle,
        token_cache: Arc<TokenCache>,
        replay: ReplayStore,
    ) -> Self {
        CheckService {
            snapshot,
            token_cache,
            proofs: ProofStage {
                replay,
                nonces: None,
            },
            envoy_metadata: true,
        }
    }

    /// The same service requiring DPoP proofs to carry server nonces from
    /// `nonces` (RFC 9449 §8); `None` leaves nonces off.
    pub fn with_dpop_nonces(mut self, nonces: Option<Arc<NonceIssuer>>) -> Self {
        self.proofs.nonces = nonces;
        self
    }

    /// The same service answering allows with (`true`, the default) or
    /// without dynamic metadata for Envoy's access logs.
    pub fn with_envoy_metadata(mut self, envoy_metadata: bool) -> Self {
        self.envoy_metadata = envoy_metadata;
        self
    }

    /// The tonic server wrapping this service.
    pub fn into_server(self) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self)
    }

    /// Decides one Check, in a span joined to the caller's trace, and reports
    /// the decision to the metrics and the decision log.
    pub async fn check_request(&self, request: &CheckRequest) -> CheckResponse {
        let started = Instant::now();
        let span = check_span(http_request(request));
        self.answer(request, &span, started)
            .instrument(span.clone())
            .await
    }

    async fn answer(
        &self,
        request: &CheckRequest,
        span: &tracing::Span,
        started: Instant,
    ) -> CheckResponse {
        let Some((attributes, http)) = request
            .attributes
            .as_ref()
            .and_then(|a| Some((a, a.request.as_ref()?.http.as_ref()?)))
        else {
            let denial = Denial::malformed_request();
            Outcome::denied(None, None, &denial, None).report(span, started);
            return response::deny("", &denial, None);
        };
        let raw_host = attributes
            .context_extensions
            .get("host")
            .unwrap_or(&http.host);
        let host = normalize_host(raw_host);
        let request = Some((&*host, http));
        let snapshot = self.snapshot.load();
        // Held hosts resolve like served ones: the most specific pattern
        // decides, so a host held for an invalid policy answers 503 before
        // any wider wildcard of another policy is consulted.
        let served = match snapshot.resolve(&host) {
            Some(HostEntry::Served(served)) => served.clone(),
            held_or_unknown => {
                let denial = match held_or_unknown {
                    Some(HostEntry::Held(_)) => Denial::policy_held(),
                    _ => Denial::unknown_host(),
                };
                Outcome::denied(None, request, &denial, None).report(span, started);
                return response::deny(&host, &denial, None);
            }
        };
        let headers = RequestHeaders::of(http);
        let header_values = headers.to_map();
        let attributes = HttpAttributes {
            host: &host,
            method: &http.method,
            path: &http.path,
            authorization: headers.get("authorization"),
            proof: ProofRequest {
                scheme: if http.scheme.is_empty() {
                    "https"
                } else {
                    &http.scheme
                },
                authority: &http.host,
                method: &http.method,
                path: &http.path,
                proof: headers.get("dpop"),
                public_origin: served.policy.resource.as_ref().map(|r| r.origin()),
                certificate: attributes
                    .source
                    .as_ref()
                    .map_or("", |source| &source.certificate),
            },
            headers: &header_values,
            mcp: McpSource {
                body: McpBody {
                    bytes: if http.raw_body.is_empty() {
                        http.body.as_bytes()
                    } else {
                        &http.raw_body
                    },
                    partial: headers.single("x-envoy-auth-partial-body") == Some("true"),
                    declared_length: headers
                        .single("content-length")
                        .and_then(|v| v.parse().ok()),
                },
                metadata: attributes.metadata_context.as_ref(),
            },
        };
        match decide(&served, &self.token_cache, &self.proofs, &attributes).await {
            Decision::ResourceMetadata => {
                let resource = served
                    .policy
                    .resource
                    .as_ref()
                    .expect("decide answers metadata only for a policy with a resource");
                let allowed = Allowed {
                    token: None,
                    rule: std::borrow::Cow::Borrowed("resource_metadata"),
                    audited_denial: None,
                };
                let mut outcome = Outcome::allowed(&served, request, &allowed);
                outcome.reason = "resource_metadata";
                outcome.report(span, started);
                response::resource_metadata(resource)
            }
            Decision::Allow(allowed) => {
                let response = response::allow(&served.policy, &allowed, self.envoy_metadata);
                let outcome = match &allowed.audited_denial {
                    Some(denial) => {
                        let token = allowed.token.as_deref();
                        let mut outcome = Outcome::denied(Some(&served), request, denial, token);
                        outcome.decision = DecisionLabel::WouldDeny;
                        outcome
                    }
                    None => Outcome::allowed(&served, request, &allowed),
                };
                outcome.report(span, started);
                response
            }
            Decision::Deny(denial, token) => {
                Outcome::denied(Some(&served), request, &denial, token.as_deref())
                    .report(span, started);
                let mut response = response::deny(&host, &denial, Some(&served.policy));
                if denial.error == Some("use_dpop_nonce")
                    && let Some(nonce) = self.proofs.fresh_nonce(unix_now())
                {
                    response::add_dpop_nonce(&mut response, &nonce);
                }
                response
            }
        }
    }
}

fn http_request(request: &CheckRequest) -> Option<&HttpRequest> {
    request.attributes.as_ref()?.request.as_ref()?.http.as_ref()
}

/// The span of one Check: disabled (and free) unless spans are exported;
/// then a child of the caller's span when the request names one.
fn check_span(http: Option<&HttpRequest>) -> tracing::Span {
    let span = tracing::debug_span!(
        "check",
        otel.name = "envoy.service.auth.v3.Authorization/Check",
        otel.kind = "server",
        rpc.system = "grpc",
        policy = Empty,
        rule = Empty,
        decision = Empty,
        reason = Empty,
        issuer = Empty,
        azp = Empty,
        actor = Empty,
    );
    if !span.is_disabled()
        && let Some(parent) = http.and_then(extract_parent)
    {
        // Fails only when no OpenTelemetry layer is installed.
        let _ = span.set_parent(parent);
    }
    span
}

/// What one Check decided, for its span, the metrics and the decision log.
/// Holds labels and claims that are safe to export: never the token.
struct Outcome<'a> {
    served: Option<&'a ServedPolicy>,
    /// The normalized host and the HTTP request.
    request: Option<(&'a str, &'a HttpRequest)>,
    decision: DecisionLabel,
    reason: &'static str,
    rule: &'a str,
    status: u16,
    token: Option<&'a PreparedToken>,
}

impl<'a> Outcome<'a> {
    fn allowed(
        served: &'a ServedPolicy,
        request: Option<(&'a str, &'a HttpRequest)>,
        allowed: &'a Allowed,
    ) -> Self {
        Outcome {
            served: Some(served),
            request,
            decision: DecisionLabel::Allow,
            reason: if allowed.token.is_some() {
                "valid_token"
            } else {
                "anonymous"
            },
            rule: &allowed.rule,
            status: 200,
            token: allowed.token.as_deref(),
        }
    }

    fn denied(
        served: Option<&'a ServedPolicy>,
        request: Option<(&'a str, &'a HttpRequest)>,
        denial: &'a Denial,
        token: Option<&'a PreparedToken>,
    ) -> Self {
        Outcome {
            served,
            request,
            decision: DecisionLabel::Deny,
            reason: denial.reason,
            rule: denial.rule.as_deref().unwrap_or("-"),
            status: denial.status,
            token,
        }
    }

    fn report(&self, span: &tracing::Span, started: Instant) {
        let policy = self.served.map(|s| &s.policy);
        metrics::check_decision(
            policy.map(|p| &p.id),
            self.decision,
            self.reason,
            started.elapsed(),
        );
        let azp = self.token.and_then(|t| t.client_id());
        if !span.is_disabled() {
            span.record("policy", policy.map_or(metrics::NO_POLICY, |p| &*p.id));
            span.record("rule", self.rule);
            span.record("decision", self.decision.as_str());
            span.record("reason", self.reason);
            let issuer = self.token.map(|t| t.issuer());
            span.record("issuer", issuer);
            span.record("azp", azp);
            if let Some(actor) = self.actor() {
                span.record("actor", actor);
            }
        }
        self.log(azp);
    }

    /// The token's `act` chain, outermost first, space-separated (`None`
    /// without a token or `act`).
    fn actor(&self) -> Option<String> {
        let chain = self.token?.actor_chain();
        (!chain.is_empty()).then(|| chain.join(" "))
    }

    /// One line per deny and would-deny (info) and per allow (debug).
    fn log(&self, azp: Option<&str>) {
        macro_rules! decision_line {
            ($level:expr, $message:literal) => {
                tracing::event!(
                    $level,
                    policy = self.served.map_or("-", |s| &*s.policy.id),
                    rule = self.rule,
                    decision = self.decision.as_str(),
                    reason = self.reason,
                    status = self.status,
                    sub = self.token.and_then(|t| t.subject()),
                    azp,
                    actor = self.actor(),
                    host = self.request.map(|(host, _)| host),
                    method = self.request.map(|(_, http)| &*http.method),
                    path = self.request.map(|(_, http)| without_query(&http.path)),
                    $message
                )
            };
        }
        match self.decision {
            DecisionLabel::Deny => decision_line!(tracing::Level::INFO, "deny"),
            DecisionLabel::WouldDeny => decision_line!(tracing::Level::INFO, "audit: would deny"),
            DecisionLabel::Allow => decision_line!(tracing::Level::DEBUG, "allow"),
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

fn without_query(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}
