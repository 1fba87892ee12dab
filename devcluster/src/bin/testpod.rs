//! A tiny program for devcluster's own tests to run as a pod's container:
//!
//! - `testpod serve --port N [--text T] [--file F]`: HTTP server answering every path with T (or
//!   the contents of F), `/healthz` with `ok`; exits 0 on SIGTERM.
//! - `testpod exit --code N [--after-ms M] [--write F --text T]`: optionally writes a file, waits, exits.
//! - `testpod sleep`: sleeps until killed, ignoring SIGTERM (to exercise grace-period SIGKILL).
//! - `testpod connect ADDR:PORT...`: tries a TCP connection to each (2 s each) and prints
//!   `ADDR:PORT open` or `ADDR:PORT closed`, one line each; exits 0 (network-policy tests).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(&args),
        Some("exit") => {
            if let (Some(f), Some(t)) = (arg(&args, "--write"), arg(&args, "--text")) {
                std::fs::write(f, t).expect("write");
            }
            if let Some(ms) = arg(&args, "--after-ms").and_then(|m| m.parse().ok()) {
                std::thread::sleep(Duration::from_millis(ms));
            }
            println!("exiting");
            std::process::exit(arg(&args, "--code").and_then(|c| c.parse().ok()).unwrap_or(0));
        }
        Some("connect") => {
            for target in &args[1..] {
                let open = target.parse::<std::net::SocketAddr>().is_ok_and(|a| {
                    std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok()
                });
                println!("{target} {}", if open { "open" } else { "closed" });
            }
        }
        Some("sleep") => {
            // SAFETY: ignoring SIGTERM; the kubelet must escalate to SIGKILL.
            #[allow(unsafe_code)]
            unsafe {
                libc::signal(libc::SIGTERM, libc::SIG_IGN);
            }
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        _ => {
            eprintln!("usage: testpod serve|exit|sleep|connect ...");
            std::process::exit(2);
        }
    }
}

fn serve(args: &[String]) {
    let port: u16 = arg(args, "--port").and_then(|p| p.parse().ok()).unwrap_or(8080);
    let host = arg(args, "--host").unwrap_or_else(|| "127.0.0.1".into());
    let listener = TcpListener::bind((host.as_str(), port)).expect("bind");
    println!("serving on {host}:{port}");
    std::io::stdout().flush().ok();
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        let mut buf = [0u8; 8192];
        let n = s.read(&mut buf).unwrap_or(0);
        let req = String::from_utf8_lossy(&buf[..n]);
        let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
        let body = if path == "/healthz" {
            "ok".to_string()
        } else if let Some(f) = arg(args, "--file") {
            std::fs::read_to_string(f).unwrap_or_else(|e| format!("error: {e}"))
        } else {
            let auth = req
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                .is_some();
            format!(
                "{} path={path} authorization-forwarded={auth}",
                arg(args, "--text").unwrap_or_else(|| "hello".into())
            )
        };
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}
