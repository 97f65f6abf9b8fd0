//! The real MCP parts of `tests/mcp/`: the TypeScript SDK's streamable-HTTP
//! server (`server.mjs`, tools `read_orders` and `delete_order`) as a child
//! process, and its client (`client.mjs`), whose JSON summary of what the
//! SDK saw the tests assert on. The SDK is installed by
//! `.ci/install-tools.sh` into `.tools/node`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::envoy::ChildGuard;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Panics with the fix when the SDK is not installed.
fn require_sdk() {
    let modules = std::env::var_os("SCOPEGATE_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools/node/node_modules"));
    let sdk = modules.join("@modelcontextprotocol/sdk/package.json");
    assert!(
        sdk.exists(),
        "{} not found: run .ci/install-tools.sh (or set SCOPEGATE_NODE_MODULES)",
        sdk.display()
    );
}

/// `tests/mcp/server.mjs` on a free loopback port, killed on drop.
pub struct McpServer {
    _process: ChildGuard,
    /// The port it listens on (`/mcp` is the endpoint).
    pub port: u16,
}

impl McpServer {
    /// Starts the server and waits for its `listening <port>` line.
    pub fn start() -> Self {
        require_sdk();
        let mut child = Command::new("node")
            .arg(repo().join("tests/mcp/server.mjs"))
            .arg("0")
            .stdout(Stdio::piped())
            .spawn()
            .expect("node runs tests/mcp/server.mjs");
        let stdout = child.stdout.take().unwrap();
        let process = ChildGuard(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("server.mjs printed {line:?}, not `listening <port>`"));
        McpServer {
            _process: process,
            port,
        }
    }

    /// `http://127.0.0.1:PORT/mcp`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }
}

/// Runs `tests/mcp/client.mjs` with `input` (see that file for its fields)
/// off the async runtime and returns its JSON summary.
pub async fn run_client(input: Value) -> Value {
    require_sdk();
    tokio::task::spawn_blocking(move || {
        let output = Command::new("node")
            .arg(repo().join("tests/mcp/client.mjs"))
            .arg(input.to_string())
            .output()
            .expect("node runs tests/mcp/client.mjs");
        assert!(
            output.status.success(),
            "client.mjs failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "client.mjs printed no JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    })
    .await
    .unwrap()
}
