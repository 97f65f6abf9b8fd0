//! [`Decision`](super::Decision) → Envoy `CheckResponse`.

use crate::token::ReadClaims as _;
use std::collections::HashMap;

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
use crate::mcp::{BearerError, Challenge, ProtectedResource};
use crate::policy::{CompiledPolicy, ProofOfPossession};
use crate::token::Algorithm;

/// gRPC status codes Envoy reads from `CheckResponse.status`.
mod code {
    pub const OK: i32 = 0;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// An `OkHttpResponse` that sets every claim header the token has and
/// removes every other configured claim header and every other spelling of
/// each (`x_user_id` for `x-user-id`), so that client-sent copies never
/// reach the upstream. With `envoy_metadata`, `dynamic_metadata`
/// carries `policy`, `rule`, `sub`, `azp`, `scope` and `actor` (the `act`
/// chain, outermost first) for Envoy access logs.
pub fn allow(policy: &CompiledPolicy, allowed: &Allowed, envoy_metadata: bool) -> CheckResponse {
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
        // `x_user_id` reaches some upstreams as `x-user-id`.
        headers_to_remove.extend(claim_header.spellings.iter().map(|s| s.to_string()));
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
        dynamic_metadata: envoy_metadata.then(|| allow_metadata(policy, allowed)),
    }
}

/// The dynamic metadata of an allow: `policy`, `rule`, and the token's
/// `sub`, `azp`, `scope`, `actor`; `audit_denial` for an audited denial.
fn allow_metadata(policy: &CompiledPolicy, allowed: &Allowed) -> Struct {
    let mut metadata = HashMap::with_capacity(7);
    let mut put = |key: &str, value: &str| metadata.insert(key.to_string(), string_value(value));
    put("policy", &policy.id);
    put("rule", &allowed.rule);
    if let Some(token) = &allowed.token {
        if let Some(sub) = token.subject() {
            put("sub", sub);
        }
        if let Some(azp) = token.client_id() {
            put("azp", azp);
        }
        put("scope", token.scope_line());
        let chain = token.actor_chain();
        if !chain.is_empty() {
            put("actor", &chain.join(" "));
        }
    }
    if let Some(denial) = &allowed.audited_denial {
        put("audit_denial", denial.reason);
    }
    Struct { fields: metadata }
}

/// A `DeniedHttpResponse`: the status, an RFC 6750 `WWW-Authenticate`
/// challenge (except for 503), and a JSON body
/// `{"error": "…", "error_description": "…"}` (plus `missing_scopes` for
/// `insufficient_scope`). With a protected `resource`, every challenge names
/// its metadata document and a 401 names the rule's scopes (MCP). The
/// `policy` (none for an unknown host) says which challenges apply.
pub fn deny(realm: &str, denial: &Denial, policy: Option<&CompiledPolicy>) -> CheckResponse {
    let resource = policy.and_then(|p| p.resource.as_ref());
    let pop = policy.and_then(|p| p.proof_of_possession);
    let mut headers = vec![header(
        "content-type",
        "application/json",
        HeaderAppendAction::OverwriteIfExistsOrAdd,
    )];
    if denial.status != 503 {
        headers.push(header(
            "www-authenticate",
            &www_authenticate(realm, denial, resource, pop),
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ));
    }
    let mut body = serde_json::json!({
        "error": denial.error.unwrap_or("unauthorized"),
        "error_description": denial.description,
    });
    if let Some(missing) = &denial.missing_scopes {
        body["missing_scopes"] = missing.as_str().into();
    }
    let grpc_code = match denial.status {
        400 => code::INVALID_ARGUMENT,
        401 => code::UNAUTHENTICATED,
        503 => code::UNAVAILABLE,
        _ => code::PERMISSION_DENIED,
    };
    let mut response = denied(
        denial.status,
        grpc_code,
        denial.reason,
        headers,
        body.to_string(),
    );
    response.dynamic_metadata = Some(deny_metadata(policy, denial));
    response
}

/// The dynamic metadata of a deny: `policy` and `rule` when known, and the
/// `reason`, for access logs and `scopegate check`.
fn deny_metadata(policy: Option<&CompiledPolicy>, denial: &Denial) -> Struct {
    let mut metadata = HashMap::with_capacity(3);
    if let Some(policy) = policy {
        metadata.insert("policy".to_string(), string_value(&policy.id));
    }
    if let Some(rule) = &denial.rule {
        metadata.insert("rule".to_string(), string_value(rule));
    }
    metadata.insert("reason".to_string(), string_value(denial.reason));
    Struct { fields: metadata }
}

/// The policy's RFC 9728 metadata document, answered by Envoy as the
/// client's response (a `DeniedHttpResponse` with status 200 reaches the
/// client unchanged): no token needed, `application/json`.
pub fn resource_metadata(resource: &ProtectedResource) -> CheckResponse {
    let headers = vec![
        header(
            "content-type",
            "application/json",
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ),
        header(
            "cache-control",
            "max-age=300",
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ),
    ];
    denied(
        200,
        code::PERMISSION_DENIED,
        "resource_metadata",
        headers,
        resource.document_body(),
    )
}

/// A `CheckResponse` answering the client directly.
fn denied(
    status: u16,
    grpc_code: i32,
    reason: &str,
    headers: Vec<HeaderValueOption>,
    body: String,
) -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: grpc_code,
            message: reason.to_string(),
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(status),
            }),
            headers,
            body,
        })),
        dynamic_metadata: None,
    }
}

/// `Bearer realm="…"[, error="…", error_description="…"][, scope="…"][, resource_metadata="…"]`:
/// `scope` is every scope the matched rule requires, on `insufficient_scope`
/// (RFC 6750 §3: "the scope necessary"; MCP clients replace their scopes
/// with it) and, with a protected resource, on a 401 too.
///
/// With DPoP (RFC 9449 §7.1) the value holds the challenges of every scheme
/// the API accepts, comma-separated, `Bearer` first: `Bearer` unless the
/// policy requires DPoP, `DPoP realm="…", algs="…"` when the policy accepts
/// DPoP or the denial is about a proof (an mTLS policy accepts `Bearer`
/// only: certificate-bound tokens are sent as `Bearer`, RFC 8705 §3). The error goes in the `DPoP`
/// challenge when it is about proof of possession or `Bearer` is not
/// accepted, else in the `Bearer` one. Without `pop` and without a proof
/// error the value is the `Bearer` challenge alone, as before.
pub fn www_authenticate(
    realm: &str,
    denial: &Denial,
    resource: Option<&ProtectedResource>,
    pop: Option<ProofOfPossession>,
) -> String {
    let bearer_accepted = !pop.is_some_and(ProofOfPossession::requires_dpop);
    let dpop_accepted = pop.is_some_and(ProofOfPossession::accepts_dpop) || denial.dpop;
    let error_in_dpop = denial.dpop || !bearer_accepted;
    let mut challenges = Vec::with_capacity(2);
    if bearer_accepted {
        let challenge = Challenge::bearer(realm);
        challenges.push(with_details(challenge, denial, resource, !error_in_dpop));
    }
    if dpop_accepted {
        let challenge = Challenge::dpop(realm, Algorithm::ALL.iter().map(|a| a.as_str()));
        challenges.push(with_details(challenge, denial, resource, error_in_dpop));
    }
    challenges.join(", ")
}

/// The denial's error (when `with_error`), scope and resource metadata on
/// `challenge`, rendered.
fn with_details(
    mut challenge: Challenge,
    denial: &Denial,
    resource: Option<&ProtectedResource>,
    with_error: bool,
) -> String {
    if let Some(error) = denial.error.and_then(bearer_error).filter(|_| with_error) {
        challenge = challenge.error(error).description(&denial.description);
    }
    let names_scopes =
        denial.error == Some("insufficient_scope") || (denial.status == 401 && resource.is_some());
    if names_scopes {
        challenge = challenge.scope(denial.rule_scopes.iter());
    }
    if let Some(resource) = resource {
        challenge = challenge.resource_metadata(&resource.metadata_url());
    }
    challenge.render()
}

fn bearer_error(error: &str) -> Option<BearerError> {
    Some(match error {
        "invalid_request" => BearerError::InvalidRequest,
        "invalid_token" => BearerError::InvalidToken,
        "insufficient_scope" => BearerError::InsufficientScope,
        "access_denied" => BearerError::AccessDenied,
        "invalid_dpop_proof" => BearerError::InvalidDpopProof,
        "use_dpop_nonce" => BearerError::UseDpopNonce,
        _ => return None,
    })
}

/// Adds `DPoP-Nonce: <nonce>` to a denial (RFC 9449 §8.1): the nonce the
/// client's retry must put in its proof. An allow is left unchanged.
pub fn add_dpop_nonce(response: &mut CheckResponse, nonce: &str) {
    if let Some(HttpResponse::DeniedResponse(denied)) = &mut response.http_response {
        denied.headers.push(header(
            "dpop-nonce",
            nonce,
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ));
    }
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
    use crate::policy::PopMechanism;

    fn denial(error: Option<&'static str>, rule_scopes: &[&str]) -> Denial {
        Denial {
            status: if error == Some("invalid_token") || error.is_none() {
                401
            } else {
                403
            },
            error,
            description: "the token lacks the scope write:orders".into(),
            missing_scopes: Some("write:orders".into()),
            rule_scopes: rule_scopes.iter().map(|s| Box::from(*s)).collect(),
            reason: "insufficient_scope",
            rule: None,
            dpop: false,
        }
    }

    fn resource() -> ProtectedResource {
        ProtectedResource::new(
            "https://mcp.example.com/mcp",
            vec!["https://tenant.example.com/".into()],
            vec!["orders:read".into()],
        )
        .unwrap()
    }

    #[test]
    fn the_403_challenge_names_every_scope_the_rule_requires() {
        assert_eq!(
            www_authenticate(
                "orders.example.com",
                &denial(Some("insufficient_scope"), &["read:orders", "write:orders"]),
                None,
                None
            ),
            "Bearer realm=\"orders.example.com\", error=\"insufficient_scope\", \
             error_description=\"the token lacks the scope write:orders\", scope=\"read:orders write:orders\""
        );
    }

    #[test]
    fn challenge_without_credentials_has_only_the_realm() {
        assert_eq!(
            www_authenticate("api", &denial(None, &["read:orders"]), None, None),
            "Bearer realm=\"api\""
        );
    }

    #[test]
    fn with_a_protected_resource_a_401_names_the_scopes_and_the_metadata() {
        assert_eq!(
            www_authenticate(
                "mcp.example.com",
                &denial(None, &["orders:read"]),
                Some(&resource()),
                None
            ),
            "Bearer realm=\"mcp.example.com\", scope=\"orders:read\", \
             resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\""
        );
    }

    #[test]
    fn realm_cannot_break_out_of_its_quotes() {
        let challenge = www_authenticate("evil\"\r\nx: y\\", &denial(None, &[]), None, None);
        assert_eq!(challenge, "Bearer realm=\"evil\\\"x: y\\\\\"");
    }

    const ALGS: &str = "RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512 EdDSA";

    fn proof_denial() -> Denial {
        Denial {
            status: 401,
            error: Some("invalid_dpop_proof"),
            description: "the DPoP proof was already used".into(),
            missing_scopes: None,
            rule_scopes: Box::default(),
            reason: "replayed",
            rule: None,
            dpop: true,
        }
    }

    #[test]
    fn a_proof_error_goes_in_the_dpop_challenge_after_bearer() {
        assert_eq!(
            www_authenticate("api", &proof_denial(), None, None),
            format!(
                "Bearer realm=\"api\", DPoP realm=\"api\", algs=\"{ALGS}\", \
                 error=\"invalid_dpop_proof\", error_description=\"the DPoP proof was already used\""
            )
        );
    }

    #[test]
    fn challenges_follow_the_policy_proof_of_possession() {
        let pop = |mechanism, required| {
            Some(ProofOfPossession {
                mechanism,
                required,
            })
        };
        let optional = pop(PopMechanism::Dpop, false);
        let required = pop(PopMechanism::Dpop, true);
        let no_token = denial(None, &[]);
        assert_eq!(
            www_authenticate("api", &no_token, None, optional),
            format!("Bearer realm=\"api\", DPoP realm=\"api\", algs=\"{ALGS}\"")
        );
        assert_eq!(
            www_authenticate("api", &no_token, None, required),
            format!("DPoP realm=\"api\", algs=\"{ALGS}\"")
        );
        assert_eq!(
            www_authenticate("api", &no_token, None, None),
            "Bearer realm=\"api\""
        );
        for required in [false, true] {
            assert_eq!(
                www_authenticate("api", &no_token, None, pop(PopMechanism::Mtls, required)),
                "Bearer realm=\"api\"",
                "an mTLS policy does not advertise DPoP"
            );
        }
    }
}
