//! Where signing keys may be fetched from (DESIGN §4 "Keys over the
//! network"), enforced in one place for every URL scopegate fetches:
//!
//! - the policy's own URLs, at compile time ([`check_fetch_url`], called by
//!   the policy compiler);
//! - the `jwks_uri` of a discovery document, before it is fetched;
//! - every redirect hop ([`redirect_policy`]);
//! - every DNS answer ([`GuardedResolver`]): IP literals never reach the
//!   resolver, which is why the URL rule checks them.
//!
//! The rule: `https`, or `http` to a loopback host; never a link-local or
//! cloud metadata address (169.254.0.0/16, fe80::/10, fd00:ec2::254, in any
//! IPv6 form that embeds an IPv4 address too).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Redirect hops followed at most per fetch.
pub const MAX_REDIRECTS: usize = 3;

/// The AWS IMDS address over IPv6.
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// Why scopegate will not fetch from a URL. Reads after the URL: `"http://…"
/// must use https …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefusal {
    /// `http` to a host that is not loopback.
    #[error(
        "must use https: keys are fetched over https only (http is allowed only for loopback hosts)"
    )]
    NotHttps,
    /// Neither `https` nor `http`.
    #[error("must use https: keys are fetched over https only (no other scheme is supported)")]
    UnsupportedScheme,
    /// An IP literal in a link-local or cloud metadata range.
    #[error(
        "must not name a link-local or cloud metadata address ({0}): keys are never fetched from there"
    )]
    BlockedAddress(IpAddr),
}

/// Checks that keys may be fetched from `url`: `https`, or `http` to a
/// loopback host, and never a link-local or metadata IP literal.
pub fn check_fetch_url(url: &Url) -> Result<(), UrlRefusal> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        Some(url::Host::Domain(_)) | None => None,
    };
    if let Some(ip) = ip.filter(|ip| is_blocked_ip(*ip)) {
        return Err(UrlRefusal::BlockedAddress(ip));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => Err(UrlRefusal::NotHttps),
        _ => Err(UrlRefusal::UnsupportedScheme),
    }
}

/// Whether `url`'s host is loopback: `localhost` or a loopback IP literal
/// (also in IPv4-mapped IPv6 form).
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        None => false,
    }
}

/// Whether keys must never be fetched from `ip`: link-local
/// (169.254.0.0/16, which holds the cloud metadata services, and
/// fe80::/10) or AWS's IPv6 metadata address, also in IPv4-mapped or
/// IPv4-compatible IPv6 form.
pub fn is_blocked_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_unicast_link_local()
                || v6 == AWS_METADATA_V6
                || v6.to_ipv4().is_some_and(|v4| v4.is_link_local())
        }
    }
}

/// `url` as it may appear in an error message when it came from a response
/// (a redirect's `Location`, a discovered `jwks_uri`): scheme, host and port
/// only, at most 100 characters, so that no path, query or credentials of
/// the response are echoed into status or logs.
pub(crate) fn redacted(url: &Url) -> String {
    const MAX: usize = 100;
    let origin = url.origin();
    let mut shown = if origin.is_tuple() {
        format!("{}/…", origin.ascii_serialization())
    } else {
        "a URL with another scheme".to_string()
    };
    if shown.len() > MAX {
        // ascii_serialization is ASCII: any byte index is a char boundary.
        shown.truncate(MAX);
        shown.push('…');
    }
    shown
}

/// Why a redirect was not followed; carried through reqwest's error chain
/// and turned into a [`super::FetchError`] by the fetcher.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RedirectRefused {
    /// The next hop breaks the URL rule.
    #[error("redirect to {target} refused: {reason}")]
    Rule {
        /// The next hop, [`redacted`].
        target: String,
        /// What is wrong with it.
        reason: UrlRefusal,
    },
    /// More than [`MAX_REDIRECTS`] hops.
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooMany,
}

/// Follows at most [`MAX_REDIRECTS`] redirects, each only to a URL that
/// passes [`check_fetch_url`].
pub(crate) fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if let Err(reason) = check_fetch_url(attempt.url()) {
            let target = redacted(attempt.url());
            return attempt.error(RedirectRefused::Rule { target, reason });
        }
        // `previous` starts with the URL first requested, which is no hop.
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(RedirectRefused::TooMany);
        }
        attempt.follow()
    })
}

/// Every address a host name resolved to is one keys are never fetched
/// from: link-local or cloud metadata, or (for `localhost`) not loopback.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{host} resolves only to addresses keys are never fetched from ({}): link-local and cloud metadata addresses are refused, and localhost must be loopback",
    display_addresses(.addresses)
)]
pub struct BlockedAddresses {
    /// The name that was resolved.
    pub host: String,
    /// The addresses it resolved to (at most a few are kept).
    pub addresses: Vec<IpAddr>,
}

fn display_addresses(addresses: &[IpAddr]) -> String {
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The addresses of `host` that keys may be fetched from: blocked addresses
/// are dropped, and `localhost` (for which the URL rule allows `http`) keeps
/// only loopback addresses. An error when none are left.
pub(crate) fn allowed_addresses(
    host: &str,
    resolved: impl IntoIterator<Item = SocketAddr>,
) -> Result<Vec<SocketAddr>, BlockedAddresses> {
    const KEPT_FOR_MESSAGE: usize = 4;
    let localhost = host.eq_ignore_ascii_case("localhost");
    let mut allowed = Vec::new();
    let mut dropped = Vec::new();
    for addr in resolved {
        let ip = addr.ip();
        let loopback = ip.is_loopback()
            || matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()));
        if is_blocked_ip(ip) || (localhost && !loopback) {
            if dropped.len() < KEPT_FOR_MESSAGE {
                dropped.push(ip);
            }
        } else {
            allowed.push(addr);
        }
    }
    if allowed.is_empty() && !dropped.is_empty() {
        return Err(BlockedAddresses {
            host: host.to_string(),
            addresses: dropped,
        });
    }
    Ok(allowed)
}

/// A DNS resolver that passes on only the addresses [`allowed_addresses`]
/// keeps, so that a name pointing at the metadata service (or rebinding to
/// it) is never connected to.
pub(crate) struct GuardedResolver {
    lookup: Arc<dyn Resolve>,
}

impl GuardedResolver {
    /// Filters the system resolver (`getaddrinfo`).
    pub(crate) fn system() -> Self {
        GuardedResolver::over(Arc::new(SystemResolver))
    }

    /// Filters the answers of `lookup`.
    pub(crate) fn over(lookup: Arc<dyn Resolve>) -> Self {
        GuardedResolver { lookup }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let lookup = self.lookup.resolve(name);
        Box::pin(async move {
            let allowed = allowed_addresses(&host, lookup.await?)?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The operating system's resolver, on Tokio's blocking pool.
struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(Box::new(addrs.collect::<Vec<_>>().into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn https_anywhere_but_link_local_and_http_only_to_loopback() {
        for ok in [
            "https://tenant.example.com/.well-known/jwks.json",
            "https://10.0.0.1/jwks",
            "http://localhost:8080/jwks",
            "http://127.0.0.1/jwks",
            "http://127.8.9.10/jwks",
            "http://[::1]:9/jwks",
            "http://[::ffff:127.0.0.1]/jwks",
        ] {
            assert_eq!(check_fetch_url(&url(ok)), Ok(()), "{ok}");
        }
        for not_https in [
            "http://tenant.example.com/jwks",
            "http://localhost.example.com/jwks",
            "http://10.0.0.1/jwks",
            "http://[fd00::1]/jwks",
        ] {
            assert_eq!(
                check_fetch_url(&url(not_https)),
                Err(UrlRefusal::NotHttps),
                "{not_https}"
            );
        }
        for other in ["ftp://tenant.example.com/jwks", "file:///etc/passwd"] {
            assert_eq!(
                check_fetch_url(&url(other)),
                Err(UrlRefusal::UnsupportedScheme),
                "{other}"
            );
        }
    }

    #[test]
    fn link_local_and_metadata_literals_are_refused_in_every_form() {
        for (blocked, ip) in [
            (
                "https://169.254.169.254/latest/meta-data/",
                "169.254.169.254",
            ),
            ("http://169.254.169.254/", "169.254.169.254"),
            ("https://169.254.0.1:8443/", "169.254.0.1"),
            // WHATWG host parsing normalizes other IPv4 spellings.
            ("https://0xa9fea9fe/", "169.254.169.254"),
            ("https://2852039166/", "169.254.169.254"),
            ("https://169.254.43518/", "169.254.169.254"),
            ("https://[fe80::1]/", "fe80::1"),
            ("https://[febf::1]/", "febf::1"),
            ("https://[fd00:ec2::254]/", "fd00:ec2::254"),
            (
                "https://[::ffff:169.254.169.254]/",
                "::ffff:169.254.169.254",
            ),
            ("https://[::ffff:a9fe:a9fe]/", "::ffff:169.254.169.254"),
            ("https://[::169.254.169.254]/", "::169.254.169.254"),
        ] {
            assert_eq!(
                check_fetch_url(&url(blocked)),
                Err(UrlRefusal::BlockedAddress(ip.parse().unwrap())),
                "{blocked}"
            );
        }
        for fine in [
            "https://[fec0::1]/",
            "https://169.255.0.1/",
            "https://[fd00:ec2::253]/",
        ] {
            assert_eq!(check_fetch_url(&url(fine)), Ok(()), "{fine}");
        }
    }

    #[test]
    fn redacted_urls_show_the_origin_only() {
        assert_eq!(
            redacted(&url(
                "http://user:pw@example.com:8080/secret/path?q=marker#f"
            )),
            "http://example.com:8080/…"
        );
        assert_eq!(
            redacted(&url("file:///etc/passwd")),
            "a URL with another scheme"
        );
        let long = format!("https://{}.example.com/", "a".repeat(300));
        let shown = redacted(&url(&long));
        assert!(shown.chars().count() <= 101, "{shown}");
    }

    fn socket(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 0)
    }

    #[test]
    fn dns_answers_in_blocked_ranges_are_dropped() {
        let answers = [
            socket("169.254.169.254"),
            socket("::ffff:169.254.169.254"),
            socket("fe80::1"),
            socket("fd00:ec2::254"),
            socket("203.0.113.7"),
        ];
        assert_eq!(
            allowed_addresses("issuer.example.com", answers),
            Ok(vec![socket("203.0.113.7")])
        );
        let error =
            allowed_addresses("metadata.example.com", answers[..4].iter().copied()).unwrap_err();
        assert_eq!(error.addresses.len(), 4);
        assert_eq!(
            error.to_string(),
            "metadata.example.com resolves only to addresses keys are never fetched from \
             (169.254.169.254, ::ffff:169.254.169.254, fe80::1, fd00:ec2::254): \
             link-local and cloud metadata addresses are refused, and localhost must be loopback"
        );
    }

    #[test]
    fn localhost_keeps_only_loopback_answers() {
        let answers = [socket("10.1.2.3"), socket("127.0.0.1"), socket("::1")];
        assert_eq!(
            allowed_addresses("localhost", answers),
            Ok(vec![socket("127.0.0.1"), socket("::1")])
        );
        assert!(allowed_addresses("localhost", [socket("10.1.2.3")]).is_err());
    }

    #[tokio::test]
    async fn the_system_resolver_is_filtered() {
        // Resolved from /etc/hosts: no DNS traffic.
        let resolver = GuardedResolver::system();
        let addrs: Vec<_> = resolver
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}
