//! Bounded HTTP fetches of discovery documents and JWKS.

use std::time::Duration;

use futures::StreamExt as _;
use reqwest::header::CACHE_CONTROL;

/// Why a fetch failed. The message names the URL and what went wrong.
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
    let transport = |e: reqwest::Error| FetchError::Transport {
        url: url.to_string(),
        reason: error_chain(&e.without_url()),
    };
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

/// An error and its causes, `outer: inner: innermost` (reqwest's own
/// message alone is often just "error sending request").
fn error_chain(error: &dyn std::error::Error) -> String {
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
    use super::*;

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
