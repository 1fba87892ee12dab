//! HTTPS for the API server. kubectl only sends credentials over TLS, so the server makes a
//! throwaway CA at start, signs a serving certificate for 127.0.0.1/localhost with it, and puts
//! the CA in the kubeconfig it writes.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The CA (PEM) clients should trust, and the server's TLS configuration.
pub struct ServingCerts {
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
}

/// A throwaway CA and a serving certificate it signed for 127.0.0.1, `localhost` and `names`,
/// as PEM: what a loopback HTTPS server (the API server here, the gateway in `alcove up`) serves
/// and what its clients trust.
pub struct LoopbackPem {
    pub ca_pem: String,
    /// The serving certificate, then the CA.
    pub chain_pem: String,
    pub key_pem: String,
}

pub fn loopback_pem(common_name: &str, names: &[&str]) -> Result<LoopbackPem, String> {
    let err = |e: rcgen::Error| e.to_string();
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, format!("{common_name}-ca"));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(
        std::iter::once("localhost")
            .chain(names.iter().copied())
            .map(String::from)
            .collect::<Vec<_>>(),
    )
    .map_err(err)?;
    params.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let server_cert = params.signed_by(&server_key, &issuer).map_err(err)?;
    Ok(LoopbackPem {
        ca_pem: ca_cert.pem(),
        chain_pem: format!("{}{}", server_cert.pem(), ca_cert.pem()),
        key_pem: server_key.serialize_pem(),
    })
}

pub fn generate() -> Result<ServingCerts, String> {
    let pem = loopback_pem(
        "devcluster-apiserver",
        &["kubernetes", "kubernetes.default", "kubernetes.default.svc"],
    )?;
    let chain = CertificateDer::pem_slice_iter(pem.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(pem.key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServingCerts { ca_pem: pem.ca_pem, server_config: Arc::new(config) })
}
