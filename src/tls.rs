//! The listener's TLS configuration, from the configured PEM files.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

use crate::config::{ClientCertMode, ConfigError, ListenConfig};

/// A listener TLS file that does not give a usable server identity. Its
/// Display is `field: message`, the same as the [`ConfigError`] it converts into.
#[derive(Debug)]
pub enum TlsError {
    Read {
        field: &'static str,
        path: String,
        detail: String,
    },
    Empty {
        field: &'static str,
        path: String,
        what: &'static str,
    },
    Identity(String),
    ClientCa(String),
}

impl TlsError {
    /// The config field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            TlsError::Read { field, .. } | TlsError::Empty { field, .. } => field,
            TlsError::Identity(_) => "listen",
            TlsError::ClientCa(_) => "listen.client_ca",
        }
    }

    /// What is wrong, without the field.
    pub fn message(&self) -> String {
        match self {
            TlsError::Read { path, detail, .. } => format!("cannot read {path}: {detail}"),
            TlsError::Empty { path, what, .. } => format!("{path} holds no {what}"),
            TlsError::Identity(detail) => {
                format!("the certificate and key do not form a usable TLS identity: {detail}")
            }
            TlsError::ClientCa(detail) => detail.clone(),
        }
    }
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field(), self.message())
    }
}

impl std::error::Error for TlsError {}

impl From<TlsError> for ConfigError {
    fn from(e: TlsError) -> ConfigError {
        ConfigError::new(e.field(), e.message())
    }
}

/// aws-lc-rs, the one crypto library in the binary: TLS on both sides,
/// session tickets, and JWT signatures (jsonwebtoken's `aws_lc_rs` backend).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Makes aws-lc-rs the process-wide default for code that asks rustls for
/// one: reqwest (built without a provider of its own) does, and panics
/// without it. Installing twice is harmless; the first one stays.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
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
/// client-certificate verification. Reads the files; no network I/O.
pub fn server_config(listen: &ListenConfig) -> Result<Arc<ServerConfig>, ConfigError> {
    Ok(build(listen)?)
}

fn private_key(field: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        // A file of only certificates, say: readable, but no key in it.
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            field,
            path: path.display().to_string(),
            what: "PEM private key",
        },
        e => TlsError::Read {
            field,
            path: path.display().to_string(),
            detail: e.to_string(),
        },
    })
}

fn build(listen: &ListenConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates("listen.tls_cert", &listen.tls_cert)?;
    let key = private_key("listen.tls_key", &listen.tls_key)?;
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
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Identity(e.to_string()))?;
    // Stateless session tickets let a reconnecting client skip the full
    // handshake (certificate signature, key exchange) without the server
    // holding per-session state. The ticket keys are new with each built
    // configuration, so after a reload that changes the certificate or
    // client CA every client goes through a full handshake again.
    config.ticketer = ticketer()?;
    Ok(Arc::new(config))
}

fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, TlsError> {
    rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| TlsError::Identity(e.to_string()))
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

    /// Writes a fresh self-signed `localhost` certificate and its key as
    /// `c.pem` and `k.pem` in `dir`.
    fn write_identity(dir: &std::path::Path) -> rcgen::Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("c.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("k.pem"), key.serialize_pem()).unwrap();
        cert
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
    fn a_key_file_without_a_key_names_listen_tls_key() {
        let dir = tempfile::tempdir().unwrap();
        write_identity(dir.path());
        let cert_path = dir.path().join("c.pem");
        // The certificate given as the key, a common slip.
        let err = server_config(&listen(cert_path.clone(), cert_path.clone())).unwrap_err();
        assert_eq!(err.field, "listen.tls_key");
        assert_eq!(
            err.to_string(),
            format!(
                "listen.tls_key: {} holds no PEM private key",
                cert_path.display()
            )
        );
    }

    #[test]
    fn tls_errors_convert_to_config_errors_with_the_same_text() {
        let errors = [
            TlsError::Read {
                field: "listen.tls_cert",
                path: "/x.pem".into(),
                detail: "gone".into(),
            },
            TlsError::Empty {
                field: "listen.client_ca",
                path: "/ca.pem".into(),
                what: "PEM certificate",
            },
            TlsError::Identity("bad".into()),
            TlsError::ClientCa("bad".into()),
        ];
        let shown = [
            "listen.tls_cert: cannot read /x.pem: gone",
            "listen.client_ca: /ca.pem holds no PEM certificate",
            "listen: the certificate and key do not form a usable TLS identity: bad",
            "listen.client_ca: bad",
        ];
        for (e, want) in errors.into_iter().zip(shown) {
            assert_eq!(e.to_string(), want);
            let field = e.field();
            let c = ConfigError::from(e);
            assert_eq!((c.field.as_str(), c.to_string().as_str()), (field, want));
        }
    }

    /// Runs one in-memory handshake (and the tickets that follow it) and
    /// returns how the server saw it.
    fn handshake(
        server: &Arc<ServerConfig>,
        client: &Arc<rustls::ClientConfig>,
    ) -> rustls::HandshakeKind {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::clone(client), name).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::clone(server)).unwrap();
        for _ in 0..10 {
            let mut to_server = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut to_server).unwrap();
            }
            let mut rd = &to_server[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
                s.process_new_packets().unwrap();
            }
            let mut to_client = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut to_client).unwrap();
            }
            let mut rd = &to_client[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                c.process_new_packets().unwrap();
            }
            if to_server.is_empty() && to_client.is_empty() && !s.is_handshaking() {
                break;
            }
        }
        s.handshake_kind().unwrap()
    }

    #[test]
    fn reconnecting_clients_resume_until_the_configuration_is_rebuilt() {
        use rustls::HandshakeKind::{Full, Resumed};
        let dir = tempfile::tempdir().unwrap();
        let cert = write_identity(dir.path());
        let l = listen(dir.path().join("c.pem"), dir.path().join("k.pem"));
        let server = server_config(&l).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        // Each client config has its own session store: one per client.
        let new_client = || {
            Arc::new(
                rustls::ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots.clone())
                    .with_no_client_auth(),
            )
        };
        let client = new_client();
        assert_eq!(handshake(&server, &client), Full);
        assert_eq!(handshake(&server, &client), Resumed);
        assert_eq!(handshake(&server, &client), Resumed);
        // More clients than rustls's default server-side cache holds (256
        // sessions): with tickets the server keeps nothing, so the first
        // client still resumes after all the others.
        for _ in 0..300 {
            assert_eq!(handshake(&server, &new_client()), Full);
        }
        assert_eq!(handshake(&server, &client), Resumed);
        // A reload builds a new configuration: old tickets no longer resume.
        let reloaded = server_config(&l).unwrap();
        assert_eq!(handshake(&reloaded, &client), Full);
        assert_eq!(handshake(&reloaded, &client), Resumed);
    }

    #[test]
    fn builds_from_a_generated_identity() {
        let dir = tempfile::tempdir().unwrap();
        write_identity(dir.path());
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
