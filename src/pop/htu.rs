//! The request URI a DPoP proof's `htu` claim is compared with, normalized
//! as RFC 9449 §4.3 asks: syntax-based (RFC 3986 §6.2.2) and scheme-based
//! (§6.2.3) normalization, without the query and fragment.
//!
//! * scheme and host are lower-cased;
//! * an empty port and the scheme's default port (`http` 80, `https` 443)
//!   are removed;
//! * percent-encodings get upper-case hex digits, and encoded unreserved
//!   characters (`A-Z a-z 0-9 - . _ ~`) are decoded;
//! * dot segments are removed (RFC 3986 §5.2.4), after that decoding, so
//!   `/a/%2E%2E/b` and `/b` are the same resource as RFC 3986 says;
//! * an empty path becomes `/`;
//! * the query and fragment are dropped.
//!
//! A URI with userinfo, a non-ASCII or control character, or an invalid
//! percent-encoding is refused rather than guessed at.

use std::fmt;
use std::str::FromStr;

/// An absolute `scheme://authority/path` URI in normal form, without query or
/// fragment. Two URIs name the same DPoP target exactly when their
/// normalized forms are byte-equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NormalizedUri(String);

/// Why a URI cannot be normalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// No `scheme://` prefix: `htu` must be an absolute URI with an authority.
    #[error("the URI is not absolute; expected scheme://host/path")]
    NotAbsolute,
    /// The scheme has a character RFC 3986 §3.1 does not allow.
    #[error("the URI scheme is invalid")]
    InvalidScheme,
    /// The URI carries `user@` before the host (RFC 9110 §4.2.4 forbids it).
    #[error("the URI must not carry userinfo (user@host)")]
    Userinfo,
    /// The authority has no host.
    #[error("the URI has no host")]
    EmptyHost,
    /// The port is not a number from 0 to 65535.
    #[error("the URI port is not a number from 0 to 65535")]
    InvalidPort,
    /// A `%` not followed by two hex digits.
    #[error("the URI has an invalid percent-encoding")]
    InvalidPercentEncoding,
    /// A space, control or non-ASCII character (not allowed in a URI).
    #[error("the URI has a character that must be percent-encoded")]
    InvalidCharacter,
}

impl NormalizedUri {
    /// Normalizes an absolute URI (such as a proof's `htu`).
    pub fn parse(uri: &str) -> Result<Self, UriError> {
        if !uri.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(UriError::InvalidCharacter);
        }
        let uri = uri.split_once('#').map_or(uri, |(before, _)| before);
        let uri = uri.split_once('?').map_or(uri, |(before, _)| before);
        let (scheme, rest) = uri.split_once("://").ok_or(UriError::NotAbsolute)?;
        let scheme = normalize_scheme(scheme)?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let authority = normalize_authority(&scheme, authority)?;
        let path = remove_dot_segments(&normalize_percent_encoding(path)?);
        let path = if path.is_empty() { "/" } else { &path };
        Ok(NormalizedUri(format!("{scheme}://{authority}{path}")))
    }

    /// Normalizes the URI of a request from its parts as Envoy reports them
    /// (`scheme`, `host` = `:authority`, `path` = `:path`, query included).
    pub fn from_request(scheme: &str, authority: &str, path: &str) -> Result<Self, UriError> {
        if !path.starts_with('/') {
            // `OPTIONS *` and absolute-form targets have no origin-form path.
            return Err(UriError::NotAbsolute);
        }
        Self::parse(&format!("{scheme}://{authority}{path}"))
    }

    /// The normalized URI.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NormalizedUri {
    type Err = UriError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        NormalizedUri::parse(uri)
    }
}

impl fmt::Display for NormalizedUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// RFC 3986 §3.1: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`, compared
/// case-insensitively.
fn normalize_scheme(scheme: &str) -> Result<String, UriError> {
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid {
        return Err(UriError::InvalidScheme);
    }
    Ok(scheme.to_ascii_lowercase())
}

fn normalize_authority(scheme: &str, authority: &str) -> Result<String, UriError> {
    if authority.contains('@') {
        return Err(UriError::Userinfo);
    }
    // The port follows the last ':' outside an IPv6 literal's brackets.
    let port_start = match authority.rfind(']') {
        Some(bracket) => authority[bracket..].find(':').map(|i| bracket + i),
        None => authority.rfind(':'),
    };
    let (host, port) = match port_start {
        Some(colon) => (&authority[..colon], Some(&authority[colon + 1..])),
        None => (authority, None),
    };
    if host.is_empty() {
        return Err(UriError::EmptyHost);
    }
    let mut normalized = normalize_percent_encoding(host)?.to_ascii_lowercase();
    // Lower-casing must not touch the hex digits of an escape (upper case
    // per §6.2.2.1), so escapes are re-normalized afterwards.
    if normalized.contains('%') {
        normalized = normalize_percent_encoding(&normalized)?;
    }
    match port {
        None | Some("") => {}
        Some(port) => {
            if !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(UriError::InvalidPort);
            }
            let number: u16 = port.parse().map_err(|_| UriError::InvalidPort)?;
            if Some(number) != default_port(scheme) {
                normalized.push(':');
                normalized.push_str(&number.to_string());
            }
        }
    }
    Ok(normalized)
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Upper-cases the hex digits of every escape and decodes escaped
/// unreserved characters (RFC 3986 §6.2.2.1 and §6.2.2.2).
fn normalize_percent_encoding(component: &str) -> Result<String, UriError> {
    let bytes = component.as_bytes();
    let mut out = String::with_capacity(component.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(char::from(bytes[i]));
            i += 1;
            continue;
        }
        let hex = bytes
            .get(i + 1..i + 3)
            .ok_or(UriError::InvalidPercentEncoding)?;
        let value = std::str::from_utf8(hex)
            .ok()
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or(UriError::InvalidPercentEncoding)?;
        if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(value));
        } else {
            out.push_str(&format!("%{value:02X}"));
        }
        i += 3;
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 `remove_dot_segments`.
fn remove_dot_segments(path: &str) -> String {
    let mut input = path;
    let mut output = String::with_capacity(path.len());
    while !input.is_empty() {
        if let Some(rest) = input
            .strip_prefix("../")
            .or_else(|| input.strip_prefix("./"))
        {
            input = rest;
        } else if input.starts_with("/./") {
            input = &input[2..];
        } else if input == "/." {
            input = "/";
        } else if input.starts_with("/../") {
            input = &input[3..];
            truncate_last_segment(&mut output);
        } else if input == "/.." {
            input = "/";
            truncate_last_segment(&mut output);
        } else if input == "." || input == ".." {
            input = "";
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |i| start + i);
            output.push_str(&input[..end]);
            input = &input[end..];
        }
    }
    output
}

fn truncate_last_segment(output: &mut String) {
    let keep = output.rfind('/').unwrap_or(0);
    output.truncate(keep);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(uri: &str) -> String {
        NormalizedUri::parse(uri).unwrap().as_str().to_string()
    }

    #[test]
    fn scheme_and_host_are_lower_cased_and_default_ports_removed() {
        assert_eq!(
            norm("HTTPS://Server.Example.COM:443/Orders"),
            "https://server.example.com/Orders"
        );
        assert_eq!(norm("http://example.com:80/a"), "http://example.com/a");
        assert_eq!(norm("http://example.com:/a"), "http://example.com/a");
        assert_eq!(
            norm("https://example.com:8443/a"),
            "https://example.com:8443/a"
        );
        assert_eq!(norm("https://example.com:0443/a"), "https://example.com/a");
        assert_eq!(norm("http://example.com:443/a"), "http://example.com:443/a");
        assert_eq!(norm("https://[::1]:443/a"), "https://[::1]/a");
        assert_eq!(
            norm("https://[2001:DB8::1]:9443/a"),
            "https://[2001:db8::1]:9443/a"
        );
    }

    #[test]
    fn an_empty_path_is_slash_and_query_and_fragment_are_dropped() {
        assert_eq!(norm("https://example.com"), "https://example.com/");
        assert_eq!(norm("https://example.com?x=1"), "https://example.com/");
        assert_eq!(
            norm("https://example.com/a?b=/../c#d"),
            "https://example.com/a"
        );
        assert_eq!(norm("https://example.com/a#f?g"), "https://example.com/a");
    }

    #[test]
    fn percent_encodings_are_normalized() {
        // Hex case is normalized; encoded unreserved characters are decoded;
        // reserved ones stay encoded (a %2F is not a segment separator).
        assert_eq!(norm("https://e.com/a%2fb"), "https://e.com/a%2Fb");
        assert_eq!(
            norm("https://e.com/%7euser/%41%62"),
            "https://e.com/~user/Ab"
        );
        assert_eq!(norm("https://e.com/caf%c3%a9"), "https://e.com/caf%C3%A9");
        assert_eq!(norm("https://%45xample.com/"), "https://example.com/");
        assert_eq!(
            NormalizedUri::parse("https://e.com/a%2Fb"),
            NormalizedUri::parse("https://E.COM/a%2fb")
        );
        assert_ne!(norm("https://e.com/a%2Fb"), norm("https://e.com/a/b"));
    }

    #[test]
    fn dot_segments_are_removed() {
        // RFC 3986 §5.2.4's examples, and encoded dots.
        assert_eq!(remove_dot_segments("/a/b/c/./../../g"), "/a/g");
        assert_eq!(remove_dot_segments("mid/content=5/../6"), "mid/6");
        assert_eq!(norm("https://e.com/a/./b/../c"), "https://e.com/a/c");
        assert_eq!(norm("https://e.com/../../a"), "https://e.com/a");
        assert_eq!(norm("https://e.com/a/%2E%2e/b"), "https://e.com/b");
        assert_eq!(norm("https://e.com/a/.."), "https://e.com/");
        assert_eq!(norm("https://e.com/a/b/."), "https://e.com/a/b/");
    }

    #[test]
    fn a_request_and_its_proof_agree_after_normalization() {
        let request =
            NormalizedUri::from_request("https", "API.example.com:443", "/orders/42?x=1").unwrap();
        assert_eq!(
            request,
            norm("https://api.example.com/orders/./42").parse().unwrap()
        );
        assert_eq!(
            NormalizedUri::from_request("https", "api.example.com", "*"),
            Err(UriError::NotAbsolute)
        );
    }

    #[test]
    fn malformed_uris_are_refused() {
        let cases = [
            ("/orders", UriError::NotAbsolute),
            ("example.com/orders", UriError::NotAbsolute),
            ("1http://e.com/", UriError::InvalidScheme),
            ("://e.com/", UriError::InvalidScheme),
            ("https://user:pw@e.com/", UriError::Userinfo),
            ("https:///path", UriError::EmptyHost),
            ("https://:443/path", UriError::EmptyHost),
            ("https://e.com:https/", UriError::InvalidPort),
            ("https://e.com:65536/", UriError::InvalidPort),
            ("https://e.com:-1/", UriError::InvalidPort),
            ("https://e.com/a%2", UriError::InvalidPercentEncoding),
            ("https://e.com/a%zz", UriError::InvalidPercentEncoding),
            ("https://e.com/a%+1", UriError::InvalidPercentEncoding),
            ("https://e.com/a b", UriError::InvalidCharacter),
            ("https://e.com/caf\u{e9}", UriError::InvalidCharacter),
            ("https://e.com/\n", UriError::InvalidCharacter),
        ];
        for (uri, error) in cases {
            assert_eq!(NormalizedUri::parse(uri), Err(error), "{uri:?}");
        }
    }
}
