//! Test fixtures shared by the integration tests: real RSA/EC/Ed25519 keys
//! that sign real tokens, a real JWKS HTTP server on loopback, and a real
//! scopegate server reached through a real tonic client.
#![allow(dead_code)]

pub mod envoy;
pub mod load;
pub mod mcp;
pub mod process;
pub mod redis;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::KeyPair as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
    attribute_context,
};
use scopegate::config::{PolicySource, ServeConfig};
use scopegate::jwks::JwksSettings;
use serde_json::{Value, json};

pub const AUDIENCE: &str = "https://orders.example.com/api";
pub const HOST: &str = "orders.example.com";

/// An RSA-2048 signing key with a `kid`.
pub struct RsaKey {
    pub kid: String,
    pair: aws_lc_rs::rsa::KeyPair,
}

impl RsaKey {
    pub fn generate(kid: &str) -> Self {
        RsaKey {
            kid: kid.to_string(),
            pair: aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap(),
        }
    }

    /// The public JWK.
    pub fn jwk(&self) -> Value {
        let public = self.pair.public_key();
        json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero()),
        })
    }

    /// The DER `RSAPublicKey` bytes, as an HS256-confusion attacker would use them.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// Signs with RS256 (or another RSA `alg` given in the header) and this key's `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({"alg": "RS256", "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }

    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let padding: &'static dyn aws_lc_rs::signature::RsaEncoding = match header["alg"].as_str() {
            Some("PS256") => &aws_lc_rs::signature::RSA_PSS_SHA256,
            Some("RS384") => &aws_lc_rs::signature::RSA_PKCS1_SHA384,
            _ => &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        };
        scopegate::token::encode_compact(header, claims, |input| self.signature(padding, input))
    }

    /// The RS256 signature of exactly `input`.
    pub fn rs256_signature(&self, input: &[u8]) -> Vec<u8> {
        self.signature(&aws_lc_rs::signature::RSA_PKCS1_SHA256, input)
    }

    fn signature(
        &self,
        padding: &'static dyn aws_lc_rs::signature::RsaEncoding,
        input: &[u8],
    ) -> Vec<u8> {
        let mut sig = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(padding, &SystemRandom::new(), input, &mut sig)
            .unwrap();
        sig
    }
}

/// An ECDSA key: P-256 (ES256) by default, or P-521 (ES512).
pub struct EcKey {
    pub kid: String,
    pair: aws_lc_rs::signature::EcdsaKeyPair,
    /// `crv`, `alg` and the coordinate length in bytes.
    curve: (&'static str, &'static str, usize),
}

impl EcKey {
    pub fn generate(kid: &str) -> Self {
        Self::generate_on(
            kid,
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            ("P-256", "ES256", 32),
        )
    }

    /// A P-521 key that signs ES512.
    pub fn generate_p521(kid: &str) -> Self {
        Self::generate_on(
            kid,
            &aws_lc_rs::signature::ECDSA_P521_SHA512_FIXED_SIGNING,
            ("P-521", "ES512", 66),
        )
    }

    fn generate_on(
        kid: &str,
        alg: &'static aws_lc_rs::signature::EcdsaSigningAlgorithm,
        curve: (&'static str, &'static str, usize),
    ) -> Self {
        EcKey {
            kid: kid.to_string(),
            pair: aws_lc_rs::signature::EcdsaKeyPair::generate(alg).unwrap(),
            curve,
        }
    }

    pub fn jwk(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        let (crv, _, len) = self.curve;
        json!({"kty": "EC", "crv": crv, "kid": self.kid, "x": b64(&point[1..1 + len]), "y": b64(&point[1 + len..1 + 2 * len])})
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(&json!({"alg": self.curve.1, "kid": self.kid}), claims)
    }

    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        scopegate::token::encode_compact(header, claims, |input| {
            self.pair
                .sign(&SystemRandom::new(), input)
                .unwrap()
                .as_ref()
                .to_vec()
        })
    }
}

impl EcKey {
    /// The public JWK as a DPoP proof carries it (no `kid`).
    pub fn dpop_jwk(&self) -> Value {
        let mut jwk = self.jwk();
        jwk.as_object_mut().unwrap().remove("kid");
        jwk
    }

    /// An ES256 DPoP proof (RFC 9449 §4.2) for `htm` `htu` made at `iat`,
    /// with `ath` when an access token is given.
    pub fn dpop_proof(
        &self,
        htm: &str,
        htu: &str,
        jti: &str,
        iat: u64,
        access_token: Option<&str>,
    ) -> String {
        self.dpop_proof_with_nonce(htm, htu, jti, iat, access_token, None)
    }

    /// [`Self::dpop_proof`] carrying the server `nonce` when given
    /// (RFC 9449 §8).
    pub fn dpop_proof_with_nonce(
        &self,
        htm: &str,
        htu: &str,
        jti: &str,
        iat: u64,
        access_token: Option<&str>,
        nonce: Option<&str>,
    ) -> String {
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.dpop_jwk()});
        let mut claims = json!({"jti": jti, "htm": htm, "htu": htu, "iat": iat});
        if let Some(token) = access_token {
            claims["ath"] = json!(scopegate::pop::sha256_base64url(token.as_bytes()));
        }
        if let Some(nonce) = nonce {
            claims["nonce"] = json!(nonce);
        }
        self.sign_with_header(&header, &claims)
    }
}

/// An Ed25519 key.
pub struct EdKey {
    pub kid: String,
    pair: aws_lc_rs::signature::Ed25519KeyPair,
}

impl EdKey {
    pub fn generate(kid: &str) -> Self {
        EdKey {
            kid: kid.to_string(),
            pair: aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap(),
        }
    }

    pub fn jwk(&self) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "kid": self.kid, "x": b64(self.pair.public_key().as_ref())})
    }

    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "EdDSA", "kid": self.kid});
        scopegate::token::encode_compact(&header, claims, |input| {
            self.pair.sign(input).as_ref().to_vec()
        })
    }
}

/// Keys generated once per test binary (RSA key generation is slow).
pub static KEY_A: LazyLock<RsaKey> = LazyLock::new(|| RsaKey::generate("key-a"));
pub static KEY_B: LazyLock<RsaKey> = LazyLock::new(|| RsaKey::generate("key-b"));
/// An ECDSA P-256 key (signing is ~50× faster than RSA: for floods).
pub static EC: LazyLock<EcKey> = LazyLock::new(|| EcKey::generate("ec-1"));
/// Not in any JWKS: signs tokens that must fail verification.
pub static ROGUE: LazyLock<RsaKey> = LazyLock::new(|| RsaKey::generate("key-a"));

/// A token with `alg: HS256/384/512` and `kid: key-a`, HMAC-signed with
/// `secret` — the algorithm-confusion forgery (a public key used as secret).
pub fn hmac_forged(alg: &str, secret: &[u8], claims: &Value) -> String {
    let algorithm = match alg {
        "HS256" => aws_lc_rs::hmac::HMAC_SHA256,
        "HS384" => aws_lc_rs::hmac::HMAC_SHA384,
        _ => aws_lc_rs::hmac::HMAC_SHA512,
    };
    let key = aws_lc_rs::hmac::Key::new(algorithm, secret);
    scopegate::token::encode_compact(&json!({"alg": alg, "kid": "key-a"}), claims, |input| {
        aws_lc_rs::hmac::sign(&key, input).as_ref().to_vec()
    })
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now() -> u64 {
    scopegate::token::unix_now()
}

/// Claims of a good token for [`HOST`] issued by `issuer`.
pub fn claims(issuer: &str) -> Value {
    json!({
        "iss": issuer,
        "sub": "auth0|user-1",
        "azp": "agent-client",
        "aud": [AUDIENCE, format!("{issuer}userinfo")],
        "scope": "openid read:orders",
        "iat": now(),
        "exp": now() + 600,
    })
}

/// Issue 20, finding 2: eight nested `.all()` over ten-element lists, 244
/// characters (the CRD allows 2,048) that took ~26 s per evaluation.
pub fn nested_alls() -> String {
    let ten = "[0,1,2,3,4,5,6,7,8,9]";
    (0..8).fold("true".to_string(), |body, i| {
        format!("{ten}.all(x{i}, {body})")
    })
}

/// `claims` with a claim `list` of as many `0`s as a rule's conditions
/// evaluate on ([`scopegate::policy::cost::MAX_CLAIMS_ITEMS`] entries with the
/// other claims), signed by `key`: the largest input a condition can iterate
/// over.
pub fn largest_condition_token(key: &RsaKey, claims: &Value, list: &str) -> String {
    let limit = scopegate::policy::cost::MAX_CLAIMS_ITEMS as usize;
    // `aud` is an array, and `sub`, `iss`, … are entries too.
    let others = claims.as_object().map_or(0, |c| c.len()) + 2;
    let mut claims = claims.clone();
    claims[list] = Value::Array(vec![json!(0); limit - others - 1]);
    key.sign(&claims)
}

/// What the JWKS server answers.
#[derive(Clone)]
pub enum JwksReply {
    Keys(Value),
    /// The keys, after a delay (a slow issuer).
    SlowKeys(Value, Duration),
    Status(StatusCode),
    Body(&'static str),
}

struct JwksShared {
    reply: Mutex<JwksReply>,
    fetches: AtomicUsize,
    issuer: Mutex<String>,
}

/// A real JWKS + OIDC discovery server on loopback.
pub struct JwksServer {
    pub addr: SocketAddr,
    shared: Arc<JwksShared>,
    serving: Mutex<Option<Serving>>,
}

/// The accept loop of a started [`JwksServer`].
struct Serving {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    pub async fn start(keys: Vec<Value>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(JwksShared {
            reply: Mutex::new(JwksReply::Keys(json!({"keys": keys}))),
            fetches: AtomicUsize::new(0),
            issuer: Mutex::new(format!("http://{addr}/")),
        });
        let serving = Self::serve(listener, shared.clone());
        JwksServer {
            addr,
            shared,
            serving: Mutex::new(Some(serving)),
        }
    }

    fn serve(listener: tokio::net::TcpListener, shared: Arc<JwksShared>) -> Serving {
        let router = Router::new()
            .route("/.well-known/jwks.json", get(serve_jwks))
            .route("/.well-known/openid-configuration", get(serve_discovery))
            .with_state(shared);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Serving { stop, task }
    }

    /// `http://ADDR/` — the issuer URL (with Auth0's trailing slash).
    pub fn issuer(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn jwks_uri(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    pub fn set_keys(&self, keys: Vec<Value>) {
        *self.shared.reply.lock().unwrap() = JwksReply::Keys(json!({"keys": keys}));
    }

    pub fn set_reply(&self, reply: JwksReply) {
        *self.shared.reply.lock().unwrap() = reply;
    }

    /// How many times `/.well-known/jwks.json` was requested.
    pub fn fetches(&self) -> usize {
        self.shared.fetches.load(Ordering::SeqCst)
    }

    /// Waits until the JWKS has been fetched more than `count` times.
    pub async fn wait_for_fetches_above(&self, count: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.fetches() <= count {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the JWKS was refetched");
    }

    /// Stops the server: open connections are closed and new ones refused
    /// until [`JwksServer::restart`].
    pub async fn stop(&self) {
        let serving = self.serving.lock().unwrap().take();
        if let Some(Serving { stop, task }) = serving {
            let _ = stop.send(());
            task.await.unwrap();
        }
    }

    /// Serves again on the same address after [`JwksServer::stop`].
    pub async fn restart(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        let serving = Self::serve(listener, self.shared.clone());
        *self.serving.lock().unwrap() = Some(serving);
    }
}

async fn serve_jwks(State(shared): State<Arc<JwksShared>>) -> Response {
    shared.fetches.fetch_add(1, Ordering::SeqCst);
    let reply = shared.reply.lock().unwrap().clone();
    match reply {
        JwksReply::Keys(doc) => axum::Json(doc).into_response(),
        JwksReply::SlowKeys(doc, delay) => {
            tokio::time::sleep(delay).await;
            axum::Json(doc).into_response()
        }
        JwksReply::Status(status) => status.into_response(),
        JwksReply::Body(body) => body.into_response(),
    }
}

async fn serve_discovery(State(shared): State<Arc<JwksShared>>) -> Response {
    let issuer = shared.issuer.lock().unwrap().clone();
    axum::Json(json!({"issuer": issuer, "jwks_uri": format!("{issuer}.well-known/jwks.json")}))
        .into_response()
}

/// JWKS settings fast enough for tests: refresh every 200 ms, refetch on an
/// unknown kid at most every 100 ms.
pub fn fast_jwks() -> JwksSettings {
    JwksSettings {
        refresh_interval: Duration::from_millis(200),
        min_refresh_interval: Duration::from_millis(100),
        max_refresh_interval: Duration::from_secs(60),
        min_refetch_interval: Duration::from_millis(100),
        fetch_timeout: Duration::from_secs(2),
        max_response_bytes: 1024 * 1024,
        extra_roots: Vec::new(),
    }
}

/// A policy document for [`HOST`] with the given issuer and extra spec YAML.
pub fn policy_yaml(name: &str, issuer: &str, jwks_uri: &str, spec_extra: &str) -> String {
    format!(
        r#"apiVersion: scopegate.dev/v1alpha1
kind: TokenPolicy
metadata: {{name: {name}, namespace: test}}
spec:
  hosts: ["{HOST}", "*.orders.internal"]
  issuer:
    url: "{issuer}"
    jwksUri: "{jwks_uri}"
    audiences: ["{AUDIENCE}"]
    algorithms: ["RS256", "ES256", "EdDSA"]
    clockSkewSeconds: 60
  claimHeaders:
    - {{header: x-user-id, claim: sub}}
    - {{header: x-agent-client-id, claim: azp}}
    - {{header: x-user-email, claim: "https://example.com/email"}}
{spec_extra}"#
    )
}

/// A policy document (namespace `test`) for `host` alone, whose keys come
/// from `issuer` (by discovery unless `jwks_uri` is given), with these rules
/// (YAML flow sequence).
pub fn host_policy_yaml(
    name: &str,
    host: &str,
    issuer: &str,
    jwks_uri: Option<&str>,
    rules: &str,
) -> String {
    let jwks_uri = jwks_uri.map_or(String::new(), |uri| format!("\n    jwksUri: \"{uri}\""));
    format!(
        r#"apiVersion: scopegate.dev/v1alpha1
kind: TokenPolicy
metadata: {{name: {name}, namespace: test}}
spec:
  hosts: ["{host}"]
  issuer:
    url: "{issuer}"{jwks_uri}
    audiences: ["{AUDIENCE}"]
  rules: {rules}
"#
    )
}

/// `count` policies for hosts `api-0.example.com`, `api-1.example.com`, …
/// that trust one issuer, each requiring `scopes` scopes (`scope:0`, …) on
/// `GET /orders/*`: the policy set of the benchmarks.
pub fn numbered_policies_yaml(count: usize, issuer: &str, jwks_uri: &str, scopes: usize) -> String {
    let required = (0..scopes)
        .map(|i| format!("\"scope:{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut yaml = String::new();
    for i in 0..count {
        yaml.push_str(&format!(
            r#"---
apiVersion: scopegate.dev/v1alpha1
kind: TokenPolicy
metadata: {{name: api-{i}, namespace: bench}}
spec:
  hosts: ["{host}"]
  issuer:
    url: "{issuer}"
    jwksUri: "{jwks_uri}"
    audiences: ["{AUDIENCE}"]
    algorithms: ["RS256", "ES256", "EdDSA"]
  rules:
    - paths: ["/healthz"]
      anonymous: true
    - methods: ["GET"]
      paths: ["/orders", "/orders/*"]
      requireScopes: [{required}]
  claimHeaders:
    - {{header: x-user-id, claim: sub}}
    - {{header: x-agent-client-id, claim: azp}}
"#,
            host = numbered_host(i),
        ));
    }
    yaml
}

/// The host of policy `index` in [`numbered_policies_yaml`].
pub fn numbered_host(index: usize) -> String {
    format!("api-{index}.example.com")
}

/// Claims of a token for the [`numbered_policies_yaml`] policies with
/// `scopes` scopes, valid for an hour.
pub fn numbered_claims(issuer: &str, scopes: usize) -> Value {
    let scope = (0..scopes)
        .map(|i| format!("scope:{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    json!({
        "iss": issuer, "sub": "auth0|user-1", "azp": "agent-client",
        "aud": [AUDIENCE, format!("{issuer}userinfo")],
        "scope": scope, "iat": now(), "exp": now() + 3600,
    })
}

/// The standard rules used by most tests.
pub const STANDARD_RULES: &str = r#"  rules:
    - paths: ["/healthz"]
      anonymous: true
    - methods: ["GET"]
      paths: ["/orders", "/orders/*"]
      requireScopes: ["read:orders"]
    - methods: ["POST"]
      paths: ["/orders"]
      requireScopes: ["create:orders"]
      allowedClients: ["agent-client"]
    - methods: ["DELETE"]
      paths: ["/orders/**"]
      requireScopes: ["delete:orders", "admin:orders"]
"#;

/// A JWKS server with `keys`, and scopegate serving the standard policy
/// (`test/orders`, [`STANDARD_RULES`]) for that issuer.
pub async fn standard_with(keys: Vec<Value>) -> (JwksServer, Scopegate) {
    let jwks = JwksServer::start(keys).await;
    let policy = policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), STANDARD_RULES);
    let scopegate = Scopegate::start(&policy).await;
    (jwks, scopegate)
}

/// A running scopegate (in-process, real sockets) and a tonic client.
pub struct Scopegate {
    pub running: scopegate::serve::Running,
    pub client: AuthorizationClient<tonic::transport::Channel>,
    pub dir: tempfile::TempDir,
}

impl Scopegate {
    /// Starts scopegate on the given policy file contents.
    pub async fn start(policies: &str) -> Self {
        Self::start_with(policies, fast_jwks()).await
    }

    pub async fn start_with(policies: &str, jwks: JwksSettings) -> Self {
        Self::start_configured(policies, |config| config.jwks = jwks).await
    }

    /// Starts scopegate with test defaults (loopback ports, [`fast_jwks`]),
    /// then whatever `configure` changes.
    pub async fn start_configured(
        policies: &str,
        configure: impl FnOnce(&mut ServeConfig),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policies.yaml"), policies).unwrap();
        let mut config = test_config(PolicySource::Files(vec![dir.path().to_path_buf()]));
        configure(&mut config);
        Self::start_config(config, dir).await
    }

    /// Starts scopegate with a full configuration; `dir` lives as long as it.
    pub async fn start_config(config: ServeConfig, dir: tempfile::TempDir) -> Self {
        let running = scopegate::serve::start(config)
            .await
            .expect("scopegate starts");
        let client = AuthorizationClient::connect(format!("http://{}", running.grpc_addr()))
            .await
            .unwrap();
        Scopegate {
            running,
            client,
            dir,
        }
    }

    pub fn policy_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends a Check for `method path` on [`HOST`] with these headers.
    pub async fn check(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Checked {
        self.check_host(HOST, method, path, headers).await
    }

    pub async fn check_host(
        &self,
        host: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Checked {
        self.send(check_request(host, method, path, headers, HashMap::new()))
            .await
    }

    /// A Check with `Authorization: Bearer <token>`.
    pub async fn check_token(&self, method: &str, path: &str, token: &str) -> Checked {
        let auth = format!("Bearer {token}");
        self.check(method, path, &[("authorization", &auth)]).await
    }

    pub async fn send(&self, request: CheckRequest) -> Checked {
        let response = self
            .client
            .clone()
            .check(request)
            .await
            .expect("Check succeeds at the gRPC level");
        Checked(response.into_inner())
    }

    /// JWKS fetch attempts scopegate has completed (keys and errors recorded).
    pub fn jwks_attempts(&self) -> u64 {
        self.running
            .registry()
            .states()
            .iter()
            .map(|s| s.fetch_attempts)
            .sum()
    }

    /// Waits until scopegate has completed more than `count` JWKS fetches.
    pub async fn wait_for_jwks_attempts_above(&self, count: u64) {
        eventually("scopegate completed another JWKS fetch", || async {
            self.jwks_attempts() > count
        })
        .await;
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.admin_addr())
    }
}

/// A Check for `GET /orders` on [`HOST`] with `Authorization: Bearer <token>`.
pub fn bearer_request(token: &str) -> CheckRequest {
    let auth = format!("Bearer {token}");
    check_request(
        HOST,
        "GET",
        "/orders",
        &[("authorization", &auth)],
        HashMap::new(),
    )
}

/// The HTTP status of the answer to [`bearer_request`] (200 for an allow).
pub async fn bearer_status(
    mut client: AuthorizationClient<tonic::transport::Channel>,
    token: &str,
) -> i32 {
    let answer = client.check(bearer_request(token)).await.unwrap();
    Checked(answer.into_inner()).http_status()
}

/// A configuration on loopback ephemeral ports with fast JWKS settings.
pub fn test_config(policies: PolicySource) -> ServeConfig {
    let mut config = ServeConfig::with_policy_files(Vec::new());
    config.policies = policies;
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.jwks = fast_jwks();
    config.shutdown_grace = Duration::from_secs(2);
    // Ready as soon as policies load; tests that need keys wait for them.
    config.startup_key_wait = Duration::ZERO;
    config
}

pub fn check_request(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    context_extensions: HashMap<String, String>,
) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: method.into(),
                    host: host.into(),
                    path: path.into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions,
            ..Default::default()
        }),
    }
}

/// The HTTP attributes of a request built by [`check_request`], to edit.
pub fn http_of(request: &mut CheckRequest) -> &mut attribute_context::HttpRequest {
    request
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .expect("check_request builds HTTP attributes")
}

/// A CheckRequest whose headers come only in the raw `header_map` (as
/// Envoy sends them with `encode_raw_headers`), repeated names kept.
pub fn check_request_raw(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> CheckRequest {
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
    let mut request = check_request(host, method, path, &[], HashMap::new());
    http_of(&mut request).header_map = Some(HeaderMap {
        headers: headers
            .iter()
            .map(|(key, value)| HeaderValue {
                key: key.to_string(),
                raw_value: value.as_bytes().to_vec(),
                ..Default::default()
            })
            .collect(),
    });
    request
}

/// Runs `tests/dpop/proof.mjs` (panva's `dpop` package, installed by
/// `.ci/install-tools.sh`) with `input` and returns its JSON answer: `jkt`,
/// `proofs` and `privateJwk` (pass it back to re-use the key).
pub fn panva_proofs(input: Value) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let modules = root.join(".tools/node/node_modules/dpop");
    assert!(
        modules.exists(),
        "{} not found: run .ci/install-tools.sh",
        modules.display()
    );
    let output = std::process::Command::new("node")
        .arg(root.join("tests/dpop/proof.mjs"))
        .arg(input.to_string())
        .output()
        .expect("node runs");
    assert!(
        output.status.success(),
        "proof.mjs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A CheckResponse with assertion helpers.
#[derive(Debug)]
pub struct Checked(pub CheckResponse);

impl Checked {
    pub fn grpc_code(&self) -> i32 {
        self.0.status.as_ref().map_or(-1, |s| s.code)
    }

    /// 200 for an allow, else the denied HTTP status.
    pub fn http_status(&self) -> i32 {
        match &self.0.http_response {
            Some(HttpResponse::OkResponse(_)) => 200,
            Some(HttpResponse::DeniedResponse(d)) => d.status.as_ref().map_or(0, |s| s.code),
            _ => 0,
        }
    }

    pub fn ok(&self) -> &OkHttpResponse {
        match &self.0.http_response {
            Some(HttpResponse::OkResponse(ok)) => ok,
            other => panic!("expected an allow, got {other:?}"),
        }
    }

    pub fn denied(&self) -> &DeniedHttpResponse {
        match &self.0.http_response {
            Some(HttpResponse::DeniedResponse(d)) => d,
            other => panic!("expected a deny, got {other:?}"),
        }
    }

    /// A header set on the upstream request (allow) or on the reply (deny).
    pub fn header(&self, name: &str) -> Option<String> {
        let headers = match &self.0.http_response {
            Some(HttpResponse::OkResponse(ok)) => &ok.headers,
            Some(HttpResponse::DeniedResponse(d)) => &d.headers,
            _ => return None,
        };
        headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == name)
            .map(|h| h.value.clone())
    }

    /// The stable reason label (the gRPC status message).
    pub fn reason(&self) -> String {
        self.0
            .status
            .as_ref()
            .map_or_else(String::new, |s| s.message.clone())
    }

    pub fn removed(&self) -> Vec<String> {
        self.ok().headers_to_remove.clone()
    }

    /// [`Self::removed`] without the other spellings of each claim header
    /// (`x_user_id` for `x-user-id`), which every allow removes too.
    pub fn removed_as_named(&self) -> Vec<String> {
        let mut removed = self.removed();
        removed.retain(|name| !name.contains('_'));
        removed
    }

    pub fn www_authenticate(&self) -> String {
        self.header("www-authenticate")
            .expect("a WWW-Authenticate header")
    }

    pub fn body(&self) -> Value {
        serde_json::from_str(&self.denied().body).expect("a JSON body")
    }

    pub fn metadata(&self, key: &str) -> Option<String> {
        let fields = &self.0.dynamic_metadata.as_ref()?.fields;
        match fields.get(key)?.kind.as_ref()? {
            envoy_types::pb::google::protobuf::value::Kind::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// Asserts a 401 `invalid_token` and returns its description.
    #[track_caller]
    pub fn assert_invalid_token(&self) -> String {
        assert_eq!(self.http_status(), 401, "{self:?}");
        assert_eq!(self.grpc_code(), 16);
        let challenge = self.www_authenticate();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        self.body()["error_description"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// Polls `condition` until it holds (at most 20 s); returns how long it took.
pub async fn eventually<F, Fut>(what: &str, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !condition().await {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    start.elapsed()
}

/// Path of an external tool: `$ENV_VAR`, else the place `.ci/install-tools.sh` puts it.
pub fn tool(env_var: &str, default_relative: &str) -> PathBuf {
    let path = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(default_relative));
    assert!(
        path.exists(),
        "{} not found: run .ci/install-tools.sh (or set {env_var})",
        path.display()
    );
    path
}

/// A free loopback port (bound and released; fine for child processes).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
