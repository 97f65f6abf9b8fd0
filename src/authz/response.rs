//! [`Decision`](super::Decision) → Envoy `CheckResponse`.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;

use super::decision::{Allowed, Denial};
use crate::policy::CompiledPolicy;

/// gRPC status codes Envoy reads from `CheckResponse.status`.
mod code {
    pub const OK: i32 = 0;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// An `OkHttpResponse` that sets every claim header the token has and
/// removes every other configured claim header, so that client-sent copies
/// never reach the upstream. `dynamic_metadata` carries `policy`, `rule`,
/// `sub`, `azp` and `scope` for Envoy access logs.
pub fn allow(policy: &CompiledPolicy, allowed: &Allowed) -> CheckResponse {
    let mut headers = Vec::with_capacity(policy.claim_headers.len());
    let mut headers_to_remove = Vec::new();
    for claim_header in policy.claim_headers.iter() {
        match allowed
            .token
            .as_ref()
            .and_then(|t| t.header_value(&claim_header.claim))
        {
            Some(value) => headers.push(header(
                &claim_header.header,
                &value,
                HeaderAppendAction::OverwriteIfExistsOrAdd,
            )),
            None => headers_to_remove.push(claim_header.header.to_string()),
        }
    }
    let mut metadata = BTreeMap::new();
    metadata.insert("policy".to_string(), string_value(&policy.id));
    metadata.insert("rule".to_string(), string_value(&allowed.rule));
    if let Some(token) = &allowed.token {
        if let Some(sub) = token.subject() {
            metadata.insert("sub".to_string(), string_value(sub));
        }
        if let Some(azp) = token.client_id() {
            metadata.insert("azp".to_string(), string_value(azp));
        }
        metadata.insert("scope".to_string(), string_value(token.scope_line()));
    }
    if let Some(denial) = &allowed.audited_denial {
        metadata.insert("audit_denial".to_string(), string_value(denial.reason));
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: code::OK,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove,
            ..Default::default()
        })),
        dynamic_metadata: Some(Struct {
            fields: metadata.into_iter().collect(),
        }),
    }
}

/// A `DeniedHttpResponse`: the status, an RFC 6750 `WWW-Authenticate`
/// challenge (except for 503), and a JSON body
/// `{"error": "…", "error_description": "…"}`.
pub fn deny(realm: &str, denial: &Denial) -> CheckResponse {
    let mut headers = vec![header(
        "content-type",
        "application/json",
        HeaderAppendAction::OverwriteIfExistsOrAdd,
    )];
    if denial.status != 503 {
        headers.push(header(
            "www-authenticate",
            &www_authenticate(realm, denial),
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ));
    }
    let body = serde_json::json!({
        "error": denial.error.unwrap_or("unauthorized"),
        "error_description": denial.description,
    });
    let grpc_code = match denial.status {
        401 => code::UNAUTHENTICATED,
        503 => code::UNAVAILABLE,
        _ => code::PERMISSION_DENIED,
    };
    CheckResponse {
        status: Some(rpc::Status {
            code: grpc_code,
            message: denial.reason.to_string(),
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(denial.status),
            }),
            headers,
            body: body.to_string(),
        })),
        dynamic_metadata: None,
    }
}

/// `Bearer realm="…"[, error="…", error_description="…"][, scope="…"]`.
pub fn www_authenticate(realm: &str, denial: &Denial) -> String {
    let mut challenge = format!("Bearer realm=\"{}\"", quoted_string_content(realm));
    if let Some(error) = denial.error {
        challenge.push_str(&format!(
            ", error=\"{error}\", error_description=\"{}\"",
            quoted_string_content(&denial.description)
        ));
    }
    if let Some(scopes) = &denial.missing_scopes {
        challenge.push_str(&format!(", scope=\"{}\"", quoted_string_content(scopes)));
    }
    challenge
}

/// Escapes `"` and `\` and drops control characters, so a value cannot end
/// the quoted string or the header.
fn quoted_string_content(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn header(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(error: Option<&'static str>, scopes: Option<&str>) -> Denial {
        Denial {
            status: 403,
            error,
            description: "the token lacks a required scope".into(),
            missing_scopes: scopes.map(String::from),
            reason: "insufficient_scope",
            rule: None,
        }
    }

    #[test]
    fn challenge_names_the_missing_scopes() {
        assert_eq!(
            www_authenticate(
                "orders.example.com",
                &denial(Some("insufficient_scope"), Some("read:orders write:orders"))
            ),
            "Bearer realm=\"orders.example.com\", error=\"insufficient_scope\", \
             error_description=\"the token lacks a required scope\", scope=\"read:orders write:orders\""
        );
    }

    #[test]
    fn challenge_without_credentials_has_only_the_realm() {
        assert_eq!(
            www_authenticate("api", &denial(None, None)),
            "Bearer realm=\"api\""
        );
    }

    #[test]
    fn realm_cannot_break_out_of_its_quotes() {
        let challenge = www_authenticate("evil\"\r\nx: y\\", &denial(None, None));
        assert_eq!(challenge, "Bearer realm=\"evil\\\"x: y\\\\\"");
    }
}
