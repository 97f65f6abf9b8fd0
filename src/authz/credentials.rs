//! The first stage of a Check: what credentials the request presents.
//!
//! A credential scopegate owns (`Authorization: Bearer …` or `DPoP …`) is
//! either exactly one well-formed token or an error: it is never treated as
//! absent, so an unvalidated credential cannot reach the upstream through
//! an anonymous rule. Other schemes (`Basic`, …) belong to the upstream and
//! count as no token.

use super::request::RequestHeader;

/// What the request presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials<'a> {
    /// No credential of scopegate's (no header, or another scheme).
    None,
    /// One bearer token, not yet parsed or verified.
    Bearer(&'a str),
    /// One token sent with the `DPoP` scheme (RFC 9449 §7.1): it must be
    /// DPoP-bound and come with its proof.
    Dpop(&'a str),
}

impl<'a> Credentials<'a> {
    /// The token, whatever its scheme.
    pub fn token(self) -> Option<&'a str> {
        match self {
            Credentials::None => None,
            Credentials::Bearer(token) | Credentials::Dpop(token) => Some(token),
        }
    }
}

/// Why the credentials are refused: 401 `invalid_request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// More than one `Authorization` header, or another credential next to
    /// a bearer token.
    #[error("more than one Authorization credential was sent")]
    Several,
    /// `Bearer` or `DPoP` with nothing, or more than one word, after it.
    #[error("the Authorization credential must be exactly one token")]
    NotOneToken,
}

impl CredentialsError {
    /// A stable label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            CredentialsError::Several => "several_credentials",
            CredentialsError::NotOneToken => "malformed_credentials",
        }
    }
}

/// The schemes scopegate validates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Bearer,
    Dpop,
}

/// Reads the request's credentials. Schemes compare case-insensitively
/// (RFC 9110 §11.1) and are separated from the credential by any
/// whitespace.
pub fn credentials(header: RequestHeader<'_>) -> Result<Credentials<'_>, CredentialsError> {
    let value = match header {
        RequestHeader::Absent => return Ok(Credentials::None),
        RequestHeader::Several => return Err(CredentialsError::Several),
        RequestHeader::One(value) => value.trim_matches(is_whitespace),
    };
    let (scheme, credential) = split_scheme(value);
    match scheme {
        Some(Scheme::Bearer) if is_one_word(credential) => Ok(Credentials::Bearer(credential)),
        Some(Scheme::Dpop) if is_one_word(credential) => Ok(Credentials::Dpop(credential)),
        Some(_) if value.contains(',') => Err(CredentialsError::Several),
        Some(_) => Err(CredentialsError::NotOneToken),
        // Another scheme, unless a joined second header is one of ours.
        None if value
            .split(',')
            .skip(1)
            .any(|part| split_scheme(part.trim_matches(is_whitespace)).0.is_some()) =>
        {
            Err(CredentialsError::Several)
        }
        None => Ok(Credentials::None),
    }
}

/// The scheme, if it is one of scopegate's, and what follows it (trimmed).
fn split_scheme(value: &str) -> (Option<Scheme>, &str) {
    let (scheme, rest) = value.split_once(is_whitespace).unwrap_or((value, ""));
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Some(Scheme::Bearer)
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Some(Scheme::Dpop)
    } else {
        None
    };
    (scheme, rest.trim_matches(is_whitespace))
}

/// RFC 9110 whitespace, plus the other ASCII whitespace a lenient parser
/// might split on.
fn is_whitespace(c: char) -> bool {
    c.is_ascii_whitespace()
}

/// One non-empty run without whitespace: the one credential. Whether it is
/// a well-formed token is the token parser's call (401 `invalid_token`).
fn is_one_word(credential: &str) -> bool {
    // By bytes: ASCII whitespace never occurs inside a multi-byte character,
    // and a byte scan is several times faster than a `char` one (the token
    // is ~1 KiB, scanned on every Check).
    !credential.is_empty() && !credential.bytes().any(|b| b.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(value: &str) -> Result<Credentials<'_>, CredentialsError> {
        credentials(RequestHeader::One(value))
    }

    #[test]
    fn one_bearer_token_after_any_whitespace() {
        for value in [
            "Bearer a.b.c",
            "bearer a.b.c",
            "BEARER\ta.b.c",
            "Bearer   a.b.c ",
            "Bearer\t \ta.b.c",
        ] {
            assert_eq!(read(value), Ok(Credentials::Bearer("a.b.c")), "{value:?}");
        }
    }

    #[test]
    fn a_bearer_credential_that_is_not_one_token_is_an_error() {
        for value in ["Bearer", "Bearer ", "Bearer a.b.c d", "Bearer\ta b"] {
            assert_eq!(read(value), Err(CredentialsError::NotOneToken), "{value:?}");
        }
        // One word that is no token is the token parser's to refuse.
        assert_eq!(read("Bearer a\"b"), Ok(Credentials::Bearer("a\"b")));
    }

    #[test]
    fn several_credentials_are_an_error() {
        assert_eq!(
            credentials(RequestHeader::Several),
            Err(CredentialsError::Several)
        );
        for value in [
            "Bearer a.b.c,Bearer d.e.f",
            "Basic Zm9v, Bearer a.b.c",
            "Basic Zm9v,\tdpop x",
        ] {
            assert_eq!(read(value), Err(CredentialsError::Several), "{value:?}");
        }
    }

    #[test]
    fn other_schemes_are_the_upstreams() {
        for value in [
            "Basic Zm9vOmJhcg==",
            "Digest username=\"a\", realm=\"b\"",
            "Bearerx a.b.c",
        ] {
            assert_eq!(read(value), Ok(Credentials::None), "{value:?}");
        }
        assert_eq!(credentials(RequestHeader::Absent), Ok(Credentials::None));
    }

    #[test]
    fn one_dpop_token_is_read_like_a_bearer_token() {
        for value in ["DPoP a.b.c", "dpop\ta.b.c", "DPOP  a.b.c "] {
            assert_eq!(read(value), Ok(Credentials::Dpop("a.b.c")), "{value:?}");
        }
        for value in ["DPoP", "DPoP a.b.c d"] {
            assert_eq!(read(value), Err(CredentialsError::NotOneToken), "{value:?}");
        }
        assert_eq!(read("DPoP a.b.c, Bearer d"), Err(CredentialsError::Several));
    }
}
