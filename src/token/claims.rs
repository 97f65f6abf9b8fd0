//! Registered-claim validation and the claims of a verified token.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::{IssuerRules, TokenError};

/// A token whose signature and registered claims have been verified.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    claims: Map<String, Value>,
    expires_at: u64,
}

impl VerifiedToken {
    /// Checks `exp`, `nbf`, `iss` and `aud` of already signature-checked
    /// claims.
    pub(super) fn validate(
        claims: Map<String, Value>,
        rules: &IssuerRules,
        now: u64,
    ) -> Result<Self, TokenError> {
        let skew = rules.clock_skew_seconds;
        let expires_at = numeric_date(&claims, "exp")?.ok_or(TokenError::MissingExpiry)?;
        if now >= expires_at.saturating_add(skew) {
            return Err(TokenError::Expired);
        }
        if let Some(not_before) = numeric_date(&claims, "nbf")?
            && now.saturating_add(skew) < not_before
        {
            return Err(TokenError::NotYetValid);
        }
        match claims.get("iss") {
            Some(Value::String(iss)) if **iss == *rules.issuer => {}
            Some(Value::String(_)) | None => return Err(TokenError::WrongIssuer),
            Some(_) => return Err(TokenError::InvalidClaim("iss")),
        }
        if !audience_matches(claims.get("aud"), &rules.audiences)? {
            return Err(TokenError::WrongAudience);
        }
        Ok(VerifiedToken { claims, expires_at })
    }

    /// All claims.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// `exp`, in seconds since the Unix epoch.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// The string value of a claim, if it is a string.
    pub fn string_claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    /// `sub`.
    pub fn subject(&self) -> Option<&str> {
        self.string_claim("sub")
    }

    /// The OAuth client the token was issued to: `azp`, else `client_id`.
    pub fn client_id(&self) -> Option<&str> {
        self.string_claim("azp")
            .or_else(|| self.string_claim("client_id"))
    }

    /// A claim rendered as a header value: strings as they are, numbers and
    /// booleans in JSON form, arrays of strings space-separated. Objects, nulls
    /// and values that would be unsafe in a header (control characters, over
    /// 4 KiB) give `None`, so the header is removed instead.
    pub fn header_value(&self, claim: &str) -> Option<Cow<'_, str>> {
        const MAX_HEADER_VALUE: usize = 4096;
        let rendered: Cow<'_, str> = match self.claims.get(claim)? {
            Value::String(s) => Cow::Borrowed(s),
            Value::Number(n) => Cow::Owned(n.to_string()),
            Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            Value::Array(items) => Cow::Owned(
                items
                    .iter()
                    .map(Value::as_str)
                    .collect::<Option<Vec<_>>>()?
                    .join(" "),
            ),
            Value::Null | Value::Object(_) => return None,
        };
        let safe = rendered.len() <= MAX_HEADER_VALUE && !rendered.chars().any(char::is_control);
        safe.then_some(rendered)
    }

    /// The union of the scopes in `scope_claims`: a string claim is split on
    /// spaces, an array claim contributes its string elements.
    pub fn scopes(&self, scope_claims: &[Box<str>]) -> Scopes<'_> {
        let mut scopes = Vec::new();
        for name in scope_claims {
            match self.claims.get(&**name) {
                Some(Value::String(s)) => scopes.extend(s.split_ascii_whitespace()),
                Some(Value::Array(items)) => scopes.extend(items.iter().filter_map(Value::as_str)),
                _ => {}
            }
        }
        scopes.sort_unstable();
        scopes.dedup();
        Scopes(scopes)
    }
}

/// A token's scopes, sorted and deduplicated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes<'a>(Vec<&'a str>);

impl<'a> Scopes<'a> {
    /// Whether `scope` is granted.
    pub fn contains(&self, scope: &str) -> bool {
        self.0.binary_search(&scope).is_ok()
    }

    /// The scopes, space-separated (the OAuth `scope` form).
    pub fn joined(&self) -> String {
        self.0.join(" ")
    }

    /// The granted scopes.
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.0.iter().copied()
    }
}

/// Reads an RFC 7519 NumericDate; fractions are truncated. Strings, negative
/// or non-finite numbers are invalid.
fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<u64>, TokenError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let Value::Number(n) = value else {
        return Err(TokenError::InvalidClaim(name));
    };
    if let Some(seconds) = n.as_u64() {
        return Ok(Some(seconds));
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Ok(Some(f as u64)),
        _ => Err(TokenError::InvalidClaim(name)),
    }
}

/// `aud` may be a string or an array of strings; it matches if any value is
/// one of `accepted`.
fn audience_matches(aud: Option<&Value>, accepted: &[Box<str>]) -> Result<bool, TokenError> {
    let is_accepted = |candidate: &str| accepted.iter().any(|a| **a == *candidate);
    match aud {
        None => Ok(false),
        Some(Value::String(s)) => Ok(is_accepted(s)),
        Some(Value::Array(items)) => {
            let mut matched = false;
            for item in items {
                let s = item.as_str().ok_or(TokenError::InvalidClaim("aud"))?;
                matched |= is_accepted(s);
            }
            Ok(matched)
        }
        Some(_) => Err(TokenError::InvalidClaim("aud")),
    }
}
