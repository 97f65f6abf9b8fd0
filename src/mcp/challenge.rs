//! The `WWW-Authenticate: Bearer …` challenge of a 401 or 403 (RFC 6750 §3,
//! RFC 9728 §5.1, MCP authorization 2025-11-25).
//!
//! ```text
//! Bearer realm="HOST", error="insufficient_scope", error_description="…", scope="a b", resource_metadata="https://…"
//! ```
//!
//! Parameters always come in that order, each at most once, every value a
//! quoted-string. Two kinds of hardening on top of the grammar:
//!
//! * RFC 6750 restricts `error_description` to `%x20-21 / %x23-5B / %x5D-7E`
//!   and `scope` tokens to `%x21 / %x23-5B / %x5D-7E`: characters outside those
//!   sets are replaced (description) or the token is dropped (scope), so no
//!   escape is ever needed there.
//! * MCP clients read parameters with a regular expression without a word
//!   boundary (the TypeScript SDK's `extractWWWAuthenticateParams` looks for
//!   `scope=` anywhere in the header), so free text that contains `name=`
//!   would be read as that parameter. Free text (`realm`, `error_description`)
//!   therefore never contains `=`: it is rendered as `:`.

use std::fmt;

/// The RFC 6750 §3.1 error codes a challenge may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BearerError {
    /// `invalid_request`: a malformed request (400, or 401 for a malformed
    /// credential).
    InvalidRequest,
    /// `invalid_token`: the token is expired, revoked, malformed or invalid
    /// (401).
    InvalidToken,
    /// `insufficient_scope`: the token lacks a scope the request needs (403).
    InsufficientScope,
    /// `access_denied`: the token is fine but this request is not allowed
    /// (403: no rule, a client or condition that does not hold).
    AccessDenied,
    /// `invalid_dpop_proof` (RFC 9449 §7.1): the DPoP proof is missing,
    /// invalid or replayed (401, `DPoP` challenge).
    InvalidDpopProof,
    /// `use_dpop_nonce` (RFC 9449 §8): retry with the server's nonce (401,
    /// `DPoP` challenge).
    UseDpopNonce,
}

impl BearerError {
    /// The error code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            BearerError::InvalidRequest => "invalid_request",
            BearerError::InvalidToken => "invalid_token",
            BearerError::InsufficientScope => "insufficient_scope",
            BearerError::AccessDenied => "access_denied",
            BearerError::InvalidDpopProof => "invalid_dpop_proof",
            BearerError::UseDpopNonce => "use_dpop_nonce",
        }
    }
}

impl fmt::Display for BearerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `Bearer` (or `DPoP`) challenge under construction; [`Challenge::render`]
/// (or `Display`) gives the header value.
///
/// ```
/// use scopegate::mcp::{BearerError, Challenge};
///
/// let header = Challenge::bearer("mcp.example.com")
///     .error(BearerError::InsufficientScope)
///     .description("missing scope orders:write")
///     .scope(["orders:read", "orders:write"])
///     .resource_metadata("https://mcp.example.com/.well-known/oauth-protected-resource/mcp")
///     .render();
/// assert_eq!(
///     header,
///     "Bearer realm=\"mcp.example.com\", error=\"insufficient_scope\", \
///      error_description=\"missing scope orders:write\", scope=\"orders:read orders:write\", \
///      resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\""
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `Bearer`, or `DPoP` with the `algs` it accepts (RFC 9449 §7.1).
    dpop_algs: Option<String>,
    realm: String,
    error: Option<BearerError>,
    description: Option<String>,
    scope: Vec<String>,
    resource_metadata: Option<String>,
}

impl Challenge {
    /// A challenge with only `realm` (the API host, DESIGN §3).
    pub fn bearer(realm: &str) -> Self {
        Challenge {
            dpop_algs: None,
            realm: realm.to_string(),
            error: None,
            description: None,
            scope: Vec::new(),
            resource_metadata: None,
        }
    }

    /// A `DPoP` challenge (RFC 9449 §7.1) with `realm` and `algs`, the
    /// space-separated proof algorithms accepted (`ES256 PS256 …`).
    pub fn dpop<I, S>(realm: &str, algs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let algs: Vec<String> = algs.into_iter().map(|a| a.as_ref().to_string()).collect();
        Challenge {
            dpop_algs: Some(algs.join(" ")),
            ..Challenge::bearer(realm)
        }
    }

    /// Sets `error`.
    pub fn error(mut self, error: BearerError) -> Self {
        self.error = Some(error);
        self
    }

    /// Sets `error_description`: short, human-readable, no secrets. It is
    /// sanitized when rendered (see the module documentation); an empty
    /// description is left out.
    pub fn description(mut self, text: &str) -> Self {
        self.description = Some(text.to_string());
        self
    }

    /// Sets `scope`: every scope the request needs (DESIGN §3), space
    /// separated in the given order, duplicates dropped. Tokens that are
    /// empty or contain characters RFC 6750 does not allow in a scope token
    /// are left out (policy compilation is expected to reject them earlier);
    /// no tokens at all leaves the parameter out.
    pub fn scope<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.scope.clear();
        for scope in scopes {
            let scope = scope.as_ref();
            if is_scope_token(scope) && !self.scope.iter().any(|s| s == scope) {
                self.scope.push(scope.to_string());
            }
        }
        self
    }

    /// Sets `resource_metadata`: the absolute URL of the RFC 9728 protected
    /// resource metadata document
    /// ([`ProtectedResource::metadata_url`](super::ProtectedResource::metadata_url)).
    pub fn resource_metadata(mut self, url: &str) -> Self {
        self.resource_metadata = Some(url.to_string());
        self
    }

    /// The header value: `Bearer realm="…"[, error="…"][, error_description="…"][, scope="…"][, resource_metadata="…"]`.
    pub fn render(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.dpop_algs.is_some() {
            "DPoP"
        } else {
            "Bearer"
        };
        write!(f, "{scheme} realm=")?;
        write_quoted(f, &free_text(&self.realm))?;
        if let Some(algs) = &self.dpop_algs {
            f.write_str(", algs=")?;
            write_quoted(f, &free_text(algs))?;
        }
        if let Some(error) = self.error {
            write!(f, ", error=\"{error}\"")?;
        }
        if let Some(description) = self.description.as_deref().map(description_text)
            && !description.is_empty()
        {
            f.write_str(", error_description=")?;
            write_quoted(f, &description)?;
        }
        if !self.scope.is_empty() {
            f.write_str(", scope=")?;
            write_quoted(f, &self.scope.join(" "))?;
        }
        if let Some(url) = &self.resource_metadata {
            f.write_str(", resource_metadata=")?;
            write_quoted(f, url)?;
        }
        Ok(())
    }
}

/// Writes `value` as an RFC 9110 §5.6.4 quoted-string: `"` and `\` escaped,
/// control characters (which no quoted-string may hold) dropped.
fn write_quoted(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in value.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}

/// Free text a client must never mistake for a parameter: `=` becomes `:`.
fn free_text(text: &str) -> String {
    text.replace('=', ":")
}

/// An `error_description` within RFC 6750's character set (`%x20-21 /
/// %x23-5B / %x5D-7E`): `"` becomes `'`, `\` becomes `/`, other characters
/// outside it become `?`, control characters are dropped, and `=` becomes
/// `:` ([`free_text`]). Surrounding whitespace is trimmed.
fn description_text(text: &str) -> String {
    let text: String = free_text(text)
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            ' '..='~' => c,
            _ => '?',
        })
        .collect();
    text.trim().to_string()
}

/// An RFC 6750 §3 `scope-token`: `1*( %x21 / %x23-5B / %x5D-7E )`.
fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A strict RFC 9110 §11.6.1 challenge parser: `scheme 1*SP
    /// #auth-param`, each value a token or quoted-string. Returns the
    /// scheme and the parameters in order, or why the input is not one
    /// well-formed challenge.
    fn parse(header: &str) -> Result<(String, Vec<(String, String)>), String> {
        fn is_tchar(c: char) -> bool {
            c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
        }
        let mut chars = header.chars().peekable();
        let scheme: String = std::iter::from_fn(|| chars.next_if(|c| is_tchar(*c))).collect();
        if scheme.is_empty() {
            return Err("no scheme".into());
        }
        if chars.next() != Some(' ') {
            return Err("no space after the scheme".into());
        }
        let mut params = Vec::new();
        loop {
            while chars.next_if(|c| *c == ' ').is_some() {}
            let name: String = std::iter::from_fn(|| chars.next_if(|c| is_tchar(*c))).collect();
            if name.is_empty() {
                return Err(format!("empty parameter name after {params:?}"));
            }
            if chars.next() != Some('=') {
                return Err(format!("no '=' after {name}"));
            }
            let value = if chars.next_if(|c| *c == '"').is_some() {
                let mut value = String::new();
                loop {
                    match chars.next() {
                        None => return Err(format!("unterminated quoted value of {name}")),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) if c == '\t' || !c.is_control() => value.push(c),
                            _ => return Err(format!("bad quoted-pair in {name}")),
                        },
                        Some(c) if c == '\t' || !c.is_control() => value.push(c),
                        Some(c) => return Err(format!("control character {c:?} in {name}")),
                    }
                }
                value
            } else {
                std::iter::from_fn(|| chars.next_if(|c| is_tchar(*c))).collect()
            };
            if params.iter().any(|(n, _)| n == &name) {
                return Err(format!("{name} appears twice"));
            }
            params.push((name, value));
            while chars.next_if(|c| *c == ' ').is_some() {}
            match chars.next() {
                None => return Ok((scheme, params)),
                Some(',') => {}
                Some(c) => return Err(format!("unexpected {c:?} after a parameter")),
            }
        }
    }

    /// The value the MCP TypeScript SDK's `extractFieldFromWwwAuth` reads
    /// for `name`: the first `name=` anywhere in the header, then a quoted
    /// value up to the next `"` or a bare value up to whitespace or `,`.
    fn sdk_field(header: &str, name: &str) -> Option<String> {
        let start = header.find(&format!("{name}="))? + name.len() + 1;
        let rest = &header[start..];
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"')?;
            (end > 0).then(|| quoted[..end].to_string())
        } else {
            let end = rest.find([' ', '\t', ',']).unwrap_or(rest.len());
            (end > 0).then(|| rest[..end].to_string())
        }
    }

    fn names(params: &[(String, String)]) -> Vec<&str> {
        params.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn a_full_challenge_parses_back_in_the_documented_order() {
        let header = Challenge::bearer("mcp.example.com")
            .resource_metadata("https://mcp.example.com/.well-known/oauth-protected-resource/mcp")
            .scope(["orders:read", "orders:write"])
            .description("missing scope orders:write")
            .error(BearerError::InsufficientScope)
            .render();
        let (scheme, params) = parse(&header).unwrap();
        assert_eq!(scheme, "Bearer");
        assert_eq!(
            names(&params),
            [
                "realm",
                "error",
                "error_description",
                "scope",
                "resource_metadata"
            ]
        );
        assert_eq!(params[1].1, "insufficient_scope");
        assert_eq!(params[3].1, "orders:read orders:write");
        assert!(header.starts_with("Bearer realm="), "{header}");
    }

    #[test]
    fn only_the_realm_is_mandatory() {
        let header = Challenge::bearer("orders.example.com").render();
        assert_eq!(header, "Bearer realm=\"orders.example.com\"");
        assert_eq!(
            parse(&header).unwrap().1,
            [("realm".to_string(), "orders.example.com".to_string())]
        );
    }

    #[test]
    fn quotes_and_backslashes_in_the_realm_are_escaped_and_control_characters_dropped() {
        let realm = "we\"ird\\host\r\n\u{7f}x";
        let header = Challenge::bearer(realm).render();
        assert_eq!(header, "Bearer realm=\"we\\\"ird\\\\hostx\"");
        let (_, params) = parse(&header).unwrap();
        assert_eq!(params[0].1, "we\"ird\\hostx");
    }

    #[test]
    fn a_description_stays_within_the_rfc_6750_character_set() {
        let header = Challenge::bearer("h")
            .error(BearerError::InvalidToken)
            .description("  token \"expired\"\\ at\t\u{e9}\u{0}  ")
            .render();
        let (_, params) = parse(&header).unwrap();
        let description = &params[2].1;
        assert_eq!(description, "token 'expired'/ at?");
        assert!(
            description
                .bytes()
                .all(|b| matches!(b, 0x20 | 0x21 | 0x23..=0x5B | 0x5D..=0x7E)),
            "{description:?}"
        );
    }

    #[test]
    fn name_equals_text_in_free_text_cannot_be_read_as_a_parameter() {
        let header = Challenge::bearer("evil scope=\"admin\" resource_metadata=x")
            .error(BearerError::InsufficientScope)
            .description("needs scope=admin, resource_metadata=\"https://evil.example\"")
            .scope(["orders:read"])
            .resource_metadata("https://mcp.example.com/.well-known/oauth-protected-resource")
            .render();
        assert!(parse(&header).is_ok(), "{header}");
        // What the MCP SDK's regex reads is the real parameter, not the text.
        assert_eq!(sdk_field(&header, "scope").as_deref(), Some("orders:read"));
        assert_eq!(
            sdk_field(&header, "resource_metadata").as_deref(),
            Some("https://mcp.example.com/.well-known/oauth-protected-resource")
        );
        assert_eq!(
            sdk_field(&header, "error").as_deref(),
            Some("insufficient_scope")
        );
        // No `name=` text survives anywhere but in real parameters.
        let (_, params) = parse(&header).unwrap();
        for (name, value) in &params {
            if name == "realm" || name == "error_description" {
                assert!(!value.contains('='), "{name}={value:?}");
            }
        }
    }

    #[test]
    fn without_the_guard_the_sdk_would_misread_the_scope() {
        // The regression the guard exists for: the same text, unguarded.
        let unguarded =
            "Bearer realm=\"h\", error_description=\"needs scope=admin\", scope=\"orders:read\"";
        assert_eq!(sdk_field(unguarded, "scope").as_deref(), Some("admin\""));
    }

    #[test]
    fn scopes_are_deduplicated_and_invalid_tokens_left_out() {
        let header = Challenge::bearer("h")
            .scope([
                "a",
                "b",
                "a",
                "",
                "has space",
                "quo\"te",
                "back\\slash",
                "c",
            ])
            .render();
        assert_eq!(parse(&header).unwrap().1[1].1, "a b c");
        let empty = Challenge::bearer("h").scope(Vec::<String>::new()).render();
        assert_eq!(empty, "Bearer realm=\"h\"");
    }

    #[test]
    fn an_empty_description_is_left_out() {
        let header = Challenge::bearer("h")
            .error(BearerError::InvalidRequest)
            .description(" \r\n")
            .render();
        assert_eq!(header, "Bearer realm=\"h\", error=\"invalid_request\"");
    }

    #[test]
    fn every_error_code_renders_as_rfc_6750_spells_it() {
        for (error, wire) in [
            (BearerError::InvalidRequest, "invalid_request"),
            (BearerError::InvalidToken, "invalid_token"),
            (BearerError::InsufficientScope, "insufficient_scope"),
        ] {
            let header = Challenge::bearer("h").error(error).render();
            assert_eq!(parse(&header).unwrap().1[1].1, wire);
        }
    }

    #[test]
    fn the_parser_rejects_what_is_not_well_formed() {
        // The helper must be able to fail, or the tests above prove nothing.
        for bad in [
            "Bearer",
            "Bearer realm=\"unterminated",
            "Bearer realm=\"a\" error=\"b\"",
            "Bearer realm=\"a\", realm=\"b\"",
            "Bearer realm=\"a\u{1}\"",
            " Bearer realm=\"a\"",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
