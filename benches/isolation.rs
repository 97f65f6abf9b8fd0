//! Tenant isolation under load (DESIGN.md §8, "a tenant's slow conditions
//! never delay another tenant's Checks"): the real `scopegate serve` binary
//! on loopback, tenant B's Checks (cheap rules) at a paced rate, first alone,
//! then while tenant A hammers its costliest accepted condition on the
//! largest accepted token. Prints both phases' latencies; it is a benchmark
//! that reports numbers, not a test (docs/performance.md).
//!
//! ```sh
//! nice -n 10 cargo bench --bench isolation          # SECONDS=10 per phase
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use support::load::{Load, PhaseReport, TokenKind};
use support::process::ScopegateProcess;
use support::*;

/// Tenant A's host.
const COSTLY_HOST: &str = "costly.example.com";

/// The costliest accepted condition of its shape: one `all()` over the
/// token's largest list whose body is as long as the budget allows.
fn costliest_condition() -> String {
    let body = |n: usize| vec!["x == 0"; n].join(" && ");
    let source = |n: usize| format!("claims.list.all(x, {})", body(n));
    let widest = (1..64)
        .take_while(|&n| {
            scopegate::policy::conditions::Condition::compile(&source(n))
                .is_ok_and(|c| c.cost() <= scopegate::policy::cost::BUDGET)
        })
        .last()
        .expect("one comparison per element fits the budget");
    source(widest)
}

fn policies(jwks: &JwksServer, condition: &str) -> String {
    let tenant_b = policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), STANDARD_RULES);
    let tenant_a = host_policy_yaml(
        "costly",
        COSTLY_HOST,
        &jwks.issuer(),
        Some(&jwks.jwks_uri()),
        &format!("[{{paths: [\"/costly\"], when: ['{condition}']}}]"),
    )
    .replace("namespace: test", "namespace: tenant-a");
    format!("{tenant_b}---\n{tenant_a}")
}

fn costly_request(token: &str) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    let auth = format!("Bearer {token}");
    check_request(
        COSTLY_HOST,
        "GET",
        "/costly",
        &[("authorization", &auth)],
        HashMap::new(),
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seconds: u64 = std::env::var("SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let phase = Duration::from_secs(seconds);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
        let dir = tempfile::tempdir().unwrap();
        let condition = costliest_condition();
        let sg = ScopegateProcess::serve_policy(dir.path(), &policies(&jwks, &condition), &[], |_| {})
            .await;
        sg.wait_for_jwks_attempts_above(0).await;
        let big = largest_condition_token(&KEY_A, &claims(&jwks.issuer()), "list");
        let a_answer = sg.send(costly_request(&big)).await;
        assert_eq!(a_answer.http_status(), 200, "tenant A's costly condition holds");
        let b_token = KEY_A.sign(&claims(&jwks.issuer()));
        println!(
            "tenant A: {} bytes of condition, on a {}-byte token; tenant B: GET /orders, paced at 400 Checks/s",
            condition.len(),
            big.len()
        );

        let tenant_b = || TokenKind { name: "good-a", tokens: vec![b_token.clone()], weight: 1 };
        let b_load = Load::start(sg.grpc_addr, vec![tenant_b()], 4, Some(400.0), "B alone").await;
        tokio::time::sleep(phase).await;
        let alone = b_load.next_phase("B, A hammering");

        let a_kind = TokenKind { name: "costly", tokens: vec![big.clone()], weight: 1 };
        let a_load = Load::start_with(
            sg.grpc_addr,
            vec![a_kind],
            16,
            None,
            "A hammering",
            Arc::new(costly_request),
        )
        .await;
        tokio::time::sleep(phase).await;
        let contended = b_load.stop().await;
        let hammer = a_load.stop().await;
        report(&alone, &contended, &hammer);
    });
}

fn report(alone: &PhaseReport, contended: &PhaseReport, hammer: &PhaseReport) {
    for phase in [alone, contended, hammer] {
        println!("{}", phase.summary());
    }
    let p99 = |phase: &PhaseReport| phase.latency_us(0.99, &[]);
    println!(
        "tenant B p99: {} µs alone, {} µs with A hammering ({:.2}x); A answered {:.0} Checks/s (p50 {} µs)",
        p99(alone),
        p99(contended),
        p99(contended) as f64 / p99(alone).max(1) as f64,
        hammer.checks() as f64 / hammer.elapsed.as_secs_f64(),
        hammer.latency_us(0.5, &[])
    );
}
