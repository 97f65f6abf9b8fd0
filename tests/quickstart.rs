//! The README quick start, run with the real binary: `serve` on the example
//! dev policy with the dev issuer, then `mint` and `check` (an allow, and a
//! 403 naming the missing scope), then SIGTERM. Ports are free ones instead of
//! the README's fixed ones.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SCOPEGATE: &str = env!("CARGO_BIN_EXE_scopegate");

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scopegate(args: &[&str]) -> (bool, String) {
    let out = Command::new(SCOPEGATE).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.is_empty() || out.status.code() != Some(2),
        "{args:?}: {stderr}"
    );
    (out.status.success(), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn readme_quick_start() {
    let (issuer_port, grpc_port, admin_port) = (free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string("examples/policies/dev.yaml").unwrap();
    assert!(
        example.contains("127.0.0.1:9080"),
        "the README's dev issuer address"
    );
    let policy = dir.path().join("dev.yaml");
    std::fs::write(
        &policy,
        example.replace("127.0.0.1:9080", &format!("127.0.0.1:{issuer_port}")),
    )
    .unwrap();

    let issuer = format!("127.0.0.1:{issuer_port}");
    let grpc = format!("127.0.0.1:{grpc_port}");
    let admin = format!("127.0.0.1:{admin_port}");
    let server = Server(
        Command::new(SCOPEGATE)
            .args([
                "serve",
                "--dev-issuer",
                &issuer,
                "--listen",
                &grpc,
                "--admin-listen",
                &admin,
                "--policies",
            ])
            .arg(&policy)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&grpc).is_err() {
        assert!(Instant::now() < deadline, "scopegate did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let issuer_url = format!("http://{issuer}");
    let (ok, token) = scopegate(&[
        "mint",
        "--issuer",
        &issuer_url,
        "--aud",
        "https://orders.example.com/api",
        "--scope",
        "read:orders",
        "--claim",
        "azp=dev-agent",
    ]);
    assert!(ok);
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3);

    let check = |method: &str| {
        scopegate(&[
            "check",
            "--addr",
            &grpc,
            "--host",
            "orders.localhost",
            "--method",
            method,
            "--path",
            "/orders",
            "--token",
            token,
        ])
    };
    let (allowed, out) = check("GET");
    assert!(allowed, "{out}");
    assert!(out.starts_with("ALLOW"), "{out}");
    assert!(out.contains("set    x-user-id: dev-user"), "{out}");

    let (allowed, out) = check("POST");
    assert!(!allowed);
    assert!(out.starts_with("DENY 403 (insufficient_scope)"), "{out}");
    assert!(out.contains("scope=\"create:orders\""), "{out}");

    // SIGTERM: a clean exit within the grace period.
    let mut server = server;
    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "scopegate did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
