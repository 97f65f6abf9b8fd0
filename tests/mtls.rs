//! mTLS certificate-bound tokens (RFC 8705) end to end: a CA, a server
//! certificate and two client certificates made by `openssl` in a tempdir;
//! real Envoy terminating mutual TLS (`require_client_certificate`) and
//! forwarding the client certificate to scopegate
//! (`include_peer_certificate`); `curl --cert` as the client.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use support::envoy::{http_filters, json_to_yaml, start_envoy_with};
use support::*;

/// The host of the policy that requires certificate-bound tokens.
const STRICT_HOST: &str = "strict.example.com";

/// Runs `openssl` with `args` in `dir`, panicking with its stderr on failure.
fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A CA (`ca.pem`), a server certificate for the test hosts
/// (`server.pem`/`server.key`) and the client certificates `names`
/// (`<name>.pem`/`<name>.key`), all signed by the CA.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn generate(clients: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        let new_key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            path,
            &[
                &["req", "-x509"][..],
                &new_key,
                &["-keyout", "ca.key", "-out", "ca.pem", "-days", "1"],
                &["-subj", "/CN=scopegate test CA"],
            ]
            .concat(),
        );
        let server_ext = format!("subjectAltName=DNS:{HOST},DNS:{STRICT_HOST}\n");
        std::fs::write(path.join("server.ext"), server_ext).unwrap();
        std::fs::write(path.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        let issue = |name: &str, ext: &str| {
            let (key, csr, pem) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
            );
            let subject = format!("/CN={name}");
            openssl(
                path,
                &[
                    &["req"][..],
                    &new_key,
                    &["-keyout", &key, "-out", &csr, "-subj", &subject],
                ]
                .concat(),
            );
            openssl(
                path,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "1",
                    "-out",
                    &pem,
                    "-extfile",
                    ext,
                ],
            );
        };
        issue("server", "server.ext");
        for client in clients {
            issue(client, "client.ext");
        }
        Pki { dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The RFC 8705 `x5t#S256` of client certificate `name`, computed by
    /// openssl: base64url(SHA-256(DER)).
    fn x5t_s256(&self, name: &str) -> String {
        let fingerprint = openssl(
            self.dir.path(),
            &[
                "x509",
                "-in",
                &format!("{name}.pem"),
                "-noout",
                "-fingerprint",
                "-sha256",
            ],
        );
        let fingerprint = String::from_utf8(fingerprint).unwrap();
        let hex = fingerprint
            .trim()
            .rsplit('=')
            .next()
            .unwrap()
            .replace(':', "");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(bytes.len(), 32, "{fingerprint}");
        b64(&bytes)
    }
}

/// The shipped Envoy config with its listener terminating mutual TLS (client
/// certificates signed by the test CA required) and ext_authz forwarding the
/// client certificate.
fn with_mutual_tls(config: &mut serde_yaml_ng::Value, pki: &Pki) {
    let filename = |name: &str| json!({"filename": pki.file(name).to_str().unwrap()});
    config["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] =
        json_to_yaml(json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": true,
                "common_tls_context": {
                    "tls_certificates": [{
                        "certificate_chain": filename("server.pem"),
                        "private_key": filename("server.key"),
                    }],
                    "validation_context": {"trusted_ca": filename("ca.pem")},
                },
            },
        }));
    let ext_authz = http_filters(config)
        .iter_mut()
        .find(|f| f["name"] == "envoy.filters.http.ext_authz")
        .expect("envoy.yaml has ext_authz");
    ext_authz["typed_config"]["include_peer_certificate"] = true.into();
}

/// `GET https://<host>/orders` through Envoy on `port` with the client
/// certificate `client` and `Authorization: Bearer <token>`, by curl over
/// real TLS; returns the status and the `WWW-Authenticate` header.
async fn get_orders(pki: &Pki, port: u16, host: &str, client: &str, token: &str) -> (u16, String) {
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-"])
        .arg("--cacert")
        .arg(pki.file("ca.pem"))
        .arg("--cert")
        .arg(pki.file(&format!("{client}.pem")))
        .arg("--key")
        .arg(pki.file(&format!("{client}.key")))
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg("-H")
        .arg(format!("authorization: Bearer {token}"))
        .arg(format!("https://{host}:{port}/orders"))
        .output()
        .await
        .expect("curl runs");
    assert!(
        output.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let head = String::from_utf8(output.stdout).unwrap();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let challenge = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("www-authenticate")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    (status, challenge)
}

/// An upstream that answers every request with 200.
async fn upstream() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = axum::Router::new().fallback(|| async { "ok" });
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    port
}

#[tokio::test]
async fn certificate_bound_tokens_through_envoy_terminating_mutual_tls() {
    let pki = Pki::generate(&["agent-a", "agent-b"]);
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let optional = format!("{STANDARD_RULES}  proofOfPossession: {{mechanism: mtls}}\n");
    let required =
        format!("{STANDARD_RULES}  proofOfPossession: {{mechanism: mtls, required: true}}\n");
    let policies = format!(
        "{}---\n{}",
        policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), &optional),
        policy_yaml("strict", &jwks.issuer(), &jwks.jwks_uri(), &required).replace(
            &format!("[\"{HOST}\", \"*.orders.internal\"]"),
            &format!("[\"{STRICT_HOST}\"]")
        ),
    );
    let sg = Scopegate::start(&policies).await;
    let (_envoy, port) = start_envoy_with(sg.running.grpc_addr().port(), upstream().await, |c| {
        with_mutual_tls(c, &pki)
    })
    .await;

    let mut bound = claims(&jwks.issuer());
    bound["cnf"] = json!({"x5t#S256": pki.x5t_s256("agent-a")});
    let bound = KEY_A.sign(&bound);
    let plain = KEY_A.sign(&claims(&jwks.issuer()));

    // The certificate the token is bound to: through.
    let (status, challenge) = get_orders(&pki, port, HOST, "agent-a", &bound).await;
    assert_eq!(status, 200, "{challenge}");
    // Another certificate the CA signed: the token is not its to use.
    let (status, challenge) = get_orders(&pki, port, HOST, "agent-b", &bound).await;
    assert_eq!(status, 401);
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("different client certificate") && !challenge.contains("DPoP"),
        "{challenge}"
    );
    // A plain Bearer token where binding is optional: through.
    let (status, challenge) = get_orders(&pki, port, HOST, "agent-b", &plain).await;
    assert_eq!(status, 200, "{challenge}");

    // Where the policy requires binding, a plain token is refused and the
    // bound one still needs its own certificate.
    let (status, challenge) = get_orders(&pki, port, STRICT_HOST, "agent-a", &plain).await;
    assert_eq!(status, 401);
    assert!(
        challenge.contains("error=\"invalid_token\"")
            && challenge.contains("bound to the client certificate"),
        "{challenge}"
    );
    let (status, challenge) = get_orders(&pki, port, STRICT_HOST, "agent-a", &bound).await;
    assert_eq!(status, 200, "{challenge}");
    let (status, _) = get_orders(&pki, port, STRICT_HOST, "agent-b", &bound).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_certificate_bound_token_without_a_forwarded_certificate_is_refused() {
    // No policy mentions mTLS: the binding is enforced whatever the policy
    // says (RFC 8705 §3), and a Check without a certificate (plain
    // listener, or no include_peer_certificate) cannot satisfy it.
    let (jwks, sg) = standard_with(vec![KEY_A.jwk()]).await;
    let mut bound = claims(&jwks.issuer());
    bound["cnf"] = json!({"x5t#S256": b64(&[7; 32])});
    let bound = KEY_A.sign(&bound);
    let auth = format!("Bearer {bound}");
    let checked = sg
        .check("GET", "/orders", &[("authorization", auth.as_str())])
        .await;
    assert_eq!(checked.http_status(), 401);
    let challenge = checked.www_authenticate();
    assert!(
        challenge.contains("error=\"invalid_token\"")
            && challenge.contains("none was presented")
            && !challenge.contains("DPoP"),
        "{challenge}"
    );
    let metrics = reqwest::get(sg.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("reason=\"no_client_certificate\""),
        "the denial is counted under its own reason: {metrics}"
    );
}
