//! How every PostgreSQL connection of the product is made: the store's pool
//! and listener, and the event router's and the player tables' stores that
//! share its URL. One place reads the URL's TLS settings and builds the
//! TLS connector (rustls), so all of them agree.
//!
//! The URL takes libpq's TLS parameters, as operators write them for
//! `psql`:
//! - `sslmode`: `disable`; `prefer` (the default: TLS when the server
//!   offers it, unverified, else plain); `require` (TLS or fail; the
//!   server's certificate is not checked, unless `sslrootcert` is given,
//!   which makes it `verify-ca`, as libpq does); `verify-ca` (the chain
//!   must lead to a trusted root); `verify-full` (and name the host).
//! - `sslrootcert`: a PEM file of trusted roots, or `system` for the
//!   bundled Mozilla roots. `verify-ca` and `verify-full` need it (libpq
//!   would read `~/.postgresql/root.crt`; a service should say which roots
//!   it trusts).
//!
//! tokio-postgres parses only `disable`, `prefer` and `require` and no
//! `sslrootcert`, so those are taken out of the URL here and enforced by
//! the rustls configuration.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error as TlsError, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Why a connection URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PgUrlError {
    /// The URL (or key/value string) does not parse.
    #[error("invalid PostgreSQL URL: {0}")]
    Url(String),
    /// An `sslmode` libpq does not know.
    #[error("invalid sslmode '{0}': use disable, prefer, require, verify-ca or verify-full")]
    SslMode(String),
    /// `verify-ca`/`verify-full` without roots to verify against.
    #[error("sslmode={0} needs sslrootcert=<PEM file of trusted roots> (or sslrootcert=system)")]
    NoRoots(String),
    /// The roots file cannot be read or holds no certificate.
    #[error("sslrootcert {path}: {reason}")]
    Roots {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// What the server's certificate must prove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verify {
    /// Nothing (libpq's `prefer` and `require`): encrypted, not
    /// authenticated.
    Nothing,
    /// A chain to a trusted root.
    Chain,
    /// A chain, and the host's name.
    ChainAndName,
}

/// A parsed connection target: the tokio-postgres configuration and the
/// TLS connector that enforces the URL's `sslmode`.
#[derive(Clone)]
pub struct PgTarget {
    /// For tokio-postgres (its `ssl_mode` is `disable`, `prefer` or
    /// `require`).
    pub config: tokio_postgres::Config,
    /// Pass to `connect` and to pools.
    pub tls: MakeRustlsConnect,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config holds the password: never printed.
        f.debug_struct("PgTarget")
            .field("ssl_mode", &self.config.get_ssl_mode())
            .finish_non_exhaustive()
    }
}

impl PgTarget {
    /// Parses a URL (`postgres://...?sslmode=verify-full&sslrootcert=ca.pem`)
    /// or a key/value string (`host=... sslmode=require`).
    pub fn parse(url: &str) -> Result<Self, PgUrlError> {
        let (rest, mode, root) = take_tls_params(url)?;
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e: tokio_postgres::Error| PgUrlError::Url(e.to_string()))?;
        let mode = mode.unwrap_or_else(|| "prefer".into());
        let (ssl_mode, verify) = match (mode.as_str(), root.is_some()) {
            ("disable", _) => (SslMode::Disable, Verify::Nothing),
            ("allow" | "prefer", _) => (SslMode::Prefer, Verify::Nothing),
            ("require", false) => (SslMode::Require, Verify::Nothing),
            ("require" | "verify-ca", true) => (SslMode::Require, Verify::Chain),
            ("verify-full", true) => (SslMode::Require, Verify::ChainAndName),
            ("verify-ca" | "verify-full", false) => return Err(PgUrlError::NoRoots(mode)),
            (other, _) => return Err(PgUrlError::SslMode(other.to_string())),
        };
        config.ssl_mode(ssl_mode);
        let tls = MakeRustlsConnect::new(client_config(verify, root.as_deref())?);
        Ok(Self { config, tls })
    }

    /// Opens one connection (the caller drives the returned connection).
    pub async fn connect(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<
                tokio_postgres::Socket,
                <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
                    tokio_postgres::Socket,
                >>::Stream,
            >,
        ),
        tokio_postgres::Error,
    > {
        self.config.connect(self.tls.clone()).await
    }
}

/// Removes `sslmode` and `sslrootcert` from a URL's query or a key/value
/// string; gives back the rest and their values.
fn take_tls_params(url: &str) -> Result<(String, Option<String>, Option<String>), PgUrlError> {
    let mut mode = None;
    let mut root = None;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let mut parsed = url::Url::parse(url).map_err(|e| PgUrlError::Url(e.to_string()))?;
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter_map(|(k, v)| match k.as_ref() {
                "sslmode" => {
                    mode = Some(v.into_owned());
                    None
                }
                "sslrootcert" => {
                    root = Some(v.into_owned());
                    None
                }
                _ => Some((k.into_owned(), v.into_owned())),
            })
            .collect();
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
        return Ok((parsed.to_string(), mode, root));
    }
    // key=value pairs separated by spaces (values without spaces here).
    let kept: Vec<&str> = url
        .split_whitespace()
        .filter(|pair| match pair.split_once('=') {
            Some(("sslmode", v)) => {
                mode = Some(v.trim_matches('\'').to_string());
                false
            }
            Some(("sslrootcert", v)) => {
                root = Some(v.trim_matches('\'').to_string());
                false
            }
            _ => true,
        })
        .collect();
    Ok((kept.join(" "), mode, root))
}

fn client_config(verify: Verify, root: Option<&str>) -> Result<rustls::ClientConfig, PgUrlError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3");
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(Unverified(provider)),
        Verify::Chain | Verify::ChainAndName => {
            let roots = Arc::new(roots(root.expect("checked by the caller"))?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| PgUrlError::Roots {
                    path: root.unwrap_or_default().into(),
                    reason: e.to_string(),
                })?;
            if verify == Verify::Chain {
                Arc::new(AnyName(webpki))
            } else {
                webpki
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The trusted roots: a PEM file, or the bundled Mozilla roots.
fn roots(root: &str) -> Result<rustls::RootCertStore, PgUrlError> {
    let mut store = rustls::RootCertStore::empty();
    if root == "system" {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(store);
    }
    let fail = |reason: String| PgUrlError::Roots {
        path: root.into(),
        reason,
    };
    let pem = std::fs::read(root).map_err(|e| fail(e.to_string()))?;
    use rustls::pki_types::pem::PemObject;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| fail(format!("not PEM: {e}")))?;
        store.add(cert).map_err(|e| fail(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(fail("holds no certificate".into()));
    }
    Ok(store)
}

/// `prefer`/`require` without roots: encryption only, as libpq does.
/// Signatures are still checked, so the handshake is sound; who signed
/// the certificate is not.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must be trusted; the name is not checked.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(TlsError::InvalidCertificate(CertificateError::NotValidForName))
            | Err(TlsError::InvalidCertificate(CertificateError::NotValidForNameContext {
                ..
            })) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_the_url_and_set_the_mode() {
        let (rest, mode, root) = take_tls_params(
            "postgres://u:p@db.example:5432/app?sslmode=verify-full&connect_timeout=10&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p@db.example:5432/app?connect_timeout=10"
        );
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (rest, mode, root) =
            take_tls_params("host=db user=u sslmode=require dbname=app").unwrap();
        assert_eq!(rest, "host=db user=u dbname=app");
        assert_eq!(mode.as_deref(), Some("require"));
        assert_eq!(root, None);
        let (rest, _, _) = take_tls_params("postgres://u@h/db?sslmode=disable").unwrap();
        assert_eq!(rest, "postgres://u@h/db");
    }

    #[test]
    fn modes_map_to_what_tokio_postgres_and_rustls_enforce() {
        let mode = |url: &str| PgTarget::parse(url).map(|t| t.config.get_ssl_mode());
        assert_eq!(mode("postgres://h/db").unwrap(), SslMode::Prefer);
        assert_eq!(
            mode("postgres://h/db?sslmode=disable").unwrap(),
            SslMode::Disable
        );
        assert_eq!(
            mode("postgres://h/db?sslmode=require").unwrap(),
            SslMode::Require
        );
        assert_eq!(
            mode("postgres://h/db?sslmode=verify-full&sslrootcert=system").unwrap(),
            SslMode::Require
        );
        assert!(matches!(
            mode("postgres://h/db?sslmode=verify-full"),
            Err(PgUrlError::NoRoots(_))
        ));
        assert!(matches!(
            mode("postgres://h/db?sslmode=sometimes"),
            Err(PgUrlError::SslMode(_))
        ));
        let missing = mode("postgres://h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem");
        assert!(
            matches!(&missing, Err(PgUrlError::Roots { reason, .. }) if reason.contains("No such file")),
            "{missing:?}"
        );
    }
}
