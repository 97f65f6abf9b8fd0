//! Bounded HTTP fetches of discovery documents and JWKS.

use std::time::Duration;

use futures::StreamExt as _;
use reqwest::header::CACHE_CONTROL;

use super::guard::{BlockedAddresses, MAX_REDIRECTS, RedirectRefused, UrlRefusal};

/// Why a fetch failed. The message names the URL and what went wrong; it
/// never quotes response content (a URL taken from a response is shown as
/// its origin only).
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// Connection, TLS or timeout error.
    #[error("GET {url}: {reason}")]
    Transport {
        /// The URL fetched.
        url: String,
        /// What failed.
        reason: String,
    },
    /// A non-200 answer.
    #[error("GET {url}: HTTP {status}")]
    Status {
        /// The URL fetched.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The body is larger than allowed.
    #[error("GET {url}: response is larger than {limit} bytes")]
    TooLarge {
        /// The URL fetched.
        url: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// The discovery document is unusable.
    #[error("{url}: {reason}")]
    Discovery {
        /// The discovery URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The JWKS document is unusable.
    #[error("{url}: {source}")]
    KeySet {
        /// The JWKS URL.
        url: String,
        /// What is wrong with it.
        #[source]
        source: super::KeySetError,
    },
    /// A redirect pointed where keys are never fetched from; it was not
    /// followed.
    #[error("GET {url}: redirect to {target} refused: {reason}")]
    RedirectRefused {
        /// The URL fetched.
        url: String,
        /// Where the redirect pointed (origin only).
        target: String,
        /// Which rule it breaks.
        reason: UrlRefusal,
    },
    /// More redirects than scopegate follows.
    #[error("GET {url}: more than {limit} redirects")]
    TooManyRedirects {
        /// The URL fetched.
        url: String,
        /// Redirects followed at most.
        limit: usize,
    },
    /// The discovery document's `jwks_uri` points where keys are never
    /// fetched from; it was not fetched.
    #[error("{url}: jwks_uri {target} refused: {reason}")]
    JwksUriRefused {
        /// The discovery URL.
        url: String,
        /// The discovered `jwks_uri` (origin only).
        target: String,
        /// Which rule it breaks.
        reason: UrlRefusal,
    },
    /// The host resolved only to addresses keys are never fetched from;
    /// nothing was connected to.
    #[error("GET {url}: {source}")]
    BlockedAddress {
        /// The URL fetched.
        url: String,
        /// The host and the addresses it resolved to.
        #[source]
        source: BlockedAddresses,
    },
}

impl FetchError {
    /// A short, stable label for metrics (`result` of
    /// `scopegate_jwks_fetches_total`).
    pub fn label(&self) -> &'static str {
        match self {
            FetchError::Transport { .. } => "transport_error",
            FetchError::Status { .. } => "http_error",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::Discovery { .. } => "invalid_discovery",
            FetchError::KeySet { .. } => "invalid_jwks",
            FetchError::RedirectRefused { .. } => "redirect_refused",
            FetchError::TooManyRedirects { .. } => "too_many_redirects",
            FetchError::JwksUriRefused { .. } => "jwks_uri_refused",
            FetchError::BlockedAddress { .. } => "blocked_address",
        }
    }
}

/// A fetched body and its `Cache-Control: max-age`, if any.
pub(crate) struct Fetched {
    pub body: Vec<u8>,
    pub max_age: Option<Duration>,
}

/// GETs `url`, reading at most `limit` bytes of body.
pub(crate) async fn get_bounded(
    client: &reqwest::Client,
    url: &reqwest::Url,
    limit: usize,
) -> Result<Fetched, FetchError> {
    let transport = |e: reqwest::Error| request_error(url, e);
    let response = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(transport)?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(FetchError::Status {
            url: url.to_string(),
            status: response.status().as_u16(),
        });
    }
    let too_large = || FetchError::TooLarge {
        url: url.to_string(),
        limit,
    };
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(too_large());
    }
    let max_age = response
        .headers()
        .get(CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_max_age);
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(transport)?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Fetched { body, max_age })
}

/// A failed request as a [`FetchError`]: a refusal by the redirect policy or
/// the DNS guard (found in reqwest's error chain) becomes its own variant,
/// anything else is a transport error.
fn request_error(url: &reqwest::Url, error: reqwest::Error) -> FetchError {
    let url = url.to_string();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(current) = cause {
        if let Some(refused) = current.downcast_ref::<RedirectRefused>() {
            return match refused {
                RedirectRefused::Rule { target, reason } => FetchError::RedirectRefused {
                    url,
                    target: target.clone(),
                    reason: reason.clone(),
                },
                RedirectRefused::TooMany => FetchError::TooManyRedirects {
                    url,
                    limit: MAX_REDIRECTS,
                },
            };
        }
        if let Some(blocked) = current.downcast_ref::<BlockedAddresses>() {
            return FetchError::BlockedAddress {
                url,
                source: blocked.clone(),
            };
        }
        cause = current.source();
    }
    FetchError::Transport {
        url,
        reason: error_chain(&error.without_url()),
    }
}

/// An error and its causes, `outer: inner: innermost` (reqwest's own
/// message alone is often just "error sending request").
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// `max-age=N` from a Cache-Control value (`no-cache`/`no-store` count as 0).
pub(crate) fn parse_max_age(cache_control: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in cache_control.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(seconds) = lower.strip_prefix("max-age=") {
            max_age = seconds
                .trim_matches('"')
                .parse()
                .ok()
                .map(Duration::from_secs);
        }
    }
    max_age
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use reqwest::dns::{Addrs, Name, Resolve, Resolving};

    use super::*;
    use crate::jwks::guard::GuardedResolver;
    use crate::jwks::{JwksSettings, build_client};

    /// A DNS server that answers every name with `answers`, and counts
    /// the questions.
    struct FixedAnswers {
        answers: Vec<SocketAddr>,
        asked: std::sync::Mutex<Vec<String>>,
    }

    impl Resolve for FixedAnswers {
        fn resolve(&self, name: Name) -> Resolving {
            self.asked.lock().unwrap().push(name.as_str().to_string());
            let answers = self.answers.clone();
            Box::pin(async move { Ok(Box::new(answers.into_iter()) as Addrs) })
        }
    }

    #[tokio::test]
    async fn a_name_that_resolves_only_to_metadata_addresses_is_never_connected_to() {
        let dns = Arc::new(FixedAnswers {
            answers: [
                "169.254.169.254:0",
                "[::ffff:169.254.169.254]:0",
                "[fd00:ec2::254]:0",
            ]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect(),
            asked: Default::default(),
        });
        let client =
            build_client(&JwksSettings::default(), GuardedResolver::over(dns.clone())).unwrap();
        let url = "https://metadata.scopegate-test.invalid/jwks.json"
            .parse()
            .unwrap();
        let error = get_bounded(&client, &url, 1024).await.err().unwrap();
        assert_eq!(error.label(), "blocked_address");
        assert_eq!(
            error.to_string(),
            "GET https://metadata.scopegate-test.invalid/jwks.json: \
             metadata.scopegate-test.invalid resolves only to addresses keys are never fetched \
             from (169.254.169.254, ::ffff:169.254.169.254, fd00:ec2::254): link-local and cloud \
             metadata addresses are refused, and localhost must be loopback"
        );
        assert_eq!(
            *dns.asked.lock().unwrap(),
            ["metadata.scopegate-test.invalid"]
        );
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            parse_max_age("public, max-age=600, stale-while-revalidate=30"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            parse_max_age("Max-Age=\"42\""),
            Some(Duration::from_secs(42))
        );
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("public"), None);
        assert_eq!(parse_max_age("max-age=soon"), None);
    }
}
