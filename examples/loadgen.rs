//! The loopback load generator of `benches/load.sh` (run that script; this
//! binary is its tool). Requests are encoded once and sent over raw HTTP/2
//! (the `h2` crate), so the client spends as little CPU as possible.
//!
//! ```text
//! loadgen setup    --dir D --jwks-uri URL   RSA key → D/jwks/.well-known/jwks.json, signed
//!                                           Auth0-shaped tokens → D/tokens.txt (and one without
//!                                           `scope:0` → D/token-without-scope.txt), policies
//!                                           → D/policies-1.yaml, D/policies-N.yaml
//! loadgen grpc     --addr A --host H --tokens D/tokens.txt   Checks with the first token, for a fixed time
//! loadgen fill     --addr A --host H --tokens D/tokens.txt   one Check per token (fills the token cache)
//! loadgen http     --addr A --host H --tokens D/tokens.txt   GET /orders/42 through Envoy (h2c)
//! loadgen upstream --listen A                               the app behind Envoy: 200 "ok" on every path
//! loadgen envoy-config --variant V --out F …               an Envoy bootstrap for the comparison
//!                                           with Envoy's own jwt_authn (manifests/envoy/envoy.yaml
//!                                           edited; benches/envoy/*.yaml)
//! ```
//!
//! `grpc`, `fill` and `http` print one `RESULT key=value …` line and fail if
//! any request was not allowed (`http`: anything but 200 with the upstream's
//! body `ok`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::{BufMut as _, Bytes, BytesMut};
use clap::{Args, Parser, Subcommand};
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use prost::Message as _;
use serde_json::{Value, json};
use support::{AUDIENCE, RsaKey, check_request, numbered_policies_yaml};

/// The `iss` of the load-test tokens (never fetched: policies name the JWKS URI).
const ISSUER: &str = "https://issuer.loadtest.example/";
const PATH: &str = "/orders/42";
/// The `azp` of every load-test token: an Auth0 client id is 32 characters.
const CLIENT_ID: &str = "Xq3v9LcE2mWb7TnY5aRk8ZpD1sGh4JfU";

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes a JWKS, signed RS256 tokens and policy files.
    Setup {
        /// Output directory.
        #[arg(long)]
        dir: PathBuf,
        /// Where scopegate will fetch `DIR/jwks/.well-known/jwks.json` from.
        #[arg(long)]
        jwks_uri: String,
        /// Distinct tokens to sign.
        #[arg(long, default_value_t = 100_000)]
        tokens: usize,
        /// Policies in the large policy file.
        #[arg(long, default_value_t = 10_000)]
        policies: usize,
    },
    /// gRPC Checks with the first token of the file, for a fixed time.
    Grpc(Load),
    /// One gRPC Check per token of the file.
    Fill(Load),
    /// HTTP GETs with the first token of the file (through Envoy), for a fixed time.
    Http(Load),
    /// Answers 200 "ok" to every HTTP request.
    Upstream {
        /// Listen address.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Writes an Envoy bootstrap for one variant of the Envoy comparison.
    EnvoyConfig(EnvoyConfig),
}

/// `manifests/envoy/envoy.yaml` with its ports replaced, its access log
/// dropped (per-request stdout I/O, part of no variant) and its auth filter
/// swapped per variant.
#[derive(Args)]
struct EnvoyConfig {
    #[arg(long, value_enum)]
    variant: EnvoyVariant,
    /// Leave `jwt_cache_config` out of the jwt_authn provider (Envoy then
    /// verifies every token in full).
    #[arg(long)]
    no_jwt_cache: bool,
    /// Envoy's listener port.
    #[arg(long)]
    listen: u16,
    /// Envoy's admin port.
    #[arg(long)]
    admin: u16,
    /// The upstream app's port.
    #[arg(long)]
    upstream: u16,
    /// scopegate's gRPC port (its cluster stays in every variant).
    #[arg(long)]
    scopegate: u16,
    /// The loopback JWKS server's port (jwt_authn's `remote_jwks`).
    #[arg(long)]
    jwks: u16,
    /// Where to write the bootstrap.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum EnvoyVariant {
    /// No auth filter at all.
    None,
    /// `envoy.filters.http.jwt_authn` (benches/envoy/jwt_authn.yaml).
    #[value(name = "jwt_authn")]
    JwtAuthn,
    /// jwt_authn, its payload in dynamic metadata, and
    /// `envoy.filters.http.rbac` requiring `scope:0` (benches/envoy/rbac.yaml).
    #[value(name = "jwt_authn+rbac")]
    JwtAuthnRbac,
    /// ext_authz to scopegate, as shipped (with `allowed_headers`).
    Scopegate,
    /// ext_authz to scopegate with every request header in the Check (no
    /// `allowed_headers`: the shipped config before it had one).
    ScopegateAllHeaders,
}

#[derive(Args, Clone)]
struct Load {
    /// Server address.
    #[arg(long)]
    addr: SocketAddr,
    /// Request host.
    #[arg(long)]
    host: String,
    /// File with one token per line.
    #[arg(long)]
    tokens: PathBuf,
    /// Measured time (after the warm-up).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured time before it.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 16)]
    streams: usize,
    /// Label printed in the RESULT line.
    #[arg(long, default_value = "run")]
    label: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup {
            dir,
            jwks_uri,
            tokens,
            policies,
        } => setup(&dir, &jwks_uri, tokens, policies),
        Command::Grpc(load) => {
            let token = first_token(&load)?;
            let report = timed(&load, Protocol::Grpc, vec![token]).await?;
            report.print(&load.label)
        }
        Command::Http(load) => {
            let token = first_token(&load)?;
            let report = timed(&load, Protocol::Http, vec![token]).await?;
            report.print(&load.label)
        }
        Command::Fill(load) => {
            let tokens = read_tokens(&load)?;
            let report = each_once(&load, tokens).await?;
            report.print(&load.label)
        }
        Command::Upstream { listen } => {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            let app = axum::Router::new().fallback(|| async { UPSTREAM_BODY });
            axum::serve(listener, app).await?;
            Ok(())
        }
        Command::EnvoyConfig(args) => envoy_config(&args),
    }
}

/// What `upstream` answers; `http` checks for it.
const UPSTREAM_BODY: &str = "ok";

/// The headers `http` sends besides the token: those of a browser's
/// `fetch()` from a single-page app to its API (an agent's HTTP library
/// sends fewer; a browser also sends cookies, left out). The same in every
/// variant; without `allowed_headers` each goes into every Check.
const CLIENT_HEADERS: &[(&str, &str)] = &[
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    ),
    ("accept", "application/json, text/plain, */*"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("accept-language", "en-US,en;q=0.9"),
    ("origin", "https://app.example.com"),
    ("referer", "https://app.example.com/orders"),
    ("sec-fetch-dest", "empty"),
    ("sec-fetch-mode", "cors"),
    ("sec-fetch-site", "same-site"),
];

fn setup(
    dir: &std::path::Path,
    jwks_uri: &str,
    tokens: usize,
    policies: usize,
) -> anyhow::Result<()> {
    let key = RsaKey::generate("loadtest");
    let jwks_dir = dir.join("jwks/.well-known");
    std::fs::create_dir_all(&jwks_dir)?;
    let jwks = serde_json::json!({"keys": [key.jwk()]});
    std::fs::write(jwks_dir.join("jwks.json"), jwks.to_string())?;
    for count in [1, policies] {
        let yaml = numbered_policies_yaml(count, ISSUER, jwks_uri, 1);
        std::fs::write(dir.join(format!("policies-{count}.yaml")), yaml)?;
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let signed: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let key = &key;
                scope.spawn(move || {
                    (t..tokens)
                        .step_by(threads)
                        .map(|i| key.sign(&auth0_claims(i, "openid read:orders scope:0")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a signing thread panicked"))
            .collect()
    });
    std::fs::write(dir.join("tokens.txt"), signed.join("\n") + "\n")?;
    // Valid, but without the scope the policies require: a request with it
    // must be refused (403).
    let without_scope = key.sign(&auth0_claims(tokens, "openid read:orders"));
    std::fs::write(dir.join("token-without-scope.txt"), without_scope + "\n")?;
    let sizes = signed.iter().map(String::len);
    let (min, max) = (sizes.clone().min().unwrap_or(0), sizes.max().unwrap_or(0));
    println!(
        "wrote {tokens} tokens ({min}..={max} bytes each) and policy files to {}",
        dir.display()
    );
    Ok(())
}

/// The claims of an Auth0 access token for an API with RBAC permissions in
/// the token and an `openid` login (hence the `userinfo` audience), for the
/// numbered policies (audience [`AUDIENCE`], `scope:0` required when `scope`
/// has it); `sub` is distinct per `index`, valid for 24 hours.
///
/// Signed with RS256 and a short `kid`, this makes a token of 875 bytes,
/// about the 867 of the sample in issue 14. Auth0's usual values would be
/// longer (`openid profile email` scopes, a 16-character organization id:
/// ~915 bytes with this issuer and audience); they are shortened here to
/// keep the size, with every claim of the sample present.
fn auth0_claims(index: usize, scope: &str) -> Value {
    // Auth0 user ids are 24 hex digits; an odd multiplier mod 2^96 keeps
    // them distinct while not sharing a long zero prefix.
    let id = (index as u128 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c061) & ((1 << 96) - 1);
    let permissions: Vec<&str> = scope.split(' ').filter(|s| *s != "openid").collect();
    let now = support::now();
    json!({
        "iss": ISSUER,
        "sub": format!("auth0|{id:024x}"),
        "aud": [AUDIENCE, format!("{ISSUER}userinfo")],
        "iat": now,
        "exp": now + 24 * 3600,
        "azp": CLIENT_ID,
        "scope": scope,
        "permissions": permissions,
        "https://example.com/org": format!("org_{:04x}", index % 0x1_0000),
    })
}

fn read_tokens(load: &Load) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(&load.tokens)
        .with_context(|| format!("reading {}", load.tokens.display()))?;
    let tokens: Vec<String> = text.lines().map(str::to_string).collect();
    ensure!(
        !tokens.is_empty(),
        "{} has no tokens",
        load.tokens.display()
    );
    Ok(tokens)
}

/// The first line of the tokens file (without reading the other 99,999).
fn first_token(load: &Load) -> anyhow::Result<String> {
    use std::io::BufRead as _;
    let file = std::fs::File::open(&load.tokens)
        .with_context(|| format!("reading {}", load.tokens.display()))?;
    let mut line = String::new();
    std::io::BufReader::new(file).read_line(&mut line)?;
    let token = line.trim_end();
    ensure!(!token.is_empty(), "{} has no tokens", load.tokens.display());
    Ok(token.to_string())
}

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    /// `envoy.service.auth.v3.Authorization/Check`.
    Grpc,
    /// `GET /orders/42` (through Envoy).
    Http,
}

/// One pre-encoded request: headers are cloned per request (h2 takes them
/// by value), the body is shared.
struct Prepared {
    protocol: Protocol,
    uri: http::Uri,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Prepared {
    fn new(protocol: Protocol, load: &Load, token: &str) -> anyhow::Result<Self> {
        let bearer = format!("Bearer {token}");
        let (uri, body) = match protocol {
            Protocol::Grpc => {
                let request = check_request(
                    &load.host,
                    "GET",
                    PATH,
                    &[("authorization", &bearer)],
                    HashMap::new(),
                );
                let message = request.encode_to_vec();
                let mut framed = BytesMut::with_capacity(5 + message.len());
                framed.put_u8(0); // not compressed
                framed.put_u32(u32::try_from(message.len())?);
                framed.put_slice(&message);
                let uri = format!(
                    "http://{}/envoy.service.auth.v3.Authorization/Check",
                    load.addr
                );
                (uri, framed.freeze())
            }
            Protocol::Http => (format!("http://{}{PATH}", load.host), Bytes::new()),
        };
        let headers: Vec<(&str, &str)> = match protocol {
            Protocol::Grpc => vec![("content-type", "application/grpc"), ("te", "trailers")],
            Protocol::Http => std::iter::once(("authorization", bearer.as_str()))
                .chain(CLIENT_HEADERS.iter().copied())
                .collect(),
        };
        let headers = headers
            .into_iter()
            .map(|(name, value)| Ok((name.parse::<http::HeaderName>()?, value.parse()?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Prepared {
            protocol,
            uri: uri.parse()?,
            headers,
            body,
        })
    }

    fn request(&self) -> http::Request<()> {
        let method = match self.protocol {
            Protocol::Grpc => http::Method::POST,
            Protocol::Http => http::Method::GET,
        };
        let mut request = http::Request::builder()
            .method(method)
            .uri(self.uri.clone())
            .body(())
            .expect("a static request is valid");
        *request.headers_mut() = self.headers.clone();
        request
    }

    /// Sends the request; `Ok(true)` when it was allowed.
    async fn send(&self, sender: &h2::client::SendRequest<Bytes>) -> anyhow::Result<bool> {
        let mut sender = sender.clone().ready().await?;
        let end_of_stream = self.body.is_empty();
        let (response, mut stream) = sender.send_request(self.request(), end_of_stream)?;
        if !end_of_stream {
            stream.send_data(self.body.clone(), true)?;
        }
        let response = response.await?;
        let status = response.status();
        let mut body = response.into_body();
        let mut data = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            body.flow_control().release_capacity(chunk.len())?;
            data.extend_from_slice(&chunk);
        }
        match self.protocol {
            Protocol::Http => {
                Ok(status == http::StatusCode::OK && data == UPSTREAM_BODY.as_bytes())
            }
            Protocol::Grpc => {
                let trailers = body.trailers().await?.unwrap_or_default();
                let grpc_ok = trailers.get("grpc-status").is_some_and(|s| s == "0");
                if !grpc_ok || data.len() < 5 {
                    return Ok(false);
                }
                let answer = CheckResponse::decode(&data[5..])?;
                Ok(answer.status.is_some_and(|s| s.code == 0))
            }
        }
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<h2::client::SendRequest<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 24)
        .handshake(tcp)
        .await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender.ready().await?)
}

/// Latencies of the allowed requests in the measured window, and failures.
#[derive(Default)]
struct Report {
    latencies: Vec<Duration>,
    failures: usize,
    elapsed: Duration,
}

impl Report {
    fn merge(&mut self, other: Report) {
        self.latencies.extend(other.latencies);
        self.failures += other.failures;
    }

    fn print(mut self, label: &str) -> anyhow::Result<()> {
        self.latencies.sort_unstable();
        let at = |q: f64| {
            let i = ((self.latencies.len() as f64 * q) as usize).min(self.latencies.len() - 1);
            self.latencies[i].as_secs_f64() * 1e6
        };
        ensure!(!self.latencies.is_empty(), "{label}: no request succeeded");
        let seconds = self.elapsed.as_secs_f64();
        println!(
            "RESULT label={label} requests={} seconds={seconds:.2} rps={:.0} p50_us={:.1} p99_us={:.1} p999_us={:.1} failures={}",
            self.latencies.len(),
            self.latencies.len() as f64 / seconds,
            at(0.50),
            at(0.99),
            at(0.999),
            self.failures
        );
        if self.failures > 0 {
            bail!("{label}: {} requests were not allowed", self.failures);
        }
        Ok(())
    }
}

/// `connections × streams` workers each send requests back to back until
/// the warm-up and the measured time are over.
async fn timed(load: &Load, protocol: Protocol, tokens: Vec<String>) -> anyhow::Result<Report> {
    let prepared = Arc::new(Prepared::new(protocol, load, &tokens[0])?);
    let measure_from = Instant::now() + load.warmup;
    let deadline = measure_from + load.duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..load.connections {
        let sender = connect(load.addr).await?;
        for _ in 0..load.streams {
            let (sender, prepared) = (sender.clone(), prepared.clone());
            workers.spawn(async move {
                let mut report = Report::default();
                loop {
                    let start = Instant::now();
                    if start >= deadline {
                        return report;
                    }
                    let allowed = prepared.send(&sender).await;
                    if start >= measure_from {
                        match allowed {
                            Ok(true) => report.latencies.push(start.elapsed()),
                            _ => report.failures += 1,
                        }
                    }
                }
            });
        }
    }
    let mut report = Report {
        elapsed: load.duration,
        ..Report::default()
    };
    while let Some(worker) = workers.join_next().await {
        report.merge(worker?);
    }
    Ok(report)
}

/// Sends one Check per token, `connections × streams` at a time.
async fn each_once(load: &Load, tokens: Vec<String>) -> anyhow::Result<Report> {
    let requests: Arc<Vec<Prepared>> = Arc::new(
        tokens
            .iter()
            .map(|t| Prepared::new(Protocol::Grpc, load, t))
            .collect::<anyhow::Result<_>>()?,
    );
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..load.connections {
        let sender = connect(load.addr).await?;
        for _ in 0..load.streams {
            let (sender, requests, next) = (sender.clone(), requests.clone(), next.clone());
            workers.spawn(async move {
                let mut report = Report::default();
                while let Some(prepared) = requests.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let start = Instant::now();
                    match prepared.send(&sender).await {
                        Ok(true) => report.latencies.push(start.elapsed()),
                        _ => report.failures += 1,
                    }
                }
                report
            });
        }
    }
    let mut report = Report::default();
    while let Some(worker) = workers.join_next().await {
        report.merge(worker?);
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Writes the bootstrap of one variant of the Envoy comparison: the shipped
/// `manifests/envoy/envoy.yaml` (ports replaced by
/// `support::envoy::envoy_config`, which checks they are where its comment
/// says) with its access log dropped and its ext_authz filter kept, trimmed
/// or replaced by the filters of `benches/envoy/*.yaml`.
fn envoy_config(args: &EnvoyConfig) -> anyhow::Result<()> {
    use serde_yaml_ng::Value as Yaml;
    let mut config =
        support::envoy::envoy_config(args.listen, args.admin, args.upstream, args.scopegate);
    let manager = &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"];
    ensure!(
        remove_key(manager, "access_log").is_some(),
        "envoy.yaml: no access_log to drop"
    );
    let filters = support::envoy::http_filters(&mut config);
    let ext_authz = filters
        .iter()
        .position(|f| f["name"] == "envoy.filters.http.ext_authz")
        .context("envoy.yaml has no ext_authz filter")?;
    let mut clusters = Vec::new();
    match args.variant {
        EnvoyVariant::Scopegate => {}
        EnvoyVariant::ScopegateAllHeaders => ensure!(
            remove_key(&mut filters[ext_authz]["typed_config"], "allowed_headers").is_some(),
            "envoy.yaml: ext_authz has no allowed_headers to drop"
        ),
        EnvoyVariant::None => {
            filters.remove(ext_authz);
        }
        EnvoyVariant::JwtAuthn | EnvoyVariant::JwtAuthnRbac => {
            let mut jwt = bench_yaml("jwt_authn.yaml", args.jwks)?;
            let mut jwt_filters = take_list(&mut jwt, "http_filters")?;
            let provider = &mut jwt_filters[0]["typed_config"]["providers"]["loadtest"];
            if args.no_jwt_cache {
                ensure!(
                    remove_key(provider, "jwt_cache_config").is_some(),
                    "jwt_authn.yaml: no jwt_cache_config to drop"
                );
            }
            if args.variant == EnvoyVariant::JwtAuthnRbac {
                let mut rbac = bench_yaml("rbac.yaml", args.jwks)?;
                let Yaml::Mapping(additions) =
                    remove_key(&mut rbac, "provider").unwrap_or_default()
                else {
                    bail!("rbac.yaml: `provider` is not a mapping");
                };
                let provider = provider
                    .as_mapping_mut()
                    .context("a provider is a mapping")?;
                provider.extend(additions);
                jwt_filters.extend(take_list(&mut rbac, "http_filters")?);
            }
            filters.splice(ext_authz..=ext_authz, jwt_filters);
            clusters = take_list(&mut jwt, "clusters")?;
        }
    }
    config["static_resources"]["clusters"]
        .as_sequence_mut()
        .context("envoy.yaml has clusters")?
        .extend(clusters);
    std::fs::write(&args.out, serde_yaml_ng::to_string(&config)?)
        .with_context(|| format!("writing {}", args.out.display()))
}

/// `benches/envoy/NAME` with `${ISSUER}`, `${AUDIENCE}` and `${JWKS_PORT}`
/// filled in.
fn bench_yaml(name: &str, jwks_port: u16) -> anyhow::Result<serde_yaml_ng::Value> {
    let path = format!("{}/benches/envoy/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path}"))?
        .replace("${ISSUER}", ISSUER)
        .replace("${AUDIENCE}", AUDIENCE)
        .replace("${JWKS_PORT}", &jwks_port.to_string());
    serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {path}"))
}

fn remove_key(value: &mut serde_yaml_ng::Value, key: &str) -> Option<serde_yaml_ng::Value> {
    value.as_mapping_mut()?.remove(key)
}

fn take_list(
    value: &mut serde_yaml_ng::Value,
    key: &str,
) -> anyhow::Result<Vec<serde_yaml_ng::Value>> {
    match remove_key(value, key) {
        Some(serde_yaml_ng::Value::Sequence(list)) => Ok(list),
        _ => bail!("no `{key}` list"),
    }
}
