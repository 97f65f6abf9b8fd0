//! The `TokenPolicy` schema: one set of types for policy files and for the
//! Kubernetes CustomResourceDefinition (`scopegate.dev/v1alpha1`).
//!
//! These types only describe what a user wrote. [`super::compile`] turns a
//! spec into a [`super::CompiledPolicy`], rejecting anything the schema alone
//! cannot express.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which requests of which hosts need which token: audiences, scopes and
/// clients, checked against one issuer.
// clippy reads the repeated `type_ = "string"` of the printer columns as a
// duplicated attribute; they are separate columns.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "scopegate.dev",
    version = "v1alpha1",
    kind = "TokenPolicy",
    plural = "tokenpolicies",
    namespaced,
    shortname = "tp",
    status = "TokenPolicyStatus",
    doc = "Bearer-token rules (issuer, audiences, scopes) for the APIs served on a set of hosts.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Hosts", type_ = "string", json_path = ".spec.hosts"),
    // `..url`: `issuer.url`, or the first of `issuers[*].url` (a column
    // shows one value; the spec has no other `url`).
    printcolumn(name = "Issuer", type_ = "string", json_path = ".spec..url"),
    printcolumn(name = "Keys", type_ = "integer", json_path = ".status.jwks.keys"),
    printcolumn(
        name = "Last Fetch",
        type_ = "date",
        json_path = ".status.jwks.lastFetchTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.issuer) != has(self.issuers)").message("set exactly one of issuer and issuers"))]
pub struct TokenPolicySpec {
    /// Request hosts this policy protects (port stripped, case-insensitive).
    /// `*.example.com` matches one or more labels in front of `example.com`.
    #[schemars(
        length(min = 1, max = 64),
        inner(
            length(max = 253),
            regex(
                pattern = r"^(\*\.)?[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)*$"
            )
        )
    )]
    pub hosts: Vec<String>,
    /// The token issuer and what its tokens must say (exactly one of
    /// `issuer` and `issuers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<IssuerSpec>,
    /// Several issuers (an Auth0 custom domain and the tenant's canonical
    /// domain, several tenants): the token's `iss` picks the entry, each with
    /// its own keys, audiences, algorithms and skew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8))]
    pub issuers: Option<Vec<IssuerSpec>>,
    /// Claims whose values are the token's scopes: a string claim is
    /// space-separated, an array claim is a list; the scopes are their union.
    /// Default: `scope`, `scp` (what the user consented to for this client).
    /// Auth0's `permissions` lists every permission the user has, whatever
    /// the agent was granted: list it only for machine-to-machine APIs.
    #[serde(default = "default_scope_claims")]
    #[schemars(length(min = 1, max = 8), inner(length(min = 1, max = 256)))]
    pub scope_claims: Vec<String>,
    /// RFC 9728 protected resource metadata for this API (MCP servers):
    /// answered at `/.well-known/oauth-protected-resource…` without a token,
    /// and named in every challenge (`resource_metadata`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceSpec>,
    /// Sender-constrained tokens (RFC 9449 DPoP): whether tokens must come
    /// with a proof of possession. Whatever this says, a token bound to a
    /// key (`cnf`) must always come with its proof.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof_of_possession: Option<ProofOfPossessionSpec>,
    /// Request rules; the first one that matches the method and path decides.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub rules: Vec<RuleSpec>,
    /// What happens when no rule matches.
    #[serde(default)]
    pub default_action: DefaultAction,
    /// Upstream request headers set from token claims on allow. Client-sent
    /// copies of these headers are always removed.
    #[serde(default)]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(h, self.exists_one(x, x.header == h.header))").message("each header may be set by one entry only"))]
    pub claim_headers: Vec<ClaimHeaderSpec>,
    /// `enforce` denies; `audit` decides and logs, but always allows.
    #[serde(default)]
    pub mode: Mode,
}

/// The issuer whose tokens a policy accepts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new(FETCHED_OVER_HTTPS).message("jwksUri (or, without it, url) must use https unless its host is loopback"))]
#[x_kube(validation = Rule::new(NOT_LINK_LOCAL).message("jwksUri (or, without it, url) must not name a link-local or cloud metadata address"))]
pub struct IssuerSpec {
    /// The exact `iss` value (Auth0 keeps the trailing slash).
    #[schemars(length(min = 1, max = 1024))]
    pub url: String,
    /// Where the signing keys are. Default: OIDC discovery at
    /// `url` + `.well-known/openid-configuration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub jwks_uri: Option<String>,
    /// Accepted `aud` values; a token's `aud` must contain at least one.
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 1024)))]
    pub audiences: Vec<String>,
    /// Accepted signature algorithms. Default: `[RS256]`.
    #[serde(default = "default_algorithms")]
    #[schemars(
        length(min = 1, max = 10),
        inner(regex(
            pattern = r"^(RS256|RS384|RS512|PS256|PS384|PS512|ES256|ES384|ES512|EdDSA)$"
        ))
    )]
    pub algorithms: Vec<String>,
    /// Tolerance, in seconds, for `exp` and `nbf`. Default: 60.
    #[serde(default = "default_clock_skew_seconds")]
    #[schemars(range(max = 600), extend("format" = "int32"))]
    pub clock_skew_seconds: u32,
    /// Accepted JOSE `typ` header values (RFC 9068 §4: `at+jwt`), compared
    /// case-insensitively with the `application/` prefix optional. Default:
    /// any (a token without `typ` too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(min = 1, max = 128)))]
    pub token_types: Vec<String>,
}

/// One request rule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new(ANONYMOUS_ALONE).message("an anonymous rule cannot also require scopes or clients"))]
pub struct RuleSpec {
    /// HTTP methods (omitted: any method).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16), inner(regex(pattern = r"^[A-Za-z]{1,32}$")))]
    pub methods: Option<Vec<String>>,
    /// Path patterns: `*` is one segment, `{name}` one segment captured as
    /// `request.params.name`, `**` any rest (omitted: any path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        inner(length(max = 1024), regex(pattern = r"^/[^?#]*$"))
    )]
    pub paths: Option<Vec<String>>,
    /// Scopes the token must have, all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(max = 256), regex(pattern = r#"^[^\s"]+$"#))
    )]
    pub require_scopes: Vec<String>,
    /// If set, the token's `azp` (or `client_id`) must be one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 256)))]
    pub allowed_clients: Option<Vec<String>>,
    /// No token needed (a token, if sent, is still validated).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub anonymous: bool,
    /// MCP: the JSON-RPC `method` and, for `tools/call`, the tool name
    /// (`params.name`) this rule matches (globs; omitted: any). Needs the
    /// request body in the Check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpRuleSpec>,
    /// RFC 8693 delegation: whether the token must (or must not) carry an
    /// `act` chain, which agents may act (globs against the outermost
    /// `act.sub`), and how deep the chain may be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<ActorSpec>,
    /// CEL conditions that must all hold (over `claims`, `request`, `token`
    /// and `actor`), e.g. `request.params.user == claims.sub`. False: 403
    /// `access_denied`; an evaluation error: 403, never an allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 2048)))]
    pub when: Vec<String>,
    /// Also match paths with `;` parameters (`/files;v=2/a`), compared
    /// with the parameters cut off. Off by default: such a path is denied
    /// as ambiguous (servlet containers strip the parameters, so
    /// `/admin;x/users` would reach `/admin/users` past an `/admin/**` rule).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub matrix_params: bool,
}

/// The protected resource (RFC 9728) a policy describes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceSpec {
    /// The resource identifier (RFC 8707): the MCP server's URL. Must be one
    /// of the issuer's audiences.
    #[schemars(length(min = 1, max = 1024))]
    pub id: String,
    /// A human-readable name (`resource_name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub name: Option<String>,
    /// Where its documentation is (`resource_documentation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub documentation: Option<String>,
}

/// An `actor:` requirement (RFC 8693 `act`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActorSpec {
    /// `true`: delegated tokens only; `false`: tokens with `act` are
    /// refused; omitted: either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// Globs (`*`) the outermost actor's `sub` must match (nested actors
    /// are informational, RFC 8693 §4.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 256)))]
    pub allowed: Option<Vec<String>>,
    /// The longest `act` chain accepted (1: one agent acting for the user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub max_depth: Option<u32>,
}

/// An `mcp:` rule matcher.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct McpRuleSpec {
    /// JSON-RPC methods (`tools/call`, `tools/list`, `notifications/*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 128)))]
    pub methods: Option<Vec<String>>,
    /// Tool names of `tools/call` (`delete_*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 128)))]
    pub tools: Option<Vec<String>>,
}

/// What happens to a request that no rule matches.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DefaultAction {
    /// Deny with 403.
    #[default]
    Deny,
    /// Allow, but only with a valid token.
    Allow,
}

/// `spec.proofOfPossession`, as Auth0's API setting.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProofOfPossessionSpec {
    /// How the client proves it holds the token's key.
    pub mechanism: PopMechanism,
    /// `true`: every token must be bound and come with its proof. `false`:
    /// bound tokens must prove, unbound ones may still be sent as `Bearer`.
    #[serde(default)]
    pub required: bool,
}

/// A proof-of-possession mechanism.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PopMechanism {
    /// RFC 9449 DPoP proofs (`cnf.jkt`).
    Dpop,
    /// RFC 8705 mutual-TLS certificate binding (`cnf.x5t#S256`) against
    /// the client certificate Envoy forwards (`include_peer_certificate`).
    Mtls,
}

/// Whether a policy's denials are enforced.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// Deny what the policy denies.
    #[default]
    Enforce,
    /// Log what would be denied, allow everything.
    Audit,
}

/// An upstream header set from a claim.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimHeaderSpec {
    /// Lowercase HTTP header name.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    #[x_kube(validation = Rule::new(not_reserved_header_cel()).message("this header is reserved and cannot be set from a claim"))]
    pub header: String,
    /// A top-level claim name (`sub`, `azp`, `https://example.com/email`),
    /// or, starting with `/`, an RFC 6901 JSON pointer into the claims
    /// (`/act/sub`, `/https:~1~1example.com~1org/id`).
    #[schemars(length(min = 1, max = 256))]
    pub claim: String,
}

/// CEL: where keys are fetched from must be https, or http on loopback.
const FETCHED_OVER_HTTPS: &str = r"(has(self.jwksUri) ? self.jwksUri : self.url).matches(r'^(https://|http://(localhost|127\.[0-9]+\.[0-9]+\.[0-9]+|\[::1\])([:/]|$))')";

/// CEL: keys are never fetched from a link-local or metadata address given as
/// an IP literal (compilation also refuses the other ways of writing one).
const NOT_LINK_LOCAL: &str = r"!(has(self.jwksUri) ? self.jwksUri : self.url).matches(r'(?i)^[a-z]+://(169\.254\.|\[(fe[89ab][0-9a-f]:|fd00:ec2::254\]|::ffff:169\.254\.))')";

/// CEL: `anonymous: true` excludes `requireScopes` and `allowedClients`.
const ANONYMOUS_ALONE: &str = "!has(self.anonymous) || !self.anonymous || ((!has(self.requireScopes) || size(self.requireScopes) == 0) && !has(self.allowedClients))";

/// Header names a policy may not set from a claim: credentials, hop-by-hop
/// and routing headers, and the client-address headers proxies own.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-type",
    "forwarded",
    "x-real-ip",
    "dpop",
];

/// Prefixes of header names a policy may not set: Envoy's own and the
/// `x-forwarded-*` family (`-for`, `-client-cert`, `-proto`, `-host`, …).
const RESERVED_HEADER_PREFIXES: &[&str] = &["x-envoy-", "x-forwarded-"];

/// Whether a (lowercase) header name is reserved.
pub(crate) fn is_reserved_header(name: &str) -> bool {
    RESERVED_HEADERS.contains(&name)
        || RESERVED_HEADER_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix))
}

/// The CEL rule the CRD checks [`is_reserved_header`] with, built from the
/// same lists.
fn not_reserved_header_cel() -> String {
    let names = RESERVED_HEADERS
        .iter()
        .map(|name| format!("'{name}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let prefixes = RESERVED_HEADER_PREFIXES
        .iter()
        .map(|prefix| format!(" && !self.startsWith('{prefix}')"))
        .collect::<String>();
    format!("!(self in [{names}]){prefixes}")
}

/// What scopegate reports about a policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and its reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The state of the issuer's key set (the first issuer's, with
    /// `issuers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwksStatus>,
    /// With `issuers`: each issuer's key set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<IssuerStatus>,
    /// The hosts this policy serves (or holds while invalid): a replica that
    /// starts while the policy is invalid keeps them for it (503) rather
    /// than handing them to another policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub served_hosts: Vec<String>,
}

/// One issuer's key set, in a policy with several.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerStatus {
    /// The issuer (`iss`).
    pub url: String,
    /// Its key set.
    pub jwks: JwksStatus,
}

/// The state of a policy's JWKS cache.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwksStatus {
    /// The JWKS URI in use (after discovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Usable keys in the cache.
    pub keys: u32,
    /// When keys were last fetched successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fetch_time: Option<Time>,
    /// The last fetch error, if the last fetch failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The scopes a user consented to for this client: OAuth `scope` and the
/// `scp` some issuers use. Not Auth0's `permissions` (see
/// [`super::compile`]'s warning).
fn default_scope_claims() -> Vec<String> {
    ["scope", "scp"].map(String::from).to_vec()
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".to_string()]
}

fn default_clock_skew_seconds() -> u32 {
    60
}
