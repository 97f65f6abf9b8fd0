//! The README quick start, run with the real binary: `serve` on the example
//! dev policy with the dev issuer, then `mint` and `check` (an allow, and a
//! 403 naming the missing scope), then SIGTERM. Ports are free ones instead of
//! the README's fixed ones.

mod support;

use std::process::Command;
use std::time::Duration;

use support::free_port;
use support::process::{ScopegateProcess, scopegate_bin};

fn scopegate(args: &[&str]) -> (bool, String) {
    let out = Command::new(scopegate_bin()).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.is_empty() || out.status.code() != Some(2),
        "{args:?}: {stderr}"
    );
    (out.status.success(), String::from_utf8(out.stdout).unwrap())
}

#[tokio::test]
async fn readme_quick_start() {
    let issuer_port = free_port();
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
    let mut server = ScopegateProcess::serve(
        &[
            "--dev-issuer",
            &issuer,
            "--policies",
            policy.to_str().unwrap(),
        ],
        &dir.path().join("scopegate.log"),
        |_| {},
    )
    .await;
    let grpc = server.grpc_addr.to_string();

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
    server.terminate(Duration::from_secs(15)).await;
}
