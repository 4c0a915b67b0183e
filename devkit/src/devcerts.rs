//! Development PKI for the demo and the test suite.
//!
//! [`generate`] writes a throw-away CA certificate, a server certificate chain
//! for the loopback names (plus any extra hosts) and a client certificate for
//! mutual-TLS experiments. It is for development only: the CA's private key is
//! never written to disk, so the CA can sign nothing beyond what one call
//! produced, and a stolen `ca.pem` lets nobody mint certificates.
//!
//! Files (in `dir`): `ca.pem`, `server.pem` (leaf then CA), `server.key`
//! (PKCS#8 PEM, mode 0600), `client.pem` (leaf then CA), `client.key`
//! (PKCS#8 PEM, mode 0600).
//!
//! Each file is replaced atomically, but two processes generating into the
//! same directory at once may end up with files from different sets; the
//! next call notices (the chain no longer verifies) and starts over.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// Names every development server certificate carries, so that clients
/// connecting to the loopback address by any usual spelling verify it and the
/// drivers' OIDC `ALLOWED_HOSTS` defaults (`localhost`, `127.0.0.1`, `::1`) match.
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Lifetime of the leaf certificates. Short enough that a leaked dev key dies
/// on its own; long enough that a demo directory keeps working for a year.
const LEAF_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Backdating absorbs clock skew between the machine that generated the
/// certificates and the one using them.
const BACKDATE: Duration = Duration::from_secs(24 * 3600);

/// ECDSA P-256 for every key: the server's handshake signature and the
/// client's verification cost a fraction of RSA 2048's, and every driver the
/// proxy supports (and OpenSSL, rustls, Node, Java) accepts it.
const KEY_ALG: &rcgen::SignatureAlgorithm = &rcgen::PKCS_ECDSA_P256_SHA256;

/// Paths of the files [`generate`] wrote or reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCertPaths {
    /// Self-signed CA certificate: the trust anchor to give clients (`tlsCAFile`).
    pub ca_cert: PathBuf,
    /// Server certificate chain (leaf, then CA).
    pub server_cert: PathBuf,
    /// Server private key, PKCS#8 PEM.
    pub server_key: PathBuf,
    /// Client certificate chain (leaf, then CA), for mutual TLS.
    pub client_cert: PathBuf,
    /// Client private key, PKCS#8 PEM.
    pub client_key: PathBuf,
    /// True when the files were freshly written, false when existing ones were reused.
    pub created: bool,
}

/// Why development certificates could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid host name {0:?}")]
    BadHost(String),
}

impl DevCertPaths {
    fn in_dir(dir: &Path, created: bool) -> Self {
        DevCertPaths {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            created,
        }
    }

    fn all_exist(&self) -> bool {
        [
            &self.ca_cert,
            &self.server_cert,
            &self.server_key,
            &self.client_cert,
            &self.client_key,
        ]
        .iter()
        .all(|p| p.is_file())
    }
}

/// Writes (or reuses) the development CA, server and client certificates in `dir`.
///
/// The server certificate names `localhost`, `127.0.0.1`, `::1` and every entry
/// of `hosts` (DNS names or IP addresses). Existing files are reused when all
/// five are present, the key parses and the server chain still verifies against
/// `ca.pem` for every requested name now; otherwise all five are replaced, so a
/// client trusting the old `ca.pem` must be given the new one.
pub fn generate(dir: &Path, hosts: &[&str]) -> Result<DevCertPaths, DevCertError> {
    let names = server_names(hosts)?;
    fs::create_dir_all(dir).map_err(|source| DevCertError::Io {
        path: dir.to_path_buf(),
        source,
    })?;

    let existing = DevCertPaths::in_dir(dir, false);
    if existing.all_exist() && existing_still_valid(&existing, &names) {
        tracing::debug!(dir = %dir.display(), "reusing development certificates");
        return Ok(existing);
    }

    let paths = DevCertPaths::in_dir(dir, true);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let not_before = epoch + now.saturating_sub(BACKDATE);
    let not_after = epoch + now + LEAF_LIFETIME;

    // CA: signs the two leaves below, then its key is dropped.
    let ca_key = KeyPair::generate_for(KEY_ALG)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mongo-oidc-proxy development CA");
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "mongo-oidc-proxy (dev only)");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after + BACKDATE;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_pem = ca_cert.pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate_for(KEY_ALG)?;
    let mut server_params = CertificateParams::new(names)?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "mongo-oidc-proxy dev server");
    server_params.use_authority_key_identifier_extension = true;
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.not_before = not_before;
    server_params.not_after = not_after;
    let server_cert = server_params.signed_by(&server_key, &issuer)?;

    let client_key = KeyPair::generate_for(KEY_ALG)?;
    let mut client_params = CertificateParams::new(Vec::<String>::new())?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, "mongo-oidc-proxy dev client");
    client_params.use_authority_key_identifier_extension = true;
    client_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client_params.not_before = not_before;
    client_params.not_after = not_after;
    let client_cert = client_params.signed_by(&client_key, &issuer)?;

    // Keys first, CA last: if anything fails half-way, `ca.pem` (or another
    // file) is missing or does not match, and the next call starts over.
    write_file(&paths.server_key, &server_key.serialize_pem(), true)?;
    write_file(
        &paths.server_cert,
        &format!("{}{}", server_cert.pem(), ca_pem),
        false,
    )?;
    write_file(&paths.client_key, &client_key.serialize_pem(), true)?;
    write_file(
        &paths.client_cert,
        &format!("{}{}", client_cert.pem(), ca_pem),
        false,
    )?;
    write_file(&paths.ca_cert, &ca_pem, false)?;
    tracing::info!(dir = %dir.display(), "wrote development certificates");
    Ok(paths)
}

/// Loopback names plus `hosts`, deduplicated, in a stable order.
fn server_names(hosts: &[&str]) -> Result<Vec<String>, DevCertError> {
    let mut seen = BTreeSet::new();
    let mut names = Vec::new();
    for h in LOOPBACK_HOSTS.iter().chain(hosts.iter()) {
        let h = h.trim();
        // Strip the brackets of an IPv6 literal written URL-style.
        let h = h
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(h);
        if ServerName::try_from(h).is_err() {
            return Err(DevCertError::BadHost(h.to_string()));
        }
        if seen.insert(h.to_ascii_lowercase()) {
            names.push(h.to_string());
        }
    }
    Ok(names)
}

/// Whether the files in `paths` form a usable set for `names` right now.
/// Any parse or verification failure just means "regenerate".
fn existing_still_valid(paths: &DevCertPaths, names: &[String]) -> bool {
    let Ok(roots) = load_certs(&paths.ca_cert) else {
        return false;
    };
    let Ok(chain) = load_certs(&paths.server_cert) else {
        return false;
    };
    if PrivateKeyDer::from_pem_file(&paths.server_key).is_err()
        || PrivateKeyDer::from_pem_file(&paths.client_key).is_err()
        || load_certs(&paths.client_cert).is_err()
    {
        return false;
    }
    let Some((leaf, intermediates)) = chain.split_first() else {
        return false;
    };
    let mut store = RootCertStore::empty();
    for root in roots {
        if store.add(root).is_err() {
            return false;
        }
    }
    let Ok(verifier) = WebPkiServerVerifier::builder_with_provider(
        Arc::new(store),
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .build() else {
        return false;
    };
    let now = UnixTime::now();
    names.iter().all(|name| {
        ServerName::try_from(name.as_str()).is_ok_and(|sn| {
            verifier
                .verify_server_cert(leaf, intermediates, &sn, &[], now)
                .is_ok()
        })
    })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ()> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|_| ())?
        .collect::<Result<_, _>>()
        .map_err(|_| ())?;
    if certs.is_empty() {
        return Err(());
    }
    Ok(certs)
}

/// Writes through a temporary file and a rename so that a crash never leaves
/// a truncated PEM behind; private keys are created 0600 from the start rather
/// than chmod-ed afterwards, so they are never world-readable even briefly.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), DevCertError> {
    let io_err = |source| DevCertError::Io {
        path: path.to_path_buf(),
        source,
    };
    // A name unique to this call, so two processes never share a temp file.
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(
        ".{}.{:x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let tmp = PathBuf::from(tmp_name);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(&tmp).map_err(io_err)?;
    f.write_all(contents.as_bytes()).map_err(io_err)?;
    f.sync_all().map_err(io_err)?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    #[test]
    fn generates_reuses_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let p = generate(dir.path(), &["proxy.test", "10.1.2.3"]).unwrap();
        assert!(p.created);
        for k in [&p.server_key, &p.client_key] {
            let key = KeyPair::from_pem(&fs::read_to_string(k).unwrap()).unwrap();
            assert_eq!(key.algorithm(), KEY_ALG, "{}", k.display());
        }

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for k in [&p.server_key, &p.client_key] {
                let mode = fs::metadata(k).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", k.display());
            }
        }

        let names: Vec<String> = ["localhost", "127.0.0.1", "::1", "proxy.test", "10.1.2.3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(existing_still_valid(&p, &names));
        // A name the certificate lacks fails verification.
        assert!(!existing_still_valid(&p, &["other.test".to_string()]));

        // Second call with the same hosts keeps the files (and so the trust).
        let ca_before = fs::read(&p.ca_cert).unwrap();
        let again = generate(dir.path(), &["proxy.test"]).unwrap();
        assert!(!again.created);
        assert_eq!(fs::read(&again.ca_cert).unwrap(), ca_before);

        // A new host forces a fresh set.
        let fresh = generate(dir.path(), &["new.test"]).unwrap();
        assert!(fresh.created);
        assert_ne!(fs::read(&fresh.ca_cert).unwrap(), ca_before);

        // A corrupted file forces a fresh set too.
        fs::write(&fresh.server_cert, "garbage").unwrap();
        assert!(generate(dir.path(), &[]).unwrap().created);
    }

    #[test]
    fn rejects_bad_host() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            generate(dir.path(), &["bad host"]),
            Err(DevCertError::BadHost(_))
        ));
    }

    /// The real check: rustls loads the files and completes mutual TLS with them.
    #[tokio::test]
    async fn tls_handshake_with_generated_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = generate(dir.path(), &[]).unwrap();

        let chain = load_certs(&p.server_cert).unwrap();
        assert_eq!(chain.len(), 2);
        let key = PrivateKeyDer::from_pem_file(&p.server_key).unwrap();
        assert!(matches!(key, PrivateKeyDer::Pkcs8(_)));

        let mut roots = RootCertStore::empty();
        for c in load_certs(&p.ca_cert).unwrap() {
            roots.add(c).unwrap();
        }
        let roots = Arc::new(roots);

        let client_verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .unwrap();
        let server_cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain, key)
            .unwrap();
        // The plain no-client-auth form must accept the same chain as well.
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                load_certs(&p.server_cert).unwrap(),
                PrivateKeyDer::from_pem_file(&p.server_key).unwrap(),
            )
            .unwrap();

        let client_cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                load_certs(&p.client_cert).unwrap(),
                PrivateKeyDer::from_pem_file(&p.client_key).unwrap(),
            )
            .unwrap();

        for host in ["localhost", "127.0.0.1", "::1"] {
            let (c, s) = tokio::io::duplex(16 * 1024);
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg.clone()));
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg.clone()));
            let server = tokio::spawn(async move {
                let mut tls = acceptor.accept(s).await.unwrap();
                let peer = tls.get_ref().1.peer_certificates().map(|c| c.len());
                let mut buf = [0u8; 4];
                tls.read_exact(&mut buf).await.unwrap();
                tls.write_all(b"pong").await.unwrap();
                tls.flush().await.unwrap();
                (buf, peer)
            });
            let name = ServerName::try_from(host).unwrap().to_owned();
            let mut tls = connector.connect(name, c).await.unwrap();
            tls.write_all(b"ping").await.unwrap();
            tls.flush().await.unwrap();
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"pong");
            let (got, peer) = server.await.unwrap();
            assert_eq!(&got, b"ping");
            assert_eq!(peer, Some(2), "server saw the client chain");
        }

        // A name outside the certificate is refused.
        let (c, s) = tokio::io::duplex(16 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
        tokio::spawn(async move {
            let _ = acceptor.accept(s).await;
        });
        let name = ServerName::try_from("example.com").unwrap().to_owned();
        assert!(connector.connect(name, c).await.is_err());
    }
}
