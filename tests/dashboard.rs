//! The customer dashboard end to end, through its HTTP interface as a browser without scripts
//! uses it (curl with a cookie jar): sign-in with the code a real SMTP server caught, instances
//! created, suspended, resumed, their key shown and rotated, destroyed with a fresh code; CSRF
//! and origin checks; and a second tenant's owner who can neither see nor touch any of it.
//! Everything the dashboard does on the cluster it does as the signed-in user.

use std::time::Duration;

use alcove_tests::*;

const ALICE: &str = "alice@startup.example";
const BOB: &str = "bob@acme.example";
/// What Alice asks her instance: it must reach no log, Event or metric.
const PROMPT: &str = "Say hello to the marmot under the stairs.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_runs_an_instance_from_the_dashboard_and_no_one_else_can() {
    let (p, gw, d) = customers_world().await;

    // --- sign-in ---
    let anon = d.browser("anonymous");
    let first = anon.get("/").await;
    assert_eq!((first.status, first.header("location")), (303, Some("/signin")), "{first:?}");
    let bad = anon.post("/signin", &[("email", "not-an-address")], &[]).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains(r#"id="email-error" role="alert""#), "{}", bad.body);
    // An unknown address gets the same answer and no mail.
    let unknown = anon.post("/signin", &[("email", "nobody@nowhere.example")], &[]).await;
    let known = d.browser("probe").post("/signin", &[("email", BOB)], &[]).await;
    let strip = |s: &str, a: &str| s.replace(a, "ADDRESS");
    assert_eq!(unknown.status, known.status);
    assert_eq!(
        strip(&unknown.body, "nobody@nowhere.example"),
        strip(&known.body, BOB),
        "the page must not tell whether an address has an account"
    );
    let bob_code = d.code(BOB, 0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !d.mails().iter().any(|m| m.contains("nobody@nowhere.example")),
        "mail only to addresses a tenant names"
    );
    // Wrong codes count down; the right one signs in with a fresh session cookie.
    let probe = d.browser("probe");
    let wrong = probe.post("/signin/code", &[("email", BOB), ("code", "000000")], &[]).await;
    let wrong_again = if bob_code == "000000" { None } else { Some(wrong) };
    if let Some(w) = wrong_again {
        assert_eq!(w.status, 400);
        assert!(w.body.contains("4 more times"), "{}", w.body);
    }
    let ok = probe.post("/signin/code", &[("email", BOB), ("code", &bob_code)], &[]).await;
    assert_eq!(ok.status, 303, "{}", ok.body);
    let cookie = ok.header("set-cookie").expect("a session cookie").to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"), "{cookie}");
    assert!(!cookie.contains("Secure"), "plain HTTP on loopback: {cookie}");
    let reused =
        d.browser("replay").post("/signin/code", &[("email", BOB), ("code", &bob_code)], &[]).await;
    assert_eq!(reused.status, 400, "a code works once");
    let bob = probe;

    let alice = d.sign_in(ALICE, 0).await;
    let overview = alice.get("/").await;
    assert_eq!(overview.status, 200);
    assert!(overview.body.contains("Startup Inc"), "{}", overview.body);
    assert!(
        !overview.body.contains("ACME Corporation"),
        "only tenants that name the user: {}",
        overview.body
    );

    // --- create: field errors beside the field, then a good one ---
    let form = alice.get("/t/startup/new").await;
    assert_eq!(form.status, 200, "{}", form.body);
    assert!(
        form.body.contains(&format!(r#"<option value="{H100}""#)),
        "GPU products the tenant can use: {}",
        form.body
    );
    let csrf = form.csrf();
    let refused = alice
        .post(
            "/t/startup/new",
            &[
                ("csrf", &csrf),
                ("name", "Chat Bot"),
                ("model", "default"),
                ("max_tokens", "4096"),
                ("context_length", "1024"),
            ],
            &[],
        )
        .await;
    assert_eq!(refused.status, 422);
    assert!(refused.body.contains(r#"id="name-error""#), "{}", refused.body);
    assert!(refused.body.contains(r#"id="max_tokens-error""#), "{}", refused.body);
    assert!(refused.body.contains(r#"value="Chat Bot""#), "what was typed is kept");
    let created = alice
        .post(
            "/t/startup/new",
            &[
                ("csrf", &csrf),
                ("name", "chat"),
                ("model", "default"),
                ("gpu_count", "1"),
                ("system_prompt", "Be brief."),
                ("max_tokens", "64"),
                ("context_length", "2048"),
            ],
            &[],
        )
        .await;
    assert_eq!(created.status, 303, "{}", created.body);
    assert_eq!(created.header("location"), Some("/t/startup/i/chat?notice=created"));
    let again = alice
        .post("/t/startup/new", &[("csrf", &csrf), ("name", "chat"), ("model", "default")], &[])
        .await;
    assert_eq!(again.status, 422);
    assert!(again.body.contains("exists already"), "{}", again.body);
    p.wait_condition("inst/chat -n tenant-startup", "Ready", 120).await;
    let spec = p.json(&["get", "inst", "chat", "-n", "tenant-startup"]).await["spec"].clone();
    assert_eq!(spec["systemPrompt"], "Be brief.");
    assert_eq!(spec["limits"]["maxTokens"], 64);
    let list = alice.get("/t/startup/rows").await;
    assert!(list.body.contains(r#"data-phase="Ready""#), "{}", list.body);
    let page = alice.get("/t/startup/i/chat").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(&gw.base), "the endpoint is the gateway's: {}", page.body);
    assert!(page.body.contains("Ready is True"), "conditions as activity: {}", page.body);

    // --- the data we hold: the instance's history volume with its class, place and timer, the
    // key's place and age, each retention window, read as the owner ---
    let data = alice.get("/t/startup/data").await;
    assert_eq!(data.status, 200, "{}", data.body);
    let history = p.json(&["get", "pvc", "-n", "tenant-startup"]).await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["metadata"]["name"].as_str().unwrap().to_string())
        .find(|n| n.contains("chat"))
        .expect("the instance's history volume");
    for fact in [
        history.as_str(),
        "conversationHistory",
        "kept while InferenceInstance chat exists",
        "tw-taipei-1: your volumes and the GPUs that read them stay there",
        "alice@startup.example (user)",
        "Secret alcove-tenant-key in tenant-startup, made ",
        "billingRecords",
        "the law (accounting records)",
        "Nothing has been erased yet.",
    ] {
        assert!(data.body.contains(fact), "{fact}: {}", data.body);
    }
    let node =
        p.jsonpath(&["get", "pod", "chat", "-n", "tenant-startup"], "{.spec.nodeName}").await;
    assert!(data.body.contains(&format!("mounted on {node}")), "{}", data.body);

    // --- the chat playground: a streamed answer through the gateway, kept as a conversation ---
    let key = api_key(&p, "tenant-startup", "chat").await;
    gw.learn_key(&p, &key).await;
    let chat = alice.get("/t/startup/i/chat/chat").await;
    assert_eq!(chat.status, 200, "{}", chat.body);
    let csrf = chat.csrf();
    // The test model's weights are random and the playground samples, so an answer can end at its
    // first token; the usage chart below needs at least one answer that said something.
    let mut streamed = None;
    for _ in 0..5 {
        let s = alice
            .post(
                "/t/startup/i/chat/chat",
                &[("csrf", &csrf), ("conversation", "first-talk"), ("message", PROMPT)],
                &[("Accept", "text/event-stream")],
            )
            .await;
        assert_eq!(s.status, 200, "{}", s.body);
        let said = said_something(&s.body);
        streamed = Some(s);
        if said {
            break;
        }
    }
    let streamed = streamed.unwrap();
    assert!(said_something(&streamed.body), "five empty answers in a row: {}", streamed.body);
    assert!(streamed.header("content-type").unwrap().starts_with("text/event-stream"));
    assert!(
        streamed.body.contains("chat.completion.chunk") && streamed.body.contains("data: [DONE]"),
        "{}",
        streamed.body
    );
    let listed = alice.get("/t/startup/i/chat/chat?c=first-talk").await;
    assert!(listed.body.contains(PROMPT), "the conversation so far: {}", listed.body);
    assert!(
        listed.body.contains(r#"href="/t/startup/i/chat/chat?c=first-talk""#),
        "{}",
        listed.body
    );
    let auth = format!("Bearer {key}");
    let stored = gw.call("/conversations/first-talk", &[("Authorization", &auth)], None).await;
    assert_eq!(stored.status, 200, "kept in the instance's store: {stored:?}");

    // --- usage: the gateway's records of that chat, as a chart, a table, a log and a CSV ---
    let usage = until_some("the chat in the request log", Duration::from_secs(30), || async {
        Some(alice.get("/t/startup/usage").await).filter(|u| {
            u.body.contains("chat/completions") && u.body.contains("completion tokens</title>")
        })
    })
    .await;
    assert_eq!(usage.status, 200);
    assert!(usage.body.contains(r#"<svg id="token-chart""#), "{}", usage.body);
    // Another instance picked: the chart, the table and the log show none of it.
    let none = alice.get("/t/startup/usage?instance=nope").await;
    assert!(
        !none.body.contains("completion tokens</title>")
            && none.body.contains("No requests in these 30 days.")
            && none.body.contains("No requests."),
        "{}",
        none.body
    );
    assert!(!usage.body.contains(PROMPT), "no content in the log: {}", usage.body);
    let csv = alice.get("/t/startup/usage.csv").await;
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"), "{csv:?}");
    let lines: Vec<&str> = csv.body.lines().collect();
    assert!(
        lines[0].starts_with("time_utc,request_id,instance,model,endpoint,status"),
        "{}",
        csv.body
    );
    assert!(
        lines.iter().skip(1).any(|l| l.contains(",chat,") && l.contains(",200,")),
        "{}",
        csv.body
    );
    assert!(!csv.body.contains(PROMPT));
    let none = alice.get("/t/startup/usage.csv?instance=other").await;
    assert_eq!(none.body.lines().count(), 1, "the filter applies: {}", none.body);
    let empty = alice
        .post(
            "/t/startup/i/chat/chat",
            &[("csrf", &csrf), ("message", " ")],
            &[("Accept", "text/event-stream")],
        )
        .await;
    assert_eq!(empty.status, 422, "an empty message is refused in words: {}", empty.body);

    // --- export: with a knowledge base from GitOps too, one tar archive (streamed; read here
    // by GNU tar) whose every part equals the live data ---
    let kb_yaml = example("good/knowledgebase.yaml");
    p.ok(&["apply", "-f", &kb_yaml]).await;
    let archive = d.dir.join("export.tar");
    assert_eq!(alice.download("/t/startup/export.tar", &archive).await, 200);
    let dir = d.dir.join("export");
    let manifest = unpack_export(&archive, &dir);
    assert_eq!(manifest["tenant"], "startup");
    let account = export_json(&dir, "account.json");
    let live = p.json(&["get", "tenant", "startup"]).await;
    assert_eq!(account["spec"], live["spec"]);
    assert_eq!(account["metadata"]["uid"], live["metadata"]["uid"]);
    assert!(account["metadata"].get("managedFields").is_none(), "no bookkeeping");
    let inst = export_json(&dir, "instances/chat.json");
    assert_eq!(
        inst["spec"],
        p.json(&["get", "inst", "chat", "-n", "tenant-startup"]).await["spec"]
    );
    let kb = export_json(&dir, "knowledge-bases/handbook.json");
    assert_eq!(
        kb["spec"],
        p.json(&["get", "kb", "handbook", "-n", "tenant-startup"]).await["spec"]
    );
    let docs = p.json(&["get", "cm", "handbook-docs", "-n", "tenant-startup"]).await;
    let read = |path: String| {
        std::fs::read_to_string(dir.join(&path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    for (file, text) in docs["data"].as_object().unwrap() {
        assert_eq!(&read(format!("knowledge-bases/handbook/documents/handbook/{file}")), text);
    }
    assert_eq!(
        read("knowledge-bases/handbook/documents/welcome/inline.txt".into()),
        kb["spec"]["sources"][1]["inline"].as_str().unwrap()
    );
    let kept = gw.call("/conversations/first-talk", &[("Authorization", &auth)], None).await;
    let exported = export_json(&dir, "conversations/chat/first-talk.json");
    assert_eq!(exported, kept.body, "the conversation as the instance keeps it, decrypted");
    assert!(exported.to_string().contains(PROMPT), "{exported}");
    // The request log as the CSV download has it (which by now also logs the export's reads).
    let log = read("usage/requests-0001.csv".into());
    let live_log = alice.get("/t/startup/usage.csv").await.body;
    assert!(log.lines().any(|l| l.contains("chat/completions")), "{log}");
    for line in log.lines() {
        assert!(live_log.lines().any(|l| l == line), "{line} in {live_log}");
    }
    let omitted = manifest["omitted"].as_array().unwrap();
    assert!(
        omitted
            .iter()
            .any(|o| o["part"] == "billing"
                && o["why"].as_str().unwrap().contains("payment processor")),
        "each part left out says why: {omitted:?}"
    );
    assert_eq!(alice.download("/t/acme/export.tar", &archive).await, 404, "only one's own");
    p.ok(&["delete", "-f", &kb_yaml]).await;

    // Deleting it asks for a fresh code; then it is gone from the instance's store.
    let confirm = alice.get("/t/startup/i/chat/c/first-talk/delete").await;
    assert!(confirm.body.contains("cannot be undone"), "{}", confirm.body);
    alice.post("/t/startup/i/chat/c/first-talk/delete/code", &[("csrf", &csrf)], &[]).await;
    let deletion_code = d.code(ALICE, 1).await;
    let deleted = alice
        .post(
            "/t/startup/i/chat/c/first-talk/delete",
            &[("csrf", &csrf), ("code", &deletion_code)],
            &[],
        )
        .await;
    assert_eq!(deleted.status, 303, "{}", deleted.body);
    let gone = gw.call("/conversations/first-talk", &[("Authorization", &auth)], None).await;
    assert_eq!(gone.status, 404, "deleted from the instance's store: {gone:?}");

    // --- the key, shown on request; rotated; the old one refused by the gateway ---
    let csrf = page.csrf();
    let shown = alice.post("/t/startup/i/chat/key", &[("csrf", &csrf)], &[]).await;
    assert_eq!(shown.status, 200);
    assert!(shown.body.contains(&key), "the key is shown to its owner");
    eventually("the gateway knows the key", Duration::from_secs(30), || async {
        gw.call("/models", &[("Authorization", &auth)], None).await.status == 200
    })
    .await;
    let rotated = alice.post("/t/startup/i/chat/rotate", &[("csrf", &csrf)], &[]).await;
    assert_eq!(rotated.status, 303, "{}", rotated.body);
    eventually("the old key is refused", Duration::from_secs(60), || async {
        gw.call("/models", &[("Authorization", &auth)], None).await.status == 401
    })
    .await;
    let new_key = api_key(&p, "tenant-startup", "chat").await;
    assert_ne!(new_key, key);

    // --- CSRF and origin ---
    let before = p.json(&["get", "inst", "chat", "-n", "tenant-startup"]).await["spec"].clone();
    let no_token = alice.post("/t/startup/i/chat/state", &[("state", "Suspended")], &[]).await;
    assert_eq!(no_token.status, 403);
    let other_session = bob.get("/").await.csrf();
    let foreign = alice
        .post("/t/startup/i/chat/state", &[("csrf", &other_session), ("state", "Suspended")], &[])
        .await;
    assert_eq!(foreign.status, 403, "another session's token");
    let cross = alice
        .post(
            "/t/startup/i/chat/state",
            &[("csrf", &csrf), ("state", "Suspended")],
            &[("Origin", "http://evil.example")],
        )
        .await;
    assert_eq!(cross.status, 403, "another origin");
    assert_eq!(p.json(&["get", "inst", "chat", "-n", "tenant-startup"]).await["spec"], before);

    // --- suspend and resume ---
    let s = alice
        .post("/t/startup/i/chat/state", &[("csrf", &csrf), ("state", "Suspended")], &[])
        .await;
    assert_eq!(s.status, 303);
    p.wait_condition("inst/chat -n tenant-startup", "Ready=False", 60).await;
    assert_eq!(
        p.jsonpath(&["get", "inst", "chat", "-n", "tenant-startup"], "{.status.phase}").await,
        "Suspended"
    );
    let r =
        alice.post("/t/startup/i/chat/state", &[("csrf", &csrf), ("state", "Running")], &[]).await;
    assert_eq!(r.status, 303);
    p.wait_condition("inst/chat -n tenant-startup", "Ready", 120).await;

    // --- another tenant's owner: nothing to see, nothing to do, with crafted URLs and posts ---
    let bob_csrf = bob.get("/").await.csrf();
    for path in [
        "/t/startup",
        "/t/startup/rows",
        "/t/startup/new",
        "/t/startup/i/chat",
        "/t/startup/i/chat/destroy",
        "/t/startup/i/chat/chat",
        "/t/startup/i/chat/conversations",
        "/t/startup/i/chat/c/x/delete",
        "/t/startup/kb",
        "/t/startup/data",
        "/t/startup/usage",
        "/t/startup/usage.csv",
        "/t/nonexistent",
    ] {
        let r = bob.get(path).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert!(!r.body.contains("chat"), "{path} shows nothing of it");
    }
    for (path, fields) in [
        ("/t/startup/i/chat/state", vec![("state", "Suspended")]),
        ("/t/startup/i/chat/key", vec![]),
        ("/t/startup/i/chat/rotate", vec![]),
        ("/t/startup/i/chat/chat", vec![("message", "hi")]),
        ("/t/startup/i/chat/c/x/delete", vec![("code", "123456")]),
        ("/t/startup/i/chat/kb", vec![("knowledge_base", "")]),
        ("/t/startup/kb/handbook/remove", vec![("document", "a.md")]),
        ("/t/startup/i/chat/destroy", vec![("code", "123456")]),
        ("/t/startup/new", vec![("name", "intruder"), ("model", "default")]),
    ] {
        let mut f = vec![("csrf", bob_csrf.as_str())];
        f.extend(fields);
        let r = bob.post(path, &f, &[]).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
    }
    let after = p.json(&["get", "inst", "chat", "-n", "tenant-startup"]).await;
    assert_eq!(after["spec"]["state"], "Running");
    assert!(after["metadata"]["annotations"].get("alcove.dev/rotate-api-key").is_some());
    let (ok, _, _) = p.kubectl(&["get", "inst", "intruder", "-n", "tenant-startup"]).await;
    assert!(!ok, "nothing was created");

    // What the instance logged and counted, read while it runs.
    let outputs_before_destroy = p.every_output(&[&gw]).await;

    // --- destroy: confirmation and a fresh code; the pod gone ---
    let confirm = alice.get("/t/startup/i/chat/destroy").await;
    assert!(confirm.body.contains("cannot be undone"), "{}", confirm.body);
    let sent = alice.post("/t/startup/i/chat/destroy/code", &[("csrf", &csrf)], &[]).await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    let code = d.code(ALICE, 2).await;
    let wrong = if code == "999999" { "999998" } else { "999999" };
    let refused =
        alice.post("/t/startup/i/chat/destroy", &[("csrf", &csrf), ("code", wrong)], &[]).await;
    assert_eq!(refused.status, 400);
    assert!(refused.body.contains("not right"), "{}", refused.body);
    let (still, _, _) = p.kubectl(&["get", "inst", "chat", "-n", "tenant-startup"]).await;
    assert!(still, "a wrong code destroys nothing");
    let done =
        alice.post("/t/startup/i/chat/destroy", &[("csrf", &csrf), ("code", &code)], &[]).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Its pod is gone."), "{}", done.body);
    assert!(done.body.contains("GPU billing stopped"), "{}", done.body);
    let pods =
        p.json(&["get", "pods", "-n", "tenant-startup", "-l", "alcove.dev/instance=chat"]).await;
    assert_eq!(pods["items"].as_array().unwrap().len(), 0);

    // --- sign-out ends the session ---
    let out = alice.post("/signout", &[("csrf", &csrf)], &[]).await;
    assert_eq!(out.status, 303);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(alice.get("/").await.status, 303);

    // Nothing secret in any component's output (logs, Events, metrics): no sign-in or
    // confirmation code, no key, old or new, no session token, no prompt, no completion.
    let mut outputs = p.every_output(&[&gw]).await;
    outputs.extend(outputs_before_destroy);
    assert!(
        outputs.iter().any(|(s, t)| s.ends_with("dashboard.log") && t.contains("signed in")),
        "the sweep reads the dashboard's log: {:?}",
        outputs.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    let token = cookie.split(';').next().unwrap().split('=').nth(1).unwrap();
    let completion = answer_text(&streamed.body);
    let mut secrets = vec![
        ("a sign-in code", bob_code.as_str()),
        ("a conversation's deletion code", deletion_code.as_str()),
        ("the destroy code", code.as_str()),
        ("the key", key.as_str()),
        ("the rotated key", new_key.as_str()),
        ("a session token", token),
        ("the prompt", PROMPT),
    ];
    // A short answer of the random test model could be a common word; a long one is its own.
    if completion.trim().len() >= 12 {
        secrets.push(("the completion", completion.trim()));
    }
    for (what, secret) in secrets {
        let found = leaks(&outputs, secret);
        assert!(found.is_empty(), "{what} is in {found:?}");
    }
}

/// The text of a streamed chat answer.
fn answer_text(sse: &str) -> String {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect()
}

/// Self sign-up, switched on: a new address proves itself with the code mailed to it and gets
/// its own Tenant (the configured tier and region, the address its only owner), the operator
/// makes it Ready, and its page opens as that owner, in chromium. An address that owns a tenant only signs
/// in; the hourly limit refuses the next account in words. Off (the default), /signup is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_sign_up_makes_an_account_under_limits() {
    let p = platform_with_operator().await;
    p.ok(&["apply", "-f", &example("good/tenant-basic.yaml")]).await;
    let kubeconfig = p.cluster.kubeconfig.clone();
    let off =
        Dashboard::start_as(&p, "plain", &kubeconfig, &["--gateway-url", "https://g.invalid"])
            .await;
    assert_eq!(off.browser("a").get("/signup").await.status, 404);
    assert!(!off.browser("a").get("/signin").await.body.contains("Create an account"));
    let d = Dashboard::start_as(
        &p,
        "open",
        &kubeconfig,
        &[
            "--gateway-url",
            "https://g.invalid",
            "--signup-tier",
            "free",
            "--signup-region",
            "tw-taipei-1",
            "--signups-per-hour",
            "2",
        ],
    )
    .await;
    let tenants = || async {
        let all = p.json(&["get", "tenants", "-l", "alcove.dev/signup=dashboard"]).await;
        all["items"].as_array().unwrap().clone()
    };

    let page = d.browser("new").get("/signin").await;
    assert!(page.body.contains(r#"href="/signup""#), "{}", page.body);
    // In chromium (tests/browser/sign_up.mjs): refusals, a wrong code, the new account's page.
    let (result, out) = browser_journey(
        "sign_up.mjs",
        "dashboard-sign-up",
        &d,
        &[("EMAIL", "Ada@Bakery.example"), ("ACCOUNT", "Ada's Bakery")],
    )
    .await;
    let name = result["tenant"].as_str().unwrap().to_string();
    assert!(name.starts_with("ada-s-bakery-"), "{name}");
    let t = p.json(&["get", "tenant", &name]).await;
    assert_eq!(
        t["spec"],
        serde_json::json!({"displayName": "Ada's Bakery", "tier": "free", "region": "tw-taipei-1",
                           "owners": [{"kind": "User", "name": "ada@bakery.example"}]})
    );
    assert_eq!(t["status"]["phase"], "Ready", "the page opened once the operator had made it");
    assert!(std::fs::read_dir(&out).unwrap().count() >= 3);
    assert_eq!(tenants().await.len(), 1);

    // An address that owns a tenant signs in; no second account.
    let again = d.browser("again");
    again
        .post("/signup", &[("email", "alice@startup.example"), ("display_name", "Another")], &[])
        .await;
    let code = d.code("alice@startup.example", 0).await;
    let back = create(&again, ("alice@startup.example", "Another"), &code).await;
    assert_eq!((back.status, back.header("location")), (303, Some("/")), "{}", back.body);
    assert_eq!(tenants().await.len(), 1);

    // The hourly limit (2 here): the second new account is made, the third refused in words.
    for (i, addr) in ["bo@b.example", "cy@c.example"].into_iter().enumerate() {
        let b = d.browser(addr);
        b.post("/signup", &[("email", addr), ("display_name", "Shop")], &[]).await;
        let code = d.code(addr, 0).await;
        let r = create(&b, (addr, "Shop"), &code).await;
        if i == 0 {
            assert_eq!(r.status, 303, "{}", r.body);
        } else {
            assert_eq!(r.status, 429, "{}", r.body);
            assert!(r.body.contains("Too many new accounts were made just now"), "{}", r.body);
        }
    }
    assert_eq!(tenants().await.len(), 2);
    // Codes never reach the log.
    let log = d.log_text();
    assert!(log.contains("account made by self sign-up"), "{log}");
    assert!(!log.contains(&d.code("cy@c.example", 0).await), "{log}");
}

/// Enters a sign-up code for (address, account name).
async fn create(b: &Browser, (email, name): (&str, &str), code: &str) -> WebPage {
    b.post("/signup/code", &[("email", email), ("display_name", name), ("code", code)], &[]).await
}

/// Whether a streamed chat answer carried any text: some chunk's `delta.content` is not empty.
fn said_something(sse: &str) -> bool {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .any(|v| v["choices"][0]["delta"]["content"].as_str().is_some_and(|c| !c.is_empty()))
}
