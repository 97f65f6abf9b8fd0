//! A local OIDC issuer for trying scopegate without Auth0: discovery, a JWKS
//! with one RSA key generated at start, and `POST /token` minting RS256
//! access tokens. **Development only**: it authenticates nobody.
//!
//! ```text
//! GET  /.well-known/openid-configuration   {"issuer": "http://ADDR", "jwks_uri": …}
//! GET  /.well-known/jwks.json              {"keys": [{"kty": "RSA", "kid": …}]}
//! POST /token  {"sub": "…", "aud": ["…"], "scope": "a b", "ttl_seconds": 3600, "claims": {…}}
//!              → {"access_token": "…", "token_type": "Bearer", "expires_in": 3600}
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::token::{encode_compact, unix_now};

/// What to put in a minted token. Unset fields get development defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MintRequest {
    /// `sub` (default `dev-user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// `aud` values (default: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aud: Vec<String>,
    /// `scope`, space-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Lifetime in seconds (default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Further claims; they override the ones above.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub claims: Map<String, Value>,
}

/// The answer of `POST /token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MintResponse {
    /// The signed token.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Lifetime in seconds.
    pub expires_in: u64,
}

/// An issuer with one RSA-2048 signing key.
pub struct DevIssuer {
    issuer: String,
    kid: String,
    key: KeyPair,
    rng: SystemRandom,
}

/// The key could not be generated.
#[derive(Debug, thiserror::Error)]
#[error("could not generate the dev issuer's RSA key")]
pub struct KeyGenerationFailed;

impl DevIssuer {
    /// Generates a key for an issuer whose `iss` is `issuer`.
    pub fn generate(issuer: impl Into<String>) -> Result<Self, KeyGenerationFailed> {
        let key = KeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyGenerationFailed)?;
        let fingerprint =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.public_key().as_ref());
        Ok(DevIssuer {
            issuer: issuer.into(),
            kid: format!("dev-{}", hex_prefix(fingerprint.as_ref())),
            key,
            rng: SystemRandom::new(),
        })
    }

    /// The `iss` value.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The key's `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWKS document.
    pub fn jwks(&self) -> Value {
        let public = self.key.public_key();
        json!({"keys": [{
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
        }]})
    }

    /// Signs `claims` as an RS256 token with this issuer's key and `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "RS256", "typ": "at+jwt", "kid": self.kid});
        encode_compact(&header, claims, |input| {
            let mut signature = vec![0; self.key.public_modulus_len()];
            self.key
                .sign(&RSA_PKCS1_SHA256, &self.rng, input, &mut signature)
                .expect("RSA signing with a valid key and buffer cannot fail");
            signature
        })
    }

    /// Mints a token: `iss`, `iat`, `exp` and the request's claims.
    pub fn mint(&self, request: &MintRequest) -> MintResponse {
        let ttl = request.ttl_seconds.unwrap_or(3600);
        let now = unix_now();
        let mut claims = Map::new();
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert(
            "sub".into(),
            request
                .sub
                .clone()
                .unwrap_or_else(|| "dev-user".into())
                .into(),
        );
        match request.aud.as_slice() {
            [] => {}
            [one] => {
                claims.insert("aud".into(), one.clone().into());
            }
            many => {
                claims.insert("aud".into(), many.to_vec().into());
            }
        }
        if let Some(scope) = &request.scope {
            claims.insert("scope".into(), scope.clone().into());
        }
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + ttl).into());
        claims.extend(request.claims.clone());
        MintResponse {
            access_token: self.sign(&Value::Object(claims)),
            token_type: "Bearer".into(),
            expires_in: ttl,
        }
    }

    /// The HTTP routes of the issuer.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/.well-known/jwks.json", get(jwks))
            .route("/token", post(token))
            .with_state(self)
    }
}

async fn discovery(State(issuer): State<Arc<DevIssuer>>) -> Json<Value> {
    let base = issuer.issuer.trim_end_matches('/');
    Json(json!({
        "issuer": issuer.issuer,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "token_endpoint": format!("{base}/token"),
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
}

async fn jwks(State(issuer): State<Arc<DevIssuer>>) -> Json<Value> {
    Json(issuer.jwks())
}

async fn token(
    State(issuer): State<Arc<DevIssuer>>,
    Json(request): Json<MintRequest>,
) -> Json<MintResponse> {
    Json(issuer.mint(&request))
}

/// Binds `addr` and serves a freshly generated dev issuer whose `iss` is
/// `http://ADDR` (`127.0.0.1` when bound to an unspecified address), until
/// `shutdown` resolves.
pub async fn start(
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(Arc<DevIssuer>, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let mut local = listener.local_addr()?;
    if local.ip().is_unspecified() {
        local.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let issuer =
        Arc::new(DevIssuer::generate(format!("http://{local}")).map_err(std::io::Error::other)?);
    tracing::warn!(
        issuer = issuer.issuer(),
        "dev issuer running: it signs any token it is asked for; never use it in production"
    );
    let router = issuer.clone().router();
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(%error, "dev issuer stopped");
        }
    });
    Ok((issuer, task))
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
