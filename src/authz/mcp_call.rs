//! The MCP stage of rule matching: the JSON-RPC call (`method`, tool name)
//! that `mcp:` rules match, read only when such a rule could match the
//! request. The body is the source of truth; Envoy's MCP filter metadata is
//! used when no body was sent with the Check.

use super::request::HttpAttributes;
use crate::mcp::{DEFAULT_MAX_BODY_BYTES, McpBodyError, McpCall, McpMetadataError};
use crate::policy::{CompiledRule, RequestPath};

/// Why the call could not be read: a 400 `invalid_request`, never a rule
/// silently skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McpCallError {
    /// The body is not one JSON-RPC request.
    #[error(transparent)]
    Body(#[from] McpBodyError),
    /// Envoy's MCP filter metadata is not one JSON-RPC request.
    #[error(transparent)]
    Metadata(#[from] McpMetadataError),
}

impl McpCallError {
    /// A stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            McpCallError::Body(e) => e.label(),
            McpCallError::Metadata(e) => e.label(),
        }
    }
}

/// The first rule that matches the request: its method and path and, for
/// a rule with `mcp:`, the JSON-RPC call — read once, from the first such
/// rule on, and only for `POST` (JSON-RPC requests are POSTed; the SSE `GET`
/// and the session `DELETE` of streamable HTTP carry none, so `mcp:` rules
/// never match them).
pub fn find_rule<'r>(
    rules: &'r [CompiledRule],
    path: &RequestPath<'_>,
    request: &HttpAttributes<'_>,
) -> Result<Option<&'r CompiledRule>, McpCallError> {
    let is_post = request.method.eq_ignore_ascii_case("POST");
    let mut call: Option<McpCall> = None;
    for rule in rules.iter().filter(|r| r.matches(request.method, path)) {
        let Some(matcher) = &rule.mcp else {
            return Ok(Some(rule));
        };
        if !is_post {
            continue;
        }
        let call = match &mut call {
            Some(call) => call,
            None => call.insert(read(request)?),
        };
        if matcher.matches(call.method(), call.tool()) {
            return Ok(Some(rule));
        }
    }
    Ok(None)
}

/// The call from the body, else from Envoy's MCP filter metadata.
fn read(request: &HttpAttributes<'_>) -> Result<McpCall, McpCallError> {
    let source = &request.mcp;
    if source.body.bytes.is_empty()
        && let Some(metadata) = source.metadata
        && let Some(call) = McpCall::from_envoy_metadata(metadata)?
    {
        return Ok(call);
    }
    Ok(McpCall::from_body(&source.body, DEFAULT_MAX_BODY_BYTES)?)
}
