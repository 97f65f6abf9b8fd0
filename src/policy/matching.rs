//! Host and path patterns, compiled once and matched without allocation
//! beyond splitting the request path.

use std::borrow::Cow;

/// A `hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `orders.example.com`: that host only.
    Exact(Box<str>),
    /// `*.orders.internal`: one or more labels in front of the suffix; stored
    /// with its leading dot (`.orders.internal`).
    Wildcard(Box<str>),
}

impl HostPattern {
    /// Parses a `hosts` entry; the error says what is wrong.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let lower = pattern.to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if name.contains('/') {
            return Err("must be a host name, not a URL (e.g. \"api.example.com\")".into());
        }
        if name.contains(':') {
            return Err("must not contain a port (ports are stripped from request hosts)".into());
        }
        if name.is_empty()
            || name.len() > 253
            || !name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
        {
            return Err(
                "must be a DNS name, optionally prefixed by \"*.\" (e.g. \"api.example.com\", \"*.example.com\")"
                    .into(),
            );
        }
        Ok(if wildcard {
            HostPattern::Wildcard(format!(".{name}").into())
        } else {
            HostPattern::Exact(name.into())
        })
    }

    /// The wildcard patterns that match every host this pattern matches,
    /// most specific first: `*.corp.example.com` and `*.example.com` (and
    /// `*.com`) for `pay.corp.example.com` or `*.pay.corp.example.com`.
    pub fn covering_wildcards(&self) -> impl Iterator<Item = HostPattern> + '_ {
        let name = match self {
            HostPattern::Exact(host) => &host[..],
            // ".pay.corp.example.com": the suffixes after the first label.
            HostPattern::Wildcard(suffix) => &suffix[1..],
        };
        name.match_indices('.')
            .map(move |(i, _)| HostPattern::Wildcard(name[i..].into()))
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(host) => f.write_str(host),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// Normalizes a request host for lookup: port stripped, trailing dot
/// removed, lowercased (borrowed when already lowercase).
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    let without_port = if host.starts_with('[') {
        // [v6]:port
        host.split_once(']')
            .map_or(host, |(addr, _)| &host[..addr.len() + 1])
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    let trimmed = without_port.strip_suffix('.').unwrap_or(without_port);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    /// `*`: exactly one segment.
    One,
    /// `{name}`: exactly one segment, captured as `request.params.name`.
    Capture(Box<str>),
    /// `**`: zero or more segments (last position only).
    Rest,
}

/// A `paths` entry: `/orders`, `/orders/*`, `/orders/**`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    segments: Box<[Segment]>,
}

impl PathPattern {
    /// Parses a path pattern; the error says what is wrong.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err("must start with \"/\"".into());
        };
        if pattern.contains(['?', '#']) {
            return Err("must not contain a query or fragment".into());
        }
        let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "**" if i + 1 == parts.len() => Segment::Rest,
                "**" => return Err("\"**\" may only be the last segment".into()),
                "*" => Segment::One,
                "." | ".." => return Err("must not contain \".\" or \"..\" segments".into()),
                capture if capture.starts_with('{') => {
                    let name = capture_name(capture)?;
                    if segments
                        .iter()
                        .any(|s| matches!(s, Segment::Capture(n) if **n == *name))
                    {
                        return Err(format!("capture {{{name}}} appears twice"));
                    }
                    Segment::Capture(name.into())
                }
                literal if literal.contains(['{', '}']) => {
                    return Err("a capture must be a whole segment (\"/users/{user}\")".into());
                }
                literal if literal.contains('*') => {
                    return Err("\"*\" must be a whole segment (\"/a/*\", not \"/a*\")".into());
                }
                literal => Segment::Literal(literal.into()),
            });
        }
        Ok(PathPattern {
            segments: segments.into(),
        })
    }

    /// Whether the request path's segments match.
    pub fn matches(&self, path: &RequestPath<'_>) -> bool {
        let mut request = path.segments.iter();
        for segment in self.segments.iter() {
            match segment {
                Segment::Rest => return true,
                Segment::One | Segment::Capture(_) => {
                    if request.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(literal) => {
                    if request.next().map(|s| &**s) != Some(&**literal) {
                        return false;
                    }
                }
            }
        }
        request.next().is_none()
    }

    /// Whether the pattern has captures.
    pub fn has_captures(&self) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Capture(_)))
    }

    /// The captured segments, `(name, value)`, if the path matches.
    pub fn captures<'p>(&'p self, path: &'p RequestPath<'_>) -> Option<Vec<(&'p str, &'p str)>> {
        if !self.matches(path) {
            return None;
        }
        Some(
            self.segments
                .iter()
                .zip(path.segments.iter())
                .filter_map(|(segment, value)| match segment {
                    Segment::Capture(name) => Some((&**name, &**value)),
                    _ => None,
                })
                .collect(),
        )
    }
}

/// The name in `{name}`: a letter or `_`, then letters, digits or `_`.
fn capture_name(segment: &str) -> Result<&str, String> {
    let name = segment
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or("a capture is {name}, one whole segment")?;
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(name)
    } else {
        Err(format!(
            "{{{name}}}: a capture name is a letter or _ followed by letters, digits or _"
        ))
    }
}

/// A request path as the upstream will route it, split into segments:
/// query and fragment dropped, empty segments (`//`) merged,
/// percent-encoded unreserved characters (RFC 3986 §2.3) decoded, and `;`
/// path parameters (`/admin;x/users`) cut off each segment, as servlet
/// containers do. Whether there were any is kept: only a rule with
/// `matrixParams: true` matches such a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPath<'a> {
    segments: Vec<Cow<'a, str>>,
    has_params: bool,
}

/// The request path could be read differently by the upstream than by the
/// policy (dot segments, encoded `/`, `\` or `.`-segments, invalid escapes),
/// so no rule may match it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the request path is ambiguous (dot segments, encoded separators, invalid escapes or ';' parameters); send it normalized"
)]
pub struct AmbiguousPath;

impl<'a> RequestPath<'a> {
    /// Splits `:path` into segments, refusing paths that are ambiguous.
    pub fn parse(path: &'a str) -> Result<Self, AmbiguousPath> {
        let end = path.find(['?', '#']).unwrap_or(path.len());
        let path = &path[..end];
        if path.contains('\\') {
            return Err(AmbiguousPath);
        }
        let mut has_params = false;
        let mut segments = Vec::new();
        for raw in path.split('/') {
            let segment = match raw.split_once(';') {
                Some((before, _)) => {
                    has_params = true;
                    before
                }
                None => raw,
            };
            let segment = decode_unreserved(segment)?;
            if segment == "." || segment == ".." {
                return Err(AmbiguousPath);
            }
            if !segment.is_empty() {
                segments.push(segment);
            }
        }
        Ok(RequestPath {
            segments,
            has_params,
        })
    }

    /// The path as the rules match it: `/` and the segments, decoded and
    /// without empty segments, query or `;` parameters (`request.path` of
    /// conditions, so that `/%61dmin` is `/admin` there too).
    pub fn normalized(&self) -> String {
        let mut path = String::with_capacity(self.segments.iter().map(|s| s.len() + 1).sum());
        for segment in &self.segments {
            path.push('/');
            path.push_str(segment);
        }
        if path.is_empty() {
            path.push('/');
        }
        path
    }

    /// Whether a segment carried `;` parameters.
    pub fn has_params(&self) -> bool {
        self.has_params
    }
}

/// Decodes `%XX` escapes of unreserved characters; other escapes stay as
/// they are (their meaning is the upstream's). An escape of `/` or `\`, or
/// one that is not two hex digits, makes the path ambiguous.
fn decode_unreserved(segment: &str) -> Result<Cow<'_, str>, AmbiguousPath> {
    if !segment.contains('%') {
        return Ok(Cow::Borrowed(segment));
    }
    let bytes = segment.as_bytes();
    let mut out = String::with_capacity(segment.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            let next = segment[i + 1..]
                .find('%')
                .map_or(bytes.len(), |n| i + 1 + n);
            out.push_str(&segment[i..next]);
            i = next;
            continue;
        }
        let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
        let (Some(high), Some(low)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) else {
            return Err(AmbiguousPath);
        };
        let byte = (high * 16 + low) as u8;
        match byte {
            b'/' | b'\\' => return Err(AmbiguousPath),
            b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => out.push(char::from(b)),
            _ => out.push_str(&segment[i..i + 3]),
        }
        i += 3;
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, path: &str) -> bool {
        PathPattern::parse(pattern)
            .unwrap()
            .matches(&RequestPath::parse(path).unwrap())
    }

    #[test]
    fn literal_paths_match_exactly_ignoring_query_and_extra_slashes() {
        assert!(matches("/orders", "/orders"));
        assert!(matches("/orders", "/orders/?page=2"));
        assert!(matches("/orders", "//orders"));
        assert!(!matches("/orders", "/orders/1"));
        assert!(!matches("/orders", "/order"));
        assert!(matches("/", "/"));
        assert!(!matches("/", "/x"));
    }

    #[test]
    fn star_is_one_segment_and_double_star_any_rest() {
        assert!(matches("/orders/*", "/orders/1"));
        assert!(!matches("/orders/*", "/orders"));
        assert!(!matches("/orders/*", "/orders/1/items"));
        assert!(matches("/orders/**", "/orders"));
        assert!(matches("/orders/**", "/orders/1/items"));
        assert!(matches("/**", "/anything/at/all"));
        assert!(matches("/*/items", "/7/items"));
    }

    #[test]
    fn captures_are_one_whole_segment_each() {
        let pattern = PathPattern::parse("/users/{user}/orders/{order_id}/**").unwrap();
        let path = RequestPath::parse("/users/u%31/orders/42/items").unwrap();
        assert_eq!(
            pattern.captures(&path),
            Some(vec![("user", "u1"), ("order_id", "42")])
        );
        assert!(pattern.has_captures());
        assert_eq!(
            pattern.captures(&RequestPath::parse("/users/u1").unwrap()),
            None
        );
        assert!(
            PathPattern::parse("/u/{a}/{a}")
                .unwrap_err()
                .contains("twice")
        );
        assert!(PathPattern::parse("/u/{1a}").is_err());
        assert!(
            PathPattern::parse("/u/x{a}")
                .unwrap_err()
                .contains("whole segment")
        );
        assert!(PathPattern::parse("/u/{a").is_err());
    }

    #[test]
    fn bad_patterns_are_rejected_with_a_reason() {
        assert!(
            PathPattern::parse("orders")
                .unwrap_err()
                .contains("start with")
        );
        assert!(
            PathPattern::parse("/a/**/b")
                .unwrap_err()
                .contains("last segment")
        );
        assert!(
            PathPattern::parse("/a*")
                .unwrap_err()
                .contains("whole segment")
        );
        assert!(PathPattern::parse("/a?b=1").is_err());
    }

    #[test]
    fn ambiguous_request_paths_are_refused() {
        for path in [
            "/public/../admin",
            "/./x",
            "/a%2fb",
            "/a/%2E%2e/b",
            "/a/%2e",
            "/a\\b",
            "/a%5C",
            "/a%zz",
            "/a%2",
            "/a%",
            "/admin/..;/x",
        ] {
            assert_eq!(RequestPath::parse(path), Err(AmbiguousPath), "{path}");
        }
        assert!(RequestPath::parse("/a/b%20c?x=../y").is_ok());
    }

    #[test]
    fn unreserved_escapes_are_decoded_before_matching() {
        assert!(matches("/admin/**", "/%61dmin/users"));
        assert!(
            !matches("/admin/**", "/%41dmin/users"),
            "paths are case-sensitive"
        );
        assert!(matches("/a.b/*", "/a%2eb/x"));
        assert!(matches("/v1/~me", "/v1/%7Eme"));
        // Reserved and other bytes keep their escapes: their meaning is the upstream's.
        assert!(matches("/a%20b", "/a%20b"));
        assert!(!matches("/a b", "/a%20b"));
    }

    #[test]
    fn path_parameters_are_cut_off_and_remembered() {
        let path = RequestPath::parse("/admin;x/users;jsessionid=1").unwrap();
        assert!(path.has_params());
        assert!(PathPattern::parse("/admin/users").unwrap().matches(&path));
        let path = RequestPath::parse("/admin;/users").unwrap();
        assert!(path.has_params());
        assert!(PathPattern::parse("/admin/*").unwrap().matches(&path));
        assert!(!RequestPath::parse("/admin/users").unwrap().has_params());
        assert!(!RequestPath::parse("/admin?a=b;c").unwrap().has_params());
    }

    #[test]
    fn hosts_are_normalized_for_lookup() {
        assert_eq!(
            normalize_host("Orders.Example.COM:8443"),
            "orders.example.com"
        );
        assert_eq!(normalize_host("orders.example.com."), "orders.example.com");
        assert_eq!(normalize_host("[::1]:9001"), "[::1]");
        assert!(matches!(normalize_host("plain.host"), Cow::Borrowed(_)));
    }

    #[test]
    fn host_patterns_parse_or_say_why_not() {
        assert_eq!(
            HostPattern::parse("*.Orders.internal"),
            Ok(HostPattern::Wildcard(".orders.internal".into()))
        );
        assert_eq!(
            HostPattern::parse("api.example.com"),
            Ok(HostPattern::Exact("api.example.com".into()))
        );
        assert!(
            HostPattern::parse("api.example.com:443")
                .unwrap_err()
                .contains("port")
        );
        assert!(HostPattern::parse("*").is_err());
        assert!(HostPattern::parse("a..b").is_err());
        assert!(HostPattern::parse("a_b.com").is_err());
    }

    #[test]
    fn a_url_in_hosts_is_named_as_one() {
        for url in [
            "https://x.example.com/",
            "x.example.com/api",
            "*.example.com/",
        ] {
            let error = HostPattern::parse(url).unwrap_err();
            assert!(error.contains("not a URL"), "{url}: {error}");
        }
    }
}
