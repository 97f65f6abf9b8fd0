//! `scopegate test`: policy tests, offline. A `TokenPolicyTest` document
//! (next to the policies, or anywhere among the paths given) lists cases:
//! a request, the claims of its token, and the expected answer. Each
//! issuer of the loaded policies gets an in-memory key; tokens are signed
//! with it on the fly and the whole Check runs as in production (the same
//! verification, rules, conditions and response), only the keys are local.
//!
//! ```yaml
//! apiVersion: scopegate.dev/v1alpha1
//! kind: TokenPolicyTest
//! metadata: {name: orders}
//! spec:
//!   cases:
//!     - name: a reader lists orders
//!       request: {host: orders.example.com, method: GET, path: /orders}
//!       claims: {sub: user-1, scope: "read:orders"}
//!       expect: {decision: allow, headers: {x-user-id: user-1}}
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, attribute_context,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::authz::{CheckService, TokenCache};
use crate::jwks::{JwksCache, JwksSource, KeySet};
use crate::policy::files::{self, FileError, LoadedPolicy};
use crate::policy::{Candidate, PolicySnapshot, SnapshotHandle};
use crate::token::{Algorithm, encode_compact, unix_now};

/// A `TokenPolicyTest` document.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TestDocument {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: TestMetadata,
    spec: TestSpec,
}

#[derive(Debug, Deserialize)]
struct TestMetadata {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestSpec {
    cases: Vec<TestCase>,
}

/// One case: a request, its token's claims (none: no token) and what
/// scopegate must answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    request: TestRequest,
    /// Claims of the token sent as `Authorization: Bearer`. `iss` (the
    /// policy's first issuer), `aud` (its first audience), `iat` and `exp`
    /// (now + 5 minutes) are filled in unless given.
    #[serde(default)]
    claims: Option<Map<String, Value>>,
    expect: Expectation,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestRequest {
    host: String,
    #[serde(default = "default_method")]
    method: String,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn default_method() -> String {
    "GET".into()
}

fn default_path() -> String {
    "/".into()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Expectation {
    decision: ExpectedDecision,
    /// The HTTP status (default: 200 for allow).
    #[serde(default)]
    status: Option<u16>,
    /// The deny reason (`insufficient_scope`, `condition`, …).
    #[serde(default)]
    reason: Option<String>,
    /// Headers the allow must set, with their values.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Headers the allow must remove.
    #[serde(default)]
    removed: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ExpectedDecision {
    Allow,
    Deny,
}

/// The outcome of a run: one line per case, and the counts.
#[derive(Debug, Default)]
pub struct TestReport {
    /// `ok   …` / `FAIL …` lines, in file order.
    pub lines: Vec<String>,
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
    /// Policies loaded from the paths (the cases run against these only).
    pub policies: usize,
}

/// Loads the policies and the tests under `paths` and runs every case.
/// Files that do not load are reported like `scopegate validate` does.
pub async fn run(paths: &[PathBuf]) -> Result<TestReport, Vec<FileError>> {
    let policies = files::load(paths)?;
    let tests = load_tests(paths)?;
    let issuers = TestIssuers::for_policies(&policies)
        .map_err(|message| vec![files::file_error(Path::new("-"), 0, "keys", message)])?;
    let handle = SnapshotHandle::default();
    let candidates = policies
        .iter()
        .map(|p| Candidate::new(p.policy.id.clone(), Ok(p.policy.clone())))
        .collect();
    handle.publish(PolicySnapshot::build_with(candidates, |source| {
        issuers.cache_for(source)
    }));
    let service = CheckService::new(handle.clone(), Arc::new(TokenCache::disabled()));
    let mut report = TestReport {
        policies: policies.len(),
        ..TestReport::default()
    };
    for (file, document) in tests {
        for case in &document.spec.cases {
            let label = format!(
                "{}: {}: {}",
                file.display(),
                document.metadata.name,
                case.name
            );
            match run_case(&service, &handle, &issuers, case).await {
                Ok(()) => {
                    report.passed += 1;
                    report.lines.push(format!("ok   {label}"));
                }
                Err(why) => {
                    report.failed += 1;
                    report.lines.push(format!("FAIL {label}: {why}"));
                }
            }
        }
    }
    Ok(report)
}

/// Every `TokenPolicyTest` document under `paths`.
fn load_tests(paths: &[PathBuf]) -> Result<Vec<(PathBuf, TestDocument)>, Vec<FileError>> {
    let mut errors = Vec::new();
    let mut tests = Vec::new();
    for file in files::expand(paths, &mut errors) {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                errors.push(files::file_error(&file, 0, "file", e.to_string()));
                continue;
            }
        };
        for (index, document) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let Ok(value) = serde_yaml_ng::Value::deserialize(document) else {
                break; // `files::load` already reported the syntax error
            };
            if value.get("kind").and_then(serde_yaml_ng::Value::as_str) != Some(files::TEST_KIND) {
                continue;
            }
            match serde_path_to_error::deserialize::<_, TestDocument>(value) {
                Ok(test) => tests.push((file.clone(), test)),
                Err(e) => errors.push(files::file_error(
                    &file,
                    index + 1,
                    e.path().to_string(),
                    e.into_inner().to_string(),
                )),
            }
        }
    }
    if errors.is_empty() {
        Ok(tests)
    } else {
        Err(errors)
    }
}

async fn run_case(
    service: &CheckService,
    handle: &SnapshotHandle,
    issuers: &TestIssuers,
    case: &TestCase,
) -> Result<(), String> {
    let mut headers: HashMap<String, String> = case
        .request
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    if let Some(claims) = &case.claims {
        let token = token_for(handle, issuers, &case.request.host, claims)?;
        headers.insert("authorization".into(), format!("Bearer {token}"));
    }
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: case.request.method.clone(),
                    host: case.request.host.clone(),
                    path: case.request.path.clone(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    compare(&case.expect, &service.check_request(&request).await)
}

/// The token of a case: `claims` completed from the policy serving `host`
/// (its first issuer and audience; `iat`, `exp`) and signed with the key of
/// the issuer `iss` names. An `iss` no policy lists is signed with the
/// serving policy's key, so the Check sees exactly a wrong issuer
/// (`wrong_issuer`); a host no policy serves still gets a signed token
/// (`unknown_host`).
fn token_for(
    handle: &SnapshotHandle,
    issuers: &TestIssuers,
    host: &str,
    claims: &Map<String, Value>,
) -> Result<String, String> {
    let snapshot = handle.load();
    let served = snapshot
        .lookup(&crate::policy::normalize_host(host))
        .map(|served| &served.policy.issuers[0]);
    let mut claims = claims.clone();
    let now = unix_now();
    if let Some(issuer) = served {
        claims
            .entry("iss")
            .or_insert_with(|| json!(&*issuer.rules.issuer));
        claims
            .entry("aud")
            .or_insert_with(|| json!(&*issuer.rules.audiences[0]));
    }
    claims.entry("iat").or_insert_with(|| json!(now));
    claims.entry("exp").or_insert_with(|| json!(now + 300));
    let iss = claims.get("iss").and_then(Value::as_str);
    let signer = iss
        .and_then(|iss| issuers.signer_for_issuer(iss))
        .or_else(|| served.and_then(|issuer| issuers.signer_for_source(&issuer.jwks_source)))
        .map_or_else(|| issuers.stranger(), Ok)?;
    Ok(signer.sign(&Value::Object(claims)))
}

/// What the Check answered against what the case expects.
fn compare(expect: &Expectation, response: &CheckResponse) -> Result<(), String> {
    let reason = response
        .status
        .as_ref()
        .map(|s| s.message.clone())
        .unwrap_or_default();
    let (decision, status) = match &response.http_response {
        Some(HttpResponse::OkResponse(_)) => (ExpectedDecision::Allow, 200),
        Some(HttpResponse::DeniedResponse(denied)) => (
            ExpectedDecision::Deny,
            denied.status.as_ref().map_or(403, |s| s.code as u16),
        ),
        _ => return Err("the Check gave no HTTP answer".into()),
    };
    let got = match decision {
        ExpectedDecision::Allow => format!("allow {status}"),
        ExpectedDecision::Deny => format!("deny {status} ({reason})"),
    };
    let status_matches = expect.status.is_none_or(|expected| expected == status);
    let reason_matches = expect
        .reason
        .as_ref()
        .is_none_or(|expected| *expected == reason);
    if decision != expect.decision || !status_matches || !reason_matches {
        let wanted = format!(
            "{}{}{}",
            match expect.decision {
                ExpectedDecision::Allow => "allow",
                ExpectedDecision::Deny => "deny",
            },
            expect.status.map(|s| format!(" {s}")).unwrap_or_default(),
            expect
                .reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
        return Err(format!("expected {wanted}, got {got}"));
    }
    if let Some(HttpResponse::OkResponse(ok)) = &response.http_response {
        for (name, value) in &expect.headers {
            let set = ok
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == *name)
                .map(|h| h.value.as_str());
            if set != Some(value.as_str()) {
                return Err(format!("expected header {name}: {value}, got {set:?}"));
            }
        }
        for name in &expect.removed {
            if !ok.headers_to_remove.contains(name) {
                return Err(format!("expected header {name} removed"));
            }
        }
    }
    Ok(())
}

/// An in-memory signing key per key source of the loaded policies, for
/// the first algorithm its issuer accepts.
struct TestIssuers {
    by_source: HashMap<JwksSource, (Arc<TestSigner>, Arc<JwksCache>)>,
    by_issuer: HashMap<String, Arc<TestSigner>>,
    stranger: OnceLock<TestSigner>,
}

impl TestIssuers {
    fn for_policies(policies: &[LoadedPolicy]) -> Result<Self, String> {
        let mut issuers = TestIssuers {
            by_source: HashMap::new(),
            by_issuer: HashMap::new(),
            stranger: OnceLock::new(),
        };
        for issuer in policies.iter().flat_map(|p| p.policy.issuers.iter()) {
            let source = issuer.jwks_source.clone();
            if !issuers.by_source.contains_key(&source) {
                let algorithm = issuer
                    .rules
                    .algorithms
                    .iter()
                    .next()
                    .ok_or("an issuer accepts no algorithm")?;
                let signer = Arc::new(TestSigner::generate(algorithm)?);
                let keys =
                    KeySet::from_json(json!({"keys": [signer.jwk()]}).to_string().as_bytes())
                        .map_err(|e| format!("the test key does not load: {e}"))?;
                let cache = JwksCache::fixed(source.clone(), keys);
                issuers.by_source.insert(source.clone(), (signer, cache));
            }
            let signer = issuers.by_source[&source].0.clone();
            issuers
                .by_issuer
                .entry(issuer.rules.issuer.to_string())
                .or_insert(signer);
        }
        Ok(issuers)
    }

    fn cache_for(&self, source: &JwksSource) -> Arc<JwksCache> {
        self.by_source[source].1.clone()
    }

    fn signer_for_issuer(&self, iss: &str) -> Option<&TestSigner> {
        self.by_issuer.get(iss).map(|s| &**s)
    }

    fn signer_for_source(&self, source: &JwksSource) -> Option<&TestSigner> {
        self.by_source.get(source).map(|(signer, _)| &**signer)
    }

    /// A key no policy trusts, made on first use: it signs the tokens of
    /// cases whose host no policy serves.
    fn stranger(&self) -> Result<&TestSigner, String> {
        if let Some(signer) = self.stranger.get() {
            return Ok(signer);
        }
        let signer = TestSigner::generate(Algorithm::RS256)?;
        Ok(self.stranger.get_or_init(|| signer))
    }
}

/// An in-memory issuer key.
enum TestSigner {
    Rsa(aws_lc_rs::rsa::KeyPair, Algorithm),
    Ec(signature::EcdsaKeyPair, Algorithm, &'static str, usize),
    Ed25519(signature::Ed25519KeyPair),
}

const TEST_KID: &str = "scopegate-test";

impl TestSigner {
    fn generate(algorithm: Algorithm) -> Result<Self, String> {
        let failed = |_| format!("cannot generate a {algorithm} test key");
        let ec = |alg: &'static signature::EcdsaSigningAlgorithm, crv, len| {
            signature::EcdsaKeyPair::generate(alg)
                .map(|pair| TestSigner::Ec(pair, algorithm, crv, len))
                .map_err(failed)
        };
        match algorithm {
            Algorithm::ES256 => ec(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32),
            Algorithm::ES384 => ec(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48),
            Algorithm::ES512 => ec(&signature::ECDSA_P521_SHA512_FIXED_SIGNING, "P-521", 66),
            Algorithm::EdDSA => signature::Ed25519KeyPair::generate()
                .map(TestSigner::Ed25519)
                .map_err(failed),
            rsa => aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map(|pair| TestSigner::Rsa(pair, rsa))
                .map_err(failed),
        }
    }

    fn jwk(&self) -> Value {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        match self {
            TestSigner::Rsa(pair, _) => {
                let public = pair.public_key();
                json!({"kty": "RSA", "kid": TEST_KID,
                    "n": b64(public.modulus().big_endian_without_leading_zero()),
                    "e": b64(public.exponent().big_endian_without_leading_zero())})
            }
            TestSigner::Ec(pair, _, crv, len) => {
                let point = pair.public_key().as_ref();
                json!({"kty": "EC", "kid": TEST_KID, "crv": crv,
                    "x": b64(&point[1..1 + len]), "y": b64(&point[1 + len..1 + 2 * len])})
            }
            TestSigner::Ed25519(pair) => {
                json!({"kty": "OKP", "kid": TEST_KID, "crv": "Ed25519", "x": b64(pair.public_key().as_ref())})
            }
        }
    }

    fn algorithm(&self) -> Algorithm {
        match self {
            TestSigner::Rsa(_, algorithm) | TestSigner::Ec(_, algorithm, _, _) => *algorithm,
            TestSigner::Ed25519(_) => Algorithm::EdDSA,
        }
    }

    fn signature(&self, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            TestSigner::Rsa(pair, algorithm) => {
                let padding: &dyn signature::RsaEncoding = match algorithm {
                    Algorithm::RS384 => &signature::RSA_PKCS1_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_SHA256,
                    Algorithm::PS384 => &signature::RSA_PSS_SHA384,
                    Algorithm::PS512 => &signature::RSA_PSS_SHA512,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(padding, &rng, input, &mut signature)
                    .expect("RSA signing with a fresh key cannot fail");
                signature
            }
            TestSigner::Ec(pair, ..) => pair
                .sign(&rng, input)
                .expect("ECDSA signing with a fresh key cannot fail")
                .as_ref()
                .to_vec(),
            TestSigner::Ed25519(pair) => pair.sign(input).as_ref().to_vec(),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": self.algorithm().as_str(), "typ": "at+jwt", "kid": TEST_KID});
        encode_compact(&header, claims, |input| self.signature(input))
    }
}
