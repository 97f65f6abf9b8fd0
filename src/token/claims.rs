//! Registered-claim validation and the claims of a verified token.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::{IssuerRules, TokenError};

/// Parses the payload as a JSON object whose top-level names are unique:
/// a claim set with a duplicate name (`{"sub":"a","sub":"admin"}`) may be
/// read differently by the upstream, so it is rejected (RFC 7519 §4).
pub(super) fn parse_claims(payload: &[u8]) -> Result<Map<String, Value>, TokenError> {
    struct UniqueClaims(Map<String, Value>);

    impl<'de> serde::Deserialize<'de> for UniqueClaims {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = UniqueClaims;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object with unique names")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<UniqueClaims, A::Error> {
                    let mut claims = Map::new();
                    while let Some((name, value)) = map.next_entry::<String, Value>()? {
                        if claims.insert(name, value).is_some() {
                            return Err(serde::de::Error::custom("duplicate claim"));
                        }
                    }
                    Ok(UniqueClaims(claims))
                }
            }
            deserializer.deserialize_map(Visitor)
        }
    }

    serde_json::from_slice::<UniqueClaims>(payload)
        .map(|unique| unique.0)
        .map_err(|e| {
            if e.to_string().starts_with("duplicate claim") {
                TokenError::Malformed("payload has a duplicate claim")
            } else {
                TokenError::Malformed("payload is not a JSON object")
            }
        })
}

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
        numeric_date(&claims, "iat")?; // only its form is checked
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

    /// A claim by top-level name, or by RFC 6901 JSON pointer when `path`
    /// starts with `/` (`/act/sub`, `/https:~1~1example.com~1org/id`).
    pub fn claim(&self, path: &str) -> Option<&Value> {
        let Some(pointer) = path.strip_prefix('/') else {
            return self.claims.get(path);
        };
        let (first, rest) = match pointer.find('/') {
            Some(i) => (&pointer[..i], &pointer[i..]),
            None => (pointer, ""),
        };
        let first = if first.contains('~') {
            Cow::Owned(first.replace("~1", "/").replace("~0", "~"))
        } else {
            Cow::Borrowed(first)
        };
        self.claims.get(&*first)?.pointer(rest)
    }

    /// Heap bytes the parsed claims hold (an estimate of serde_json's
    /// layout: each map entry's key and value, each string's bytes).
    pub fn heap_bytes(&self) -> usize {
        map_bytes(&self.claims)
    }

    /// `exp`, in seconds since the Unix epoch.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// The string value of a claim, if it is a string.
    pub fn string_claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    /// The RFC 8693 `act` chain, outermost first: each actor's `sub` (an
    /// actor without a string `sub` is `""`).
    pub fn actor_chain(&self) -> Vec<&str> {
        let mut chain = Vec::new();
        let mut next = self.claims.get("act");
        while let Some(Value::Object(actor)) = next {
            chain.push(actor.get("sub").and_then(Value::as_str).unwrap_or_default());
            next = actor.get("act");
        }
        chain
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

    /// A claim rendered as a header value, so that two different values of
    /// one JSON type never render the same header value (also when the
    /// upstream decodes RFC 8187):
    /// - a string as it is, unless it has non-ASCII characters or could
    ///   itself be read as an RFC 8187 ext-value (`UTF-8''jos%C3%A9`); then
    ///   as an ext-value of its exact text;
    /// - numbers and booleans in JSON form;
    /// - an array of single words (non-empty strings without whitespace that
    ///   are not ext-value look-alikes) space-separated, as an ext-value if
    ///   any word is non-ASCII.
    ///
    /// Objects, nulls, arrays with other elements (`["a b"]` would read as
    /// `["a", "b"]`) and values that would be unsafe in a header (control
    /// characters, over 4 KiB) give `None`, so the header is removed instead.
    ///
    /// `claim` is a top-level claim name, or an RFC 6901 JSON pointer when
    /// it starts with `/` (`/act/sub`).
    pub fn header_value(&self, claim: &str) -> Option<Cow<'_, str>> {
        const MAX_HEADER_VALUE: usize = 4096;
        let rendered: Cow<'_, str> = match self.claim(claim)? {
            Value::String(s) => Cow::Borrowed(s),
            Value::Number(n) => Cow::Owned(n.to_string()),
            Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            Value::Array(items) => Cow::Owned(
                items
                    .iter()
                    .map(|item| item.as_str().filter(|word| is_single_word(word)))
                    .collect::<Option<Vec<_>>>()?
                    .join(" "),
            ),
            Value::Null | Value::Object(_) => return None,
        };
        if rendered.chars().any(char::is_control) {
            return None;
        }
        let value = if rendered.is_ascii() && !could_be_ext_value(&rendered) {
            rendered
        } else {
            Cow::Owned(rfc8187_ext_value(&rendered))
        };
        (value.len() <= MAX_HEADER_VALUE).then_some(value)
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

/// Bytes a JSON map holds: per entry, its key string, its value and the
/// tree node's share (about two words).
fn map_bytes(map: &Map<String, Value>) -> usize {
    const NODE_SHARE: usize = 2 * std::mem::size_of::<usize>();
    map.iter()
        .map(|(name, value)| {
            std::mem::size_of::<String>()
                + name.len()
                + std::mem::size_of::<Value>()
                + NODE_SHARE
                + value_bytes(value)
        })
        .sum()
}

/// Heap bytes behind one JSON value.
fn value_bytes(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(s) => s.len(),
        Value::Array(items) => items
            .iter()
            .map(|item| std::mem::size_of::<Value>() + value_bytes(item))
            .sum(),
        Value::Object(map) => map_bytes(map),
    }
}

/// An array element that renders unambiguously when space-joined.
fn is_single_word(word: &str) -> bool {
    !word.is_empty() && !word.contains(char::is_whitespace) && !could_be_ext_value(word)
}

/// Whether an upstream could read `value` as an RFC 8187 ext-value:
/// `charset'[language]'…` with a token charset (`UTF-8''…`, `iso-8859-1'en'…`).
fn could_be_ext_value(value: &str) -> bool {
    let Some((charset, rest)) = value.split_once('\'') else {
        return false;
    };
    let mime_charset = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&+-^_`{}~".contains(&b);
    let language = |b: u8| b.is_ascii_alphanumeric() || b == b'-';
    !charset.is_empty()
        && charset.bytes().all(mime_charset)
        && rest
            .split_once('\'')
            .is_some_and(|(lang, _)| lang.bytes().all(language))
}

/// `UTF-8''` followed by the value with every byte outside RFC 8187's
/// `attr-char` percent-encoded.
fn rfc8187_ext_value(value: &str) -> String {
    let mut out = String::from("UTF-8''");
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
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

/// The largest NumericDate accepted: 2^53 − 1, the largest integer every
/// JSON implementation reads exactly (RFC 7493); larger values are how
/// overflow attacks start.
const MAX_NUMERIC_DATE: u64 = (1 << 53) - 1;

/// Reads an RFC 7519 NumericDate; fractions are truncated. Strings,
/// negative, non-finite and too-large numbers are invalid.
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
    let seconds = match (n.as_u64(), n.as_f64()) {
        (Some(seconds), _) => seconds,
        (None, Some(f)) if f.is_finite() && f >= 0.0 && f <= MAX_NUMERIC_DATE as f64 => f as u64,
        _ => return Err(TokenError::InvalidClaim(name)),
    };
    if seconds > MAX_NUMERIC_DATE {
        return Err(TokenError::InvalidClaim(name));
    }
    Ok(Some(seconds))
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
