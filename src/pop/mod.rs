//! Sender-constrained access tokens: the building blocks that let a Check
//! require that the caller holds the key a token is bound to.
//!
//! * [`verify_proof`] — a DPoP proof (RFC 9449 §4.3) against the request,
//!   its access token's `ath` and `cnf.jkt`, and the time; pure.
//! * [`NormalizedUri`] — the request URI and `htu`, normalized for comparison
//!   (RFC 3986 §6.2.2–§6.2.3).
//! * [`jwk_thumbprint`] — RFC 7638 JWK SHA-256 thumbprints (`jkt`).
//! * [`NonceIssuer`] — stateless server nonces every replica accepts.
//! * [`ReplayStore`] — `jti` replay detection, per replica or shared in Redis.
//! * [`verify_certificate_binding`] — RFC 8705 `cnf.x5t#S256` against the
//!   client certificate Envoy forwards.
//!
//! DPoP proofs, the replay store and mTLS certificate binding are wired into
//! the Check by [`crate::authz::proof`]; server nonces are not wired yet (see
//! `docs/delegation.md`).
//!
//! ```text
//! DPoP header ─► verify_proof(header, ProofContext{method, uri, ath, cnf.jkt, nonce}, now)
//!                  └─► VerifiedProof ─► ReplayStore::check ─► Fresh | Replayed | Unavailable (503)
//! ```

mod dpop;
mod htu;
mod mtls;
mod nonce;
mod replay;
mod thumbprint;

pub use dpop::{
    DEFAULT_CLOCK_SKEW_SECONDS, DEFAULT_MAX_AGE_SECONDS, DpopError, MAX_JTI_BYTES, MAX_PROOF_BYTES,
    ProofContext, VerifiedProof, verify_proof,
};
pub use htu::{NormalizedUri, UriError};
pub use mtls::{MtlsError, certificate_thumbprint, verify_certificate_binding};
pub use nonce::{NonceConfigError, NonceIssuer, NonceValidator};
pub use replay::{
    Freshness, InMemoryReplayStore, REDIS_KEY_PREFIX, RedisReplayStore, ReplayConfigError,
    ReplayError, ReplayKey, ReplayStore, record_ttl,
};
pub use thumbprint::{ThumbprintError, jwk_thumbprint, sha256_base64url};
