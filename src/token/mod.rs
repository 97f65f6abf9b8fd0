//! Verification of compact JWS access tokens (RFC 7515 / RFC 7519).
//!
//! Verification runs in two steps so that the key lookup, which may need the
//! network on a key miss, sits between them:
//!
//! 1. [`UnverifiedToken::parse`] splits and decodes the token, and rejects an
//!    algorithm the policy does not allow (so `none` and `HS*` never reach a
//!    key) or a `crit` header it cannot honour;
//! 2. [`UnverifiedToken::verify`] checks the signature with a pre-parsed public
//!    key, then `exp`, `nbf`, `iss` and `aud` against [`IssuerRules`].
//!
//! Nothing from the token is echoed into error messages.

mod algorithm;
mod claims;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

pub use algorithm::{Algorithm, AlgorithmSet, KeyFamily};
pub use claims::{
    ClaimSelection, ReadClaims, RetainedClaims, ScopeList, Scopes, VerifiedToken, top_level_name,
};

/// Tokens longer than this are rejected before any decoding.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token was rejected. Every variant maps to a 401 `invalid_token`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is not a well-formed compact JWS.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// The `alg` header names an algorithm scopegate does not implement.
    #[error("token algorithm is not supported")]
    UnsupportedAlgorithm,
    /// The `alg` header names an algorithm the policy does not allow.
    #[error("token algorithm {0} is not allowed by the policy")]
    AlgorithmNotAllowed(Algorithm),
    /// The header's `typ` is not one the issuer's `tokenTypes` accepts.
    #[error("token type (typ) is not accepted")]
    WrongTokenType,
    /// Without `tokenTypes`: the header's `typ` names another kind of JWT
    /// ([`NOT_ACCESS_TOKEN_TYPES`]).
    #[error("token type (typ) {0} is not an access token; send an access token")]
    NotAnAccessToken(&'static str),
    /// The header lists critical extensions (`crit`), none of which are understood.
    #[error("token has critical header extensions")]
    CriticalHeader,
    /// No key in the issuer's JWKS has the token's `kid`.
    #[error("token signing key is not known")]
    UnknownKey,
    /// The token has no `kid` and the JWKS has more than one key.
    #[error("token has no key id and the issuer has several keys")]
    AmbiguousKey,
    /// The key with the token's `kid` cannot verify the token's algorithm.
    #[error("token algorithm does not match its signing key")]
    KeyAlgorithmMismatch,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` is missing.
    #[error("token has no expiry")]
    MissingExpiry,
    /// `exp` is in the past (beyond the clock skew).
    #[error("token is expired")]
    Expired,
    /// `nbf` is in the future (beyond the clock skew).
    #[error("token is not yet valid")]
    NotYetValid,
    /// A registered claim has the wrong JSON type.
    #[error("token claim {0} has an invalid value")]
    InvalidClaim(&'static str),
    /// `iss` is not the policy's issuer.
    #[error("token issuer is not accepted")]
    WrongIssuer,
    /// `aud` contains none of the policy's audiences.
    #[error("token audience is not accepted")]
    WrongAudience,
}

impl TokenError {
    /// A short, stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "malformed",
            TokenError::UnsupportedAlgorithm | TokenError::AlgorithmNotAllowed(_) => {
                "algorithm_not_allowed"
            }
            TokenError::CriticalHeader => "critical_header",
            TokenError::WrongTokenType => "wrong_token_type",
            TokenError::NotAnAccessToken(_) => "token_type",
            TokenError::UnknownKey | TokenError::AmbiguousKey => "unknown_key",
            TokenError::KeyAlgorithmMismatch => "key_algorithm_mismatch",
            TokenError::BadSignature => "bad_signature",
            TokenError::MissingExpiry | TokenError::InvalidClaim(_) => "invalid_claims",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
        }
    }
}

/// What a token must say to be accepted, compiled from a policy's `issuer`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IssuerRules {
    /// The exact `iss` value.
    pub issuer: Box<str>,
    /// Accepted `aud` values.
    pub audiences: Box<[Box<str>]>,
    /// Accepted signature algorithms.
    pub algorithms: AlgorithmSet,
    /// Tolerance for `exp` and `nbf`, in seconds.
    pub clock_skew_seconds: u64,
    /// Accepted `typ` values, normalized ([`normalize_token_type`]); `None`:
    /// any, a missing `typ` included.
    pub token_types: Option<Box<[Box<str>]>>,
}

/// A `typ` value as compared: lowercase, without the optional
/// `application/` prefix (RFC 7515 §4.1.9), so `at+jwt`, `AT+JWT` and
/// `application/at+jwt` are one. `None` for what is not a media type.
pub fn normalize_token_type(token_type: &str) -> Option<Box<str>> {
    let lower = token_type.to_ascii_lowercase();
    let subtype = lower.strip_prefix("application/").unwrap_or(&lower);
    let token_char = |b: u8| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b);
    (!subtype.is_empty() && subtype.bytes().all(token_char)).then(|| subtype.into())
}

/// The `typ` values (normalized) of JWTs that are not access tokens, refused
/// when an issuer lists no `tokenTypes` (with `tokenTypes`, only those
/// listed pass): ID-JAG grants (`oauth-id-jag+jwt`), Transaction Tokens
/// (`txntoken+jwt`), WIMSE workload identity tokens (`wimse-id+jwt`), DPoP
/// proofs (`dpop+jwt`, RFC 9449), Security Event Tokens (`secevent+jwt`,
/// RFC 8417) and logout tokens (`logout+jwt`, OpenID Back-Channel Logout).
/// Each is signed by a key an issuer may also sign access tokens with, so
/// without this list it could pass for one (RFC 8725 §3.11).
pub const NOT_ACCESS_TOKEN_TYPES: [&str; 6] = [
    "oauth-id-jag+jwt",
    "txntoken+jwt",
    "wimse-id+jwt",
    "dpop+jwt",
    "secevent+jwt",
    "logout+jwt",
];

/// Checks a token's `typ` against the issuer's `tokenTypes` or, without
/// them, against [`NOT_ACCESS_TOKEN_TYPES`].
fn check_token_type(token_type: Option<&str>, rules: &IssuerRules) -> Result<(), TokenError> {
    let normalized = token_type.and_then(normalize_token_type);
    match &rules.token_types {
        Some(accepted) if normalized.as_ref().is_some_and(|t| accepted.contains(t)) => Ok(()),
        Some(_) => Err(TokenError::WrongTokenType),
        None => match NOT_ACCESS_TOKEN_TYPES
            .iter()
            .find(|refused| normalized.as_deref() == Some(**refused))
        {
            Some(refused) => Err(TokenError::NotAnAccessToken(refused)),
            None => Ok(()),
        },
    }
}

/// A decoded token whose signature has not been checked yet.
#[derive(Debug)]
pub struct UnverifiedToken<'a> {
    algorithm: Algorithm,
    key_id: Option<String>,
    token_type: Option<String>,
    signing_input: &'a str,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

/// The JOSE header fields scopegate reads. Key-carrying parameters (`jku`,
/// `jwk`, `x5u`, `x5c`) are deliberately ignored: keys come only from the
/// policy's JWKS.
#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// Any JSON: a `typ` that is not a string matches no `tokenTypes`.
    #[serde(default)]
    typ: Option<serde_json::Value>,
    /// Whether `crit` is present at all: any value, `null` included, names
    /// extensions scopegate does not understand (RFC 7515 §4.1.11).
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(value: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(value).map(|_| true)
}

impl<'a> UnverifiedToken<'a> {
    /// Decodes a compact JWS and checks its header against the allowed
    /// algorithms. Performs no cryptography.
    pub fn parse(token: &'a str, allowed: AlgorithmSet) -> Result<Self, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed("token is too long"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("expected three dot-separated parts"));
        };
        if header.is_empty() || payload.is_empty() || signature.is_empty() {
            return Err(TokenError::Malformed("empty part"));
        }
        let signing_input = &token[..header.len() + 1 + payload.len()];
        let header_json = decode_part(header)?;
        // serde would also read a struct from a JSON array; a JOSE header is an object.
        if header_json.trim_ascii_start().first() != Some(&b'{') {
            return Err(TokenError::Malformed(
                "header is not a JSON object with alg",
            ));
        }
        let header: JoseHeader = serde_json::from_slice(&header_json)
            .map_err(|_| TokenError::Malformed("header is not a JSON object with alg"))?;
        let algorithm: Algorithm = header
            .alg
            .parse()
            .map_err(|_| TokenError::UnsupportedAlgorithm)?;
        if !allowed.contains(algorithm) {
            return Err(TokenError::AlgorithmNotAllowed(algorithm));
        }
        if header.crit {
            return Err(TokenError::CriticalHeader);
        }
        Ok(UnverifiedToken {
            algorithm,
            key_id: header.kid,
            token_type: header.typ.and_then(|typ| typ.as_str().map(str::to_string)),
            signing_input,
            payload: decode_part(payload)?,
            signature: decode_part(signature)?,
        })
    }

    /// The header's `alg`.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The header's `kid`, if any.
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// Checks the signature with `key` and returns the payload bytes, for
    /// JWTs whose claims are not an access token's (DPoP proofs): the caller
    /// validates the claims itself.
    pub(crate) fn into_signed_payload(
        self,
        key: &aws_lc_rs::signature::ParsedPublicKey,
    ) -> Result<Vec<u8>, TokenError> {
        key.verify_sig(self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| TokenError::BadSignature)?;
        Ok(self.payload)
    }

    /// The payload's `iss`, read **before** the signature is checked: only
    /// to pick which of a policy's issuers verifies the token (whose `iss`
    /// is then checked again with the verified claims).
    pub fn unverified_issuer(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Issuer {
            iss: Option<String>,
        }
        serde_json::from_slice::<Issuer>(&self.payload).ok()?.iss
    }

    /// Checks the header's `typ` against `rules`, the signature with `key`,
    /// then the registered claims against `rules` at time `now` (seconds
    /// since the Unix epoch).
    pub fn verify(
        self,
        key: &aws_lc_rs::signature::ParsedPublicKey,
        rules: &IssuerRules,
        now: u64,
    ) -> Result<VerifiedToken, TokenError> {
        if !rules.algorithms.contains(self.algorithm) {
            return Err(TokenError::AlgorithmNotAllowed(self.algorithm));
        }
        check_token_type(self.token_type.as_deref(), rules)?;
        key.verify_sig(self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| TokenError::BadSignature)?;
        VerifiedToken::validate(claims::parse_claims(&self.payload)?, rules, now)
    }
}

fn decode_part(part: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed("part is not unpadded base64url"))
}

/// Encodes a compact JWS: `base64url(header) . base64url(claims) . base64url(sign(input))`.
/// Used by the dev issuer and by tests that need real signatures.
pub fn encode_compact(
    header: &serde_json::Value,
    claims: &serde_json::Value,
    sign: impl FnOnce(&[u8]) -> Vec<u8>,
) -> String {
    let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = sign(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    token
}

/// Validates a claim set **without any signature** — for fuzzing the claims
/// parser only (feature `fuzzing`); never use it to accept a token.
#[cfg(feature = "fuzzing")]
pub fn validate_unsigned_claims_for_fuzzing(
    payload: &[u8],
    rules: &IssuerRules,
    now: u64,
) -> Result<VerifiedToken, TokenError> {
    VerifiedToken::validate(claims::parse_claims(payload)?, rules, now)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        // A clock before 1970 is broken: every token then reads as expired
        // (fail closed), never as not expired.
        .map_or(u64::MAX, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch (`u64::MAX` for a clock before 1970,
/// as [`unix_now`]).
pub fn unix_now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(u64::MAX, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
        })
}

#[cfg(test)]
mod tests;
