//! Stateless DPoP server nonces (RFC 9449 §8 and §9).
//!
//! A nonce is `base64url(window ‖ HMAC-SHA256(secret, label ‖ window)[..16])`
//! where `window` is the current time divided by the period. Every replica
//! configured with the same secret issues and accepts the same nonces, so no
//! state is shared: a nonce is accepted during the window it was issued in
//! and the next one (between one and two periods), and one window early to
//! tolerate a replica whose clock runs ahead.

use std::time::Duration;

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// What checks a proof's `nonce` claim: the hook [`super::verify_proof`]
/// calls when server nonces are on.
pub trait NonceValidator: Send + Sync {
    /// Whether `nonce` is currently acceptable at `now` (seconds since the
    /// Unix epoch).
    fn accepts(&self, nonce: &str, now: u64) -> bool;
}

/// Why a nonce issuer cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NonceConfigError {
    /// The shared secret is too short to resist guessing.
    #[error(
        "the DPoP nonce secret has {0} bytes; use at least {min} random bytes (e.g. `openssl rand -base64 32`)",
        min = NonceIssuer::MIN_SECRET_BYTES
    )]
    SecretTooShort(usize),
    /// The period is zero or longer than a day.
    #[error("the DPoP nonce period must be between 1 second and 1 day")]
    InvalidPeriod,
}

/// Issues and validates nonces with a secret shared by all replicas.
pub struct NonceIssuer {
    key: hmac::Key,
    period_seconds: u64,
}

/// Bytes of the MAC kept in a nonce (128 bits).
const TAG_BYTES: usize = 16;
/// Domain separation: the secret may be reused for nothing else by accident.
const LABEL: &[u8] = b"scopegate dpop nonce v1\0";

impl NonceIssuer {
    /// The shortest accepted secret.
    pub const MIN_SECRET_BYTES: usize = 32;
    /// A nonce period that keeps nonces valid for one to two minutes.
    pub const DEFAULT_PERIOD: Duration = Duration::from_secs(60);

    /// An issuer keyed with `secret` (the same on every replica) whose
    /// nonces rotate every `period`.
    pub fn new(secret: &[u8], period: Duration) -> Result<Self, NonceConfigError> {
        if secret.len() < Self::MIN_SECRET_BYTES {
            return Err(NonceConfigError::SecretTooShort(secret.len()));
        }
        let period_seconds = period.as_secs();
        if period_seconds == 0 || period_seconds > 86_400 {
            return Err(NonceConfigError::InvalidPeriod);
        }
        Ok(NonceIssuer {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            period_seconds,
        })
    }

    /// The nonce to send in `DPoP-Nonce` at `now`.
    pub fn issue(&self, now: u64) -> String {
        let window = now / self.period_seconds;
        let mut nonce = Vec::with_capacity(8 + TAG_BYTES);
        nonce.extend_from_slice(&window.to_be_bytes());
        nonce.extend_from_slice(&self.tag(window).as_ref()[..TAG_BYTES]);
        URL_SAFE_NO_PAD.encode(nonce)
    }

    fn tag(&self, window: u64) -> hmac::Tag {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(LABEL);
        context.update(&window.to_be_bytes());
        context.sign()
    }
}

impl NonceValidator for NonceIssuer {
    fn accepts(&self, nonce: &str, now: u64) -> bool {
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        let Some((window, tag)) = bytes.split_first_chunk::<8>() else {
            return false;
        };
        let window = u64::from_be_bytes(*window);
        let current = now / self.period_seconds;
        let fresh = window.saturating_add(1) >= current && window <= current.saturating_add(1);
        fresh
            && tag.len() == TAG_BYTES
            && aws_lc_rs::constant_time::verify_slices_are_equal(
                tag,
                &self.tag(window).as_ref()[..TAG_BYTES],
            )
            .is_ok()
    }
}

impl std::fmt::Debug for NonceIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceIssuer")
            .field("period_seconds", &self.period_seconds)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn issuer(secret: &[u8]) -> NonceIssuer {
        NonceIssuer::new(secret, Duration::from_secs(60)).unwrap()
    }

    #[test]
    fn every_replica_with_the_secret_accepts_every_replicas_nonce() {
        let (a, b) = (issuer(SECRET), issuer(SECRET));
        let nonce = a.issue(NOW);
        assert!(b.accepts(&nonce, NOW));
        assert!(a.accepts(&b.issue(NOW + 5), NOW + 5));
        assert!(!issuer(b"another secret, 32 bytes or more").accepts(&nonce, NOW));
    }

    #[test]
    fn a_nonce_is_accepted_for_one_to_two_periods_then_goes_stale() {
        let issuer = issuer(SECRET);
        let start = NOW - NOW % 60; // the first second of a window
        let nonce = issuer.issue(start);
        assert!(issuer.accepts(&nonce, start + 119));
        assert!(
            !issuer.accepts(&nonce, start + 120),
            "stale after two windows"
        );
        // A replica one window behind still accepts it.
        assert!(issuer.accepts(&nonce, start - 1));
        assert!(!issuer.accepts(&nonce, start - 61));
    }

    #[test]
    fn forged_or_malformed_nonces_are_refused() {
        let issuer = issuer(SECRET);
        let nonce = issuer.issue(NOW);
        let mut bytes = URL_SAFE_NO_PAD.decode(&nonce).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        assert!(!issuer.accepts(&URL_SAFE_NO_PAD.encode(&bytes), NOW));
        // Moving the window without the MAC does not work either.
        let mut moved = URL_SAFE_NO_PAD.decode(&nonce).unwrap();
        moved[7] = moved[7].wrapping_add(1);
        assert!(!issuer.accepts(&URL_SAFE_NO_PAD.encode(&moved), NOW));
        for bad in ["", "not base64!", "AAAA", &nonce[..nonce.len() - 2]] {
            assert!(!issuer.accepts(bad, NOW), "{bad:?}");
        }
    }

    #[test]
    fn weak_configuration_is_refused() {
        assert_eq!(
            NonceIssuer::new(b"short", Duration::from_secs(60)).unwrap_err(),
            NonceConfigError::SecretTooShort(5)
        );
        assert_eq!(
            NonceIssuer::new(SECRET, Duration::ZERO).unwrap_err(),
            NonceConfigError::InvalidPeriod
        );
    }
}
