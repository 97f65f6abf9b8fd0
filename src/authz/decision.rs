//! What a Check decides: the pure policy logic between a parsed request and
//! an allow or a deny. Building the wire response is [`super::response`]'s job.

use crate::token::ReadClaims as _;
use std::borrow::Cow;
use std::sync::Arc;

use super::credentials::{CredentialsError, credentials};
use super::proof::{ProofError, ProofStage};
use super::request::HttpAttributes;
use super::token_cache::{KeyBinding, PreparedToken, TokenCache};
use crate::jwks::KeysUnavailable;
use crate::policy::conditions::ConditionFailure;
use crate::policy::{AmbiguousPath, CompiledRule, DefaultAction, Mode, RequestPath, ServedPolicy};
use crate::token::{TokenError, UnverifiedToken, unix_now};

/// The outcome of a Check.
#[derive(Debug)]
pub enum Decision {
    /// Let the request through.
    Allow(Allowed),
    /// Answer with the policy's RFC 9728 protected resource metadata (no
    /// token needed).
    ResourceMetadata,
    /// Answer the client directly; with the verified token when only the
    /// rule (scopes, client) failed, for the decision log.
    Deny(Denial, Option<Arc<PreparedToken>>),
}

/// An allowed request.
#[derive(Debug)]
pub struct Allowed {
    /// The verified token; `None` for an anonymous rule without a token.
    pub token: Option<Arc<PreparedToken>>,
    /// The rule that allowed it (`rules[i]`, or `default`).
    pub rule: Cow<'static, str>,
    /// In audit mode, the denial that was not enforced.
    pub audited_denial: Option<Denial>,
}

/// Why a request is denied, in RFC 6750 terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// HTTP status: 401, 403 or 503.
    pub status: u16,
    /// RFC 6750 error code; `None` when no credentials were sent.
    pub error: Option<&'static str>,
    /// Short, human-readable, never containing token material.
    pub description: Cow<'static, str>,
    /// For `insufficient_scope`: the missing scopes, space-separated.
    pub missing_scopes: Option<String>,
    /// Every scope the matched rule requires (the challenge's `scope`).
    pub rule_scopes: Box<[Box<str>]>,
    /// Stable label for logs and metrics.
    pub reason: &'static str,
    /// The rule that matched, if any.
    pub rule: Option<Box<str>>,
    /// The error is about proof of possession: it goes in the `DPoP`
    /// challenge rather than the `Bearer` one.
    pub dpop: bool,
}

impl Denial {
    /// No policy serves the request's host.
    pub fn unknown_host() -> Self {
        Denial::forbidden("unknown_host", "no policy protects this host")
    }

    /// The host belongs to a policy that is invalid and whose last valid
    /// version this replica never loaded: 503, never another policy's answer.
    pub fn policy_held() -> Self {
        Denial {
            status: 503,
            error: Some("temporarily_unavailable"),
            description: "the policy for this host is invalid; fix it (see its status)".into(),
            reason: "policy_invalid",
            ..Denial::forbidden("policy_invalid", "")
        }
    }

    /// The request has no usable attributes.
    pub fn malformed_request() -> Self {
        Denial::forbidden(
            "malformed_request",
            "the check request has no HTTP attributes",
        )
    }

    fn forbidden(reason: &'static str, description: impl Into<Cow<'static, str>>) -> Self {
        Denial {
            status: 403,
            error: Some("access_denied"),
            description: description.into(),
            missing_scopes: None,
            rule_scopes: Box::default(),
            reason,
            rule: None,
            dpop: false,
        }
    }

    fn no_token() -> Self {
        Denial {
            status: 401,
            error: None,
            description: "a bearer token is required".into(),
            missing_scopes: None,
            rule_scopes: Box::default(),
            reason: "missing_token",
            rule: None,
            dpop: false,
        }
    }

    fn condition(failure: &ConditionFailure) -> Self {
        let reason = match failure {
            ConditionFailure::False(_) => "condition",
            ConditionFailure::Error { .. } => "condition_error",
        };
        Denial::forbidden(reason, failure.to_string())
    }

    fn invalid_request(error: CredentialsError) -> Self {
        Denial::unauthorized("invalid_request", error.label(), error.to_string())
    }

    fn invalid_token(error: &TokenError) -> Self {
        Denial::unauthorized("invalid_token", error.label(), error.to_string())
    }

    /// A 401 with this RFC 6750 error code.
    fn unauthorized(error: &'static str, reason: &'static str, description: String) -> Self {
        Denial {
            status: 401,
            error: Some(error),
            description: description.into(),
            missing_scopes: None,
            rule_scopes: Box::default(),
            reason,
            rule: None,
            dpop: false,
        }
    }

    fn unavailable(error: &KeysUnavailable) -> Self {
        tracing::warn!(%error, "denying with 503: no signing keys");
        Denial {
            status: 503,
            error: Some("temporarily_unavailable"),
            description: "the issuer's signing keys are not available yet".into(),
            missing_scopes: None,
            rule_scopes: Box::default(),
            reason: "keys_unavailable",
            rule: None,
            dpop: false,
        }
    }

    fn proof(error: &ProofError) -> Self {
        if let ProofError::Store(store) = error {
            tracing::warn!(%store, "denying with 503: DPoP replay store unavailable");
        }
        Denial {
            status: error.status(),
            error: Some(error.error_code()),
            description: error.to_string().into(),
            missing_scopes: None,
            rule_scopes: Box::default(),
            reason: error.label(),
            rule: None,
            dpop: error.is_dpop(),
        }
    }

    fn with_rule(mut self, rule: Option<&CompiledRule>) -> Self {
        self.rule = rule.map(|r| r.name.clone());
        self.rule_scopes = rule.map(|r| r.require_scopes.clone()).unwrap_or_default();
        self
    }

    /// 400 `invalid_request`: an `access_token` query parameter (RFC 6750
    /// §2.3), refused on every rule, anonymous ones too, so that no upstream
    /// reads a credential scopegate never saw.
    fn query_token() -> Self {
        Denial::bad_request(
            "query_token",
            "send the access token in the Authorization header, not in the URL \
             (access_token query parameter)"
                .into(),
        )
    }

    /// 400 `invalid_request`: the request cannot be matched (an MCP body
    /// that is not one JSON-RPC request).
    fn bad_request(reason: &'static str, description: String) -> Self {
        Denial {
            status: 400,
            error: Some("invalid_request"),
            description: description.into(),
            missing_scopes: None,
            rule_scopes: Box::default(),
            reason,
            rule: None,
            dpop: false,
        }
    }
}

/// Decides a request for the policy that serves its host, then applies the
/// policy's mode: in audit mode a denial is logged by the caller and the
/// request is allowed (with the token's claim headers if the token was valid).
/// Verified tokens are looked up in and added to `cache`; DPoP proofs are
/// checked and recorded by `proofs`.
pub async fn decide(
    served: &ServedPolicy,
    cache: &TokenCache,
    proofs: &ProofStage,
    request: &HttpAttributes<'_>,
) -> Decision {
    // A URL with a token is refused (by `enforce`) even here.
    if served
        .policy
        .resource
        .as_ref()
        .is_some_and(|r| r.matches_metadata_request(request.method, request.path))
        && !request.carries_query_token()
    {
        return Decision::ResourceMetadata;
    }
    match (
        enforce(served, cache, proofs, request).await,
        served.policy.mode,
    ) {
        (Ok(allowed), _) => Decision::Allow(allowed),
        (Err((denial, token)), Mode::Enforce) => Decision::Deny(denial, token),
        (Err((denial, token)), Mode::Audit) => Decision::Allow(Allowed {
            token,
            rule: denial
                .rule
                .as_deref()
                .map_or(Cow::Borrowed("default"), |r| Cow::Owned(r.to_string())),
            audited_denial: Some(denial),
        }),
    }
}

/// A denial, with the verified token when the token itself was fine.
type Rejection = (Denial, Option<Arc<PreparedToken>>);

async fn enforce(
    served: &ServedPolicy,
    cache: &TokenCache,
    proofs: &ProofStage,
    request: &HttpAttributes<'_>,
) -> Result<Allowed, Rejection> {
    let policy = &served.policy;
    if request.carries_query_token() {
        return Err((Denial::query_token(), None));
    }
    let ambiguous = |e: AmbiguousPath| (Denial::forbidden("ambiguous_path", e.to_string()), None);
    let path = RequestPath::parse(request.path).map_err(ambiguous)?;
    let rule = super::mcp_call::find_rule(&policy.rules, &path, request)
        .map_err(|e| (Denial::bad_request(e.label(), e.to_string()), None))?;
    if path.has_params() && !rule.is_some_and(|r| r.matrix_params) {
        return Err(ambiguous(AmbiguousPath));
    }
    let presented = credentials(request.authorization)
        .map_err(|e| (Denial::invalid_request(e).with_rule(rule), None))?;
    let token = match presented.token() {
        None if rule.is_some_and(|r| r.anonymous) => return Ok(allowed(None, rule)),
        None => return Err((Denial::no_token().with_rule(rule), None)),
        Some(token) => verify(served, cache, token)
            .await
            .map_err(|denial| (denial.with_rule(rule), None))?,
    };
    // Never cached: a proof is good for one request only.
    super::proof::check(
        policy.proof_of_possession,
        presented,
        &token,
        &request.proof,
        proofs,
        unix_now(),
    )
    .await
    .map_err(|e| (Denial::proof(&e).with_rule(rule), None))?;
    let verdict = match rule {
        None if policy.default_action == DefaultAction::Allow => Ok(()),
        None => Err(Denial::forbidden("no_rule", "no rule allows this request")),
        Some(rule) => match check_rule(rule, &token).and_then(|()| match &rule.actor {
            Some(actor) => super::actor::check(actor, &token)
                .map_err(|failure| Denial::forbidden(failure.label(), failure.to_string())),
            None => Ok(()),
        }) {
            Ok(()) => {
                let gate = policy.condition_gate.as_ref();
                super::conditions::check(gate, rule, &path, request, &token)
                    .await
                    .map_err(|failure| Denial::condition(&failure))
            }
            Err(denial) => Err(denial),
        }
        .map_err(|d| d.with_rule(Some(rule))),
    };
    match verdict {
        Ok(()) => Ok(allowed(Some(token), rule)),
        Err(denial) => Err((denial, Some(token))),
    }
}

fn allowed(token: Option<Arc<PreparedToken>>, rule: Option<&CompiledRule>) -> Allowed {
    Allowed {
        token,
        rule: rule_name(rule),
        audited_denial: None,
    }
}

fn rule_name(rule: Option<&CompiledRule>) -> Cow<'static, str> {
    rule.map_or(Cow::Borrowed("default"), |r| Cow::Owned(r.name.to_string()))
}

/// Verifies a token against the rules and keys of the policy's issuer that
/// its `iss` names (the only issuer, when there is one), or takes it from
/// `cache` when it verified before under the same rules and key.
pub async fn verify(
    served: &ServedPolicy,
    cache: &TokenCache,
    token: &str,
) -> Result<Arc<PreparedToken>, Denial> {
    let now = unix_now();
    if let Some(cached) = cache.get(token, &served.issuers, &served.claims, now) {
        return Ok(cached);
    }
    let policy = &served.policy;
    let unverified = UnverifiedToken::parse(token, policy.algorithms())
        .map_err(|e| Denial::invalid_token(&e))?;
    let index = policy
        .issuer_index(|| unverified.unverified_issuer())
        .ok_or_else(|| Denial::invalid_token(&TokenError::WrongIssuer))?;
    let (issuer, served_issuer) = (&policy.issuers[index].rules, &served.issuers[index]);
    let keys = served_issuer
        .keys
        .keys_for(unverified.key_id())
        .await
        .map_err(|e| Denial::unavailable(&e))?;
    let (kid, algorithm) = (unverified.key_id(), unverified.algorithm());
    let key = keys
        .verifier(kid, algorithm)
        .map_err(|e| Denial::invalid_token(&e))?;
    let binding = keys
        .fingerprint(kid, algorithm)
        .map(|fingerprint| KeyBinding {
            kid: kid.map(Box::from),
            algorithm,
            fingerprint,
        });
    let verified = unverified
        .verify(key, issuer, now)
        .map_err(|e| Denial::invalid_token(&e))?;
    let verification = served_issuer.verification.clone();
    let prepared = Arc::new(PreparedToken::new(verified, verification, &served.claims));
    if let Some(binding) = binding {
        cache.insert(token, prepared.clone(), binding, now);
    }
    Ok(prepared)
}

/// `allowedClients`, then `requireScopes`.
fn check_rule(rule: &CompiledRule, token: &PreparedToken) -> Result<(), Denial> {
    if let Some(clients) = &rule.allowed_clients {
        let allowed = token
            .client_id()
            .is_some_and(|id| clients.iter().any(|c| **c == *id));
        if !allowed {
            return Err(Denial::forbidden(
                "client_not_allowed",
                "this client is not allowed",
            ));
        }
    }
    if rule.require_scopes.is_empty() {
        return Ok(());
    }
    let missing: Vec<&str> = rule
        .require_scopes
        .iter()
        .filter(|s| !token.has_scope(s))
        .map(|s| &**s)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Denial {
        status: 403,
        error: Some("insufficient_scope"),
        description: format!("the token lacks the scope {}", missing.join(" ")).into(),
        missing_scopes: Some(missing.join(" ")),
        rule_scopes: Box::default(),
        reason: "insufficient_scope",
        rule: None,
        dpop: false,
    })
}
