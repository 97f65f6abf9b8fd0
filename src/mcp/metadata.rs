//! RFC 9728 OAuth 2.0 Protected Resource Metadata for one API (DESIGN §5
//! `spec.resource`): the compiled resource, the JSON document scopegate
//! answers, the well-known paths it answers on, and the URL a challenge
//! points to.
//!
//! ```text
//! id = https://mcp.example.com/mcp
//!   GET https://mcp.example.com/.well-known/oauth-protected-resource/mcp   (RFC 9728 §3.1, metadata_url())
//!   GET https://mcp.example.com/.well-known/oauth-protected-resource       (root form)
//!     └─► {"resource": "https://mcp.example.com/mcp", "authorization_servers": […], …}
//! ```

use std::net::IpAddr;

use serde_json::{Map, Value, json};
use url::Url;

/// The well-known URI suffix of RFC 9728 §3.
pub const WELL_KNOWN_PREFIX: &str = "/.well-known/oauth-protected-resource";

/// Why a `resource` cannot be compiled; each message names the field and
/// what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// `id` is not an absolute URL.
    #[error(
        "resource.id {id:?} is not an absolute URL ({reason}); write e.g. \"https://mcp.example.com/mcp\""
    )]
    NotAbsoluteUrl {
        /// The configured value.
        id: String,
        /// What the URL parser said.
        reason: String,
    },
    /// `id` is not `https` (or `http` on a loopback host).
    #[error(
        "resource.id {id:?} must use https (http is accepted only for localhost/loopback addresses)"
    )]
    Scheme {
        /// The configured value.
        id: String,
    },
    /// `id` has a fragment (RFC 9728 §1.2, RFC 8707 §2).
    #[error("resource.id {id:?} must not have a #fragment; remove it")]
    Fragment {
        /// The configured value.
        id: String,
    },
    /// `id` has a query component.
    #[error("resource.id {id:?} must not have a ?query; identify the resource by its path")]
    Query {
        /// The configured value.
        id: String,
    },
    /// `id` carries user information.
    #[error("resource.id {id:?} must not contain user:password@; remove it")]
    UserInfo {
        /// The configured value.
        id: String,
    },
    /// No authorization server was given.
    #[error("resource needs at least one authorization server (the policy's issuer url)")]
    NoAuthorizationServer,
    /// An authorization server is not an absolute http(s) URL.
    #[error("authorization server {url:?} is not an absolute http(s) URL")]
    AuthorizationServer {
        /// The offending value.
        url: String,
    },
    /// `documentation` is not an absolute http(s) URL.
    #[error("resource.documentation {url:?} is not an absolute http(s) URL")]
    Documentation {
        /// The offending value.
        url: String,
    },
}

/// One API's protected resource metadata, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedResource {
    id: String,
    origin: String,
    path: String,
    name: Option<String>,
    documentation: Option<String>,
    authorization_servers: Vec<String>,
    scopes_supported: Vec<String>,
}

impl ProtectedResource {
    /// Validates `id` (an absolute `https` URL, or `http` on a loopback host;
    /// no fragment, query or user information) and the authorization server
    /// URLs (at least one). `scopes_supported` is published as given, with
    /// duplicates dropped.
    pub fn new(
        id: &str,
        authorization_servers: Vec<String>,
        scopes_supported: Vec<String>,
    ) -> Result<Self, ResourceError> {
        let url = Url::parse(id).map_err(|e| ResourceError::NotAbsoluteUrl {
            id: id.to_string(),
            reason: e.to_string(),
        })?;
        let Some(host) = url.host_str() else {
            return Err(ResourceError::NotAbsoluteUrl {
                id: id.to_string(),
                reason: "no host".to_string(),
            });
        };
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(host) => {}
            _ => return Err(ResourceError::Scheme { id: id.to_string() }),
        }
        if url.fragment().is_some() || id.contains('#') {
            return Err(ResourceError::Fragment { id: id.to_string() });
        }
        if url.query().is_some() {
            return Err(ResourceError::Query { id: id.to_string() });
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ResourceError::UserInfo { id: id.to_string() });
        }
        if authorization_servers.is_empty() {
            return Err(ResourceError::NoAuthorizationServer);
        }
        if let Some(bad) = authorization_servers.iter().find(|s| !is_http_url(s)) {
            return Err(ResourceError::AuthorizationServer { url: bad.clone() });
        }
        let mut scopes: Vec<String> = Vec::with_capacity(scopes_supported.len());
        for scope in scopes_supported {
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        Ok(ProtectedResource {
            id: id.to_string(),
            origin: url.origin().ascii_serialization(),
            path: url.path().to_string(),
            name: None,
            documentation: None,
            authorization_servers,
            scopes_supported: scopes,
        })
    }

    /// Sets `resource_name` (a human-readable name; absent when empty).
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string()).filter(|n| !n.is_empty());
        self
    }

    /// Sets `resource_documentation`, which must be an absolute http(s) URL.
    pub fn with_documentation(mut self, url: &str) -> Result<Self, ResourceError> {
        if !is_http_url(url) {
            return Err(ResourceError::Documentation {
                url: url.to_string(),
            });
        }
        self.documentation = Some(url.to_string());
        Ok(self)
    }

    /// The resource identifier exactly as configured (the document's
    /// `resource`, byte for byte).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The human-readable name, when set.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The documentation URL, when set.
    pub fn documentation(&self) -> Option<&str> {
        self.documentation.as_deref()
    }

    /// The authorization servers (the policy's issuer URLs).
    pub fn authorization_servers(&self) -> &[String] {
        &self.authorization_servers
    }

    /// The published scopes.
    pub fn scopes_supported(&self) -> &[String] {
        &self.scopes_supported
    }

    /// The metadata document (RFC 9728 §2): `resource`,
    /// `authorization_servers`, `scopes_supported`,
    /// `bearer_methods_supported: ["header"]`, and `resource_name` /
    /// `resource_documentation` when set.
    pub fn document_json(&self) -> Value {
        let mut document = Map::new();
        document.insert("resource".into(), json!(self.id));
        document.insert(
            "authorization_servers".into(),
            json!(self.authorization_servers),
        );
        document.insert("scopes_supported".into(), json!(self.scopes_supported));
        document.insert("bearer_methods_supported".into(), json!(["header"]));
        if let Some(name) = &self.name {
            document.insert("resource_name".into(), json!(name));
        }
        if let Some(documentation) = &self.documentation {
            document.insert("resource_documentation".into(), json!(documentation));
        }
        Value::Object(document)
    }

    /// The document serialized, as the body of an `application/json` answer.
    pub fn document_body(&self) -> String {
        self.document_json().to_string()
    }

    /// The request paths the document is answered on, most specific first:
    /// the RFC 9728 §3.1 form (the well-known prefix inserted before the
    /// id's path), the same without a trailing `/` when the id's path has
    /// one (the form the MCP TypeScript SDK builds), and the root form.
    pub fn metadata_paths(&self) -> Vec<String> {
        let mut paths = vec![self.inserted_path()];
        if let Some(trimmed) = self.path.strip_suffix('/')
            && !trimmed.is_empty()
        {
            paths.push(format!("{WELL_KNOWN_PREFIX}{trimmed}"));
        }
        if !paths.iter().any(|p| p == WELL_KNOWN_PREFIX) {
            paths.push(WELL_KNOWN_PREFIX.to_string());
        }
        paths
    }

    /// The origin of `id` (`https://mcp.example.com`): the public origin of
    /// the resource, also where DPoP proofs' `htu` point when TLS ends
    /// before Envoy.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The absolute URL of the document on the id's origin, in the RFC 9728
    /// §3.1 form: the value of a challenge's `resource_metadata`. It is on
    /// the id's origin (not the request's host) because MCP clients accept
    /// a `resource` only on the origin they connected to.
    pub fn metadata_url(&self) -> String {
        format!("{}{}", self.origin, self.inserted_path())
    }

    /// Whether a request is a fetch of this document: `GET` or `HEAD`
    /// (case-insensitive, DESIGN §4) on one of [`metadata_paths`](Self::metadata_paths);
    /// the query is ignored.
    pub fn matches_metadata_request(&self, method: &str, path: &str) -> bool {
        if !method.eq_ignore_ascii_case("GET") && !method.eq_ignore_ascii_case("HEAD") {
            return false;
        }
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        path.starts_with(WELL_KNOWN_PREFIX) && self.metadata_paths().iter().any(|p| p == path)
    }

    /// `/.well-known/oauth-protected-resource{path}`, a path of `/` adding
    /// nothing (RFC 9728 §3.1 removes the slash after the host).
    fn inserted_path(&self) -> String {
        if self.path == "/" {
            WELL_KNOWN_PREFIX.to_string()
        } else {
            format!("{WELL_KNOWN_PREFIX}{}", self.path)
        }
    }
}

/// `localhost`, `*.localhost`, 127.0.0.0/8 or `::1`.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let lower = host.to_ascii_lowercase();
    lower == "localhost"
        || lower.ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_http_url(value: &str) -> bool {
    Url::parse(value)
        .is_ok_and(|u| matches!(u.scheme(), "https" | "http") && u.host_str().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(id: &str) -> Result<ProtectedResource, ResourceError> {
        ProtectedResource::new(
            id,
            vec!["https://tenant.auth0.com/".into()],
            vec!["orders:read".into(), "orders:write".into()],
        )
    }

    #[test]
    fn the_document_has_the_rfc_9728_fields_and_resource_is_byte_equal_to_id() {
        let resource = resource("https://MCP.example.com:443/mcp")
            .unwrap()
            .with_name("Orders MCP")
            .with_documentation("https://docs.example.com/orders-mcp")
            .unwrap();
        assert_eq!(
            resource.document_json(),
            json!({
                "resource": "https://MCP.example.com:443/mcp",
                "authorization_servers": ["https://tenant.auth0.com/"],
                "scopes_supported": ["orders:read", "orders:write"],
                "bearer_methods_supported": ["header"],
                "resource_name": "Orders MCP",
                "resource_documentation": "https://docs.example.com/orders-mcp",
            })
        );
        let parsed: Value = serde_json::from_str(&resource.document_body()).unwrap();
        assert_eq!(parsed, resource.document_json());
    }

    #[test]
    fn optional_fields_are_absent_when_unset() {
        let document = resource("https://mcp.example.com/mcp")
            .unwrap()
            .with_name("")
            .document_json();
        assert!(document.get("resource_name").is_none(), "{document}");
        assert!(document.get("resource_documentation").is_none());
    }

    #[test]
    fn paths_and_url_use_the_rfc_9728_insertion_form() {
        let r = resource("https://MCP.example.com:443/mcp").unwrap();
        assert_eq!(
            r.metadata_paths(),
            [
                "/.well-known/oauth-protected-resource/mcp",
                "/.well-known/oauth-protected-resource"
            ]
        );
        // The origin is normalized (lower-case host, default port dropped).
        assert_eq!(
            r.metadata_url(),
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        );

        let root = resource("https://api.example.com").unwrap();
        assert_eq!(
            root.metadata_paths(),
            ["/.well-known/oauth-protected-resource"]
        );
        assert_eq!(
            root.metadata_url(),
            "https://api.example.com/.well-known/oauth-protected-resource"
        );

        let slash = resource("http://127.0.0.1:8080/mcp/").unwrap();
        assert_eq!(
            slash.metadata_paths(),
            [
                "/.well-known/oauth-protected-resource/mcp/",
                "/.well-known/oauth-protected-resource/mcp",
                "/.well-known/oauth-protected-resource"
            ]
        );
        assert_eq!(
            slash.metadata_url(),
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp/"
        );
    }

    #[test]
    fn only_get_and_head_on_the_metadata_paths_match() {
        let r = resource("https://mcp.example.com/mcp").unwrap();
        for (method, path, expected) in [
            ("GET", "/.well-known/oauth-protected-resource/mcp", true),
            ("get", "/.well-known/oauth-protected-resource/mcp?x=1", true),
            ("HEAD", "/.well-known/oauth-protected-resource", true),
            ("POST", "/.well-known/oauth-protected-resource/mcp", false),
            ("GET", "/.well-known/oauth-protected-resource/mcp/", false),
            ("GET", "/.well-known/oauth-protected-resource/other", false),
            ("GET", "/mcp", false),
            ("GET", "/.well-known/oauth-protected-resourcex", false),
        ] {
            assert_eq!(
                r.matches_metadata_request(method, path),
                expected,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn loopback_http_is_accepted_and_other_http_is_not() {
        for id in [
            "http://localhost:3000/mcp",
            "http://127.0.0.1:8080/mcp",
            "http://[::1]:8080/mcp",
            "http://dev.localhost/mcp",
        ] {
            assert!(resource(id).is_ok(), "{id}");
        }
        for id in [
            "http://mcp.example.com/mcp",
            "http://10.0.0.1/mcp",
            "ftp://x/y",
        ] {
            assert!(
                matches!(resource(id), Err(ResourceError::Scheme { .. })),
                "{id}"
            );
        }
    }

    #[test]
    fn invalid_ids_are_refused_with_the_reason() {
        assert!(matches!(
            resource("/mcp"),
            Err(ResourceError::NotAbsoluteUrl { .. })
        ));
        assert!(matches!(
            resource("https://mcp.example.com/mcp#x"),
            Err(ResourceError::Fragment { .. })
        ));
        assert!(matches!(
            resource("https://mcp.example.com/mcp#"),
            Err(ResourceError::Fragment { .. })
        ));
        assert!(matches!(
            resource("https://mcp.example.com/mcp?tenant=1"),
            Err(ResourceError::Query { .. })
        ));
        assert!(matches!(
            resource("https://user:pw@mcp.example.com/mcp"),
            Err(ResourceError::UserInfo { .. })
        ));
        let message = resource("https://mcp.example.com/mcp#x")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("resource.id") && message.contains("fragment"),
            "{message}"
        );
    }

    #[test]
    fn authorization_servers_and_documentation_are_validated() {
        assert_eq!(
            ProtectedResource::new("https://mcp.example.com/mcp", vec![], vec![]),
            Err(ResourceError::NoAuthorizationServer)
        );
        assert!(matches!(
            ProtectedResource::new("https://mcp.example.com/mcp", vec!["tenant".into()], vec![]),
            Err(ResourceError::AuthorizationServer { .. })
        ));
        assert!(matches!(
            resource("https://mcp.example.com/mcp")
                .unwrap()
                .with_documentation("docs page"),
            Err(ResourceError::Documentation { .. })
        ));
    }

    #[test]
    fn duplicate_scopes_are_published_once() {
        let r = ProtectedResource::new(
            "https://mcp.example.com/mcp",
            vec!["https://tenant.auth0.com/".into()],
            vec!["a".into(), "b".into(), "a".into()],
        )
        .unwrap();
        assert_eq!(r.scopes_supported(), ["a", "b"]);
    }
}
