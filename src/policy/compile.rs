//! `TokenPolicySpec` → [`CompiledPolicy`]: every string the Check path needs
//! is parsed here, once. Compilation is also what `scopegate validate` runs.

use std::fmt;
use std::sync::Arc;

use super::conditions::{self, Condition, Uses};
use super::matching::{HostPattern, PathPattern};
use super::spec::{
    DefaultAction, IssuerSpec, Mode, PopMechanism, RuleSpec, TokenPolicySpec, is_reserved_header,
};
use crate::jwks::JwksSource;
use crate::mcp::{McpMatcher, ProtectedResource};
use crate::token::{Algorithm, AlgorithmSet, ClaimSelection, IssuerRules, top_level_name};

/// A policy's identity: `namespace/name`.
pub type PolicyId = Arc<str>;

/// A policy ready for the Check path.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledPolicy {
    /// `namespace/name`.
    pub id: PolicyId,
    /// The hosts it claims.
    pub hosts: Vec<HostPattern>,
    /// The issuers whose tokens it accepts (at least one; `iss` values unique).
    pub issuers: Arc<[CompiledIssuer]>,
    /// Claims that carry scopes.
    pub scope_claims: Arc<[Box<str>]>,
    /// Rules in order; the first match decides.
    pub rules: Box<[CompiledRule]>,
    /// What happens when no rule matches.
    pub default_action: DefaultAction,
    /// Headers set from claims on allow.
    pub claim_headers: Arc<[ClaimHeader]>,
    /// Enforce or audit.
    pub mode: Mode,
    /// RFC 9728 protected resource metadata, with `resource`.
    pub resource: Option<ProtectedResource>,
    /// `spec.proofOfPossession` (DPoP): `None` when the policy does not
    /// accept the `DPoP` scheme (bound tokens must still prove).
    pub proof_of_possession: Option<ProofOfPossession>,
    /// Where its costly conditions are evaluated (`None` when every rule's
    /// conditions are cheap enough to evaluate inline).
    pub condition_gate: Option<conditions::ConditionGate>,
    /// What compiles but is probably not what the author meant: reported by
    /// `validate`, in the status message and the log, never enforced.
    pub warnings: Vec<FieldError>,
}

/// A compiled `spec.proofOfPossession`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProofOfPossession {
    /// How callers prove possession: DPoP proofs or the mTLS client
    /// certificate.
    pub mechanism: PopMechanism,
    /// Every token must be bound (by `mechanism`) and come with its proof.
    pub required: bool,
}

impl ProofOfPossession {
    /// Whether the policy accepts the `DPoP` scheme (and so advertises it).
    pub fn accepts_dpop(self) -> bool {
        self.mechanism == PopMechanism::Dpop
    }

    /// Whether every token must be DPoP-bound (`Bearer` is not accepted).
    pub fn requires_dpop(self) -> bool {
        self.accepts_dpop() && self.required
    }

    /// Whether every token must be bound to the client certificate.
    pub fn requires_mtls(self) -> bool {
        self.mechanism == PopMechanism::Mtls && self.required
    }
}

/// A compiled `issuer` (or `issuers[i]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CompiledIssuer {
    /// What its tokens must say.
    pub rules: IssuerRules,
    /// Where its keys are.
    pub jwks_source: JwksSource,
}

impl CompiledPolicy {
    /// The issuer whose `iss` is `iss`, or the only issuer when there is
    /// one (its `iss` is then checked with the claims).
    pub fn issuer_index(&self, iss: impl FnOnce() -> Option<String>) -> Option<usize> {
        if self.issuers.len() == 1 {
            return Some(0);
        }
        let iss = iss()?;
        self.issuers.iter().position(|i| *i.rules.issuer == *iss)
    }

    /// The claims its Checks can read: the claim headers' claims, the
    /// claims its conditions name (all, if one reads `claims` as a whole)
    /// and [`ClaimSelection::ALWAYS`].
    pub fn claim_selection(&self) -> ClaimSelection {
        let conditions = self.rules.iter().flat_map(|rule| rule.conditions.iter());
        let mut condition_claims = Vec::new();
        for condition in conditions {
            match condition.claim_names() {
                Some(names) => condition_claims.extend(names.iter().map(|n| &**n)),
                None => return ClaimSelection::all(),
            }
        }
        let header_claims: Vec<_> = self
            .claim_headers
            .iter()
            .map(|h| top_level_name(&h.claim))
            .collect();
        ClaimSelection::of(
            header_claims
                .iter()
                .map(|name| &**name)
                .chain(condition_claims),
        )
    }

    /// The union of the issuers' algorithms (what a token's header may name
    /// before its issuer is known).
    pub fn algorithms(&self) -> AlgorithmSet {
        self.issuers
            .iter()
            .flat_map(|i| i.rules.algorithms.iter())
            .collect()
    }
}

/// A compiled `rules[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledRule {
    /// `rules[i]`, for logs and metadata.
    pub name: Box<str>,
    methods: Option<Box<[Box<str>]>>,
    paths: Option<Box<[PathPattern]>>,
    /// Scopes the token must all have.
    pub require_scopes: Box<[Box<str>]>,
    /// If set, `azp`/`client_id` must be one of these.
    pub allowed_clients: Option<Box<[Box<str>]>>,
    /// No token needed.
    pub anonymous: bool,
    /// Paths with `;` parameters may match this rule.
    pub matrix_params: bool,
    /// `mcp`: the JSON-RPC call this rule matches.
    pub mcp: Option<Box<McpMatcher>>,
    /// `actor`: the delegation this rule requires or refuses.
    pub actor: Option<Box<ActorRule>>,
    /// `when`: CEL conditions that must all hold (shared, so that a Check
    /// can evaluate them off the request workers).
    pub conditions: Arc<[Condition]>,
    /// What the conditions read, so a Check builds only that.
    pub condition_uses: Uses,
    /// Their estimated cost together ([`super::cost`]), at most the budget.
    pub condition_cost: u64,
}

impl CompiledRule {
    /// The captures of the first of this rule's paths that matches
    /// (`request.params` of its conditions).
    pub fn captures<'p>(&'p self, path: &'p super::RequestPath<'_>) -> Vec<(&'p str, &'p str)> {
        self.paths
            .iter()
            .flatten()
            .find_map(|p| p.captures(path))
            .unwrap_or_default()
    }

    /// Whether this rule applies to the request: the method compared
    /// case-insensitively, the path by segments.
    pub fn matches(&self, method: &str, path: &super::RequestPath<'_>) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|methods| methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
            && self
                .paths
                .as_ref()
                .is_none_or(|paths| paths.iter().any(|p| p.matches(path)))
    }
}

/// A compiled `actor:` (RFC 8693).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorRule {
    /// `Some(true)`: `act` required; `Some(false)`: refused.
    pub required: Option<bool>,
    /// Globs for the outermost actor's `sub`.
    pub allowed: Option<Box<[Box<str>]>>,
    /// The longest chain accepted.
    pub max_depth: Option<usize>,
}

/// A compiled `claimHeaders[i]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimHeader {
    /// Lowercase header name.
    pub header: Box<str>,
    /// Claim name.
    pub claim: Box<str>,
    /// The other spellings of `header` an upstream folds into it (`_` for
    /// `-` and back: CGI, WSGI, PHP and Rack read `x_user_id` as
    /// `x-user-id`), computed at load: client-sent copies in every one of
    /// them are removed on every allow.
    pub spellings: Box<[Box<str>]>,
}

/// The most `-` or `_` a claim header name may have: each doubles the
/// spellings an upstream folds together, all removed on every allow.
pub const MAX_CLAIM_HEADER_SEPARATORS: usize = 5;

/// A header name as upstreams that fold `_` into `-` read it.
fn fold_header_name(name: &str) -> String {
    name.replace('_', "-")
}

/// Every spelling of `name` with each `-` or `_` replaced by either, except
/// `name` itself.
fn other_spellings(name: &str) -> Box<[Box<str>]> {
    let separators: Vec<usize> = name
        .bytes()
        .enumerate()
        .filter(|(_, b)| matches!(b, b'-' | b'_'))
        .map(|(i, _)| i)
        .collect();
    let count = separators.len().min(MAX_CLAIM_HEADER_SEPARATORS);
    (0..1u32 << count)
        .map(|choice| {
            let mut spelling = name.as_bytes().to_vec();
            for (bit, &at) in separators.iter().take(count).enumerate() {
                spelling[at] = if choice & (1 << bit) == 0 { b'-' } else { b'_' };
            }
            String::from_utf8(spelling).expect("only ASCII bytes were replaced")
        })
        .filter(|spelling| spelling != name)
        .map(String::into_boxed_str)
        .collect()
}

/// One thing wrong with a policy: where (`spec.rules[1].paths[0]`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, e.g. `spec.issuer.audiences`.
    pub field: String,
    /// What is wrong, and how to fix it where that is not obvious.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl CompiledPolicy {
    /// Compiles `spec`, collecting every error rather than stopping at the
    /// first.
    pub fn compile(id: PolicyId, spec: &TokenPolicySpec) -> Result<Self, Vec<FieldError>> {
        let mut errors = Errors::default();

        errors.at_most("spec.hosts", spec.hosts.len(), 64);
        errors.at_most("spec.rules", spec.rules.len(), 256);
        errors.at_most("spec.claimHeaders", spec.claim_headers.len(), 32);
        errors.at_most("spec.scopeClaims", spec.scope_claims.len(), 8);
        if spec.hosts.is_empty() {
            errors.add("spec.hosts", "must list at least one host");
        }
        let hosts = spec
            .hosts
            .iter()
            .enumerate()
            .filter_map(|(i, h)| errors.check(format!("spec.hosts[{i}]"), HostPattern::parse(h)))
            .collect();

        let issuers = compile_issuers(spec, &mut errors);

        if spec.scope_claims.is_empty() {
            errors.add("spec.scopeClaims", "must list at least one claim");
        }
        let mut warnings = Errors::default();
        for (i, claim) in spec.scope_claims.iter().enumerate() {
            if claim.is_empty() {
                errors.add(format!("spec.scopeClaims[{i}]"), "must not be empty");
            }
            if claim == "permissions" {
                warnings.add(format!("spec.scopeClaims[{i}]"), PERMISSIONS_WARNING);
            }
        }
        for (field, url) in issuer_urls(spec) {
            if let Some(message) = auth0_trailing_slash_warning(url) {
                warnings.add(format!("{field}.url"), message);
            }
        }

        let rules: Box<[CompiledRule]> = spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| compile_rule(i, rule, &mut errors))
            .collect();

        let mut claim_headers: Vec<ClaimHeader> = Vec::with_capacity(spec.claim_headers.len());
        for (i, ch) in spec.claim_headers.iter().enumerate() {
            let field = format!("spec.claimHeaders[{i}]");
            if let Err(message) = check_header_name(&ch.header) {
                errors.add(format!("{field}.header"), message);
            } else if claim_headers
                .iter()
                .any(|c| fold_header_name(&c.header) == fold_header_name(&ch.header))
            {
                errors.add(
                    format!("{field}.header"),
                    "is set by an earlier entry (upstreams read `_` as `-` in header names)",
                );
            }
            if ch.claim.is_empty() {
                errors.add(format!("{field}.claim"), "must not be empty");
            } else if let Err(message) = check_claim_pointer(&ch.claim) {
                errors.add(format!("{field}.claim"), message);
            }
            claim_headers.push(ClaimHeader {
                header: ch.header.as_str().into(),
                claim: ch.claim.as_str().into(),
                spellings: other_spellings(&ch.header),
            });
        }

        let resource = spec
            .resource
            .as_ref()
            .and_then(|r| compile_resource(r, issuers.as_deref(), &rules, &mut errors));
        let proof_of_possession = spec.proof_of_possession.map(|pop| ProofOfPossession {
            mechanism: pop.mechanism,
            required: pop.required,
        });
        match (errors.0.is_empty(), issuers) {
            (true, Some(issuers)) => Ok(CompiledPolicy {
                id,
                condition_gate: rules
                    .iter()
                    .any(|r| r.condition_cost > super::cost::INLINE_COST)
                    .then(conditions::ConditionGate::new),
                hosts,
                issuers: issuers.into(),
                scope_claims: boxed_strs(&spec.scope_claims).into(),
                rules,
                default_action: spec.default_action,
                claim_headers: claim_headers.into(),
                mode: spec.mode,
                resource,
                proof_of_possession,
                warnings: warnings.0,
            }),
            _ => Err(errors.0),
        }
    }
}

/// `spec.resource`: the RFC 9728 document, whose `resource` must be one of
/// the issuers' audiences (RFC 8707: the API identifier tokens are for).
fn compile_resource(
    spec: &super::spec::ResourceSpec,
    issuers: Option<&[CompiledIssuer]>,
    rules: &[CompiledRule],
    errors: &mut Errors,
) -> Option<ProtectedResource> {
    let issuers = issuers?;
    if !issuers
        .iter()
        .any(|i| i.rules.audiences.iter().any(|a| **a == *spec.id))
    {
        errors.add(
            "spec.resource.id",
            format!(
                "{:?} must be one of the issuer's audiences (tokens for this resource carry it in aud)",
                spec.id
            ),
        );
        return None;
    }
    let mut scopes: Vec<String> = rules
        .iter()
        .flat_map(|r| r.require_scopes.iter().map(ToString::to_string))
        .collect();
    scopes.sort();
    scopes.dedup();
    let servers = issuers.iter().map(|i| i.rules.issuer.to_string()).collect();
    let resource = ProtectedResource::new(&spec.id, servers, scopes)
        .map_err(|e| errors.add("spec.resource.id", e.to_string()))
        .ok()?;
    let resource = match &spec.name {
        Some(name) => resource.with_name(name),
        None => resource,
    };
    match &spec.documentation {
        Some(url) => resource
            .with_documentation(url)
            .map_err(|e| errors.add("spec.resource.documentation", e.to_string()))
            .ok(),
        None => Some(resource),
    }
}

/// `rules[i].actor`: globs printable, no contradiction.
fn compile_actor(
    field: &str,
    spec: &super::spec::ActorSpec,
    errors: &mut Errors,
) -> Option<ActorRule> {
    let mut ok = true;
    if spec.required == Some(false) && (spec.allowed.is_some() || spec.max_depth.is_some()) {
        errors.add(
            format!("{field}.required"),
            "false refuses delegated tokens; allowed and maxDepth would never apply",
        );
        ok = false;
    }
    for (i, pattern) in spec.allowed.iter().flatten().enumerate() {
        if pattern.is_empty() || !pattern.chars().all(|c| c.is_ascii_graphic()) {
            errors.add(
                format!("{field}.allowed[{i}]"),
                format!(
                    "{pattern:?} must be a printable glob without spaces ('*' matches any run)"
                ),
            );
            ok = false;
        }
    }
    if spec.allowed.as_ref().is_some_and(Vec::is_empty) {
        errors.add(
            format!("{field}.allowed"),
            "must not be empty (omit it to allow any actor)",
        );
        ok = false;
    }
    if spec.max_depth == Some(0) {
        errors.add(format!("{field}.maxDepth"), "must be at least 1");
        ok = false;
    }
    ok.then(|| ActorRule {
        required: spec.required,
        allowed: spec.allowed.as_deref().map(boxed_strs),
        max_depth: spec.max_depth.map(|d| d as usize),
    })
}

/// Why counting Auth0's `permissions` as scopes is rarely right.
const PERMISSIONS_WARNING: &str = "\"permissions\" holds every permission the user has for this API (Auth0 RBAC), not what the user consented to for this client: an agent granted read:orders would pass a delete:orders rule whenever the user could delete. List it only for machine-to-machine APIs, where both claims hold the client's grant";

/// Every issuer URL of `spec`, with its field path.
fn issuer_urls(spec: &TokenPolicySpec) -> Vec<(String, &str)> {
    let single = spec
        .issuer
        .iter()
        .map(|i| ("spec.issuer".to_string(), i.url.as_str()));
    let several = spec.issuers.iter().flatten().enumerate();
    single
        .chain(several.map(|(n, i)| (format!("spec.issuers[{n}]"), i.url.as_str())))
        .collect()
}

/// Auth0 tokens carry `iss` with a trailing slash (`https://TENANT.auth0.com/`):
/// an Auth0 issuer URL without it matches no token, and its discovery
/// document names the other form (`JwksUnavailable`).
fn auth0_trailing_slash_warning(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let auth0 = parsed.host_str()?.ends_with(".auth0.com");
    (auth0 && !url.ends_with('/')).then(|| {
        format!("Auth0 tokens carry iss \"{url}/\" (with the trailing slash): this URL matches none of them and its discovery document names the other form; write \"{url}/\"")
    })
}

/// The `issuer` or `issuers` of a policy, compiled; exactly one must be set
/// and `iss` values must be unique.
fn compile_issuers(spec: &TokenPolicySpec, errors: &mut Errors) -> Option<Box<[CompiledIssuer]>> {
    let specs: Vec<(String, &IssuerSpec)> = match (&spec.issuer, &spec.issuers) {
        (Some(issuer), None) => vec![("spec.issuer".to_string(), issuer)],
        (None, Some(issuers)) if !issuers.is_empty() => issuers
            .iter()
            .enumerate()
            .map(|(i, issuer)| (format!("spec.issuers[{i}]"), issuer))
            .collect(),
        (None, Some(_)) => {
            errors.add("spec.issuers", "must list at least one issuer");
            return None;
        }
        (None, None) => {
            errors.add("spec.issuer", "is required (or issuers, for several)");
            return None;
        }
        (Some(_), Some(_)) => {
            errors.add("spec.issuers", "set exactly one of issuer and issuers");
            return None;
        }
    };
    let mut compiled: Vec<CompiledIssuer> = Vec::with_capacity(specs.len());
    let mut ok = true;
    for (field, issuer) in specs {
        if compiled.iter().any(|c| *c.rules.issuer == *issuer.url) {
            errors.add(format!("{field}.url"), "is listed by an earlier entry");
            ok = false;
        }
        match compile_issuer(&field, issuer, errors) {
            Some(issuer) => compiled.push(issuer),
            None => ok = false,
        }
    }
    ok.then(|| compiled.into())
}

/// One issuer entry, its fields reported under `field`.
fn compile_issuer(field: &str, issuer: &IssuerSpec, errors: &mut Errors) -> Option<CompiledIssuer> {
    let mut ok = true;
    if issuer.audiences.is_empty() {
        errors.add(
            format!("{field}.audiences"),
            "must list at least one audience (the Auth0 API identifier)",
        );
        ok = false;
    }
    for (i, aud) in issuer.audiences.iter().enumerate() {
        if aud.is_empty() {
            errors.add(format!("{field}.audiences[{i}]"), "must not be empty");
            ok = false;
        }
    }
    let mut algorithms = AlgorithmSet::default();
    for (i, name) in issuer.algorithms.iter().enumerate() {
        match name.parse::<Algorithm>() {
            Ok(alg) => algorithms.insert(alg),
            Err(e) => {
                errors.add(format!("{field}.algorithms[{i}]"), format!("{name:?}: {e}"));
                ok = false;
            }
        }
    }
    if issuer.algorithms.is_empty() {
        errors.add(
            format!("{field}.algorithms"),
            "must list at least one algorithm (or be omitted for [RS256])",
        );
        ok = false;
    }
    if issuer.clock_skew_seconds > 600 {
        errors.add(format!("{field}.clockSkewSeconds"), "must be at most 600");
        ok = false;
    }
    let mut token_types = Vec::with_capacity(issuer.token_types.len());
    for (i, token_type) in issuer.token_types.iter().enumerate() {
        match crate::token::normalize_token_type(token_type) {
            Some(normalized) => token_types.push(normalized),
            None => {
                errors.add(
                    format!("{field}.tokenTypes[{i}]"),
                    format!("{token_type:?} is not a media type such as at+jwt"),
                );
                ok = false;
            }
        }
    }
    let source = match &issuer.jwks_uri {
        Some(uri) => errors
            .check(format!("{field}.jwksUri"), parse_fetch_url(uri))
            .map(JwksSource::Uri),
        None => errors
            .check(format!("{field}.url"), discovery_url(&issuer.url))
            .map(|configuration| JwksSource::Discovery {
                issuer: issuer.url.clone(),
                configuration,
            }),
    };
    if issuer.url.is_empty() {
        errors.add(format!("{field}.url"), "must not be empty");
        ok = false;
    }
    let jwks_source = source?;
    ok.then(|| CompiledIssuer {
        rules: IssuerRules {
            issuer: issuer.url.as_str().into(),
            audiences: boxed_strs(&issuer.audiences),
            algorithms,
            clock_skew_seconds: issuer.clock_skew_seconds.into(),
            token_types: (!token_types.is_empty()).then(|| token_types.into()),
        },
        jwks_source,
    })
}

fn compile_rule(index: usize, rule: &RuleSpec, errors: &mut Errors) -> CompiledRule {
    let field = format!("spec.rules[{index}]");
    let methods = rule.methods.as_ref().map(|methods| {
        if methods.is_empty() {
            errors.add(
                format!("{field}.methods"),
                "must not be empty (omit it to match any method)",
            );
        }
        methods
            .iter()
            .enumerate()
            .map(|(i, m)| {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    errors.add(
                        format!("{field}.methods[{i}]"),
                        format!("{m:?} is not an HTTP method"),
                    );
                }
                m.to_ascii_uppercase().into_boxed_str()
            })
            .collect()
    });
    let paths = rule.paths.as_ref().map(|paths| {
        if paths.is_empty() {
            errors.add(
                format!("{field}.paths"),
                "must not be empty (omit it to match any path)",
            );
        }
        paths
            .iter()
            .enumerate()
            .filter_map(|(i, p)| errors.check(format!("{field}.paths[{i}]"), PathPattern::parse(p)))
            .collect()
    });
    for (i, scope) in rule.require_scopes.iter().enumerate() {
        if scope.is_empty() || scope.contains(char::is_whitespace) || scope.contains('"') {
            errors.add(
                format!("{field}.requireScopes[{i}]"),
                "must be one non-empty scope without spaces or quotes",
            );
        }
    }
    if let Some(clients) = &rule.allowed_clients
        && clients.is_empty()
    {
        errors.add(
            format!("{field}.allowedClients"),
            "must not be empty (omit it to allow any client)",
        );
    }
    if rule.anonymous && (!rule.require_scopes.is_empty() || rule.allowed_clients.is_some()) {
        errors.add(
            format!("{field}.anonymous"),
            "an anonymous rule cannot also require scopes or clients",
        );
    }
    if rule.anonymous && !rule.when.is_empty() {
        errors.add(
            format!("{field}.when"),
            "an anonymous rule cannot have conditions (they read the token)",
        );
    }
    errors.at_most(format!("{field}.when"), rule.when.len(), 16);
    errors.at_most(
        format!("{field}.requireScopes"),
        rule.require_scopes.len(),
        64,
    );
    errors.at_most(
        format!("{field}.paths"),
        rule.paths.as_ref().map_or(0, Vec::len),
        64,
    );
    let actor = rule
        .actor
        .as_ref()
        .and_then(|actor| compile_actor(&format!("{field}.actor"), actor, errors));
    let mcp = rule.mcp.as_ref().and_then(|mcp| {
        errors.check(
            format!("{field}.mcp"),
            McpMatcher::new(mcp.methods.as_deref(), mcp.tools.as_deref())
                .map_err(|e| e.to_string()),
        )
    });
    let conditions = compile_conditions(&field, &rule.when, errors);
    CompiledRule {
        name: format!("rules[{index}]").into(),
        methods,
        paths,
        require_scopes: boxed_strs(&rule.require_scopes),
        allowed_clients: rule.allowed_clients.as_deref().map(boxed_strs),
        anonymous: rule.anonymous,
        matrix_params: rule.matrix_params,
        // Boxed: most rules have neither, and a rule is copied per policy.
        mcp: mcp.map(Box::new),
        actor: actor.map(Box::new),
        condition_uses: conditions::uses_of(&conditions),
        condition_cost: conditions::total_cost(&conditions),
        conditions,
    }
}

/// A rule's `when`: each condition compiled, and all of them together held
/// to the cost budget (they all run on one Check).
fn compile_conditions(field: &str, when: &[String], errors: &mut Errors) -> Arc<[Condition]> {
    let mut cost = 0u64;
    let mut compiled = Vec::with_capacity(when.len());
    for (i, source) in when.iter().enumerate() {
        let condition = Condition::compile(source).and_then(|condition| {
            conditions::check_budget(cost, &condition).map_err(|e| match i {
                0 => e,
                _ => format!("{e} (with when[0..{i}] before it)"),
            })?;
            Ok(condition)
        });
        let condition = condition.map_err(|e| format!("{source:?}: {e}"));
        if let Some(condition) = errors.check(format!("{field}.when[{i}]"), condition) {
            cost = cost.saturating_add(condition.cost());
            compiled.push(condition);
        }
    }
    compiled.into()
}

/// A claim starting with `/` is an RFC 6901 JSON pointer: `~` may only
/// escape `~` (`~0`) or `/` (`~1`).
fn check_claim_pointer(claim: &str) -> Result<(), String> {
    if !claim.starts_with('/') {
        return Ok(());
    }
    let bytes = claim.as_bytes();
    let bad_escape = bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'~' && !matches!(bytes.get(i + 1), Some(b'0' | b'1')));
    if bad_escape {
        return Err(format!(
            "{claim:?} is not a JSON pointer: write ~ as ~0 and / inside a name as ~1"
        ));
    }
    Ok(())
}

fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("{name:?} must be lowercase"));
    }
    let token_char = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !name.bytes().all(token_char) {
        return Err(format!("{name:?} is not a valid HTTP header name"));
    }
    let separators = name.bytes().filter(|b| matches!(b, b'-' | b'_')).count();
    if separators > MAX_CLAIM_HEADER_SEPARATORS {
        return Err(format!(
            "{name:?} has {separators} '-' or '_'; at most {MAX_CLAIM_HEADER_SEPARATORS} \
             (upstreams read each as either, and every spelling is removed)"
        ));
    }
    if is_reserved_header(name) {
        return Err(format!(
            "{name:?} is reserved and cannot be set from a claim"
        ));
    }
    Ok(())
}

/// Parses a URL scopegate will fetch keys from, checked by the one rule of
/// [`crate::jwks::check_fetch_url`] (https, or http to a loopback host;
/// never a link-local or metadata address).
fn parse_fetch_url(value: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(value).map_err(|e| format!("{value:?} is not a URL: {e}"))?;
    crate::jwks::check_fetch_url(&url).map_err(|refusal| format!("{value:?} {refusal}"))?;
    Ok(url)
}

/// `{issuer}/.well-known/openid-configuration`.
fn discovery_url(issuer: &str) -> Result<reqwest::Url, String> {
    let base = if issuer.ends_with('/') {
        issuer.to_string()
    } else {
        format!("{issuer}/")
    };
    parse_fetch_url(&format!("{base}.well-known/openid-configuration"))
        .map_err(|e| format!("{e}; without jwksUri the issuer URL is used for OIDC discovery"))
}

fn boxed_strs(items: &[String]) -> Box<[Box<str>]> {
    items.iter().map(|s| s.as_str().into()).collect()
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// The CRD's `maxItems`, checked for files too.
    fn at_most(&mut self, field: impl Into<String>, len: usize, max: usize) {
        if len > max {
            self.add(
                field,
                format!("has {len} entries; at most {max} are allowed"),
            );
        }
    }

    fn check<T>(&mut self, field: String, result: Result<T, String>) -> Option<T> {
        result.map_err(|message| self.add(field, message)).ok()
    }
}
