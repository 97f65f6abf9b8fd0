//! The request view of a Check: the parts of the HTTP request that the
//! stages (credentials, proof, MCP call, conditions) and the decision read.
//! Every stage depends on this module; this module depends on no stage.

use std::borrow::Cow;
use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;

use crate::mcp::McpBody;

/// The parts of an HTTP request a decision reads.
#[derive(Debug, Clone, Copy)]
pub struct HttpAttributes<'a> {
    /// The normalized host the policy was looked up by.
    pub host: &'a str,
    /// The HTTP method.
    pub method: &'a str,
    /// The `:path`, query included.
    pub path: &'a str,
    /// The `Authorization` header.
    pub authorization: RequestHeader<'a>,
    /// What a DPoP proof is checked against (scheme, `:authority`, the
    /// `DPoP` header).
    pub proof: ProofRequest<'a>,
    /// The request headers (lower-case names), for conditions.
    pub headers: &'a HashMap<String, String>,
    /// Where an `mcp:` rule reads the JSON-RPC call from.
    pub mcp: McpSource<'a>,
}

impl HttpAttributes<'_> {
    /// Whether the query string carries an `access_token` parameter (RFC
    /// 6750 §2.3): the name compared after percent-decoding, `+` as a space,
    /// case-insensitively, with `.` and spaces read as `_` and a trailing
    /// `[…]` dropped (as PHP reads names), `&` and `;` both separating
    /// parameters. An upstream that reads it would accept a credential
    /// scopegate never saw.
    pub fn carries_query_token(&self) -> bool {
        let Some((_, query)) = self.path.split_once('?') else {
            return false;
        };
        let query = query.split('#').next().unwrap_or_default();
        query
            .split(['&', ';'])
            .map(|parameter| parameter.split('=').next().unwrap_or_default())
            .any(is_access_token_name)
    }
}

/// Whether a raw query parameter name reads as `access_token`.
fn is_access_token_name(raw: &str) -> bool {
    const NAME: &[u8] = b"access_token";
    // Cheap exit: decoding never lengthens a name.
    if raw.len() < NAME.len() {
        return false;
    }
    let decoded = percent_decode(raw);
    let name = decoded.split(|&b| b == b'[').next().unwrap_or_default();
    name.len() == NAME.len()
        && name.iter().zip(NAME).all(|(&byte, &expected)| {
            let folded = match byte {
                b'.' | b' ' => b'_',
                other => other.to_ascii_lowercase(),
            };
            folded == expected
        })
}

/// `%XX` escapes decoded and `+` read as a space (form encoding); an invalid
/// escape is kept as it is.
fn percent_decode(raw: &str) -> Vec<u8> {
    let bytes = raw.as_bytes();
    let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        i += 1;
        match (byte, hex(bytes.get(i)), hex(bytes.get(i + 1))) {
            (b'%', Some(high), Some(low)) => {
                // Two hex digits: at most 0xFF.
                out.push((high * 16 + low) as u8);
                i += 2;
            }
            (b'+', ..) => out.push(b' '),
            (other, ..) => out.push(other),
        }
    }
    out
}

/// The request body and Envoy's MCP filter metadata, as the Check carries
/// them (read only when a rule with `mcp:` could match).
#[derive(Debug, Clone, Copy)]
pub struct McpSource<'a> {
    /// The body (`with_request_body`), possibly empty.
    pub body: McpBody<'a>,
    /// The Check's `metadata_context`, where `envoy.filters.http.mcp` puts
    /// what it parsed.
    pub metadata: Option<&'a envoy_types::pb::envoy::config::core::v3::Metadata>,
}

/// A request header (here: `Authorization`) as the CheckRequest carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestHeader<'a> {
    /// Not sent.
    Absent,
    /// One header (Envoy's `headers` map joins repeated headers with `,`,
    /// which the credentials stage also refuses for
    /// scopegate's schemes).
    One(&'a str),
    /// Several headers, as sent in the raw `header_map`.
    Several,
}

impl<'a> RequestHeader<'a> {
    /// The value of a header sent once.
    pub fn single(self) -> Option<&'a str> {
        match self {
            RequestHeader::One(value) => Some(value),
            RequestHeader::Absent | RequestHeader::Several => None,
        }
    }
}

/// The parts of the request a proof is checked against.
#[derive(Debug, Clone, Copy)]
pub struct ProofRequest<'a> {
    /// The request scheme (`http.scheme`; `https` when Envoy sends none).
    pub scheme: &'a str,
    /// The `:authority` as sent (not the policy lookup host).
    pub authority: &'a str,
    /// The HTTP method (`htm`).
    pub method: &'a str,
    /// The `:path`, query included (dropped for `htu`).
    pub path: &'a str,
    /// The `DPoP` request header.
    pub proof: RequestHeader<'a>,
    /// The public origin (`scheme://authority`) requests are addressed to,
    /// when the policy's `resource.id` names one: with TLS terminated before
    /// Envoy, the scheme and host Envoy sees are not what clients put in
    /// `htu`.
    pub public_origin: Option<&'a str>,
    /// The client certificate of the TLS connection as Envoy forwards it
    /// (`attributes.source.certificate`: URL-encoded PEM, empty when there
    /// is none or the filter lacks `include_peer_certificate`).
    pub certificate: &'a str,
}

/// The request headers of a Check, read the same whichever way Envoy sends
/// them: the `headers` map (lowercase names, a repeated header joined with
/// `,`) or, with `encode_raw_headers: true`, the raw `header_map` (a repeated
/// header as several entries). A name found in `headers` is read from there,
/// any other from `header_map`; every stage (credentials, proof, MCP body,
/// conditions, the trace context) reads through this one view.
#[derive(Debug, Clone, Copy)]
pub struct RequestHeaders<'a>(&'a HttpRequest);

impl<'a> RequestHeaders<'a> {
    /// The headers of `http`.
    pub fn of(http: &'a HttpRequest) -> Self {
        RequestHeaders(http)
    }

    /// A header by its lowercase name. A raw value that is not UTF-8 counts
    /// as several: it is never a valid token or trace context, and never
    /// ignored.
    pub fn get(self, name: &str) -> RequestHeader<'a> {
        if let Some(value) = self.0.headers.get(name) {
            return RequestHeader::One(value);
        }
        let mut values = self.raw_values(name);
        let Some(first) = values.next() else {
            return RequestHeader::Absent;
        };
        if values.next().is_some() {
            return RequestHeader::Several;
        }
        first.map_or(RequestHeader::Several, RequestHeader::One)
    }

    /// The value of a header sent once, if it was.
    pub fn single(self, name: &str) -> Option<&'a str> {
        self.get(name).single()
    }

    /// All headers as one map of lowercase names to values (a repeated raw
    /// header joined with `,`, as Envoy joins it in `headers`), for
    /// conditions. Borrowed when Envoy sent only the `headers` map.
    pub fn to_map(self) -> Cow<'a, HashMap<String, String>> {
        let mut raw = self
            .raw_entries()
            .filter(|h| !self.in_map(&h.key))
            .peekable();
        if raw.peek().is_none() {
            return Cow::Borrowed(&self.0.headers);
        }
        let mut map = self.0.headers.clone();
        for entry in raw {
            let value = raw_text(entry);
            map.entry(entry.key.to_ascii_lowercase())
                .and_modify(|joined| {
                    joined.push(',');
                    joined.push_str(&value);
                })
                .or_insert_with(|| value.into_owned());
        }
        Cow::Owned(map)
    }

    fn in_map(self, name: &str) -> bool {
        self.0.headers.contains_key(&*lowercase(name))
    }

    fn raw_entries(self) -> impl Iterator<Item = &'a HeaderValue> {
        self.0.header_map.iter().flat_map(|map| map.headers.iter())
    }

    /// The values of the raw headers named `name`: `None` for one that is
    /// not UTF-8.
    fn raw_values(self, name: &str) -> impl Iterator<Item = Option<&'a str>> {
        self.raw_entries()
            .filter(move |h| h.key.eq_ignore_ascii_case(name))
            .map(|h| {
                if h.raw_value.is_empty() {
                    Some(h.value.as_str())
                } else {
                    std::str::from_utf8(&h.raw_value).ok()
                }
            })
    }
}

/// A raw header's value as text (invalid UTF-8 replaced).
fn raw_text(header: &HeaderValue) -> Cow<'_, str> {
    if header.raw_value.is_empty() {
        Cow::Borrowed(&header.value)
    } else {
        String::from_utf8_lossy(&header.raw_value)
    }
}

fn lowercase(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carries(path: &str) -> bool {
        let headers = HashMap::new();
        let attributes = HttpAttributes {
            host: "api.example.com",
            method: "GET",
            path,
            authorization: RequestHeader::Absent,
            proof: ProofRequest {
                scheme: "https",
                authority: "api.example.com",
                method: "GET",
                path,
                proof: RequestHeader::Absent,
                public_origin: None,
                certificate: "",
            },
            headers: &headers,
            mcp: McpSource {
                body: McpBody {
                    bytes: b"",
                    partial: false,
                    declared_length: None,
                },
                metadata: None,
            },
        };
        attributes.carries_query_token()
    }

    #[test]
    fn an_access_token_parameter_is_found_in_every_spelling_a_server_reads() {
        for path in [
            "/?access_token=x",
            "/a?b=1&access_token",
            "/a?b=1;Access_Token=",
            "/a?access%5ftoken=x",
            "/a?access%2Etoken=x",
            "/a?access+token=x",
            "/a?access%20token=x",
            "/a?access_token%5B%5D=x",
            "/a?access_token[x]=1",
        ] {
            assert!(carries(path), "{path}");
        }
        for path in [
            "/access_token",
            "/a?",
            "/a?access_tokens=1",
            "/a?xaccess_token=1",
            "/a?q=access_token",
            "/a?access_toke%6=1",
            "/a?b#access_token=1",
        ] {
            assert!(!carries(path), "{path}");
        }
    }

    #[test]
    fn percent_decoding_keeps_invalid_escapes() {
        assert_eq!(percent_decode("a%41+%zz%4"), b"aA %zz%4");
    }
}
