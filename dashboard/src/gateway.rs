//! The chat playground's way to an instance: the customers' own endpoint (the gateway), with the
//! instance's key, exactly as their programs call it. The dashboard adds nothing a customer's
//! SDK could not do, and the gateway meters and limits it the same way.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::Value;

/// How long a call may wait for the gateway's answer to begin (a sleeping instance wakes first).
const ANSWER_WITHIN: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct GatewayClient {
    base: String,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl GatewayClient {
    /// `base`: the gateway's URL without `/v1`; `ca`: a PEM file of the CA its certificate
    /// chains to when it is a private one (else the system's roots).
    pub fn new(base: &str, ca: Option<&Path>) -> anyhow::Result<GatewayClient> {
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match ca {
            Some(path) => {
                use rustls::pki_types::CertificateDer;
                use rustls::pki_types::pem::PemObject;
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("reading {}", path.display()))?
                {
                    roots.add(
                        cert.with_context(|| format!("{}: not a PEM certificate", path.display()))?,
                    )?;
                }
                let config = rustls::ClientConfig::builder_with_provider(
                    rustls::crypto::ring::default_provider().into(),
                )
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
                builder.with_tls_config(config)
            }
            None => builder.with_native_roots().context("loading the system's CA certificates")?,
        };
        let https = builder.https_or_http().enable_http1().build();
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
        Ok(GatewayClient { base: base.trim_end_matches('/').to_string(), client })
    }

    /// A call to `/v1{path}` with the instance's key; the answer as it comes (a stream for
    /// `"stream": true`).
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        key: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<http::Response<Incoming>> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}/v1{path}", self.base))
            .header(http::header::AUTHORIZATION, format!("Bearer {key}"));
        let body = match body {
            Some(v) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(serde_json::to_vec(v)?))
            }
            None => Full::new(Bytes::new()),
        };
        let answer = tokio::time::timeout(ANSWER_WITHIN, self.client.request(req.body(body)?))
            .await
            .context("the gateway did not answer in time")?
            .context("the gateway could not be reached")?;
        Ok(answer)
    }

    /// A GET whose answer is JSON, asked again (twice at most, 1 s then 2 s later) while the
    /// failure is a passing one: no answer, or 502/503/504 (an instance restarting, a gateway
    /// that has not yet seen it Ready). For reads whose result a customer keeps, as an export.
    /// A 401 is not asked again: each one counts towards the address's failed sign-ins.
    pub async fn read(&self, path: &str, key: &str) -> anyhow::Result<(u16, Value)> {
        let passing = |answer: &anyhow::Result<(u16, Value)>| !matches!(answer, Ok((status, _)) if !matches!(status, 502..=504));
        ask_again_while(|| self.json(http::Method::GET, path, key, None), passing).await
    }

    /// A call whose answer is JSON: (status, body).
    pub async fn json(
        &self,
        method: http::Method,
        path: &str,
        key: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let answer = self.call(method, path, key, body).await?;
        let status = answer.status().as_u16();
        let bytes = answer.into_body().collect().await.context("reading the gateway's answer")?;
        Ok((status, serde_json::from_slice(&bytes.to_bytes()).unwrap_or(Value::Null)))
    }
}

/// `request`, made again (twice at most, 1 s then 2 s later) while `passing` says its result is a
/// failure that may pass if asked again. For reads that change nothing: an export's, through the
/// gateway ([`GatewayClient::read`]) or of the cluster.
pub async fn ask_again_while<T, F, Fut>(mut request: F, passing: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut result = request().await;
    for wait in [1, 2] {
        if !passing(&result) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(wait)).await;
        result = request().await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::GatewayClient;
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};

    /// A loopback server answering each request with the next status of `statuses`; returns its
    /// base URL and the paths it was asked for.
    fn answering(statuses: Vec<u16>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        std::thread::spawn(move || {
            for (stream, status) in listener.incoming().zip(statuses) {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                log.lock().unwrap().push(req.split_whitespace().nth(1).unwrap_or("").to_string());
                let body = format!("{{\"status\":{status}}}");
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (base, asked)
    }

    #[tokio::test]
    async fn a_read_is_asked_again_after_a_passing_failure_and_not_after_a_refusal() {
        let (base, asked) = answering(vec![503, 502, 200]);
        let gw = GatewayClient::new(&base, None).unwrap();
        let (status, body) = gw.read("/conversations", "k").await.unwrap();
        assert_eq!((status, body["status"].as_u64()), (200, Some(200)));
        assert_eq!(asked.lock().unwrap().len(), 3);

        let (base, asked) = answering(vec![401, 200]);
        let gw = GatewayClient::new(&base, None).unwrap();
        assert_eq!(gw.read("/conversations", "k").await.unwrap().0, 401);
        assert_eq!(*asked.lock().unwrap(), ["/v1/conversations"], "a 401 is not asked again");
    }
}
