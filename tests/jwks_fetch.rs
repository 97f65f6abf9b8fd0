//! Where keys may be fetched from (DESIGN §4 "Keys over the network"),
//! against a real HTTPS issuer on loopback whose certificate a test CA
//! signed, trusted through `--jwks-ca-file` / `JwksSettings::extra_roots`.
//!
//! Every refused target here is refused before any connection: the tests
//! never send traffic off the machine (nor query DNS for a refused name),
//! and they assert that the error is the policy's refusal, not a DNS or
//! connect error.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use scopegate::jwks::{JwksRegistry, JwksSettings, JwksSource, JwksState, load_ca_file};
use serde_json::{Value, json};
use tokio_rustls::rustls;

use support::process::ScopegateProcess;
use support::{JwksServer, KEY_A, eventually, fast_jwks};

/// A marker that garbage responses carry; it must never show up in status,
/// `/readyz` or logs.
const MARKER: &str = "SECRET-MARKER-4f1c";

/// What the test issuer answers on one path.
#[derive(Clone)]
enum Reply {
    Json(String),
    Redirect(String),
}

/// A real HTTPS server on 127.0.0.1 with a certificate for `localhost`
/// signed by a fresh test CA; answers per path, counts requests per path.
struct TlsIssuer {
    addr: SocketAddr,
    replies: Arc<Mutex<HashMap<String, Reply>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            // A client that does not trust the CA aborts the handshake.
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A test CA (PEM) and a server configuration whose certificate, for
/// `localhost` and 127.0.0.1, the CA signed.
fn test_pki() -> (String, rustls::ServerConfig) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "scopegate test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();

    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let server_cert = server_params.signed_by(&server_key, &ca).unwrap();

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(server_key.serialize_der()).into(),
        )
        .unwrap();
    (ca.pem(), config)
}

impl TlsIssuer {
    async fn start() -> Self {
        let (ca_pem, config) = test_pki();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();

        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        };
        let replies: Arc<Mutex<HashMap<String, Reply>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (replies_for_server, hits_for_server) = (replies.clone(), hits.clone());
        let router = Router::new().fallback(move |uri: Uri| {
            let path = uri.path().to_string();
            *hits_for_server
                .lock()
                .unwrap()
                .entry(path.clone())
                .or_default() += 1;
            let reply = replies_for_server.lock().unwrap().get(&path).cloned();
            async move { answer(reply) }
        });
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        TlsIssuer {
            addr,
            replies,
            hits,
            ca_file,
            _dir: dir,
        }
    }

    /// `https://localhost:PORT{path}`.
    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    fn reply(&self, path: &str, reply: Reply) {
        self.replies.lock().unwrap().insert(path.to_string(), reply);
    }

    /// Serves an OpenID configuration for the issuer `https://localhost:PORT{prefix}`.
    fn discovery(&self, prefix: &str, jwks_uri: &str) -> String {
        let issuer = self.url(prefix);
        self.reply(
            &format!("{prefix}/.well-known/openid-configuration"),
            Reply::Json(json!({"issuer": issuer, "jwks_uri": jwks_uri}).to_string()),
        );
        issuer
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn answer(reply: Option<Reply>) -> Response {
    match reply {
        Some(Reply::Json(body)) => {
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Some(Reply::Redirect(location)) => {
            (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn jwks_body() -> String {
    json!({"keys": [KEY_A.jwk()]}).to_string()
}

fn discovery_source(issuer: &str) -> JwksSource {
    JwksSource::Discovery {
        issuer: issuer.to_string(),
        configuration: format!("{issuer}/.well-known/openid-configuration")
            .parse()
            .unwrap(),
    }
}

fn uri_source(uri: &str) -> JwksSource {
    JwksSource::Uri(uri.parse().unwrap())
}

/// A registry that trusts the test CA, read from its PEM file.
fn trusting(ca_file: &Path) -> JwksRegistry {
    JwksRegistry::new(JwksSettings {
        extra_roots: load_ca_file(ca_file).unwrap(),
        ..fast_jwks()
    })
}

/// The state of `source` after its first fetch.
async fn first_fetch(registry: &JwksRegistry, source: &JwksSource) -> JwksState {
    let cache = registry.cache(source);
    eventually("the first fetch finished", || async {
        cache.state().fetch_attempts > 0
    })
    .await;
    cache.state()
}

fn last_error(state: &JwksState) -> &str {
    state.last_error.as_deref().unwrap_or("")
}

#[tokio::test]
async fn keys_are_fetched_over_https_from_an_issuer_the_ca_file_trusts() {
    let issuer = TlsIssuer::start().await;
    issuer.reply("/jwks.json", Reply::Json(jwks_body()));
    let url = issuer.discovery("", &issuer.url("/jwks.json"));

    let trusted = first_fetch(&trusting(&issuer.ca_file), &discovery_source(&url)).await;
    assert_eq!(trusted.keys, 1, "{trusted:?}");
    assert_eq!(trusted.last_error, None);
    assert_eq!(trusted.jwks_uri, Some(issuer.url("/jwks.json")));

    // Without the CA file the same issuer is not trusted.
    let untrusted = first_fetch(&JwksRegistry::new(fast_jwks()), &discovery_source(&url)).await;
    assert_eq!(untrusted.keys, 0);
    assert!(
        last_error(&untrusted).contains("certificate"),
        "{untrusted:?}"
    );
}

#[tokio::test]
async fn a_redirect_off_https_or_to_a_metadata_address_is_refused_before_it_is_followed() {
    let issuer = TlsIssuer::start().await;
    let registry = trusting(&issuer.ca_file);
    for (path, location, expected) in [
        (
            "/to-plain-http",
            "http://scopegate-test.invalid/jwks.json",
            "redirect to http://scopegate-test.invalid/… refused: must use https: keys are \
             fetched over https only (http is allowed only for loopback hosts)",
        ),
        (
            "/to-metadata",
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            "redirect to http://169.254.169.254/… refused: must not name a link-local or cloud \
             metadata address (169.254.169.254)",
        ),
        (
            "/to-metadata-over-https",
            "https://169.254.169.254/latest/meta-data/",
            "redirect to https://169.254.169.254/… refused: must not name a link-local",
        ),
        (
            "/to-mapped-metadata",
            "https://[::ffff:a9fe:a9fe]/",
            "redirect to https://[::ffff:a9fe:a9fe]/… refused: must not name a link-local or cloud \
             metadata address (::ffff:169.254.169.254)",
        ),
        (
            "/to-aws-ipv6-metadata",
            "https://[fd00:ec2::254]/latest/meta-data/",
            "must not name a link-local or cloud metadata address (fd00:ec2::254)",
        ),
    ] {
        issuer.reply(path, Reply::Redirect(location.to_string()));
        let state = first_fetch(&registry, &uri_source(&issuer.url(path))).await;
        let error = last_error(&state);
        assert!(
            error.starts_with(&format!("GET {}: ", issuer.url(path))),
            "{error}"
        );
        // The policy refused the hop: no DNS lookup, no connection.
        assert!(error.contains(expected), "{path}: {error}");
        assert!(
            !error.contains("meta-data"),
            "the path is not echoed: {error}"
        );
        assert_eq!(state.keys, 0);
        assert_eq!(
            issuer.hits(path),
            1,
            "{path}: only the first hop was requested"
        );
    }
}

#[tokio::test]
async fn a_redirect_is_followed_to_https_or_loopback_http_for_at_most_three_hops() {
    let issuer = TlsIssuer::start().await;
    let registry = trusting(&issuer.ca_file);

    // https → loopback http is allowed (loopback is the exception).
    let plain = JwksServer::start(vec![KEY_A.jwk()]).await;
    issuer.reply("/to-loopback-http", Reply::Redirect(plain.jwks_uri()));
    let state = first_fetch(&registry, &uri_source(&issuer.url("/to-loopback-http"))).await;
    assert_eq!(state.keys, 1, "{state:?}");
    assert!(plain.fetches() >= 1);

    // Three hops are followed, a fourth is not.
    issuer.reply("/jwks.json", Reply::Json(jwks_body()));
    for hop in 1..=4 {
        let next = if hop == 1 {
            "/jwks.json".to_string()
        } else {
            format!("/hop{}", hop - 1)
        };
        issuer.reply(&format!("/hop{hop}"), Reply::Redirect(issuer.url(&next)));
    }
    let three = first_fetch(&registry, &uri_source(&issuer.url("/hop3"))).await;
    assert_eq!(three.keys, 1, "{three:?}");
    let four = first_fetch(&registry, &uri_source(&issuer.url("/hop4"))).await;
    assert_eq!(four.keys, 0);
    assert!(
        last_error(&four).ends_with("more than 3 redirects"),
        "{four:?}"
    );
}

#[tokio::test]
async fn a_discovered_jwks_uri_must_pass_the_same_rule() {
    let issuer = TlsIssuer::start().await;
    let registry = trusting(&issuer.ca_file);
    for (prefix, jwks_uri, expected) in [
        (
            "/plain-http",
            "http://keys.scopegate-test.invalid/jwks.json",
            "jwks_uri http://keys.scopegate-test.invalid/… refused: must use https",
        ),
        (
            "/metadata",
            "https://169.254.169.254/latest/meta-data/",
            "jwks_uri https://169.254.169.254/… refused: must not name a link-local or cloud \
             metadata address (169.254.169.254)",
        ),
        (
            "/link-local-v6",
            "https://[fe80::1]:8443/jwks.json",
            "jwks_uri https://[fe80::1]:8443/… refused: must not name a link-local",
        ),
        (
            "/other-scheme",
            "file:///var/run/secrets/kubernetes.io/serviceaccount/token",
            "jwks_uri a URL with another scheme refused: must use https",
        ),
    ] {
        let url = issuer.discovery(prefix, jwks_uri);
        let state = first_fetch(&registry, &discovery_source(&url)).await;
        let error = last_error(&state);
        assert!(
            error.starts_with(&format!("{url}/.well-known/openid-configuration: ")),
            "{error}"
        );
        assert!(error.contains(expected), "{prefix}: {error}");
        assert_eq!(
            state.jwks_uri, None,
            "a refused jwks_uri is not reported as in use"
        );
        assert_eq!(state.keys, 0);
    }
}

#[tokio::test]
async fn fetched_content_never_reaches_the_reported_error() {
    let issuer = TlsIssuer::start().await;
    let registry = trusting(&issuer.ca_file);
    let bodies = [
        (
            "/top-level-string",
            format!("\"{MARKER}\""),
            "not an OpenID configuration: a value of the wrong type at line 1 column 20",
        ),
        (
            "/html",
            format!("<html>{MARKER}</html>"),
            "not an OpenID configuration: invalid JSON at line 1 column 1",
        ),
        (
            "/wrong-type",
            format!("{{\"issuer\": {{\"{MARKER}\": 1}}}}"),
            "not an OpenID configuration: a value of the wrong type at line 1 column 11",
        ),
        (
            "/no-jwks-uri",
            // The issuer is checked after the document is complete.
            format!("{{\"issuer\": \"{MARKER}\"}}"),
            "not an OpenID configuration: missing field jwks_uri",
        ),
        (
            "/other-issuer",
            format!(
                "{{\"issuer\": \"https://{MARKER}.example.com\", \"jwks_uri\": \"https://localhost/{MARKER}\"}}"
            ),
            "the discovery document's issuer differs from the policy's issuer",
        ),
    ];
    for (prefix, body, expected) in bodies {
        issuer.reply(
            &format!("{prefix}/.well-known/openid-configuration"),
            Reply::Json(body),
        );
        let state = first_fetch(&registry, &discovery_source(&issuer.url(prefix))).await;
        let error = last_error(&state);
        assert!(error.contains(expected), "{prefix}: {error}");
        assert!(!error.contains(MARKER), "{prefix}: {error}");
    }

    // A JWKS document, too.
    issuer.reply(
        "/jwks-wrong-type",
        Reply::Json(format!("{{\"keys\": \"{MARKER}\"}}")),
    );
    issuer.reply(
        "/jwks-no-keys",
        Reply::Json(format!("{{\"{MARKER}\": []}}")),
    );
    for (path, expected) in [
        (
            "/jwks-wrong-type",
            "JWKS is not a JSON object with a \"keys\" array: a value of the wrong type at line 1 column 29",
        ),
        (
            "/jwks-no-keys",
            "JWKS is not a JSON object with a \"keys\" array: missing field keys",
        ),
    ] {
        let state = first_fetch(&registry, &uri_source(&issuer.url(path))).await;
        let error = last_error(&state);
        assert!(error.ends_with(expected), "{path}: {error}");
        assert!(!error.contains(MARKER), "{path}: {error}");
    }
}

/// A policy document for `host` whose keys come from `issuer` (by
/// discovery unless `jwks_uri` is given).
fn policy(name: &str, host: &str, issuer: &str, jwks_uri: Option<&str>) -> String {
    support::host_policy_yaml(name, host, issuer, jwks_uri, r#"[{paths: ["/**"]}]"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_trusts_jwks_ca_file_and_reports_refusals_without_content() {
    let issuer = TlsIssuer::start().await;
    issuer.reply("/jwks.json", Reply::Json(jwks_body()));
    let good = issuer.discovery("/good", &issuer.url("/jwks.json"));
    issuer.reply(
        "/moved",
        Reply::Redirect("http://169.254.169.254/latest/meta-data/".to_string()),
    );
    let garbage = issuer.url("/garbage");
    issuer.reply(
        "/garbage/.well-known/openid-configuration",
        Reply::Json(format!("\"{MARKER}\"")),
    );
    let policies = [
        policy("good", "good.example.com", &good, None),
        policy(
            "moved",
            "moved.example.com",
            &good,
            Some(&issuer.url("/moved")),
        ),
        policy("garbage", "garbage.example.com", &garbage, None),
    ]
    .join("---\n");

    let dir = tempfile::tempdir().unwrap();
    let ca_file = issuer.ca_file.to_str().unwrap();
    let sg =
        ScopegateProcess::serve_policy(dir.path(), &policies, &["--jwks-ca-file", ca_file], |_| {})
            .await;
    let readyz = || async {
        let response = reqwest::get(format!("http://{}/readyz", sg.admin_addr))
            .await
            .unwrap();
        response.text().await.unwrap()
    };
    let source = |body: &str, url: &str| -> Value {
        let readyz: Value = serde_json::from_str(body).unwrap();
        readyz["jwks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["source"].as_str().unwrap().starts_with(url))
            .unwrap_or_else(|| panic!("{url} in {body}"))
            .clone()
    };
    eventually("every source was fetched", || async {
        let body = readyz().await;
        let readyz: Value = serde_json::from_str(&body).unwrap();
        let sources = readyz["jwks"].as_array().unwrap();
        sources.len() == 3
            && sources
                .iter()
                .all(|s| s["fetchAttempts"].as_u64() > Some(0))
    })
    .await;
    let body = readyz().await;
    assert_eq!(source(&body, &good)["keys"], 1, "{body}");
    let moved = source(&body, &issuer.url("/moved"));
    let moved_error = moved["lastError"].as_str().unwrap();
    assert!(
        moved_error.contains("redirect to http://169.254.169.254/… refused"),
        "{moved_error}"
    );
    let garbage_error = source(&body, &garbage)["lastError"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        garbage_error.ends_with(
            "not an OpenID configuration: a value of the wrong type at line 1 column 20"
        ),
        "{garbage_error}"
    );
    assert!(!body.contains(MARKER), "{body}");
    assert!(!body.contains("meta-data"), "{body}");

    let metrics = reqwest::get(format!("http://{}/metrics", sg.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("scopegate_jwks_fetches_total")
                && l.contains("result=\"redirect_refused\"")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("result=\"invalid_discovery\"")),
        "{metrics}"
    );
    let log = sg.log_text();
    assert!(log.contains("JWKS fetch failed"), "{log}");
    assert!(!log.contains(MARKER), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_jwks_ca_file_stops_serve_with_the_flag_named() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "just text\n").unwrap();
    let policy_file = dir.path().join("policy.yaml");
    std::fs::write(
        &policy_file,
        policy("p", "p.example.com", "https://issuer.example.com", None),
    )
    .unwrap();
    for (ca_file, expected) in [
        (dir.path().join("missing.pem"), "cannot read the CA file"),
        (not_pem, "holds no PEM certificate"),
    ] {
        let out = std::process::Command::new(support::process::scopegate_bin())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .arg("--policies")
            .arg(&policy_file)
            .arg("--jwks-ca-file")
            .arg(&ca_file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("--jwks-ca-file (SCOPEGATE_JWKS_CA_FILE): ")
                && stderr.contains(expected),
            "{stderr}"
        );
    }
}

#[test]
fn policy_urls_naming_metadata_addresses_or_plain_http_are_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.yaml");
    let policies = [
        policy("a", "a.example.com", "https://169.254.169.254/", None),
        policy(
            "b",
            "b.example.com",
            "https://issuer.example.com/",
            Some("https://[::ffff:169.254.169.254]/jwks.json"),
        ),
        policy(
            "c",
            "c.example.com",
            "https://issuer.example.com/",
            Some("http://[fe80::1]:8080/jwks.json"),
        ),
        policy(
            "d",
            "d.example.com",
            "https://issuer.example.com/",
            Some("http://issuer.example.com/jwks.json"),
        ),
        policy("e", "e.example.com", "http://127.0.0.1:8080/", None),
    ]
    .join("---\n");
    std::fs::write(&file, policies).unwrap();
    let out = std::process::Command::new(support::process::scopegate_bin())
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let f = file.display();
    for expected in [
        format!(
            "{f}:1: spec.issuer.url: \"https://169.254.169.254/.well-known/openid-configuration\" \
             must not name a link-local or cloud metadata address (169.254.169.254)"
        ),
        format!(
            "{f}:2: spec.issuer.jwksUri: \"https://[::ffff:169.254.169.254]/jwks.json\" \
             must not name a link-local or cloud metadata address (::ffff:169.254.169.254)"
        ),
        format!(
            "{f}:3: spec.issuer.jwksUri: \"http://[fe80::1]:8080/jwks.json\" must not name a \
             link-local or cloud metadata address (fe80::1)"
        ),
        format!(
            "{f}:4: spec.issuer.jwksUri: \"http://issuer.example.com/jwks.json\" must use https"
        ),
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(&expected)),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(!stdout.contains(":5:"), "loopback http is valid:\n{stdout}");
}

/// Two issuers that differ only by the trailing slash share a discovery
/// URL but not a key source: the one the discovery document names gets
/// keys, the other fails (`the discovery document's issuer differs`). Each
/// has its own `scopegate_jwks_keys` series and `/readyz` entry, so the
/// healthy issuer does not read 0 keys (it shared one series with the
/// broken one, which fired both key alerts for it).
#[tokio::test]
async fn issuers_differing_by_a_trailing_slash_have_their_own_key_series() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let with_slash = jwks.issuer(); // what the discovery document names
    let without_slash = with_slash.trim_end_matches('/').to_string();
    let policies = [
        support::host_policy_yaml("slash", "a.example.com", &with_slash, None, "[]"),
        support::host_policy_yaml("no-slash", "b.example.com", &without_slash, None, "[]"),
    ]
    .join("---\n");
    let dir = tempfile::tempdir().unwrap();
    let sg = ScopegateProcess::serve_policy(dir.path(), &policies, &[], |_| {}).await;
    let keys = |issuer: &str| {
        let issuer = issuer.to_string();
        let sg = &sg;
        async move {
            sg.series("scopegate_jwks_keys", &[("issuer", &issuer)])
                .await
        }
    };
    eventually("both sources were fetched", || async {
        let body = sg.readyz_body().await;
        let sources = body["jwks"].as_array().unwrap().clone();
        sources.len() == 2
            && sources
                .iter()
                .all(|s| s["fetchAttempts"].as_u64() > Some(0))
    })
    .await;
    let mut every = sg.series("scopegate_jwks_keys", &[]).await;
    every.sort_by(f64::total_cmp);
    assert_eq!(every, vec![0.0, 1.0], "one series per source");
    assert_eq!(keys(&with_slash).await, vec![1.0]);
    assert_eq!(keys(&without_slash).await, vec![0.0]);

    let body = sg.readyz_body().await;
    let entry = |issuer: &str| -> Value {
        body["jwks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["issuer"] == issuer)
            .unwrap_or_else(|| panic!("no /readyz entry for {issuer}: {body}"))
            .clone()
    };
    assert_eq!(entry(&with_slash)["keys"], 1, "{body}");
    let broken = entry(&without_slash);
    assert_eq!(broken["keys"], 0, "{body}");
    assert!(
        broken["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("issuer")),
        "{body}"
    );
}
