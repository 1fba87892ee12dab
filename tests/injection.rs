//! Header injection and malformed requests on every HTTP surface of the product (issue 24 §3):
//! the gateway's public port (TLS) and its metrics port, the dashboard (signed in), an
//! instance's own port, and the operator's. Each gets the same raw requests, byte for byte as an
//! attacker would send them: CR and LF encoded into the path, the query and the Host, raw CR, LF
//! and NUL inside header values, a folded header line, a space in a header name, and CR LF in a
//! JSON string. None may set a header of its choosing or a cookie, none may get a 5xx or a
//! connection closed without an answer, and every server answers its probe afterwards.

use std::path::Path;
use std::time::Duration;

use alcove_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One port to attack: where, with what credentials, and a path it serves.
struct Surface {
    name: &'static str,
    addr: String,
    tls_ca: Option<std::path::PathBuf>,
    /// Headers that get a request past authentication (a key, a session cookie).
    auth: String,
    path: String,
    probe: String,
}

/// Sends `request` as bytes and reads the answer until the server closes (the requests say
/// `Connection: close`).
async fn raw(addr: &str, tls_ca: Option<&Path>, request: &[u8]) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut answer = Vec::new();
    let read = async {
        match tls_ca {
            Some(ca) => {
                let config = alcove_testkit::tls_client_trusting(
                    &std::fs::read_to_string(ca).expect("the gateway's CA"),
                );
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                let mut tls =
                    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.expect("TLS");
                tls.write_all(request).await.unwrap();
                let _ = tls.read_to_end(&mut answer).await;
            }
            None => {
                let mut tcp = tcp;
                tcp.write_all(request).await.unwrap();
                let _ = tcp.read_to_end(&mut answer).await;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), read).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The attacks: (what, the request's bytes) for a surface.
fn attacks(s: &Surface) -> Vec<(&'static str, Vec<u8>)> {
    let (path, auth, host) = (&s.path, &s.auth, &s.addr);
    let get = |target: &str, extra: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{auth}{extra}Connection: close\r\n\r\n")
            .into_bytes()
    };
    let body = r#"{"model": "chat\r\nX-Injected: yes", "messages": [{"role": "user", "content": "a\r\nX-Injected: yes"}], "max_tokens": 2}"#;
    vec![
        ("CR LF encoded in the path", get(&format!("{path}%0d%0aX-Injected:%20yes"), "")),
        (
            "CR LF encoded in the query",
            get(&format!("{path}?notice=%0d%0aSet-Cookie:%20injected=yes&c=%0d%0a"), ""),
        ),
        (
            "CR LF encoded in the Host",
            format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1%0d%0aX-Injected:%20yes\r\n{auth}Connection: close\r\n\r\n"
            )
            .into_bytes(),
        ),
        ("a raw CR in a header value", get(path, "X-Request-Id: a\rX-Injected: yes\r\n")),
        ("a raw LF in a header value", get(path, "X-Request-Id: a\nX-Injected: yes\r\n")),
        ("a NUL in a header value", get(path, "X-Forwarded-For: 10.0.0.1\0X-Injected: yes\r\n")),
        ("a folded header line", get(path, "X-Request-Id: a\r\n X-Injected: yes\r\n")),
        ("a space in a header name", get(path, "X Injected: yes\r\n")),
        (
            "CR LF in a JSON string",
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_sets_a_header_or_breaks_a_server_on_any_http_surface() {
    let (p, gw, d) = customers_world().await;
    p.ok(&["apply", "-f", &example("good/instance-safetensors.yaml")]).await;
    p.wait_condition("inst/chat -n tenant-startup", "Ready", 120).await;
    let key = api_key(&p, "tenant-startup", "chat").await;
    gw.learn_key(&p, &key).await;
    // The instance's own port, as the node reaches it (devcluster maps it to a loopback port).
    let pods = ["get", "pods", "-n", "tenant-startup", "-l", "alcove.dev/instance=chat"];
    let uid = p.jsonpath(&pods, "{.items[0].metadata.uid}").await;
    let port = p.jsonpath(&pods, "{.items[0].spec.containers[0].ports[0].containerPort}").await;
    let instance_port =
        p.cluster.shared().runtime.host_port(&uid, port.parse().unwrap()).expect("a host port");
    let alice = d.sign_in("alice@startup.example", 0).await;
    let jar = std::fs::read_to_string(&alice.jar).unwrap();
    // Netscape cookie-jar lines: domain, flag, path, secure, expiry, name, value.
    let cookie = jar
        .lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .find(|f| f.len() == 7)
        .map(|f| format!("{}={}", f[5], f[6]))
        .expect("a session cookie");
    let host = |url: &str| url.split("://").nth(1).unwrap().split('/').next().unwrap().to_string();
    let bearer = format!("Authorization: Bearer {key}\r\n");
    let surfaces = [
        Surface {
            name: "gateway",
            addr: host(&gw.base),
            tls_ca: Some(gw.ca.clone()),
            auth: bearer.clone(),
            path: "/v1/models".into(),
            probe: format!("{}/readyz", gw.metrics),
        },
        Surface {
            name: "gateway metrics",
            addr: host(&gw.metrics),
            tls_ca: None,
            auth: String::new(),
            path: "/metrics".into(),
            probe: format!("{}/readyz", gw.metrics),
        },
        Surface {
            name: "dashboard",
            addr: host(&d.url),
            tls_ca: None,
            auth: format!("Cookie: {cookie}\r\n"),
            path: "/t/startup/i/chat".into(),
            probe: format!("{}/readyz", d.url),
        },
        Surface {
            name: "instance",
            addr: format!("127.0.0.1:{instance_port}"),
            tls_ca: None,
            auth: bearer,
            path: "/v1/models".into(),
            probe: format!("http://127.0.0.1:{instance_port}/healthz"),
        },
        Surface {
            name: "operator",
            addr: host(&p.operators[0].http),
            tls_ca: None,
            auth: String::new(),
            path: "/metrics".into(),
            probe: format!("{}/healthz", p.operators[0].http),
        },
    ];

    let mut tried = 0;
    for s in &surfaces {
        // The credentials work: an attack is refused for what it is, not for want of them.
        let fine = raw(
            &s.addr,
            s.tls_ca.as_deref(),
            format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\n{}Connection: close\r\n\r\n",
                s.path, s.addr, s.auth
            )
            .as_bytes(),
        )
        .await;
        assert!(fine.starts_with("HTTP/1.1 200"), "{}: {fine}", s.name);
        for (what, request) in attacks(s) {
            let answer = raw(&s.addr, s.tls_ca.as_deref(), &request).await;
            let (status, headers, _) = split_response(&answer);
            assert!(
                (200..500).contains(&status),
                "{} / {what}: an answer below 500, got {status}: {answer}",
                s.name
            );
            for (name, value) in &headers {
                assert!(
                    name != "x-injected" && !(name == "set-cookie" && value.contains("injected")),
                    "{} / {what}: the request set a header: {answer}",
                    s.name
                );
            }
            tried += 1;
        }
        assert!(curl(&s.probe).await.is_some(), "{} still answers {}", s.name, s.probe);
    }
    assert_eq!(tried, surfaces.len() * 9);
    // The gateway and the dashboard still serve their users.
    assert_eq!(
        gw.call("/models", &[("Authorization", &format!("Bearer {key}"))], None).await.status,
        200
    );
    assert_eq!(alice.get("/t/startup/i/chat").await.status, 200);

    // --- upload names: the dashboard's document form, as raw multipart ---
    let csrf = alice.get("/t/startup/kb").await.csrf();
    let upload = |path: &str, file_name: &str, extra: &str| {
        let b = "alcove-boundary-7";
        let body = format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n{extra}--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\nContent-Type: text/markdown\r\n\r\n# Leave\n25 days.\r\n--{b}--\r\n"
        );
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nOrigin: {origin}\r\nContent-Type: multipart/form-data; boundary={b}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len(),
            host = host(&d.url),
            origin = d.url,
        );
        let addr = host(&d.url);
        async move { raw(&addr, None, request.as_bytes()).await }
    };
    let name_field =
        "--alcove-boundary-7\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\ndocs\r\n";
    let created = upload("/t/startup/kb", "../../../../etc/passwd.md", name_field).await;
    assert!(created.starts_with("HTTP/1.1 303"), "{created}");
    let hostile = [
        "..\\..\\Windows\\win.ini.txt",
        "/etc/shadow.md",
        "....md",
        ".bashrc.md",
        "%2e%2e%2fescape.md",
        "名前.md",
        "a\r\nX-Injected: yes.md",
        "x.md\0.sh",
        &format!("{}.md", "a".repeat(300)),
    ];
    let mut accepted = 0;
    for file_name in hostile {
        let answer = upload("/t/startup/kb/docs/upload", file_name, "").await;
        let (status, headers, body) = split_response(&answer);
        accepted += usize::from(status == 303);
        assert!(status == 303 || (status == 400 || status == 422), "{file_name:?}: {answer}");
        if status == 422 {
            assert!(
                body.contains(r#"id="file-error""#),
                "{file_name:?}: the error by the field: {body}"
            );
        }
        assert!(!headers.iter().any(|(k, _)| k == "x-injected"), "{file_name:?}: {answer}");
    }
    let data =
        p.json(&["get", "configmap", "docs-uploads", "-n", "tenant-startup"]).await["data"].clone();
    let keys: Vec<&String> = data.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 1 + accepted, "one document per accepted upload: {keys:?}");
    assert!(keys.iter().any(|k| *k == "passwd.md"), "{keys:?}");
    // multipart may read `\\` in a quoted name as an escape: either way, the last segment.
    assert!(keys.iter().any(|k| k.ends_with("win.ini.txt")), "{keys:?}");
    for k in &keys {
        assert!(
            !k.starts_with('.')
                && k.len() <= 200
                && k.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)),
            "{k:?} could leave the uploads folder or is no ConfigMap key"
        );
    }
}
