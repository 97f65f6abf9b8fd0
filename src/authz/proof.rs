//! The proof-of-possession stage of a Check (RFC 8705 mTLS, RFC 9449 DPoP),
//! after the token verified and before the rule is checked.
//!
//! ```text
//! token has cnf.x5t#S256 ─┬─► verify_certificate_binding(forwarded client certificate, x5t#S256)
//! policy requires mtls   ─┘
//! token has cnf.jkt ─┐
//! scheme is DPoP    ─┼─► verify_proof(DPoP header, htm, htu, ath, cnf.jkt) ─► ReplayStore::check
//! policy requires   ─┘
//! ```
//!
//! Neither the proof nor its replay check is ever cached: only the token's
//! verification is. A token bound to a key or a certificate must always come
//! with its proof, whatever the policy says (RFC 9449 §7.2, RFC 8705 §3); the
//! `DPoP` scheme needs a DPoP-bound token; a policy with `required: true`
//! needs every token bound by its mechanism.

use std::sync::Arc;

use super::credentials::Credentials;
use super::request::ProofRequest;
use crate::policy::ProofOfPossession;
use crate::pop::{
    DpopError, Freshness, MtlsError, NonceIssuer, NormalizedUri, ProofContext, ReplayError,
    ReplayStore, UriError, verify_certificate_binding, verify_proof,
};

/// What the proof stage keeps across Checks: where DPoP proofs are
/// remembered against replay and, when server nonces are on
/// (`--dpop-nonce-secret`), the issuer whose nonces proofs must carry.
#[derive(Clone)]
pub struct ProofStage {
    /// Where proof `jti`s are remembered.
    pub replay: ReplayStore,
    /// Server nonces (RFC 9449 §8): `None` when they are off.
    pub nonces: Option<Arc<NonceIssuer>>,
}

impl ProofStage {
    /// The nonce a `use_dpop_nonce` answer sends in `DPoP-Nonce`, when
    /// nonces are on.
    pub fn fresh_nonce(&self, now: u64) -> Option<String> {
        self.nonces.as_ref().map(|issuer| issuer.issue(now))
    }
}
use super::token_cache::PreparedToken;
use crate::token::{ReadClaims as _, unix_now_millis};

/// Why the proof stage refuses a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// A DPoP-bound token sent with the `Bearer` scheme (RFC 9449 §7.2).
    #[error("the token is DPoP-bound; send it with the DPoP scheme and a DPoP proof")]
    BoundTokenAsBearer,
    /// The `DPoP` scheme with a token that is not DPoP-bound.
    #[error("the token sent with the DPoP scheme is not DPoP-bound (no cnf.jkt)")]
    UnboundTokenAsDpop,
    /// The policy requires DPoP and the token is not bound.
    #[error("this API requires a DPoP-bound token")]
    BindingRequired,
    /// The request's own URI cannot be normalized for `htu`.
    #[error("the request URI cannot be compared with the DPoP proof htu: {0}")]
    RequestUri(UriError),
    /// The proof is missing, invalid or replayed.
    #[error(transparent)]
    Proof(DpopError),
    /// The replay store cannot answer: 503, never allow.
    #[error(transparent)]
    Store(ReplayError),
    /// The policy requires mTLS-bound tokens and the token has no
    /// `cnf.x5t#S256`.
    #[error("this API requires a token bound to the client certificate (cnf.x5t#S256)")]
    CertificateBindingRequired,
    /// A certificate-bound token without the certificate it is bound to.
    #[error(transparent)]
    Certificate(MtlsError),
}

impl ProofError {
    /// A short, stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ProofError::BoundTokenAsBearer => "dpop_bound_token_as_bearer",
            ProofError::UnboundTokenAsDpop => "dpop_unbound_token",
            ProofError::BindingRequired => "dpop_required",
            ProofError::RequestUri(_) => "dpop_request_uri",
            ProofError::Proof(e) => e.label(),
            ProofError::Store(e) => e.label(),
            ProofError::CertificateBindingRequired => "mtls_required",
            ProofError::Certificate(e) => e.label(),
        }
    }

    /// Whether the refusal is about DPoP (its error goes in the `DPoP`
    /// challenge); mTLS refusals are answered in the `Bearer` one.
    pub fn is_dpop(&self) -> bool {
        !matches!(
            self,
            ProofError::CertificateBindingRequired | ProofError::Certificate(_)
        )
    }

    /// The HTTP status: 503 when the replay store is unavailable, else 401.
    pub fn status(&self) -> u16 {
        match self {
            ProofError::Store(_) => 503,
            _ => 401,
        }
    }

    /// The RFC 6750 / RFC 9449 error code: `invalid_token` when the token
    /// is the problem, `invalid_dpop_proof` (or `use_dpop_nonce`) when the
    /// proof is, `temporarily_unavailable` for the store.
    pub fn error_code(&self) -> &'static str {
        match self {
            ProofError::BoundTokenAsBearer
            | ProofError::UnboundTokenAsDpop
            | ProofError::BindingRequired
            | ProofError::CertificateBindingRequired
            | ProofError::Certificate(_) => "invalid_token",
            ProofError::RequestUri(_) => "invalid_dpop_proof",
            ProofError::Proof(e) => e.error_code(),
            ProofError::Store(_) => "temporarily_unavailable",
        }
    }
}

/// Checks that the caller holds the certificate and the key `token` is bound
/// to, when it must: a bound token, the `DPoP` scheme or a policy that
/// requires binding. A request none of these apply to passes untouched. A
/// fresh proof's `jti` is recorded in `replay` (at `now`, seconds since the
/// Unix epoch); with nonces on, a proof must carry a current one.
pub async fn check(
    pop: Option<ProofOfPossession>,
    presented: Credentials<'_>,
    token: &PreparedToken,
    request: &ProofRequest<'_>,
    stage: &ProofStage,
    now: u64,
) -> Result<(), ProofError> {
    // `cnf` (RFC 7800) is read once, by name: no JSON pointer per Check.
    let cnf = token.top_level_claim("cnf");
    check_certificate(pop, cnf, request.certificate)?;
    check_dpop(pop, presented, cnf, request, stage, now).await
}

/// RFC 8705 §3: a token with `cnf.x5t#S256` must come over a connection
/// whose client certificate has that thumbprint; a policy requiring mTLS
/// needs every token so bound. A `cnf.x5t#S256` that is not a string
/// matches no certificate.
fn check_certificate(
    pop: Option<ProofOfPossession>,
    cnf: Option<&serde_json::Value>,
    certificate: &str,
) -> Result<(), ProofError> {
    match cnf.and_then(|cnf| cnf.get("x5t#S256")) {
        Some(x5t) => verify_certificate_binding(certificate, x5t.as_str().unwrap_or_default())
            .map_err(ProofError::Certificate),
        None if pop.is_some_and(ProofOfPossession::requires_mtls) => {
            Err(ProofError::CertificateBindingRequired)
        }
        None => Ok(()),
    }
}

/// RFC 9449: the DPoP proof of a DPoP-bound token (or of the `DPoP` scheme,
/// or of a policy requiring DPoP), its nonce when nonces are on, then its
/// `jti` against the replay store.
async fn check_dpop(
    pop: Option<ProofOfPossession>,
    presented: Credentials<'_>,
    cnf: Option<&serde_json::Value>,
    request: &ProofRequest<'_>,
    stage: &ProofStage,
    now: u64,
) -> Result<(), ProofError> {
    let jkt = cnf.and_then(|cnf| cnf.get("jkt")).and_then(|v| v.as_str());
    let (access_token, jkt) = match (presented, jkt) {
        (Credentials::Dpop(access_token), Some(jkt)) => (access_token, jkt),
        (Credentials::Bearer(_), Some(_)) => return Err(ProofError::BoundTokenAsBearer),
        (Credentials::Dpop(_), None) => return Err(ProofError::UnboundTokenAsDpop),
        (_, None) if pop.is_some_and(ProofOfPossession::requires_dpop) => {
            return Err(ProofError::BindingRequired);
        }
        (_, None) | (Credentials::None, Some(_)) => return Ok(()),
    };
    let uri = match request.public_origin {
        Some(origin) => NormalizedUri::parse(&format!("{origin}{}", request.path)),
        None => NormalizedUri::from_request(request.scheme, request.authority, request.path),
    }
    .map_err(ProofError::RequestUri)?;
    let mut context = ProofContext::new(request.method, &uri).with_access_token(access_token, jkt);
    if let Some(issuer) = &stage.nonces {
        context = context.with_nonce(issuer.as_ref());
    }
    let proof = verify_proof(request.proof, &context, now).map_err(ProofError::Proof)?;
    // Boxed: the Redis client's future is deep, and only DPoP requests
    // need it (keeps the Check future's layout within the compiler's limits).
    let freshness = Box::pin(stage.replay.check(&proof, unix_now_millis())).await;
    match freshness.map_err(ProofError::Store)? {
        Freshness::Fresh => Ok(()),
        Freshness::Replayed => Err(ProofError::Proof(DpopError::Replayed)),
    }
}
