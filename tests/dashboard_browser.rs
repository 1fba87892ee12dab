//! The dashboard in a real browser: Debian's chromium driven by playwright-core (both installed
//! by `./test.sh`; no browser is downloaded) through one customer's journey on a phone-sized
//! window (tests/browser/journey.mjs), against devcluster, the operator, real inference pods,
//! the gateway and `alcove dashboard` with a real SMTP server. Screenshots of each step are
//! written to `target/dashboard-journey/`. Then the cluster and the gateway are checked against
//! what the browser did.

use alcove_tests::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_journey_in_chromium() {
    let (p, _gw, d) = customers_world().await;
    let (result, out) = browser_journey(
        "journey.mjs",
        "dashboard-journey",
        &d,
        &[
            ("OWNER", "alice@startup.example"),
            ("OTHER", "bob@acme.example"),
            ("TENANT", "startup"),
            ("INSTANCE", "journey"),
        ],
    )
    .await;

    // What the browser did happened on the cluster, and nothing the other owner tried did.
    // (The instance goes once the operator's destroy has billed and released it: a moment after
    // the click, longer under API faults.)
    eventually("the pod gone and the instance destroyed", Duration::from_secs(30), || async {
        let pods = p
            .json(&["get", "pods", "-n", "tenant-startup", "-l", "alcove.dev/instance=journey"])
            .await;
        pods["items"].as_array().unwrap().is_empty()
            && !p.kubectl(&["get", "inst", "journey", "-n", "tenant-startup"]).await.0
    })
    .await;
    let (intruder, _, _) = p.kubectl(&["get", "inst", "intruder", "-n", "tenant-startup"]).await;
    assert!(!intruder, "the other owner created nothing");
    // The export it downloaded, opened by GNU tar: the knowledge base's document as uploaded,
    // the conversation that answered from it, the instance.
    let dir = out.join("export");
    let manifest = unpack_export(&out.join("export.tar"), &dir);
    // The parts it left out are named with a reason; the instance's conversations are not.
    let omitted = manifest["omitted"].as_array().unwrap();
    assert!(
        !omitted.iter().any(|o| o["part"].as_str().unwrap().starts_with("conversations/")),
        "{omitted:?}"
    );
    let doc = std::fs::read_to_string(dir.join("knowledge-bases/docs/documents/uploads/leave.md"))
        .expect("the uploaded document");
    assert!(doc.contains("25 vacation days"), "{doc}");
    assert!(!dir.join("knowledge-bases/docs/documents/uploads/parking.html").exists(), "removed");
    let talks: Vec<_> = std::fs::read_dir(dir.join("conversations/journey"))
        .expect("the instance's conversations")
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(talks.iter().any(|t| t.contains("How many vacation days")), "{talks:?}");
    let journey = export_json(&dir, "instances/journey.json");
    assert_eq!(journey["spec"]["limits"]["maxTokens"], 64);
    // The prompt the onboarding wrote, as the customer edited it.
    let prompt = journey["spec"]["systemPrompt"].as_str().unwrap();
    assert_eq!(prompt, result["system_prompt"].as_str().unwrap());
    assert!(
        prompt.starts_with("You are the assistant of Startup Inc.\nPeople come to you for: answering staff questions about leave and parking.\nBe brief")
            && prompt.ends_with("Sign answers with \"HR desk\"."),
        "{prompt}"
    );
    let screenshots = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "png"))
        .count();
    assert!(screenshots >= 10, "a screenshot per step in {}: {screenshots}", out.display());
}
