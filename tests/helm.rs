//! The Helm chart (`charts/alcove`), through the real Helm library (PyPI helm-python-sdk, which
//! `./test.sh` installs into `.venv`): lint, render per tier layout, schema refusals; then the
//! render applied to devcluster, the operator run with exactly the chart's RBAC (its
//! ServiceAccount token), GitOps field ownership, and each RBAC verb shown to be needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use alcove_tests::*;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const RELEASE: &str = "alcove";
const NS: &str = "alcove-system";
const SA_USER: &str = "system:serviceaccount:alcove-system:alcove";
const GATEWAY_USER: &str = "system:serviceaccount:alcove-system:alcove-gateway";
const DASHBOARD_USER: &str = "system:serviceaccount:alcove-system:alcove-dashboard";
/// The dashboard switched on, as an install with a mail relay and public URLs would.
const DASHBOARD_VALUES: &str = "dashboard:\n  enabled: true\n  publicURL: https://dashboard.alcove.example\n  gatewayURL: https://ai.alcove.example\n  smtp: {existingSecret: alcove-dashboard-smtp}\n";
const GITOPS: &str = "argocd-controller";

fn chart() -> PathBuf {
    workspace_root().join("charts/alcove")
}

fn python() -> PathBuf {
    static CHECKED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let py = workspace_root().join(".venv/bin/python");
            let ok = std::process::Command::new(&py)
                .args(["-c", "import helm_python, lupa"])
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "helm-python-sdk and lupa are not installed in {}: run ./test.sh, which installs them",
                py.display()
            );
            py
        })
        .clone()
}

/// Argo CD's verdict on each object, from the health check docs/gitops.md ships.
fn argocd_health(objects: &[Value]) -> Vec<(String, String)> {
    use std::io::Write;
    let mut child = std::process::Command::new(python())
        .arg(workspace_root().join("tests/support/argocd_health.py"))
        .arg(workspace_root().join("docs/gitops/argocd-health.lua"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(objects).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    v.iter()
        .map(|h| {
            (
                h["status"].as_str().unwrap().to_string(),
                h["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn helm(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(python())
        .arg(workspace_root().join("tests/support/helm.py"))
        .args(args)
        .output()
        .expect("python");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `{"manifest", "objects", "notes"}` of a render with `values` (a file), or Helm's refusal.
fn render(values: Option<&Path>) -> Result<Value, String> {
    let chart = chart();
    let mut args = vec!["render", chart.to_str().unwrap(), RELEASE, NS];
    let v = values.map(|p| p.display().to_string());
    args.extend(v.as_deref());
    let (rc, out, err) = helm(&args);
    match rc {
        0 => Ok(serde_json::from_str(&out).expect("render JSON")),
        2 => Err(err),
        _ => panic!("helm.py render failed ({rc}): {err}"),
    }
}

fn find<'a>(objects: &'a Value, kind: &str, name: &str) -> Option<&'a Value> {
    objects.as_array().unwrap().iter().find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn kinds(objects: &Value) -> BTreeSet<String> {
    objects
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            format!("{}/{}", o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap())
        })
        .collect()
}

fn layouts() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(chart().join("ci")).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

#[test]
fn chart_lints_renders_each_tier_layout_and_refuses_bad_values() {
    // CRDs are the generated ones (crdgen writes both; the crds drift test checks both).
    for f in std::fs::read_dir(workspace_root().join("crds/manifests")).unwrap() {
        let f = f.unwrap();
        let copy = chart().join("crds").join(f.file_name());
        assert_eq!(
            std::fs::read_to_string(f.path()).unwrap(),
            std::fs::read_to_string(&copy).unwrap_or_default(),
            "{} differs: cargo run -p alcove-crds --bin crdgen",
            copy.display()
        );
    }

    let mut renders = vec![(None, render(None).unwrap())];
    for layout in layouts() {
        renders.push((
            Some(layout.clone()),
            render(Some(&layout)).unwrap_or_else(|e| panic!("{}: {e}", layout.display())),
        ));
    }
    assert_eq!(renders.len(), 4, "default values and three tier layouts");
    for (values, r) in &renders {
        let chart = chart();
        let mut args = vec!["lint", chart.to_str().unwrap()];
        let v = values.as_ref().map(|p| p.display().to_string());
        args.extend(v.as_deref());
        let (rc, out, err) = helm(&args);
        assert_eq!(rc, 0, "{err}");
        let lint: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(lint["messages"], json!([]), "helm lint --strict {values:?}: {lint}");
        assert_eq!(lint["errors"], json!([]), "helm lint --strict {values:?}: {lint}");

        // The operator accepts the configuration the chart renders for it.
        let cm = find(&r["objects"], "ConfigMap", "alcove-config").expect("config map");
        let file: alcove::config::FileConfig =
            serde_saphyr::from_str(cm["data"]["config.yaml"].as_str().unwrap())
                .unwrap_or_else(|e| panic!("{values:?}: {e}"));
        alcove::config::Config::from_file(file, NS, Duration::from_secs(300))
            .unwrap_or_else(|e| panic!("{values:?}: {e}"));
        let pod = &find(&r["objects"], "Deployment", "alcove").expect("deployment")["spec"]["template"]
            ["spec"];
        assert_eq!(pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert!(
            r["notes"]
                .as_str()
                .unwrap()
                .contains("kubectl -n alcove-system rollout status deployment/alcove"),
            "{}",
            r["notes"]
        );
    }

    let default = &renders[0].1["objects"];
    let have = kinds(default);
    for k in [
        "ServiceAccount/alcove",
        "ClusterRole/alcove-operator",
        "ClusterRole/alcove-delegated",
        "ClusterRoleBinding/alcove-operator",
        "ClusterRoleBinding/alcove-delegated",
        "Role/alcove-leader-election",
        "RoleBinding/alcove-leader-election",
        "Deployment/alcove",
        "ConfigMap/alcove-config",
        "Service/alcove-metrics",
        "Service/alcove-webhook",
        "NetworkPolicy/alcove",
        "PodDisruptionBudget/alcove",
        "ServiceAccount/alcove-gateway",
        "ClusterRole/alcove-gateway",
        "Role/alcove-gateway",
        "Deployment/alcove-gateway",
        "Service/alcove-gateway",
        "Service/alcove-gateway-metrics",
        "NetworkPolicy/alcove-gateway",
        "PersistentVolumeClaim/alcove-gateway-usage",
    ] {
        assert!(have.contains(k), "{k} missing from the default render: {have:?}");
    }
    assert!(
        !have.iter().any(|k| k.starts_with("ServiceMonitor/") || k.starts_with("Ingress/")),
        "optional objects are off by default: {have:?}"
    );
    assert!(
        !have.iter().any(|k| k.contains("dashboard")),
        "the dashboard waits for its mail relay and URLs: {have:?}"
    );
    let deploy = find(default, "Deployment", "alcove").unwrap();
    assert_eq!(deploy["spec"]["replicas"], 2);
    // The gateway with the embedded SQLite store: one replica on its volume, no PDB.
    let gw = find(default, "Deployment", "alcove-gateway").unwrap();
    assert_eq!(gw["spec"]["replicas"], 1);
    assert!(!have.contains("PodDisruptionBudget/alcove-gateway"));
    let gw_env = gw["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone();
    let env_of = |env: &[Value], name: &str| env.iter().find(|e| e["name"] == name).cloned();
    assert_eq!(
        env_of(&gw_env, "ALCOVE_GATEWAY_USAGE_STORE").unwrap()["value"],
        "sqlite:///var/lib/alcove-gateway/usage.db"
    );

    let by_layout = |name: &str| {
        &renders.iter().find(|(v, _)| v.as_ref().is_some_and(|p| p.ends_with(name))).unwrap().1["objects"]
    };
    let dedicated = by_layout("dedicated-values.yaml");
    assert!(
        kinds(dedicated).contains("ServiceMonitor/alcove")
            && kinds(dedicated).contains("Ingress/alcove-webhook")
    );
    assert_eq!(
        find(dedicated, "Ingress", "alcove-webhook").unwrap()["spec"]["rules"][0]["http"]["paths"]
            [0]["path"],
        "/webhooks/stripe"
    );
    let cfg: Value = serde_saphyr::from_str(
        find(dedicated, "ConfigMap", "alcove-config").unwrap()["data"]["config.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["tiers"]["pro"]["storageClass"], "premium-encrypted");
    assert_eq!(cfg["billing"]["prices"]["usd"]["NVIDIA-H100-80GB-HBM3"]["perGpuHour"], 250);
    // The Stripe credentials come from the named Secret, never from values.
    let env =
        find(dedicated, "Deployment", "alcove").unwrap()["spec"]["template"]["spec"]["containers"]
            [0]["env"]
            .clone();
    let key = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "ALCOVE_STRIPE_API_KEY")
        .expect("the Stripe key's env");
    assert_eq!(
        key["valueFrom"]["secretKeyRef"],
        json!({"name": "alcove-stripe", "key": "api-key"})
    );
    // With PostgreSQL: two replicas, each enforcing half of every limit, a PDB, the DSN and the
    // TLS certificate from Secrets.
    let gw = find(dedicated, "Deployment", "alcove-gateway").unwrap();
    assert_eq!(gw["spec"]["replicas"], 2);
    assert!(kinds(dedicated).contains("PodDisruptionBudget/alcove-gateway"));
    assert!(!kinds(dedicated).contains("PersistentVolumeClaim/alcove-gateway-usage"));
    let gw_pod = &gw["spec"]["template"]["spec"];
    let gw_env = gw_pod["containers"][0]["env"].as_array().unwrap().clone();
    let env = |name: &str| gw_env.iter().find(|e| e["name"] == name).cloned().unwrap();
    assert_eq!(env("ALCOVE_GATEWAY_REPLICAS")["value"], "2");
    assert_eq!(
        env("ALCOVE_GATEWAY_USAGE_STORE")["valueFrom"]["secretKeyRef"],
        json!({"name": "alcove-gateway-usage-store", "key": "dsn"})
    );
    assert_eq!(env("ALCOVE_GATEWAY_TLS_CERT")["value"], "/etc/alcove/tls/tls.crt");
    assert_eq!(gw_pod["volumes"][0]["secret"]["secretName"], "alcove-gateway-tls");
    assert_eq!(gw_pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"], true);
    // The dashboard on PostgreSQL: two replicas, a PDB, its key made by the chart, the relay's
    // URL and the DSN from Secrets, the catalogue as flags.
    let dash = find(dedicated, "Deployment", "alcove-dashboard").expect("the dashboard");
    assert_eq!(dash["spec"]["replicas"], 2);
    for k in [
        "PodDisruptionBudget/alcove-dashboard",
        "Secret/alcove-dashboard-key",
        "NetworkPolicy/alcove-dashboard",
        "ClusterRole/alcove-dashboard",
        "Service/alcove-dashboard",
    ] {
        assert!(kinds(dedicated).contains(k), "{k}");
    }
    assert!(!kinds(dedicated).contains("PersistentVolumeClaim/alcove-dashboard-store"));
    let dash_env =
        dash["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone();
    let denv = |name: &str| dash_env.iter().find(|e| e["name"] == name).cloned().unwrap();
    assert_eq!(
        denv("ALCOVE_DASHBOARD_SMTP")["valueFrom"]["secretKeyRef"],
        json!({"name": "alcove-dashboard-smtp", "key": "url"})
    );
    assert_eq!(
        denv("ALCOVE_DASHBOARD_STORE")["valueFrom"]["secretKeyRef"],
        json!({"name": "alcove-dashboard-store", "key": "dsn"})
    );
    assert_eq!(
        denv("ALCOVE_DASHBOARD_MODELS")["value"],
        "default=safetensors,default-gguf=gguf:model.gguf"
    );
    assert_eq!(denv("ALCOVE_DASHBOARD_URL")["value"], "https://dashboard.alcove.example");
    // Top-ups: the restricted key from the Secret, the publishable key and Stripe.js in the page,
    // and HTTPS out to Stripe.
    assert_eq!(
        denv("ALCOVE_STRIPE_API_KEY")["valueFrom"]["secretKeyRef"],
        json!({"name": "alcove-stripe", "key": "dashboard-api-key"})
    );
    assert_eq!(denv("ALCOVE_STRIPE_PUBLISHABLE_KEY")["value"], "pk_live_alcoveexample");
    assert_eq!(
        denv("ALCOVE_DASHBOARD_USAGE_STORE")["valueFrom"]["secretKeyRef"],
        json!({"name": "alcove-gateway-usage-store", "key": "dsn"}),
        "the usage page reads the gateway's shared store"
    );
    assert_eq!(denv("ALCOVE_STRIPE_JS_URL")["value"], "https://js.stripe.com/v3/");
    let dash_policy = find(dedicated, "NetworkPolicy", "alcove-dashboard").unwrap();
    assert!(
        dash_policy["spec"]["egress"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["ports"][0]["port"] == 443 && r.get("to").is_none()),
        "{dash_policy}"
    );
    // Self sign-up, when enabled: its settings reach the dashboard, and so does the one grant
    // it needs (creating Tenants); off, that grant is not there.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signup.yaml");
    let signup = "  signup: {enabled: true, tier: basic, region: tw-taipei-1, currency: usd}\n";
    std::fs::write(&path, format!("{DASHBOARD_VALUES}{signup}")).unwrap();
    let with = render(Some(&path)).unwrap();
    let objs = &with["objects"];
    let dash = find(objs, "Deployment", "alcove-dashboard").unwrap();
    let env = dash["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone();
    for (k, v) in [
        ("ALCOVE_DASHBOARD_SIGNUP_TIER", "basic"),
        ("ALCOVE_DASHBOARD_SIGNUP_REGION", "tw-taipei-1"),
        ("ALCOVE_DASHBOARD_SIGNUP_CURRENCY", "usd"),
        ("ALCOVE_DASHBOARD_SIGNUPS_PER_HOUR", "20"),
    ] {
        assert_eq!(env_of(&env, k).map(|e| e["value"].clone()), Some(json!(v)), "{k}");
    }
    let creates = |objs: &Value| {
        grants(&find(objs, "ClusterRole", "alcove-dashboard").unwrap()["rules"]).contains(&(
            "alcove.dev".into(),
            "tenants".into(),
            "create".into(),
        ))
    };
    assert!(creates(objs));
    assert!(!creates(dedicated), "no Tenant is created without sign-up");
    let plain = find(dedicated, "Deployment", "alcove-dashboard").unwrap();
    let plain_env = plain["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
    assert!(env_of(plain_env, "ALCOVE_DASHBOARD_SIGNUP_TIER").is_none());

    let enterprise = by_layout("enterprise-values.yaml");
    assert_eq!(find(enterprise, "Deployment", "alcove").unwrap()["spec"]["replicas"], 1);
    assert!(
        !kinds(enterprise).contains("PodDisruptionBudget/alcove"),
        "no PDB for a single replica"
    );
    let shared = by_layout("shared-pool-values.yaml");
    let cfg: Value = serde_saphyr::from_str(
        find(shared, "ConfigMap", "alcove-config").unwrap()["data"]["config.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["retention"]["conversationHistory"], "3d");
    assert_eq!(cfg["gatewayNamespaces"], json!(["alcove-gateway"]));

    // Sharded: every replica gets the shard count, and may list the Leases (to count members)
    // and delete the member Leases of replicas long gone.
    let dir = tempfile::tempdir().unwrap();
    let sharded = dir.path().join("sharded.yaml");
    std::fs::write(&sharded, "replicaCount: 3\nshards: 3\n").unwrap();
    let sharded = render(Some(&sharded)).unwrap();
    let env = &find(&sharded["objects"], "Deployment", "alcove").unwrap()["spec"]["template"]["spec"]
        ["containers"][0]["env"];
    assert!(
        env.as_array().unwrap().contains(&json!({"name": "ALCOVE_SHARDS", "value": "3"})),
        "{env}"
    );
    let verbs = |r: &Value| {
        find(&r["objects"], "Role", "alcove-leader-election").unwrap()["rules"][0]["verbs"].clone()
    };
    assert_eq!(verbs(&sharded), json!(["get", "create", "update", "list", "delete"]));
    assert_eq!(verbs(&renders[0].1), json!(["get", "create", "update"]));

    // The schema refuses bad values, naming the field and the rule; nothing is rendered.
    for (values, expected) in [
        ("replicaCount: 0\n", "at '/replicaCount': minimum: got 0, want 1"),
        ("shards: 0\n", "at '/shards': minimum: got 0, want 1"),
        ("leaderElection: false\nreplicaCount: 2\n", "at '/replicaCount': maximum: got 2, want 1"),
        (
            "tiers: {gold: {storageClass: fast}}\n",
            "at '/tiers': additional properties 'gold' not allowed",
        ),
        (
            "tiers: {pro: {historySize: lots}}\n",
            "at '/tiers/pro/historySize': 'lots' does not match pattern",
        ),
        (
            "retention: {conversationHistory: forever}\n",
            "at '/retention/conversationHistory': 'forever' does not match pattern",
        ),
        ("operator: {port: 80}\n", "at '/operator/port': minimum: got 80, want 1,024"),
        ("replicas: 3\n", "additional properties 'replicas' not allowed"),
        (
            "billing: {prices: {USD: {'*': {perGpuHour: 250}}}}\n",
            "at '/billing/prices': additional properties 'USD' not allowed",
        ),
        (
            "billing: {prices: {usd: {'*': {perHour: 250}}}}\n",
            "additional properties 'perHour' not allowed",
        ),
        (
            "gateway: {replicas: 2}\n",
            "gateway.replicas above 1 needs gateway.usageStore.existingSecret",
        ),
        ("gateway: {publishSeconds: 0}\n", "at '/gateway/publishSeconds': minimum: got 0, want 1"),
        ("dashboard: {enabled: true}\n", "at '/dashboard/publicURL'"),
        (
            "dashboard: {enabled: true, publicURL: 'https://d.example', gatewayURL: 'https://g.example', smtp: {existingSecret: relay}, replicas: 2}\n",
            "dashboard.replicas above 1 needs dashboard.store.existingSecret",
        ),
        (
            "dashboard: {stripe: {existingSecret: alcove-stripe}}\n",
            "at '/dashboard/stripe/publishableKey'",
        ),
        (
            "dashboard: {models: [{name: default, format: onnx}]}\n",
            "at '/dashboard/models/0/format'",
        ),
        ("dashboard: {signup: {enabled: true}}\n", "at '/dashboard/signup/region'"),
        ("dashboard: {signup: {tier: pro}}\n", "at '/dashboard/signup/tier'"),
    ] {
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, values).unwrap();
        let err = render(Some(&path)).expect_err(values);
        assert!(err.contains(expected), "{values:?}: {err}");
    }
}

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// One request the operator made, as devcluster's audit log recorded it.
#[derive(Debug, Clone)]
struct Request {
    verb: String,
    group: String,
    /// `resource` or `resource/subresource`, as RBAC rules name it.
    resource: String,
    namespace: String,
    name: String,
    code: u64,
    /// Whom the request acted as (`Impersonate-User`, `Impersonate-Group`), if anyone.
    impersonated: Option<(String, Vec<String>)>,
}

fn operator_requests(audit: &Path) -> Vec<Request> {
    requests_of(audit, SA_USER)
}

/// The requests of `user` in the audit log.
fn requests_of(audit: &Path, user: &str) -> Vec<Request> {
    let text = std::fs::read_to_string(audit).expect("audit log");
    let mut out = Vec::new();
    for line in text.lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        if e["user"]["username"] != user {
            continue;
        }
        let r = &e["objectRef"];
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let resource = match r["subresource"].as_str() {
            Some(sub) => format!("{}/{sub}", s(&r["resource"])),
            None => s(&r["resource"]),
        };
        let req = Request {
            verb: s(&e["verb"]),
            group: s(&r["apiGroup"]),
            resource,
            namespace: s(&r["namespace"]),
            name: s(&r["name"]),
            code: e["responseStatus"]["code"].as_u64().unwrap(),
            impersonated: e["impersonatedUser"]["username"].as_str().map(|u| {
                let groups =
                    e["impersonatedUser"]["groups"].as_array().cloned().unwrap_or_default();
                (
                    u.to_string(),
                    groups.iter().filter_map(|g| g.as_str().map(String::from)).collect(),
                )
            }),
        };
        // An apply that created its object was authorized as a create as well.
        if req.verb == "patch" && req.code == 201 {
            out.push(Request { verb: "create".into(), ..req.clone() });
        }
        out.push(req);
    }
    out
}

/// Each (apiGroup, resource, verb) a rule list grants.
fn grants(rules: &Value) -> Vec<(String, String, String)> {
    let strs = |v: &Value| {
        v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    for rule in rules.as_array().unwrap() {
        for g in strs(&rule["apiGroups"]) {
            for r in strs(&rule["resources"]) {
                for v in strs(&rule["verbs"]) {
                    out.push((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

/// `rules` without `verb` on `group`/`resource` (the rest of its rule kept).
fn without(rules: &Value, group: &str, resource: &str, verb: &str) -> Value {
    let mut out = Vec::new();
    for rule in rules.as_array().unwrap() {
        let has = |k: &str, x: &str| rule[k].as_array().unwrap().iter().any(|v| v == x);
        if !(has("apiGroups", group) && has("resources", resource) && has("verbs", verb)) {
            out.push(rule.clone());
            continue;
        }
        let others: Vec<&Value> =
            rule["resources"].as_array().unwrap().iter().filter(|r| *r != resource).collect();
        if !others.is_empty() {
            let mut r = rule.clone();
            r["resources"] = json!(others);
            out.push(r);
        }
        let verbs: Vec<&Value> =
            rule["verbs"].as_array().unwrap().iter().filter(|v| *v != verb).collect();
        if !verbs.is_empty() {
            let mut r = rule.clone();
            r["resources"] = json!([resource]);
            r["verbs"] = json!(verbs);
            out.push(r);
        }
    }
    json!(out)
}

async fn allowed(client: &kube::Client, user: &str, req: &Request, verb: &str) -> bool {
    let (resource, sub) = req.resource.split_once('/').unwrap_or((&req.resource, ""));
    let sar: SubjectAccessReview = serde_json::from_value(json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", "system:serviceaccounts:alcove-system", "system:authenticated"],
            "resourceAttributes": {"verb": verb, "group": req.group, "resource": resource, "subresource": sub, "namespace": req.namespace, "name": req.name},
        },
    }))
    .unwrap();
    let r = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &sar)
        .await
        .unwrap();
    r.status.is_some_and(|s| s.allowed)
}

/// Replaces the rules of the chart's ClusterRole or (release-namespace) Role on the API server.
async fn set_rules(client: &kube::Client, kind: &str, name: &str, rules: &Value) {
    let pp = PatchParams::apply("helm-test").force();
    if kind == "Role" {
        let body = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name, "namespace": NS}, "rules": rules});
        Api::<Role>::namespaced(client.clone(), NS)
            .patch(name, &pp, &Patch::Apply(&body))
            .await
            .unwrap();
    } else {
        let body = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name}, "rules": rules});
        Api::<ClusterRole>::all(client.clone())
            .patch(name, &pp, &Patch::Apply(&body))
            .await
            .unwrap();
    }
}

/// Managed-fields entries of the operator on an object must not own anything in spec.
fn operator_owns_no_spec(obj: &Value) {
    let mf = obj["metadata"]["managedFields"].as_array().unwrap();
    for m in mf {
        let manager = m["manager"].as_str().unwrap();
        if manager.starts_with("alcove-operator") {
            assert!(
                m["fieldsV1"].get("f:spec").is_none(),
                "{manager} owns spec fields of {}: {m}",
                obj["metadata"]["name"]
            );
        } else {
            assert_eq!(
                manager, GITOPS,
                "only the GitOps manager and the operator write {}: {mf:?}",
                obj["metadata"]["name"]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_installs_and_its_rbac_is_sufficient_and_minimal() {
    let audit_dir = tempfile::tempdir().unwrap();
    let audit = audit_dir.path().join("audit.log");
    let mut p = Platform::start_with(|c| {
        let mut c = with_inference(c);
        c.audit_log = Some(audit.clone());
        c
    })
    .await;
    let values = p.dir.path().join("dashboard-values.yaml");
    std::fs::write(&values, DASHBOARD_VALUES).unwrap();
    let rendered = render(Some(&values)).unwrap();
    let objects = &rendered["objects"];

    // Installed as Helm would: CRDs from the chart's crds/, then the templates, into a namespace
    // that enforces Pod Security "restricted".
    p.ok(&["label", "namespace", NS, "pod-security.kubernetes.io/enforce=restricted"]).await;
    p.ok(&["apply", "--server-side", "-f", chart().join("crds").to_str().unwrap()]).await;
    p.ok(&[
        "create",
        "secret",
        "generic",
        "alcove-dashboard-smtp",
        "-n",
        NS,
        "--from-literal=url=smtp://relay.example:587",
    ])
    .await;
    p.ok_in(&["apply", "-f", "-"], rendered["manifest"].as_str().unwrap()).await;
    eventually(
        "the Deployment's two pods admitted and running",
        Duration::from_secs(30),
        || async {
            p.jsonpath(&["get", "deployment", "alcove", "-n", NS], "{.status.readyReplicas}").await
                == "2"
        },
    )
    .await;
    // The namespace really enforces it: a root pod is refused there.
    let root = "apiVersion: v1\nkind: Pod\nmetadata: {name: root, namespace: alcove-system}\nspec: {containers: [{name: c, image: busybox, securityContext: {runAsUser: 0}}]}\n";
    let (ok, _, err) = p.kubectl_as(&p.cluster.kubeconfig, &["apply", "-f", "-"], Some(root)).await;
    assert!(!ok && err.contains("violates PodSecurity \"restricted:latest\""), "{err}");

    // The operator with exactly the chart's RBAC: its ServiceAccount's token, the chart's config.
    let token = p.ok(&["create", "token", "alcove", "-n", NS, "--duration=2h"]).await;
    let sa_kubeconfig = p.dir.path().join("kubeconfig-alcove-sa");
    p.cluster.write_kubeconfig_for(&sa_kubeconfig, "alcove", token.trim()).unwrap();
    let config = p.dir.path().join("config.yaml");
    std::fs::write(
        &config,
        find(objects, "ConfigMap", "alcove-config").unwrap()["data"]["config.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let clock = Clock(p.dir.path().join("clock"));
    clock.set(Timestamp::now());
    let (kc, cfg, ck) = (
        sa_kubeconfig.display().to_string(),
        config.display().to_string(),
        clock.0.display().to_string(),
    );
    let op = p.spawn_operator(&["--kubeconfig", &kc, "--config", &cfg, "--clock-file", &ck]).await;

    // GitOps: everything applied server-side by another field manager.
    for f in ["good/tenant-basic.yaml", "good/knowledgebase.yaml", "good/instance-with-kb.yaml"] {
        p.ok(&["apply", "--server-side", &format!("--field-manager={GITOPS}"), "-f", &example(f)])
            .await;
    }
    p.wait_condition("tenant/startup", "Ready", 60).await;
    p.wait_condition("kb/handbook -n tenant-startup", "Ready", 90).await;
    p.wait_condition("inst/assistant -n tenant-startup", "Ready", 90).await;
    for what in [
        ["tenant", "startup", ""],
        ["kb", "handbook", "tenant-startup"],
        ["inst", "assistant", "tenant-startup"],
    ] {
        let mut args = vec!["get", what[0], what[1]];
        if !what[2].is_empty() {
            args.extend(["-n", what[2]]);
        }
        args.extend(["--show-managed-fields"]);
        let obj = p.json(&args).await;
        assert_eq!(obj["metadata"]["generation"], 1, "the operator changed no spec of {what:?}");
        assert_eq!(obj["status"]["observedGeneration"], 1, "{what:?}");
        operator_owns_no_spec(&obj);
    }
    // Argo CD's health check (docs/gitops.md) on the live objects: Healthy when Ready; a spec
    // the operator refused is Degraded; a spec change not yet observed is Progressing.
    let live: Vec<Value> = vec![
        p.json(&["get", "tenant", "startup"]).await,
        p.json(&["get", "kb", "handbook", "-n", "tenant-startup"]).await,
        p.json(&["get", "inst", "assistant", "-n", "tenant-startup"]).await,
    ];
    for (obj, (status, message)) in live.iter().zip(argocd_health(&live)) {
        assert_eq!(status, "Healthy", "{}: {message}", obj["kind"]);
    }
    let stray = "apiVersion: alcove.dev/v1alpha1\nkind: InferenceInstance\nmetadata: {name: stray, namespace: tenant-startup}\nspec:\n  model: {format: safetensors, source: {platform: default}}\n  knowledgeBases:\n  - {name: handbook, namespace: tenant-other}\n";
    p.ok_in(&["apply", "--server-side", &format!("--field-manager={GITOPS}"), "-f", "-"], stray)
        .await;
    let refused = until_some("the stray instance refused", Duration::from_secs(20), || async {
        let i = p.json(&["get", "inst", "stray", "-n", "tenant-startup"]).await;
        (i["status"]["phase"] == "Failed").then_some(i)
    })
    .await;
    let mut unobserved = live[2].clone();
    unobserved["metadata"]["generation"] = json!(2);
    let mut suspended = live[2].clone();
    suspended["status"]["phase"] = json!("Suspended");
    let verdicts = argocd_health(&[refused, unobserved, suspended]);
    assert_eq!(verdicts[0].0, "Degraded", "{:?}", verdicts[0]);
    assert!(verdicts[0].1.contains("spec.knowledgeBases[0].namespace"), "{:?}", verdicts[0]);
    assert_eq!(
        verdicts[1],
        ("Progressing".to_string(), "The operator has not observed generation 2 yet".to_string())
    );
    assert_eq!(verdicts[2].0, "Suspended");

    // Re-applying the same manifests without --force-conflicts: the operator holds nothing they set.
    for f in ["good/tenant-basic.yaml", "good/knowledgebase.yaml", "good/instance-with-kb.yaml"] {
        let (ok, out, err) = p
            .kubectl(&[
                "apply",
                "--server-side",
                &format!("--field-manager={GITOPS}"),
                "-f",
                &example(f),
            ])
            .await;
        assert!(ok && !err.contains("conflict"), "{f}: {out}{err}");
    }

    // The gateway with exactly the chart's RBAC (its ServiceAccount's token): a customer's
    // request is answered and metered, and its usage reaches the operator's namespace. devcluster
    // has no Service network, so this gateway goes through the API server's service proxy; the
    // proxy permission is the test's, not the chart's (in a cluster the gateway dials Services).
    let gw_token = p.ok(&["create", "token", "alcove-gateway", "-n", NS, "--duration=2h"]).await;
    let gw_kubeconfig = p.dir.path().join("kubeconfig-alcove-gateway");
    p.cluster.write_kubeconfig_for(&gw_kubeconfig, "alcove-gateway", gw_token.trim()).unwrap();
    p.ok_in(
        &["apply", "-f", "-"],
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: test-service-proxy}\nrules: [{apiGroups: [''], resources: [services/proxy], verbs: [get, create]}]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: test-service-proxy}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: test-service-proxy}\nsubjects: [{kind: ServiceAccount, name: alcove-gateway, namespace: alcove-system}]\n",
    )
    .await;
    let gw_kc = gw_kubeconfig.display().to_string();
    let gw = Gateway::start(
        &p,
        "gateway",
        &["--kubeconfig", &gw_kc, "--namespace", NS, "--publish-seconds", "1"],
    )
    .await;
    let key = api_key(&p, "tenant-startup", "assistant").await;
    let answer = gw
        .call(
            "/chat/completions",
            &[("Authorization", &format!("Bearer {key}"))],
            Some(r#"{"messages": [{"role": "user", "content": "Where do visitors park?"}], "max_tokens": 4}"#),
        )
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let uid =
        p.jsonpath(&["get", "inst", "assistant", "-n", "tenant-startup"], "{.metadata.uid}").await;
    eventually("the gateway publishes the instance's usage", Duration::from_secs(20), || async {
        p.kubectl(&["get", "configmap", &format!("usage-{uid}"), "-n", NS]).await.0
    })
    .await;

    // The tenant-admin Role the operator wrote (needed below, before the tenant is erased).
    let tenant_role = p.json(&["get", "role", "alcove-tenant-admin", "-n", "tenant-startup"]).await;
    let account_role = p.json(&["get", "clusterrole", "alcove-tenant-startup-account"]).await;

    // The rest of the lifecycle: a key rotation, a knowledge base fetched from a URL (through its
    // own egress policy), then the tenant deleted with everything in it: instances and knowledge
    // bases destroyed, the rest erased after its window.
    // The customer's side, through the dashboard with exactly the chart's RBAC (its
    // ServiceAccount's token): sign in, the overview, the create form (nodes, knowledge bases),
    // an instance created and destroyed, the assistant's page, key and rotation; everything
    // as the signed-in owner.
    let d_token = p.ok(&["create", "token", "alcove-dashboard", "-n", NS, "--duration=2h"]).await;
    let d_kubeconfig = p.dir.path().join("kubeconfig-alcove-dashboard");
    p.cluster.write_kubeconfig_for(&d_kubeconfig, "alcove-dashboard", d_token.trim()).unwrap();
    let d = Dashboard::start_as(
        &p,
        "dashboard",
        &d_kubeconfig,
        &["--gateway-url", "https://ai.alcove.example"],
    )
    .await;
    let alice = d.sign_in("alice@startup.example", 0).await;
    assert!(alice.get("/").await.body.contains("Startup Inc."));
    let form = alice.get("/t/startup/new").await;
    assert_eq!(form.status, 200, "{}", form.body);
    assert!(form.body.contains(r#"<option value="handbook""#), "{}", form.body);
    let csrf = form.csrf();
    let created = alice
        .post("/t/startup/new", &[("csrf", &csrf), ("name", "scratch"), ("model", "default")], &[])
        .await;
    assert_eq!(created.status, 303, "{}", created.body);
    // Correcting details as the chart's dashboard: the name the GitOps manifest sets is refused
    // beside it; a contact address it does not set is saved once proven by its code.
    let refused = alice
        .post(
            "/t/startup/account",
            &[("csrf", &csrf), ("display_name", "Renamed"), ("contact_email", "")],
            &[],
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(refused.body.contains("configuration (Argo CD)"), "{}", refused.body);
    let contact = [
        ("csrf", csrf.as_str()),
        ("display_name", "Startup Inc."),
        ("contact_email", "ops@startup.example"),
    ];
    let sent = alice.post("/t/startup/account", &contact, &[]).await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    let code = d.code("ops@startup.example", 0).await;
    let saved =
        alice.post("/t/startup/account", &[&contact[..], &[("code", &code)]].concat(), &[]).await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    assert_eq!(
        p.jsonpath(&["get", "tenant", "startup"], "{.spec.contactEmail}").await,
        "ops@startup.example"
    );
    let page = alice.get("/t/startup/i/assistant").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let shown = alice.post("/t/startup/i/assistant/key", &[("csrf", &csrf)], &[]).await;
    assert!(shown.body.contains(&key), "the owner reads the key through the tenant-admin Role");
    let rotated = alice.post("/t/startup/i/assistant/rotate", &[("csrf", &csrf)], &[]).await;
    assert_eq!(rotated.status, 303, "{}", rotated.body);
    alice.post("/t/startup/i/scratch/destroy/code", &[("csrf", &csrf)], &[]).await;
    let code = d.code("alice@startup.example", 1).await;
    let gone =
        alice.post("/t/startup/i/scratch/destroy", &[("csrf", &csrf), ("code", &code)], &[]).await;
    assert_eq!(gone.status, 200, "{}", gone.body);
    eventually("the key rotated", Duration::from_secs(20), || async {
        !p.events("tenant-startup", "ApiKeyRotated").await.is_empty()
    })
    .await;
    let port = serve_document("/guide.md", "Parking is free for visitors on level B2.");
    let web = format!(
        "apiVersion: alcove.dev/v1alpha1\nkind: KnowledgeBase\nmetadata: {{name: web, namespace: tenant-startup}}\nspec:\n  sources:\n  - name: site\n    url: http://127.0.0.1:{port}/guide.md\n  embeddingModel: {{source: {{platform: default-embedding}}}}\n"
    );
    p.ok_in(&["apply", "--server-side", &format!("--field-manager={GITOPS}"), "-f", "-"], &web)
        .await;
    p.wait_condition("kb/web -n tenant-startup", "Indexed", 90).await;
    p.ok(&["delete", "tenant", "startup", "--wait=false"]).await;
    let erase_after = until_some("the erase window starts", Duration::from_secs(30), || async {
        let s = p.json(&["get", "tenant", "startup"]).await["status"].clone();
        (s["phase"] == "Erasing").then(|| at(s["eraseAfter"].as_str().unwrap()))
    })
    .await;
    clock.set(erase_after.checked_add(SignedDuration::from_secs(60)).unwrap());
    // Erased — unless the API server refused the operator something on the way (then say what).
    let refused = until_some("tenant erased", Duration::from_secs(60), || async {
        let refused: Vec<Request> =
            operator_requests(&audit).into_iter().filter(|r| r.code == 403).collect();
        let erased = !p.kubectl(&["get", "tenant", "startup"]).await.0
            && !p.kubectl(&["get", "namespace", "tenant-startup"]).await.0;
        (erased || !refused.is_empty()).then_some(refused)
    })
    .await;
    assert!(refused.is_empty(), "the chart's RBAC refused the operator: {refused:#?}");

    // Sufficient: not one request of the operator's ServiceAccount was refused.
    let requests = operator_requests(&audit);
    assert!(requests.len() > 50, "the audit log has the operator's requests: {}", requests.len());
    let refused: Vec<&Request> = requests.iter().filter(|r| r.code == 403).collect();
    // (The audit log has no messages; the operator's log says why.)
    let why = || {
        let log = std::fs::read_to_string(&p.operators[op].log).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("403") || l.contains("orbidden"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(refused.is_empty(), "refused requests: {refused:#?}\n{}", why());

    // Minimal: every verb the chart grants the operator for its own use was needed by a request,
    // and without it (the ClusterRole or Role changed on the API server) that request is refused.
    for o in &mut p.operators {
        o.kill().await;
    }
    let mut gw = gw;
    let _ = gw.child.kill().await;
    let client = p.client.clone();
    let needed: BTreeMap<(String, String, String), Request> = requests
        .iter()
        .map(|r| ((r.group.clone(), r.resource.clone(), r.verb.clone()), r.clone()))
        .collect();
    let mut unused = Vec::new();
    let mut checked = 0;
    for (kind, name) in [("ClusterRole", "alcove-operator"), ("Role", "alcove-leader-election")] {
        let rules = find(objects, kind, name).unwrap()["rules"].clone();
        for (g, r, v) in grants(&rules) {
            let Some(req) = needed.get(&(g.clone(), r.clone(), v.clone())) else {
                unused.push(format!("{kind} {name}: {v} {r} (group {g:?})"));
                continue;
            };
            assert!(
                allowed(&client, SA_USER, req, &v).await,
                "with the full rules, {v} {r} is allowed"
            );
            set_rules(&client, kind, name, &without(&rules, &g, &r, &v)).await;
            assert!(
                !allowed(&client, SA_USER, req, &v).await,
                "without {v} on {r} in {name}, the operator's request {req:?} is refused"
            );
            checked += 1;
            set_rules(&client, kind, name, &rules).await;
        }
    }
    // The same for the gateway: sufficient (nothing the chart grants it was refused) and minimal.
    let gw_requests: Vec<Request> = requests_of(&audit, GATEWAY_USER)
        .into_iter()
        .filter(|r| r.resource != "services/proxy")
        .collect();
    assert!(!gw_requests.is_empty(), "the audit log has the gateway's requests");
    let refused: Vec<&Request> = gw_requests.iter().filter(|r| r.code == 403).collect();
    assert!(refused.is_empty(), "the chart's RBAC refused the gateway: {refused:#?}");
    let gw_needed: BTreeMap<(String, String, String), Request> = gw_requests
        .iter()
        .map(|r| ((r.group.clone(), r.resource.clone(), r.verb.clone()), r.clone()))
        .collect();
    for (kind, name) in [("ClusterRole", "alcove-gateway"), ("Role", "alcove-gateway")] {
        let rules = find(objects, kind, name).unwrap()["rules"].clone();
        for (g, r, v) in grants(&rules) {
            let Some(req) = gw_needed.get(&(g.clone(), r.clone(), v.clone())) else {
                unused.push(format!("{kind} {name}: {v} {r} (group {g:?})"));
                continue;
            };
            assert!(allowed(&client, GATEWAY_USER, req, &v).await, "{v} {r} for the gateway");
            set_rules(&client, kind, name, &without(&rules, &g, &r, &v)).await;
            assert!(
                !allowed(&client, GATEWAY_USER, req, &v).await,
                "without {v} on {r} in {name}, the gateway's request {req:?} is refused"
            );
            checked += 1;
            set_rules(&client, kind, name, &rules).await;
        }
    }
    // The dashboard: its own requests (tenants, nodes) and every request it made as a customer
    // (impersonating the user and the tenant's group) need exactly its ClusterRole.
    let mut d = d;
    let _ = d.child.kill().await;
    let d_requests = requests_of(&audit, DASHBOARD_USER);
    let refused: Vec<&Request> =
        d_requests.iter().filter(|r| r.code == 403 && r.impersonated.is_none()).collect();
    assert!(refused.is_empty(), "the chart's RBAC refused the dashboard: {refused:#?}");
    let as_customer: Vec<&Request> =
        d_requests.iter().filter(|r| r.impersonated.is_some()).collect();
    assert!(
        as_customer.iter().any(|r| r.resource == "inferenceinstances" && r.verb == "create"),
        "the dashboard created the instance as the customer: {as_customer:#?}"
    );
    let mut d_needed: BTreeMap<(String, String, String), Request> = BTreeMap::new();
    for r in &d_requests {
        match &r.impersonated {
            None => {
                d_needed.insert((r.group.clone(), r.resource.clone(), r.verb.clone()), r.clone());
            }
            Some((user, groups)) => {
                assert_eq!(user, "alice@startup.example");
                let imp = |resource: &str, name: &str| Request {
                    verb: "impersonate".into(),
                    group: String::new(),
                    resource: resource.into(),
                    namespace: String::new(),
                    name: name.into(),
                    code: 200,
                    impersonated: None,
                };
                d_needed.insert(
                    (String::new(), "users".into(), "impersonate".into()),
                    imp("users", user),
                );
                let group = groups
                    .iter()
                    .find(|g| g.starts_with("alcove:tenant:"))
                    .expect("the tenant's group");
                d_needed.insert(
                    (String::new(), "groups".into(), "impersonate".into()),
                    imp("groups", group),
                );
            }
        }
    }
    let rules = find(objects, "ClusterRole", "alcove-dashboard").unwrap()["rules"].clone();
    for (g, r, v) in grants(&rules) {
        let Some(req) = d_needed.get(&(g.clone(), r.clone(), v.clone())) else {
            unused.push(format!("ClusterRole alcove-dashboard: {v} {r} (group {g:?})"));
            continue;
        };
        assert!(allowed(&client, DASHBOARD_USER, req, &v).await, "{v} {r} for the dashboard");
        set_rules(&client, "ClusterRole", "alcove-dashboard", &without(&rules, &g, &r, &v)).await;
        assert!(
            !allowed(&client, DASHBOARD_USER, req, &v).await,
            "without {v} on {r}, the dashboard's request {req:?} is refused"
        );
        checked += 1;
        set_rules(&client, "ClusterRole", "alcove-dashboard", &rules).await;
    }
    assert!(
        unused.is_empty(),
        "granted but never used (remove them, or make the scenario use them):\n{}",
        unused.join("\n")
    );
    eprintln!(
        "RBAC: {checked} granted verbs, each needed by a request the operator, the gateway or the dashboard made; {} + {} + {} requests audited",
        requests.len(),
        gw_requests.len(),
        d_requests.len()
    );

    // The delegated rules: without any one of them, Kubernetes refuses the operator's write of
    // the tenant-admin Role (escalation prevention). Checked by dry-run as the operator.
    p.ok(&["create", "namespace", "rbac-check"]).await;
    let sa = {
        let kc = kube::config::Kubeconfig::read_from(&sa_kubeconfig).unwrap();
        kube::Client::try_from(
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap(),
        )
        .unwrap()
    };
    let role: Role = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "tenant-admin", "namespace": "rbac-check"},
        "rules": tenant_role["rules"],
    }))
    .unwrap();
    let dry = PostParams { dry_run: true, ..Default::default() };
    let roles = Api::<Role>::namespaced(sa.clone(), "rbac-check");
    roles
        .create(&dry, &role)
        .await
        .expect("with the chart's rules the operator may write the tenant-admin Role");
    // The same for the account ClusterRole (the owners' own Tenant).
    let account: ClusterRole = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "rbac-check-account"},
        "rules": account_role["rules"],
    }))
    .unwrap();
    let cluster_roles = Api::<ClusterRole>::all(sa.clone());
    cluster_roles
        .create(&dry, &account)
        .await
        .expect("with the chart's rules the operator may write the account ClusterRole");
    let delegated = find(objects, "ClusterRole", "alcove-delegated").unwrap()["rules"].clone();
    for (g, r, v) in grants(&delegated) {
        set_rules(&client, "ClusterRole", "alcove-delegated", &without(&delegated, &g, &r, &v))
            .await;
        let refused = match roles.create(&dry, &role).await {
            Err(e) => Some(e),
            Ok(_) => cluster_roles.create(&dry, &account).await.err(),
        };
        let msg = refused
            .unwrap_or_else(|| panic!("without delegated {v} {r}, a tenant role is refused"))
            .to_string();
        assert!(
            msg.contains("attempting to grant RBAC permissions not currently held"),
            "{v} {r}: {msg}"
        );
        set_rules(&client, "ClusterRole", "alcove-delegated", &delegated).await;
    }
}
