//! The process's metrics: one OpenTelemetry meter, read by the Prometheus
//! exporter behind the admin `/metrics` and, when an OTLP endpoint is
//! configured ([`crate::telemetry`]), pushed over OTLP too.
//!
//! ```text
//!  Check path, JWKS caches, policy loads, token cache
//!        │  metrics::check_decision(…), jwks_fetch(…), token_cache_hit() …
//!        ▼
//!  SdkMeterProvider ─┬─► Prometheus reader ─► prometheus::Registry ─► GET /metrics
//!                    └─► PeriodicReader ─► OTLP (only when configured)
//! ```
//!
//! Instrument names follow OpenTelemetry (`scopegate.check.decisions`, unit
//! `s`); the Prometheus exporter turns them into Prometheus names
//! (`scopegate_check_decisions_total`, `scopegate_check_duration_seconds`),
//! as an OpenTelemetry Collector's Prometheus exporter does. Every label
//! value comes from a bounded set: policy ids, JWKS sources, and `&'static`
//! reasons; never a subject, a client or a path.
//!
//! The meter provider is built on first use; [`crate::telemetry::init`]
//! builds it earlier with the OTLP reader when one is configured.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

use crate::jwks::JwksCache;
use crate::policy::{ReportedState, SnapshotHandle};

/// `scopegate_check_duration_seconds` bucket bounds: 1-2-3-5-7.5 steps from
/// 10 µs to 10 ms (where Checks live: a rejected header takes microseconds,
/// a signature check tens of microseconds), coarser up to a JWKS refetch's
/// 5 s timeout.
pub const CHECK_DURATION_BUCKETS: [f64; 25] = [
    0.000_005, 0.000_01, 0.000_02, 0.000_03, 0.000_05, 0.000_075, 0.000_1, 0.000_2, 0.000_3,
    0.000_5, 0.000_75, 0.001, 0.002, 0.003, 0.005, 0.007_5, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// The `policy` label of a Check that no policy served.
pub const NO_POLICY: &str = "none";

/// The Prometheus exposition content type.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a Check decided, as the `decision` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionLabel {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
    /// An audit-mode policy would have denied it, and allowed it.
    WouldDeny,
}

impl DecisionLabel {
    /// The label value: `allow`, `deny` or `would_deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionLabel::Allow => "allow",
            DecisionLabel::Deny => "deny",
            DecisionLabel::WouldDeny => "would_deny",
        }
    }
}

/// The metrics pipeline and its instruments.
struct Metrics {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    check_decisions: Counter<u64>,
    check_duration: Histogram<f64>,
    jwks_fetches: Counter<u64>,
    token_cache_hits: Counter<u64>,
    token_cache_misses: Counter<u64>,
    policy_reloads: Counter<u64>,
    status_writes: Counter<u64>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Key caches whose state the JWKS gauges report (held weakly: a dropped
/// cache's series disappear).
static JWKS_CACHES: Mutex<Vec<Weak<JwksCache>>> = Mutex::new(Vec::new());

/// The token cache whose size the `scopegate_token_cache_{bytes,entries}`
/// gauges report (the last one given; held weakly).
static TOKEN_CACHE: Mutex<Option<Weak<crate::authz::TokenCache>>> = Mutex::new(None);

/// Reports `cache`'s size as `scopegate_token_cache_bytes` and
/// `scopegate_token_cache_entries` for as long as it lives.
pub fn watch_token_cache(cache: &Arc<crate::authz::TokenCache>) {
    *TOKEN_CACHE.lock().expect("never poisoned") = Some(Arc::downgrade(cache));
}

fn live_token_cache() -> Option<Arc<crate::authz::TokenCache>> {
    TOKEN_CACHE
        .lock()
        .expect("never poisoned")
        .as_ref()?
        .upgrade()
}

/// The policies `scopegate_policies{state}` counts (the last handle given).
static SNAPSHOT: Mutex<Option<SnapshotHandle>> = Mutex::new(None);

/// Counts the policies of `snapshot` by reported state as
/// `scopegate_policies{state}` at every collection, so that a policy whose
/// keys were never fetched counts as `jwks_unavailable` while it is.
pub fn watch_policies(snapshot: &SnapshotHandle) {
    *SNAPSHOT.lock().expect("never poisoned") = Some(snapshot.clone());
}

/// The runtime whose live tasks `scopegate_runtime_tasks` counts.
static RUNTIME: OnceLock<tokio::runtime::Handle> = OnceLock::new();

/// Reports the live tasks of this runtime as the `scopegate_runtime_tasks`
/// gauge (the first runtime given wins). A steady count under steady load
/// shows that nothing leaks tasks.
pub fn observe_runtime(runtime: tokio::runtime::Handle) {
    let _ = RUNTIME.set(runtime);
}

/// [`install`] was called after the metrics were already in use.
#[derive(Debug, thiserror::Error)]
#[error("the metrics pipeline is already running; install it before serving")]
pub struct AlreadyInstalled;

/// Builds the pipeline with an extra OTLP reader. Call before anything
/// records a metric (i.e. before `serve::start`).
pub fn install(
    otlp: PeriodicReader<opentelemetry_otlp::MetricExporter>,
) -> Result<(), AlreadyInstalled> {
    let mut otlp = Some(otlp);
    METRICS.get_or_init(|| Metrics::new(otlp.take()));
    match otlp {
        None => Ok(()),
        Some(_) => Err(AlreadyInstalled),
    }
}

fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| Metrics::new(None))
}

impl Metrics {
    fn new(otlp: Option<PeriodicReader<opentelemetry_otlp::MetricExporter>>) -> Self {
        let registry = prometheus::Registry::new();
        let prometheus_reader = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .scope_info_enabled(false)
            .build()
            .expect("a fresh registry accepts the exporter");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("a fresh registry accepts the process collector");
        let mut builder = SdkMeterProvider::builder()
            .with_resource(crate::telemetry::resource())
            .with_reader(prometheus_reader);
        if let Some(otlp) = otlp {
            builder = builder.with_reader(otlp);
        }
        let provider = builder.build();
        let meter = provider.meter("scopegate");
        register_observed_gauges(&meter);
        Metrics {
            check_decisions: meter
                .u64_counter("scopegate.check.decisions")
                .with_description(
                    "Checks by policy, decision (allow, deny, would_deny) and reason.",
                )
                .build(),
            check_duration: meter
                .f64_histogram("scopegate.check.duration")
                .with_unit("s")
                .with_description("Time to answer a Check, by policy and decision.")
                .with_boundaries(CHECK_DURATION_BUCKETS.to_vec())
                .build(),
            jwks_fetches: meter
                .u64_counter("scopegate.jwks.fetches")
                .with_description("JWKS fetches by source and result (success or the error class).")
                .build(),
            token_cache_hits: meter
                .u64_counter("scopegate.token_cache.hits")
                .with_description("Checks whose token was found in the verified-token cache.")
                .build(),
            token_cache_misses: meter
                .u64_counter("scopegate.token_cache.misses")
                .with_description("Checks whose token had to be verified.")
                .build(),
            policy_reloads: meter
                .u64_counter("scopegate.policy.reloads")
                .with_description("Reloads of the policy files by result (success, invalid).")
                .build(),
            status_writes: meter
                .u64_counter("scopegate.status.writes")
                .with_description(
                    "TokenPolicy status writes by the leader, by result (success, error).",
                )
                .build(),
            provider,
            registry,
        }
    }
}

/// Gauges read at collection time: build info and the key caches' health.
fn register_observed_gauges(meter: &Meter) {
    meter
        .u64_observable_gauge("scopegate.build_info")
        .with_description("scopegate version.")
        .with_callback(|observer| {
            observer.observe(1, &[KeyValue::new("version", env!("CARGO_PKG_VERSION"))]);
        })
        .build();
    meter
        .u64_observable_gauge("scopegate.runtime.tasks")
        .with_description("Live tokio tasks.")
        .with_callback(|observer| {
            if let Some(runtime) = RUNTIME.get() {
                observer.observe(runtime.metrics().num_alive_tasks() as u64, &[]);
            }
        })
        .build();
    meter
        .u64_observable_gauge("scopegate.policies")
        .with_description("Policies by state (accepted, jwks_unavailable, invalid, host_conflict).")
        .with_callback(|observer| {
            let Some(snapshot) = SNAPSHOT.lock().expect("never poisoned").clone() else {
                return;
            };
            let snapshot = snapshot.load();
            let mut counts = [0u64; ReportedState::ALL.len()];
            for (_, _, reported) in snapshot.reported() {
                counts[ReportedState::ALL
                    .iter()
                    .position(|s| *s == reported)
                    .expect("ALL lists every state")] += 1;
            }
            for (state, count) in ReportedState::ALL.iter().zip(counts) {
                observer.observe(count, &[KeyValue::new("state", state.metric_label())]);
            }
        })
        .build();
    meter
        .u64_observable_gauge("scopegate.token_cache.bytes")
        .with_description(
            "Bytes the verified-token cache holds, counted against --token-cache-max-bytes.",
        )
        .with_callback(|observer| {
            if let Some(cache) = live_token_cache() {
                observer.observe(cache.weighted_bytes(), &[]);
            }
        })
        .build();
    meter
        .u64_observable_gauge("scopegate.token_cache.entries")
        .with_description("Entries in the verified-token cache.")
        .with_callback(|observer| {
            if let Some(cache) = live_token_cache() {
                observer.observe(cache.entry_count(), &[]);
            }
        })
        .build();
    meter
        .u64_observable_gauge("scopegate.jwks.keys")
        .with_description("Usable keys per JWKS source.")
        .with_callback(|observer| {
            for (labels, state) in live_jwks_states() {
                observer.observe(state.keys as u64, &labels);
            }
        })
        .build();
    meter
        .f64_observable_gauge("scopegate.jwks.last_success_timestamp")
        .with_unit("s")
        .with_description(
            "When keys were last fetched successfully, per JWKS source (Unix time; 0: never).",
        )
        .with_callback(|observer| {
            // 0 for a source that never succeeded, so that an alert on
            // the time since the last success fires for it too.
            for (labels, state) in live_jwks_states() {
                let at = state.last_success.map_or(0.0, unix_seconds);
                observer.observe(at, &labels);
            }
        })
        .build();
}

fn live_jwks_states() -> Vec<(Vec<KeyValue>, crate::jwks::JwksState)> {
    let mut caches = JWKS_CACHES.lock().expect("never poisoned");
    caches.retain(|cache| cache.strong_count() > 0);
    caches
        .iter()
        .filter_map(Weak::upgrade)
        .map(|cache| (jwks_labels(&cache), cache.state()))
        .collect()
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The labels of a key source: `jwks_uri`, and `issuer` for a discovery
/// source (two issuers that differ by a trailing slash share the discovery
/// URL, not the source: each gets its own series).
fn jwks_labels(cache: &JwksCache) -> Vec<KeyValue> {
    let mut labels = vec![KeyValue::new("jwks_uri", cache.metric_label().clone())];
    if let Some(issuer) = cache.source().issuer() {
        labels.push(KeyValue::new("issuer", issuer.to_string()));
    }
    labels
}

/// Records one Check: `scopegate_check_decisions_total` and
/// `scopegate_check_duration_seconds`.
pub fn check_decision(
    policy: Option<&Arc<str>>,
    decision: DecisionLabel,
    reason: &'static str,
    elapsed: Duration,
) {
    let metrics = metrics();
    let policy = match policy {
        Some(id) => KeyValue::new("policy", id.clone()),
        None => KeyValue::new("policy", NO_POLICY),
    };
    let decision = KeyValue::new("decision", decision.as_str());
    metrics
        .check_duration
        .record(elapsed.as_secs_f64(), &[policy.clone(), decision.clone()]);
    metrics
        .check_decisions
        .add(1, &[policy, decision, KeyValue::new("reason", reason)]);
}

/// Records one JWKS fetch of `cache`: `result` is `success` or an error
/// class (`scopegate_jwks_fetches_total`).
pub fn jwks_fetch(cache: &JwksCache, result: &'static str) {
    let mut labels = jwks_labels(cache);
    labels.push(KeyValue::new("result", result));
    metrics().jwks_fetches.add(1, &labels);
}

/// Reports `cache`'s keys and last success (`scopegate_jwks_keys`,
/// `scopegate_jwks_last_success_timestamp_seconds`) for as long as it lives.
pub fn watch_jwks_cache(cache: &Arc<JwksCache>) {
    JWKS_CACHES
        .lock()
        .expect("never poisoned")
        .push(Arc::downgrade(cache));
}

/// Starts `scopegate_policy_reloads_total` at 0 for both results, so that
/// an alert on its increase sees the first failure.
pub fn policy_reloads_watched() {
    for result in ["success", "invalid"] {
        metrics()
            .policy_reloads
            .add(0, &[KeyValue::new("result", result)]);
    }
}

/// A reload of the policy files (`scopegate_policy_reloads_total{result}`).
pub fn policy_reload(result: &'static str) {
    metrics()
        .policy_reloads
        .add(1, &[KeyValue::new("result", result)]);
}

/// A TokenPolicy status write (`scopegate_status_writes_total{result}`).
pub fn status_write(result: &'static str) {
    metrics()
        .status_writes
        .add(1, &[KeyValue::new("result", result)]);
}

/// The verified-token cache answered a Check from the cache
/// (`scopegate_token_cache_hits_total`).
pub fn token_cache_hit() {
    metrics().token_cache_hits.add(1, &[]);
}

/// The verified-token cache did not hold the token
/// (`scopegate_token_cache_misses_total`).
pub fn token_cache_miss() {
    metrics().token_cache_misses.add(1, &[]);
}

/// Every metric in the Prometheus text format, for `/metrics`.
pub fn prometheus_text() -> String {
    let families = metrics().registry.gather();
    prometheus::TextEncoder::new()
        .encode_to_string(&families)
        .unwrap_or_else(|error| {
            tracing::error!(%error, "cannot encode metrics");
            String::new()
        })
}

/// Pushes the last OTLP export and stops the pipeline. Blocking: call from
/// a blocking task.
pub fn shutdown() {
    if let Some(metrics) = METRICS.get()
        && let Err(error) = metrics.provider.shutdown()
    {
        tracing::warn!(%error, "metrics pipeline shutdown");
    }
}
