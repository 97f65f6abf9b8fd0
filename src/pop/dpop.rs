//! DPoP proof verification, RFC 9449 §4.3, as a pure function of the proof,
//! what the request and its access token say, and the time.
//!
//! The checks run in the order of §4.3, cheapest first, and the signature is
//! verified before any claim is trusted; the server nonce (which a client
//! expects to have to retry for) comes last, so an otherwise invalid proof is
//! reported as invalid rather than as needing a nonce. Nothing from the proof
//! is echoed into error messages.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::htu::NormalizedUri;
use super::nonce::NonceValidator;
use super::thumbprint::{jwk_thumbprint, sha256_base64url};
use crate::authz::RequestHeader;
use crate::token::{Algorithm, AlgorithmSet, TokenError, UnverifiedToken};

/// Proofs longer than this are refused before any decoding (an RSA-4096
/// proof is about 2 KiB).
pub const MAX_PROOF_BYTES: usize = 8 * 1024;
/// The longest accepted `jti` (a UUID is 36 bytes).
pub const MAX_JTI_BYTES: usize = 256;
/// How long after its `iat` a proof is accepted, by default (RFC 9449 §11.1
/// suggests "a few seconds" to "minutes"; Auth0 and most servers use 60 s).
pub const DEFAULT_MAX_AGE_SECONDS: u64 = 60;
/// How far a client's clock may be off, by default, for `iat`.
pub const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 5;

/// JWK members that hold private or symmetric key material (RFC 7518 §6.2.2,
/// §6.3.2, §6.4.1; RFC 8037 §2). A proof's `jwk` with any of them is refused:
/// the client leaked its key.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// What a proof must match: the request, the access token it accompanies,
/// and the server's settings.
#[derive(Clone, Copy)]
pub struct ProofContext<'a> {
    /// The request method, compared exactly with `htm` (methods are
    /// case-sensitive, RFC 9110 §9.1).
    pub method: &'a str,
    /// The request URI (or the `resource.id` origin plus the path), compared
    /// with the normalized `htu`.
    pub uri: &'a NormalizedUri,
    /// The access token sent with the proof, whose hash `ath` must carry
    /// (RFC 9449 §4.3 step 12); `None` when no access token is presented.
    pub access_token: Option<&'a str>,
    /// The access token's `cnf.jkt`: the thumbprint of the proof's key must
    /// equal it (§6.1). `None` only when there is no access token.
    pub expected_jkt: Option<&'a str>,
    /// The signature algorithms accepted for proofs (all asymmetric).
    pub algorithms: AlgorithmSet,
    /// How long after its `iat` a proof is accepted.
    pub max_age_seconds: u64,
    /// Tolerance for the client's clock, either way.
    pub clock_skew_seconds: u64,
    /// Server nonces: when set, the proof's `nonce` must be one it accepts.
    pub nonce: Option<&'a dyn NonceValidator>,
}

impl<'a> ProofContext<'a> {
    /// A context for a request with the default window, every supported
    /// algorithm, no access token and no nonces.
    pub fn new(method: &'a str, uri: &'a NormalizedUri) -> Self {
        ProofContext {
            method,
            uri,
            access_token: None,
            expected_jkt: None,
            algorithms: Algorithm::ALL.into_iter().collect(),
            max_age_seconds: DEFAULT_MAX_AGE_SECONDS,
            clock_skew_seconds: DEFAULT_CLOCK_SKEW_SECONDS,
            nonce: None,
        }
    }

    /// Binds the proof to an access token and the key its `cnf.jkt` names.
    pub fn with_access_token(mut self, access_token: &'a str, jkt: &'a str) -> Self {
        self.access_token = Some(access_token);
        self.expected_jkt = Some(jkt);
        self
    }

    /// Requires a nonce `validator` accepts.
    pub fn with_nonce(mut self, validator: &'a dyn NonceValidator) -> Self {
        self.nonce = Some(validator);
        self
    }
}

impl std::fmt::Debug for ProofContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProofContext")
            .field("method", &self.method)
            .field("uri", &self.uri)
            .field("access_token", &self.access_token.map(|_| "…"))
            .field("expected_jkt", &self.expected_jkt)
            .field("algorithms", &self.algorithms)
            .field("max_age_seconds", &self.max_age_seconds)
            .field("clock_skew_seconds", &self.clock_skew_seconds)
            .field("nonce", &self.nonce.is_some())
            .finish()
    }
}

/// A proof that passed every stateless check. Its `jti` still has to be
/// recorded in a [`super::ReplayStore`] before the request is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// The RFC 7638 SHA-256 thumbprint of the proof's key.
    pub jkt: String,
    /// The proof's unique identifier.
    pub jti: String,
    /// When the proof was made (seconds since the Unix epoch).
    pub iat: u64,
    /// The normalized `htu` (equal to the request's URI).
    pub htu: NormalizedUri,
    /// The proof's signature algorithm.
    pub algorithm: Algorithm,
    /// The last second at which this proof's `iat` is still accepted: its
    /// `jti` must be remembered at least until that second ends
    /// ([`VerifiedProof::rejected_from_millis`]).
    pub replay_until: u64,
}

impl VerifiedProof {
    /// The first instant, in milliseconds since the Unix epoch, at which the
    /// proof is no longer accepted: the end of second `replay_until` (a
    /// proof is accepted while the clock, in whole seconds, is at most
    /// `replay_until`, that is through its last millisecond).
    pub fn rejected_from_millis(&self) -> u64 {
        self.replay_until.saturating_add(1).saturating_mul(1000)
    }
}

/// Why a proof is refused. [`DpopError::error_code`] is the
/// `WWW-Authenticate: DPoP error="…"` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    /// The token is DPoP-bound (or sent with the `DPoP` scheme) but no
    /// `DPoP` header came with it.
    #[error("a DPoP proof is required; send it in one DPoP header")]
    MissingProof,
    /// More than one `DPoP` header (or one with several joined values).
    #[error("more than one DPoP proof was sent; send exactly one DPoP header")]
    SeveralProofs,
    /// Not a compact JWS of three base64url parts with JSON objects.
    #[error("the DPoP proof is malformed: {0}")]
    Malformed(&'static str),
    /// `typ` is not `dpop+jwt`.
    #[error("the DPoP proof header typ must be dpop+jwt")]
    WrongType,
    /// `alg` is not an asymmetric algorithm scopegate implements and the
    /// server accepts for proofs (never `none` or `HS*`).
    #[error("the DPoP proof algorithm is not accepted")]
    AlgorithmNotAllowed,
    /// The header has `crit` extensions, none of which are understood.
    #[error("the DPoP proof has critical header extensions")]
    CriticalHeader,
    /// No `jwk` object in the header.
    #[error("the DPoP proof header has no jwk")]
    MissingJwk,
    /// The header's `jwk` carries private or symmetric key material.
    #[error("the DPoP proof jwk must be a public key; it carries private key material")]
    PrivateKey,
    /// The `jwk` is not a usable public key for `alg`.
    #[error("the DPoP proof jwk is not a valid public key for its alg")]
    InvalidJwk,
    /// The signature does not verify with the header's `jwk`.
    #[error("the DPoP proof signature is invalid")]
    BadSignature,
    /// A claim §4.2 requires is missing.
    #[error("the DPoP proof lacks the {0} claim")]
    MissingClaim(&'static str),
    /// A claim has the wrong type or an unacceptable value (e.g. a `jti`
    /// over [`MAX_JTI_BYTES`], an `htu` that is no absolute URI).
    #[error("the DPoP proof {0} claim is invalid")]
    InvalidClaim(&'static str),
    /// `htm` is not the request's method.
    #[error("the DPoP proof htm does not match the request method")]
    MethodMismatch,
    /// `htu` is not the request's URI.
    #[error("the DPoP proof htu does not match the request URI")]
    UriMismatch,
    /// `iat` is older than the accepted window.
    #[error("the DPoP proof is too old; make a new proof for each request")]
    TooOld,
    /// `iat` is in the future beyond the clock skew.
    #[error("the DPoP proof was issued in the future; check the client clock")]
    IssuedInFuture,
    /// `ath` is not the hash of the access token sent with it.
    #[error("the DPoP proof ath does not match the access token")]
    AccessTokenHashMismatch,
    /// The proof's key is not the key the access token is bound to.
    #[error("the DPoP proof key is not the key the access token is bound to")]
    KeyMismatch,
    /// Server nonces are on and the proof has no nonce, or a stale or
    /// unknown one: retry with the `DPoP-Nonce` the response carries.
    #[error("a fresh server nonce is required; retry with the DPoP-Nonce value")]
    UseNonce,
    /// The proof's `jti` was already used for this key and URI.
    #[error("the DPoP proof was already used; make a new proof for each request")]
    Replayed,
}

impl DpopError {
    /// A short, stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            DpopError::MissingProof => "missing_proof",
            DpopError::SeveralProofs => "several_proofs",
            DpopError::Malformed(_) => "malformed_proof",
            DpopError::WrongType => "wrong_typ",
            DpopError::AlgorithmNotAllowed => "algorithm_not_allowed",
            DpopError::CriticalHeader => "critical_header",
            DpopError::MissingJwk => "missing_jwk",
            DpopError::PrivateKey => "private_key_in_jwk",
            DpopError::InvalidJwk => "invalid_jwk",
            DpopError::BadSignature => "bad_signature",
            DpopError::MissingClaim(_) => "missing_claim",
            DpopError::InvalidClaim(_) => "invalid_claim",
            DpopError::MethodMismatch => "htm_mismatch",
            DpopError::UriMismatch => "htu_mismatch",
            DpopError::TooOld => "iat_too_old",
            DpopError::IssuedInFuture => "iat_in_future",
            DpopError::AccessTokenHashMismatch => "ath_mismatch",
            DpopError::KeyMismatch => "jkt_mismatch",
            DpopError::UseNonce => "use_dpop_nonce",
            DpopError::Replayed => "replayed",
        }
    }

    /// The RFC 9449 error code for the `DPoP` challenge: `use_dpop_nonce`
    /// (§8, the response must carry a `DPoP-Nonce`) or `invalid_dpop_proof`
    /// (§7.1).
    pub fn error_code(&self) -> &'static str {
        match self {
            DpopError::UseNonce => "use_dpop_nonce",
            _ => "invalid_dpop_proof",
        }
    }
}

/// The header members a proof needs beyond `alg` (which the token parser
/// reads).
#[derive(Deserialize)]
struct ProofHeader {
    #[serde(default)]
    typ: Option<Value>,
    #[serde(default)]
    jwk: Option<Value>,
}

/// The claims of §4.2, read without trusting their types.
#[derive(Deserialize)]
struct ProofClaims {
    #[serde(default)]
    jti: Option<Value>,
    #[serde(default)]
    htm: Option<Value>,
    #[serde(default)]
    htu: Option<Value>,
    #[serde(default)]
    iat: Option<Value>,
    #[serde(default)]
    ath: Option<Value>,
    #[serde(default)]
    nonce: Option<Value>,
}

/// Verifies the `DPoP` request header against `expected` at `now` (seconds
/// since the Unix epoch): RFC 9449 §4.3 steps 1–12, except the `jti` replay
/// check, which needs a [`super::ReplayStore`].
pub fn verify_proof(
    header: RequestHeader<'_>,
    expected: &ProofContext<'_>,
    now: u64,
) -> Result<VerifiedProof, DpopError> {
    let proof = match header {
        RequestHeader::Absent => return Err(DpopError::MissingProof),
        RequestHeader::Several => return Err(DpopError::SeveralProofs),
        // Envoy joins repeated headers with ','; no JWS contains one.
        RequestHeader::One(value) if value.contains(',') => return Err(DpopError::SeveralProofs),
        RequestHeader::One(value) => value.trim_ascii(),
    };
    if proof.len() > MAX_PROOF_BYTES {
        return Err(DpopError::Malformed("proof is too long"));
    }
    // Splitting, base64url, `alg` (asymmetric and allowed) and `crit` are
    // the access-token parser's, shared.
    let parsed = UnverifiedToken::parse(proof, expected.algorithms).map_err(from_token_error)?;
    let algorithm = parsed.algorithm();
    let header = proof_header(proof)?;
    if !header
        .typ
        .as_ref()
        .and_then(Value::as_str)
        .is_some_and(is_dpop_type)
    {
        return Err(DpopError::WrongType);
    }
    let jwk = match header.jwk {
        Some(Value::Object(jwk)) => jwk,
        Some(_) => return Err(DpopError::InvalidJwk),
        None => return Err(DpopError::MissingJwk),
    };
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err(DpopError::PrivateKey);
    }
    let jwk = Value::Object(jwk);
    let key = crate::jwks::public_key_from_jwk(&jwk, algorithm).ok_or(DpopError::InvalidJwk)?;
    let payload = parsed.into_signed_payload(&key).map_err(from_token_error)?;
    let claims = proof_claims(&payload)?;

    let jti = required_string(claims.jti, "jti")?;
    if jti.is_empty() || jti.len() > MAX_JTI_BYTES {
        return Err(DpopError::InvalidClaim("jti"));
    }
    if required_string(claims.htm, "htm")? != expected.method {
        return Err(DpopError::MethodMismatch);
    }
    let htu = NormalizedUri::parse(&required_string(claims.htu, "htu")?)
        .map_err(|_| DpopError::InvalidClaim("htu"))?;
    if &htu != expected.uri {
        return Err(DpopError::UriMismatch);
    }
    let iat = numeric_date(claims.iat.ok_or(DpopError::MissingClaim("iat"))?)?;
    let replay_until = iat
        .saturating_add(expected.max_age_seconds)
        .saturating_add(expected.clock_skew_seconds);
    if replay_until < now {
        return Err(DpopError::TooOld);
    }
    if iat > now.saturating_add(expected.clock_skew_seconds) {
        return Err(DpopError::IssuedInFuture);
    }
    if let Some(access_token) = expected.access_token {
        let ath = required_string(claims.ath, "ath")?;
        if ath != sha256_base64url(access_token.as_bytes()) {
            return Err(DpopError::AccessTokenHashMismatch);
        }
    }
    let jkt = jwk
        .as_object()
        .map(jwk_thumbprint)
        .and_then(Result::ok)
        .ok_or(DpopError::InvalidJwk)?;
    if expected.expected_jkt.is_some_and(|bound| bound != jkt) {
        return Err(DpopError::KeyMismatch);
    }
    if let Some(validator) = expected.nonce {
        let nonce = match claims.nonce {
            None => return Err(DpopError::UseNonce),
            Some(Value::String(nonce)) => nonce,
            Some(_) => return Err(DpopError::InvalidClaim("nonce")),
        };
        if !validator.accepts(&nonce, now) {
            return Err(DpopError::UseNonce);
        }
    }
    Ok(VerifiedProof {
        jkt,
        jti,
        iat,
        htu,
        algorithm,
        replay_until,
    })
}

/// RFC 7515 §4.1.9: `typ` is a media type, compared case-insensitively, and
/// a value without `/` means `application/` + value. So `dpop+jwt`,
/// `DPoP+JWT` and `application/dpop+jwt` are the same type (RFC 9449 §4.2
/// names `dpop+jwt`).
fn is_dpop_type(typ: &str) -> bool {
    let subtype = match typ.split_once('/') {
        Some((kind, subtype)) if kind.eq_ignore_ascii_case("application") => subtype,
        Some(_) => return false,
        None => typ,
    };
    subtype.eq_ignore_ascii_case("dpop+jwt")
}

fn from_token_error(error: TokenError) -> DpopError {
    match error {
        TokenError::Malformed(what) => DpopError::Malformed(what),
        TokenError::UnsupportedAlgorithm | TokenError::AlgorithmNotAllowed(_) => {
            DpopError::AlgorithmNotAllowed
        }
        TokenError::CriticalHeader => DpopError::CriticalHeader,
        TokenError::BadSignature => DpopError::BadSignature,
        // The parser and the signature check return no other error.
        _ => DpopError::Malformed("unexpected token error"),
    }
}

fn proof_header(proof: &str) -> Result<ProofHeader, DpopError> {
    let encoded = proof.split('.').next().unwrap_or_default();
    let json = decode(encoded)?;
    serde_json::from_slice(&json).map_err(|_| DpopError::Malformed("header is not a JSON object"))
}

fn proof_claims(payload: &[u8]) -> Result<ProofClaims, DpopError> {
    // serde would also read a struct from a JSON array.
    if serde_json::from_slice::<Map<String, Value>>(payload).is_err() {
        return Err(DpopError::Malformed("claims are not a JSON object"));
    }
    serde_json::from_slice(payload)
        .map_err(|_| DpopError::Malformed("claims are not a JSON object"))
}

fn decode(part: &str) -> Result<Vec<u8>, DpopError> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| DpopError::Malformed("part is not unpadded base64url"))
}

fn required_string(value: Option<Value>, name: &'static str) -> Result<String, DpopError> {
    match value {
        None => Err(DpopError::MissingClaim(name)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(DpopError::InvalidClaim(name)),
    }
}

/// A NumericDate (RFC 7519 §2): a non-negative JSON number of seconds,
/// fractions truncated.
fn numeric_date(value: Value) -> Result<u64, DpopError> {
    let invalid = DpopError::InvalidClaim("iat");
    match value {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
                    .map(|f| f as u64)
            })
            .ok_or(invalid),
        _ => Err(invalid),
    }
}

#[cfg(test)]
mod tests;
