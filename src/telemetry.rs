//! Logs, traces and the metrics pipeline's OTLP side.
//!
//! ```text
//!  tracing ─┬─► fmt layer (RUST_LOG, default info) ─► stderr, text or JSON
//!           └─► OpenTelemetry layer (scopegate spans) ─► batch ─► OTLP   ┐ only when an
//!  metrics ───► PeriodicReader ─────────────────────────────────► OTLP   ┘ endpoint is set
//! ```
//!
//! OpenTelemetry is configured only by the standard `OTEL_*` variables:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT`)
//! turns a signal on; `OTEL_EXPORTER_OTLP_PROTOCOL` picks `http/protobuf`
//! (the default, port 4318) or `grpc` (port 4317); `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`,
//! `OTEL_EXPORTER_OTLP_HEADERS`/`_TIMEOUT`/`_COMPRESSION`, `OTEL_BSP_*` and
//! `OTEL_METRIC_EXPORT_INTERVAL` work as the specification says;
//! `OTEL_SDK_DISABLED=true` or `OTEL_{TRACES,METRICS}_EXPORTER=none` turn it
//! off. Without an endpoint no exporter exists and the Check span is a
//! disabled `tracing` span.

use std::io::IsTerminal as _;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::PeriodicReader;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, FilterFn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, Registry};

/// The `tracing` target of the spans exported over OTLP.
pub const SPAN_TARGET_PREFIX: &str = "scopegate";

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for Loki, Elasticsearch, …).
    Json,
}

/// The OpenTelemetry configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter rejected the `OTEL_EXPORTER_OTLP_*` settings.
    #[error("OTLP {signal} exporter (check the OTEL_EXPORTER_OTLP_* variables): {source}")]
    Exporter {
        /// `traces` or `metrics`.
        signal: &'static str,
        /// The exporter's error.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// Metrics were recorded before the pipeline was installed (a bug).
    #[error(transparent)]
    Metrics(#[from] crate::metrics::AlreadyInstalled),
}

/// The running telemetry pipeline; [`Telemetry::shutdown`] flushes it.
#[must_use = "call shutdown() at exit to flush the last spans and metrics"]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

/// Which OTLP signals the environment turns on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtlpSignals {
    /// Export spans.
    pub traces: bool,
    /// Export metrics.
    pub metrics: bool,
}

impl OtlpSignals {
    /// Reads the `OTEL_*` variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim() == "true");
        let signal = |endpoint: &str, exporter: &str| {
            !disabled
                && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set(endpoint))
                && var(exporter).is_none_or(|v| v.trim() != "none")
        };
        OtlpSignals {
            traces: signal("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER"),
            metrics: signal(
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "OTEL_METRICS_EXPORTER",
            ),
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }
}

/// Installs the log subscriber and, when `OTEL_*` asks for them, the OTLP
/// trace and metric exporters. Call once, at start, inside the Tokio
/// runtime (the gRPC exporter needs it), before serving.
pub fn init(format: LogFormat) -> Result<Telemetry, TelemetryError> {
    let signals = OtlpSignals::from_env();
    let tracer_provider = signals.traces.then(tracer_provider).transpose()?;
    if signals.metrics {
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .build()
            .map_err(|source| TelemetryError::Exporter {
                signal: "metrics",
                source,
            })?;
        crate::metrics::install(PeriodicReader::builder(exporter).build())?;
    }
    // Colours only for a person at a terminal: never in files, pipes or a
    // container's log stream.
    let ansi = std::io::stderr().is_terminal();
    subscriber(format, ansi, tracer_provider.as_ref(), std::io::stderr).init();
    tracing::info!(
        traces = signals.traces,
        metrics = signals.metrics,
        "OpenTelemetry export"
    );
    Ok(Telemetry { tracer_provider })
}

/// The subscriber [`init`] installs: log lines (`RUST_LOG`, default
/// `info`) to `log_writer`, text lines with ANSI colours only when `ansi`
/// is set, and scopegate's spans to `tracer_provider`.
pub fn subscriber<W>(
    format: LogFormat,
    ansi: bool,
    tracer_provider: Option<&SdkTracerProvider>,
    log_writer: W,
) -> impl tracing::Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let otel_layer = tracer_provider.map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("scopegate"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            .with_filter(FilterFn::new(|meta| {
                meta.is_span() && meta.target().starts_with(SPAN_TARGET_PREFIX)
            }))
    });
    Registry::default()
        .with(log_layer(format, ansi, log_writer))
        .with(otel_layer)
}

fn log_layer<W>(
    format: LogFormat,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing_subscriber::Layer<Registry> + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(ansi).with_filter(filter).boxed(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
    }
}

fn tracer_provider() -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .build()
        .map_err(|source| TelemetryError::Exporter {
            signal: "traces",
            source,
        })?;
    let provider = tracer_provider_with(exporter);
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(provider)
}

/// A tracer provider batching spans to `exporter`, with scopegate's
/// resource and the `OTEL_TRACES_SAMPLER`/`OTEL_BSP_*` settings.
pub fn tracer_provider_with(exporter: opentelemetry_otlp::SpanExporter) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_resource(resource())
        .with_batch_exporter(exporter)
        .build()
}

/// The OpenTelemetry resource: `OTEL_RESOURCE_ATTRIBUTES` and
/// `OTEL_SERVICE_NAME`, with `service.name` defaulting to `scopegate`.
pub fn resource() -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let builder = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    if named {
        builder.build()
    } else {
        builder.with_service_name("scopegate").build()
    }
}

impl Telemetry {
    /// Exports what is still queued and stops the exporters.
    pub async fn shutdown(self) {
        let tracer_provider = self.tracer_provider;
        let flushed = tokio::task::spawn_blocking(move || {
            if let Some(provider) = tracer_provider
                && let Err(error) = provider.shutdown()
            {
                tracing::warn!(%error, "trace pipeline shutdown");
            }
            crate::metrics::shutdown();
        })
        .await;
        if let Err(error) = flushed {
            tracing::warn!(%error, "telemetry shutdown task failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A log writer whose output the test reads back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn text_log_line(ansi: bool) -> String {
        let out = Captured::default();
        let subscriber = subscriber(LogFormat::Text, ansi, None, out.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(policy = "shop/orders-api", "deny");
        });
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn text_logs_are_coloured_only_when_asked() {
        let plain = text_log_line(false);
        assert!(plain.contains("deny"), "{plain:?}");
        assert!(!plain.contains('\x1b'), "escape codes in {plain:?}");
        if std::env::var_os("NO_COLOR").is_none() {
            assert!(text_log_line(true).contains('\x1b'));
        }
    }

    fn signals(vars: &[(&str, &str)]) -> OtlpSignals {
        OtlpSignals::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn no_endpoint_means_no_export() {
        assert_eq!(
            signals(&[("OTEL_SERVICE_NAME", "x")]),
            OtlpSignals {
                traces: false,
                metrics: false
            }
        );
        assert_eq!(
            signals(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]),
            OtlpSignals {
                traces: false,
                metrics: false
            }
        );
    }

    #[test]
    fn the_generic_endpoint_turns_both_signals_on() {
        assert_eq!(
            signals(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]),
            OtlpSignals {
                traces: true,
                metrics: true
            }
        );
    }

    #[test]
    fn signal_endpoints_and_exporter_none_select_signals() {
        assert_eq!(
            signals(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces"
            )]),
            OtlpSignals {
                traces: true,
                metrics: false
            }
        );
        assert_eq!(
            signals(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_METRICS_EXPORTER", "none"),
            ]),
            OtlpSignals {
                traces: true,
                metrics: false
            }
        );
        assert_eq!(
            signals(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_SDK_DISABLED", "true"),
            ]),
            OtlpSignals {
                traces: false,
                metrics: false
            }
        );
    }
}
