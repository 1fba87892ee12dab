//! Shared by the end-to-end tests: test models made once per test binary with the real
//! `make-test-model`, servers started as real processes, and a small HTTP/1.1 client that shows
//! responses byte for byte (so the SSE framing itself is checked).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use alcove_testkit::free_port;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_alcove-inference");
pub const KEY: &str = "test-key-0123456789abcdef";

pub fn run(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().expect("running alcove-inference");
    assert!(
        out.status.success(),
        "alcove-inference {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Test models, made once per test binary.
pub struct Models {
    pub root: PathBuf,
    pub chat: PathBuf,
    pub gguf: PathBuf,
    pub embedding: PathBuf,
}

pub fn models() -> &'static Models {
    static MODELS: OnceLock<Models> = OnceLock::new();
    MODELS.get_or_init(|| {
        let root = tempfile::tempdir().unwrap().keep();
        let chat = root.join("tiny-chat");
        let gguf = root.join("tiny-gguf");
        let embedding = root.join("tiny-embed");
        run(&["make-test-model", "--out", chat.to_str().unwrap()]);
        run(&["make-test-model", "--out", gguf.to_str().unwrap(), "--format", "gguf"]);
        run(&["make-test-model", "--out", embedding.to_str().unwrap(), "--embedding"]);
        Models { root, chat, gguf: gguf.join("model.gguf"), embedding }
    })
}

pub struct Server {
    pub port: u16,
    child: Child,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Server {
    /// Starts `serve` with the test key and `args`, and waits until `/readyz` answers 200.
    pub fn start(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("api-key");
        std::fs::write(&key, format!("{KEY}\n")).unwrap();
        let log = dir.path().join("server.log");
        let port = free_port();
        let child = Command::new(BIN)
            .args(["serve", "--port", &port.to_string(), "--api-key-file", key.to_str().unwrap()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut server = Server { port, child, dir, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("server exited with {status}:\n{}", server.logs());
            }
            if let Ok(r) = server.try_request("GET", "/readyz", &[], None)
                && r.status == 200
            {
                return server;
            }
            assert!(Instant::now() < deadline, "server not ready in 60 s:\n{}", server.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> std::io::Result<Response> {
        request(self.port, method, path, headers, body)
    }

    /// An authenticated JSON request.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        let auth = format!("Bearer {KEY}");
        self.try_request(
            method,
            path,
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            bytes.as_deref(),
        )
        .unwrap()
    }

    pub fn post(&self, path: &str, body: Value) -> Response {
        self.call("POST", path, Some(&body))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// The `data:` payloads of a server-sent-event stream, checking the framing on the way.
    pub fn sse(&self) -> Vec<String> {
        let text = self.text();
        assert!(text.ends_with("\n\n"), "an event stream ends with a blank line: {text:?}");
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                e.strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("event without data: {e:?}"))
                    .to_string()
            })
            .collect()
    }
}

/// One HTTP/1.1 request on a fresh connection, read to the end (chunked bodies decoded).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if let Some(b) = body {
        // A server may answer (413) before reading everything.
        let _ = stream.write_all(b);
    }
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim(), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(Response { status, headers, body })
}

pub fn chat(model: &str, content: &str, extra: Value) -> Value {
    let mut body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 12});
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            body[k] = v;
        }
    }
    body
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

pub fn contains_bytes(path: &Path, needle: &[u8]) -> bool {
    std::fs::read(path).map(|b| b.windows(needle.len()).any(|w| w == needle)).unwrap_or(false)
}
