//! The Check side: real gRPC Checks to scopegate, a paced probe load on
//! hosts that are never edited, and latency quantiles.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::Rng;
use crate::support::{Checked, check_request, numbered_host};

/// Sends Checks with one token over one HTTP/2 connection.
#[derive(Clone)]
pub struct Checker {
    client: AuthorizationClient<Channel>,
    authorization: String,
}

impl Checker {
    /// Connects to scopegate's gRPC listener.
    pub async fn connect(addr: SocketAddr, token: &str) -> Result<Self> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        Ok(Checker {
            client: AuthorizationClient::new(channel),
            authorization: format!("Bearer {token}"),
        })
    }

    /// The HTTP status scopegate answers for `GET path` on policy
    /// `index`'s host (200: allowed).
    pub async fn status(&self, index: usize, path: &str) -> Result<i32> {
        let request = check_request(
            &numbered_host(index),
            "GET",
            path,
            &[("authorization", &self.authorization)],
            HashMap::new(),
        );
        let answer = self.client.clone().check(request).await?;
        Ok(Checked(answer.into_inner()).http_status())
    }
}

/// Latencies in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Latencies(Vec<u64>);

impl Latencies {
    /// Adds one.
    pub fn push(&mut self, latency: Duration) {
        self.0
            .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    /// Adds one that never ended (it sorts above every other).
    pub fn push_never(&mut self) {
        self.0.push(u64::MAX);
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// How many ended.
    pub fn finite(&self) -> usize {
        self.0.iter().filter(|l| **l != u64::MAX).count()
    }

    /// The `q` quantile (0..=1) in milliseconds (0 when empty, infinite when
    /// it falls on one that never ended).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        match sorted.len() {
            0 => 0.0,
            n => match sorted[((n - 1) as f64 * q).round() as usize] {
                u64::MAX => f64::INFINITY,
                us => us as f64 / 1000.0,
            },
        }
    }
}

/// What a probe load saw.
#[derive(Debug, Default, Clone)]
pub struct ProbeReport {
    /// Latency of every answered Check.
    pub latencies: Latencies,
    /// Checks answered with something else than 200 (the probe hosts are
    /// never edited: each should allow).
    pub not_allowed: u64,
    /// Checks that got no answer.
    pub failed: u64,
}

impl ProbeReport {
    /// Every Check sent.
    pub fn checks(&self) -> u64 {
        self.latencies.len() as u64 + self.failed
    }
}

/// A probe load: `rate` Checks per second of `GET /orders/42` on random
/// hosts of `hosts`, each sent on schedule whether or not earlier ones were
/// answered (a stalled Check delays no other, so stalls are measured, not
/// hidden).
pub struct Probe {
    report: Arc<Mutex<ProbeReport>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    /// Starts the load.
    pub fn start(checker: Checker, hosts: Range<usize>, rate: f64, mut rng: Rng) -> Self {
        let report = Arc::new(Mutex::new(ProbeReport::default()));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let shared = report.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let mut in_flight = JoinSet::new();
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stopped.changed() => break,
                }
                let index = hosts.start + rng.below(hosts.len());
                in_flight.spawn(probe_once(checker.clone(), index, shared.clone()));
                while in_flight.try_join_next().is_some() {}
            }
            while in_flight.join_next().await.is_some() {}
        });
        Probe { report, stop, task }
    }

    /// Stops sending, waits for the Checks in flight, and returns the report.
    pub async fn stop(self) -> ProbeReport {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.report.lock().expect("never poisoned").clone()
    }
}

async fn probe_once(checker: Checker, index: usize, report: Arc<Mutex<ProbeReport>>) {
    let started = Instant::now();
    let answer = checker.status(index, "/orders/42").await;
    let latency = started.elapsed();
    let mut report = report.lock().expect("never poisoned");
    match answer {
        Ok(status) => {
            report.latencies.push(latency);
            if status != 200 {
                report.not_allowed += 1;
            }
        }
        Err(_) => report.failed += 1,
    }
}

/// Runs `probe` alone for `duration`.
pub async fn probe_for(
    checker: &Checker,
    hosts: Range<usize>,
    rate: f64,
    rng: Rng,
    duration: Duration,
) -> ProbeReport {
    let probe = Probe::start(checker.clone(), hosts, rate, rng);
    tokio::time::sleep(duration).await;
    probe.stop().await
}
