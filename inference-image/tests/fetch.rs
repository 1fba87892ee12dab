//! `fetch` against loopback sources: plain HTTP and HTTPS files, a fake model hub, and the
//! failures an instance must report (not found, wrong digest, refused credentials, too large,
//! private addresses), resuming a cut download, and two fetches sharing one download.

use std::path::Path;
use std::time::Duration;

use alcove_inference::fetch::{self, Format, Options, Reason};
use alcove_testkit::model_server::{HubRepo, ModelServer, Options as ServerOptions, sha256_hex};

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn opts(uri: String, cache: &Path, format: Format) -> Options {
    Options {
        uri,
        cache: cache.to_path_buf(),
        format,
        path: None,
        sha256: None,
        credentials: None,
        hub_endpoint: String::new(),
        s3: Default::default(),
        allow_private_addresses: true,
        max_bytes: None,
        progress_every: Duration::from_secs(1),
        extra_ca_pem: None,
    }
}

fn served(cache: &Path, link: &str) -> Vec<u8> {
    std::fs::read(cache.join(fetch::CURRENT).join(link)).unwrap()
}

#[tokio::test]
async fn an_http_file_is_fetched_once_verified_and_then_reused() {
    let weights = bytes(300_000, 1);
    let server = ModelServer::start(ServerOptions {
        files: vec![("/m/tiny.gguf".into(), weights.clone())],
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let mut o = opts(format!("{}/m/tiny.gguf", server.base), cache.path(), Format::Gguf);
    o.sha256 = Some(sha256_hex(&weights).to_uppercase());
    let first = fetch::run(&o).await.unwrap();
    assert!(!first.reused);
    assert_eq!(first.downloaded, weights.len() as u64);
    assert_eq!(served(cache.path(), fetch::MODEL_LINK_GGUF), weights);
    let manifest: fetch::Manifest = serde_json::from_slice(
        &std::fs::read(cache.path().join(&first.revision).join(fetch::MANIFEST)).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest.files[0].sha256, sha256_hex(&weights));
    let again = fetch::run(&o).await.unwrap();
    assert!(again.reused, "{again:?}");
    assert_eq!(server.gets("/m/tiny.gguf"), 1, "the second run downloads nothing");
}

#[tokio::test]
async fn a_wrong_digest_fails_naming_the_file_and_both_digests_and_serves_nothing() {
    let weights = bytes(50_000, 2);
    let server = ModelServer::start(ServerOptions {
        files: vec![("/bad.gguf".into(), weights.clone())],
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let mut o = opts(format!("{}/bad.gguf", server.base), cache.path(), Format::Gguf);
    let want = "ab".repeat(32);
    o.sha256 = Some(want.clone());
    let f = fetch::run(&o).await.unwrap_err();
    assert_eq!(f.reason, Reason::ChecksumMismatch);
    assert!(f.message.contains("bad.gguf"), "{}", f.message);
    assert!(
        f.message.contains(&want) && f.message.contains(&sha256_hex(&weights)),
        "{}",
        f.message
    );
    assert!(f.reason.permanent());
    assert!(!cache.path().join(fetch::CURRENT).exists());
}

#[tokio::test]
async fn not_found_refused_credentials_and_too_large_name_the_uri() {
    let server = ModelServer::start(ServerOptions {
        files: vec![("/big.gguf".into(), bytes(10_000, 3))],
        require_header: Some(("authorization".into(), "Bearer s3cret".into())),
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("header"), "Authorization: Bearer s3cret\n").unwrap();

    let uri = format!("{}/big.gguf", server.base);
    let f = fetch::run(&opts(uri.clone(), cache.path(), Format::Gguf)).await.unwrap_err();
    assert_eq!(f.reason, Reason::AuthRefused, "{f:?}");
    assert!(f.message.contains(&uri) && f.message.contains("401"), "{}", f.message);

    let mut o = opts(format!("{}/missing.gguf", server.base), cache.path(), Format::Gguf);
    o.credentials = Some(creds.path().to_path_buf());
    let f = fetch::run(&o).await.unwrap_err();
    assert_eq!(f.reason, Reason::NotFound);
    assert!(f.message.contains("/missing.gguf") && f.message.contains("404"), "{}", f.message);

    let mut o = opts(uri.clone(), cache.path(), Format::Gguf);
    o.credentials = Some(creds.path().to_path_buf());
    o.max_bytes = Some(4_000);
    let f = fetch::run(&o).await.unwrap_err();
    assert_eq!(f.reason, Reason::TooLarge);
    assert!(f.message.contains("10000 bytes"), "{}", f.message);
    assert_eq!(server.gets("/big.gguf"), 0, "the size was checked before downloading");

    o.max_bytes = None;
    fetch::run(&o).await.unwrap();
}

#[tokio::test]
async fn private_addresses_are_refused_unless_allowed() {
    let server = ModelServer::start(ServerOptions {
        files: vec![("/m.gguf".into(), bytes(1000, 4))],
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    for uri in [
        format!("{}/m.gguf", server.base),
        format!("http://localhost:{}/m.gguf", server.port),
        "http://169.254.169.254/latest/meta-data".to_string(),
    ] {
        let mut o = opts(uri.clone(), cache.path(), Format::Gguf);
        o.allow_private_addresses = false;
        let f = fetch::run(&o).await.unwrap_err();
        assert_eq!(f.reason, Reason::Refused, "{uri}: {f:?}");
        assert!(f.message.contains("private"), "{}", f.message);
    }
    assert_eq!(server.gets("/m.gguf"), 0);
}

#[tokio::test]
async fn a_cut_download_resumes_where_it_stopped() {
    let weights = bytes(200_000, 5);
    let server = ModelServer::start(ServerOptions {
        files: vec![("/cut.gguf".into(), weights.clone())],
        cut_first_download: true,
        https: true,
        bytes_per_second: 400_000,
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let mut o = opts(format!("{}/cut.gguf", server.base), cache.path(), Format::Gguf);
    o.extra_ca_pem = server.ca_pem.clone();
    let f = fetch::run(&o).await.unwrap_err();
    assert_eq!(f.reason, Reason::Network, "{f:?}");
    assert!(!f.reason.permanent());
    let sent = server.bytes_sent();
    assert_eq!(sent, weights.len() as u64 / 2);
    let done = fetch::run(&o).await.unwrap();
    assert_eq!(done.downloaded, weights.len() as u64 / 2, "only the rest was fetched");
    assert_eq!(server.bytes_sent(), weights.len() as u64);
    assert_eq!(served(cache.path(), fetch::MODEL_LINK_GGUF), weights);
}

#[tokio::test]
async fn two_fetches_of_one_source_download_once() {
    let weights = bytes(600_000, 6);
    let server = ModelServer::start(ServerOptions {
        files: vec![("/shared.gguf".into(), weights.clone())],
        bytes_per_second: 1_000_000,
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let o = opts(format!("{}/shared.gguf", server.base), cache.path(), Format::Gguf);
    let (a, b) = tokio::join!(fetch::run(&o), fetch::run(&o));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(server.gets("/shared.gguf"), 1);
    assert!(a.reused != b.reused, "{a:?} {b:?}");
    assert_eq!(served(cache.path(), fetch::MODEL_LINK_GGUF), weights);
}

#[tokio::test]
async fn https_needs_the_platforms_ca() {
    let weights = bytes(20_000, 7);
    let server = ModelServer::start(ServerOptions {
        files: vec![("/tls.gguf".into(), weights.clone())],
        https: true,
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let mut o = opts(format!("{}/tls.gguf", server.base), cache.path(), Format::Gguf);
    let f = fetch::run(&o).await.unwrap_err();
    assert_eq!(f.reason, Reason::Network, "{f:?}");
    assert!(f.message.to_lowercase().contains("certificate"), "{}", f.message);
    o.extra_ca_pem = server.ca_pem.clone();
    fetch::run(&o).await.unwrap();
    assert_eq!(served(cache.path(), fetch::MODEL_LINK_GGUF), weights);
}

#[tokio::test]
async fn the_hub_serves_a_revision_with_a_token_and_checks_every_file() {
    let files = vec![
        ("config.json".to_string(), b"{\"a\":1}".to_vec()),
        ("tokenizer.json".to_string(), b"{\"t\":1}".to_vec()),
        ("model.safetensors".to_string(), bytes(70_000, 8)),
        ("README.md".to_string(), b"not fetched".to_vec()),
        ("q4.gguf".to_string(), bytes(3000, 9)),
        ("q8.gguf".to_string(), bytes(4000, 10)),
    ];
    let commit = "0123456789abcdef0123456789abcdef01234567".to_string();
    let server = ModelServer::start(ServerOptions {
        hub: vec![HubRepo {
            name: "acme/tiny".into(),
            commit: commit.clone(),
            files: files.clone(),
        }],
        require_header: Some(("authorization".into(), "Bearer hub-token".into())),
        ..Default::default()
    });
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("token"), "hub-token").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut o = opts("hf://acme/tiny".into(), cache.path(), Format::Safetensors);
    o.hub_endpoint = server.base.clone();
    let f = fetch::run(&o).await.unwrap_err();
    assert_eq!(f.reason, Reason::AuthRefused, "{f:?}");
    o.credentials = Some(creds.path().to_path_buf());
    let done = fetch::run(&o).await.unwrap();
    assert_eq!(done.revision, commit);
    let dir = cache.path().join(fetch::CURRENT).join(fetch::MODEL_LINK_DIR);
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), files[2].1);
    assert!(dir.join("config.json").exists() && dir.join("tokenizer.json").exists());
    assert!(!dir.join("README.md").exists(), "only what a model needs");

    let cache = tempfile::tempdir().unwrap();
    let mut g = opts(format!("hf://acme/tiny@{commit}"), cache.path(), Format::Gguf);
    g.hub_endpoint = server.base.clone();
    g.credentials = Some(creds.path().to_path_buf());
    let f = fetch::run(&g).await.unwrap_err();
    assert_eq!(f.reason, Reason::Refused);
    assert!(
        f.message.contains("q4.gguf, q8.gguf") && f.message.contains("spec.model.path"),
        "{}",
        f.message
    );
    g.path = Some("q8.gguf".into());
    fetch::run(&g).await.unwrap();
    assert_eq!(served(cache.path(), fetch::MODEL_LINK_GGUF), files[5].1);

    g.uri = "hf://acme/tiny@v9".into();
    let f = fetch::run(&g).await.unwrap_err();
    assert_eq!(f.reason, Reason::NotFound, "{f:?}");
    assert!(f.message.contains("hf://acme/tiny@v9"), "{}", f.message);
}

/// End to end across addresses that are not loopback: the real `alcove-inference fetch` runs in
/// a network namespace of the test's own, where a public host (198.51.100.2, a documentation
/// range nothing counts as private) redirects into a private host (10.0.0.1), to the cloud
/// metadata address, to its own origin, and to another public origin (198.51.100.3) that takes
/// the same credentials.
#[test]
fn redirects_into_private_addresses_and_credentials_across_origins_end_to_end() {
    use alcove_testkit::netns::TestNetns;
    let ns = TestNetns::new(&["198.51.100.2", "198.51.100.3", "10.0.0.1"]);
    let at = |addr: &str| Some(ns.listen(addr.parse().unwrap()));
    let weights = bytes(5_000, 9);
    let auth = || Some(("authorization".to_string(), "Bearer s3cret".to_string()));
    let private = ModelServer::start(ServerOptions {
        files: vec![("/m.gguf".into(), weights.clone())],
        listener: at("10.0.0.1:8080"),
        ..Default::default()
    });
    let other = ModelServer::start(ServerOptions {
        files: vec![("/creds.gguf".into(), weights.clone())],
        require_header: auth(),
        listener: at("198.51.100.3:8080"),
        ..Default::default()
    });
    let public = ModelServer::start(ServerOptions {
        files: vec![("/here.gguf".into(), weights.clone())],
        require_header: auth(),
        redirects: [
            ("/private.gguf", "http://10.0.0.1:8080/m.gguf"),
            ("/metadata.gguf", "http://169.254.169.254/latest/meta-data"),
            ("/same.gguf", "http://198.51.100.2:8080/here.gguf"),
            ("/elsewhere.gguf", "http://198.51.100.3:8080/creds.gguf"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .to_vec(),
        listener: at("198.51.100.2:8080"),
        ..Default::default()
    });
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("header"), "Authorization: Bearer s3cret\n").unwrap();
    let fetch = |path: &str| -> (Option<i32>, String) {
        let cache = tempfile::tempdir().unwrap();
        let report = cache.path().join("termination-log");
        let out = ns
            .command(env!("CARGO_BIN_EXE_alcove-inference"))
            .args(["fetch", "--format", "gguf", "--uri"])
            .arg(format!("{}{path}", public.base))
            .arg("--cache")
            .arg(cache.path().join("models"))
            .arg("--credentials")
            .arg(creds.path())
            .arg("--termination-log")
            .arg(&report)
            .output()
            .unwrap();
        (out.status.code(), std::fs::read_to_string(&report).unwrap_or_default())
    };

    // Its own origin: the credentials go along (the server refuses without them), the file comes.
    assert_eq!(fetch("/same.gguf"), (Some(0), String::new()));
    assert!(public.gets("/here.gguf") >= 1);
    // Into the private host and to the metadata address: refused before connecting.
    for path in ["/private.gguf", "/metadata.gguf"] {
        let (code, report) = fetch(path);
        assert_eq!(code, Some(2), "{path}: {report}");
        assert!(report.contains("private, loopback or link-local"), "{path}: {report}");
    }
    assert_eq!(private.gets("/m.gguf"), 0, "the private host was never asked");
    // Another origin: the credentials stay behind, so it answers 401.
    let (code, report) = fetch("/elsewhere.gguf");
    assert_eq!(code, Some(2), "{report}");
    assert!(report.contains("401"), "{report}");
    assert_eq!(other.gets("/creds.gguf"), 0, "it never saw the credentials");
    assert!(public.gets("/elsewhere.gguf") >= 1, "the first hop, with them, was answered");
}
