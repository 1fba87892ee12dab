//! Retention on devcluster with an injected clock: released volumes are kept until their
//! deadline and erased (their directories gone) within a minute after, a legal hold pauses
//! erasure, and a deleted tenant's data is erased after its window, with receipts that remain.

use std::path::{Path, PathBuf};
use std::time::Duration;

use alcove_tests::*;
use jiff::{SignedDuration, Timestamp};

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn plus(t: Timestamp, secs: i64) -> Timestamp {
    t.checked_add(SignedDuration::from_secs(secs)).unwrap()
}

/// The platform with simulated pods (retention needs no real server) and an operator reading
/// "now" from a file.
async fn platform() -> (Platform, Clock) {
    let mut p = Platform::start_with(with_platform_models).await;
    let clock = Clock(p.dir.path().join("clock"));
    clock.set(Timestamp::now());
    let path = clock.0.display().to_string();
    p.spawn_operator(&["--clock-file", &path]).await;
    (p, clock)
}

async fn volume_dir(p: &Platform, ns: &str, claim: &str) -> PathBuf {
    let pv = p.jsonpath(&["get", "pvc", claim, "-n", ns], "{.spec.volumeName}").await;
    PathBuf::from(p.jsonpath(&["get", "pv", &pv], "{.spec.hostPath.path}").await)
}

async fn exists(p: &Platform, args: &[&str]) -> bool {
    p.kubectl(&[&["get"], args].concat()).await.0
}

/// Kept at deadline − 1 s (checked for a few seconds), erased with its directory within 60 s of
/// deadline + 1 s. The clock never goes back: volumes sharing a deadline are checked "kept" by
/// the first call, and one whose erasure that call began may still be finishing (under API
/// faults it was, and a clock set back stamped its receipt before its deadline).
async fn erased_on_time(
    p: &Platform,
    clock: &Clock,
    ns: &str,
    claim: &str,
    dir: &Path,
    deadline: Timestamp,
) {
    if clock.now() < plus(deadline, -1) && exists(p, &["pvc", claim, "-n", ns]).await {
        clock.set(plus(deadline, -1));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            exists(p, &["pvc", claim, "-n", ns]).await && dir.is_dir(),
            "{claim} erased before its deadline"
        );
    }
    clock.set(plus(deadline, 1));
    eventually(&format!("{claim} erased after its deadline"), Duration::from_secs(60), || async {
        !exists(p, &["pvc", claim, "-n", ns]).await && !dir.exists()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_are_erased_at_their_deadline_never_before_and_legal_hold_pauses_it() {
    let (p, clock) = platform().await;
    let t0 = at(&std::fs::read_to_string(&clock.0).unwrap());
    p.ok(&[
        "apply",
        "-f",
        &example("good/tenant-basic.yaml"),
        "-f",
        &example("good/tenant-pro.yaml"),
    ])
    .await;
    p.ok(&[
        "apply",
        "-f",
        &example("good/instance-safetensors.yaml"),
        "-f",
        &example("good/knowledgebase.yaml"),
    ])
    .await;
    let bot = "apiVersion: alcove.dev/v1alpha1\nkind: InferenceInstance\nmetadata: {name: bot, namespace: tenant-acme}\nspec:\n  model: {format: safetensors, source: {platform: default}}\n";
    p.ok_in(&["apply", "-f", "-"], bot).await;
    p.wait_condition("inst/chat -n tenant-startup", "Ready", 60).await;
    p.wait_condition("inst/bot -n tenant-acme", "Ready", 60).await;
    eventually("the index volume exists", Duration::from_secs(30), || async {
        exists(&p, &["pvc", "handbook-index", "-n", "tenant-startup"]).await
    })
    .await;
    let history = volume_dir(&p, "tenant-startup", "chat-history").await;
    let index = volume_dir(&p, "tenant-startup", "handbook-index").await;
    let acme = volume_dir(&p, "tenant-acme", "bot-history").await;

    // Destroying the owners releases the volumes: no owner, labelled, with a deadline and rule.
    p.ok(&["delete", "inst", "chat", "-n", "tenant-startup"]).await;
    p.ok(&["delete", "kb", "handbook", "-n", "tenant-startup"]).await;
    p.ok(&["delete", "inst", "bot", "-n", "tenant-acme"]).await;
    let pvc = p.json(&["get", "pvc", "chat-history", "-n", "tenant-startup"]).await;
    assert!(pvc["metadata"]["ownerReferences"].is_null(), "{pvc}");
    assert_eq!(pvc["metadata"]["labels"]["alcove.dev/data-class"], "conversationHistory");
    assert_eq!(pvc["metadata"]["labels"]["alcove.dev/tenant"], "startup");
    assert_eq!(
        pvc["metadata"]["annotations"]["alcove.dev/retention-rule"],
        "conversationHistory=7d"
    );
    let history_deadline =
        at(pvc["metadata"]["annotations"]["alcove.dev/retain-until"].as_str().unwrap());
    assert_eq!(
        history_deadline,
        plus(t0, 7 * 86_400),
        "7 days from the destroy, by the injected clock"
    );
    let kb = p.json(&["get", "pvc", "handbook-index", "-n", "tenant-startup"]).await;
    assert_eq!(kb["metadata"]["annotations"]["alcove.dev/retention-rule"], "knowledgeBase=7d");
    let acme_pvc = p.json(&["get", "pvc", "bot-history", "-n", "tenant-acme"]).await;
    assert_eq!(
        acme_pvc["metadata"]["annotations"]["alcove.dev/retention-rule"], "conversationHistory=3d",
        "the tenant's own window"
    );
    let acme_deadline =
        at(acme_pvc["metadata"]["annotations"]["alcove.dev/retain-until"].as_str().unwrap());

    // A legal hold on acme: its deadline passes and nothing is erased; lifting it resumes.
    p.ok(&["patch", "tenant", "acme", "--type=merge", "-p", r#"{"spec":{"legalHold":true}}"#])
        .await;
    clock.set(plus(acme_deadline, 60));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        exists(&p, &["pvc", "bot-history", "-n", "tenant-acme"]).await && acme.is_dir(),
        "erased under legal hold"
    );
    p.ok(&["patch", "tenant", "acme", "--type=merge", "-p", r#"{"spec":{"legalHold":false}}"#])
        .await;
    eventually("erased once the hold is lifted", Duration::from_secs(60), || async {
        !exists(&p, &["pvc", "bot-history", "-n", "tenant-acme"]).await && !acme.exists()
    })
    .await;

    // Conversation history and the knowledge base: exactly at their deadlines.
    let kb_deadline =
        at(kb["metadata"]["annotations"]["alcove.dev/retain-until"].as_str().unwrap());
    let mut volumes = [
        ("chat-history", history.clone(), history_deadline),
        ("handbook-index", index.clone(), kb_deadline),
    ];
    volumes.sort_by_key(|v| v.2);
    for (claim, dir, deadline) in &volumes {
        erased_on_time(&p, &clock, "tenant-startup", claim, dir, *deadline).await;
    }

    // Receipts: what, class, deadline, when, by which rule; and an Event each.
    // (A receipt is written once the volume is verified gone, a moment after the directory.)
    let r = until_some("both receipts", Duration::from_secs(10), || async {
        Some(p.erasure_receipts("startup").await).filter(|r| r.len() == 2)
    })
    .await;
    let history_receipt = r
        .iter()
        .find(|x| x["what"].as_str().unwrap().contains("tenant-startup/chat-history"))
        .unwrap_or_else(|| panic!("{r:?}"));
    assert_eq!(history_receipt["dataClass"], "conversationHistory");
    assert_eq!(history_receipt["rule"], "conversationHistory=7d");
    assert_eq!(at(history_receipt["deadline"].as_str().unwrap()), history_deadline);
    assert!(
        at(history_receipt["erasedAt"].as_str().unwrap()) >= history_deadline,
        "erased before {history_deadline}: {r:?}"
    );
    assert!(r.iter().any(|x| x["dataClass"] == "knowledgeBase"));
    eventually("acme's receipt", Duration::from_secs(10), || async {
        p.erasure_receipts("acme").await.len() == 1
    })
    .await;
    // (The event recorder folds repeats about one tenant into a series. An Event follows its
    // receipt, a retry later under API faults.)
    eventually("an Erased Event for each erasure", Duration::from_secs(10), || async {
        let events = p.events("default", "Erased").await;
        events.iter().map(|e| e["series"]["count"].as_u64().unwrap_or(1)).sum::<u64>() >= 3
    })
    .await;
    // The data report shows the timers of what is left and the receipts of what went.
    let text = p.data_report("startup").await;
    assert!(text.contains("encryption key: Secret tenant-startup/alcove-tenant-key"), "{text}");
    assert!(
        text.contains("erasures: 2")
            && text.contains("tenant-startup/chat-history")
            && text.contains("rule conversationHistory=7d"),
        "{text}"
    );
    eventually("the receipts mirrored in the tenant's status", Duration::from_secs(10), || async {
        let status = p.json(&["get", "tenant", "startup"]).await;
        status["status"]["erasure"].as_array().map(Vec::len) == Some(2)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tenant_is_erased_after_its_window_and_its_receipts_remain() {
    let (p, clock) = platform().await;
    p.ok(&["apply", "-f", &example("good/tenant-pro.yaml")]).await;
    let bot = "apiVersion: alcove.dev/v1alpha1\nkind: InferenceInstance\nmetadata: {name: bot, namespace: tenant-acme}\nspec:\n  model: {format: safetensors, source: {platform: default}}\n";
    p.ok_in(&["apply", "-f", "-"], bot).await;
    p.wait_condition("inst/bot -n tenant-acme", "Ready", 60).await;
    let history = volume_dir(&p, "tenant-acme", "bot-history").await;
    // A volume the tenant made itself: no rule of its own, so it goes with the account data.
    let uploads = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: uploads, namespace: tenant-acme}\nspec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}\n";
    p.ok_in(&["apply", "-f", "-"], uploads).await;
    eventually("uploads bound", Duration::from_secs(10), || async {
        !p.jsonpath(&["get", "pvc", "uploads", "-n", "tenant-acme"], "{.spec.volumeName}")
            .await
            .is_empty()
    })
    .await;
    let uploads_dir = volume_dir(&p, "tenant-acme", "uploads").await;

    p.ok(&["delete", "tenant", "acme", "--wait=false"]).await;
    let erase_after = until_some("the erase window starts", Duration::from_secs(20), || async {
        let s = p.json(&["get", "tenant", "acme"]).await["status"].clone();
        (s["phase"] == "Erasing").then(|| at(s["eraseAfter"].as_str().unwrap()))
    })
    .await;
    let now = at(&std::fs::read_to_string(&clock.0).unwrap());
    let window = erase_after.duration_since(now).as_secs();
    assert!(
        (14 * 86_400 - 5..=14 * 86_400).contains(&window),
        "acme's accountData window is 14d: {window} s"
    );
    // The instance is destroyed at once; its namespace, volume and key stay for the window.
    eventually("instance destroyed", Duration::from_secs(20), || async {
        !exists(&p, &["inst", "bot", "-n", "tenant-acme"]).await
    })
    .await;
    clock.set(plus(erase_after, -1));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        exists(&p, &["namespace", "tenant-acme"]).await
            && exists(&p, &["secret", "alcove-tenant-key", "-n", "tenant-acme"]).await
            && uploads_dir.is_dir()
    );
    assert!(exists(&p, &["tenant", "acme"]).await);
    // The history had its own, shorter window (3d) and is gone by its own rule (under API
    // faults, a retry or two after the clock's jump).
    eventually("the history erased by its own rule", Duration::from_secs(10), || async {
        !history.exists()
    })
    .await;

    clock.set(plus(erase_after, 1));
    eventually("tenant, namespace, volumes and key erased", Duration::from_secs(60), || async {
        !exists(&p, &["tenant", "acme"]).await && !exists(&p, &["namespace", "tenant-acme"]).await
    })
    .await;
    assert!(!uploads_dir.exists(), "the volume's data is gone");
    let r = until_some("receipts", Duration::from_secs(10), || async {
        Some(p.erasure_receipts("acme").await).filter(|r| r.len() == 4)
    })
    .await;
    let class_of = |needle: &str| {
        r.iter()
            .find(|x| x["what"].as_str().unwrap().contains(needle))
            .map(|x| (x["dataClass"].clone(), x["rule"].clone()))
    };
    assert_eq!(
        class_of("tenant-acme/bot-history"),
        Some(("conversationHistory".into(), "conversationHistory=3d".into())),
        "{r:?}"
    );
    for what in ["tenant-acme/uploads", "alcove-tenant-key", "Namespace tenant-acme"] {
        assert_eq!(
            class_of(what),
            Some(("accountData".into(), "accountData=14d".into())),
            "{what}: {r:?}"
        );
    }
}
