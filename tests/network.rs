//! Isolation on the wire: devcluster's network-namespace pod network enforces the NetworkPolicies
//! the operator writes, and connections between real pods (instances serving, an indexing job
//! fetching, probes) really fail where the policies say so. Needs root, `ip` and `nft`
//! (`./test.sh` installs nftables when it is missing).

use std::path::PathBuf;
use std::time::Duration;

use alcove_devcluster::PodNetwork;
use alcove_tests::*;
use serde_json::{Value, json};

const PROBE_IMAGE: &str = "example.com/probe:1";

/// devcluster's test program: `serve` a port, or `connect` to addresses and print the verdicts.
fn probe_program() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| cargo_build(&["-p", "alcove-devcluster"], "devcluster-testpod")).clone()
}

/// A pod running the probe program, within the tenant namespaces' restricted Pod Security.
fn probe_pod(ns: &str, name: &str, labels: &Value, args: &[&str], port: Option<u16>) -> String {
    let mut container = json!({
        "name": "main", "image": PROBE_IMAGE, "args": args,
        "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
    });
    if let Some(port) = port {
        container["ports"] = json!([{"containerPort": port}]);
    }
    let restart = if port.is_some() { "Always" } else { "Never" };
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 1, "containers": [container]}})
    .to_string()
}

async fn running_ip(p: &Platform, ns: &str, selector: &str) -> String {
    until_some(&format!("a pod {selector} in {ns} runs"), Duration::from_secs(90), || async {
        let (_, out, _) = p
            .kubectl(&[
                "get",
                "pods",
                "-n",
                ns,
                "-l",
                selector,
                "-o",
                "jsonpath={.items[0].status.phase} {.items[0].status.podIP}",
            ])
            .await;
        let (phase, ip) = out.trim().split_once(' ')?;
        (phase == "Running" && ip.starts_with("10.244.")).then(|| ip.to_string())
    })
    .await
}

/// A host serving on `port`; returns its address.
async fn serve(p: &Platform, ns: &str, name: &str, labels: Value, port: u16) -> String {
    let port_arg = port.to_string();
    let args = ["serve", "--host", "0.0.0.0", "--port", &port_arg, "--text", "Parking is on B2."];
    let mut labels = labels;
    labels["probe"] = name.into();
    p.ok_in(&["apply", "-f", "-"], &probe_pod(ns, name, &labels, &args, Some(port))).await;
    running_ip(p, ns, &format!("probe={name}")).await
}

/// Connects from a new pod in `ns` with `labels` to each target: "open" or "closed" each.
async fn connect_from(
    p: &Platform,
    ns: &str,
    name: &str,
    labels: Value,
    targets: &[&str],
) -> Vec<String> {
    let mut args = vec!["connect"];
    args.extend(targets);
    p.ok_in(&["apply", "-f", "-"], &probe_pod(ns, name, &labels, &args, None)).await;
    eventually(&format!("{ns}/{name} finishes"), Duration::from_secs(60), || async {
        p.kubectl(&["get", "pod", name, "-n", ns, "-o", "jsonpath={.status.phase}"]).await.1
            == "Succeeded"
    })
    .await;
    let log = p.ok(&["logs", name, "-n", ns]).await;
    log.lines().map(|l| l.rsplit(' ').next().unwrap_or_default().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_on_the_wire() {
    let mut p = Platform::start_with(|c| {
        let mut c = with_inference(c).image("example.com/probe*", probe_program());
        c.pod_network = PodNetwork::Namespaces;
        c
    })
    .await;
    p.spawn_operator(&[]).await;
    p.ok(&[
        "apply",
        "-f",
        &example("good/tenant-basic.yaml"),
        "-f",
        &example("good/tenant-pro.yaml"),
    ])
    .await;
    p.ok(&["apply", "-f", &example("good/instance-safetensors.yaml")]).await;
    p.ok_in(&["apply", "-f", "-"], ACME_INSTANCE).await;
    p.wait_condition("inst/chat -n tenant-startup", "Ready", 90).await;
    p.wait_condition("inst/bot -n tenant-acme", "Ready", 90).await;
    // Instances serve on their pod addresses; their readiness came through the node.
    let chat = running_ip(&p, "tenant-startup", "alcove.dev/instance=chat").await;
    let bot = running_ip(&p, "tenant-acme", "alcove.dev/instance=bot").await;
    let chat_service =
        p.jsonpath(&["get", "svc", "chat", "-n", "tenant-startup"], "{.spec.clusterIP}").await;
    let chat_port =
        p.jsonpath(&["get", "svc", "chat", "-n", "tenant-startup"], "{.spec.ports[0].port}").await;

    // Stand-ins for the rest of a cluster: DNS (labelled as kube-dns is), another kube-system
    // server on the same port, and hosts outside every tenant.
    p.ok(&["create", "namespace", "outside"]).await;
    let dns = serve(&p, "kube-system", "dns", json!({"k8s-app": "kube-dns"}), 53).await;
    let not_dns = serve(&p, "kube-system", "not-dns", json!({}), 53).await;
    let site = serve(&p, "outside", "site", json!({}), 8080).await;
    let elsewhere = serve(&p, "outside", "elsewhere", json!({}), 8080).await;
    let api = "10.244.0.1:443".to_string();
    let at = |ip: &str, port: &str| format!("{ip}:{port}");
    let (chat_at, bot_at) = (at(&chat, "8080"), at(&bot, "8080"));
    let (dns_at, not_dns_at) = (at(&dns, "53"), at(&not_dns, "53"));
    let (site_at, elsewhere_at) = (at(&site, "8080"), at(&elsewhere, "8080"));
    let service_at = at(&chat_service, &chat_port);

    // Every server listens: from a namespace without policies the others are reachable, and the
    // gateway's namespace reaches every instance port, directly and through the Service. So each
    // "closed" below is a policy at work.
    let hosts = [&dns_at, &not_dns_at, &site_at, &elsewhere_at, &api];
    let hosts: Vec<&str> = hosts.iter().map(|s| s.as_str()).collect();
    let open = connect_from(&p, "outside", "witness", json!({}), &hosts).await;
    assert_eq!(open, vec!["open"; hosts.len()], "{hosts:?}");
    let from_gateway = connect_from(
        &p,
        "alcove-system",
        "gateway-probe",
        json!({}),
        &[&chat_at, &bot_at, &service_at],
    )
    .await;
    assert_eq!(from_gateway, ["open", "open", "open"]);
    let all = [&chat_at, &bot_at, &dns_at, &not_dns_at, &site_at, &elsewhere_at, &api, &service_at];
    let all: Vec<&str> = all.iter().map(|s| s.as_str()).collect();

    // A pod of tenant startup: its own instance and DNS, nothing else.
    let from_startup = connect_from(&p, "tenant-startup", "probe", json!({}), &all).await;
    assert_eq!(
        from_startup,
        ["open", "closed", "open", "closed", "closed", "closed", "closed", "open"],
        "chat, bot, dns, not-dns, site, elsewhere, the API server, chat's Service: {all:?}"
    );
    // The other tenant's pods cannot reach it either.
    let from_acme =
        connect_from(&p, "tenant-acme", "probe", json!({}), &[&chat_at, &service_at, &bot_at])
            .await;
    assert_eq!(from_acme, ["closed", "closed", "open"]);

    // A URL source: the real indexing job fetches it through its egress policy...
    let kb = format!(
        "apiVersion: alcove.dev/v1alpha1\nkind: KnowledgeBase\nmetadata: {{name: web, namespace: tenant-startup}}\nspec:\n  sources:\n  - name: site\n    url: http://{site_at}/guide.md\n  embeddingModel: {{source: {{platform: default-embedding}}}}\n"
    );
    p.ok_in(&["apply", "-f", "-"], &kb).await;
    p.wait_condition("kb/web -n tenant-startup", "Indexed", 120).await;
    assert_eq!(
        p.jsonpath(&["get", "kb", "web", "-n", "tenant-startup"], "{.status.documents}").await,
        "1"
    );
    // ...and a pod with the job's labels reaches that host and port only.
    let policy =
        p.json(&["get", "networkpolicy", "web-indexer-egress", "-n", "tenant-startup"]).await;
    let job_labels = policy["spec"]["podSelector"]["matchLabels"].clone();
    let from_job = connect_from(
        &p,
        "tenant-startup",
        "indexer-probe",
        job_labels,
        &[&site_at, &elsewhere_at, &bot_at, &dns_at, &api],
    )
    .await;
    assert_eq!(
        from_job,
        ["open", "closed", "closed", "open", "closed"],
        "site, elsewhere, bot, dns, api"
    );
}
