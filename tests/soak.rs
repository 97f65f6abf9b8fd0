//! The soak: the real binary at half its measured peak for
//! `SCOPEGATE_SOAK_SECS` (default 600) with the mixed tokens of the fault
//! test plus a trickle of never-seen tokens (each verified in full, then
//! cached for the 60 s the soak gives the token cache). Asserted: zero
//! unanswered Checks, zero false allows, no good token denied, and flat
//! resources: from the end of the first third to the end, RSS grows by less
//! than 10 %, file descriptors and tasks not at all (± 4).
//!
//! Not run by CI (it takes ten minutes). Run it in release mode:
//!
//! ```text
//! cargo test --release --test soak -- --ignored --nocapture
//! ```

mod support;

use std::time::{Duration, Instant};

use support::load::{Load, NEVER_ALLOWED, PhaseReport, TokenKind, fresh_tokens, mixed_tokens};
use support::process::{Resources, ScopegateProcess};
use support::*;

fn soak_length() -> Duration {
    let secs = std::env::var("SCOPEGATE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    Duration::from_secs(secs)
}

/// Never-seen tokens per Check, as a share of all Checks (one in `1 + this`).
const CHECKS_PER_NEW_TOKEN: usize = 140;

fn assert_minute(report: &PhaseReport) {
    let name = &report.name;
    assert_eq!(report.failed(), 0, "{name}: every Check was answered");
    for kind in NEVER_ALLOWED.iter().chain(&["good-b"]) {
        assert_eq!(report.kind(kind).allowed, 0, "{name}: {kind} was allowed");
    }
    for kind in ["good-a", "new"] {
        let counts = report.kind(kind);
        assert_eq!(
            counts.denied_total(),
            0,
            "{name}: {kind} denied {:?}",
            counts.denied
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "ten minutes; run: cargo test --release --test soak -- --ignored --nocapture"]
async fn half_peak_for_ten_minutes_with_good_bad_and_new_tokens() {
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_yaml("orders", &jwks.issuer(), &jwks.jwks_uri(), STANDARD_RULES);
    let sg = ScopegateProcess::serve_policy(
        dir.path(),
        &policy,
        &["--token-cache-max-ttl", "60s"],
        |_| {},
    )
    .await;
    eventually("ready", || async { sg.readyz().await == 200 }).await;
    let idle = sg.resources().await;

    // The peak: as fast as 8 connections get answers, 10 s.
    let peak_load = Load::start(
        sg.grpc_addr,
        mixed_tokens(&jwks.issuer(), 1000),
        8,
        None,
        "peak",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let peak = peak_load.stop().await;
    println!("{}", peak.summary());
    assert_minute(&peak);
    let peak_rate = peak.checks() as f64 / peak.elapsed.as_secs_f64();
    let rate = peak_rate / 2.0;

    // Never-seen tokens, enough for the whole soak.
    let soak = soak_length();
    let new_count =
        (rate * soak.as_secs_f64() / (CHECKS_PER_NEW_TOKEN + 1) as f64).ceil() as usize + 100;
    let signed = Instant::now();
    let new_tokens = fresh_tokens(&jwks.issuer(), 1_000_000, new_count).await;
    println!(
        "signed {new_count} never-seen tokens in {:?}",
        signed.elapsed()
    );
    let mut kinds = mixed_tokens(&jwks.issuer(), 1000);
    let total_weight: usize = kinds.iter().map(|k| k.weight).sum();
    for kind in &mut kinds {
        kind.weight *= CHECKS_PER_NEW_TOKEN / total_weight;
    }
    kinds.push(TokenKind {
        name: "new",
        tokens: new_tokens,
        weight: 1,
    });

    println!("soak: {rate:.0} Checks/s (half of {peak_rate:.0}) for {soak:?}");
    println!("idle: {idle}");
    let load = Load::start(sg.grpc_addr, kinds, 8, Some(rate), "minute 1").await;
    let started = Instant::now();
    let mut minute = 1;
    let mut after_first_third: Option<Resources> = None;
    while started.elapsed() < soak {
        let left = soak.saturating_sub(started.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(60))).await;
        let resources = sg.resources().await;
        minute += 1;
        let report = load.next_phase(&format!("minute {minute}"));
        println!("{}", report.summary());
        println!("    {resources}");
        assert_minute(&report);
        if after_first_third.is_none() && started.elapsed() >= soak / 3 {
            after_first_third = Some(resources);
        }
    }
    let end = sg.resources().await;
    assert_minute(&load.stop().await);
    let third = after_first_third.expect("the soak ran past its first third");
    println!("after the first third: {third}");
    println!("at the end:            {end}");
    assert!(
        end.rss_bytes <= third.rss_bytes * 1.10,
        "RSS grew: {third} → {end}"
    );
    assert!(
        end.open_fds <= third.open_fds + 4.0,
        "fds grew: {third} → {end}"
    );
    assert!(
        end.tasks <= third.tasks + 4.0,
        "tasks grew: {third} → {end}"
    );
}
