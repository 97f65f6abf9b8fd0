//! A JWKS document parsed once into verification-ready keys.

use std::collections::HashMap;
use std::fmt;

use aws_lc_rs::signature::ParsedPublicKey;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::token::{Algorithm, KeyFamily, TokenError};

/// The usable signing keys of one JWKS document, each pre-parsed for every
/// algorithm it may verify. Lookups do no parsing.
pub struct KeySet {
    keys: Vec<PreparedKey>,
    by_kid: HashMap<String, usize>,
}

struct PreparedKey {
    kid: Option<String>,
    fingerprint: KeyFingerprint,
    verifiers: Vec<(Algorithm, ParsedPublicKey)>,
}

/// SHA-256 over a key's type and public components: equal exactly when two
/// JWKS documents carry the same public key. Lets a verification result
/// outlive a JWKS refresh only while the key that produced it is still
/// published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyFingerprint([u8; 32]);

/// Why a JWKS document could not be used at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    /// The body is not a JSON object with a `keys` array.
    #[error("JWKS is not a JSON object with a \"keys\" array: {0}")]
    NotJwks(super::JsonProblem),
    /// No key in the document is a usable signing key.
    #[error("JWKS has no usable signing key ({skipped} skipped)")]
    NoUsableKeys {
        /// How many keys were present but unusable.
        skipped: usize,
    },
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Option<Vec<serde_json::Value>>,
}

/// The JWK members scopegate reads (RFC 7517/7518/8037).
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

impl KeySet {
    /// Parses a JWKS document. Keys that are not public signing keys of a
    /// supported type (`use` other than `sig`, symmetric `oct` keys, unknown
    /// `alg`, malformed components, RSA under 2048 bits) are skipped; a
    /// document with no usable key is an error.
    pub fn from_json(body: &[u8]) -> Result<Self, KeySetError> {
        let document: JwksDocument = super::json::parse(body).map_err(KeySetError::NotJwks)?;
        let raw_keys =
            super::json::required(document.keys, "keys").map_err(KeySetError::NotJwks)?;
        let total = raw_keys.len();
        let mut keys = Vec::with_capacity(total);
        for raw in raw_keys {
            match serde_json::from_value::<Jwk>(raw).ok().and_then(prepare) {
                Some(key) => keys.push(key),
                None => tracing::debug!("skipping a JWKS key that is not a usable signing key"),
            }
        }
        if keys.is_empty() {
            return Err(KeySetError::NoUsableKeys { skipped: total });
        }
        let mut by_kid = HashMap::with_capacity(keys.len());
        for (index, key) in keys.iter().enumerate() {
            if let Some(kid) = &key.kid {
                // A duplicate kid keeps its first key, deterministically.
                by_kid.entry(kid.clone()).or_insert(index);
            }
        }
        Ok(KeySet { keys, by_kid })
    }

    /// How many usable keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set is empty (never true for a set built by `from_json`).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key with this `kid` exists (a token without `kid` is served
    /// by the only key of a single-key set).
    pub fn has_key(&self, kid: Option<&str>) -> bool {
        self.find(kid).is_ok()
    }

    /// The key that verifies `alg` for a token with this `kid`.
    pub fn verifier(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<&ParsedPublicKey, TokenError> {
        self.find(kid)?
            .verifiers
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, key)| key)
            .ok_or(TokenError::KeyAlgorithmMismatch)
    }

    fn find(&self, kid: Option<&str>) -> Result<&PreparedKey, TokenError> {
        match kid {
            Some(kid) => self
                .by_kid
                .get(kid)
                .map(|&i| &self.keys[i])
                .ok_or(TokenError::UnknownKey),
            None if self.keys.len() == 1 => Ok(&self.keys[0]),
            None => Err(TokenError::AmbiguousKey),
        }
    }

    /// The fingerprint of the key that verifies `alg` for a token with this
    /// `kid`, if the set still has such a key.
    pub fn fingerprint(&self, kid: Option<&str>, alg: Algorithm) -> Option<KeyFingerprint> {
        let key = self.find(kid).ok()?;
        key.verifiers
            .iter()
            .any(|(a, _)| *a == alg)
            .then_some(key.fingerprint)
    }

    /// The key ids in the set, for logs and tests.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().filter_map(|k| k.kid.as_deref())
    }
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.key_ids().collect::<Vec<_>>())
            .finish()
    }
}

/// Builds the verifiers of one JWK, or `None` if it is not usable.
fn prepare(jwk: Jwk) -> Option<PreparedKey> {
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    if jwk
        .key_ops
        .as_ref()
        .is_some_and(|ops| !ops.iter().any(|op| op == "verify"))
    {
        return None;
    }
    let candidates: Vec<Algorithm> = match &jwk.alg {
        Some(alg) => vec![alg.parse().ok()?],
        None => Algorithm::ALL.to_vec(),
    };
    let verifiers: Vec<_> = candidates
        .into_iter()
        .filter_map(|alg| Some((alg, parse_public_key(&jwk, alg)?)))
        .collect();
    if verifiers.is_empty() {
        return None;
    }
    Some(PreparedKey {
        fingerprint: fingerprint(&jwk),
        kid: jwk.kid,
        verifiers,
    })
}

/// Hashes `kty` and every public component, each length-prefixed so that no
/// two different keys encode alike.
fn fingerprint(jwk: &Jwk) -> KeyFingerprint {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let parts = [
        Some(&jwk.kty),
        jwk.crv.as_ref(),
        jwk.n.as_ref(),
        jwk.e.as_ref(),
        jwk.x.as_ref(),
        jwk.y.as_ref(),
    ];
    for part in parts {
        let bytes = part.map_or(&[][..], |p| p.as_bytes());
        context.update(&(bytes.len() as u64).to_be_bytes());
        context.update(bytes);
    }
    let mut digest = [0; 32];
    digest.copy_from_slice(context.finish().as_ref());
    KeyFingerprint(digest)
}

/// Parses the public key of one JWK (its `kty`, `crv`, `n`, `e`, `x`, `y`
/// members) for `alg`: `None` when the JWK is not a usable public key of the
/// family `alg` needs (wrong `kty` or curve, malformed components, RSA under
/// 2048 bits). Shared by JWKS documents and DPoP proof headers, whose `jwk`
/// is checked for private members by the caller.
pub(crate) fn public_key_from_jwk(
    jwk: &serde_json::Value,
    alg: Algorithm,
) -> Option<ParsedPublicKey> {
    parse_public_key(&Jwk::deserialize(jwk).ok()?, alg)
}

fn parse_public_key(jwk: &Jwk, alg: Algorithm) -> Option<ParsedPublicKey> {
    let component = |c: &Option<String>| URL_SAFE_NO_PAD.decode(c.as_deref()?).ok();
    match (alg.key_family(), jwk.kty.as_str()) {
        (KeyFamily::Rsa, "RSA") => {
            let components = aws_lc_rs::rsa::PublicKeyComponents {
                n: component(&jwk.n)?,
                e: component(&jwk.e)?,
            };
            components.to_parsed_public_key(alg.rsa_parameters()?).ok()
        }
        (KeyFamily::Ec(curve), "EC") if jwk.crv.as_deref() == Some(curve) => {
            let (x, y) = (component(&jwk.x)?, component(&jwk.y)?);
            let coordinate_len = match curve {
                "P-256" => 32,
                "P-384" => 48,
                _ => 66, // P-521
            };
            if x.len() != coordinate_len || y.len() != coordinate_len {
                return None;
            }
            let mut point = Vec::with_capacity(1 + 2 * coordinate_len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            ParsedPublicKey::new(alg.verification(), point).ok()
        }
        (KeyFamily::Ed25519, "OKP") if jwk.crv.as_deref() == Some("Ed25519") => {
            ParsedPublicKey::new(alg.verification(), component(&jwk.x)?).ok()
        }
        _ => None,
    }
}
