//! The HTTP(S) client of `fetch`: bounded redirects, credentials kept to the host they were
//! given for, TLS with the system's CAs (plus any the platform adds), and no connection to a
//! private, loopback or link-local address unless the platform allows it. The address check sits
//! in the resolver, so a name that re-resolves to a private address between check and connect
//! (DNS rebinding) is refused too.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;

use super::{Failure, Reason};

/// Most redirects one request follows.
pub const MAX_REDIRECTS: usize = 8;

/// Whether connecting to `ip` reaches something inside the cluster or the host rather than the
/// internet: loopback, private ranges (RFC 1918, unique-local), link-local (where cloud metadata
/// services live), carrier-grade NAT, unspecified, multicast, broadcast.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Resolves names, keeping only the addresses the platform lets `fetch` reach.
#[derive(Clone)]
struct GuardedResolver {
    allow_private: bool,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> =
                found.iter().copied().filter(|a| allow_private || !is_private(a.ip())).collect();
            if allowed.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{name} resolves only to private addresses"),
                ));
            }
            Ok(allowed.into_iter())
        })
    }
}

type Inner = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>,
    Empty<Bytes>,
>;

/// A request's credentials: headers sent only to the origin they were given for (never after a
/// redirect elsewhere, so a token for the hub does not reach its CDN or an attacker's redirect
/// target). An origin is the scheme, the host and the port, as browsers count it: a redirect to
/// another port, or from https to http on the same host, is elsewhere too.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Credentials {
    origin: Option<(String, String, u16)>,
    pub headers: Vec<(String, String)>,
}

impl Credentials {
    /// No headers yet, for `uri`'s origin.
    pub fn for_origin_of(uri: &hyper::Uri) -> Credentials {
        Credentials { origin: origin(uri), headers: Vec::new() }
    }

    /// Whether a request to `uri` carries these headers.
    pub fn sent_to(&self, uri: &hyper::Uri) -> bool {
        self.origin.is_some() && origin(uri) == self.origin
    }
}

fn origin(uri: &hyper::Uri) -> Option<(String, String, u16)> {
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let port = uri.port_u16().or(match scheme.as_str() {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    })?;
    Some((scheme, uri.host()?.to_ascii_lowercase(), port))
}

pub struct Client {
    inner: Inner,
    allow_private: bool,
}

impl Client {
    /// `extra_ca_pem`: certificates trusted besides the system's (a platform's internal CA).
    pub fn new(allow_private: bool, extra_ca_pem: Option<&str>) -> Result<Client, Failure> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(pem) = extra_ca_pem.filter(|p| !p.trim().is_empty()) {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| {
                    Failure::new(Reason::Refused, format!("the platform's extra CA bundle: {e}"))
                })?;
                roots.add(cert).map_err(|e| {
                    Failure::new(Reason::Refused, format!("the platform's extra CA bundle: {e}"))
                })?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::new(Reason::Refused, format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new_with_resolver(GuardedResolver { allow_private });
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(30)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        Ok(Client { inner, allow_private })
    }

    /// Refuses a URL whose host is (or resolves only to) a private address, in words that name
    /// the URL; the resolver enforces the same at connect time.
    async fn check_host(&self, uri: &hyper::Uri, shown: &str) -> Result<(), Failure> {
        if self.allow_private {
            return Ok(());
        }
        let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let refused = |ip: IpAddr| {
            Failure::new(
                Reason::Refused,
                format!(
                    "{shown}: {host} is a private, loopback or link-local address ({ip}); the platform does not allow model sources there"
                ),
            )
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return if is_private(ip) { Err(refused(ip)) } else { Ok(()) };
        }
        let found: Vec<SocketAddr> = match tokio::net::lookup_host((host, 0)).await {
            Ok(a) => a.collect(),
            Err(e) => {
                return Err(Failure::new(
                    Reason::Network,
                    format!("{shown}: resolving {host}: {e}"),
                ));
            }
        };
        match found.iter().find(|a| !is_private(a.ip())) {
            Some(_) => Ok(()),
            None => {
                Err(refused(found.first().map(|a| a.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]))))
            }
        }
    }

    /// GET (or HEAD) `url`, following redirects. `range_from`: ask for the bytes from there on.
    /// Answers whatever status the last hop gave; transport failures are `Network` failures.
    pub async fn get(
        &self,
        url: &str,
        shown: &str,
        credentials: &Credentials,
        range_from: Option<u64>,
        head: bool,
    ) -> Result<(hyper::Response<Incoming>, hyper::Uri), Failure> {
        let mut uri: hyper::Uri = url
            .parse()
            .map_err(|e| Failure::new(Reason::Refused, format!("{shown}: not a URL ({e})")))?;
        for _ in 0..=MAX_REDIRECTS {
            match uri.scheme_str() {
                Some("http" | "https") => {}
                _ => {
                    return Err(Failure::new(
                        Reason::Refused,
                        format!("{shown}: redirected to {uri}, which is not http(s)"),
                    ));
                }
            }
            self.check_host(&uri, shown).await?;
            let mut req = hyper::Request::builder()
                .method(if head { hyper::Method::HEAD } else { hyper::Method::GET })
                .uri(uri.clone())
                .header("user-agent", concat!("alcove-fetch/", env!("CARGO_PKG_VERSION")));
            if credentials.sent_to(&uri) {
                for (k, v) in &credentials.headers {
                    req = req.header(k.as_str(), v.as_str());
                }
            }
            if let Some(from) = range_from.filter(|f| *f > 0) {
                req = req.header(hyper::header::RANGE, format!("bytes={from}-"));
            }
            let req = req
                .body(Empty::new())
                .map_err(|e| Failure::new(Reason::Refused, format!("{shown}: {e}")))?;
            let resp = tokio::time::timeout(Duration::from_secs(60), self.inner.request(req))
                .await
                .map_err(|_| {
                    Failure::new(Reason::Network, format!("{shown}: no answer within 60 s"))
                })?
                .map_err(|e| Failure::new(Reason::Network, format!("{shown}: {}", chain(&e))))?;
            if resp.status().is_redirection()
                && let Some(loc) =
                    resp.headers().get(hyper::header::LOCATION).and_then(|l| l.to_str().ok())
            {
                uri = resolve(&uri, loc).map_err(|e| {
                    Failure::new(Reason::Refused, format!("{shown}: bad redirect to {loc}: {e}"))
                })?;
                continue;
            }
            return Ok((resp, uri));
        }
        Err(Failure::new(Reason::Refused, format!("{shown}: more than {MAX_REDIRECTS} redirects")))
    }
}

/// An error and its causes on one line (hyper's own message is only the outermost).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// A redirect's `Location`, absolute or relative to `base`.
pub fn resolve(base: &hyper::Uri, location: &str) -> Result<hyper::Uri, String> {
    if location.contains("://") {
        return location.parse().map_err(|e: hyper::http::uri::InvalidUri| e.to_string());
    }
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    let path = if location.starts_with('/') {
        location.to_string()
    } else {
        let dir = base.path().rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        format!("{dir}/{location}")
    };
    format!("{scheme}://{authority}{path}")
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "100.128.0.1", "172.32.0.1"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn credentials_go_to_their_own_origin_only() {
        let c = Credentials::for_origin_of(&"https://hub.example/api/models".parse().unwrap());
        let to = |u: &str| c.sent_to(&u.parse().unwrap());
        assert!(to("https://hub.example/acme/tiny/resolve/abc/model.safetensors"));
        assert!(to("https://HUB.example:443/x"), "the default port, any case");
        assert!(!to("https://cdn.hub.example/x"), "another host");
        assert!(!to("https://hub.example:8443/x"), "another port");
        assert!(!to("http://hub.example/x"), "downgraded to plain http");
        assert!(!Credentials::default().sent_to(&"https://hub.example/".parse().unwrap()));
    }

    #[test]
    fn redirects_resolve_against_the_base() {
        let base: hyper::Uri = "https://h.example/a/b/model.gguf".parse().unwrap();
        assert_eq!(resolve(&base, "/x/y").unwrap().to_string(), "https://h.example/x/y");
        assert_eq!(resolve(&base, "c.gguf").unwrap().to_string(), "https://h.example/a/b/c.gguf");
        assert_eq!(resolve(&base, "http://o.example/z").unwrap().to_string(), "http://o.example/z");
    }
}
