//! OpenTelemetry export, end to end: the real `scopegate serve` binary,
//! configured only by `OTEL_*` variables, exports over OTLP gRPC to a real
//! OTLP receiver (opentelemetry-proto's tonic `TraceService` and
//! `MetricsService`) on loopback, and over OTLP/HTTP (protobuf, the default
//! protocol) to an HTTP receiver. Checks carry a W3C `traceparent` or B3
//! headers; the test asserts the Check spans join those traces with the
//! decision's attributes and never carry the token, that the JSON decision
//! log has one line per deny, and that SIGTERM flushes what was queued (the
//! export intervals are far longer than the test). The traces are joined
//! through real Envoy on the shipped `manifests/envoy/envoy.yaml` too, whose
//! `allowed_headers` must let every form of trace context through.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::Value;
use support::process::ScopegateProcess;
use support::*;

/// A received span with its resource's attributes.
type ReceivedSpan = (Vec<KeyValue>, Span);

/// An OTLP gRPC receiver that keeps every span and metric name it is sent.
#[derive(Default, Clone)]
struct Receiver {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    metric_names: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.unwrap_or_default().attributes;
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    spans.push((resource.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut names = self.metric_names.lock().unwrap();
        for resource_metrics in request.into_inner().resource_metrics {
            for scope_metrics in resource_metrics.scope_metrics {
                names.extend(scope_metrics.metrics.into_iter().map(|m| m.name));
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl Receiver {
    async fn start() -> (Self, std::net::SocketAddr) {
        let receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .add_service(MetricsServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(async move { server.await.unwrap() });
        (receiver, addr)
    }

    fn check_span(&self, trace_id: &str) -> ReceivedSpan {
        let spans = self.spans.lock().unwrap();
        let matching: Vec<_> = spans
            .iter()
            .filter(|(_, span)| hex(&span.trace_id) == trace_id)
            .cloned()
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "one span in trace {trace_id}; received: {:#?}",
            spans.iter().map(|(_, s)| &s.name).collect::<Vec<_>>()
        );
        matching.into_iter().next().unwrap()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn string_attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

fn every_string(value: &AnyValue, out: &mut Vec<String>) {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => out.push(s.clone()),
        Some(any_value::Value::ArrayValue(array)) => {
            array.values.iter().for_each(|v| every_string(v, out))
        }
        Some(any_value::Value::KvlistValue(list)) => list
            .values
            .iter()
            .filter_map(|kv| kv.value.as_ref())
            .for_each(|v| every_string(v, out)),
        _ => {}
    }
}

/// Every string a span carries: name, attributes, event names and attributes.
fn span_strings(span: &Span) -> Vec<String> {
    let mut out = vec![span.name.clone()];
    let attributes = span
        .attributes
        .iter()
        .chain(span.events.iter().flat_map(|e| e.attributes.iter()));
    for kv in attributes {
        out.push(kv.key.clone());
        if let Some(value) = &kv.value {
            every_string(value, &mut out);
        }
    }
    out.extend(span.events.iter().map(|e| e.name.clone()));
    out
}

/// Runs `scopegate serve` (JSON logs to a file) on a "test/traced" policy
/// with these extra variables. Nothing is exported on a timer during a
/// test: only the shutdown flush can deliver spans and metrics.
async fn start_scopegate(
    jwks: &JwksServer,
    env: &[(&str, &str)],
) -> (
    ScopegateProcess,
    AuthorizationClient<tonic::transport::Channel>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_yaml("traced", &jwks.issuer(), &jwks.jwks_uri(), STANDARD_RULES);
    let server =
        ScopegateProcess::serve_policy(dir.path(), &policy, &["--log-format", "json"], |command| {
            command
                .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
                .env("OTEL_METRIC_EXPORT_INTERVAL", "600000")
                .env("RUST_LOG", "info")
                .envs(env.iter().copied());
        })
        .await;
    let client = server.client().await;
    (server, client, dir)
}

#[tokio::test]
async fn check_spans_join_the_callers_trace_and_are_exported_over_otlp_grpc() {
    let (receiver, otlp_addr) = Receiver::start().await;
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let (mut server, mut client, _dir) = start_scopegate(
        &jwks,
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &format!("http://{otlp_addr}"),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "scopegate-under-test"),
        ],
    )
    .await;

    let token = KEY_A.sign(&claims(&jwks.issuer()));
    let bearer = format!("Bearer {token}");
    let w3c_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let w3c_parent = "00f067aa0ba902b7";
    let traceparent = format!("00-{w3c_trace}-{w3c_parent}-01");
    let allow = check_request(
        HOST,
        "GET",
        "/orders/42",
        &[("authorization", &bearer), ("traceparent", &traceparent)],
        HashMap::new(),
    );
    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let b3_parent = "e457b5a2e4d86bd1";
    let b3 = format!("{b3_trace}-{b3_parent}-1");
    let deny = check_request(
        HOST,
        "POST",
        "/orders?coupon=SECRET",
        &[("authorization", &bearer), ("b3", &b3)],
        HashMap::new(),
    );
    let allowed = Checked(client.check(allow).await.unwrap().into_inner());
    assert_eq!(allowed.http_status(), 200);
    let denied = Checked(client.check(deny).await.unwrap().into_inner());
    assert_eq!(denied.http_status(), 403);

    server.terminate(Duration::from_secs(20)).await;

    // The allowed Check: a server span, child of the caller's span.
    let (resource, span) = receiver.check_span(w3c_trace);
    assert_eq!(
        string_attribute(&resource, "service.name"),
        Some("scopegate-under-test")
    );
    assert_eq!(span.name, "envoy.service.auth.v3.Authorization/Check");
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(hex(&span.parent_span_id), w3c_parent);
    let attribute =
        |span: &Span, key: &str| string_attribute(&span.attributes, key).map(str::to_string);
    let issuer = jwks.issuer();
    for (key, value) in [
        ("policy", "test/traced"),
        ("rule", "rules[1]"),
        ("decision", "allow"),
        ("reason", "valid_token"),
        ("issuer", issuer.as_str()),
        ("azp", "agent-client"),
    ] {
        assert_eq!(attribute(&span, key).as_deref(), Some(value), "{key}");
    }

    // The denied Check joined the B3 trace.
    let (_, span) = receiver.check_span(b3_trace);
    assert_eq!(hex(&span.parent_span_id), b3_parent);
    assert_eq!(attribute(&span, "decision").as_deref(), Some("deny"));
    assert_eq!(
        attribute(&span, "reason").as_deref(),
        Some("insufficient_scope")
    );
    assert_eq!(attribute(&span, "rule").as_deref(), Some("rules[2]"));

    // No span carries the token, nor any of its three parts.
    let secrets: Vec<&str> = std::iter::once(token.as_str())
        .chain(token.split('.'))
        .collect();
    let spans = receiver.spans.lock().unwrap().clone();
    assert!(
        spans.iter().any(|(_, s)| s.name == "jwks.fetch"),
        "the JWKS fetch has its own span"
    );
    for (_, span) in &spans {
        for text in span_strings(span) {
            for secret in &secrets {
                assert!(
                    !text.contains(secret),
                    "span {} carries the token",
                    span.name
                );
            }
        }
    }

    // Metrics went over OTLP too, under their OpenTelemetry names.
    let names = receiver.metric_names.lock().unwrap().clone();
    for name in ["scopegate.check.decisions", "scopegate.check.duration"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }

    // One JSON decision line for the deny: no query string, no token.
    let log = server.log_text();
    assert!(!log.contains(&token), "the log carries the token");
    let denies: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "deny")
        .collect();
    assert_eq!(denies.len(), 1, "{log}");
    let deny = &denies[0];
    for (key, value) in [
        ("policy", "test/traced"),
        ("rule", "rules[2]"),
        ("reason", "insufficient_scope"),
        ("sub", "auth0|user-1"),
        ("azp", "agent-client"),
        ("host", HOST),
        ("method", "POST"),
        ("path", "/orders"),
    ] {
        assert_eq!(deny[key], value, "{key} in {deny}");
    }
}

/// Through the shipped `manifests/envoy/envoy.yaml`, which sends scopegate
/// only the request headers it reads (`allowed_headers`): each form of
/// trace context (W3C, single `b3`, the `x-b3-*` headers) must be among
/// them, or a Check through Envoy starts a trace of its own.
#[tokio::test]
async fn check_spans_join_the_trace_through_the_shipped_envoy_config() {
    let (receiver, otlp_addr) = Receiver::start().await;
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let (mut server, _client, _dir) = start_scopegate(
        &jwks,
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &format!("http://{otlp_addr}"),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    )
    .await;
    let upstream = support::envoy::echo_upstream().await;
    let (_envoy, port) = support::envoy::start_envoy(server.grpc_addr.port(), upstream).await;

    // (trace id, parent span id, the headers that carry them)
    let traces = [
        (
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "00f067aa0ba902b7",
            &[(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )][..],
        ),
        (
            "80f198ee56343ba864fe8b2a57d3eff7",
            "e457b5a2e4d86bd1",
            &[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")],
        ),
        (
            "a3ce929d0e0e47364bf92f3577b34da6",
            "05e3ac9a4f6e3b90",
            &[
                ("x-b3-traceid", "a3ce929d0e0e47364bf92f3577b34da6"),
                ("x-b3-spanid", "05e3ac9a4f6e3b90"),
                ("x-b3-sampled", "1"),
            ],
        ),
    ];
    let bearer = format!("Bearer {}", KEY_A.sign(&claims(&jwks.issuer())));
    let http = reqwest::Client::new();
    for (_, _, headers) in &traces {
        let mut request = http
            .get(format!("http://127.0.0.1:{port}/orders/42"))
            .header("host", HOST)
            .header("authorization", &bearer);
        for (name, value) in *headers {
            request = request.header(*name, *value);
        }
        assert_eq!(request.send().await.unwrap().status(), 200, "{headers:?}");
    }

    server.terminate(Duration::from_secs(20)).await;
    for (trace, parent, headers) in &traces {
        let (_, span) = receiver.check_span(trace);
        assert_eq!(hex(&span.parent_span_id), *parent, "{headers:?}");
    }
}

/// An OTLP/HTTP receiver: keeps the spans POSTed to `/v1/traces`.
async fn start_http_receiver() -> (Arc<Mutex<Vec<Span>>>, std::net::SocketAddr) {
    use axum::body::Bytes;
    use axum::extract::State;
    use prost::Message as _;

    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let receive = |State(spans): State<Arc<Mutex<Vec<Span>>>>, body: Bytes| async move {
        let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
        let received = request
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        spans.lock().unwrap().extend(received);
        (
            [("content-type", "application/x-protobuf")],
            ExportTraceServiceResponse::default().encode_to_vec(),
        )
    };
    let router = axum::Router::new()
        .route("/v1/traces", axum::routing::post(receive))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (spans, addr)
}

#[tokio::test]
async fn check_spans_are_exported_over_otlp_http_protobuf_by_default() {
    let (spans, otlp_addr) = start_http_receiver().await;
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let (mut server, mut client, _dir) = start_scopegate(
        &jwks,
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &format!("http://{otlp_addr}"),
            ),
            ("OTEL_METRICS_EXPORTER", "none"),
        ],
    )
    .await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("00-{trace}-b7ad6b7169203331-01");
    let request = check_request(
        HOST,
        "GET",
        "/orders",
        &[("traceparent", &traceparent)],
        HashMap::new(),
    );
    let checked = Checked(client.check(request).await.unwrap().into_inner());
    assert_eq!(checked.http_status(), 401);
    server.terminate(Duration::from_secs(20)).await;

    let spans = spans.lock().unwrap();
    let check = spans
        .iter()
        .find(|s| hex(&s.trace_id) == trace)
        .unwrap_or_else(|| panic!("no span in trace {trace}: {spans:#?}"));
    assert_eq!(check.name, "envoy.service.auth.v3.Authorization/Check");
    assert_eq!(hex(&check.parent_span_id), "b7ad6b7169203331");
    assert_eq!(
        string_attribute(&check.attributes, "reason"),
        Some("missing_token")
    );
}
