//! The KnowledgeBase controller end to end on devcluster: real indexing Jobs running
//! `alcove-inference index` onto the tenant's volume, instances answering with sources from it,
//! removed documents gone from the disk, and the refusals (another namespace, the free tier).

use std::path::{Path, PathBuf};
use std::time::Duration;

use alcove_tests::*;
use base64::Engine;
use serde_json::{Value, json};

/// The host directory behind a PVC (devcluster's hostPath volumes).
async fn volume_dir(p: &Platform, ns: &str, claim: &str) -> PathBuf {
    let pv = p.jsonpath(&["get", "pvc", claim, "-n", ns], "{.spec.volumeName}").await;
    assert!(!pv.is_empty(), "{claim} is bound");
    PathBuf::from(p.jsonpath(&["get", "pv", &pv], "{.spec.hostPath.path}").await)
}

/// Every file under `dir` (hidden ones too) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_containing(&path, needle));
        } else if std::fs::read(&path)
            .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        {
            out.push(path);
        }
    }
    out
}

async fn ask(proxy: &KubectlProxy, key: &str, question: &str) -> Value {
    let url = format!(
        "{}/api/v1/namespaces/tenant-startup/services/assistant:80/proxy/v1/chat/completions",
        proxy.base
    );
    let body = json!({"model": "assistant", "messages": [{"role": "user", "content": question}], "max_tokens": 4, "temperature": 0});
    let (code, text) = http("POST", &url, &[("X-Api-Key", key)], Some(&body.to_string())).await;
    assert_eq!(code, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

const MARKER: &str = "Meals during business travel";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_map_knowledge_base_is_indexed_served_and_forgets_removed_documents() {
    let p = platform_with_operator().await;
    p.ok(&["apply", "-f", &example("good/tenant-basic.yaml")]).await;
    p.ok(&["apply", "-f", &example("good/knowledgebase.yaml")]).await;
    p.wait_condition("kb/handbook -n tenant-startup", "Indexed", 90).await;

    // Two ConfigMap keys and one inline document, reported as <source>/<key>.
    let kb = p.json(&["get", "kb", "handbook", "-n", "tenant-startup"]).await;
    let status = &kb["status"];
    assert_eq!(status["documents"], 3, "{status}");
    assert!(status["chunks"].as_i64().unwrap() >= 3, "{status}");
    assert_eq!(status["phase"], "Ready");
    assert_eq!(status["volume"], "handbook-index");
    let first_hash = status["sourceHash"].as_str().unwrap().to_string();
    assert!(status["indexedAt"].as_str().unwrap().starts_with("20"), "{status}");
    let table = p.ok(&["get", "kb", "-n", "tenant-startup"]).await;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("handbook ") && l.contains(" 3 ") && l.contains("Ready")),
        "{table}"
    );
    p.event_announced("tenant-startup", "Indexed").await;
    // The finished run and its pod go once the status has the summary.
    eventually("indexing job removed", Duration::from_secs(20), || async {
        p.ok(&[
            "get",
            "jobs",
            "-n",
            "tenant-startup",
            "-l",
            "alcove.dev/knowledge-base=handbook",
            "-o",
            "name",
        ])
        .await
        .trim()
        .is_empty()
    })
    .await;

    let dir = volume_dir(&p, "tenant-startup", "handbook-index").await;
    assert!(
        !files_containing(&dir, MARKER).is_empty(),
        "the expenses document is indexed in {}",
        dir.display()
    );

    // An instance using it answers with sources from it.
    p.ok(&["apply", "-f", &example("good/instance-with-kb.yaml")]).await;
    p.wait_condition("inst/assistant -n tenant-startup", "Ready", 90).await;
    let pod = p.json(&["get", "pod", "assistant", "-n", "tenant-startup"]).await;
    let vol = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["persistentVolumeClaim"]["claimName"] == "handbook-index")
        .cloned()
        .unwrap();
    assert_eq!(vol["persistentVolumeClaim"]["readOnly"], true);
    let secret = p.json(&["get", "secret", "assistant-api-key", "-n", "tenant-startup"]).await;
    let key = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(secret["data"]["api-key"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let proxy = p.kubectl_proxy().await;
    let answer = ask(&proxy, &key, "How are meals during business travel reimbursed?").await;
    let sources = answer["sources"].as_array().unwrap_or_else(|| panic!("no sources: {answer}"));
    assert!(!sources.is_empty());
    for s in sources {
        assert_eq!(s["knowledge_base"], "handbook", "{s}");
    }
    let documents: Vec<&str> = sources.iter().filter_map(|s| s["document"].as_str()).collect();
    assert!(
        documents.iter().all(|d| [
            "handbook/vacation.md",
            "handbook/expenses.md",
            "welcome/inline"
        ]
        .contains(d)),
        "{documents:?}"
    );

    // Remove a document: re-indexed, and its text is nowhere on the volume.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "handbook-docs", "namespace": "tenant-startup"},
        "data": {"vacation.md": "# Vacation policy\nEvery employee of Startup Inc. gets 25 days of paid vacation per year.\n"}});
    p.ok_in(&["replace", "-f", "-"], &cm.to_string()).await;
    eventually("re-indexed without the removed document", Duration::from_secs(90), || async {
        let s = p.json(&["get", "kb", "handbook", "-n", "tenant-startup"]).await["status"].clone();
        s["documents"] == 2
            && s["sourceHash"].as_str() != Some(first_hash.as_str())
            && s["phase"] == "Ready"
    })
    .await;
    assert_eq!(
        files_containing(&dir, MARKER),
        Vec::<PathBuf>::new(),
        "no stale copy of the removed document"
    );
    let answer = ask(&proxy, &key, "How are meals during business travel reimbursed?").await;
    assert!(
        answer["sources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["document"] != "handbook/expenses.md"),
        "{answer}"
    );

    // Deleting the KB keeps its volume attached while the instance mounts it; once the instance
    // is gone, the volume is released to retention (tests/retention.rs erases it on time).
    p.ok(&["delete", "kb", "handbook", "-n", "tenant-startup", "--wait=false"]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        p.kubectl(&["get", "kb", "handbook", "-n", "tenant-startup"]).await.0,
        "waits for the instance"
    );
    p.ok(&["delete", "inst", "assistant", "-n", "tenant-startup", "--wait=false"]).await;
    eventually("knowledge base gone, its volume released", Duration::from_secs(30), || async {
        let (found, _, _) = p.kubectl(&["get", "kb", "handbook", "-n", "tenant-startup"]).await;
        !found
            && p.jsonpath(
                &["get", "pvc", "handbook-index", "-n", "tenant-startup"],
                "{.metadata.annotations.alcove\\.dev/retention-rule}",
            )
            .await
                == "knowledgeBase=7d"
    })
    .await;
    assert!(dir.is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_sources_cross_namespace_references_and_the_free_tier() {
    let p = platform_with_operator().await;
    p.ok(&[
        "apply",
        "-f",
        &example("good/tenant-basic.yaml"),
        "-f",
        &example("good/tenant-pro.yaml"),
        "-f",
        &example("good/tenant-free.yaml"),
    ])
    .await;

    // A URL source, fetched by the job through an egress policy for exactly that address.
    let port = serve_document("/guide.md", "Parking is free for visitors on level B2.");
    let web = format!(
        "apiVersion: alcove.dev/v1alpha1\nkind: KnowledgeBase\nmetadata: {{name: web, namespace: tenant-acme}}\nspec:\n  sources:\n  - name: site\n    url: http://127.0.0.1:{port}/guide.md\n  embeddingModel: {{source: {{platform: default-embedding}}}}\n"
    );
    p.ok_in(&["apply", "-f", "-"], &web).await;
    p.wait_condition("kb/web -n tenant-acme", "Indexed", 90).await;
    assert_eq!(
        p.jsonpath(&["get", "kb", "web", "-n", "tenant-acme"], "{.status.documents}").await,
        "1"
    );
    let np = p.json(&["get", "networkpolicy", "web-indexer-egress", "-n", "tenant-acme"]).await;
    assert_eq!(np["spec"]["egress"][0]["to"][0]["ipBlock"]["cidr"], "127.0.0.1/32");
    assert_eq!(np["spec"]["egress"][0]["ports"][0]["port"], port);
    assert!(
        files_containing(&volume_dir(&p, "tenant-acme", "web-index").await, "level B2").len() == 1
    );

    // Another tenant's instance naming it: refused, with a condition and an Event, no pod.
    let thief = "apiVersion: alcove.dev/v1alpha1\nkind: InferenceInstance\nmetadata: {name: thief, namespace: tenant-startup}\nspec:\n  model: {format: safetensors, source: {platform: default}}\n  knowledgeBases:\n  - {name: web, namespace: tenant-acme}\n";
    p.ok_in(&["apply", "-f", "-"], thief).await;
    let ready = until_some("refusal condition", Duration::from_secs(20), || async {
        let i = p.json(&["get", "inst", "thief", "-n", "tenant-startup"]).await;
        i["status"]["conditions"].as_array().and_then(|cs| {
            cs.iter()
                .find(|c| c["type"] == "Ready" && c["reason"] == alcove_crds::reason::INVALID_SPEC)
                .cloned()
        })
    })
    .await;
    let msg = ready["message"].as_str().unwrap();
    assert!(
        msg.contains("spec.knowledgeBases[0].namespace") && msg.contains("tenant-acme/web"),
        "{msg}"
    );
    assert_eq!(
        p.jsonpath(&["get", "inst", "thief", "-n", "tenant-startup"], "{.status.phase}").await,
        "Failed"
    );
    let (pod_exists, _, _) = p.kubectl(&["get", "pod", "thief", "-n", "tenant-startup"]).await;
    assert!(!pod_exists, "never mounted");
    eventually("a Warning event says why", Duration::from_secs(10), || async {
        p.events("tenant-startup", "Failed").await.iter().any(|e| {
            e["type"] == "Warning"
                && e["message"].as_str().is_some_and(|m| m.contains("another namespace"))
        })
    })
    .await;

    // The free tier: the KnowledgeBase is refused with the tier rule's message; nothing is made.
    let free = "apiVersion: alcove.dev/v1alpha1\nkind: KnowledgeBase\nmetadata: {name: notes, namespace: tenant-sandbox}\nspec:\n  sources:\n  - {name: note, inline: hello}\n  embeddingModel: {source: {platform: default-embedding}}\n";
    p.ok_in(&["apply", "-f", "-"], free).await;
    let ready = until_some("free-tier refusal", Duration::from_secs(20), || async {
        let k = p.json(&["get", "kb", "notes", "-n", "tenant-sandbox"]).await;
        k["status"]["conditions"].as_array().and_then(|cs| {
            cs.iter()
                .find(|c| {
                    c["type"] == "Ready"
                        && c["status"] == "False"
                        && c["reason"] == "TierHasNoKnowledgeBases"
                })
                .cloned()
        })
    })
    .await;
    assert!(
        ready["message"].as_str().unwrap().contains("the free tier has no knowledge-base storage"),
        "{ready}"
    );
    assert_eq!(
        p.jsonpath(&["get", "kb", "notes", "-n", "tenant-sandbox"], "{.status.phase}").await,
        "Failed"
    );
    assert!(
        p.ok(&[
            "get",
            "pvc,jobs,configmaps",
            "-n",
            "tenant-sandbox",
            "-l",
            "alcove.dev/knowledge-base=notes",
            "-o",
            "name"
        ])
        .await
        .trim()
        .is_empty()
    );
    // A second one is refused at the door by the quota.
    let (ok, _, err) = p
        .kubectl_as(
            &p.cluster.kubeconfig,
            &["apply", "-f", "-"],
            Some(&free.replace("notes", "more")),
        )
        .await;
    assert!(!ok && err.contains("exceeded quota"), "{err}");
}
