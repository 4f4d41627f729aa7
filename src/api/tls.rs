//! The server side of TLS: rustls (ring) built from `[tls]` files, and the names a
//! client certificate carries. No OpenSSL anywhere.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;

use crate::config::TlsConfig;

/// Builds the rustls server config from the files `[tls]` names. Called at start
/// and on SIGHUP, so a rotated certificate is read from disk each time.
pub fn server_config(tls: &TlsConfig) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&tls.cert_file, "cert_file")?;
    crate::trusted::secret_file(&tls.key_file, "[tls] key_file")?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| {
        anyhow::anyhow!(
            "cannot read a private key from [tls] key_file '{}': {e}; give a PEM file with one \
             PKCS#8, PKCS#1 or SEC1 key",
            tls.key_file.display()
        )
    })?;
    let verifier = match &tls.client_ca_file {
        None => WebPkiClientVerifier::no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca, "client_ca_file")? {
                roots.add(cert).map_err(|e| {
                    anyhow::anyhow!(
                        "[tls] client_ca_file '{}' holds a certificate rustls cannot use as a CA: {e}",
                        ca.display()
                    )
                })?;
            }
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .with_context(|| {
                    format!(
                        "cannot build a client verifier from [tls] client_ca_file '{}'",
                        ca.display()
                    )
                })?
        }
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("rustls has no safe protocol version")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "[tls] cert_file '{}' and key_file '{}' do not make a usable pair; check that the \
                 key belongs to the certificate",
                tls.cert_file.display(),
                tls.key_file.display()
            )
        })?;
    // gRPC is HTTP/2 only; grpcio refuses a TLS server that does not say so.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn read_certs(path: &Path, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot read certificates from [tls] {key} '{}': {e}; give a PEM file",
                path.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!(
            "[tls] {key} '{}' holds no PEM certificate; give a file with '-----BEGIN CERTIFICATE-----' blocks",
            path.display()
        );
    }
    Ok(certs)
}

/// The names a (verified) client certificate proves: its DNS SANs, then its
/// subject CN. `allowed_clients` is matched against these.
pub fn client_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_string());
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            names.push(cn.to_string());
        }
    }
    names
}
