//! The listener's TLS configuration, from the configured PEM files.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

use crate::config::{ClientCertMode, ListenConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{field}: cannot read {path}: {detail}")]
    Read {
        field: &'static str,
        path: String,
        detail: String,
    },
    #[error("{field}: {path} holds no {what}")]
    Empty {
        field: &'static str,
        path: String,
        what: &'static str,
    },
    #[error("listen: the certificate and key do not form a usable TLS identity: {0}")]
    Identity(String),
    #[error("listen.client_ca: {0}")]
    ClientCa(String),
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_err = |detail: String| TlsError::Read {
        field,
        path: path.display().to_string(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            field,
            path: path.display().to_string(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

/// Builds the server configuration: certificate chain, key, and optional
/// client-certificate verification.
pub fn server_config(listen: &ListenConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates("listen.tls_cert", &listen.tls_cert)?;
    let key = PrivateKeyDer::from_pem_file(&listen.tls_key).map_err(|e| TlsError::Read {
        field: "listen.tls_key",
        path: listen.tls_key.display().to_string(),
        detail: e.to_string(),
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Identity(e.to_string()))?;
    let builder = match &listen.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates("listen.client_ca", ca_path)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = match listen.client_cert_mode.unwrap_or(ClientCertMode::Required) {
                ClientCertMode::Required => verifier,
                ClientCertMode::Optional => verifier.allow_unauthenticated(),
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsError::ClientCa(e.to_string()))?,
            )
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Identity(e.to_string()))?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn listen(cert: PathBuf, key: PathBuf) -> ListenConfig {
        ListenConfig {
            address: "127.0.0.1:0".parse().unwrap(),
            tls_cert: cert,
            tls_key: key,
            client_ca: None,
            client_cert_mode: None,
        }
    }

    #[test]
    fn missing_and_empty_files_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            server_config(&listen(dir.path().join("nope.pem"), dir.path().join("k"))).unwrap_err();
        assert!(
            err.to_string().starts_with("listen.tls_cert: cannot read"),
            "{err}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = server_config(&listen(empty.clone(), empty)).unwrap_err();
        assert!(
            err.to_string().ends_with("holds no PEM certificate"),
            "{err}"
        );
    }

    #[test]
    fn builds_from_a_generated_identity() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("k.pem"), key.serialize_pem()).unwrap();
        assert!(server_config(&listen(dir.path().join("c.pem"), dir.path().join("k.pem"))).is_ok());
        // A key that does not belong to the certificate.
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.path().join("k2.pem"), other.serialize_pem()).unwrap();
        let err = server_config(&listen(dir.path().join("c.pem"), dir.path().join("k2.pem")))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("listen: the certificate and key do not form a usable TLS identity"),
            "{err}"
        );
    }
}
