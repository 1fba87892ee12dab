//! The README's walkthrough, run as written: `alcove up` with the README's flags, then the shell
//! block marked `<!-- walkthrough -->`, line for line, with kubectl and curl. The README cannot
//! drift from the product without this test failing.

use std::path::Path;
use std::time::{Duration, Instant};

use alcove_tests::*;
use tokio::io::AsyncBufReadExt;

/// The first ```sh block after `marker` in the README.
fn block_after(readme: &str, marker: &str) -> String {
    let rest = &readme[readme.find(marker).unwrap_or_else(|| panic!("README has no {marker}"))..];
    let start = rest.find("```sh\n").expect("a sh block") + 6;
    rest[start..start + rest[start..].find("```").expect("block end")].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_works_against_alcove_up() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let up_line = block_after(&readme, "## Run the platform");
    let up_args: Vec<&str> = up_line
        .trim()
        .split_once(" -- ")
        .expect("cargo run … -- up")
        .1
        .split_whitespace()
        .collect();
    assert_eq!(up_args[0], "up");
    let script = block_after(&readme, "<!-- walkthrough -->");

    // A fresh directory standing in for a clone: the examples, and `.alcove` made by `up`.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(workspace_root().join("examples"), dir.path().join("examples"))
        .unwrap();
    let started = Instant::now();
    let mut up = tokio::process::Command::new(alcove_binary())
        .args(&up_args)
        .env("ALCOVE_INFERENCE_BINARY", inference_binary())
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(up.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            printed.push(line.clone());
            if line.contains("ready") {
                return;
            }
        }
        panic!("alcove up ended before ready: {printed:#?}");
    })
    .await
    .unwrap_or_else(|_| panic!("alcove up not ready in 120 s: {printed:#?}"));
    let to_ready = started.elapsed();
    let out = printed.join("\n");
    assert!(
        out.contains("simulated: the nodes and their GPUs"),
        "up says what is simulated: {out}"
    );
    assert!(out.contains("random text"), "up says the test model's answers are random: {out}");
    assert!(
        out.contains("alcove up: gateway") && out.contains("https://127.0.0.1:"),
        "up prints the gateway's URL: {out}"
    );
    assert!(dir.path().join(".alcove/kubeconfig").is_file());

    // The walkthrough, traced with timestamps; the kubectl cache stays inside the test.
    let traced = format!("set -euo pipefail\nPS4='+ $EPOCHREALTIME '\nset -x\n{script}");
    let run = tokio::process::Command::new("bash")
        .args(["-c", &traced])
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .env_remove("KUBECONFIG")
        .output();
    let run = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("the walkthrough finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let trace = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "the walkthrough failed:\n{stdout}\n{trace}\n--- alcove.log tail\n{}",
        log_tail(dir.path())
    );

    assert!(stdout.contains("inferenceinstance.alcove.dev/chat condition met"), "{stdout}");
    assert!(stdout.contains("\"object\":\"chat.completion\""), "a completion: {stdout}");
    assert!(
        stdout.contains("\"object\":\"chat.completion.chunk\"") && stdout.contains("data: [DONE]"),
        "a stream: {stdout}"
    );
    assert!(stdout.contains("knowledgebase.alcove.dev/handbook condition met"), "{stdout}");
    assert!(
        stdout.contains("\"knowledge_base\":\"handbook\""),
        "the assistant cites the handbook: {stdout}"
    );
    assert!(stdout.contains("inferenceinstance.alcove.dev \"chat\" deleted"), "{stdout}");
    let timer = stdout
        .lines()
        .find(|l| l.starts_with("chat-history "))
        .unwrap_or_else(|| panic!("the retention timer: {stdout}"));
    assert!(
        timer.contains("conversationHistory") && timer.contains('T') && timer.ends_with('Z'),
        "{timer}"
    );

    // The dashboard up prints: a tenant owner asks for a code, which lands in the mail sink.
    let dashboard = out
        .lines()
        .find_map(|l| l.strip_prefix("alcove up: dashboard"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("up prints the dashboard's URL: {out}"))
        .to_string();
    assert!(curl(&format!("{dashboard}/signin")).await.is_some_and(|p| p.contains("Sign in")));
    let asked = tokio::process::Command::new("curl")
        .args(["-sf", "--data-urlencode", "email=alice@startup.example"])
        .arg(format!("{dashboard}/signin"))
        .output()
        .await
        .unwrap();
    assert!(asked.status.success());
    let mail = until_some("the code reaches the mail sink", Duration::from_secs(20), || async {
        let sink = dir.path().join(".alcove/mail");
        let first = std::fs::read_dir(&sink).ok()?.filter_map(|e| e.ok()).next()?;
        std::fs::read_to_string(first.path()).ok()
    })
    .await;
    assert!(
        mail.contains("To: alice@startup.example") && mail.contains("Your Alcove sign-in code: "),
        "{mail}"
    );

    // Figures for the closing note: up → ready, and apply of an instance → its first completion.
    let at = |needle: &str| -> f64 {
        trace
            .lines()
            .find(|l| l.contains(needle))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no trace of {needle}"))
    };
    let applied = at("kubectl apply -f examples/good/instance-safetensors.yaml");
    let after_first = at("curl -sN");
    eprintln!(
        "walkthrough: alcove up ready after {:.1} s; instance apply → first completion {:.1} s",
        to_ready.as_secs_f64(),
        after_first - applied
    );

    // Ctrl-C stops everything.
    let pid = up.id().unwrap() as i32;
    std::process::Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), up.wait())
        .await
        .expect("up stops on SIGINT")
        .unwrap();
    assert!(status.success(), "{status}");
    let leftovers = std::process::Command::new("pgrep")
        .args(["-f", &dir.path().display().to_string()])
        .output()
        .unwrap();
    assert!(
        leftovers.stdout.is_empty(),
        "no process survives: {}",
        String::from_utf8_lossy(&leftovers.stdout)
    );
}

fn log_tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join(".alcove/alcove.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
