//! Kubernetes mode under policy churn (issue 25), against a real
//! kube-apiserver and etcd (`tests/kube/start.sh`) and a real scopegate
//! process (`serve --kubernetes`):
//!
//! 1. creates N TokenPolicies on distinct hosts (`api-I.example.com`) that
//!    trust a JWKS server on loopback, then starts scopegate and times it to
//!    ready, to serving every host, and until every policy is `Ready=True`;
//! 2. counts the status writes of that start, from a watch (each `MODIFIED`
//!    event whose `status` changed is one write) until none came for a
//!    while;
//! 3. measures Check latency on hosts that are never edited, with no churn;
//! 4. churns: E edits per second for T seconds, each a JSON merge patch of
//!    one random policy's rules that adds a path only the new version
//!    allows, timed from the write to the first Check that is allowed on
//!    that path (edits not served within 5 s count as unserved); meanwhile
//!    the same probe load as in 3;
//! 5. reports scopegate's CPU per edit, its RSS after churn, and the RSS of
//!    `scopegate serve --policies` holding the same N policies.
//!
//! It prints a table and one `key=value` line per figure, and exits 0 unless
//! the benchmark could not run (2) or no edit was served at all (1: the
//! feature is broken). A slow figure never fails it. See
//! docs/performance.md ("Kubernetes mode at 10,000 policies") and
//! `benches/kube_churn.sh`, which runs it.
//!
//! ```sh
//! benches/kube_churn.sh                          # N = 1,000, 10 edits/s for 60 s
//! KUBE_CHURN_POLICIES=10000 benches/kube_churn.sh
//! cargo bench --bench kube_churn -- --help       # every knob (each also an env var)
//! ```

#[path = "../../tests/support/mod.rs"]
mod support;

mod checks;
mod churn;
mod cluster;
mod procfs;
mod statuses;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use clap::Parser;

use checks::{Checker, ProbeReport};
use churn::ChurnReport;
use cluster::{ControlPlane, Issuer};
use statuses::{StatusTally, Writes};
use support::process::ScopegateProcess;
use support::{JwksServer, KEY_A, numbered_claims};

/// Kubernetes mode under policy churn (issue 25); see docs/performance.md.
#[derive(Parser, Debug)]
struct Args {
    /// TokenPolicies in the cluster, each on its own host.
    #[arg(long, env = "KUBE_CHURN_POLICIES", default_value_t = 1000)]
    policies: usize,
    /// Policy edits per second during churn.
    #[arg(long, env = "KUBE_CHURN_EDIT_RATE", default_value_t = 10.0)]
    edit_rate: f64,
    /// Seconds of churn.
    #[arg(long, env = "KUBE_CHURN_SECONDS", default_value_t = 60)]
    churn_seconds: u64,
    /// Checks per second on never-edited hosts, with and without churn.
    #[arg(long, env = "KUBE_CHURN_PROBE_RATE", default_value_t = 100.0)]
    probe_rate: f64,
    /// Seconds of each quiet window: idle CPU, then the no-churn Checks.
    #[arg(long, env = "KUBE_CHURN_BASELINE_SECONDS", default_value_t = 10)]
    baseline_seconds: u64,
    /// An edit not served within this many seconds counts as unserved.
    #[arg(long, env = "KUBE_CHURN_SERVE_TIMEOUT", default_value_t = 5)]
    serve_timeout: u64,
    /// Status writes have settled after this many seconds without one.
    #[arg(long, env = "KUBE_CHURN_QUIET_SECONDS", default_value_t = 12)]
    quiet_seconds: u64,
    /// The most seconds to wait for readiness, `Ready=True` and quiet.
    #[arg(long, env = "KUBE_CHURN_STARTUP_TIMEOUT", default_value_t = 900)]
    startup_timeout: u64,
    /// Concurrent creates when populating the cluster.
    #[arg(long, env = "KUBE_CHURN_CREATE_CONCURRENCY", default_value_t = 32)]
    create_concurrency: usize,
    /// The scopegate binary to measure (default: the one cargo built with
    /// this benchmark).
    #[arg(long, env = "KUBE_CHURN_SCOPEGATE")]
    scopegate: Option<PathBuf>,
    /// A running control plane's directory (`tests/kube/start.sh DIR`);
    /// default: start one of its own, stopped at the end.
    #[arg(long, env = "KUBE_CHURN_KUBE_DIR")]
    kube_dir: Option<PathBuf>,
    /// Seed of the random choices (hosts probed, policies edited).
    #[arg(long, env = "KUBE_CHURN_SEED", default_value_t = 25)]
    seed: u64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    fn secs(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    /// Policies `0..probed` are only probed, never edited.
    fn probed(&self) -> usize {
        (self.policies / 10).clamp(1, 100)
    }
}

/// A small deterministic generator (xorshift64*), enough to pick hosts.
pub struct Rng(u64);

impl Rng {
    /// A generator for one stream of choices.
    pub fn new(seed: u64, stream: u64) -> Self {
        Rng((seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

fn log(what: &str) {
    eprintln!("== {what}");
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(figures) if figures.served_any => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!(
                "kube_churn: no edit was served at all: Kubernetes mode does not apply policy changes"
            );
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("kube_churn could not run: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// What the caller needs after the report is printed.
struct Figures {
    served_any: bool,
}

async fn run(args: &Args) -> Result<Figures> {
    ensure!(
        args.policies >= 2,
        "--policies must be at least 2 (some probed, some edited)"
    );
    let bin = args
        .scopegate
        .clone()
        .unwrap_or_else(|| PathBuf::from(support::process::scopegate_bin()));
    let plane = match &args.kube_dir {
        Some(dir) => ControlPlane::existing(dir.clone())?,
        None => {
            log("starting etcd and kube-apiserver (tests/kube/start.sh)");
            ControlPlane::start()?
        }
    };
    let client = cluster::client(&plane.kubeconfig()).await?;
    cluster::install_crd(&client, &bin).await?;
    let namespace = format!("kube-churn-{}", support::now());
    cluster::create_namespace(&client, &namespace).await?;
    let result = measure(args, &bin, &plane.kubeconfig(), &client, &namespace).await;
    if args.kube_dir.is_some() {
        cluster::delete_namespace(&client, &namespace).await;
    }
    result
}

/// Everything measured in one run.
struct Measured {
    startup: Startup,
    idle_cpu_per_second: f64,
    cpu_per_check: f64,
    baseline: ProbeReport,
    during: ProbeReport,
    churn: ChurnReport,
    churn_cpu: f64,
    churn_seconds: f64,
    churn_writes: Writes,
    rss_before: f64,
    rss_after: f64,
    rss_files: f64,
    watch_gaps: u32,
}

/// The start of scopegate in Kubernetes mode.
struct Startup {
    create_seconds: f64,
    ready_seconds: f64,
    served_seconds: f64,
    all_ready_seconds: Option<f64>,
    quiet: bool,
    writes: Writes,
}

async fn measure(
    args: &Args,
    bin: &Path,
    kubeconfig: &Path,
    client: &kube::Client,
    namespace: &str,
) -> Result<Figures> {
    let work = tempfile::Builder::new().prefix("kube-churn-").tempdir()?;
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let issuer = Issuer {
        url: jwks.issuer(),
        jwks_uri: jwks.jwks_uri(),
    };
    let token = KEY_A.sign(&numbered_claims(&issuer.url, 1));
    let api = cluster::policies(client, namespace);

    log(&format!(
        "creating {} TokenPolicies in namespace {namespace}",
        args.policies
    ));
    let creating = Instant::now();
    cluster::create_policies(&api, args.policies, &issuer, args.create_concurrency).await?;
    let create_seconds = creating.elapsed().as_secs_f64();
    let tally = StatusTally::start(
        api.clone(),
        cluster::resource_version(&api).await?,
        args.policies,
    );

    log("starting scopegate serve --kubernetes");
    let kubeconfig = kubeconfig.to_str().context("a UTF-8 kubeconfig path")?;
    let flags = [
        "--kubernetes",
        "--kubeconfig",
        kubeconfig,
        "--namespace",
        namespace,
        "--leader-election-namespace",
        namespace,
    ];
    let started = Instant::now();
    let sg = ScopegateProcess::serve_bin(bin, &flags, &work.path().join("kube.log"), |_| {}).await;
    let mut startup = wait_started(args, &sg, &token, &tally, started).await?;
    startup.create_seconds = create_seconds;
    let pid = sg.pid();

    log("idle CPU, then Checks on never-edited hosts without churn");
    let probe_checker = Checker::connect(sg.grpc_addr, &token).await?;
    let window = Args::secs(args.baseline_seconds);
    let idle_started = (Instant::now(), procfs::cpu_seconds(pid)?);
    tokio::time::sleep(window).await;
    let idle_cpu_per_second = cpu_rate(pid, idle_started)?;
    let baseline_started = (Instant::now(), procfs::cpu_seconds(pid)?);
    let baseline = checks::probe_for(
        &probe_checker,
        0..args.probed(),
        args.probe_rate,
        Rng::new(args.seed, 1),
        window,
    )
    .await;
    let busy = cpu_rate(pid, baseline_started)? - idle_cpu_per_second;
    let cpu_per_check = (busy * baseline_started.0.elapsed().as_secs_f64()
        / baseline.checks().max(1) as f64)
        .max(0.0);
    let rss_before = procfs::rss_mib(pid)?;

    log(&format!(
        "churn: {} edits/s for {} s",
        args.edit_rate, args.churn_seconds
    ));
    let poll_checker = Checker::connect(sg.grpc_addr, &token).await?;
    let churn_started = (Instant::now(), procfs::cpu_seconds(pid)?);
    let probe = checks::Probe::start(
        probe_checker,
        0..args.probed(),
        args.probe_rate,
        Rng::new(args.seed, 2),
    );
    let churn = churn::run(
        &api,
        &poll_checker,
        args.probed()..args.policies,
        (args.edit_rate, Args::secs(args.churn_seconds)),
        Args::secs(args.serve_timeout),
        Rng::new(args.seed, 3),
    )
    .await;
    let during = probe.stop().await;
    let churn_seconds = churn_started.0.elapsed().as_secs_f64();
    let churn_cpu = procfs::cpu_seconds(pid)? - churn_started.1;
    let rss_after = procfs::rss_mib(pid)?;
    // (Bounded: a scopegate that rewrites statuses forever must not hang
    // the run; the count then ends here.)
    tally
        .wait_quiet(Args::secs(args.quiet_seconds), Duration::from_secs(120))
        .await;
    let churn_writes = tally.writes_between(churn_started.0, Instant::now());
    drop(sg);

    log("files mode: the same policies from a file");
    let rss_files = files_mode_rss(args, bin, work.path(), namespace, &issuer, &token).await?;

    let measured = Measured {
        startup,
        idle_cpu_per_second,
        cpu_per_check,
        baseline,
        during,
        churn,
        churn_cpu,
        churn_seconds,
        churn_writes,
        rss_before,
        rss_after,
        rss_files,
        watch_gaps: tally.gaps(),
    };
    report(args, bin, &measured);
    Ok(Figures {
        served_any: measured.churn.served().finite() > 0,
    })
}

/// CPU seconds per second of `pid` since `(when, cpu seconds then)`.
fn cpu_rate(pid: u32, (since, cpu): (Instant, f64)) -> Result<f64> {
    Ok((procfs::cpu_seconds(pid)? - cpu) / since.elapsed().as_secs_f64())
}

/// Waits for `/readyz`, for Checks on the first and last host to be
/// allowed, for every policy to be `Ready=True` and for status writes to
/// stop; returns when each happened (seconds after `started`).
async fn wait_started(
    args: &Args,
    sg: &ScopegateProcess,
    token: &str,
    tally: &StatusTally,
    started: Instant,
) -> Result<Startup> {
    let timeout = Args::secs(args.startup_timeout);
    wait_for("scopegate to be ready", timeout, || async {
        sg.readyz().await == 200
    })
    .await?;
    let ready_seconds = started.elapsed().as_secs_f64();
    let checker = Checker::connect(sg.grpc_addr, token).await?;
    let last = args.policies - 1;
    wait_for("the first and last hosts to allow", timeout, || async {
        checker.status(0, "/orders").await.ok() == Some(200)
            && checker.status(last, "/orders").await.ok() == Some(200)
    })
    .await?;
    let served_seconds = started.elapsed().as_secs_f64();
    log("waiting for every policy to be Ready=True and status writes to stop");
    let all_ready_seconds = tally
        .wait_all_ready(timeout.saturating_sub(started.elapsed()))
        .await
        .map(|at| at.duration_since(started).as_secs_f64());
    let quiet = tally
        .wait_quiet(
            Args::secs(args.quiet_seconds),
            timeout.saturating_sub(started.elapsed()),
        )
        .await;
    Ok(Startup {
        create_seconds: 0.0,
        ready_seconds,
        served_seconds,
        all_ready_seconds,
        quiet,
        writes: tally.writes_between(started, Instant::now()),
    })
}

/// Polls `condition` every 50 ms until it holds, or fails after `timeout`.
async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut condition: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The RSS of `scopegate serve --policies` holding the same policies, after
/// it serves them and answered a few seconds of the probe load.
async fn files_mode_rss(
    args: &Args,
    bin: &Path,
    work: &Path,
    namespace: &str,
    issuer: &Issuer,
    token: &str,
) -> Result<f64> {
    let file = work.join("policies.yaml");
    std::fs::write(
        &file,
        cluster::policies_yaml(namespace, args.policies, issuer)?,
    )?;
    let file = file.to_str().context("a UTF-8 temporary path")?;
    let sg =
        ScopegateProcess::serve_bin(bin, &["--policies", file], &work.join("files.log"), |_| {})
            .await;
    let timeout = Args::secs(args.startup_timeout);
    wait_for("files mode to be ready", timeout, || async {
        sg.readyz().await == 200
    })
    .await?;
    let checker = Checker::connect(sg.grpc_addr, token).await?;
    let probe = checks::probe_for(
        &checker,
        0..args.policies,
        args.probe_rate,
        Rng::new(args.seed, 4),
        Duration::from_secs(3),
    )
    .await;
    ensure!(
        probe.not_allowed == 0 && probe.failed == 0,
        "files mode did not allow every Check: {probe:?}"
    );
    procfs::rss_mib(sg.pid())
}

/// Prints the table and the `key=value` lines.
fn report(args: &Args, bin: &Path, m: &Measured) {
    let served = m.churn.served();
    let made = m.churn.made().count();
    let unserved = m.churn.unserved();
    let checks_during = (m.during.checks() + m.churn.polls()) as f64;
    let beyond_idle = m.churn_cpu - m.idle_cpu_per_second * m.churn_seconds;
    let per_edit = |cpu: f64| cpu / made.max(1) as f64 * 1e3;
    let cpu_per_edit = per_edit(beyond_idle - checks_during * m.cpu_per_check);
    let ms = |q: f64| format_ms(served.quantile_ms(q));
    let timeout = args.serve_timeout;
    let s = &m.startup;
    let all_ready = s
        .all_ready_seconds
        .map_or("never (timed out)".into(), |t| format!("{t:.1} s"));

    println!(
        "\n## Kubernetes mode: {} policies, {} edits/s for {} s ({})\n",
        args.policies,
        args.edit_rate,
        args.churn_seconds,
        bin.display()
    );
    println!("| figure | value |\n|---|---|");
    println!(
        "| edit → served, p50 / p99 | {} / {} ms ({unserved} of {made} edits not served within {timeout} s) |",
        ms(0.5),
        ms(0.99)
    );
    println!(
        "| scopegate CPU per edit | {cpu_per_edit:.1} ms ({:.1} ms with the {:.0} Checks of the window) |",
        per_edit(beyond_idle),
        checks_during
    );
    for (when, probe) in [("no churn", &m.baseline), ("during churn", &m.during)] {
        println!(
            "| Check on an unedited host, p50 / p99, {when} | {:.2} / {:.2} ms ({} Checks, {} not allowed, {} failed) |",
            probe.latencies.quantile_ms(0.5),
            probe.latencies.quantile_ms(0.99),
            probe.checks(),
            probe.not_allowed,
            probe.failed
        );
    }
    println!(
        "| RSS after churn | {:.1} MiB (before churn {:.1}; files mode, same policies: {:.1} MiB; ratio {:.2}) |",
        m.rss_after,
        m.rss_before,
        m.rss_files,
        m.rss_after / m.rss_files
    );
    println!(
        "| startup status writes until quiet | {} ({:.2} per policy; max {} on one; {} policies written more than once){} |",
        s.writes.total,
        s.writes.total as f64 / args.policies as f64,
        s.writes.max_per_policy,
        s.writes.policies_rewritten,
        if s.quiet { "" } else { "; never quiet" }
    );
    println!(
        "| startup: ready / every host served / every policy Ready=True | {:.1} s / {:.1} s / {all_ready} (creating the policies took {:.1} s) |",
        s.ready_seconds, s.served_seconds, s.create_seconds
    );
    println!(
        "| status writes during churn | {} for {made} edits (max {} on one policy) |",
        m.churn_writes.total, m.churn_writes.max_per_policy
    );
    println!();

    let lines: Vec<(&str, String)> = vec![
        ("policies", args.policies.to_string()),
        ("edit_rate", args.edit_rate.to_string()),
        ("churn_seconds", args.churn_seconds.to_string()),
        ("edits", made.to_string()),
        ("edits_refused", (m.churn.edits.len() - made).to_string()),
        ("edits_unserved", unserved.to_string()),
        ("edit_served_p50_ms", ms(0.5)),
        ("edit_served_p99_ms", ms(0.99)),
        ("edit_served_max_ms", ms(1.0)),
        (
            "edit_write_p50_ms",
            format_ms(m.churn.writes().quantile_ms(0.5)),
        ),
        (
            "edit_write_p99_ms",
            format_ms(m.churn.writes().quantile_ms(0.99)),
        ),
        ("cpu_per_edit_ms", format!("{cpu_per_edit:.2}")),
        (
            "cpu_per_edit_with_checks_ms",
            format!("{:.2}", per_edit(beyond_idle)),
        ),
        (
            "cpu_idle_percent",
            format!("{:.2}", m.idle_cpu_per_second * 100.0),
        ),
        ("cpu_per_check_us", format!("{:.1}", m.cpu_per_check * 1e6)),
        ("checks_during_churn", format!("{checks_during:.0}")),
        (
            "check_idle_p50_ms",
            format!("{:.3}", m.baseline.latencies.quantile_ms(0.5)),
        ),
        (
            "check_idle_p99_ms",
            format!("{:.3}", m.baseline.latencies.quantile_ms(0.99)),
        ),
        (
            "check_churn_p50_ms",
            format!("{:.3}", m.during.latencies.quantile_ms(0.5)),
        ),
        (
            "check_churn_p99_ms",
            format!("{:.3}", m.during.latencies.quantile_ms(0.99)),
        ),
        ("check_churn_not_allowed", m.during.not_allowed.to_string()),
        ("check_churn_failed", m.during.failed.to_string()),
        ("rss_before_churn_mib", format!("{:.1}", m.rss_before)),
        ("rss_after_churn_mib", format!("{:.1}", m.rss_after)),
        ("rss_files_mib", format!("{:.1}", m.rss_files)),
        ("rss_ratio", format!("{:.2}", m.rss_after / m.rss_files)),
        ("startup_create_seconds", format!("{:.1}", s.create_seconds)),
        ("startup_ready_seconds", format!("{:.2}", s.ready_seconds)),
        ("startup_served_seconds", format!("{:.2}", s.served_seconds)),
        (
            "startup_all_ready_seconds",
            s.all_ready_seconds
                .map_or("inf".into(), |t| format!("{t:.2}")),
        ),
        ("startup_status_writes", s.writes.total.to_string()),
        (
            "startup_status_writes_max_per_policy",
            s.writes.max_per_policy.to_string(),
        ),
        (
            "startup_policies_rewritten",
            s.writes.policies_rewritten.to_string(),
        ),
        ("startup_quiet", s.quiet.to_string()),
        ("churn_status_writes", m.churn_writes.total.to_string()),
        (
            "churn_status_writes_max_per_policy",
            m.churn_writes.max_per_policy.to_string(),
        ),
        ("status_watch_gaps", m.watch_gaps.to_string()),
    ];
    for (key, value) in lines {
        println!("{key}={value}");
    }
    if let Some(refusal) = m.churn.first_refusal() {
        eprintln!("the API server refused an edit: {refusal}");
    }
}

/// Milliseconds with one decimal; `inf` for an edit never served.
fn format_ms(ms: f64) -> String {
    if ms.is_finite() {
        format!("{ms:.1}")
    } else {
        "inf".into()
    }
}
