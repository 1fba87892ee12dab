//! `alcove-inference index` and retrieval in `serve`, end to end.

mod support;

use std::path::Path;

use alcove_testkit::serve_pages;
use serde_json::{Value, json};
use support::*;

fn write_docs(dir: &Path, docs: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in docs {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

fn index(docs: &Path, out: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "index",
        "--embedding-model",
        models().embedding.to_str().unwrap(),
        "--docs",
        docs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(run(&args).trim()).unwrap()
}

const HANDBOOK: &[(&str, &str)] = &[
    (
        "vacation.md",
        "# Vacation\n\nEvery employee has 28 days of paid vacation per year. Unused days carry over until March.",
    ),
    (
        "expenses.md",
        "# Expenses\n\nSubmit receipts within 30 days. Travel is booked through the internal portal.",
    ),
    (
        "policies/security.txt",
        "Laptops must use full-disk encryption. Report a lost device to security within one hour.",
    ),
];

#[test]
fn an_index_feeds_retrieval_and_responses_name_their_sources() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    let out = dir.path().join("handbook");
    write_docs(&docs, HANDBOOK);
    let summary = index(&docs, &out, &[]);
    assert_eq!(summary["documents"], 3);
    assert_eq!(summary["chunks"], 3);
    assert_eq!(summary["embedded"], 3);
    assert_eq!(summary["sourceHash"].as_str().unwrap().len(), 64);

    let s = Server::start(&[
        "--model",
        models().chat.to_str().unwrap(),
        "--model-id",
        "tiny",
        "--embedding-model",
        models().embedding.to_str().unwrap(),
        "--kb",
        out.to_str().unwrap(),
        "--kb-top-k",
        "2",
    ]);
    let with = s.post(
        "/v1/chat/completions",
        chat("tiny", "How many vacation days do I get?", json!({"max_tokens": 3})),
    );
    assert_eq!(with.status, 200, "{}", with.text());
    let v = with.json();
    let sources = v["sources"].as_array().expect("sources in the response");
    assert_eq!(sources.len(), 2, "top-k");
    let known: Vec<&str> = HANDBOOK.iter().map(|(n, _)| *n).collect();
    for src in sources {
        assert_eq!(src["knowledge_base"], "handbook");
        assert!(known.contains(&src["document"].as_str().unwrap()), "{src}");
        assert_eq!(src["chunk"], 0);
        assert!(src["score"].as_f64().unwrap() <= 1.0001);
    }
    assert!(sources[0]["score"].as_f64() >= sources[1]["score"].as_f64(), "best first");

    // The excerpts are in the prompt: compare with the same question on a server without the KB.
    let plain = Server::start(&["--model", models().chat.to_str().unwrap(), "--model-id", "tiny"]);
    let without = plain
        .post(
            "/v1/chat/completions",
            chat("tiny", "How many vacation days do I get?", json!({"max_tokens": 3})),
        )
        .json();
    assert!(
        v["usage"]["prompt_tokens"].as_u64().unwrap()
            > without["usage"]["prompt_tokens"].as_u64().unwrap() + 20
    );
    assert!(without.get("sources").is_none());

    // Streaming carries the sources in its first chunk.
    let r = s.post(
        "/v1/chat/completions",
        chat("tiny", "What about lost laptops?", json!({"max_tokens": 2, "stream": true})),
    );
    let first: Value = serde_json::from_str(&r.sse()[0]).unwrap();
    assert_eq!(first["sources"].as_array().unwrap().len(), 2);

    // Re-indexing while serving: the server reads the new index at the next request.
    std::fs::remove_file(docs.join("vacation.md")).unwrap();
    std::fs::remove_file(docs.join("expenses.md")).unwrap();
    index(&docs, &out, &[]);
    let v = s
        .post(
            "/v1/chat/completions",
            chat("tiny", "How many vacation days do I get?", json!({"max_tokens": 2})),
        )
        .json();
    let docs_now: Vec<&str> =
        v["sources"].as_array().unwrap().iter().map(|s| s["document"].as_str().unwrap()).collect();
    assert_eq!(docs_now, vec!["policies/security.txt"]);
}

#[test]
fn reindexing_drops_removed_documents_and_reuses_unchanged_ones() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    let out = dir.path().join("kb");
    let marker = "MARKER-7f3a-REMOVED";
    let mut set: Vec<(&str, String)> = HANDBOOK.iter().map(|(n, t)| (*n, t.to_string())).collect();
    set.push((
        "leaving.md",
        format!("When you leave, return your badge. {marker} ")
            + &"Hand over all keys and documents. ".repeat(40),
    ));
    write_docs(&docs, &set.iter().map(|(n, t)| (*n, t.as_str())).collect::<Vec<_>>());
    let first = index(&docs, &out, &["--chunk-chars", "200", "--overlap-chars", "40"]);
    assert_eq!(first["documents"], 4);
    assert!(first["chunks"].as_u64().unwrap() > 4, "the long document is split: {first}");
    assert!(files_under(&out).iter().any(|f| contains_bytes(f, marker.as_bytes())));

    // Unchanged sources: nothing is embedded again, the hash is stable.
    let again = index(&docs, &out, &["--chunk-chars", "200", "--overlap-chars", "40"]);
    assert_eq!(again["reused"], 4);
    assert_eq!(again["embedded"], 0);
    assert_eq!(again["sourceHash"], first["sourceHash"]);

    std::fs::remove_file(docs.join("leaving.md")).unwrap();
    std::fs::write(docs.join("expenses.md"), "# Expenses\n\nReceipts within 60 days now.").unwrap();
    let after = index(&docs, &out, &["--chunk-chars", "200", "--overlap-chars", "40"]);
    assert_eq!(after["documents"], 3);
    assert_eq!(after["removed"], 1);
    assert_eq!(after["embedded"], 1, "only the edited document");
    assert_eq!(after["reused"], 2);
    assert_ne!(after["sourceHash"], first["sourceHash"]);
    for f in files_under(&out) {
        assert!(
            !contains_bytes(&f, marker.as_bytes()),
            "{} still holds the removed document",
            f.display()
        );
    }
    assert_eq!(
        files_under(&out).len(),
        1,
        "one index file, no temporaries left: {:?}",
        files_under(&out)
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    let ids: Vec<&str> =
        index["documents"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["expenses.md", "policies/security.txt", "vacation.md"]);
    assert!(
        index["documents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["sha256"].as_str().unwrap().len() == 64)
    );
    assert!(
        index["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["text"].as_str().unwrap().contains("60 days"))
    );
}

#[test]
fn a_reader_never_sees_half_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let docs_a = dir.path().join("a");
    let docs_b = dir.path().join("b");
    let out = dir.path().join("kb");
    write_docs(&docs_a, HANDBOOK);
    let long: Vec<(String, String)> =
        (0..30).map(|i| (format!("doc{i}.md"), format!("Document {i}. ").repeat(60))).collect();
    write_docs(&docs_b, &long.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect::<Vec<_>>());
    index(&docs_a, &out, &[]);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let reads = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let bytes =
                    std::fs::read(out.join("index.json")).expect("the index is always there");
                let v: Value = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("a partial index was visible: {e}"));
                let docs = v["documents"].as_array().unwrap().len();
                assert!(docs == 3 || docs == 30, "{docs} documents: a mix of two indexes");
                reads += 1;
            }
            reads
        });
        for i in 0..6 {
            index(if i % 2 == 0 { &docs_b } else { &docs_a }, &out, &[]);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap()
    });
    assert!(reads > 10, "the reader ran concurrently ({reads} reads)");
}

#[test]
fn an_index_built_with_another_embedding_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    let out = dir.path().join("kb");
    write_docs(&docs, HANDBOOK);
    index(&docs, &out, &[]);
    let other = dir.path().join("other-embed");
    run(&["make-test-model", "--out", other.to_str().unwrap(), "--embedding", "--seed", "9"]);
    let key = dir.path().join("key");
    std::fs::write(&key, "k").unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--port",
            &free_port().to_string(),
            "--api-key-file",
            key.to_str().unwrap(),
        ])
        .args([
            "--model",
            models().chat.to_str().unwrap(),
            "--embedding-model",
            other.to_str().unwrap(),
            "--kb",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("re-index with the same model"), "{err}");

    // And --kb without an embedding model is a usage error.
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--port",
            "0",
            "--api-key-file",
            key.to_str().unwrap(),
            "--model",
            models().chat.to_str().unwrap(),
            "--kb",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kb needs --embedding-model"));
}

#[test]
fn url_sources_are_fetched_with_redirects_and_errors_name_the_url() {
    let port = serve_pages(vec![
        (
            "/guide/returns.md",
            200,
            "",
            "Returns are accepted within 30 days. Marker: ZEBRA-URL-77.",
        ),
        ("/old", 301, "location: /guide/returns.md", ""),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    write_docs(&docs, HANDBOOK);
    let out = dir.path().join("kb");
    let named = format!("extra={}", docs.join("policies").display());
    let summary = index(
        &docs,
        &out,
        &["--url", &format!("web=http://127.0.0.1:{port}/old"), "--docs", &named],
    );
    assert_eq!(summary["documents"].as_u64().unwrap() as usize, HANDBOOK.len() + 2, "{summary}");
    let written = std::fs::read_to_string(out.join("index.json")).unwrap();
    assert!(
        written.contains("\"web/returns.md\""),
        "the fetched document is named <source>/<file>"
    );
    assert!(written.contains("\"extra/security.txt\""), "NAME=DIR prefixes the ids");
    assert!(written.contains("ZEBRA-URL-77"));

    // A missing page fails the run, names the URL, and leaves the previous index in place.
    let out2 = std::process::Command::new(BIN)
        .args([
            "index",
            "--embedding-model",
            models().embedding.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--url", &format!("web=http://127.0.0.1:{port}/gone")])
        .output()
        .unwrap();
    assert!(!out2.status.success());
    let err = String::from_utf8_lossy(&out2.stderr);
    assert!(err.contains(&format!("http://127.0.0.1:{port}/gone")) && err.contains("404"), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("index.json")).unwrap(), written);

    // A malformed flag is a usage error.
    let out3 = std::process::Command::new(BIN)
        .args([
            "index",
            "--embedding-model",
            models().embedding.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--url",
            "nonsense",
        ])
        .output()
        .unwrap();
    assert!(!out3.status.success());
    assert!(String::from_utf8_lossy(&out3.stderr).contains("expected NAME=URL"));
}
