//! The Check decision, from a decoded `CheckRequest` to a `CheckResponse`
//! (policy lookup, token verification or cache hit, rules, response), with
//! real signed tokens and keys fetched from a real JWKS server on loopback.
//!
//! ```sh
//! nice -n 10 cargo bench --bench decision
//! ```
//!
//! Criterion reports the mean per Check; at the end a latency report times
//! single Checks and prints p50/p99/p99.9 for a cache hit and an RS256 miss.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use scopegate::authz::{CheckService, RequestHeader, TokenCache, TokenCacheSettings};
use scopegate::jwks::{JwksRegistry, JwksSettings};
use scopegate::policy::{SnapshotHandle, files};
use scopegate::pop::{NormalizedUri, ProofContext, jwk_thumbprint, verify_proof};
use support::{
    EcKey, EdKey, JwksServer, KEY_A, check_request, numbered_claims, numbered_host,
    numbered_policies_yaml,
};

/// A scopegate decision core (no gRPC server) over `policies` policies that
/// all trust one JWKS server, each requiring `scopes` scopes on `GET /orders/*`.
struct Bench {
    runtime: tokio::runtime::Runtime,
    jwks: JwksServer,
    _dir: tempfile::TempDir,
    snapshot: SnapshotHandle,
}

impl Bench {
    fn new(keys: Vec<serde_json::Value>, policies: usize, scopes: usize) -> Self {
        Self::with_policies(keys, |jwks| {
            numbered_policies_yaml(policies, &jwks.issuer(), &jwks.jwks_uri(), scopes)
        })
    }

    /// A decision core over the policies `yaml` writes for the JWKS server.
    fn with_policies(
        keys: Vec<serde_json::Value>,
        yaml: impl FnOnce(&JwksServer) -> String,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let jwks = runtime.block_on(JwksServer::start(keys));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policies.yaml"), yaml(&jwks)).unwrap();
        let snapshot = SnapshotHandle::default();
        runtime.block_on(async {
            let registry = JwksRegistry::new(JwksSettings::default());
            files::load_and_publish(&[dir.path().to_path_buf()], &registry, &snapshot)
                .expect("the bench policies are valid");
            while registry.states().iter().any(|s| s.keys == 0) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // The registry holds caches weakly; the snapshot keeps them alive.
        });
        Bench {
            runtime,
            jwks,
            _dir: dir,
            snapshot,
        }
    }

    fn service(&self, cache: TokenCache) -> CheckService {
        CheckService::new(self.snapshot.clone(), Arc::new(cache))
    }

    fn issuer(&self) -> String {
        self.jwks.issuer()
    }

    /// Runs one Check and asserts it was allowed (a bench of a denial would
    /// measure the wrong path).
    fn check_allowed(&self, service: &CheckService, request: &CheckRequest) {
        let response = self.runtime.block_on(service.check_request(request));
        assert_eq!(
            response.status.map(|s| s.code),
            Some(0),
            "the bench request must be allowed"
        );
    }
}

/// `GET /orders/42` on policy `index`'s host with this bearer token.
fn request(index: usize, token: &str) -> CheckRequest {
    let host = numbered_host(index);
    let auth = format!("Bearer {token}");
    check_request(
        &host,
        "GET",
        "/orders/42",
        &[("authorization", &auth)],
        HashMap::new(),
    )
}

fn cache() -> TokenCache {
    TokenCache::new(TokenCacheSettings::default())
}

fn bench_hit_and_miss(c: &mut Criterion) {
    let ec = EcKey::generate("ec-1");
    let ed = EdKey::generate("ed-1");
    let bench = Bench::new(vec![KEY_A.jwk(), ec.jwk(), ed.jwk()], 1, 1);
    let claims = numbered_claims(&bench.issuer(), 1);
    let mut group = c.benchmark_group("check");

    let rs256 = request(0, &KEY_A.sign(&claims));
    let cached = bench.service(cache());
    bench.check_allowed(&cached, &rs256); // warms the cache
    group.bench_function("hit", |b| {
        b.to_async(&bench.runtime)
            .iter(|| cached.check_request(&rs256))
    });

    let uncached = bench.service(TokenCache::disabled());
    for (name, request) in [
        ("miss/RS256", rs256.clone()),
        ("miss/ES256", request(0, &ec.sign(&claims))),
        ("miss/EdDSA", request(0, &ed.sign(&claims))),
    ] {
        bench.check_allowed(&uncached, &request);
        group.bench_function(name, |b| {
            b.to_async(&bench.runtime)
                .iter(|| uncached.check_request(&request))
        });
    }
    group.finish();
}

fn bench_policies(c: &mut Criterion) {
    let mut group = c.benchmark_group("check/hit/policies");
    for policies in [1, 10_000] {
        let bench = Bench::new(vec![KEY_A.jwk()], policies, 1);
        let token = KEY_A.sign(&numbered_claims(&bench.issuer(), 1));
        let request = request(policies / 2, &token);
        let service = bench.service(cache());
        bench.check_allowed(&service, &request);
        group.bench_with_input(BenchmarkId::from_parameter(policies), &request, |b, r| {
            b.to_async(&bench.runtime).iter(|| service.check_request(r))
        });
    }
    group.finish();
}

fn bench_scopes(c: &mut Criterion) {
    for (group_name, cached) in [("check/hit/scopes", true), ("check/miss/scopes", false)] {
        let mut group = c.benchmark_group(group_name);
        for scopes in [1, 50] {
            let bench = Bench::new(vec![KEY_A.jwk()], 1, scopes);
            let request = request(0, &KEY_A.sign(&numbered_claims(&bench.issuer(), scopes)));
            let service = bench.service(if cached {
                cache()
            } else {
                TokenCache::disabled()
            });
            bench.check_allowed(&service, &request);
            group.bench_with_input(BenchmarkId::from_parameter(scopes), &request, |b, r| {
                b.to_async(&bench.runtime).iter(|| service.check_request(r))
            });
        }
        group.finish();
    }
}

/// The extra work of a DPoP Check: verifying an ES256 proof (one more
/// signature, the `jwk` parse, `htu` normalization, `ath` and the RFC 7638
/// thumbprint), without the replay-store round trip.
/// The policy language's cost on a cached Check: a `when` condition
/// (`claims.sub == request.params.user`) against the same rule without it,
/// and a policy with two `issuers` against one.
fn bench_policy_language(c: &mut Criterion) {
    const SECOND_ISSUER: &str = "https://login.example.com/";
    let bench = Bench::with_policies(vec![KEY_A.jwk()], |jwks| {
        format!(
            r#"apiVersion: scopegate.dev/v1alpha1
kind: TokenPolicy
metadata: {{name: lang, namespace: bench}}
spec:
  hosts: ["{host}"]
  issuers:
    - {{url: "{issuer}", jwksUri: "{uri}", audiences: ["{aud}"]}}
    - {{url: "{SECOND_ISSUER}", jwksUri: "{uri}", audiences: ["{aud}"]}}
  rules:
    - paths: ["/users/{{user}}/orders/*"]
      when: ["claims.sub == request.params.user"]
    - paths: ["/plain/{{user}}/orders/*"]
"#,
            host = numbered_host(0),
            issuer = jwks.issuer(),
            uri = jwks.jwks_uri(),
            aud = support::AUDIENCE,
        )
    });
    let claims = numbered_claims(&bench.issuer(), 0);
    let token = KEY_A.sign(&claims);
    let mut second = claims.clone();
    second["iss"] = serde_json::json!(SECOND_ISSUER);
    let second_token = KEY_A.sign(&second);
    let on = |path: &str, token: &str| {
        let auth = format!("Bearer {token}");
        check_request(
            &numbered_host(0),
            "GET",
            path,
            &[("authorization", &auth)],
            HashMap::new(),
        )
    };
    let user = "auth0|user-1";
    let mut group = c.benchmark_group("check/hit/language");
    let cached = bench.service(cache());
    for (name, request) in [
        (
            "no_condition",
            on(&format!("/plain/{user}/orders/1"), &token),
        ),
        ("condition", on(&format!("/users/{user}/orders/1"), &token)),
        (
            "second_issuer",
            on(&format!("/plain/{user}/orders/1"), &second_token),
        ),
    ] {
        bench.check_allowed(&cached, &request);
        group.bench_function(name, |b| {
            b.to_async(&bench.runtime)
                .iter(|| cached.check_request(&request))
        });
    }
    group.finish();
    let mut group = c.benchmark_group("check/miss/language");
    let uncached = bench.service(TokenCache::disabled());
    for (name, request) in [
        (
            "first_issuer",
            on(&format!("/plain/{user}/orders/1"), &token),
        ),
        (
            "second_issuer",
            on(&format!("/plain/{user}/orders/1"), &second_token),
        ),
    ] {
        bench.check_allowed(&uncached, &request);
        group.bench_function(name, |b| {
            b.to_async(&bench.runtime)
                .iter(|| uncached.check_request(&request))
        });
    }
    group.finish();
}

/// The widest `n` for which `source(n)` is accepted (under the cost budget
/// and the depth bound): the costliest condition of that shape, if any is.
fn costliest(source: impl Fn(usize) -> String) -> Option<String> {
    let accepted = |n: &usize| {
        scopegate::policy::conditions::Condition::compile(&source(*n))
            .is_ok_and(|c| c.cost() <= scopegate::policy::cost::BUDGET)
    };
    (1..512).take_while(accepted).last().map(source)
}

/// The costliest conditions `validate` accepts, each through a whole Check
/// (cache hit) on the largest claims and request conditions evaluate on
/// (DESIGN.md §8: under 1 ms per Check). `cost` is the estimate.
fn bench_costliest_conditions(c: &mut Criterion) {
    let shapes = [
        // One comprehension over the largest claims list, its body as long
        // as the budget allows.
        (
            "claims_all",
            costliest(|n| format!("claims.list.all(x, {})", vec!["x == 0"; n].join(" && "))),
        ),
        // The same over every header of the largest request.
        (
            "headers_all",
            costliest(|n| {
                format!(
                    "request.headers.all(k, {})",
                    vec!["k != \"\""; n].join(" && ")
                )
            }),
        ),
        // A comprehension over the element inside one over the list.
        (
            "claims_nested",
            costliest(|n| {
                format!(
                    "claims.list.map(x, [x, x]).all(p, p.all(x, {}))",
                    vec!["x == 0"; n].join(" && ")
                )
            }),
        ),
        // The deepest expression accepted.
        (
            "deepest",
            costliest(|n| format!("{} >= 0", vec!["claims.list[0]"; n.min(31)].join(" + "))),
        ),
    ];
    let shapes: Vec<(&str, String)> = shapes
        .into_iter()
        .filter_map(|(name, source)| Some((name, source?)))
        .collect();
    let rules: String = shapes
        .iter()
        .map(|(name, source)| format!("    - paths: [\"/{name}\"]\n      when: ['{source}']\n"))
        .collect();
    let bench = Bench::with_policies(vec![KEY_A.jwk()], |jwks| {
        support::host_policy_yaml(
            "costly",
            &numbered_host(0),
            &jwks.issuer(),
            Some(&jwks.jwks_uri()),
            "",
        )
        .replace("  rules: \n", &format!("  rules:\n{rules}"))
    });
    let token =
        support::largest_condition_token(&KEY_A, &numbered_claims(&bench.issuer(), 0), "list");
    let auth = format!("Bearer {token}");
    let filler = "v".repeat(scopegate::policy::cost::MAX_REQUEST_BYTES as usize / 160);
    let names: Vec<String> = (0..140).map(|i| format!("x-filler-{i:03}")).collect();
    let mut headers: Vec<(&str, &str)> = names
        .iter()
        .map(|n| (n.as_str(), filler.as_str()))
        .collect();
    headers.push(("authorization", &auth));
    let service = bench.service(cache());
    let mut group = c.benchmark_group("check/hit/costliest_condition");
    for (name, source) in &shapes {
        let request = check_request(
            &numbered_host(0),
            "GET",
            &format!("/{name}"),
            &headers,
            HashMap::new(),
        );
        bench.check_allowed(&service, &request);
        let cost = scopegate::policy::conditions::Condition::compile(source)
            .unwrap()
            .cost();
        println!(
            "{name}: estimated cost {cost}, {} bytes: {source:.100}",
            source.len()
        );
        group.bench_function(*name, |b| {
            b.to_async(&bench.runtime)
                .iter(|| service.check_request(&request))
        });
    }
    group.finish();
}

fn bench_dpop_proof(c: &mut Criterion) {
    let key = EcKey::generate("client");
    let htu = "https://orders.example.com/orders/42";
    let uri: NormalizedUri = htu.parse().unwrap();
    let access_token = KEY_A.sign(&numbered_claims("https://issuer.example.com/", 1));
    let proof = key.dpop_proof("GET", htu, "jti-1", support::now(), Some(&access_token));
    let jkt = jwk_thumbprint(key.dpop_jwk().as_object().unwrap()).unwrap();
    let context = ProofContext::new("GET", &uri).with_access_token(&access_token, &jkt);
    let now = support::now();
    verify_proof(RequestHeader::One(&proof), &context, now).expect("the bench proof is valid");
    c.bench_function("dpop/verify_proof/ES256", |b| {
        b.iter(|| verify_proof(RequestHeader::One(&proof), &context, now))
    });
}

/// Times `count` single Checks and prints their percentiles.
fn latency_report() {
    let bench = Bench::new(vec![KEY_A.jwk()], 1, 1);
    let request = request(0, &KEY_A.sign(&numbered_claims(&bench.issuer(), 1)));
    println!(
        "\nsingle-Check latency (Instant around each call; includes ~20-40 ns of timer overhead)"
    );
    for (name, cache, count) in [
        ("hit", cache(), 200_000),
        ("miss/RS256", TokenCache::disabled(), 20_000),
    ] {
        let service = bench.service(cache);
        bench.check_allowed(&service, &request);
        let mut samples = bench.runtime.block_on(async {
            let mut samples = Vec::with_capacity(count);
            for _ in 0..count {
                let start = Instant::now();
                std::hint::black_box(service.check_request(&request).await);
                samples.push(start.elapsed());
            }
            samples
        });
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        println!(
            "check/{name:<12} p50 {:>9.2?}  p99 {:>9.2?}  p99.9 {:>9.2?}  ({count} Checks)",
            at(0.50),
            at(0.99),
            at(0.999)
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_hit_and_miss, bench_policies, bench_scopes, bench_policy_language, bench_costliest_conditions, bench_dpop_proof
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if !std::env::args().any(|a| a == "--list") {
        latency_report();
    }
}
