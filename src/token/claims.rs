//! Registered-claim validation and the claims of a verified token.

use std::borrow::Cow;
use std::sync::Arc;

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

    /// `exp`, in seconds since the Unix epoch.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// The union of the scopes in `scope_claims`: a string claim is split on
    /// spaces only (RFC 6749 §3.3: `scope-token` is separated by `%x20`; a
    /// tab or a form feed is part of a scope, never a separator), an array
    /// claim contributes its string elements.
    pub fn scopes(&self, scope_claims: &[Box<str>]) -> Scopes<'_> {
        let mut scopes = Vec::new();
        for name in scope_claims {
            match self.claims.get(&**name) {
                Some(Value::String(s)) => scopes.extend(s.split(' ').filter(|s| !s.is_empty())),
                Some(Value::Array(items)) => scopes.extend(items.iter().filter_map(Value::as_str)),
                _ => {}
            }
        }
        scopes.sort_unstable();
        scopes.dedup();
        Scopes(scopes)
    }

    /// Keeps only the claims `selection` names: what a cached token needs.
    pub fn retain(self, selection: &Arc<ClaimSelection>) -> RetainedClaims {
        if selection.all {
            return RetainedClaims::All(
                self.claims
                    .into_iter()
                    .map(|(name, value)| (name.into_boxed_str(), value))
                    .collect(),
            );
        }
        let mut claims = self.claims;
        let values = selection
            .names
            .iter()
            .map(|name| claims.remove(&**name))
            .collect();
        RetainedClaims::Selected {
            selection: selection.clone(),
            values,
        }
    }
}

impl ReadClaims for VerifiedToken {
    fn top_level_claim(&self, name: &str) -> Option<&Value> {
        self.claims.get(name)
    }
}

/// Which top-level claims a cached token keeps: every claim a policy's
/// Check can read (its claim headers, its conditions, and what every Check
/// reads: `sub`, `azp`, `client_id`, `act`, `cnf`), or all of them when a
/// condition reads `claims` as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ClaimSelection {
    all: bool,
    /// Sorted and deduplicated.
    names: Box<[Box<str>]>,
}

impl ClaimSelection {
    /// The claims every Check may read, whatever the policy.
    pub const ALWAYS: [&str; 5] = ["act", "azp", "client_id", "cnf", "sub"];

    /// Every claim.
    pub fn all() -> Self {
        ClaimSelection {
            all: true,
            names: Box::default(),
        }
    }

    /// [`ClaimSelection::ALWAYS`] and `names`.
    pub fn of<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut names: Vec<Box<str>> = Self::ALWAYS
            .into_iter()
            .chain(names)
            .map(Box::from)
            .collect();
        names.sort_unstable();
        names.dedup();
        ClaimSelection {
            all: false,
            names: names.into(),
        }
    }

    /// Whether a token retained with `self` has every claim `other` keeps.
    pub fn covers(&self, other: &ClaimSelection) -> bool {
        std::ptr::eq(self, other)
            || self.all
            || (!other.all
                && other
                    .names
                    .iter()
                    .all(|name| self.names.binary_search(name).is_ok()))
    }
}

/// The claims a cached token keeps ([`VerifiedToken::retain`]).
#[derive(Debug)]
pub enum RetainedClaims {
    /// The selection's claims, by the selection's position (`None`: absent).
    Selected {
        /// What was kept.
        selection: Arc<ClaimSelection>,
        /// One per name of the selection.
        values: Box<[Option<Value>]>,
    },
    /// Every claim, sorted by name.
    All(Box<[(Box<str>, Value)]>),
}

impl RetainedClaims {
    /// Whether these claims have everything `wanted` keeps.
    pub fn cover(&self, wanted: &ClaimSelection) -> bool {
        match self {
            RetainedClaims::All(_) => true,
            RetainedClaims::Selected { selection, .. } => selection.covers(wanted),
        }
    }

    /// The claims, as name and value.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&str, &Value)> + '_> {
        match self {
            RetainedClaims::Selected { selection, values } => Box::new(
                selection
                    .names
                    .iter()
                    .zip(values.iter())
                    .filter_map(|(name, value)| Some((&**name, value.as_ref()?))),
            ),
            RetainedClaims::All(claims) => {
                Box::new(claims.iter().map(|(name, value)| (&**name, value)))
            }
        }
    }

    /// Heap bytes they hold (an estimate of serde_json's layout).
    pub fn heap_bytes(&self) -> usize {
        match self {
            RetainedClaims::Selected { values, .. } => values
                .iter()
                .map(|v| std::mem::size_of::<Option<Value>>() + v.as_ref().map_or(0, value_bytes))
                .sum(),
            RetainedClaims::All(claims) => claims
                .iter()
                .map(|(name, value)| {
                    std::mem::size_of::<(Box<str>, Value)>() + name.len() + value_bytes(value)
                })
                .sum(),
        }
    }
}

impl ReadClaims for RetainedClaims {
    fn top_level_claim(&self, name: &str) -> Option<&Value> {
        match self {
            RetainedClaims::Selected { selection, values } => {
                let index = selection.names.binary_search_by(|n| (**n).cmp(name)).ok()?;
                values[index].as_ref()
            }
            RetainedClaims::All(claims) => {
                let index = claims.binary_search_by(|(n, _)| (**n).cmp(name)).ok()?;
                Some(&claims[index].1)
            }
        }
    }
}

/// Reading a token's claims, the same way for a token just verified (all
/// its claims) and a cached one (the claims it kept).
pub trait ReadClaims {
    /// A top-level claim by name.
    fn top_level_claim(&self, name: &str) -> Option<&Value>;

    /// A claim by top-level name, or by RFC 6901 JSON pointer when `path`
    /// starts with `/` (`/act/sub`, `/https:~1~1example.com~1org/id`).
    fn claim(&self, path: &str) -> Option<&Value> {
        let Some(pointer) = path.strip_prefix('/') else {
            return self.top_level_claim(path);
        };
        let (first, rest) = match pointer.find('/') {
            Some(i) => (&pointer[..i], &pointer[i..]),
            None => (pointer, ""),
        };
        self.top_level_claim(&pointer_segment(first))?.pointer(rest)
    }

    /// The string value of a claim, if it is a string.
    fn string_claim(&self, name: &str) -> Option<&str> {
        self.top_level_claim(name).and_then(Value::as_str)
    }

    /// The RFC 8693 `act` chain, outermost first: each actor's `sub` (an
    /// actor without a string `sub` is `""`).
    fn actor_chain(&self) -> Vec<&str> {
        let mut chain = Vec::new();
        let mut next = self.top_level_claim("act");
        while let Some(Value::Object(actor)) = next {
            chain.push(actor.get("sub").and_then(Value::as_str).unwrap_or_default());
            next = actor.get("act");
        }
        chain
    }

    /// `sub`.
    fn subject(&self) -> Option<&str> {
        self.string_claim("sub")
    }

    /// The OAuth client the token was issued to: `azp`, else `client_id`.
    fn client_id(&self) -> Option<&str> {
        self.string_claim("azp")
            .or_else(|| self.string_claim("client_id"))
    }

    /// A claim rendered as a header value, so that two different values of
    /// one JSON type never render the same header value (also when the
    /// upstream decodes RFC 8187):
    /// - a string as it is, unless it has non-ASCII characters, leading or
    ///   trailing spaces (which HTTP strips: `" alice"` would read as
    ///   `alice`), or could itself be read as an RFC 8187 ext-value
    ///   (`UTF-8''jos%C3%A9`); then as an ext-value of its exact text;
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
    fn header_value(&self, claim: &str) -> Option<Cow<'_, str>> {
        render_header_value(self.claim(claim)?)
    }
}

/// The top-level claim name a claim path reads: the name itself, or the
/// first segment of an RFC 6901 pointer (`/act/sub` → `act`), unescaped.
pub fn top_level_name(path: &str) -> Cow<'_, str> {
    match path.strip_prefix('/') {
        Some(pointer) => pointer_segment(pointer.split('/').next().unwrap_or_default()),
        None => Cow::Borrowed(path),
    }
}

/// One RFC 6901 reference token, unescaped (`~1` → `/`, `~0` → `~`).
fn pointer_segment(segment: &str) -> Cow<'_, str> {
    if segment.contains('~') {
        Cow::Owned(segment.replace("~1", "/").replace("~0", "~"))
    } else {
        Cow::Borrowed(segment)
    }
}

/// See [`ReadClaims::header_value`].
fn render_header_value(value: &Value) -> Option<Cow<'_, str>> {
    const MAX_HEADER_VALUE: usize = 4096;
    let rendered: Cow<'_, str> = match value {
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
    let value =
        if rendered.is_ascii() && !could_be_ext_value(&rendered) && !has_edge_space(&rendered) {
            rendered
        } else {
            Cow::Owned(rfc8187_ext_value(&rendered))
        };
    (value.len() <= MAX_HEADER_VALUE).then_some(value)
}

/// Whether HTTP would drop some of `value`: a field value's leading and
/// trailing whitespace is optional whitespace that parsers strip (RFC 9110
/// §5.5), so `" alice"` would reach the upstream as `alice`. (Tabs and other
/// control characters are refused before this.)
fn has_edge_space(value: &str) -> bool {
    value.starts_with(' ') || value.ends_with(' ')
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
        Value::Object(map) => map
            .iter()
            .map(|(name, value)| {
                // The key, the value and the tree node's share (two words).
                std::mem::size_of::<String>()
                    + name.len()
                    + std::mem::size_of::<Value>()
                    + 2 * std::mem::size_of::<usize>()
                    + value_bytes(value)
            })
            .sum(),
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

/// [`Scopes`] packed for keeping: one string, the scopes sorted and
/// space-separated, and where each ends (a scope from an array claim may
/// itself hold a space, so the string alone would not say).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeList {
    line: Box<str>,
    ends: Box<[u32]>,
}

impl From<Scopes<'_>> for ScopeList {
    fn from(scopes: Scopes<'_>) -> Self {
        let mut end = 0;
        let ends = scopes
            .iter()
            .map(|scope| {
                let this = end + scope.len();
                end = this + 1;
                u32::try_from(this).unwrap_or(u32::MAX)
            })
            .collect();
        ScopeList {
            line: scopes.joined().into_boxed_str(),
            ends,
        }
    }
}

impl ScopeList {
    /// Whether `scope` is granted.
    pub fn contains(&self, scope: &str) -> bool {
        let (mut low, mut high) = (0, self.ends.len());
        while low < high {
            let middle = (low + high) / 2;
            match self.get(middle).cmp(scope) {
                std::cmp::Ordering::Equal => return true,
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
            }
        }
        false
    }

    /// The scopes, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.ends.len()).map(|i| self.get(i))
    }

    /// The scopes, space-separated (the OAuth `scope` form).
    pub fn line(&self) -> &str {
        &self.line
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.line.len() + self.ends.len() * std::mem::size_of::<u32>()
    }

    fn get(&self, index: usize) -> &str {
        let start = index
            .checked_sub(1)
            .map_or(0, |previous| self.ends[previous] as usize + 1);
        &self.line[start..self.ends[index] as usize]
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
