//! A load generator for the fault and soak tests: a few gRPC connections send
//! Checks for [`HOST`] in a loop, cycling through a mix of token kinds, and
//! every answer is recorded per phase: allowed / denied / failed per kind,
//! and latencies. The test decides what each kind may get in each phase.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;

use super::{Checked, bearer_request};

/// Builds the Check a sender sends for a token.
pub type RequestFor = Arc<dyn Fn(&str) -> CheckRequest + Send + Sync>;

/// One kind of token in the mix, e.g. "good" or "forged".
pub struct TokenKind {
    pub name: &'static str,
    /// Sent in turn; a kind with one token sends it every time.
    pub tokens: Vec<String>,
    /// Sent this many times per round of the mix.
    pub weight: usize,
}

/// What happened to the Checks of one kind in one phase.
#[derive(Debug, Default, Clone)]
pub struct KindCounts {
    pub allowed: u64,
    /// Denials by HTTP status.
    pub denied: HashMap<i32, u64>,
    /// Checks that got no answer (a gRPC or transport error).
    pub failed: u64,
    /// Latency of every answered Check, in microseconds.
    latencies_us: Vec<u32>,
}

impl KindCounts {
    pub fn denied_total(&self) -> u64 {
        self.denied.values().sum()
    }
}

/// Everything recorded in one phase.
#[derive(Debug, Default, Clone)]
pub struct PhaseReport {
    pub name: String,
    pub elapsed: Duration,
    pub kinds: HashMap<&'static str, KindCounts>,
}

impl PhaseReport {
    pub fn kind(&self, name: &str) -> KindCounts {
        self.kinds.get(name).cloned().unwrap_or_default()
    }

    pub fn checks(&self) -> u64 {
        self.kinds
            .values()
            .map(|k| k.allowed + k.denied_total() + k.failed)
            .sum()
    }

    pub fn failed(&self) -> u64 {
        self.kinds.values().map(|k| k.failed).sum()
    }

    /// The `q` quantile (0..=1) of the latencies of the Checks of `kinds`
    /// (all kinds if empty), in microseconds.
    pub fn latency_us(&self, q: f64, kinds: &[&str]) -> u32 {
        let mut sorted: Vec<u32> = self
            .kinds
            .iter()
            .filter(|(name, _)| kinds.is_empty() || kinds.contains(name))
            .flat_map(|(_, counts)| counts.latencies_us.iter().copied())
            .collect();
        sorted.sort_unstable();
        match sorted.len() {
            0 => 0,
            n => sorted[((n - 1) as f64 * q).round() as usize],
        }
    }

    /// One line: rate, latency quantiles and counts per kind.
    pub fn summary(&self) -> String {
        let rate = self.checks() as f64 / self.elapsed.as_secs_f64().max(1e-9);
        let mut kinds: Vec<_> = self.kinds.iter().collect();
        kinds.sort_by_key(|(name, _)| *name);
        let kinds: Vec<String> = kinds
            .iter()
            .map(|(name, c)| format!("{name} {}/{}/{}", c.allowed, c.denied_total(), c.failed))
            .collect();
        let good = ["good-a"];
        format!(
            "{:<16} {:>6.0} checks/s  all: p50 {:>6} p99 {:>6} max {:>7} µs  good-a: p99 {:>6} µs  (allowed/denied/failed: {})",
            self.name,
            rate,
            self.latency_us(0.5, &[]),
            self.latency_us(0.99, &[]),
            self.latency_us(1.0, &[]),
            self.latency_us(0.99, &good),
            kinds.join(", ")
        )
    }
}

struct Recorder {
    current: PhaseReport,
    started: Instant,
}

/// A running load; dropped or [`Load::stop`]ped, its tasks end.
pub struct Load {
    recorder: Arc<Mutex<Recorder>>,
    running: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `connections` senders against `addr`, each with its own HTTP/2
    /// connection; with `rate` (Checks per second in all), they pace
    /// themselves, otherwise they send as fast as answers come. Each Check
    /// is a [`bearer_request`].
    pub async fn start(
        addr: SocketAddr,
        kinds: Vec<TokenKind>,
        connections: usize,
        rate: Option<f64>,
        first_phase: &str,
    ) -> Load {
        Self::start_with(
            addr,
            kinds,
            connections,
            rate,
            first_phase,
            Arc::new(bearer_request),
        )
        .await
    }

    /// [`Load::start`], with the Check for a token built by `request`.
    pub async fn start_with(
        addr: SocketAddr,
        kinds: Vec<TokenKind>,
        connections: usize,
        rate: Option<f64>,
        first_phase: &str,
        request: RequestFor,
    ) -> Load {
        let schedule: Arc<Vec<usize>> = Arc::new(
            kinds
                .iter()
                .enumerate()
                .flat_map(|(k, kind)| std::iter::repeat_n(k, kind.weight))
                .collect(),
        );
        let sent: Arc<Vec<AtomicUsize>> =
            Arc::new(kinds.iter().map(|_| AtomicUsize::new(0)).collect());
        let kinds = Arc::new(kinds);
        let recorder = Arc::new(Mutex::new(Recorder {
            current: PhaseReport {
                name: first_phase.to_string(),
                ..Default::default()
            },
            started: Instant::now(),
        }));
        let running = Arc::new(AtomicBool::new(true));
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let client = AuthorizationClient::new(channel);
            let period = rate.map(|r| Duration::from_secs_f64(connections as f64 / r));
            let sender = Sender {
                client,
                kinds: kinds.clone(),
                schedule: schedule.clone(),
                next: next.clone(),
                sent: sent.clone(),
                recorder: recorder.clone(),
                running: running.clone(),
                period,
                request: request.clone(),
            };
            tasks.push(tokio::spawn(sender.run()));
        }
        Load {
            recorder,
            running,
            tasks,
        }
    }

    /// Ends the current phase and starts recording `next` one; returns the
    /// report of the phase that ended.
    pub fn next_phase(&self, next: &str) -> PhaseReport {
        let mut recorder = self.recorder.lock().unwrap();
        let fresh = PhaseReport {
            name: next.to_string(),
            ..Default::default()
        };
        let mut ended = std::mem::replace(&mut recorder.current, fresh);
        ended.elapsed = recorder.started.elapsed();
        recorder.started = Instant::now();
        ended
    }

    /// Stops sending and returns the report of the last phase.
    pub async fn stop(mut self) -> PhaseReport {
        self.running.store(false, Ordering::Release);
        for task in self.tasks.drain(..) {
            task.await.unwrap();
        }
        self.next_phase("")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Release);
    }
}

/// One connection's sending loop.
struct Sender {
    client: AuthorizationClient<tonic::transport::Channel>,
    kinds: Arc<Vec<TokenKind>>,
    /// Kind indexes, each repeated by its weight.
    schedule: Arc<Vec<usize>>,
    /// Checks sent by all senders (picks the next kind from `schedule`).
    next: Arc<AtomicUsize>,
    /// Checks sent per kind (picks the next token of a kind).
    sent: Arc<Vec<AtomicUsize>>,
    recorder: Arc<Mutex<Recorder>>,
    running: Arc<AtomicBool>,
    /// Time between two Checks of this sender, when paced.
    period: Option<Duration>,
    request: RequestFor,
}

impl Sender {
    async fn run(self) {
        let Sender {
            mut client,
            kinds,
            schedule,
            next,
            sent,
            recorder,
            running,
            period,
            request,
        } = self;
        let mut pace = period.map(|p| {
            let mut interval = tokio::time::interval(p);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        while running.load(Ordering::Acquire) {
            if let Some(pace) = pace.as_mut() {
                pace.tick().await;
            }
            let k = schedule[next.fetch_add(1, Ordering::Relaxed) % schedule.len()];
            let kind = &kinds[k];
            let token = &kind.tokens[sent[k].fetch_add(1, Ordering::Relaxed) % kind.tokens.len()];
            let started = Instant::now();
            let answer = client.check(request(token)).await;
            let latency = started.elapsed();
            let mut recorder = recorder.lock().unwrap();
            let phase = &mut recorder.current;
            let counts = phase.kinds.entry(kind.name).or_default();
            match answer {
                Ok(response) => {
                    let checked = Checked(response.into_inner());
                    if checked.grpc_code() == 0 {
                        counts.allowed += 1;
                    } else {
                        *counts.denied.entry(checked.http_status()).or_default() += 1;
                    }
                    counts
                        .latencies_us
                        .push(latency.as_micros().min(u32::MAX as u128) as u32);
                }
                Err(_) => counts.failed += 1,
            }
        }
    }
}

/// Kinds in [`mixed_tokens`] that must never be allowed, whatever happens.
pub const NEVER_ALLOWED: &[&str] = &[
    "forged",
    "expired",
    "wrong-aud",
    "hs256-confused",
    "alg-none",
    "unknown-kid",
];

/// Signs tokens with a key no JWKS ever publishes.
static UNPUBLISHED: std::sync::LazyLock<super::RsaKey> =
    std::sync::LazyLock::new(|| super::RsaKey::generate("key-z"));

/// `count` distinct valid key-a tokens for `issuer` (`sub` numbered from
/// `first`), signed on all cores.
pub async fn fresh_tokens(issuer: &str, first: usize, count: usize) -> Vec<String> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = count.div_ceil(threads).max(1);
    let signers: Vec<_> = (first..first + count)
        .step_by(chunk)
        .map(|start| {
            let issuer = issuer.to_string();
            let end = (start + chunk).min(first + count);
            tokio::task::spawn_blocking(move || {
                (start..end)
                    .map(|n| super::KEY_A.sign(&numbered_claims(&issuer, n)))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut tokens = Vec::with_capacity(count);
    for signer in signers {
        tokens.extend(signer.await.unwrap());
    }
    tokens
}

/// Valid claims for `issuer` with `sub` `auth0|user-N`.
fn numbered_claims(issuer: &str, n: usize) -> serde_json::Value {
    let mut claims = super::claims(issuer);
    claims["sub"] = format!("auth0|user-{n}").into();
    claims
}

/// The token mix of the fault and soak tests, for `issuer`:
/// * `good-a`: `good` distinct valid tokens signed by [`super::KEY_A`];
/// * `good-b`: up to 100 valid tokens signed by [`super::KEY_B`] (allowed
///   only once the issuer publishes key-b);
/// * one token of each [`NEVER_ALLOWED`] kind: a signature by a rogue key
///   with key-a's `kid`, an expired token, a token for another audience, an
///   HS256 token keyed with key-a's public key, `alg: none`, and an unknown
///   `kid` (which also makes scopegate refetch the JWKS, rate-limited).
pub fn mixed_tokens(issuer: &str, good: usize) -> Vec<TokenKind> {
    use super::{KEY_A, KEY_B, ROGUE, b64, claims, hmac_forged};
    let numbered = |n| numbered_claims(issuer, n);
    let mut expired = claims(issuer);
    expired["exp"] = (super::now() - 3600).into();
    let mut wrong_aud = claims(issuer);
    wrong_aud["aud"] = "https://billing.example.com/api".into();
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","kid":"key-a"}"#),
        b64(claims(issuer).to_string().as_bytes())
    );
    let one = |name, token| TokenKind {
        name,
        tokens: vec![token],
        weight: 1,
    };
    vec![
        TokenKind {
            name: "good-a",
            tokens: (0..good).map(|n| KEY_A.sign(&numbered(n))).collect(),
            weight: 6,
        },
        TokenKind {
            name: "good-b",
            tokens: (0..good.div_ceil(4).min(100))
                .map(|n| KEY_B.sign(&numbered(n)))
                .collect(),
            weight: 2,
        },
        one("forged", ROGUE.sign(&claims(issuer))),
        one("expired", KEY_A.sign(&expired)),
        one("wrong-aud", KEY_A.sign(&wrong_aud)),
        one(
            "hs256-confused",
            hmac_forged("HS256", &KEY_A.public_key_der(), &claims(issuer)),
        ),
        one("alg-none", alg_none),
        one("unknown-kid", UNPUBLISHED.sign(&claims(issuer))),
    ]
}
