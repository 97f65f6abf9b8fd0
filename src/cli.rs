//! The command line: `serve`, `validate`, `mint`, `check`, `crd`. Every flag
//! `--some-flag` can also be set with the environment variable
//! `SCOPEGATE_SOME_FLAG` (a test below holds every flag to that rule and to
//! its row in the README).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, attribute_context,
};
use kube::CustomResourceExt as _;

use crate::authz::TokenCacheSettings;
use crate::config::{PolicySource, ServeConfig};
use crate::devissuer::{MintRequest, MintResponse};
use crate::jwks::JwksSettings;
use crate::k8s::{self, KubernetesConfig, LeaderSettings};
use crate::policy::{TokenPolicy, files};
use crate::pop::NonceIssuer;
use crate::telemetry::{self, LogFormat};

/// `println!` that treats a closed stdout (`| head`, `| grep -q`) as a
/// normal end of output instead of a panic: the command still exits with
/// its own status.
macro_rules! out {
    ($($arg:tt)*) => {
        write_stdout(format_args!($($arg)*))
    };
}

fn write_stdout(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(line)
        .and_then(|()| stdout.write_all(b"\n"));
    if let Err(error) = written
        && error.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: cannot write to stdout: {error}");
    }
}

/// Bearer-token validation for Envoy/Istio ext_authz.
#[derive(Debug, Parser)]
#[command(name = "scopegate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the ext_authz gRPC service and the admin HTTP server.
    Serve(Box<ServeArgs>),
    /// Parse and compile policy files; print `file:document: field: message` for each problem.
    #[command(after_help = "Exit status: 0 all valid, 1 problems found, 2 usage error.")]
    Validate {
        /// Policy files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run policy tests (`kind: TokenPolicyTest` documents) against the policies under PATHS,
    /// offline: tokens are signed with in-memory issuer keys; one line per case.
    #[command(
        after_help = "Exit status: 0 every case passed, 1 a case failed or a file did not load, 2 usage error."
    )]
    Test {
        /// Policy and test files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Get a signed token from a dev issuer (development only).
    Mint(MintArgs),
    /// Send one CheckRequest and print the decision.
    #[command(
        after_help = "Exit status: 0 allow, 1 deny, 2 no decision (scopegate unreachable, a gRPC error, an answer that is neither, or a usage error)."
    )]
    Check(CheckArgs),
    /// Print the TokenPolicy CustomResourceDefinition as YAML.
    Crd,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// gRPC address (ext_authz, grpc.health.v1, reflection).
    #[arg(long, env = "SCOPEGATE_LISTEN", default_value = "0.0.0.0:9001")]
    listen: SocketAddr,
    /// Admin HTTP address (/healthz, /readyz, /metrics).
    #[arg(long, env = "SCOPEGATE_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    admin_listen: SocketAddr,
    /// Policy files or directories (several after one flag, the flag repeated, or comma-separated in
    /// the env var). Watched and hot-reloaded.
    #[arg(
        long = "policies",
        env = "SCOPEGATE_POLICIES",
        value_delimiter = ',',
        num_args = 1..
    )]
    policies: Vec<PathBuf>,
    /// Watch TokenPolicy objects in the cluster instead of files.
    #[arg(long, env = "SCOPEGATE_KUBERNETES", conflicts_with = "policies")]
    kubernetes: bool,
    /// Namespaces to watch with --kubernetes (several after one flag, the flag repeated, or
    /// comma-separated in the env var; default: all).
    #[arg(
        long = "namespace",
        env = "SCOPEGATE_NAMESPACE",
        value_delimiter = ',',
        num_args = 1..,
        requires = "kubernetes"
    )]
    namespaces: Vec<String>,
    /// Kubeconfig for --kubernetes (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, env = "SCOPEGATE_KUBECONFIG", requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the status writer's leader-election Lease (default: POD_NAMESPACE, the service
    /// account's namespace, else `default`).
    #[arg(long, env = "SCOPEGATE_LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Name of the status writer's leader-election Lease (the chart sets `<release fullname>-status-writer`).
    #[arg(
        long,
        env = "SCOPEGATE_LEADER_ELECTION_LEASE",
        default_value = "scopegate-status-writer"
    )]
    leader_election_lease: String,
    /// How long the Lease is valid without renewal (renewed every third of it).
    #[arg(long, env = "SCOPEGATE_LEADER_ELECTION_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    leader_election_lease_duration: Duration,
    /// How often policy statuses are re-checked without a policy change.
    #[arg(long, env = "SCOPEGATE_STATUS_RESYNC_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    status_resync_interval: Duration,
    /// Also run a local OIDC issuer here (development only).
    #[arg(long, env = "SCOPEGATE_DEV_ISSUER")]
    dev_issuer: Option<SocketAddr>,
    /// JWKS refresh interval when the issuer sends no Cache-Control max-age.
    #[arg(long, env = "SCOPEGATE_JWKS_REFRESH_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    jwks_refresh_interval: Duration,
    /// Lower bound of the JWKS refresh interval (also bounds max-age).
    #[arg(long, env = "SCOPEGATE_JWKS_MIN_REFRESH_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    jwks_min_refresh_interval: Duration,
    /// Upper bound of the JWKS refresh interval (also bounds max-age).
    #[arg(long, env = "SCOPEGATE_JWKS_MAX_REFRESH_INTERVAL", default_value = "24h", value_parser = humantime::parse_duration)]
    jwks_max_refresh_interval: Duration,
    /// Minimum time between JWKS refetches caused by unknown key ids.
    #[arg(long, env = "SCOPEGATE_JWKS_MIN_REFETCH_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    jwks_min_refetch_interval: Duration,
    /// Timeout of one JWKS or discovery request.
    #[arg(long, env = "SCOPEGATE_JWKS_FETCH_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    jwks_fetch_timeout: Duration,
    /// PEM bundle of CA certificates trusted for JWKS and discovery requests in addition to the system
    /// roots (issuers behind a private CA).
    #[arg(long, env = "SCOPEGATE_JWKS_CA_FILE")]
    jwks_ca_file: Option<PathBuf>,
    /// Most verified tokens kept in the token cache (0 disables it).
    #[arg(long, env = "SCOPEGATE_TOKEN_CACHE_SIZE", default_value_t = 100_000)]
    token_cache_size: u64,
    /// Most memory the token cache's entries may take, counted from each entry's real size: bytes, or
    /// with a Ki/Mi/Gi suffix (0 disables the cache).
    #[arg(long, env = "SCOPEGATE_TOKEN_CACHE_MAX_BYTES", default_value = "64Mi", value_parser = parse_byte_size)]
    token_cache_max_bytes: u64,
    /// Longest a verified token is reused without verifying it again (never past its `exp`; 0 disables the cache).
    #[arg(long, env = "SCOPEGATE_TOKEN_CACHE_MAX_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    token_cache_max_ttl: Duration,
    /// Where DPoP proofs are remembered against replay: `memory` (per replica) or
    /// `redis://[user:password@]HOST:PORT[/DB]` (shared by every replica; unreachable = 503).
    #[arg(
        long,
        env = "SCOPEGATE_REPLAY_STORE",
        default_value = "memory",
        value_name = "URL"
    )]
    replay_store: String,
    /// Require server nonces in DPoP proofs, made and checked with this secret (at least 32 bytes; the
    /// same on every replica, which then accept each other's nonces). Off when unset.
    #[arg(
        long,
        env = "SCOPEGATE_DPOP_NONCE_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    dpop_nonce_secret: Option<String>,
    /// Send `policy`, `rule`, `sub`, `azp`, `scope`, `actor` and `audit_denial` to Envoy as dynamic metadata
    /// with every allow (for access logs); `false` saves building and encoding them on every Check.
    #[arg(
        long,
        env = "SCOPEGATE_ENVOY_METADATA",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    envoy_metadata: bool,
    /// At start, how long readiness waits for every issuer's keys; after that an unreachable issuer only
    /// makes its own policies answer 503.
    #[arg(long, env = "SCOPEGATE_STARTUP_KEY_WAIT", default_value = "10s", value_parser = humantime::parse_duration)]
    startup_key_wait: Duration,
    /// After SIGTERM, how long to keep answering Checks with readiness and gRPC health already failing,
    /// before connections stop being accepted (0 in Kubernetes, where the preStop sleep does this).
    #[arg(long, env = "SCOPEGATE_SHUTDOWN_DRAIN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    shutdown_drain_delay: Duration,
    /// Time in-flight Checks get to finish once connections stop being accepted.
    #[arg(long, env = "SCOPEGATE_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Log format.
    #[arg(long, env = "SCOPEGATE_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Args)]
struct MintArgs {
    /// The dev issuer's URL (printed by `serve --dev-issuer`).
    #[arg(long, env = "SCOPEGATE_ISSUER")]
    issuer: String,
    /// `sub`.
    #[arg(long, env = "SCOPEGATE_SUB", default_value = "dev-user")]
    sub: String,
    /// `aud` (repeatable; comma-separated in the env var).
    #[arg(long, env = "SCOPEGATE_AUD", value_delimiter = ',')]
    aud: Vec<String>,
    /// `scope`, space-separated.
    #[arg(long, env = "SCOPEGATE_SCOPE")]
    scope: Option<String>,
    /// Lifetime (e.g. 30s, 1h).
    #[arg(long, env = "SCOPEGATE_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Extra claim `name=value`; a value that parses as JSON is used as JSON (repeatable; the env
    /// var holds one, since JSON values contain commas).
    #[arg(long = "claim", env = "SCOPEGATE_CLAIM", value_parser = parse_key_value)]
    claims: Vec<(String, String)>,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// scopegate's gRPC address.
    #[arg(long, env = "SCOPEGATE_ADDR", default_value = "127.0.0.1:9001")]
    addr: String,
    /// Request host (`:authority`).
    #[arg(long, env = "SCOPEGATE_HOST")]
    host: String,
    /// HTTP method.
    #[arg(long, env = "SCOPEGATE_METHOD", default_value = "GET")]
    method: String,
    /// Request path (query included).
    #[arg(long, env = "SCOPEGATE_PATH", default_value = "/")]
    path: String,
    /// Bearer token (sets `authorization: Bearer …`); the env var keeps it out of the process list.
    #[arg(long, env = "SCOPEGATE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Extra request header `name:value` (repeatable; a name given twice is sent twice, joined with
    /// `,` as Envoy does; the env var holds one, since header values contain commas).
    #[arg(long = "header", env = "SCOPEGATE_HEADER", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// `context_extensions` entry `key=value`, as Envoy's per-route config sends it (repeatable;
    /// the env var holds one).
    #[arg(
        long = "context-extension",
        env = "SCOPEGATE_CONTEXT_EXTENSION",
        value_parser = parse_key_value
    )]
    context_extensions: Vec<(String, String)>,
}

impl Cli {
    /// Parses the process arguments and runs the command.
    pub async fn run() -> ExitCode {
        let cli = Cli::parse();
        match cli.command.run().await {
            Ok(code) => code,
            Err(error) => {
                eprintln!("error: {}", error_text(&error));
                ExitCode::from(2)
            }
        }
    }
}

impl Command {
    async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Command::Serve(args) => serve(*args).await,
            Command::Validate { paths } => Ok(validate(&paths)),
            Command::Test { paths } => Ok(test(&paths).await),
            Command::Mint(args) => mint(args).await,
            Command::Check(args) => check(args).await,
            Command::Crd => {
                let yaml = serde_yaml_ng::to_string(&TokenPolicy::crd())?;
                out!("{}", yaml.trim_end());
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let shutdown = crate::serve::ShutdownSignal::install()
        .map_err(|e| anyhow::anyhow!("cannot install the SIGTERM handler: {e}"))?;
    let telemetry = telemetry::init(args.log_format)?;
    let policies = if args.kubernetes {
        PolicySource::Kubernetes(KubernetesConfig {
            namespaces: args.namespaces,
            kubeconfig: args.kubeconfig,
            leader: LeaderSettings {
                namespace: args
                    .leader_election_namespace
                    .unwrap_or_else(k8s::default_lease_namespace),
                lease_name: args.leader_election_lease,
                identity: k8s::default_identity(),
                lease_duration: args.leader_election_lease_duration,
            },
            status_resync: args.status_resync_interval,
        })
    } else {
        PolicySource::Files(args.policies)
    };
    let extra_roots = match &args.jwks_ca_file {
        Some(path) => {
            crate::jwks::load_ca_file(path).context("--jwks-ca-file (SCOPEGATE_JWKS_CA_FILE)")?
        }
        None => Vec::new(),
    };
    let config = ServeConfig {
        listen: args.listen,
        admin_listen: args.admin_listen,
        policies,
        dev_issuer: args.dev_issuer,
        jwks: JwksSettings {
            refresh_interval: args.jwks_refresh_interval,
            min_refresh_interval: args.jwks_min_refresh_interval,
            max_refresh_interval: args.jwks_max_refresh_interval,
            min_refetch_interval: args.jwks_min_refetch_interval,
            fetch_timeout: args.jwks_fetch_timeout,
            extra_roots,
            ..JwksSettings::default()
        },
        token_cache: TokenCacheSettings {
            max_entries: args.token_cache_size,
            max_bytes: args.token_cache_max_bytes,
            max_ttl: args.token_cache_max_ttl,
        },
        replay_store: crate::pop::ReplayStore::from_flag(Some(&args.replay_store))
            .context("--replay-store (SCOPEGATE_REPLAY_STORE)")?,
        dpop_nonces: dpop_nonces(args.dpop_nonce_secret.as_deref())?,
        envoy_metadata: args.envoy_metadata,
        startup_key_wait: args.startup_key_wait,
        shutdown_drain_delay: args.shutdown_drain_delay,
        shutdown_grace: args.shutdown_grace,
    };
    let running = crate::serve::start(config).await?;
    if let Some(issuer) = running.dev_issuer() {
        eprintln!(
            "dev issuer: {}  (try: scopegate mint --issuer {})",
            issuer.issuer(),
            issuer.issuer()
        );
    }
    shutdown.received().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    telemetry.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// An error and its causes, each said once: many errors repeat their
/// source in their own text (`… Connection refused (os error 111)`), which
/// `{:#}` would print again.
fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain().map(ToString::to_string) {
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

fn validate(paths: &[PathBuf]) -> ExitCode {
    match files::load(paths) {
        Ok(loaded) if loaded.is_empty() => {
            out!(
                "no TokenPolicy in {}: nothing to validate (policies are YAML documents with `kind: TokenPolicy`)",
                files::display_paths(paths)
            );
            ExitCode::FAILURE
        }
        Ok(loaded) => {
            for warning in loaded.iter().flat_map(files::LoadedPolicy::warnings) {
                out!("{warning}");
            }
            out!("ok: {} policies", loaded.len());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in errors {
                out!("{error}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn test(paths: &[PathBuf]) -> ExitCode {
    match crate::policy_test::run(paths).await {
        Ok(report) if report.passed + report.failed == 0 => {
            out!(
                "no TokenPolicyTest cases in {} ({} policies loaded): nothing to test",
                files::display_paths(paths),
                report.policies
            );
            ExitCode::FAILURE
        }
        Ok(report) => {
            for line in &report.lines {
                out!("{line}");
            }
            out!(
                "policy tests: {} passed, {} failed ({} policies loaded)",
                report.passed,
                report.failed,
                report.policies
            );
            if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(errors) => {
            for error in errors {
                out!("{error}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn mint(args: MintArgs) -> anyhow::Result<ExitCode> {
    let claims = args
        .claims
        .into_iter()
        .map(|(k, v)| {
            let value = serde_json::from_str(&v).unwrap_or(serde_json::Value::String(v));
            (k, value)
        })
        .collect();
    let request = MintRequest {
        sub: Some(args.sub),
        aud: args.aud,
        scope: args.scope,
        ttl_seconds: Some(args.ttl.as_secs()),
        claims,
    };
    let url = format!("{}/token", args.issuer.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .post(&url)
        .json(&request)
        .send()
        .await
        .with_context(|| {
            format!(
                "cannot reach the dev issuer at {url} (is `scopegate serve --dev-issuer ADDR` running, \
                 and --issuer the URL it printed?)"
            )
        })?
        .error_for_status()?;
    let minted: MintResponse = response.json().await.context("the dev issuer's answer")?;
    out!("{}", minted.access_token);
    Ok(ExitCode::SUCCESS)
}

async fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let mut headers = args.headers;
    if let Some(token) = args.token {
        headers.push(("authorization".into(), format!("Bearer {token}")));
    }
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: args.method.to_ascii_uppercase(),
                    host: args.host.clone(),
                    path: args.path,
                    headers: envoy_header_map(headers),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: args.context_extensions.into_iter().collect(),
            ..Default::default()
        }),
    };
    let endpoint = if args.addr.contains("://") {
        args.addr
    } else {
        format!("http://{}", args.addr)
    };
    let mut client = AuthorizationClient::connect(endpoint.clone())
        .await
        .with_context(|| {
            format!(
                "cannot connect to scopegate at {endpoint} (is `scopegate serve` running? \
                 point --addr at its gRPC --listen address)"
            )
        })?;
    let response = client.check(request).await?.into_inner();
    print_decision(&response);
    let allowed = response.status.as_ref().is_some_and(|s| s.code == 0);
    let denied = matches!(
        response.http_response,
        Some(HttpResponse::DeniedResponse(_))
    );
    match (allowed, denied) {
        (true, false) => Ok(ExitCode::SUCCESS),
        (false, true) => Ok(ExitCode::FAILURE),
        _ => bail!("the answer is neither an allow (OK status) nor a deny (denied response)"),
    }
}

/// Request headers as Envoy's `headers` map carries them: lowercase names,
/// a header sent several times joined with `,` (so two `Authorization`
/// headers reach scopegate as both, never as the last one).
fn envoy_header_map(headers: Vec<(String, String)>) -> HashMap<String, String> {
    let mut map: HashMap<String, String> = HashMap::with_capacity(headers.len());
    for (name, value) in headers {
        map.entry(name.to_ascii_lowercase())
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    map
}

fn print_decision(response: &CheckResponse) {
    let header_line = |h: &envoy_types::pb::envoy::config::core::v3::HeaderValueOption| {
        h.header
            .as_ref()
            .map(|h| format!("{}: {}", h.key, h.value))
            .unwrap_or_default()
    };
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            out!("ALLOW");
            for h in &ok.headers {
                out!("  set    {}", header_line(h));
            }
            for name in &ok.headers_to_remove {
                out!("  remove {name}");
            }
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            let status = denied.status.as_ref().map_or(403, |s| s.code);
            let reason = response
                .status
                .as_ref()
                .map(|s| s.message.as_str())
                .unwrap_or("");
            out!("DENY {status} ({reason})");
            for h in &denied.headers {
                out!("  {}", header_line(h));
            }
            out!("  body: {}", denied.body);
        }
        Some(HttpResponse::ErrorResponse(_)) | None => {
            out!(
                "status code {}",
                response.status.as_ref().map_or(-1, |s| s.code)
            );
        }
    }
    if let Some(metadata) = &response.dynamic_metadata {
        let mut fields: Vec<_> = metadata
            .fields
            .iter()
            .filter_map(|(k, v)| match &v.kind {
                Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => {
                    Some(format!("{k}={s}"))
                }
                _ => None,
            })
            .collect();
        fields.sort();
        out!("  metadata: {}", fields.join(" "));
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected name=value, got {s:?}"))
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    s.split_once(':')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("expected name:value, got {s:?}"))
}

/// A size in bytes: a number, optionally followed by `Ki`, `Mi` or `Gi`
/// (`KiB`, `MiB`, `GiB` too), as in Kubernetes resource quantities.
fn parse_byte_size(value: &str) -> Result<u64, String> {
    let value = value.trim();
    let digits = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(digits);
    let shift = match unit {
        "" => 0,
        "Ki" | "KiB" => 10,
        "Mi" | "MiB" => 20,
        "Gi" | "GiB" => 30,
        _ => {
            return Err(format!(
                "{value:?}: expected bytes, or a number with Ki, Mi or Gi (e.g. 64Mi)"
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| {
            format!("{value:?}: expected bytes, or a number with Ki, Mi or Gi (e.g. 64Mi)")
        })
}

/// The nonce issuer of `--dpop-nonce-secret`: `None` (nonces off) without
/// a secret; an error for a secret shorter than 32 bytes.
fn dpop_nonces(secret: Option<&str>) -> anyhow::Result<Option<Arc<NonceIssuer>>> {
    secret
        .map(|secret| NonceIssuer::new(secret.as_bytes(), NonceIssuer::DEFAULT_PERIOD))
        .transpose()
        .map(|issuer| issuer.map(Arc::new))
        .context("--dpop-nonce-secret (SCOPEGATE_DPOP_NONCE_SECRET)")
}

#[cfg(test)]
mod dpop_nonce_tests {
    use super::dpop_nonces;

    #[test]
    fn nonces_are_off_without_a_secret_and_a_short_secret_is_refused() {
        assert!(dpop_nonces(None).unwrap().is_none());
        assert!(
            dpop_nonces(Some("0123456789abcdef0123456789abcdef"))
                .unwrap()
                .is_some()
        );
        let error = format!("{:#}", dpop_nonces(Some("too short")).unwrap_err());
        assert!(
            error.contains("--dpop-nonce-secret") && error.contains("9 bytes"),
            "{error}"
        );
    }
}

#[cfg(test)]
mod byte_size_tests {
    use super::parse_byte_size;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_byte_size("0"), Ok(0));
        assert_eq!(parse_byte_size("1024"), Ok(1024));
        assert_eq!(parse_byte_size("64Mi"), Ok(64 << 20));
        assert_eq!(parse_byte_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_byte_size("2Gi"), Ok(2 << 30));
        for bad in ["", "Mi", "64M", "64 Mi", "-1", "1B"] {
            assert!(parse_byte_size(bad).is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// The environment variable of `--some-flag`: `SCOPEGATE_SOME_FLAG`.
    fn env_name(long: &str) -> String {
        format!("SCOPEGATE_{}", long.to_ascii_uppercase().replace('-', "_"))
    }

    /// Every `--flag` of every subcommand, with the subcommand's name.
    fn flags() -> Vec<(String, clap::Arg)> {
        let cli = Cli::command();
        cli.get_subcommands()
            .flat_map(|sub| {
                sub.get_arguments()
                    .filter(|arg| arg.get_long().is_some())
                    .map(|arg| (sub.get_name().to_string(), arg.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn every_flag_has_the_env_var_named_after_it() {
        let flags = flags();
        assert!(flags.len() > 30, "found only {} flags", flags.len());
        for (command, arg) in flags {
            let long = arg.get_long().unwrap();
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            assert_eq!(
                env,
                Some(env_name(long)),
                "scopegate {command} --{long}: env var"
            );
        }
    }

    /// The README's command-line tables have one row per flag:
    /// `` | `--flag VALUE` | `SCOPEGATE_FLAG` | `default` | what it does | ``.
    #[test]
    fn readme_documents_every_flag_with_its_env_var_and_default() {
        let readme = include_str!("../README.md");
        for (command, arg) in flags() {
            let long = arg.get_long().unwrap();
            let prefix = format!("| `--{long}");
            let row = readme
                .lines()
                .find(|line| {
                    line.strip_prefix(&prefix)
                        .is_some_and(|rest| rest.starts_with([' ', '`']))
                })
                .unwrap_or_else(|| panic!("README: no row for scopegate {command} --{long}"));
            assert!(
                row.contains(&format!("`{}`", env_name(long))),
                "README: the row of --{long} lacks its env var: {row}"
            );
            for default in arg.get_default_values() {
                let default = default.to_string_lossy();
                assert!(
                    row.contains(&format!("`{default}`")),
                    "README: the row of --{long} lacks its default `{default}`: {row}"
                );
            }
        }
    }
}
