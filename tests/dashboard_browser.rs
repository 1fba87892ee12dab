//! The dashboard in a real browser: Debian's chromium driven by playwright-core (both installed
//! by `./test.sh`; no browser is downloaded) through one customer's journey on a phone-sized
//! window (tests/browser/journey.mjs), against devcluster, the operator, real inference pods,
//! the gateway and `alcove dashboard` with a real SMTP server. Screenshots of each step are
//! written to `target/dashboard-journey/`. Then the cluster and the gateway are checked against
//! what the browser did.

use std::time::Duration;

use alcove_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_journey_in_chromium() {
    let node_modules = workspace_root().join("tests/browser/node_modules/playwright-core");
    assert!(
        node_modules.exists() && std::path::Path::new("/usr/bin/chromium").exists(),
        "run ./test.sh: it installs Debian's chromium and playwright-core (tests/browser)"
    );
    let (p, _gw, d) = customers_world().await;

    let out = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("dashboard-journey");
    let _ = std::fs::remove_dir_all(&out);
    let run = tokio::process::Command::new("node")
        .arg(workspace_root().join("tests/browser/journey.mjs"))
        .env("DASHBOARD_URL", &d.url)
        .env("MAILDIR", &d.maildir)
        .env("OUT", &out)
        .env("OWNER", "alice@startup.example")
        .env("OTHER", "bob@acme.example")
        .env("TENANT", "startup")
        .env("INSTANCE", "journey")
        .output();
    let run = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("the journey ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "the journey failed:\n{stdout}\n{}\n--- dashboard log\n{}",
        String::from_utf8_lossy(&run.stderr),
        d.log_text()
    );
    let result: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(result["ok"], true, "{result}");

    // What the browser did happened on the cluster, and nothing the other owner tried did.
    let pods =
        p.json(&["get", "pods", "-n", "tenant-startup", "-l", "alcove.dev/instance=journey"]).await;
    assert_eq!(pods["items"].as_array().unwrap().len(), 0, "the pod is gone");
    let (exists, _, _) = p.kubectl(&["get", "inst", "journey", "-n", "tenant-startup"]).await;
    assert!(!exists, "destroyed");
    let (intruder, _, _) = p.kubectl(&["get", "inst", "intruder", "-n", "tenant-startup"]).await;
    assert!(!intruder, "the other owner created nothing");
    let screenshots = std::fs::read_dir(&out).unwrap().count();
    assert!(screenshots >= 10, "a screenshot per step in {}: {screenshots}", out.display());
}
