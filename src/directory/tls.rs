//! The rustls client configuration handed to ldap3 for `ldaps://` and StartTLS.
//!
//! ldap3 (feature `tls-rustls-ring`) takes an `Arc<rustls::ClientConfig>` through
//! `LdapConnSettings::set_config`. Without one it loads the system roots itself, but drops
//! *all* of them if any system certificate fails to load; we build our own instead:
//! the PEM CA file when configured, else the system roots (rustls-native-certs).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use super::error::DirectoryError;

/// A client config trusting the CA certificates of `ca_file` (PEM), or the system roots.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, DirectoryError> {
    let roots = match ca_file {
        Some(path) => roots_from_file(path)?,
        None => system_roots()?,
    };
    // An explicit provider: ring, as ldap3 is built with. No process-wide default needed.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DirectoryError::CaCertificates {
            path: ca_file.map(Path::to_path_buf),
            reason: format!("TLS setup: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, DirectoryError> {
    let err = |reason: String| DirectoryError::CaCertificates {
        path: Some(path.to_path_buf()),
        reason,
    };
    let mut store = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))?;
    for (i, cert) in certs.enumerate() {
        let cert = cert.map_err(|e| err(format!("certificate {}: {e}", i + 1)))?;
        store
            .add(cert)
            .map_err(|e| err(format!("certificate {}: {e}", i + 1)))?;
    }
    if store.is_empty() {
        return Err(err(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".into(),
        ));
    }
    Ok(store)
}

fn system_roots() -> Result<RootCertStore, DirectoryError> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "could not load some system CA certificates");
    }
    let mut store = RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::debug!(added, ignored, "system CA certificates: some ignored");
    }
    if store.is_empty() {
        return Err(DirectoryError::CaCertificates {
            path: None,
            reason: "no system CA certificate found (install ca-certificates, or set \
                     `directory.ca_file` to the CA of the directory's certificate)"
                .into(),
        });
    }
    Ok(store)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let msg = client_config(Some(&path)).unwrap_err().to_string();
        assert!(msg.contains("ca.pem"), "{msg}");
        assert!(msg.contains("no PEM certificate"), "{msg}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let msg = client_config(Some(Path::new("/nonexistent/ca.pem")))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("/nonexistent/ca.pem"), "{msg}");
    }
}
