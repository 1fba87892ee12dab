//! The Tenant controller end to end: kubectl applies the examples, `alcove operator` runs as a
//! process against devcluster, and everything is checked through the API, kubectl and RBAC.

use std::time::{Duration, Instant};

use alcove_tests::*;
use base64::Engine;
use serde_json::Value;

async fn json(p: &Platform, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&p.ok(&a).await).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_example_tenants_become_ready_and_isolated() {
    let mut p = Platform::start().await;
    p.spawn_operator(&[]).await;
    for t in ["tenant-free", "tenant-basic", "tenant-pro", "tenant-enterprise"] {
        p.ok(&["apply", "-f", &example(&format!("good/{t}.yaml"))]).await;
    }
    p.ok(&["apply", "-f", &example("illegal/tenant-region-without-capacity.yaml")]).await;
    for t in ["sandbox", "startup", "acme", "globex"] {
        p.wait_condition(&format!("tenant/{t}"), "Ready", 30).await;
    }
    let table = p.ok(&["get", "tn"]).await;
    for t in ["sandbox", "startup", "acme", "globex"] {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("{t} ")))
            .unwrap_or_else(|| panic!("{table}"));
        assert!(line.contains(" Ready ") && line.contains(" True "), "{line}");
    }

    // The namespace and its contents, for the pro tenant.
    let ns = json(&p, &["get", "namespace", "tenant-acme"]).await;
    let labels = &ns["metadata"]["labels"];
    assert_eq!(labels["alcove.dev/tenant"], "acme");
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
    let quota = json(&p, &["get", "resourcequota", "alcove-quota", "-n", "tenant-acme"]).await;
    assert_eq!(quota["spec"]["hard"]["requests.nvidia.com/gpu"], "8");
    assert_eq!(quota["spec"]["hard"]["count/inferenceinstances.alcove.dev"], "8");
    assert_eq!(quota["spec"]["hard"]["requests.storage"], "500Gi");
    json(&p, &["get", "limitrange", "alcove-limits", "-n", "tenant-acme"]).await;
    let pols = json(&p, &["get", "networkpolicies", "-n", "tenant-acme"]).await;
    let names: Vec<&str> = pols["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "alcove-allow-dns",
            "alcove-allow-gateway",
            "alcove-allow-same-namespace",
            "alcove-default-deny"
        ]
    );
    let binding =
        json(&p, &["get", "rolebinding", "alcove-tenant-admins", "-n", "tenant-acme"]).await;
    let subjects: Vec<String> = binding["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}:{}", s["kind"].as_str().unwrap(), s["name"].as_str().unwrap()))
        .collect();
    assert_eq!(subjects, ["User:bob@acme.example", "Group:alcove:tenant:acme"]);
    let key = json(&p, &["get", "secret", "alcove-tenant-key", "-n", "tenant-acme"]).await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key["data"]["key"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes.len(), 32, "256-bit key");
    let other = json(&p, &["get", "secret", "alcove-tenant-key", "-n", "tenant-startup"]).await;
    assert_ne!(key["data"]["key"], other["data"]["key"], "each tenant has its own key");

    // Placement per tier, always within the region.
    let acme = json(&p, &["get", "tn", "acme"]).await;
    assert_eq!(acme["status"]["placement"]["nodeSelector"]["alcove.dev/tenant"], "acme");
    assert_eq!(
        acme["status"]["placement"]["nodeSelector"]["topology.kubernetes.io/region"],
        "tw-taipei-1"
    );
    assert_eq!(acme["status"]["namespace"], "tenant-acme");
    assert_eq!(acme["status"]["observedGeneration"], 1);
    for c in ["Ready", "QuotaApplied", "IsolationApplied"] {
        assert!(
            acme["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["type"] == c && x["status"] == "True"),
            "{c}"
        );
    }
    let globex = json(&p, &["get", "tn", "globex"]).await;
    assert_eq!(globex["status"]["placement"]["nodeSelector"]["alcove.dev/customer-pool"], "globex");

    // No capacity in the region: Ready=False with the reason, and an Event.
    let yukon = until_some("yukon evaluated", Duration::from_secs(20), || async {
        let v = json(&p, &["get", "tn", "yukon"]).await;
        v["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned())
    })
    .await;
    assert_eq!(yukon["status"], "False");
    assert_eq!(yukon["reason"], "NoCapacityInRegion");
    let events =
        p.ok(&["get", "events", "-A", "--field-selector", "involvedObject.name=yukon"]).await;
    assert!(events.contains("NoCapacityInRegion"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_owners_are_confined_to_their_namespace() {
    let mut p = Platform::start().await;
    p.spawn_operator(&[]).await;
    p.ok(&[
        "apply",
        "-f",
        &example("good/tenant-basic.yaml"),
        "-f",
        &example("good/tenant-pro.yaml"),
    ])
    .await;
    p.wait_condition("tenant/startup", "Ready", 30).await;
    p.wait_condition("tenant/acme", "Ready", 30).await;
    // alice owns startup (by name); carol is in the tenant's admin group.
    let alice = p.user_kubeconfig("alice@startup.example", &[]);
    let carol = p.user_kubeconfig("carol", &["alcove:tenant:startup"]);
    let can = |kc: std::path::PathBuf, args: Vec<&'static str>| {
        let p = &p;
        async move {
            let mut full = vec!["auth", "can-i"];
            full.extend(args);
            p.kubectl_as(&kc, &full, None).await.1.trim().to_string()
        }
    };
    assert_eq!(
        can(alice.clone(), vec!["create", "inferenceinstances.alcove.dev", "-n", "tenant-startup"])
            .await,
        "yes"
    );
    assert_eq!(
        can(carol.clone(), vec!["create", "knowledgebases.alcove.dev", "-n", "tenant-startup"])
            .await,
        "yes"
    );
    assert_eq!(
        can(alice.clone(), vec!["create", "inferenceinstances.alcove.dev", "-n", "tenant-acme"])
            .await,
        "no"
    );
    assert_eq!(
        can(alice.clone(), vec!["update", "resourcequotas", "-n", "tenant-startup"]).await,
        "no"
    );
    assert_eq!(
        can(alice.clone(), vec!["delete", "networkpolicies", "-n", "tenant-startup"]).await,
        "no"
    );
    assert_eq!(can(alice.clone(), vec!["get", "secrets", "-n", "tenant-acme"]).await, "no");
    assert_eq!(
        can(alice.clone(), vec!["get", "secret/alcove-tenant-key", "-n", "tenant-startup"]).await,
        "no"
    );
    // The rest of the attack matrix's RBAC rows (docs/security.md): no listing Secrets, no
    // editing the Tenant (its tier, quota and retention are the platform's), no pods of one's
    // own, and the service proxy only into one's own namespace.
    for (args, want) in [
        (vec!["list", "secrets", "-n", "tenant-startup"], "no"),
        (vec!["patch", "tenants.alcove.dev/startup"], "no"),
        (vec!["update", "tenants.alcove.dev/startup"], "no"),
        (vec!["create", "pods", "-n", "tenant-startup"], "no"),
        (vec!["create", "pods/exec", "-n", "tenant-startup"], "no"),
        (vec!["get", "services/proxy", "-n", "tenant-acme"], "no"),
        (vec!["get", "services/proxy", "-n", "tenant-startup"], "yes"),
        (vec!["get", "tenants.alcove.dev/acme"], "no"),
        (vec!["get", "tenants.alcove.dev/startup"], "yes"),
    ] {
        assert_eq!(can(alice.clone(), args.clone()).await, want, "alice: can-i {}", args.join(" "));
    }

    // Real requests agree.
    let instance =
        std::fs::read_to_string(workspace_root().join("examples/good/instance-safetensors.yaml"))
            .unwrap();
    let (ok, _, err) = p.kubectl_as(&alice, &["apply", "-f", "-"], Some(&instance)).await;
    assert!(ok, "{err}");
    let other = instance.replace("namespace: tenant-startup", "namespace: tenant-acme");
    let (ok, _, err) = p.kubectl_as(&alice, &["apply", "-f", "-"], Some(&other)).await;
    assert!(!ok && err.contains("is forbidden: User \"alice@startup.example\" cannot"), "{err}");
    for (args, what) in [
        (vec!["get", "resourcequota", "alcove-quota", "-n", "tenant-startup", "-o", "name"], "get"),
        (vec!["delete", "networkpolicy", "alcove-default-deny", "-n", "tenant-startup"], "delete"),
        (vec!["get", "secret", "alcove-tenant-key", "-n", "tenant-acme"], "get"),
        (vec!["get", "secret", "alcove-tenant-key", "-n", "tenant-startup"], "get"),
        (vec!["get", "inferenceinstances", "-n", "tenant-acme"], "list"),
        (vec!["get", "secrets", "-n", "tenant-startup"], "list"),
        (
            vec![
                "patch",
                "tenant",
                "startup",
                "--type=merge",
                "-p",
                r#"{"spec":{"tier":"enterprise"}}"#,
            ],
            "patch",
        ),
        (
            vec![
                "get",
                "--raw",
                "/api/v1/namespaces/tenant-acme/services/chat:8080/proxy/v1/models",
            ],
            "get",
        ),
    ] {
        let (ok, _, err) = p.kubectl_as(&alice, &args, None).await;
        assert!(!ok, "alice may not {}", args.join(" "));
        assert!(
            err.contains("Forbidden") && err.contains(&format!("cannot {what} resource")),
            "{err}"
        );
    }
    // The admin group works for the tenant namespace too.
    let (ok, _, err) =
        p.kubectl_as(&carol, &["get", "inferenceinstances", "-n", "tenant-startup"], None).await;
    assert!(ok, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_reconcile_writes_nothing_and_drift_is_restored() {
    let mut p = Platform::start().await;
    let op = p.spawn_operator(&["--resync-seconds", "1"]).await;
    p.ok(&["apply", "-f", &example("good/tenant-basic.yaml")]).await;
    p.wait_condition("tenant/startup", "Ready", 30).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.settled_under_faults().await;
    let reconciles = |m: &str| metric(m, "alcove_reconcile_total", "controller=\"tenant\"");
    let before_writes = p.reconcile_writes().await;
    let before_reconciles = reconciles(&p.operators[op].metrics().await);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after_reconciles = reconciles(&p.operators[op].metrics().await);
    let after_writes = p.reconcile_writes().await;
    assert!(
        after_reconciles >= before_reconciles + 3.0,
        "periodic reconciles ran ({before_reconciles} → {after_reconciles})"
    );
    assert_eq!(
        after_writes,
        before_writes,
        "an unchanged tenant's reconcile writes nothing: {:?}",
        p.writes_by_resource().await
    );

    // Someone opens the default-deny policy; the next reconcile puts it back.
    p.ok(&[
        "patch",
        "networkpolicy",
        "alcove-default-deny",
        "-n",
        "tenant-startup",
        "--type=merge",
        "-p",
        r#"{"spec":{"policyTypes":["Ingress"]}}"#,
    ])
    .await;
    eventually("drifted policy restored", Duration::from_secs(15), || async {
        p.jsonpath(
            &["get", "networkpolicy", "alcove-default-deny", "-n", "tenant-startup"],
            "{.spec.policyTypes}",
        )
        .await
            == r#"["Ingress","Egress"]"#
    })
    .await;
    // Deleted children come back too.
    p.ok(&["delete", "resourcequota", "alcove-quota", "-n", "tenant-startup"]).await;
    eventually("deleted quota recreated", Duration::from_secs(15), || async {
        p.kubectl(&["get", "resourcequota", "alcove-quota", "-n", "tenant-startup"]).await.0
    })
    .await;
    let events =
        p.ok(&["get", "events", "-A", "--field-selector", "involvedObject.name=startup"]).await;
    assert!(events.contains("IsolationRestored"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_changes_converge() {
    let mut p = Platform::start().await;
    p.spawn_operator(&[]).await;
    p.ok(&["apply", "-f", &example("good/tenant-basic.yaml")]).await;
    p.wait_condition("tenant/startup", "Ready", 30).await;
    p.ok(&[
        "patch",
        "tn",
        "startup",
        "--type=merge",
        "-p",
        r#"{"spec":{"quota":{"maxGpus":2},"owners":[{"kind":"User","name":"dave@startup.example"}],"tier":"pro"}}"#,
    ])
    .await;
    eventually("quota follows the spec", Duration::from_secs(15), || async {
        p.jsonpath(
            &["get", "resourcequota", "alcove-quota", "-n", "tenant-startup"],
            "{.spec.hard.requests\\.nvidia\\.com/gpu}",
        )
        .await
            == "2"
    })
    .await;
    eventually("owners follow the spec", Duration::from_secs(15), || async {
        p.jsonpath(
            &["get", "rolebinding", "alcove-tenant-admins", "-n", "tenant-startup"],
            "{.subjects[*].name}",
        )
        .await
            == "dave@startup.example alcove:tenant:startup"
    })
    .await;
    // pro: dedicated nodes labelled for the tenant; none exist for startup, so it is not Ready.
    eventually("tier changes placement", Duration::from_secs(15), || async {
        p.jsonpath(
            &["get", "tn", "startup"],
            "{.status.placement.nodeSelector.alcove\\.dev/tenant}",
        )
        .await
            == "startup"
    })
    .await;
    eventually("no dedicated capacity", Duration::from_secs(15), || async {
        p.jsonpath(&["get", "tn", "startup"], "{.status.conditions[?(@.type==\"Ready\")].reason}")
            .await
            == "NoCapacityInRegion"
    })
    .await;
    assert_eq!(p.jsonpath(&["get", "tn", "startup"], "{.status.observedGeneration}").await, "2");
    // A node for it appears: Ready again without any touch.
    let node = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"gpu-tw-startup","labels":{"topology.kubernetes.io/region":"tw-taipei-1","alcove.dev/tenant":"startup"}},
        "spec":{"taints":[{"key":"alcove.dev/tenant","value":"startup","effect":"NoSchedule"}]},
        "status":{"allocatable":{"cpu":"8","memory":"64Gi","pods":"110","nvidia.com/gpu":"4"},"capacity":{"cpu":"8","memory":"64Gi","pods":"110","nvidia.com/gpu":"4"}}}"#;
    p.ok_in(&["create", "-f", "-"], node).await;
    p.wait_condition("tenant/startup", "Ready", 15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_leaves_nothing_behind() {
    let mut p = Platform::start().await;
    let clock = Clock(p.dir.path().join("clock"));
    clock.set(jiff::Timestamp::now());
    let path = clock.0.display().to_string();
    p.spawn_operator(&["--clock-file", &path]).await;
    p.ok(&["apply", "-f", &example("good/tenant-basic.yaml")]).await;
    p.wait_condition("tenant/startup", "Ready", 30).await;
    p.ok(&["delete", "tn", "startup", "--wait=false"]).await;
    // The account-data window (30 days by default) passes; see tests/retention.rs for its edges.
    eventually("erase window started", Duration::from_secs(20), || async {
        p.jsonpath(&["get", "tn", "startup"], "{.status.phase}").await == "Erasing"
    })
    .await;
    clock.set(clock.now().checked_add(jiff::SignedDuration::from_hours(31 * 24)).unwrap());
    let (ok, _, err) = p.kubectl(&["wait", "--for=delete", "tn/startup", "--timeout=60s"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = p.kubectl(&["get", "namespace", "tenant-startup"]).await;
    assert!(!ok && err.contains("not found"), "namespace gone: {err}");
    for kind in
        ["resourcequotas", "networkpolicies", "roles", "rolebindings", "secrets", "limitranges"]
    {
        let out = p.ok(&["get", kind, "-A", "-l", "alcove.dev/tenant=startup", "-o", "name"]).await;
        assert!(out.trim().is_empty(), "orphaned {kind}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_within_fifteen_seconds() {
    let mut p = Platform::start().await;
    let a = p.spawn_operator(&[]).await;
    let b = p.spawn_operator(&[]).await;
    p.ok(&["apply", "-f", &example("good/tenant-basic.yaml")]).await;
    p.wait_condition("tenant/startup", "Ready", 30).await;
    let holder = p
        .jsonpath(
            &["get", "lease", "alcove-operator", "-n", "alcove-system"],
            "{.spec.holderIdentity}",
        )
        .await;
    let (leader, standby) = if holder == p.operators[a].identity { (a, b) } else { (b, a) };
    assert_eq!(holder, p.operators[leader].identity);
    assert!(!p.operators[standby].log_text().contains("became leader"), "only one leader");
    assert_eq!(
        metric(&p.operators[standby].metrics().await, "alcove_reconcile_total", ""),
        0.0,
        "the standby does not reconcile"
    );
    // Kill the leader without any chance to release the Lease.
    p.operators[leader].kill().await;
    let killed_at = Instant::now();
    p.ok(&["apply", "-f", &example("good/tenant-pro.yaml")]).await;
    p.wait_condition("tenant/acme", "Ready", 30).await;
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "standby reconciled a new tenant {took:?} after the leader died"
    );
    assert!(p.operators[standby].log_text().contains("became leader"));
    println!("failover: new tenant Ready {took:?} after the leader was killed");
}

/// Medical, financial and criminal-record data need the customer's explicit written consent
/// first: a tenant that declares such a category without a consent record gets no instance pod
/// and no indexing, each refusal with a condition and a warning Event that say why; the
/// platform's consent record lets them start. Instance pods are simulated (Ready without a
/// process): this is about the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_data_waits_for_a_consent_record() {
    let (mut p, _stripe, _clock, _args) = billing_platform().await;
    p.spawn_operator(&[]).await;
    let tenant = |consents: &str| {
        format!(
            "apiVersion: alcove.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: clinic}}\nspec:\n  displayName: Clinic\n  tier: basic\n  region: tw-taipei-1\n  sensitiveData: [medical, financial]\n{consents}"
        )
    };
    // The schema refuses a category listed twice, naming the field.
    let (ok, _, err) = p
        .kubectl_as(
            &p.cluster.kubeconfig,
            &["apply", "-f", "-"],
            Some("apiVersion: alcove.dev/v1alpha1\nkind: Tenant\nmetadata: {name: twice}\nspec:\n  displayName: T\n  tier: basic\n  region: tw-taipei-1\n  sensitiveData: [medical, medical]\n"),
        )
        .await;
    assert!(!ok && err.contains("spec.sensitiveData lists each category once"), "{err}");
    p.ok_in(
        &["apply", "-f", "-"],
        &tenant("  consents: [{category: medical, reference: DPA-17}]\n"),
    )
    .await;
    p.wait_condition("tenant/clinic", "Ready", 60).await;
    p.ok_in(
        &["apply", "-f", "-"],
        "apiVersion: alcove.dev/v1alpha1\nkind: InferenceInstance\nmetadata: {name: triage, namespace: tenant-clinic}\nspec:\n  model: {format: safetensors, source: {platform: default}}\n  gpu: {count: 1}\n---\napiVersion: alcove.dev/v1alpha1\nkind: KnowledgeBase\nmetadata: {name: notes, namespace: tenant-clinic}\nspec:\n  sources: [{name: a, inline: 'hello'}]\n  embeddingModel: {source: {platform: default-embedding}}\n",
    )
    .await;
    let reason = |kind: &'static str, name: &'static str, cond: &'static str| {
        let p = &p;
        async move {
            p.jsonpath(
                &["get", kind, name, "-n", "tenant-clinic"],
                &format!("{{.status.conditions[?(@.type==\"{cond}\")].reason}}"),
            )
            .await
        }
    };
    eventually("the instance refused for consent", Duration::from_secs(30), || async {
        reason("inferenceinstance", "triage", "Ready").await
            == alcove_crds::reason::CONSENT_REQUIRED
    })
    .await;
    eventually("the knowledge base refused for consent", Duration::from_secs(30), || async {
        reason("knowledgebase", "notes", "Indexed").await == alcove_crds::reason::CONSENT_REQUIRED
    })
    .await;
    let message = p
        .jsonpath(
            &["get", "inferenceinstance", "triage", "-n", "tenant-clinic"],
            "{.status.conditions[?(@.type==\"Ready\")].message}",
        )
        .await;
    assert!(
        message.contains("declares financial data") && message.contains("spec.consents"),
        "{message}"
    );
    assert_eq!(
        p.jsonpath(
            &["get", "inferenceinstance", "triage", "-n", "tenant-clinic"],
            "{.status.phase}"
        )
        .await,
        "Pending"
    );
    let pods = p.json(&["get", "pods", "-n", "tenant-clinic"]).await;
    assert!(
        pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|pod| !pod["metadata"]["name"].as_str().unwrap().starts_with("triage")),
        "no instance pod: {pods}"
    );
    // One Event each for the instance and the knowledge base (under API faults, the second may
    // follow the condition by a retry).
    let events = until_some("two ConsentRequired Events", Duration::from_secs(10), || async {
        let events = p.events("tenant-clinic", alcove_crds::reason::CONSENT_REQUIRED).await;
        (events.len() >= 2).then_some(events)
    })
    .await;
    assert!(events.iter().all(|e| e["type"] == "Warning"), "{events:?}");

    // The platform records the second consent: the instance starts.
    p.ok_in(
        &["apply", "-f", "-"],
        &tenant("  consents: [{category: medical, reference: DPA-17}, {category: financial, reference: DPA-18}]\n"),
    )
    .await;
    p.wait_condition("inferenceinstance/triage -n tenant-clinic", "Ready", 60).await;
    eventually("the knowledge base no longer refused", Duration::from_secs(30), || async {
        reason("knowledgebase", "notes", "Indexed").await != alcove_crds::reason::CONSENT_REQUIRED
    })
    .await;
}
