//! scopegate as a real child process: the binary cargo built, serving on free
//! loopback ports, killed when dropped (so a failing test leaves nothing
//! behind), with readers for what an operator would watch: `/readyz`,
//! `/metrics` and the process's own memory and file descriptors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

use super::free_port;

/// The scopegate binary under test (set by cargo for integration tests).
pub fn scopegate_bin() -> &'static str {
    // option_env: examples include this module too, and cargo sets the
    // variable only for integration tests.
    #[allow(clippy::option_env_unwrap)]
    option_env!("CARGO_BIN_EXE_scopegate").expect("only integration tests run the binary")
}

/// Runs the scopegate binary with `args` (none of the policy or address
/// variables of the environment) and collects its output.
pub fn run<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> std::process::Output {
    Command::new(scopegate_bin())
        .args(args)
        .env_remove("SCOPEGATE_POLICIES")
        .env_remove("SCOPEGATE_ADDR")
        .output()
        .unwrap()
}

/// Runs the binary with `args` (see [`run`]), asserts its exit code, and
/// returns its stdout after asserting that it contains each of `expected`.
pub fn run_expecting<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
    code: i32,
    expected: &[&str],
) -> String {
    let out = run(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stdout}{stderr}");
    for text in expected {
        assert!(stdout.contains(text), "{text:?} not in:\n{stdout}");
    }
    stdout
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// A directory with `examples/policies/dev.yaml` and `tests` as
/// `dev.test.yaml` (a `TokenPolicyTest` for it).
pub fn dev_policy_with_tests(tests: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("examples/policies/dev.yaml", dir.path().join("dev.yaml")).unwrap();
    write(dir.path(), "dev.test.yaml", tests);
    dir
}

/// A running `scopegate serve` child process.
pub struct ScopegateProcess {
    child: Child,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Where the process's stderr (its logs) goes.
    pub log: PathBuf,
}

impl Drop for ScopegateProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ScopegateProcess {
    /// Runs `scopegate serve ARGS --listen … --admin-listen …` with stderr
    /// in `log`; `configure` may add environment variables. Returns once the
    /// gRPC port accepts connections.
    pub async fn serve(args: &[&str], log: &Path, configure: impl FnOnce(&mut Command)) -> Self {
        Self::serve_bin(Path::new(scopegate_bin()), args, log, configure).await
    }

    /// [`Self::serve`] with another scopegate binary (a benchmark measuring
    /// a build of another checkout).
    pub async fn serve_bin(
        bin: &Path,
        args: &[&str],
        log: &Path,
        configure: impl FnOnce(&mut Command),
    ) -> Self {
        let grpc_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .args(args)
            .args(["--listen", &grpc_addr.to_string()])
            .args(["--admin-listen", &admin_addr.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        configure(&mut command);
        let process = ScopegateProcess {
            child: command.spawn().unwrap(),
            grpc_addr,
            admin_addr,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(grpc_addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "scopegate did not start; its log:\n{}",
                process.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        process
    }

    /// Writes `policy` to `DIR/policy.yaml` and runs `scopegate serve
    /// --policies DIR/policy.yaml ARGS`, logging to `DIR/scopegate.log`.
    pub async fn serve_policy(
        dir: &Path,
        policy: &str,
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Self {
        let policy_file = dir.join("policy.yaml");
        std::fs::write(&policy_file, policy).unwrap();
        let mut all_args = vec!["--policies", policy_file.to_str().unwrap()];
        all_args.extend_from_slice(args);
        Self::serve(&all_args, &dir.join("scopegate.log"), configure).await
    }

    /// A new gRPC client connected to the process.
    pub async fn client(&self) -> AuthorizationClient<tonic::transport::Channel> {
        AuthorizationClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .unwrap()
    }

    /// Sends one Check over a new gRPC connection.
    pub async fn send(
        &self,
        request: envoy_types::pb::envoy::service::auth::v3::CheckRequest,
    ) -> super::Checked {
        let answer = self.client().await.check(request).await;
        super::Checked(
            answer
                .expect("Check succeeds at the gRPC level")
                .into_inner(),
        )
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
    }

    /// The exit status, if the process has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits (without blocking the runtime) for the process to exit, at most
    /// `within`.
    pub async fn wait_for_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_exit_status() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "scopegate did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then a clean exit (status 0) within `within`.
    pub async fn terminate(&mut self, within: Duration) {
        self.sigterm();
        let status = self.wait_for_exit(within).await;
        assert!(status.success(), "{status}; log:\n{}", self.log_text());
    }

    /// The HTTP status of `GET /readyz` (0 if nothing answered).
    pub async fn readyz(&self) -> u16 {
        reqwest::get(format!("http://{}/readyz", self.admin_addr))
            .await
            .map_or(0, |r| r.status().as_u16())
    }

    /// The `/readyz` body.
    pub async fn readyz_body(&self) -> serde_json::Value {
        reqwest::get(format!("http://{}/readyz", self.admin_addr))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The values of every `/metrics` series of `metric` whose labels
    /// include all of `labels`, parsed as Prometheus text.
    pub async fn series(&self, metric: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        let text = self.metrics_text().await;
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_string())))
            .expect("Prometheus text format");
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .filter_map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => Some(v),
                _ => None,
            })
            .collect()
    }

    /// JWKS fetch attempts so far, over all sources (from `/readyz`); 0
    /// while the admin listener, which may start just after the gRPC one,
    /// does not answer yet.
    pub async fn jwks_attempts(&self) -> u64 {
        let Ok(response) = reqwest::get(format!("http://{}/readyz", self.admin_addr)).await else {
            return 0;
        };
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        body["jwks"].as_array().map_or(0, |sources| {
            sources
                .iter()
                .map(|source| source["fetchAttempts"].as_u64().unwrap_or(0))
                .sum()
        })
    }

    /// Waits until the process has completed more than `count` JWKS fetches.
    pub async fn wait_for_jwks_attempts_above(&self, count: u64) {
        super::eventually("scopegate completed another JWKS fetch", || async {
            self.jwks_attempts().await > count
        })
        .await;
    }

    /// The value of an unlabelled series in `/metrics`, e.g.
    /// `process_open_fds` or `scopegate_runtime_tasks`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.admin_addr))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
    }

    /// What `/metrics` reports about the process's resources right now.
    pub async fn resources(&self) -> Resources {
        let read = |name| async move {
            self.metric(name)
                .await
                .unwrap_or_else(|| panic!("/metrics has {name}"))
        };
        Resources {
            rss_bytes: read("process_resident_memory_bytes").await,
            open_fds: read("process_open_fds").await,
            threads: read("process_threads").await,
            tasks: read("scopegate_runtime_tasks").await,
        }
    }
}

/// A process's resource use, as its own `/metrics` reports it.
#[derive(Debug, Clone, Copy)]
pub struct Resources {
    pub rss_bytes: f64,
    pub open_fds: f64,
    pub threads: f64,
    pub tasks: f64,
}

impl std::fmt::Display for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RSS {:.1} MiB, {} fds, {} threads, {} tasks",
            self.rss_bytes / (1024.0 * 1024.0),
            self.open_fds,
            self.threads,
            self.tasks
        )
    }
}
