//! Which MCP call a request makes: the JSON-RPC `method` and, for
//! `tools/call`, the tool (`params.name`) — from Envoy's MCP filter metadata
//! when present, else from the request body (DESIGN §5).
//!
//! ```text
//! CheckRequest.attributes.metadata_context.filter_metadata["envoy.filters.http.mcp"]
//!     {jsonrpc: "2.0", method: "tools/call", params: {name: "delete_order"}}
//!         └─► McpCall::from_envoy_metadata ─┐
//! CheckRequest.attributes.request.http.raw_body (with_request_body)      ├─► McpCall {method, tool}
//!         └─► McpCall::from_body(McpBody{bytes, partial, declared_length}, limit) ─┘
//! ```
//!
//! The body must be exactly one complete JSON-RPC 2.0 request or
//! notification object. Anything else — a batch, a cut-off or over-long
//! body, non-JSON, a response, a key given twice — is a distinct
//! [`McpBodyError`], which the Check answers with 400 `invalid_request`: a
//! rule that needs to know the call never skips it silently.
//!
//! Duplicate keys are refused (at the top level and in `params`) because
//! JSON parsers disagree on them: if scopegate read the first `method` and
//! the MCP server the last, a token allowed to call one tool could call
//! another.

use std::borrow::Cow;
use std::fmt;

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::{Struct, value::Kind};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

/// The dynamic metadata namespace Envoy's MCP filter
/// (`envoy.filters.http.mcp`) writes, and which ext_authz forwards in
/// `metadata_context.filter_metadata` when listed in its
/// `metadata_context_namespaces`.
pub const ENVOY_MCP_METADATA_NAMESPACE: &str = "envoy.filters.http.mcp";

/// The body bound scopegate suggests for `with_request_body.max_request_bytes`
/// (64 KiB: MCP requests are small; tool arguments are the only large part).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// The JSON-RPC method of a tool invocation, the one method that names a tool.
pub const TOOLS_CALL: &str = "tools/call";

/// One MCP call: the JSON-RPC method and, for `tools/call`, the tool name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpCall {
    method: String,
    tool: Option<String>,
}

impl McpCall {
    /// A call of `method` (and `tool`, for `tools/call`).
    pub fn new(method: impl Into<String>, tool: Option<String>) -> Self {
        McpCall {
            method: method.into(),
            tool,
        }
    }

    /// The JSON-RPC method, e.g. `tools/call`, `initialize`,
    /// `notifications/initialized`.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The tool a `tools/call` invokes; `None` for every other method.
    pub fn tool(&self) -> Option<&str> {
        self.tool.as_deref()
    }

    /// Reads the call from a request body.
    ///
    /// `limit` is the largest body accepted (use the same value as Envoy's
    /// `max_request_bytes`); a body that says it is longer, or that Envoy
    /// marked partial, is refused before it is parsed.
    pub fn from_body(body: &McpBody<'_>, limit: usize) -> Result<Self, McpBodyError> {
        let received = body.bytes.len();
        if received > limit || body.declared_length.is_some_and(|d| d > limit as u64) {
            return Err(McpBodyError::TooLarge {
                length: body
                    .declared_length
                    .unwrap_or(received as u64)
                    .max(received as u64),
                limit,
            });
        }
        if body.partial || body.declared_length.is_some_and(|d| d > received as u64) {
            return Err(McpBodyError::Partial {
                received,
                declared: body.declared_length,
            });
        }
        let text = body
            .bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .map(|start| &body.bytes[start..]);
        match text.and_then(|t| t.first()) {
            None => return Err(McpBodyError::Empty),
            Some(b'[') => return Err(McpBodyError::Batch),
            Some(b'{') => {}
            Some(_) => {
                return Err(match serde_json::from_slice::<IgnoredAny>(body.bytes) {
                    Ok(_) => McpBodyError::NotAnObject,
                    Err(e) => McpBodyError::from_json(&e),
                });
            }
        }
        let message: Message =
            serde_json::from_slice(body.bytes).map_err(|e| McpBodyError::from_json(&e))?;
        message.into_call()
    }

    /// Reads the call from Envoy's MCP filter metadata, when the filter ran
    /// and forwarded it: `Ok(None)` when `metadata` has no
    /// [`ENVOY_MCP_METADATA_NAMESPACE`] entry (the body is the source then).
    pub fn from_envoy_metadata(metadata: &Metadata) -> Result<Option<Self>, McpMetadataError> {
        metadata
            .filter_metadata
            .get(ENVOY_MCP_METADATA_NAMESPACE)
            .map(Self::from_envoy_struct)
            .transpose()
    }

    /// Reads the call from the MCP filter's metadata struct (`jsonrpc`,
    /// `method`, `params.name`).
    pub fn from_envoy_struct(fields: &Struct) -> Result<Self, McpMetadataError> {
        let string = |s: &Struct, key: &str| match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(value)) => Some(value.clone()),
            _ => None,
        };
        if string(fields, "jsonrpc").as_deref() != Some("2.0") {
            return Err(McpMetadataError::NotJsonRpc2);
        }
        let method = string(fields, "method").ok_or(McpMetadataError::NoMethod)?;
        if method.starts_with("__") {
            // Newer filters mark a JSON-RPC response `__jsonrpc_response`.
            return Err(McpMetadataError::NotARequest);
        }
        let tool = if method == TOOLS_CALL {
            let params = match fields.get_struct("params") {
                Some(params) => params,
                None => return Err(McpMetadataError::NoToolName),
            };
            Some(string(params, "name").ok_or(McpMetadataError::NoToolName)?)
        } else {
            None
        };
        Ok(McpCall { method, tool })
    }
}

impl fmt::Display for McpCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tool {
            Some(tool) => write!(f, "{} {tool}", self.method),
            None => f.write_str(&self.method),
        }
    }
}

/// A request body as the Check carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McpBody<'a> {
    /// The body bytes (`attributes.request.http.raw_body` with Envoy's
    /// `pack_as_bytes: true`).
    pub bytes: &'a [u8],
    /// Envoy cut the body (the Check's `x-envoy-auth-partial-body: true`
    /// header, sent with `allow_partial_message: true`).
    pub partial: bool,
    /// The request's `content-length`, when it had one.
    pub declared_length: Option<u64>,
}

impl<'a> McpBody<'a> {
    /// A complete body of unknown declared length.
    pub fn complete(bytes: &'a [u8]) -> Self {
        McpBody {
            bytes,
            partial: false,
            declared_length: None,
        }
    }
}

/// Why a body is not one JSON-RPC request scopegate can match (each a 400
/// `invalid_request`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McpBodyError {
    /// No body, or only whitespace.
    #[error("the request has no body; an MCP request is one JSON-RPC message in the POST body")]
    Empty,
    /// Longer than the bound.
    #[error("the request body is {length} bytes, over the {limit}-byte limit for MCP requests")]
    TooLarge {
        /// The body's (declared or received) length.
        length: u64,
        /// The bound.
        limit: usize,
    },
    /// Envoy forwarded only part of the body.
    #[error("only part of the request body reached the authorizer ({received} of {} bytes); raise with_request_body.max_request_bytes or send a smaller request", declared.map_or("an unknown number of".to_string(), |d| d.to_string()))]
    Partial {
        /// Bytes received.
        received: usize,
        /// The declared length, when known.
        declared: Option<u64>,
    },
    /// The JSON text ends in the middle of a value.
    #[error("the request body ends in the middle of a JSON value")]
    Truncated,
    /// Not JSON (or not UTF-8, or text after the message).
    #[error("the request body is not a single JSON value (line {line}, column {column})")]
    NotJson {
        /// Where the parser stopped.
        line: usize,
        /// Where the parser stopped.
        column: usize,
    },
    /// A JSON array: a JSON-RPC batch.
    #[error(
        "the request body is a JSON-RPC batch; send one message per request (MCP over HTTP does not batch)"
    )]
    Batch,
    /// JSON, but not an object.
    #[error("the request body is JSON but not a JSON-RPC message object")]
    NotAnObject,
    /// `jsonrpc` is missing or not `"2.0"`.
    #[error("the request body is not JSON-RPC 2.0 (\"jsonrpc\": \"2.0\" is missing)")]
    NotJsonRpc2,
    /// No `method`, or not a string, in an object that is not a response.
    #[error("the JSON-RPC message has no string \"method\"")]
    NoMethod,
    /// A JSON-RPC response (`result`/`error`, no `method`).
    #[error("the body is a JSON-RPC response, not a request")]
    NotARequest,
    /// A `tools/call` without a string `params.name`.
    #[error("the tools/call request has no string params.name naming the tool")]
    NoToolName,
    /// A key appears twice where it decides the call.
    #[error("the JSON-RPC message has the key {key:?} more than once")]
    DuplicateKey {
        /// The repeated key.
        key: &'static str,
    },
}

impl McpBodyError {
    /// A short stable label for metrics and logs (`reason=…`).
    pub fn label(&self) -> &'static str {
        match self {
            McpBodyError::Empty => "empty",
            McpBodyError::TooLarge { .. } => "too_large",
            McpBodyError::Partial { .. } => "partial",
            McpBodyError::Truncated => "truncated",
            McpBodyError::NotJson { .. } => "not_json",
            McpBodyError::Batch => "batch",
            McpBodyError::NotAnObject => "not_object",
            McpBodyError::NotJsonRpc2 => "not_jsonrpc2",
            McpBodyError::NoMethod => "no_method",
            McpBodyError::NotARequest => "not_request",
            McpBodyError::NoToolName => "no_tool_name",
            McpBodyError::DuplicateKey { .. } => "duplicate_key",
        }
    }

    fn from_json(error: &serde_json::Error) -> Self {
        if error.is_eof() {
            McpBodyError::Truncated
        } else {
            McpBodyError::NotJson {
                line: error.line(),
                column: error.column(),
            }
        }
    }
}

/// Why Envoy's MCP filter metadata does not name a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McpMetadataError {
    /// `jsonrpc` is missing or not `"2.0"`.
    #[error("Envoy's MCP metadata has no \"jsonrpc\": \"2.0\"")]
    NotJsonRpc2,
    /// No string `method`.
    #[error("Envoy's MCP metadata has no string method")]
    NoMethod,
    /// The filter saw a JSON-RPC response.
    #[error("Envoy's MCP metadata describes a JSON-RPC response, not a request")]
    NotARequest,
    /// `tools/call` without a string `params.name`.
    #[error("Envoy's MCP metadata for tools/call has no string params.name")]
    NoToolName,
}

impl McpMetadataError {
    /// A short stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            McpMetadataError::NotJsonRpc2 => "metadata_not_jsonrpc2",
            McpMetadataError::NoMethod => "metadata_no_method",
            McpMetadataError::NotARequest => "metadata_not_request",
            McpMetadataError::NoToolName => "metadata_no_tool_name",
        }
    }
}

/// A nested struct field of a protobuf `Struct`.
trait StructExt {
    fn get_struct(&self, key: &str) -> Option<&Struct>;
}

impl StructExt for Struct {
    fn get_struct(&self, key: &str) -> Option<&Struct> {
        match self.fields.get(key)?.kind.as_ref()? {
            Kind::StructValue(s) => Some(s),
            _ => None,
        }
    }
}

// === the body's JSON-RPC object ===

/// The keys whose repetition is refused.
const DUPLICATE_KEYS: [&str; 6] = ["jsonrpc", "method", "params", "id", "result", "error"];
const PARAMS_NAME: &str = "name";

/// The parts of a JSON-RPC message that decide the call; everything else is
/// skipped without being stored.
#[derive(Default)]
struct Message {
    jsonrpc: Option<Option<String>>,
    method: Option<Option<String>>,
    params: Option<Params>,
    has_id: bool,
    is_response: bool,
    /// The first decisive key seen twice (its later values are skipped).
    duplicate: Option<&'static str>,
}

/// `params`: only `name` is kept (`Some(None)` when it is not a string).
#[derive(Default)]
struct Params {
    name: Option<Option<String>>,
    duplicate_name: bool,
}

impl Message {
    fn into_call(self) -> Result<McpCall, McpBodyError> {
        if let Some(key) = self.duplicate {
            return Err(McpBodyError::DuplicateKey { key });
        }
        if self.params.as_ref().is_some_and(|p| p.duplicate_name) {
            return Err(McpBodyError::DuplicateKey { key: PARAMS_NAME });
        }
        if self.jsonrpc.flatten().as_deref() != Some("2.0") {
            return Err(McpBodyError::NotJsonRpc2);
        }
        let method = match self.method {
            Some(Some(method)) => method,
            Some(None) => return Err(McpBodyError::NoMethod),
            None if self.is_response && self.has_id => return Err(McpBodyError::NotARequest),
            None => return Err(McpBodyError::NoMethod),
        };
        let tool = if method == TOOLS_CALL {
            match self.params.and_then(|p| p.name).flatten() {
                Some(name) => Some(name),
                None => return Err(McpBodyError::NoToolName),
            }
        } else {
            None
        };
        Ok(McpCall { method, tool })
    }
}

/// A string value, or `None` for any other JSON value.
struct MaybeString(Option<String>);

impl<'de> de::Deserialize<'de> for MaybeString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MaybeString, E> {
                Ok(MaybeString(Some(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<MaybeString, E> {
                Ok(MaybeString(Some(v)))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<MaybeString, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeString(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MaybeString, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeString(None))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl<'de> de::Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Message;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON-RPC message object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
                let mut message = Message::default();
                let mut seen = [false; DUPLICATE_KEYS.len()];
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if let Some(index) = DUPLICATE_KEYS.iter().position(|k| *k == key)
                        && std::mem::replace(&mut seen[index], true)
                    {
                        message.duplicate.get_or_insert(DUPLICATE_KEYS[index]);
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    match key.as_ref() {
                        "jsonrpc" => message.jsonrpc = Some(map.next_value::<MaybeString>()?.0),
                        "method" => message.method = Some(map.next_value::<MaybeString>()?.0),
                        "params" => message.params = Some(map.next_value::<Params>()?),
                        "id" => {
                            map.next_value::<IgnoredAny>()?;
                            message.has_id = true;
                        }
                        "result" | "error" => {
                            map.next_value::<IgnoredAny>()?;
                            message.is_response = true;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(message)
            }
        }
        deserializer.deserialize_map(V)
    }
}

impl<'de> de::Deserialize<'de> for Params {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Params;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("JSON-RPC params")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Params, A::Error> {
                let mut params = Params::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == PARAMS_NAME && params.name.is_some() {
                        params.duplicate_name = true;
                        map.next_value::<IgnoredAny>()?;
                    } else if key == PARAMS_NAME {
                        params.name = Some(map.next_value::<MaybeString>()?.0);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(params)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Params, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Params::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<Params, E> {
                Ok(Params::default())
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Params, E> {
                Ok(Params::default())
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Params, E> {
                Ok(Params::default())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Params, E> {
                Ok(Params::default())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Params, E> {
                Ok(Params::default())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Params, E> {
                Ok(Params::default())
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Value as PbValue;

    const LIMIT: usize = 1024;

    fn body(text: &str) -> Result<McpCall, McpBodyError> {
        McpCall::from_body(&McpBody::complete(text.as_bytes()), LIMIT)
    }

    #[test]
    fn a_tool_call_names_its_method_and_tool() {
        let call = body(
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"arguments":{"name":"decoy","id":"1"},"name":"delete_order"}}"#,
        )
        .unwrap();
        assert_eq!(call.method(), "tools/call");
        assert_eq!(call.tool(), Some("delete_order"));
        assert_eq!(call.to_string(), "tools/call delete_order");
    }

    #[test]
    fn other_requests_and_notifications_have_no_tool() {
        for (text, method) in [
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","clientInfo":{"name":"x"}}}"#,
                "initialize",
            ),
            (
                r#" {"method":"notifications/initialized","jsonrpc":"2.0"} "#,
                "notifications/initialized",
            ),
            (
                r#"{"jsonrpc":"2.0","id":"a","method":"prompts/get","params":{"name":"p"}}"#,
                "prompts/get",
            ),
            (
                r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":null}"#,
                "tools/list",
            ),
        ] {
            let call = body(text).unwrap();
            assert_eq!((call.method(), call.tool()), (method, None), "{text}");
        }
    }

    #[test]
    fn every_kind_of_bad_body_is_its_own_error() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("  \n", "empty"),
            (
                r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#,
                "batch",
            ),
            (r#"{"jsonrpc":"2.0","id":1,"method":"tools/li"#, "truncated"),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}{"#,
                "not_json",
            ),
            ("method=tools/list", "not_json"),
            (r#""tools/list""#, "not_object"),
            ("42", "not_object"),
            (r#"{"id":1,"method":"tools/list"}"#, "not_jsonrpc2"),
            (
                r#"{"jsonrpc":"1.0","id":1,"method":"tools/list"}"#,
                "not_jsonrpc2",
            ),
            (
                r#"{"jsonrpc":2.0,"id":1,"method":"tools/list"}"#,
                "not_jsonrpc2",
            ),
            (r#"{"jsonrpc":"2.0","id":1}"#, "no_method"),
            (r#"{"jsonrpc":"2.0","id":1,"method":5}"#, "no_method"),
            (r#"{"jsonrpc":"2.0","id":1,"result":{}}"#, "not_request"),
            (
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"x"}}"#,
                "not_request",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
                "no_tool_name",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":3}}"#,
                "no_tool_name",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["delete_order"]}"#,
                "no_tool_name",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"x"}}"#,
                "duplicate_key",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_orders","name":"delete_order"}}"#,
                "duplicate_key",
            ),
            (
                r#"{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"method":"ping"}"#,
                "duplicate_key",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{},"params":{"name":"x"}}"#,
                "duplicate_key",
            ),
        ];
        for (text, label) in cases {
            let error = body(text).expect_err(text);
            assert_eq!(error.label(), *label, "{text}: {error}");
        }
        let invalid_utf8 = McpCall::from_body(
            &McpBody::complete(b"{\"jsonrpc\":\"2.0\",\"method\":\"\xff\"}"),
            LIMIT,
        );
        assert_eq!(invalid_utf8.unwrap_err().label(), "not_json");
    }

    #[test]
    fn a_duplicate_key_names_the_key() {
        let error = body(r#"{"jsonrpc":"2.0","method":"a","method":"b"}"#).unwrap_err();
        assert_eq!(error, McpBodyError::DuplicateKey { key: "method" });
        let error =
            body(r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"a","name":"b"}}"#)
                .unwrap_err();
        assert_eq!(error, McpBodyError::DuplicateKey { key: "name" });
        // Keys nested elsewhere may repeat: only what decides the call counts.
        body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"k":1,"k":2}}}"#).unwrap();
    }

    #[test]
    fn the_size_bound_and_partial_bodies_are_checked_before_parsing() {
        let text = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        let bytes = text.as_bytes();
        assert_eq!(
            McpCall::from_body(&McpBody::complete(bytes), bytes.len() - 1),
            Err(McpBodyError::TooLarge {
                length: bytes.len() as u64,
                limit: bytes.len() - 1
            })
        );
        assert!(McpCall::from_body(&McpBody::complete(bytes), bytes.len()).is_ok());
        // Declared longer than the bound: too large, even if fewer bytes came.
        let declared = McpBody {
            bytes,
            partial: false,
            declared_length: Some(10_000),
        };
        assert_eq!(
            McpCall::from_body(&declared, LIMIT).unwrap_err().label(),
            "too_large"
        );
        // Declared longer than received, within the bound: partial.
        let short = McpBody {
            bytes,
            partial: false,
            declared_length: Some(bytes.len() as u64 + 5),
        };
        assert_eq!(
            McpCall::from_body(&short, LIMIT),
            Err(McpBodyError::Partial {
                received: bytes.len(),
                declared: Some(bytes.len() as u64 + 5)
            })
        );
        // Envoy's partial flag, even on a body that parses.
        let flagged = McpBody {
            bytes,
            partial: true,
            declared_length: None,
        };
        assert_eq!(
            McpCall::from_body(&flagged, LIMIT).unwrap_err().label(),
            "partial"
        );
        let exact = McpBody {
            bytes,
            partial: false,
            declared_length: Some(bytes.len() as u64),
        };
        assert!(McpCall::from_body(&exact, LIMIT).is_ok());
    }

    #[test]
    fn error_messages_say_what_to_do() {
        assert!(
            McpBodyError::Batch
                .to_string()
                .contains("one message per request")
        );
        let partial = McpBodyError::Partial {
            received: 10,
            declared: None,
        }
        .to_string();
        assert!(partial.contains("max_request_bytes"), "{partial}");
    }

    fn string(value: &str) -> PbValue {
        PbValue {
            kind: Some(Kind::StringValue(value.into())),
        }
    }

    fn structure(fields: &[(&str, PbValue)]) -> Struct {
        Struct {
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    fn nested(fields: &[(&str, PbValue)]) -> PbValue {
        PbValue {
            kind: Some(Kind::StructValue(structure(fields))),
        }
    }

    fn metadata(fields: Struct) -> Metadata {
        Metadata {
            filter_metadata: [(ENVOY_MCP_METADATA_NAMESPACE.to_string(), fields)].into(),
            ..Default::default()
        }
    }

    #[test]
    fn envoy_mcp_filter_metadata_names_the_call() {
        let call = McpCall::from_envoy_metadata(&metadata(structure(&[
            ("jsonrpc", string("2.0")),
            ("method", string("tools/call")),
            (
                "id",
                PbValue {
                    kind: Some(Kind::NumberValue(3.0)),
                },
            ),
            ("params", nested(&[("name", string("delete_order"))])),
        ])))
        .unwrap()
        .unwrap();
        assert_eq!(
            call,
            McpCall::new("tools/call", Some("delete_order".into()))
        );

        let list = McpCall::from_envoy_metadata(&metadata(structure(&[
            ("jsonrpc", string("2.0")),
            ("method", string("tools/list")),
        ])))
        .unwrap()
        .unwrap();
        assert_eq!(list, McpCall::new("tools/list", None));

        assert_eq!(McpCall::from_envoy_metadata(&Metadata::default()), Ok(None));
    }

    #[test]
    fn incomplete_envoy_metadata_is_an_error_not_a_guess() {
        for (fields, label) in [
            (
                structure(&[("method", string("tools/list"))]),
                "metadata_not_jsonrpc2",
            ),
            (
                structure(&[("jsonrpc", string("2.0"))]),
                "metadata_no_method",
            ),
            (
                structure(&[
                    ("jsonrpc", string("2.0")),
                    ("method", string("__jsonrpc_response")),
                ]),
                "metadata_not_request",
            ),
            (
                structure(&[("jsonrpc", string("2.0")), ("method", string("tools/call"))]),
                "metadata_no_tool_name",
            ),
            (
                structure(&[
                    ("jsonrpc", string("2.0")),
                    ("method", string("tools/call")),
                    ("params", nested(&[])),
                ]),
                "metadata_no_tool_name",
            ),
        ] {
            let error = McpCall::from_envoy_metadata(&metadata(fields)).unwrap_err();
            assert_eq!(error.label(), label);
        }
    }
}
