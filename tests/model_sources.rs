//! Models from a URI, end to end: an instance whose `spec.model.source.uri` names a GGUF file on
//! a loopback HTTPS server (with its own CA, which the platform trusts), a safetensors
//! repository on a loopback model hub, or a safetensors prefix in an S3 bucket (moto) downloads
//! it through its pod's fetch step, shows the download in its status, resumes it after a cut,
//! shares it with the next instance of the same source, answers chats with it, and fails with
//! words for a wrong digest or a missing file. The cache is taken back when the model is used
//! again within its window, and erased 24 h (by the injected clock) after the last instance
//! using it is gone.

use std::time::Duration;

use alcove_testkit::model_server::{HubRepo, ModelServer, Options, sha256_hex};
use alcove_tests::*;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

fn instance(name: &str, model: Value) -> String {
    json!({"apiVersion": "alcove.dev/v1alpha1", "kind": "InferenceInstance",
        "metadata": {"name": name, "namespace": "tenant-startup"},
        "spec": {"model": model, "limits": {"maxTokens": 16, "contextLength": 512}}})
    .to_string()
}

async fn status(p: &Platform, name: &str) -> Value {
    p.json(&["get", "inst", name, "-n", "tenant-startup"]).await["status"].clone()
}

async fn ready_condition(p: &Platform, name: &str) -> Value {
    let s = status(p, name).await;
    s["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap_or(Value::Null)
}

async fn chat(proxy: &KubectlProxy, p: &Platform, name: &str) -> u16 {
    let key = api_key(p, "tenant-startup", name).await;
    let url = format!(
        "{}/api/v1/namespaces/tenant-startup/services/{name}:80/proxy/v1/chat/completions",
        proxy.base
    );
    let body =
        json!({"model": name, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3});
    http("POST", &url, &[("X-Api-Key", &key)], Some(&body.to_string())).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_from_uris_are_fetched_verified_shared_served_and_erased_a_day_after_last_use() {
    let models = platform_models();
    let gguf = std::fs::read(models.join("default-gguf/model.gguf")).unwrap();
    let repo: Vec<(String, Vec<u8>)> = std::fs::read_dir(models.join("default"))
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().to_string(), std::fs::read(e.path()).unwrap()))
        .collect();
    let server = ModelServer::start(Options {
        files: vec![("/models/tiny.gguf".into(), gguf.clone())],
        hub: vec![HubRepo {
            name: "acme/tiny".into(),
            commit: "4b825dc642cb6eb9a060e54bf8d69288fbee4904".into(),
            files: repo,
        }],
        cut_first_download: true,
        bytes_per_second: 15_000,
        https: true,
        ..Default::default()
    });
    let mut p = Platform::start_with(with_inference).await;
    let clock = Clock(p.dir.path().join("clock"));
    clock.set(Timestamp::now());
    let moto = alcove_testkit::moto::Moto::start(&p.dir.path().join("moto.log")).await;
    moto.put_dir("models", "tiny/", &models.join("default")).await;
    let config = p.dir.path().join("operator.yaml");
    let ca = server.ca_pem.clone().unwrap();
    let indented: String = ca.lines().map(|l| format!("    {l}\n")).collect();
    std::fs::write(
        &config,
        format!(
            "modelSources:\n  allowPrivateAddresses: true\n  hubEndpoint: {}\n  s3: {{endpoint: {}, region: us-east-1, pathStyle: true}}\n  caCertificates: |\n{indented}",
            server.base, moto.endpoint
        ),
    )
    .unwrap();
    let (config, clock_path) = (config.display().to_string(), clock.0.display().to_string());
    p.spawn_operator(&["--config", &config, "--clock-file", &clock_path]).await;
    // Seven instances and six caches of the default size (20Gi) fit this quota.
    let tenant = "apiVersion: alcove.dev/v1alpha1\nkind: Tenant\nmetadata: {name: startup}\nspec:\n  displayName: Startup\n  tier: basic\n  region: tw-taipei-1\n  quota: {maxGpus: 8, maxInstances: 8, maxStorage: 200Gi}\n";
    p.ok_in(&["apply", "-f", "-"], tenant).await;

    // A GGUF file over HTTPS, checked against its digest. The server cuts the first download
    // halfway; the kubelet restarts the fetch step, which resumes with a ranged GET.
    let url = format!("{}/models/tiny.gguf", server.base);
    let model = json!({"format": "gguf", "source": {"uri": url}, "sha256": sha256_hex(&gguf)});
    p.ok_in(&["apply", "-f", "-"], &instance("first", model.clone())).await;
    let seen = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let s = status(&p, "first").await;
            if s["phase"] == "Downloading" && s["download"]["bytesDone"].as_i64() > Some(0) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let Ok(seen) = seen else {
        let (_, state, _) =
            p.kubectl(&["get", "inst,pod,pvc", "-n", "tenant-startup", "-o", "yaml"]).await;
        let (_, events, _) = p.kubectl(&["get", "events", "-n", "tenant-startup"]).await;
        panic!(
            "first never showed its download:\n{state}\n{events}\n{}",
            p.operators[0].log_text()
        );
    };
    assert_eq!(seen["download"]["uri"], url.as_str(), "{seen}");
    assert_eq!(seen["download"]["bytesTotal"], gguf.len(), "{seen}");
    assert!(seen["message"].as_str().unwrap().contains("downloading https://localhost"), "{seen}");
    p.wait_condition("inst/first -n tenant-startup", "Ready", 90).await;
    assert_eq!(server.gets("/models/tiny.gguf"), 2, "the cut download and its resumption");
    assert_eq!(server.bytes_sent(), gguf.len() as u64, "the second GET fetched only the rest");
    let proxy = p.kubectl_proxy().await;
    assert_eq!(chat(&proxy, &p, "first").await, 200);
    let cache = status(&p, "first").await["modelCache"].as_str().unwrap().to_string();
    assert!(status(&p, "first").await.get("download").is_none(), "progress goes once Ready");
    let pvc = p.json(&["get", "pvc", &cache, "-n", "tenant-startup"]).await;
    assert_eq!(pvc["metadata"]["labels"]["alcove.dev/data-class"], "modelCache");
    assert_eq!(pvc["metadata"]["annotations"]["alcove.dev/model-uri"], url.as_str());
    assert!(pvc["metadata"]["ownerReferences"].is_null(), "shared: owned by no one instance");
    let np = p.json(&["get", "networkpolicy", "first-model-egress", "-n", "tenant-startup"]).await;
    assert_eq!(np["spec"]["egress"][0]["ports"][0]["port"], server.port);

    // The same source again: the same cache, no download.
    p.ok_in(&["apply", "-f", "-"], &instance("second", model.clone())).await;
    p.wait_condition("inst/second -n tenant-startup", "Ready", 60).await;
    assert_eq!(status(&p, "second").await["modelCache"], cache.as_str());
    assert_eq!(server.gets("/models/tiny.gguf"), 2, "no second download");

    // A safetensors repository on the hub.
    let hub = json!({"format": "safetensors", "source": {"uri": "hf://acme/tiny"}});
    p.ok_in(&["apply", "-f", "-"], &instance("hub", hub)).await;
    p.wait_condition("inst/hub -n tenant-startup", "Ready", 90).await;
    assert_eq!(chat(&proxy, &p, "hub").await, 200);

    // A safetensors directory under a prefix of an S3 bucket (moto), with signed requests.
    let keys = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: s3-keys, namespace: tenant-startup}}\nstringData: {{accessKeyId: {}, secretAccessKey: {}}}\n",
        alcove_testkit::moto::ACCESS_KEY_ID,
        alcove_testkit::moto::SECRET_ACCESS_KEY
    );
    p.ok_in(&["apply", "-f", "-"], &keys).await;
    let s3 = json!({"format": "safetensors", "source": {"uri": "s3://models/tiny/", "credentialsSecret": "s3-keys"}});
    p.ok_in(&["apply", "-f", "-"], &instance("bucket", s3)).await;
    p.wait_condition("inst/bucket -n tenant-startup", "Ready", 90).await;
    assert_eq!(chat(&proxy, &p, "bucket").await, 200);

    // A wrong digest and a missing file fail with the URI and what went wrong.
    let wrong = "0".repeat(64);
    let bad = json!({"format": "gguf", "source": {"uri": url}, "sha256": wrong});
    p.ok_in(&["apply", "-f", "-"], &instance("tampered", bad)).await;
    let missing_url = format!("{}/models/missing.gguf", server.base);
    let missing = json!({"format": "gguf", "source": {"uri": missing_url}});
    p.ok_in(&["apply", "-f", "-"], &instance("missing", missing)).await;
    let lost = json!({"format": "gguf", "source": {"uri": "s3://models/lost/", "credentialsSecret": "s3-keys"}});
    p.ok_in(&["apply", "-f", "-"], &instance("lost", lost)).await;
    for (name, words) in [
        ("lost", vec!["s3://models/lost/".to_string(), "no object under this prefix".into()]),
        ("tampered", vec![wrong.clone(), sha256_hex(&gguf), "tiny.gguf".into()]),
        ("missing", vec![missing_url.clone(), "404".into()]),
    ] {
        let c = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let c = ready_condition(&p, name).await;
                if c["reason"] == "ModelFetchFailed" {
                    return c;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        let Ok(c) = c else {
            let (_, state, _) =
                p.kubectl(&["get", "inst,pod", name, "-n", "tenant-startup", "-o", "yaml"]).await;
            panic!("{name} never failed with ModelFetchFailed:\n{state}");
        };
        for w in words {
            assert!(c["message"].as_str().unwrap().contains(&w), "{name}: {c}");
        }
        assert_eq!(status(&p, name).await["phase"], "Failed");
    }
    // (An Event follows the status it announces, a retry later under API faults.)
    eventually("a Failed Event names the missing URL", Duration::from_secs(10), || async {
        let failed = p.events("tenant-startup", "Failed").await;
        failed.iter().any(|e| e["message"].as_str().unwrap_or_default().contains(&missing_url))
    })
    .await;

    // Retention: the cache outlives the first instance while the second uses it, then is
    // released for 24 h, kept until then, and erased with a receipt after.
    for name in ["tampered", "missing", "lost", "first"] {
        p.ok(&["delete", "inst", name, "-n", "tenant-startup"]).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pvc = p.json(&["get", "pvc", &cache, "-n", "tenant-startup"]).await;
    assert!(pvc["metadata"]["labels"]["alcove.dev/released"].is_null(), "still used: {pvc}");
    let released_at = clock.now();
    let released = || async {
        until_some("cache released", Duration::from_secs(30), || async {
            let pvc = p.json(&["get", "pvc", &cache, "-n", "tenant-startup"]).await;
            pvc["metadata"]["annotations"]["alcove.dev/retain-until"]
                .as_str()
                .map(|s| s.parse::<Timestamp>().unwrap())
        })
        .await
    };
    p.ok(&["delete", "inst", "second", "-n", "tenant-startup"]).await;
    let deadline = released().await;
    assert_eq!(deadline, released_at.checked_add(SignedDuration::from_hours(24)).unwrap());
    // Used again within the window: taken back, nothing downloaded; released again after.
    let gets = server.gets("/models/tiny.gguf");
    p.ok_in(&["apply", "-f", "-"], &instance("again", model)).await;
    p.wait_condition("inst/again -n tenant-startup", "Ready", 60).await;
    let pvc = p.json(&["get", "pvc", &cache, "-n", "tenant-startup"]).await;
    assert!(pvc["metadata"]["labels"]["alcove.dev/released"].is_null(), "taken back: {pvc}");
    assert!(pvc["metadata"]["annotations"]["alcove.dev/retain-until"].is_null(), "{pvc}");
    assert_eq!(server.gets("/models/tiny.gguf"), gets, "the cache served it");
    p.ok(&["delete", "inst", "again", "-n", "tenant-startup"]).await;
    assert_eq!(released().await, deadline, "the same clock, the same window");
    let text = p.data_report("startup").await;
    assert!(text.contains(&format!("{cache} [modelCache]")), "{text}");
    assert!(
        text.contains("model cache of hf://acme/tiny: kept while an instance uses it"),
        "{text}"
    );
    clock.set(deadline.checked_sub(SignedDuration::from_secs(1)).unwrap());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(p.kubectl(&["get", "pvc", &cache, "-n", "tenant-startup"]).await.0, "erased early");
    clock.set(deadline.checked_add(SignedDuration::from_secs(1)).unwrap());
    eventually("the cache erased after its deadline", Duration::from_secs(60), || async {
        !p.kubectl(&["get", "pvc", &cache, "-n", "tenant-startup"]).await.0
    })
    .await;
    // The receipt follows the claim's deletion: it is written once the volume behind it is
    // verified gone.
    let receipts =
        ["get", "configmap", "alcove-erasures-startup", "-n", "alcove-system", "-o", "json"];
    eventually("a receipt naming the cache", Duration::from_secs(30), || async {
        let (ok, out, _) = p.kubectl(&receipts).await;
        ok && serde_json::from_str::<Value>(&out).unwrap()["data"].as_object().is_some_and(|d| {
            d.values().any(|v| {
                let r: Value = serde_json::from_str(v.as_str().unwrap()).unwrap();
                r["dataClass"] == "modelCache" && r["what"].as_str().unwrap().contains(&cache)
            })
        })
    })
    .await;
}
