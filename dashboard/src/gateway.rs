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
