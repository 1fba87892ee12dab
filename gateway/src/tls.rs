//! HTTPS with rustls: the certificate and key are files (a mounted Secret), read again when
//! they change, so a renewal (cert-manager's, or anyone's) takes effect without a restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tower_service::Service as _;

/// Reads a certified key from PEM files.
fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("read {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("certificates in {}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("private key in {}", key.display()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .context("the private key's type is not supported")?;
    Ok(Arc::new(CertifiedKey::new(certs, signer)))
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The current certificate; the files are looked at, at most once a second, on a handshake.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.checked.elapsed() >= Duration::from_secs(1) {
            st.checked = Instant::now();
            let stamps = (modified(&self.cert), modified(&self.key));
            if stamps != st.stamps {
                // A Secret update swaps both files; a half-written pair fails to load and the
                // old certificate stays until the next look.
                match load(&self.cert, &self.key) {
                    Ok(k) => {
                        st.key = k;
                        st.stamps = stamps;
                        tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                    }
                    Err(e) => tracing::warn!(error = %e, "TLS certificate not reloaded"),
                }
            }
        }
        Some(st.key.clone())
    }
}

pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let loaded = Loaded {
        key: load(cert, key)?,
        stamps: (modified(cert), modified(key)),
        checked: Instant::now(),
    };
    let resolver = Reloading { cert: cert.into(), key: key.into(), state: Mutex::new(loaded) };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener`, over TLS when an acceptor is given; every request carries its
/// peer address as `ConnectInfo`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<()> {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                    router.clone().call(req.map(axum::body::Body::new))
                },
            );
            let http = hyper::server::conn::http1::Builder::new();
            let result = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(stream)) => {
                            http.serve_connection(TokioIo::new(stream), service).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %peer, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
                None => http.serve_connection(TokioIo::new(tcp), service).await,
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;

    fn write(dir: &Path) -> String {
        let pem = alcove_devcluster::tls::loopback_pem("gateway-test", &[]).unwrap();
        std::fs::write(dir.join("tls.crt"), &pem.chain_pem).unwrap();
        std::fs::write(dir.join("tls.key"), &pem.key_pem).unwrap();
        pem.ca_pem
    }

    /// Whether a TLS handshake with the server at `addr` succeeds trusting only `ca`.
    async fn trusted(addr: SocketAddr, ca: &str) -> bool {
        let config = alcove_testkit::tls_client_trusting(ca);
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::IpAddress(addr.ip().into());
        tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.is_ok()
    }

    #[tokio::test]
    async fn a_renewed_certificate_is_served_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = write(dir.path());
        let acceptor = acceptor(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Router::new(), Some(acceptor)));
        assert!(trusted(addr, &first).await);
        // The Secret is renewed (a new CA even): within a second or two the new one is served.
        let second = write(dir.path());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(trusted(addr, &second).await, "the renewed certificate");
        assert!(!trusted(addr, &first).await, "the old one is no longer served");
        // A broken file keeps the last good certificate.
        std::fs::write(dir.path().join("tls.key"), "not a key").unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(trusted(addr, &second).await);
    }
}
