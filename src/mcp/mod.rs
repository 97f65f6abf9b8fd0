//! MCP servers as protected resources (DESIGN §5): what a Check of an MCP
//! API uses (`authz` calls it from the decision and the response).
//!
//! * [`ProtectedResource`] — RFC 9728 protected resource metadata: the
//!   document, the well-known paths it is answered on, and the URL a
//!   challenge's `resource_metadata` points to.
//! * [`Challenge`] — the `WWW-Authenticate: Bearer …` value of a 401/403, in
//!   a fixed order, escaped, with no `name=` text where a client could
//!   misread it.
//! * [`McpCall`] — the JSON-RPC method and tool of a request, from Envoy's
//!   MCP filter metadata or from the bounded request body ([`McpBodyError`]
//!   for every way a body can fail to be one JSON-RPC request).
//! * [`McpMatcher`] — a rule's `mcp: {methods, tools}` globs.
//!
//! ```text
//!  GET /.well-known/oauth-protected-resource/mcp ─► ProtectedResource::matches_metadata_request ─► 200 document_body()
//!  POST /mcp ─► McpCall::from_envoy_metadata | McpCall::from_body ─► McpMatcher::matches(method, tool) ─► rule
//!                                     └─ McpBodyError ─► 400 invalid_request
//!  401/403 ─► Challenge::bearer(host).error(…).scope(rule scopes).resource_metadata(metadata_url())
//! ```

mod challenge;
mod jsonrpc;
mod matcher;
mod metadata;

pub use challenge::{BearerError, Challenge};
pub use jsonrpc::{
    DEFAULT_MAX_BODY_BYTES, ENVOY_MCP_METADATA_NAMESPACE, McpBody, McpBodyError, McpCall,
    McpMetadataError, TOOLS_CALL,
};
pub(crate) use matcher::glob_matches;
pub use matcher::{McpMatcher, McpMatcherError};
pub use metadata::{ProtectedResource, ResourceError, WELL_KNOWN_PREFIX};
