//! The same server through the real `kubectl`: apply (client- and server-side), get with printer
//! columns, explain, wait, patch, delete --wait, RBAC answers and refusals, and the schema's
//! refusal of every `examples/bad/` manifest with its rule's message.

mod common;

use std::time::Duration;

use common::*;

async fn with_crds() -> Env {
    let env = start().await;
    let dir = workspace_root().join("crds/manifests");
    env.ok(&["apply", "-f", dir.to_str().unwrap()]).await;
    env
}

fn example(rel: &str) -> String {
    workspace_root().join("examples").join(rel).display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_columns_explain_wait_patch_delete() {
    let env = with_crds().await;
    let out = env.ok(&["apply", "-f", &example("good/tenant-basic.yaml")]).await;
    assert_eq!(out.trim(), "tenant.alcove.dev/startup created");
    let out = env.ok(&["apply", "-f", &example("good/tenant-basic.yaml")]).await;
    assert_eq!(out.trim(), "tenant.alcove.dev/startup unchanged");

    // Printer columns, short name and category.
    let out = env.ok(&["get", "tn"]).await;
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "TIER", "REGION", "PHASE", "READY", "INSTANCES", "GPUS", "CREDIT", "AGE"]
    );
    assert!(out.lines().nth(1).unwrap().starts_with("startup   basic   tw-taipei-1"), "{out}");
    let out = env.ok(&["get", "alcove"]).await;
    assert!(out.contains("tenant.alcove.dev/startup"), "{out}");
    let out = env.ok(&["get", "tn", "-o", "wide"]).await;
    assert!(out.lines().next().unwrap().contains("NAMESPACE"), "priority-1 column in wide: {out}");

    // explain shows the field's description from the schema.
    let out = env.ok(&["explain", "tenant.spec.region"]).await;
    assert!(out.contains("KIND:       Tenant") && out.contains("Data-residency region"), "{out}");

    // wait --for=condition after a status write by someone else.
    let status = r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"Reconciled","message":"ok","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#;
    let waiter = {
        let kubeconfig = env.cluster.kubeconfig.clone();
        let cache = env.dir.path().join("kubecache");
        tokio::spawn(async move {
            tokio::process::Command::new("kubectl")
                .args(["wait", "--for=condition=Ready", "tn/startup", "--timeout=20s"])
                .env("KUBECONFIG", kubeconfig)
                .env("KUBECACHEDIR", cache)
                .output()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.ok(&["patch", "tn", "startup", "--subresource=status", "--type=merge", "-p", status]).await;
    let waited = waiter.await.unwrap();
    assert!(waited.status.success(), "{}", String::from_utf8_lossy(&waited.stderr));
    assert_eq!(
        String::from_utf8_lossy(&waited.stdout).trim(),
        "tenant.alcove.dev/startup condition met"
    );
    assert!(env.ok(&["get", "tn", "startup"]).await.contains("True"));

    // patch (merge) and server-side apply by another manager: conflict, then force.
    env.ok(&[
        "patch",
        "tn",
        "startup",
        "--type=merge",
        "-p",
        r#"{"spec":{"displayName":"Startup GmbH"}}"#,
    ])
    .await;
    let err = env
        .fails(&[
            "apply",
            "--server-side",
            "--field-manager=gitops",
            "-f",
            &example("good/tenant-basic.yaml"),
        ])
        .await;
    assert!(err.contains("conflict with \"kubectl-patch\""), "{err}");
    env.ok(&[
        "apply",
        "--server-side",
        "--field-manager=gitops",
        "--force-conflicts",
        "-f",
        &example("good/tenant-basic.yaml"),
    ])
    .await;
    let name = env.ok(&["get", "tn", "startup", "-o", "jsonpath={.spec.displayName}"]).await;
    assert_eq!(name, "Startup Inc.");

    // delete --wait returns once the object is gone (finalizer removed meanwhile).
    env.ok(&[
        "patch",
        "tn",
        "startup",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ])
    .await;
    let deleter = {
        let kubeconfig = env.cluster.kubeconfig.clone();
        let cache = env.dir.path().join("kubecache");
        tokio::spawn(async move {
            tokio::process::Command::new("kubectl")
                .args(["delete", "tn", "startup", "--wait", "--timeout=20s"])
                .env("KUBECONFIG", kubeconfig)
                .env("KUBECACHEDIR", cache)
                .output()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!deleter.is_finished(), "delete --wait waits for the finalizer");
    env.ok(&[
        "patch",
        "tn",
        "startup",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ])
    .await;
    let deleted = deleter.await.unwrap();
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
    let err = env.fails(&["get", "tn", "startup"]).await;
    assert!(err.contains("tenants.alcove.dev \"startup\" not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_examples_are_refused_with_the_rules_message() {
    let env = with_crds().await;
    env.ok(&["create", "namespace", "tenant-startup"]).await;
    let dir = workspace_root().join("examples/bad");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 20);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no '# expect:'", f.display()));
        let field = text.lines().find_map(|l| l.strip_prefix("# field: ")).unwrap();
        let r = env.kubectl(&["apply", "-f", f.to_str().unwrap()]).await;
        assert!(!r.ok, "{} was accepted", f.display());
        assert!(
            r.stderr.contains(expect),
            "{}: expected {expect:?} in:\n{}",
            f.display(),
            r.stderr
        );
        let field_shown = if field == "<root>" { "<nil>" } else { field };
        assert!(
            r.stderr.contains(&format!("{field_shown}: ")),
            "{}: refusal does not name {field_shown}: {}",
            f.display(),
            r.stderr
        );
    }
    // Immutability is a transition rule: only a change is refused.
    env.ok(&["apply", "-f", &example("good/tenant-basic.yaml")]).await;
    let err = env
        .fails(&[
            "patch",
            "tn",
            "startup",
            "--type=merge",
            "-p",
            r#"{"spec":{"region":"jp-tokyo-1"}}"#,
        ])
        .await;
    assert!(err.contains("spec.region is immutable"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_can_i_agrees_with_real_requests() {
    let env = start().await;
    env.ok(&["create", "namespace", "team-a"]).await;
    env.ok(&["create", "namespace", "team-b"]).await;
    env.ok(&[
        "create",
        "role",
        "editor",
        "-n",
        "team-a",
        "--verb=get,list,create",
        "--resource=configmaps",
    ])
    .await;
    env.ok(&[
        "create",
        "rolebinding",
        "alice-editor",
        "-n",
        "team-a",
        "--role=editor",
        "--user=alice",
    ])
    .await;
    env.ok(&["create", "clusterrole", "secret-reader", "--verb=get", "--resource=secrets"]).await;
    env.ok(&[
        "create",
        "rolebinding",
        "alice-secrets",
        "-n",
        "team-a",
        "--clusterrole=secret-reader",
        "--user=alice",
    ])
    .await;
    env.ok(&["create", "secret", "generic", "s", "-n", "team-a", "--from-literal=k=v"]).await;
    env.ok(&["create", "secret", "generic", "s", "-n", "team-b", "--from-literal=k=v"]).await;
    let alice = env.user_kubeconfig("alice", &[]);

    let can = |args: &'static [&'static str]| {
        let alice = alice.clone();
        let env = &env;
        async move {
            let mut full = vec!["auth", "can-i"];
            full.extend_from_slice(args);
            env.kubectl_as(&alice, &full, None).await.stdout.trim().to_string()
        }
    };
    assert_eq!(can(&["create", "configmaps", "-n", "team-a"]).await, "yes");
    assert_eq!(can(&["delete", "configmaps", "-n", "team-a"]).await, "no");
    assert_eq!(can(&["create", "configmaps", "-n", "team-b"]).await, "no");
    assert_eq!(can(&["get", "secrets", "-n", "team-a"]).await, "yes");
    assert_eq!(can(&["get", "secrets", "-n", "team-b"]).await, "no");

    // Real requests agree, and a refusal is kube-apiserver's 403.
    let r = env
        .kubectl_as(
            &alice,
            &["create", "configmap", "c", "-n", "team-a", "--from-literal=a=b"],
            None,
        )
        .await;
    assert!(r.ok, "{}", r.stderr);
    let r = env.kubectl_as(&alice, &["get", "secret", "s", "-n", "team-a"], None).await;
    assert!(r.ok, "{}", r.stderr);
    let r = env.kubectl_as(&alice, &["get", "secret", "s", "-n", "team-b"], None).await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains("Error from server (Forbidden): secrets \"s\" is forbidden: User \"alice\" cannot get resource \"secrets\" in API group \"\" in the namespace \"team-b\""),
        "{}",
        r.stderr
    );
    let r = env.kubectl_as(&alice, &["delete", "configmap", "c", "-n", "team-a"], None).await;
    assert!(!r.ok && r.stderr.contains("cannot delete resource \"configmaps\""), "{}", r.stderr);

    // Impersonation: the admin may act as alice and sees what she sees …
    assert_eq!(
        env.kubectl(&["auth", "can-i", "get", "secrets", "-n", "team-b", "--as", "alice"])
            .await
            .stdout
            .trim(),
        "no"
    );
    let r = env.kubectl(&["get", "secret", "s", "-n", "team-b", "--as", "alice"]).await;
    assert!(!r.ok && r.stderr.contains("User \"alice\" cannot get resource"), "{}", r.stderr);
    // … but alice may not impersonate anyone.
    let r = env
        .kubectl_as(&alice, &["get", "secret", "s", "-n", "team-b", "--as", "admin"], None)
        .await;
    assert!(!r.ok && r.stderr.contains("users \"admin\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"), "{}", r.stderr);
    // whoami
    let who = env
        .kubectl_as(&alice, &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"], None)
        .await;
    assert_eq!(who.stdout, "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_escalation_is_prevented_and_apply_that_creates_needs_create() {
    let env = start().await;
    env.ok(&["create", "namespace", "team-a"]).await;
    // bob may manage roles and bindings in team-a, and read config maps there; nothing else.
    env.ok(&[
        "create",
        "role",
        "rbac-admin",
        "-n",
        "team-a",
        "--verb=get,list,create,update,patch",
        "--resource=roles,rolebindings",
    ])
    .await;
    env.ok(&[
        "create",
        "role",
        "cm-reader",
        "-n",
        "team-a",
        "--verb=get,list",
        "--resource=configmaps",
    ])
    .await;
    env.ok(&[
        "create",
        "rolebinding",
        "bob-rbac",
        "-n",
        "team-a",
        "--role=rbac-admin",
        "--user=bob",
    ])
    .await;
    env.ok(&["create", "rolebinding", "bob-cm", "-n", "team-a", "--role=cm-reader", "--user=bob"])
        .await;
    env.ok(&[
        "create",
        "role",
        "secret-reader",
        "-n",
        "team-a",
        "--verb=get",
        "--resource=secrets",
    ])
    .await;
    let bob = env.user_kubeconfig("bob", &[]);

    // A role within what bob holds is fine; one that grants more is refused, naming the rule.
    let r = env
        .kubectl_as(
            &bob,
            &["create", "role", "cm-get", "-n", "team-a", "--verb=get", "--resource=configmaps"],
            None,
        )
        .await;
    assert!(r.ok, "{}", r.stderr);
    let r = env
        .kubectl_as(
            &bob,
            &["create", "role", "sneaky", "-n", "team-a", "--verb=get", "--resource=secrets"],
            None,
        )
        .await;
    assert!(!r.ok, "granting secrets he cannot read must be refused");
    assert!(
        r.stderr.contains("roles.rbac.authorization.k8s.io \"sneaky\" is forbidden: user \"bob\"")
            && r.stderr.contains("is attempting to grant RBAC permissions not currently held")
            && r.stderr.contains("{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\"]}"),
        "{}",
        r.stderr
    );
    // Widening an existing role by server-side apply is refused the same way.
    let widen = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: cm-get, namespace: team-a}\nrules:\n- {apiGroups: [\"\"], resources: [configmaps], verbs: [get, delete]}\n";
    let r = env
        .kubectl_as(&bob, &["apply", "--server-side", "--force-conflicts", "-f", "-"], Some(widen))
        .await;
    assert!(!r.ok && r.stderr.contains("not currently held"), "{}", r.stderr);
    // Binding a role whose permissions bob lacks is refused; with `bind` on it, allowed.
    let r = env
        .kubectl_as(
            &bob,
            &["create", "rolebinding", "b", "-n", "team-a", "--role=secret-reader", "--user=bob"],
            None,
        )
        .await;
    assert!(
        !r.ok && r.stderr.contains("rolebindings.rbac.authorization.k8s.io \"b\" is forbidden"),
        "{}",
        r.stderr
    );
    env.ok(&[
        "create",
        "role",
        "binder",
        "-n",
        "team-a",
        "--verb=bind",
        "--resource=roles",
        "--resource-name=secret-reader",
    ])
    .await;
    env.ok(&["create", "rolebinding", "bob-binder", "-n", "team-a", "--role=binder", "--user=bob"])
        .await;
    let r = env
        .kubectl_as(
            &bob,
            &["create", "rolebinding", "b", "-n", "team-a", "--role=secret-reader", "--user=carol"],
            None,
        )
        .await;
    assert!(r.ok, "{}", r.stderr);

    // An apply that would create an object is authorized as a create: `patch` alone is not enough.
    env.ok(&[
        "create",
        "role",
        "cm-patcher",
        "-n",
        "team-a",
        "--verb=patch",
        "--resource=configmaps",
    ])
    .await;
    env.ok(&["create", "rolebinding", "dave", "-n", "team-a", "--role=cm-patcher", "--user=dave"])
        .await;
    let dave = env.user_kubeconfig("dave", &[]);
    let cm =
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: team-a}\ndata: {a: b}\n";
    let r = env.kubectl_as(&dave, &["apply", "--server-side", "-f", "-"], Some(cm)).await;
    assert!(
        !r.ok && r.stderr.contains("User \"dave\" cannot create resource \"configmaps\""),
        "{}",
        r.stderr
    );
    env.ok(&["create", "configmap", "c", "-n", "team-a", "--from-literal=a=a"]).await;
    let r = env
        .kubectl_as(&dave, &["apply", "--server-side", "--force-conflicts", "-f", "-"], Some(cm))
        .await;
    assert!(r.ok, "an apply to an existing object needs only patch: {}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secrets_string_data_is_stored_as_data() {
    let env = start().await;
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: keys, namespace: default}\ndata: {a: b2xk}\nstringData: {a: new, token: s3cret}\n";
    env.ok_in(&["apply", "-f", "-"], secret).await;
    let out = env.ok(&["get", "secret", "keys", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["data"], serde_json::json!({"a": "bmV3", "token": "czNjcmV0"}), "{v}");
    assert!(v.get("stringData").is_none(), "write-only: {v}");
}
