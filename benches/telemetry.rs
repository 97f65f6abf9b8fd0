//! The Check path's cost with telemetry off and on.
//!
//! * `telemetry_off`: the default (no `OTEL_EXPORTER_OTLP_ENDPOINT`): JSON
//!   logs at `info` (to a sink), metrics recorded, the Check span disabled.
//! * `telemetry_on`: the same plus the OpenTelemetry layer: every Check's
//!   span joins the request's sampled `traceparent` and is batched and
//!   exported over OTLP gRPC to a receiver on loopback.
//!
//! Each mode runs an allow (an RS256 token, from the token cache after the
//! first Check) and a deny (no token).
//! `CheckService::check_request` is called directly: no gRPC transport, so
//! the difference is telemetry alone.
//!
//! ```sh
//! nice -n 10 cargo bench --bench telemetry
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::Criterion;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use scopegate::authz::CheckService;
use scopegate::telemetry::{self, LogFormat};
use support::*;
use tracing::instrument::WithSubscriber as _;

/// An OTLP gRPC receiver that counts spans and drops them.
#[derive(Default, Clone)]
struct CountingReceiver(Arc<AtomicUsize>);

#[tonic::async_trait]
impl TraceService for CountingReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(spans, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn start_receiver() -> (CountingReceiver, std::net::SocketAddr) {
    let receiver = CountingReceiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(receiver.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(async move { server.await.unwrap() });
    (receiver, addr)
}

fn requests(token: &str) -> [(&'static str, CheckRequest); 2] {
    let bearer = format!("Bearer {token}");
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let request = |headers: &[(&str, &str)]| {
        check_request(HOST, "GET", "/orders/42", headers, HashMap::new())
    };
    [
        (
            "allow",
            request(&[("authorization", &bearer), ("traceparent", traceparent)]),
        ),
        ("deny_no_token", request(&[("traceparent", traceparent)])),
    ]
}

fn bench_mode(
    c: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    mode: &str,
    service: &CheckService,
    requests: &[(&'static str, CheckRequest)],
    dispatch: &tracing::Dispatch,
) {
    let mut group = c.benchmark_group(format!("check/{mode}"));
    for (name, request) in requests {
        group.bench_function(*name, |b| {
            b.to_async(runtime).iter(|| {
                service
                    .check_request(request)
                    .with_subscriber(dispatch.clone())
            })
        });
    }
    group.finish();
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_jwks, scopegate, token) = runtime.block_on(async {
        let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
        let policy = policy_yaml("bench", &jwks.issuer(), &jwks.jwks_uri(), STANDARD_RULES);
        let scopegate = Scopegate::start(&policy).await;
        let token = KEY_A.sign(&claims(&jwks.issuer()));
        (jwks, scopegate, token)
    });
    let service = CheckService::new(
        scopegate.running.snapshot().clone(),
        scopegate.running.token_cache().clone(),
    );
    let requests = requests(&token);
    for (name, request) in &requests {
        let status = runtime.block_on(service.check_request(request));
        let code = status.status.map_or(-1, |s| s.code);
        assert_eq!(code == 0, *name == "allow", "{name}: gRPC code {code}");
    }
    let mut c = Criterion::default().configure_from_args();

    // Off first, while no exporting subscriber exists: the Check span's
    // callsite is then cached as disabled, as in production.
    let off = tracing::Dispatch::new(telemetry::subscriber(
        LogFormat::Json,
        false,
        None,
        std::io::sink,
    ));
    bench_mode(&mut c, &runtime, "telemetry_off", &service, &requests, &off);

    let (receiver, addr) = runtime.block_on(start_receiver());
    let provider = runtime.block_on(async {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(format!("http://{addr}"))
            .build()
            .unwrap();
        telemetry::tracer_provider_with(exporter)
    });
    let on = tracing::Dispatch::new(telemetry::subscriber(
        LogFormat::Json,
        false,
        Some(&provider),
        std::io::sink,
    ));
    bench_mode(&mut c, &runtime, "telemetry_on", &service, &requests, &on);

    runtime
        .block_on(async { tokio::task::spawn_blocking(move || provider.shutdown()).await })
        .unwrap()
        .unwrap();
    println!(
        "telemetry_on: the receiver got {} spans (the batch queue drops what it cannot export)",
        receiver.0.load(Ordering::Relaxed)
    );
    c.final_summary();
}
