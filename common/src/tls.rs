//! TLS for tokentally's HTTP connections, one way for all of them: rustls
//! with the ring provider, for the ClickHouse client, webhook delivery and
//! the gateway's listener. (Kafka's TLS is librdkafka's own OpenSSL,
//! configured in `[kafka]`.)
//!
//! A client trusts the system's roots (`rustls-native-certs`: the
//! distribution's store, or `SSL_CERT_FILE` / `SSL_CERT_DIR` when set)
//! plus, optionally, the certificates of one CA file named for that
//! connection: a private CA, or a self-signed server. Certificates and
//! host names are always verified; there is no switch to turn that off.
//! Plain `http://` URLs keep working through the same connector.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::files::read_bounded;

/// A PEM file of certificates or a key is a few kilobytes (a bundle of
/// every public root is ~250 KiB); anything larger is the wrong file.
const PEM_FILE_BYTES: u64 = 4 << 20;

/// TCP keepalive of client connections, as the `clickhouse` crate's own
/// client sets it: a server behind a NAT or load balancer otherwise drops
/// idle pooled connections silently.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", .0.display())]
    NoKey(PathBuf),
    #[error("{}: {reason}", .path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    read_bounded(path, PEM_FILE_BYTES).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file; at least one.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

/// The first private key in a PEM file. Errors name the file, never its
/// content.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey(path.to_path_buf()),
        other => TlsError::Invalid {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    })
}

/// Client settings: the system's roots plus the certificates in
/// `ca_file`, when one is named.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!("skipping part of the system certificate store: {e}");
    }
    let (_, unusable) = roots.add_parsable_certificates(native.certs);
    if unusable > 0 {
        tracing::debug!("{unusable} certificates of the system store are not usable as roots");
    }
    if let Some(path) = ca_file {
        for cert in certificates(path)? {
            roots.add(cert).map_err(|e| TlsError::Invalid {
                path: path.to_path_buf(),
                reason: format!("not a CA certificate: {e}"),
            })?;
        }
    }
    if roots.is_empty() {
        // A minimal image without ca-certificates: plain http:// still
        // works, https:// fails to verify, naming the unknown issuer.
        tracing::debug!("no trusted root certificates: install ca-certificates or name a CA file");
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// An HTTP/1.1 connector for `https://` (verified as [`client_config`]
/// says) and `http://` URLs.
pub fn https_connector(ca_file: Option<&Path>) -> Result<HttpsConnector<HttpConnector>, TlsError> {
    let config = client_config(ca_file)?;
    let mut http = HttpConnector::new();
    http.set_keepalive(Some(TCP_KEEPALIVE));
    http.enforce_http(false);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(Arc::unwrap_or_clone(config))
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

/// An HTTP/1.1 client pool over [`https_connector`]. Idle connections
/// are closed after `idle` (shorter than the server's keep-alive timeout,
/// so that a request never goes out on a connection the server is
/// closing).
pub fn http_client<B>(
    ca_file: Option<&Path>,
    idle: Duration,
) -> Result<Client<HttpsConnector<HttpConnector>, B>, TlsError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    let connector = https_connector(ca_file)?;
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle)
        .build(connector))
}

/// Whether `error` (or a cause of it) is a TLS failure: a certificate that
/// does not verify, a name that does not match, a handshake the peer
/// refused. Retrying does not fix these; the settings must change.
pub fn is_tls_failure(error: &(dyn Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        next = e.source();
    }
    false
}

/// Server settings from a certificate chain (leaf first) and its key, both
/// PEM files. No client certificates are asked for.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates(cert_file)?;
    let key = private_key(key_file)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Invalid {
            path: key_file.to_path_buf(),
            reason: format!("does not match {}: {e}", cert_file.display()),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_pem_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(Some(&empty)).unwrap_err();
        assert!(
            matches!(&err, TlsError::NoCertificate(p) if p == &empty),
            "{err}"
        );
        let err = server_config(&dir.path().join("missing.pem"), &empty).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let err = private_key(&empty).unwrap_err();
        assert!(matches!(err, TlsError::NoKey(_)), "{err}");
    }
}
