//! The caller's trace, read from the CheckRequest's HTTP headers, so that a
//! Check's span joins the request's trace: W3C `traceparent`/`tracestate`
//! first, else B3 (the single `b3` header, else `x-b3-traceid`,
//! `x-b3-spanid`, `x-b3-sampled`/`x-b3-flags`). Only called when spans are
//! exported.

use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;

use super::request::RequestHeaders;

/// The remote parent named by the request's headers, if any is valid.
pub fn extract_parent(http: &HttpRequest) -> Option<Context> {
    let headers = Headers(http);
    let w3c = TraceContextPropagator::new().extract(&headers);
    if w3c.span().span_context().is_valid() {
        return Some(w3c);
    }
    let b3 = match headers.get("b3") {
        Some(single) => b3_single(single),
        None => b3_multi(&headers),
    }?;
    Some(Context::new().with_remote_span_context(b3))
}

struct Headers<'a>(&'a HttpRequest);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        RequestHeaders::of(self.0).single(key)
    }

    fn keys(&self) -> Vec<&str> {
        // Only for propagators that read every header; the two used here
        // ask for theirs by name.
        self.0.headers.keys().map(String::as_str).collect()
    }
}

/// `b3: {traceid}-{spanid}[-{sampling}[-{parentspanid}]]`; a lone sampling
/// flag carries no parent.
fn b3_single(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    b3_span_context(trace_id, span_id, parts.next())
}

fn b3_multi(headers: &Headers<'_>) -> Option<SpanContext> {
    let trace_id = headers.get("x-b3-traceid")?;
    let span_id = headers.get("x-b3-spanid")?;
    let sampling = match headers.get("x-b3-flags") {
        Some("1") => Some("d"),
        _ => headers.get("x-b3-sampled"),
    };
    b3_span_context(trace_id.trim(), span_id.trim(), sampling.map(str::trim))
}

fn b3_span_context(trace_id: &str, span_id: &str, sampling: Option<&str>) -> Option<SpanContext> {
    let hex = |s: &str, lengths: &[usize]| {
        lengths.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
    };
    if !hex(trace_id, &[16, 32]) || !hex(span_id, &[16]) {
        return None;
    }
    // A 64-bit B3 trace id is the low half of a 128-bit one.
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = match sampling {
        Some("1" | "d" | "true") => TraceFlags::SAMPLED,
        _ => TraceFlags::default(),
    };
    let context = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    fn parent(headers: &[(&str, &str)]) -> Option<SpanContext> {
        extract_parent(&request(headers)).map(|cx| cx.span().span_context().clone())
    }

    #[test]
    fn w3c_traceparent_and_tracestate() {
        let parent = parent(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "vendor=abc"),
        ])
        .unwrap();
        assert_eq!(
            parent.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(
            parent.span_id(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        );
        assert!(parent.is_sampled() && parent.is_remote());
        assert_eq!(parent.trace_state().get("vendor"), Some("abc"));
    }

    #[test]
    fn w3c_wins_over_b3() {
        let parent = parent(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ])
        .unwrap();
        assert_eq!(
            parent.span_id(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        );
    }

    #[test]
    fn b3_single_header() {
        let parent = parent(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )])
        .unwrap();
        assert_eq!(
            parent.trace_id(),
            TraceId::from_hex("80f198ee56343ba864fe8b2a57d3eff7").unwrap()
        );
        assert_eq!(
            parent.span_id(),
            SpanId::from_hex("e457b5a2e4d86bd1").unwrap()
        );
        assert!(parent.is_sampled());
    }

    #[test]
    fn b3_multi_headers_with_a_64_bit_trace_id() {
        let parent = parent(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "0"),
        ])
        .unwrap();
        assert_eq!(
            parent.trace_id(),
            TraceId::from_hex("0000000000000000a3ce929d0e0e4736").unwrap()
        );
        assert!(!parent.is_sampled());
    }

    #[test]
    fn no_or_invalid_context_is_no_parent() {
        assert!(parent(&[]).is_none());
        assert!(parent(&[("b3", "1")]).is_none());
        assert!(parent(&[("b3", "+0f198ee56343ba8-e457b5a2e4d86bd1")]).is_none());
        assert!(
            parent(&[(
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
            )])
            .is_none()
        );
        assert!(parent(&[("x-b3-traceid", "a3ce929d0e0e4736")]).is_none());
    }
}
