//! Real Envoy 1.40 (installed by `.ci/install-tools.sh`, overridable with
//! `SCOPEGATE_ENVOY`) on the shipped `manifests/envoy/envoy.yaml`, its
//! documented ports replaced by free ones, optionally edited further by a
//! test (an added filter, a changed ext_authz setting).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use scopegate::mcp::{DEFAULT_MAX_BODY_BYTES, ENVOY_MCP_METADATA_NAMESPACE};
use serde_json::json;

use super::{free_port, tool};

/// A child process killed (and reaped) on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The shipped `manifests/envoy/envoy.yaml` with its documented default
/// ports (listener 8080, admin 9901, upstream 127.0.0.1:8000, scopegate
/// 127.0.0.1:9001) replaced in the parsed YAML. Panics if a default is not
/// where its header comment says, so the documented ports stay true.
pub fn envoy_config(
    listen: u16,
    admin: u16,
    upstream: u16,
    scopegate: u16,
) -> serde_yaml_ng::Value {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/manifests/envoy/envoy.yaml"
    ))
    .unwrap();
    let mut config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&shipped).unwrap();
    fn socket(address: &mut serde_yaml_ng::Value) -> &mut serde_yaml_ng::Value {
        &mut address["socket_address"]["port_value"]
    }
    let replace = |port: &mut serde_yaml_ng::Value, default: u16, new: u16, what: &str| {
        assert_eq!(
            port.as_u64(),
            Some(u64::from(default)),
            "envoy.yaml: {what} is not on its documented default port {default}"
        );
        *port = new.into();
    };
    replace(
        socket(&mut config["admin"]["address"]),
        9901,
        admin,
        "admin",
    );
    let resources = &mut config["static_resources"];
    let [listener] = resources["listeners"]
        .as_sequence_mut()
        .unwrap()
        .as_mut_slice()
    else {
        panic!("envoy.yaml: expected one listener");
    };
    replace(
        socket(&mut listener["address"]),
        8080,
        listen,
        "the listener",
    );
    for cluster in resources["clusters"].as_sequence_mut().unwrap() {
        let (default, new) = match cluster["name"].as_str() {
            Some("upstream") => (8000, upstream),
            Some("scopegate") => (9001, scopegate),
            other => panic!("envoy.yaml: unexpected cluster {other:?}"),
        };
        let endpoint = &mut cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0];
        replace(
            socket(&mut endpoint["endpoint"]["address"]),
            default,
            new,
            "a cluster",
        );
    }
    config
}

/// The HTTP connection manager's `http_filters` list of the config's one
/// listener, for tests that add or edit a filter.
pub fn http_filters(config: &mut serde_yaml_ng::Value) -> &mut Vec<serde_yaml_ng::Value> {
    config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"]
        .as_sequence_mut()
        .expect("envoy.yaml: the listener's HTTP connection manager has http_filters")
}

/// Starts Envoy on the shipped config, ports replaced; waits for /ready.
/// Returns the process and the listener port.
pub async fn start_envoy(scopegate_port: u16, upstream_port: u16) -> (ChildGuard, u16) {
    start_envoy_with(scopegate_port, upstream_port, |_| {}).await
}

/// [`start_envoy`] with the parsed config passed to `edit` first.
pub async fn start_envoy_with(
    scopegate_port: u16,
    upstream_port: u16,
    edit: impl FnOnce(&mut serde_yaml_ng::Value),
) -> (ChildGuard, u16) {
    start_envoy_on(free_port(), scopegate_port, upstream_port, edit).await
}

/// [`start_envoy_with`] on a listener port chosen by the caller (for a
/// policy that names Envoy's own URL, such as an MCP `resource.id`).
pub async fn start_envoy_on(
    listen: u16,
    scopegate_port: u16,
    upstream_port: u16,
    edit: impl FnOnce(&mut serde_yaml_ng::Value),
) -> (ChildGuard, u16) {
    let envoy = tool("SCOPEGATE_ENVOY", ".tools/venv/bin/envoy");
    let admin = free_port();
    let mut config = envoy_config(listen, admin, upstream_port, scopegate_port);
    edit(&mut config);
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    let child = Command::new(envoy)
        .arg("-c")
        .arg(&path)
        .args(["--disable-hot-restart", "--log-level", "warn"])
        .stdout(Stdio::null())
        .spawn()
        .expect("envoy starts");
    let process = ChildGuard(child);
    let ready = format!("http://127.0.0.1:{admin}/ready");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = reqwest::get(&ready).await
            && response.status().is_success()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "envoy did not become ready (config {})",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (process, listen)
}

/// The shipped config with Envoy's MCP filter inserted before ext_authz,
/// its metadata forwarded to the Check, and the body sent along (the
/// settings envoy.yaml documents as not yet shipped).
pub fn with_mcp_filter_and_body(config: &mut serde_yaml_ng::Value) {
    let filters = http_filters(config);
    let ext_authz = filters
        .iter()
        .position(|f| f["name"] == "envoy.filters.http.ext_authz")
        .expect("envoy.yaml has ext_authz");
    let mcp: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        r#"
name: envoy.filters.http.mcp
typed_config:
  "@type": type.googleapis.com/envoy.extensions.filters.http.mcp.v3.Mcp
"#,
    )
    .unwrap();
    filters.insert(ext_authz, mcp);
    let settings = &mut filters[ext_authz + 1]["typed_config"];
    settings["metadata_context_namespaces"] = json_to_yaml(json!([ENVOY_MCP_METADATA_NAMESPACE]));
    settings["with_request_body"] = json_to_yaml(json!({
        "max_request_bytes": DEFAULT_MAX_BODY_BYTES,
        "allow_partial_message": false,
        "pack_as_bytes": true,
    }));
}

pub fn json_to_yaml(value: serde_json::Value) -> serde_yaml_ng::Value {
    serde_yaml_ng::to_value(value).unwrap()
}

/// An upstream that answers every request with its headers as JSON.
pub async fn echo_upstream() -> u16 {
    use axum::http::HeaderMap;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = axum::Router::new().fallback(|headers: HeaderMap| async move {
        let map: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
            .collect();
        axum::Json(serde_json::Value::Object(map))
    });
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    port
}
