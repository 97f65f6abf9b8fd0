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
                Segment::One => {
                    if request.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(literal) => {
                    if request.next() != Some(&&**literal) {
                        return false;
                    }
                }
            }
        }
        request.next().is_none()
    }
}

/// A request path split into segments: query and fragment dropped, empty
/// segments (`//`) merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPath<'a> {
    segments: Vec<&'a str>,
}

/// The request path could be read differently by the upstream than by the
/// policy (dot segments, encoded `/`, `\` or `.`), so no rule may match it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request path is not normalized; enable path normalization in the proxy")]
pub struct AmbiguousPath;

impl<'a> RequestPath<'a> {
    /// Splits `:path` into segments, refusing paths that are ambiguous.
    pub fn parse(path: &'a str) -> Result<Self, AmbiguousPath> {
        let end = path.find(['?', '#']).unwrap_or(path.len());
        let path = &path[..end];
        if path.contains('\\') || has_encoded_separator(path) {
            return Err(AmbiguousPath);
        }
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if segments.iter().any(|s| *s == "." || *s == "..") {
            return Err(AmbiguousPath);
        }
        Ok(RequestPath { segments })
    }
}

/// `%2f`, `%5c` or `%2e` in any case.
fn has_encoded_separator(path: &str) -> bool {
    path.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'f') | (b'5', b'c') | (b'2', b'e')
            )
    })
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
            "/a%2Eb",
            "/a\\b",
            "/a%5C",
        ] {
            assert_eq!(RequestPath::parse(path), Err(AmbiguousPath), "{path}");
        }
        assert!(RequestPath::parse("/a/b%20c?x=../y").is_ok());
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
