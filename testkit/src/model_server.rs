//! A loopback server of model files for the model-source tests: plain files (HEAD, ranged GET,
//! ETag), a Hugging Face–compatible hub (revision listing, `resolve` redirecting to a blob path),
//! optional HTTPS with its own CA, an optional required header, a first download cut off halfway,
//! a bandwidth cap, redirects, and a count of requests per path. It listens on loopback, or on
//! a listener the test made (in a network namespace of its own, on another address).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::Digest;

/// A repository on the fake hub.
#[derive(Clone, Debug)]
pub struct HubRepo {
    /// `org/repo`.
    pub name: String,
    /// The commit `main` resolves to (hex).
    pub commit: String,
    /// Path in the repository → contents.
    pub files: Vec<(String, Vec<u8>)>,
}

#[derive(Default)]
pub struct Options {
    /// URL path → contents.
    pub files: Vec<(String, Vec<u8>)>,
    pub hub: Vec<HubRepo>,
    /// Answer 401 to requests without this header (name, value).
    pub require_header: Option<(String, String)>,
    /// The first full GET of each of `files` sends half of it and closes the connection.
    pub cut_first_download: bool,
    /// Bytes per second per connection for `files` (0: unlimited; the hub is never slowed).
    pub bytes_per_second: u64,
    pub https: bool,
    /// URL path → where a 302 sends it (after `require_header` is checked).
    pub redirects: Vec<(String, String)>,
    /// Serve on this listener instead of a new one on 127.0.0.1 (plain HTTP only).
    pub listener: Option<std::net::TcpListener>,
}

pub struct ModelServer {
    pub port: u16,
    /// `http://127.0.0.1:PORT` or `https://localhost:PORT`.
    pub base: String,
    /// The CA certificate (PEM) clients must trust for HTTPS.
    pub ca_pem: Option<String>,
    state: Arc<State>,
}

struct State {
    opts: Options,
    gets: Mutex<BTreeMap<String, u64>>,
    cut: Mutex<std::collections::BTreeSet<String>>,
    bytes_sent: AtomicU64,
    tls: Option<Arc<rustls::ServerConfig>>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl ModelServer {
    pub fn start(mut opts: Options) -> ModelServer {
        let given = opts.listener.take();
        let listener = match &given {
            Some(l) => l.try_clone().unwrap(),
            None => std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        };
        let addr = listener.local_addr().unwrap();
        let port = addr.port();
        let (tls, ca_pem) = if opts.https {
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            ca_params.distinguished_name.push(rcgen::DnType::CommonName, "alcove test CA");
            let ca = ca_params.self_signed(&ca_key).unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
            let cert = params.signed_by(&key, &issuer).unwrap();
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
            (Some(Arc::new(config)), Some(ca.pem()))
        } else {
            (None, None)
        };
        let base = if tls.is_some() {
            format!("https://localhost:{port}")
        } else {
            format!("http://{addr}")
        };
        let state = Arc::new(State {
            opts,
            gets: Default::default(),
            cut: Default::default(),
            bytes_sent: AtomicU64::new(0),
            tls,
        });
        let s = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = match &s.tls {
                        Some(cfg) => match rustls::ServerConnection::new(cfg.clone()) {
                            Ok(conn) => serve(&s, rustls::StreamOwned::new(conn, stream)),
                            Err(_) => Ok(()),
                        },
                        None => serve(&s, stream),
                    };
                });
            }
        });
        ModelServer { port, base, ca_pem, state }
    }

    /// Full or ranged GETs of `path` so far.
    pub fn gets(&self, path: &str) -> u64 {
        self.state.gets.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// Body bytes sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.state.bytes_sent.load(Ordering::Relaxed)
    }

    /// The URL path where the hub serves a blob (where `resolve` redirects).
    pub fn blob_path(bytes: &[u8]) -> String {
        format!("/blobs/{}", sha256_hex(bytes))
    }
}

fn serve(state: &State, mut stream: impl Read + Write) -> std::io::Result<()> {
    let mut reader = BufReader::new(&mut stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("GET").to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    drop(reader);
    let (path, _query) = target.split_once('?').unwrap_or((&target, ""));
    let path = path.to_string();
    let reply = |stream: &mut dyn Write, status: u16, extra: &str, body: &[u8]| {
        write!(
            stream,
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n",
            body.len()
        )?;
        stream.write_all(body)?;
        stream.flush()
    };
    if let Some((k, v)) = &state.opts.require_header
        && headers.get(&k.to_ascii_lowercase()) != Some(v)
        && !path.starts_with("/blobs/")
    {
        return reply(&mut stream, 401, "", b"{\"error\":\"unauthorized\"}");
    }
    if let Some((_, to)) = state.opts.redirects.iter().find(|(from, _)| *from == path) {
        *state.gets.lock().unwrap().entry(path.clone()).or_default() += 1;
        return reply(&mut stream, 302, &format!("location: {to}\r\n"), b"");
    }
    // The hub's API.
    for repo in &state.opts.hub {
        let api = format!("/api/models/{}/revision/", repo.name);
        if let Some(rev) = path.strip_prefix(&api) {
            if rev != "main" && rev != repo.commit {
                return reply(&mut stream, 404, "", b"{\"error\":\"Revision Not Found\"}");
            }
            let siblings: Vec<serde_json::Value> = repo
                .files
                .iter()
                .map(|(name, bytes)| {
                    serde_json::json!({"rfilename": name, "size": bytes.len(),
                        "lfs": {"sha256": sha256_hex(bytes), "size": bytes.len()}})
                })
                .collect();
            let body =
                serde_json::json!({"id": repo.name, "sha": repo.commit, "siblings": siblings});
            return reply(
                &mut stream,
                200,
                "content-type: application/json\r\n",
                body.to_string().as_bytes(),
            );
        }
        let resolve = format!("/{}/resolve/{}/", repo.name, repo.commit);
        if let Some(file) = path.strip_prefix(&resolve) {
            return match repo.files.iter().find(|(n, _)| n == file) {
                Some((_, bytes)) => {
                    let loc = format!("location: {}\r\n", ModelServer::blob_path(bytes));
                    reply(&mut stream, 302, &loc, b"")
                }
                None => reply(&mut stream, 404, "", b"{\"error\":\"Entry not found\"}"),
            };
        }
    }
    let blob = state
        .opts
        .hub
        .iter()
        .flat_map(|r| r.files.iter())
        .find(|(_, b)| ModelServer::blob_path(b) == path);
    let plain = state.opts.files.iter().find(|(p, _)| *p == path);
    let file = plain.or(blob);
    let Some((_, bytes)) = file else {
        return reply(&mut stream, 404, "", b"not found");
    };
    let etag = format!("etag: \"{}\"\r\n", &sha256_hex(bytes)[..16]);
    if method == "HEAD" {
        return write!(
            stream,
            "HTTP/1.1 200 X\r\ncontent-length: {}\r\nconnection: close\r\n{etag}\r\n",
            bytes.len()
        );
    }
    *state.gets.lock().unwrap().entry(path.clone()).or_default() += 1;
    let from = headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let (status, body, extra) = match from {
        Some(f) if f >= bytes.len() => {
            return reply(
                &mut stream,
                416,
                &format!("content-range: bytes */{}\r\n", bytes.len()),
                b"",
            );
        }
        Some(f) => (
            206,
            &bytes[f..],
            format!("content-range: bytes {f}-{}/{}\r\n", bytes.len() - 1, bytes.len()),
        ),
        None => (200, &bytes[..], String::new()),
    };
    write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n{etag}{extra}accept-ranges: bytes\r\n\r\n",
        body.len()
    )?;
    let cut = from.is_none()
        && plain.is_some()
        && state.opts.cut_first_download
        && state.cut.lock().unwrap().insert(path.clone());
    let send = if cut { &body[..body.len() / 2] } else { body };
    let rate = if plain.is_some() { state.opts.bytes_per_second } else { 0 };
    let chunk = if rate > 0 { 8 << 10 } else { 64 << 10 };
    for piece in send.chunks(chunk) {
        stream.write_all(piece)?;
        state.bytes_sent.fetch_add(piece.len() as u64, Ordering::Relaxed);
        if state.opts.bytes_per_second > 0 {
            std::thread::sleep(Duration::from_secs_f64(
                piece.len() as f64 / state.opts.bytes_per_second as f64,
            ));
        }
    }
    stream.flush()
}
