//! Certificate-bound access tokens (RFC 8705 §3): the token's
//! `cnf.x5t#S256` must be the SHA-256 thumbprint of the client certificate
//! of the TLS connection, which Envoy forwards in the CheckRequest's
//! `attributes.source.certificate` (URL-encoded PEM, when the ext_authz
//! filter has `include_peer_certificate: true`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::thumbprint::sha256_base64url;

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// Why a certificate-bound token is refused: 401 `invalid_token`
/// (RFC 8705 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MtlsError {
    /// No client certificate was forwarded: the connection was not mutual
    /// TLS, or Envoy's ext_authz filter lacks `include_peer_certificate`.
    #[error(
        "the token is bound to a client certificate but none was presented (Envoy must set include_peer_certificate)"
    )]
    NoCertificate,
    /// The forwarded value is not a URL-encoded PEM certificate.
    #[error("the forwarded client certificate is malformed: {0}")]
    Malformed(&'static str),
    /// The certificate is not the one the token is bound to.
    #[error("the token is bound to a different client certificate")]
    Mismatch,
}

impl MtlsError {
    /// A short, stable label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            MtlsError::NoCertificate => "no_client_certificate",
            MtlsError::Malformed(_) => "malformed_client_certificate",
            MtlsError::Mismatch => "certificate_mismatch",
        }
    }
}

/// The `x5t#S256` of a forwarded certificate: base64url(SHA-256(DER)) of its
/// first (leaf) `CERTIFICATE` block. An empty value means no certificate.
pub fn certificate_thumbprint(forwarded_pem: &str) -> Result<String, MtlsError> {
    if forwarded_pem.is_empty() {
        return Err(MtlsError::NoCertificate);
    }
    let pem = percent_encoding::percent_decode_str(forwarded_pem)
        .decode_utf8()
        .map_err(|_| MtlsError::Malformed("not URL-encoded UTF-8"))?;
    let body = pem
        .split_once(BEGIN)
        .and_then(|(_, rest)| rest.split_once(END))
        .map(|(body, _)| body)
        .ok_or(MtlsError::Malformed("no PEM CERTIFICATE block"))?;
    let base64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = STANDARD
        .decode(base64)
        .map_err(|_| MtlsError::Malformed("the PEM body is not base64"))?;
    // An X.509 certificate is a DER SEQUENCE.
    if der.first() != Some(&0x30) {
        return Err(MtlsError::Malformed("not a DER certificate"));
    }
    Ok(sha256_base64url(&der))
}

/// Checks that the forwarded certificate is the one `cnf.x5t#S256` names.
pub fn verify_certificate_binding(
    forwarded_pem: &str,
    expected_x5t_s256: &str,
) -> Result<(), MtlsError> {
    let thumbprint = certificate_thumbprint(forwarded_pem)?;
    if thumbprint != expected_x5t_s256 {
        return Err(MtlsError::Mismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Client {
        pem: String,
        der: Vec<u8>,
    }

    fn client_certificate(name: &str) -> Client {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let certificate = params.self_signed(&key).unwrap();
        Client {
            pem: certificate.pem(),
            der: certificate.der().to_vec(),
        }
    }

    /// What Envoy sends: the PEM, percent-encoded (newlines, spaces, `+`,
    /// `/` and `=` included).
    fn url_encoded(pem: &str) -> String {
        percent_encoding::utf8_percent_encode(pem, percent_encoding::NON_ALPHANUMERIC).to_string()
    }

    #[test]
    fn the_forwarded_certificate_matches_its_own_thumbprint() {
        let client = client_certificate("agent.example.com");
        let expected = sha256_base64url(&client.der);
        let forwarded = url_encoded(&client.pem);
        assert_eq!(certificate_thumbprint(&forwarded).unwrap(), expected);
        assert_eq!(verify_certificate_binding(&forwarded, &expected), Ok(()));
        // Unencoded PEM (no escapes to decode) reads the same.
        assert_eq!(certificate_thumbprint(&client.pem).unwrap(), expected);
    }

    #[test]
    fn another_certificate_does_not_match() {
        let bound = client_certificate("agent.example.com");
        let other = client_certificate("agent.example.com");
        let expected = sha256_base64url(&bound.der);
        assert_eq!(
            verify_certificate_binding(&url_encoded(&other.pem), &expected),
            Err(MtlsError::Mismatch)
        );
        // The standard-alphabet or padded form of the hash is not the claim.
        let padded = format!("{expected}=");
        assert_eq!(
            verify_certificate_binding(&url_encoded(&bound.pem), &padded),
            Err(MtlsError::Mismatch)
        );
    }

    #[test]
    fn a_missing_or_malformed_certificate_is_refused() {
        assert_eq!(
            verify_certificate_binding("", "x"),
            Err(MtlsError::NoCertificate)
        );
        let client = client_certificate("agent.example.com");
        let not_base64 = client.pem.replacen('M', "*", 1);
        let cases = [
            "%ff%fe".to_string(),
            url_encoded("hello"),
            url_encoded(&client.pem.replace(END, "")),
            url_encoded(&not_base64),
            url_encoded(&format!("{BEGIN}\naGVsbG8=\n{END}\n")),
        ];
        for forwarded in cases {
            assert!(
                matches!(
                    certificate_thumbprint(&forwarded),
                    Err(MtlsError::Malformed(_))
                ),
                "{forwarded}"
            );
        }
    }
}
