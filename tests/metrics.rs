//! `/metrics`, scraped over HTTP from a real scopegate after a known
//! sequence of Checks over a real gRPC connection, parsed as Prometheus
//! text: every counter matches the sequence exactly, and every metric the
//! issue names is there with bounded labels.
//!
//! The metrics are process-wide: the known sequence runs once, and the
//! tests read its one scrape.

mod support;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use promql_parser::parser::Expr;
use promql_parser::util::{ExprVisitor, walk_expr};

use prometheus_parse::{Sample, Scrape, Value};
use scopegate::jwks::JwksSettings;
use support::*;

const AUDIT_HOST: &str = "audit.example.com";

fn scrape_text(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|line| Ok(line.to_string()))).expect("Prometheus text format")
}

/// The one sample of `metric` whose labels include all of `labels`.
fn sample<'a>(scrape: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> &'a Sample {
    let matching: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "{metric}{labels:?} in {:#?}",
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .collect::<Vec<_>>()
    );
    matching[0]
}

fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    match sample(scrape, metric, labels).value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{metric}: not a single value: {other:?}"),
    }
}

fn decisions(scrape: &Scrape, policy: &str, decision: &str, reason: &str) -> f64 {
    value(
        scrape,
        "scopegate_check_decisions_total",
        &[
            ("policy", policy),
            ("decision", decision),
            ("reason", reason),
        ],
    )
}

/// The scrape after the known sequence, and what the assertions compare to.
struct Observed {
    scrape: Scrape,
    token: String,
    jwks_uri: String,
    jwks_fetches: usize,
    started: Duration,
}

static OBSERVED: tokio::sync::OnceCell<Observed> = tokio::sync::OnceCell::const_new();

async fn observed() -> &'static Observed {
    OBSERVED.get_or_init(run_known_sequence).await
}

async fn run_known_sequence() -> Observed {
    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let jwks = JwksServer::start(vec![KEY_A.jwk(), KEY_B.jwk()]).await;
    let enforced = policy_yaml("metered", &jwks.issuer(), &jwks.jwks_uri(), STANDARD_RULES);
    let audited = policy_yaml(
        "audited",
        &jwks.issuer(),
        &jwks.jwks_uri(),
        &format!("{STANDARD_RULES}  mode: audit\n"),
    )
    .replace(
        &format!(r#"hosts: ["{HOST}", "*.orders.internal"]"#),
        &format!(r#"hosts: ["{AUDIT_HOST}"]"#),
    );
    // No background refresh during the test: the fetch count is exact.
    let settings = JwksSettings {
        min_refetch_interval: Duration::from_secs(3600),
        ..JwksSettings::default()
    };
    let sg = Scopegate::start_with(&format!("{enforced}\n---\n{audited}"), settings).await;

    let token = KEY_A.sign(&claims(&jwks.issuer()));
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];
    for _ in 0..3 {
        assert_eq!(sg.check("GET", "/orders", &auth).await.http_status(), 200);
    }
    for _ in 0..2 {
        assert_eq!(sg.check("GET", "/orders", &[]).await.http_status(), 401);
    }
    assert_eq!(sg.check("GET", "/healthz", &[]).await.http_status(), 200);
    assert_eq!(sg.check("POST", "/orders", &auth).await.http_status(), 403);
    let forged = ROGUE.sign(&claims(&jwks.issuer()));
    sg.check_token("GET", "/orders", &forged)
        .await
        .assert_invalid_token();
    let unknown = sg.check_host("nobody.example.com", "GET", "/", &auth).await;
    assert_eq!(unknown.http_status(), 403);
    let audit = sg.check_host(AUDIT_HOST, "POST", "/orders", &auth).await;
    assert_eq!(audit.http_status(), 200);

    let response = reqwest::get(sg.admin_url("/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    Observed {
        scrape: scrape_text(&response.text().await.unwrap()),
        token,
        jwks_uri: jwks.jwks_uri(),
        jwks_fetches: jwks.fetches(),
        started,
    }
}

#[tokio::test]
async fn metrics_count_a_known_sequence_of_checks_exactly() {
    let Observed {
        scrape,
        token,
        jwks_uri: uri,
        jwks_fetches,
        started,
    } = observed().await;
    let metered = "test/metered";
    assert_eq!(decisions(scrape, metered, "allow", "valid_token"), 3.0);
    assert_eq!(decisions(scrape, metered, "allow", "anonymous"), 1.0);
    assert_eq!(decisions(scrape, metered, "deny", "missing_token"), 2.0);
    assert_eq!(
        decisions(scrape, metered, "deny", "insufficient_scope"),
        1.0
    );
    assert_eq!(decisions(scrape, metered, "deny", "bad_signature"), 1.0);
    assert_eq!(decisions(scrape, "none", "deny", "unknown_host"), 1.0);
    assert_eq!(
        decisions(scrape, "test/audited", "would_deny", "insufficient_scope"),
        1.0
    );

    // The duration histogram: one observation per Check, fine buckets.
    let histogram = sample(
        scrape,
        "scopegate_check_duration_seconds",
        &[("policy", metered), ("decision", "deny")],
    );
    let Value::Histogram(buckets) = &histogram.value else {
        panic!("not a histogram: {histogram:?}");
    };
    let bounds: Vec<f64> = buckets.iter().map(|b| b.less_than).collect();
    for bound in [0.000_01, 0.000_02, 0.000_05, 0.000_1, 0.001, 0.01] {
        assert!(bounds.contains(&bound), "{bound} in {bounds:?}");
    }
    assert_eq!(buckets.last().unwrap().less_than, f64::INFINITY);
    assert_eq!(buckets.last().unwrap().count, 4.0);
    let count = value(
        scrape,
        "scopegate_check_duration_seconds_count",
        &[("policy", metered), ("decision", "allow")],
    );
    assert_eq!(count, 4.0);

    // Keys: one fetch (at start), two keys, a recent success.
    let source = [("jwks_uri", uri.as_str())];
    assert_eq!(*jwks_fetches, 1);
    assert_eq!(
        value(
            scrape,
            "scopegate_jwks_fetches_total",
            &[("jwks_uri", uri), ("result", "success")]
        ),
        1.0
    );
    assert_eq!(value(scrape, "scopegate_jwks_keys", &source), 2.0);
    let last_success = value(
        scrape,
        "scopegate_jwks_last_success_timestamp_seconds",
        &source,
    );
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    assert!(
        (started.as_secs_f64() - 1.0..=now.as_secs_f64()).contains(&last_success),
        "{last_success}"
    );

    assert_eq!(
        value(scrape, "scopegate_policies", &[("state", "accepted")]),
        2.0
    );
    assert_eq!(
        value(scrape, "scopegate_policies", &[("state", "invalid")]),
        0.0
    );
    // The verified-token cache: the good token misses once, then hits on
    // the two other GETs, the POST and the audited POST (same issuer
    // settings); the forged token misses and is never cached.
    assert_eq!(value(scrape, "scopegate_token_cache_hits_total", &[]), 4.0);
    assert_eq!(
        value(scrape, "scopegate_token_cache_misses_total", &[]),
        2.0
    );
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(value(scrape, "scopegate_build_info", &version), 1.0);
    assert!(value(scrape, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(value(scrape, "process_open_fds", &[]) > 0.0);

    // Bounded labels only: never a subject, a client, a path or a token.
    let allowed_labels = [
        "policy", "decision", "reason", "jwks_uri", "result", "state", "version", "le",
    ];
    let mut seen: HashMap<&str, Vec<&str>> = HashMap::new();
    for s in scrape
        .samples
        .iter()
        .filter(|s| s.metric.starts_with("scopegate_"))
    {
        for (label, value) in s.labels.iter() {
            assert!(
                allowed_labels.contains(&label.as_str()),
                "{}: {label}",
                s.metric
            );
            assert!(!value.contains("auth0|user-1") && !value.contains(token.as_str()));
            seen.entry(label).or_default().push(value);
        }
    }
    assert!(seen["reason"].iter().all(|r| !r.is_empty()));
}

/// Collects the metric names a PromQL expression selects.
struct MetricNames(Vec<String>);

impl ExprVisitor for MetricNames {
    type Error = std::convert::Infallible;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Self::Error> {
        let selector = match expr {
            Expr::VectorSelector(vs) => Some(vs),
            Expr::MatrixSelector(ms) => Some(&ms.vs),
            _ => None,
        };
        self.0.extend(selector.and_then(|vs| vs.name.clone()));
        Ok(true)
    }
}

/// The PromQL of docs/observability.md (```promql blocks and alert `expr:`
/// lines) and of the Grafana dashboard, Grafana variables given values.
fn documented_queries() -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/observability.md")).unwrap();
    let mut queries: Vec<String> = doc
        .split("```promql\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().to_string())
        .collect();
    queries.extend(
        doc.lines()
            .filter_map(|line| line.trim().strip_prefix("expr: "))
            .map(str::to_string),
    );
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("manifests/grafana/scopegate-dashboard.json")).unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let targets = panels
        .iter()
        .filter_map(|p| p["targets"].as_array())
        .flatten();
    queries.extend(targets.map(|t| {
        t["expr"]
            .as_str()
            .unwrap()
            .replace("$__rate_interval", "5m")
            .replace("$policy", ".*")
            .replace("$job", ".*")
    }));
    queries
}

#[tokio::test]
async fn documented_queries_parse_and_select_served_metrics() {
    let Observed { scrape, .. } = observed().await;
    let mut served: Vec<String> = Vec::new();
    for sample in &scrape.samples {
        served.push(sample.metric.clone());
        if let Value::Histogram(_) = sample.value {
            served.push(format!("{}_bucket", sample.metric));
        }
    }
    let queries = documented_queries();
    assert!(queries.len() >= 25, "found only {} queries", queries.len());
    for query in &queries {
        let expr = promql_parser::parser::parse(query)
            .unwrap_or_else(|e| panic!("not PromQL: {query}: {e}"));
        let mut names = MetricNames(Vec::new());
        walk_expr(&mut names, &expr).unwrap();
        assert!(!names.0.is_empty(), "{query} selects no metric");
        for name in names.0 {
            assert!(served.contains(&name), "{query}: {name} is not served");
        }
    }
}
