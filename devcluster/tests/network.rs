//! The network-namespace pod network: pods get their own addresses, Services their cluster IPs,
//! and NetworkPolicies are enforced, proven with connections that really fail. Needs root, `ip`
//! and `nft`; `./test.sh` installs nftables when it is missing.

mod common;

use std::time::Duration;

use alcove_devcluster::PodNetwork;
use common::*;
use serde_json::{Value, json};

fn pod(ns: &str, name: &str, labels: Value, args: &[&str]) -> Value {
    let mut p = testpod_pod(name, args);
    p["metadata"]["namespace"] = ns.into();
    p["metadata"]["labels"] = labels;
    p
}

async fn running_ip(env: &Env, ns: &str, name: &str) -> String {
    until_some(&format!("{ns}/{name} runs with an address"), Duration::from_secs(30), || async {
        let out = env
            .kubectl(&[
                "get",
                "pod",
                name,
                "-n",
                ns,
                "-o",
                "jsonpath={.status.phase} {.status.podIP}",
            ])
            .await;
        let text = out.stdout.trim().to_string();
        let (phase, ip) = text.split_once(' ')?;
        (phase == "Running" && !ip.is_empty()).then(|| ip.to_string())
    })
    .await
}

/// Runs `testpod connect` from a new pod and returns its verdict per target.
async fn connect_from(
    env: &Env,
    ns: &str,
    name: &str,
    labels: Value,
    targets: &[String],
) -> Vec<String> {
    let mut args = vec!["connect"];
    args.extend(targets.iter().map(String::as_str));
    let mut p = pod(ns, name, labels, &args);
    p["spec"]["restartPolicy"] = "Never".into();
    p["spec"]["containers"][0].as_object_mut().unwrap().remove("ports");
    env.ok_in(&["apply", "-f", "-"], &p.to_string()).await;
    eventually(&format!("{ns}/{name} finishes"), Duration::from_secs(60), || async {
        env.kubectl(&["get", "pod", name, "-n", ns, "-o", "jsonpath={.status.phase}"]).await.stdout
            == "Succeeded"
    })
    .await;
    env.ok(&["logs", name, "-n", ns]).await.lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_enforced_between_pod_namespaces() {
    let env = start_with(|mut c| {
        c.pod_network = PodNetwork::Namespaces;
        c
    })
    .await;
    for ns in ["a", "b", "open"] {
        env.ok(&["create", "namespace", ns]).await;
    }
    env.ok(&["label", "namespace", "b", "team=b"]).await;
    let serve = ["serve", "--host", "0.0.0.0", "--port", "8080", "--text", "hi"];
    for (ns, name, labels) in [
        ("a", "web", json!({"app": "web"})),
        ("a", "other", json!({"app": "other"})),
        ("b", "web", json!({"app": "web"})),
        ("open", "web", json!({"app": "web"})),
    ] {
        env.ok_in(&["apply", "-f", "-"], &pod(ns, name, labels, &serve).to_string()).await;
    }
    let a_web = running_ip(&env, "a", "web").await;
    let a_other = running_ip(&env, "a", "other").await;
    let b_web = running_ip(&env, "b", "web").await;
    let open_web = running_ip(&env, "open", "web").await;
    assert_ne!(a_web, b_web, "each pod has its own address");
    assert!(a_web.starts_with("10.244."), "{a_web}");

    // The probes reach the pods (through the host port forwarding): the kubelet's view works.
    env.ok_in(
        &["apply", "-f", "-"],
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "a"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}})
        .to_string(),
    )
    .await;
    let cluster_ip =
        env.ok(&["get", "svc", "web", "-n", "a", "-o", "jsonpath={.spec.clusterIP}"]).await;

    let policy = |name: &str, spec: Value| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "a"}, "spec": spec})
        .to_string()
    };
    env.ok_in(
        &["apply", "-f", "-"],
        &policy("deny", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})),
    )
    .await;
    env.ok_in(
        &["apply", "-f", "-"],
        &policy(
            "web-from-b",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}], "ports": [{"port": "http"}]}]}),
        ),
    )
    .await;
    env.ok_in(
        &["apply", "-f", "-"],
        &policy(
            "client-egress",
            json!({"podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"],
                "egress": [
                    {"to": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 8080}]},
                    {"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": [format!("{open_web}/32")]}}], "ports": [{"protocol": "TCP", "port": 8080}]}
                ]}),
        ),
    )
    .await;

    let at = |ip: &str, port: u16| format!("{ip}:{port}");
    let api = at("10.244.0.1", 443);
    let from_a = connect_from(
        &env,
        "a",
        "client",
        json!({"role": "client"}),
        &[at(&a_web, 8080), at(&b_web, 8080), at(&open_web, 8080), api.clone()],
    )
    .await;
    assert_eq!(
        from_a,
        [
            // Its egress allows it, a/web's ingress takes only namespace b.
            format!("{a_web}:8080 closed"),
            // The ipBlock allows it, b/web has no policy.
            format!("{b_web}:8080 open"),
            // The ipBlock's except.
            format!("{open_web}:8080 closed"),
            // No egress rule allows port 443.
            format!("{api} closed"),
        ]
    );
    let from_b = connect_from(
        &env,
        "b",
        "client",
        json!({}),
        &[
            at(&a_web, 8080),
            at(&cluster_ip, 80),
            at(&a_other, 8080),
            at(&open_web, 8080),
            api.clone(),
        ],
    )
    .await;
    assert_eq!(
        from_b,
        [
            format!("{a_web}:8080 open"),
            // The Service's address leads to a/web, and the policy allows what it leads to.
            format!("{cluster_ip}:80 open"),
            // Default deny, and no rule picks a/other.
            format!("{a_other}:8080 closed"),
            format!("{open_web}:8080 open"),
            // The API server, where no policy says otherwise.
            format!("{api} open"),
        ]
    );

    // Lifting the policies opens what they closed.
    env.ok(&["delete", "networkpolicy", "--all", "-n", "a"]).await;
    let after =
        connect_from(&env, "a", "client2", json!({"role": "client"}), &[at(&a_web, 8080), api])
            .await;
    assert!(after.iter().all(|l| l.ends_with(" open")), "{after:?}");

    // The pods' namespaces go with the pods.
    let router_pods = || {
        std::fs::read_dir("/var/run/netns")
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with(&format!("dvc{}_", std::process::id()))
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    let before = router_pods();
    env.ok(&["delete", "pod", "--all", "-n", "open", "--wait=true"]).await;
    eventually("the deleted pod's namespace is removed", Duration::from_secs(20), || async {
        router_pods() < before
    })
    .await;
    env.cluster.shutdown().await;
}
