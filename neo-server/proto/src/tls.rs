//! TLS as NEO uses it: mutual authentication with one CA bundle, this
//! node's certificate and its key (NEO's `--ca`, `--cert`, `--key`).
//!
//! Facts from NEO (`neo/lib/app.py`, `connector.py`): both ends must
//! present a certificate signed by the CA (`CERT_REQUIRED`), host names
//! are not checked, and the TLS handshake comes first: NEO's own 6-byte
//! handshake and every packet travel inside TLS. A TLS record starts with
//! 0x16 and NEO's handshake with 0x92, which is how each side tells a
//! peer that has TLS disabled (or enabled) from a broken one.

use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why TLS could not be set up from the given files.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A PEM file could not be read or holds nothing usable.
    Pem {
        /// Which input (`ca`, `cert` or `key`).
        what: &'static str,
        /// Why.
        message: String,
    },
    /// rustls refused the material.
    Rustls(rustls::Error),
    /// The CA bundle gives no usable client verifier.
    Verifier(String),
}

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsConfigError::Pem { what, message } => write!(f, "TLS {what}: {message}"),
            TlsConfigError::Rustls(e) => write!(f, "TLS configuration: {e}"),
            TlsConfigError::Verifier(e) => write!(f, "TLS CA: {e}"),
        }
    }
}

impl std::error::Error for TlsConfigError {}

impl From<rustls::Error> for TlsConfigError {
    fn from(e: rustls::Error) -> Self {
        TlsConfigError::Rustls(e)
    }
}

/// Client and server TLS settings of one node, built once and shared by
/// all its connections.
#[derive(Clone)]
pub struct TlsConfig {
    pub(crate) client: Arc<ClientConfig>,
    pub(crate) server: Arc<ServerConfig>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsConfig { .. }")
    }
}

fn pem_err(what: &'static str) -> impl Fn(rustls::pki_types::pem::Error) -> TlsConfigError {
    move |e| TlsConfigError::Pem {
        what,
        message: e.to_string(),
    }
}

impl TlsConfig {
    /// From the three PEM files of NEO's `--ca`, `--cert`, `--key`.
    pub fn from_pem_files(ca: &Path, cert: &Path, key: &Path) -> Result<TlsConfig, TlsConfigError> {
        let read = |what: &'static str, p: &Path| {
            std::fs::read(p).map_err(|e| TlsConfigError::Pem {
                what,
                message: format!("{}: {e}", p.display()),
            })
        };
        Self::from_pem(&read("ca", ca)?, &read("cert", cert)?, &read("key", key)?)
    }

    /// From PEM text: the CA bundle, this node's certificate chain, its key.
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<TlsConfig, TlsConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca) {
            roots.add(c.map_err(pem_err("ca"))?)?;
        }
        if roots.is_empty() {
            return Err(TlsConfigError::Pem {
                what: "ca",
                message: "no certificate".into(),
            });
        }
        let roots = Arc::new(roots);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .map_err(pem_err("cert"))?;
        if chain.is_empty() {
            return Err(TlsConfigError::Pem {
                what: "cert",
                message: "no certificate".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(pem_err("key"))?;

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsConfigError::Verifier(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;

        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsConfigError::Verifier(e.to_string()))?;
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CaOnlyVerifier {
                inner: server_verifier,
                provider,
            }))
            .with_client_auth_cert(chain, key)?;
        Ok(TlsConfig {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }
}

/// Checks the peer's chain against the CA like webpki, but not the host
/// name: NEO nodes are addressed by IP and NEO does not check names.
#[derive(Debug)]
struct CaOnlyVerifier {
    inner: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for CaOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the name last, after the chain: a name error means
        // the chain is good.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A stream that remembers the first bytes it read, so that a failed TLS
/// handshake can tell "the peer speaks plain NEO" from other failures.
pub(crate) struct Sniff<S> {
    pub(crate) inner: S,
    pub(crate) first: Vec<u8>,
}

impl<S> Sniff<S> {
    pub(crate) fn new(inner: S) -> Self {
        Sniff {
            inner,
            first: Vec::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniff<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.first.len() < 8 {
            let got = &buf.filled()[before..];
            let take = got.len().min(8 - self.first.len());
            let new = got[..take].to_vec();
            self.first.extend_from_slice(&new);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniff<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
