//! Part 2 of devcluster: the scheduler, the process kubelet, probes, the service proxy, volumes,
//! jobs, quota, Pod Security, and no process outliving the server.

mod common;

use std::time::Duration;

use alcove_devcluster::NodeConfig;
use common::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

fn gpu_nodes(c: alcove_devcluster::Config) -> alcove_devcluster::Config {
    c.node(NodeConfig::gpu("gpu-tw-1", "tw-taipei-1", "NVIDIA-H100-80GB-HBM3", 2))
        .node(NodeConfig::gpu("gpu-jp-1", "jp-tokyo-1", "NVIDIA-H100-80GB-HBM3", 8))
        .node(
            NodeConfig::gpu("gpu-tw-dedicated", "tw-taipei-1", "NVIDIA-H100-80GB-HBM3", 8)
                .label("alcove.dev/tenant", "acme")
                .taint("alcove.dev/tenant", "acme", "NoSchedule"),
        )
}

fn gpu_pod(name: &str, gpus: u32, extra_spec: serde_json::Value) -> Pod {
    let mut spec = json!({
        "containers": [{"name": "c", "image": "simulated/app:1", "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}}],
        "nodeSelector": {"topology.kubernetes.io/region": "tw-taipei-1"},
    });
    for (k, v) in extra_spec.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

async fn node_of(pods: &Api<Pod>, name: &str) -> Option<String> {
    pods.get(name).await.ok().and_then(|p| p.spec.and_then(|s| s.node_name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_honours_selectors_taints_and_gpu_fit() {
    let env = start_with(gpu_nodes).await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    // Region selector + 2 GPUs: only gpu-tw-1 fits (jp is the wrong region, dedicated is tainted).
    pods.create(&PostParams::default(), &gpu_pod("two", 2, json!({}))).await.unwrap();
    eventually("pod bound", Duration::from_secs(5), || async {
        node_of(&pods, "two").await.is_some()
    })
    .await;
    assert_eq!(node_of(&pods, "two").await.as_deref(), Some("gpu-tw-1"));
    // GPUs are exclusive: one more GPU does not fit anywhere in the region.
    pods.create(&PostParams::default(), &gpu_pod("one-more", 1, json!({}))).await.unwrap();
    let message = until_some("unschedulable condition", Duration::from_secs(5), || async {
        let p = pods.get("one-more").await.unwrap();
        let cond = p
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "PodScheduled")?;
        (cond.status == "False").then(|| {
            assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
            cond.message.unwrap_or_default()
        })
    })
    .await;
    assert_eq!(
        message,
        "0/4 nodes are available: 1 Insufficient nvidia.com/gpu, 1 node(s) had untolerated taint {alcove.dev/tenant: acme}, 2 node(s) didn't match Pod's node affinity/selector. preemption: 0/4 nodes are available: 1 No preemption victims found for incoming pod, 3 Preemption is not helpful for scheduling."
    );
    assert_eq!(node_of(&pods, "one-more").await, None);
    // Tolerating the taint and selecting the dedicated label reaches the dedicated node.
    let dedicated = gpu_pod(
        "dedicated",
        4,
        json!({
            "nodeSelector": {"topology.kubernetes.io/region": "tw-taipei-1", "alcove.dev/tenant": "acme"},
            "tolerations": [{"key": "alcove.dev/tenant", "operator": "Equal", "value": "acme", "effect": "NoSchedule"}],
        }),
    );
    pods.create(&PostParams::default(), &dedicated).await.unwrap();
    eventually("dedicated pod bound", Duration::from_secs(5), || async {
        node_of(&pods, "dedicated").await.is_some()
    })
    .await;
    assert_eq!(node_of(&pods, "dedicated").await.as_deref(), Some("gpu-tw-dedicated"));
    // Required node affinity works like a selector.
    let affine = gpu_pod(
        "affine",
        0,
        json!({"nodeSelector": null, "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "topology.kubernetes.io/region", "operator": "In", "values": ["jp-tokyo-1"]}]}]}}}}),
    );
    pods.create(&PostParams::default(), &affine).await.unwrap();
    eventually("affine pod bound", Duration::from_secs(5), || async {
        node_of(&pods, "affine").await.is_some()
    })
    .await;
    assert_eq!(node_of(&pods, "affine").await.as_deref(), Some("gpu-jp-1"));
    // Capacity appears: the pending pod is placed without being touched.
    let nodes: Api<Node> = Api::all(env.client.clone());
    let new_node: Node = serde_json::from_value(json!({
        "metadata": {"name": "gpu-tw-2", "labels": {"topology.kubernetes.io/region": "tw-taipei-1"}},
        "status": {"allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110", "nvidia.com/gpu": "8"}, "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110", "nvidia.com/gpu": "8"},
            "conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &new_node).await.unwrap();
    eventually("pending pod placed on the new node", Duration::from_secs(5), || async {
        node_of(&pods, "one-more").await.is_some()
    })
    .await;
    assert_eq!(node_of(&pods, "one-more").await.as_deref(), Some("gpu-tw-2"));
    // kubectl shows the pending reason the same way.
    pods.create(&PostParams::default(), &gpu_pod("huge", 16, json!({}))).await.unwrap();
    eventually("kubectl shows Pending", Duration::from_secs(5), || async {
        env.ok(&["get", "pod", "huge", "-o", "jsonpath={.status.conditions[0].reason}"]).await
            == "Unschedulable"
    })
    .await;
}

/// The scheduler keeps its nodes in order of preference between passes: a node whose pod went
/// away must move up again before the next pod is placed, or that pod lands on the node a stale
/// order prefers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_freed_between_passes_is_preferred_again() {
    let env = start_with(|c| {
        c.node(NodeConfig::gpu("n1", "eu-test-1", "NVIDIA-H100-80GB-HBM3", 3))
            .node(NodeConfig::gpu("n2", "eu-test-1", "NVIDIA-H100-80GB-HBM3", 4))
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let eu = |name: &str, gpus: u32| {
        gpu_pod(name, gpus, json!({"nodeSelector": {"topology.kubernetes.io/region": "eu-test-1"}}))
    };
    let place = |name: &'static str, gpus: u32| {
        let pods = pods.clone();
        let pod = eu(name, gpus);
        async move {
            pods.create(&PostParams::default(), &pod).await.unwrap();
            until_some("pod bound", Duration::from_secs(5), || node_of(&pods, name)).await
        }
    };
    // The most free first: 4 > 3, then 3 > 2; both nodes are left with 2 free.
    assert_eq!(place("first", 2).await, "n2");
    assert_eq!(place("second", 1).await, "n1");
    pods.delete("first", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
        .await
        .unwrap();
    eventually("first gone", Duration::from_secs(10), || async {
        pods.get_opt("first").await.unwrap().is_none()
    })
    .await;
    // n2 has 4 free again against n1's 2; a stale order (2 and 2, a tie) would pick n1 by name.
    assert_eq!(place("third", 1).await, "n2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_pod_ready_by_probe_and_reachable_through_the_service_proxy() {
    let env = start().await;
    let pod = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: main
    image: example.com/testpod:1
    args: ["serve", "--port", "8080", "--host", "$(POD_IP)", "--file", "/site/index.txt"]
    env:
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    ports: [{containerPort: 8080, name: http}]
    readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1}
    volumeMounts: [{name: site, mountPath: /site}]
  volumes:
  - {name: site, configMap: {name: site}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: site}
data: {index.txt: "served from a configmap volume"}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#;
    env.ok_in(&["apply", "-f", "-"], pod).await;
    env.ok(&["wait", "--for=condition=Ready", "pod/web", "--timeout=30s"]).await;
    let out = env
        .ok(&["get", "--raw", "/api/v1/namespaces/default/services/web:http/proxy/index.txt"])
        .await;
    assert_eq!(out, "served from a configmap volume");
    let out = env.ok(&["get", "--raw", "/api/v1/namespaces/default/pods/web:8080/proxy/x"]).await;
    assert_eq!(out, "served from a configmap volume");
    // An edited ConfigMap reaches the mounted file without a restart, as the kubelet does it.
    env.ok(&[
        "patch",
        "configmap",
        "site",
        "--type=merge",
        "-p",
        r#"{"data":{"index.txt":"edited in place"}}"#,
    ])
    .await;
    until_some("the volume follows the ConfigMap", Duration::from_secs(10), || async {
        let r = env
            .kubectl(&[
                "get",
                "--raw",
                "/api/v1/namespaces/default/services/web:http/proxy/index.txt",
            ])
            .await;
        (r.ok && r.stdout == "edited in place").then_some(())
    })
    .await;
    env.ok(&[
        "patch",
        "configmap",
        "site",
        "--type=merge",
        "-p",
        r#"{"data":{"index.txt":"served from a configmap volume"}}"#,
    ])
    .await;
    until_some("and back", Duration::from_secs(10), || async {
        let r = env
            .kubectl(&[
                "get",
                "--raw",
                "/api/v1/namespaces/default/services/web:http/proxy/index.txt",
            ])
            .await;
        (r.ok && r.stdout == "served from a configmap volume").then_some(())
    })
    .await;
    // kubectl proxy: the host reaches the pod as on a real cluster.
    let port = free_port();
    let mut proxy = tokio::process::Command::new("kubectl")
        .args(["proxy", "--port", &port.to_string()])
        .env("KUBECONFIG", &env.cluster.kubeconfig)
        .env("KUBECACHEDIR", env.dir.path().join("kubecache"))
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/api/v1/namespaces/default/services/web:80/proxy/");
    let body = until_some("kubectl proxy answers", Duration::from_secs(10), || async {
        let o = tokio::process::Command::new("curl").args(["-sf", &url]).output().await.ok()?;
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    })
    .await;
    assert_eq!(body, "served from a configmap volume");
    let _ = proxy.kill().await;
    // The container's logs are served.
    let logs = env.ok(&["logs", "web"]).await;
    assert!(logs.contains("serving on 127.0.0.1:"), "{logs}");

    // The Service's endpoints follow the pod's labels, and are written for nothing else of it.
    let listed = || {
        env.ok(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[*].addresses[*].targetRef.name}",
        ])
    };
    assert_eq!(listed().await, "web");
    let mut writes = env.cluster.shared().lock().subscribe();
    env.ok(&["annotate", "pod", "web", "note=unrelated"]).await;
    env.ok(&["label", "pod", "web", "app=other", "--overwrite"]).await;
    eventually("unselected", Duration::from_secs(5), || async { listed().await.is_empty() }).await;
    let mut endpoints_writes = 0;
    while let Ok(e) = writes.try_recv() {
        endpoints_writes +=
            (e.gr.resource == "endpoints" && e.object["metadata"]["name"] == "web") as usize;
    }
    assert_eq!(endpoints_writes, 1, "the label move only");
    env.ok(&["label", "pod", "web", "app=web", "--overwrite"]).await;
    eventually("selected again", Duration::from_secs(5), || async { listed().await == "web" })
        .await;

    // Deleting the pod kills its process.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let uid = pods.get("web").await.unwrap().metadata.uid.unwrap();
    let pids = env.cluster.shared().runtime.pids(&uid);
    assert_eq!(pids.len(), 1);
    assert!(alcove_devcluster::runtime::process_alive(pids[0]));
    env.ok(&["delete", "pod", "web", "--wait", "--timeout=20s"]).await;
    assert!(
        !alcove_devcluster::runtime::process_alive(pids[0]),
        "process {} survived its pod",
        pids[0]
    );
    let err =
        env.fails(&["get", "--raw", "/api/v1/namespaces/default/services/web:http/proxy/"]).await;
    assert!(err.contains("no endpoints available for service"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_ends_in_sigkill() {
    let env = start().await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let mut pod = testpod_pod("stubborn", &["sleep"]);
    pod["spec"]["terminationGracePeriodSeconds"] = 1.into();
    pods.create(&PostParams::default(), &serde_json::from_value(pod).unwrap()).await.unwrap();
    let uid = pods.get("stubborn").await.unwrap().metadata.uid.unwrap();
    let pid = until_some("process started", Duration::from_secs(10), || async {
        env.cluster.shared().runtime.pids(&uid).first().copied()
    })
    .await;
    let started = std::time::Instant::now();
    pods.delete("stubborn", &DeleteParams::default()).await.unwrap();
    eventually("pod object gone", Duration::from_secs(10), || async {
        pods.get("stubborn").await.is_err()
    })
    .await;
    assert!(!alcove_devcluster::runtime::process_alive(pid));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "SIGTERM was ignored, so the kill waited for the grace period"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_quota_refuses_with_kube_apiservers_message() {
    let env = start_with(gpu_nodes).await;
    env.ok(&["create", "namespace", "q"]).await;
    let quota = r#"{"apiVersion":"v1","kind":"ResourceQuota","metadata":{"name":"gpus","namespace":"q"},"spec":{"hard":{"requests.nvidia.com/gpu":"2","pods":"3"}}}"#;
    env.ok_in(&["apply", "-f", "-"], quota).await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "q");
    pods.create(&PostParams::default(), &gpu_pod("a", 2, json!({}))).await.unwrap();
    let err = pods.create(&PostParams::default(), &gpu_pod("b", 1, json!({}))).await.unwrap_err();
    let kube::Error::Api(s) = err else { panic!("{err}") };
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        s.message,
        "pods \"b\" is forbidden: exceeded quota: gpus, requested: requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=2, limited: requests.nvidia.com/gpu=2"
    );
    eventually("quota status shows usage", Duration::from_secs(5), || async {
        env.ok(&[
            "get",
            "quota",
            "gpus",
            "-n",
            "q",
            "-o",
            "jsonpath={.status.used.requests\\.nvidia\\.com/gpu}",
        ])
        .await
            == "2"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_security_restricted_is_enforced() {
    let env = start().await;
    env.ok(&["create", "namespace", "locked"]).await;
    env.ok(&["label", "namespace", "locked", "pod-security.kubernetes.io/enforce=restricted"])
        .await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "locked");
    let err = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(testpod_pod("loose", &["sleep"])).unwrap(),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(s) = err else { panic!("{err}") };
    assert_eq!(s.code, 403);
    assert!(
        s.message.starts_with(
            "pods \"loose\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false"
        ),
        "{}",
        s.message
    );
    let mut tight = testpod_pod("tight", &["sleep"]);
    tight["spec"]["securityContext"] =
        json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}});
    tight["spec"]["containers"][0]["securityContext"] =
        json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
    pods.create(&PostParams::default(), &serde_json::from_value(tight).unwrap()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pvc_directory_lives_while_bound() {
    let env = start().await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), "default");
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})).unwrap();
    claims.create(&PostParams::default(), &claim).await.unwrap();
    let volume = until_some("claim bound", Duration::from_secs(5), || async {
        let c = claims.get("data").await.unwrap();
        (c.status.and_then(|s| s.phase).as_deref() == Some("Bound"))
            .then(|| c.spec.unwrap().volume_name.unwrap())
    })
    .await;
    let pvs: Api<PersistentVolume> = Api::all(env.client.clone());
    let pv = pvs.get(&volume).await.unwrap();
    let dir = std::path::PathBuf::from(pv.spec.unwrap().host_path.unwrap().path);
    assert!(dir.is_dir(), "{} exists while bound", dir.display());
    // A pod writes into it.
    let mut writer = testpod_pod(
        "writer",
        &["exit", "--code", "0", "--write", "/data/marker.txt", "--text", "kept"],
    );
    writer["spec"]["restartPolicy"] = "Never".into();
    writer["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "data", "mountPath": "/data"}]);
    writer["spec"]["volumes"] =
        json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    pods.create(&PostParams::default(), &serde_json::from_value(writer).unwrap()).await.unwrap();
    eventually("writer finished", Duration::from_secs(10), || async {
        pods.get("writer").await.unwrap().status.and_then(|s| s.phase).as_deref()
            == Some("Succeeded")
    })
    .await;
    assert_eq!(std::fs::read_to_string(dir.join("marker.txt")).unwrap(), "kept");
    pods.delete("writer", &DeleteParams::default()).await.unwrap();
    claims.delete("data", &DeleteParams::default()).await.unwrap();
    eventually("volume reclaimed", Duration::from_secs(10), || async {
        pvs.get(&volume).await.is_err()
    })
    .await;
    assert!(!dir.exists(), "{} is gone after the claim", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_and_fail() {
    let env = start().await;
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), "default");
    // The good job writes its termination message; the bad one falls back to its log.
    let job = |name: &str, code: &str| -> Job {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": TESTPOD_IMAGE, "terminationMessagePolicy": "FallbackToLogsOnError",
                "args": ["exit", "--code", code, "--after-ms", "100", "--write", "/dev/termination-log", "--text", if code == "0" { "{\"documents\":3}" } else { "" }]}]}}}}))
        .unwrap()
    };
    jobs.create(&PostParams::default(), &job("good", "0")).await.unwrap();
    jobs.create(&PostParams::default(), &job("bad", "3")).await.unwrap();
    let has = |j: &Job, ty: &str| {
        j.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == ty && c.status == "True"))
    };
    eventually("good job completes", Duration::from_secs(15), || async {
        has(&jobs.get("good").await.unwrap(), "Complete")
    })
    .await;
    eventually("bad job fails", Duration::from_secs(15), || async {
        has(&jobs.get("bad").await.unwrap(), "Failed")
    })
    .await;
    let good = jobs.get("good").await.unwrap().status.unwrap();
    assert_eq!(good.succeeded, Some(1));
    assert!(good.completion_time.is_some());
    let bad = jobs.get("bad").await.unwrap().status.unwrap();
    assert_eq!(bad.failed, Some(1));
    let reason = bad.conditions.unwrap().into_iter().find(|c| c.type_ == "Failed").unwrap().reason;
    assert_eq!(reason.as_deref(), Some("BackoffLimitExceeded"));
    let out = env.ok(&["get", "jobs"]).await;
    assert!(
        out.contains("good   Complete   1/1") && out.contains("bad    Failed     0/1"),
        "{out}"
    );
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let message = |job: &str| {
        let (pods, job) = (pods.clone(), job.to_string());
        async move {
            let pod = pods
                .list(
                    &kube::api::ListParams::default()
                        .labels(&format!("batch.kubernetes.io/job-name={job}")),
                )
                .await
                .unwrap()
                .items
                .remove(0);
            pod.status.unwrap().container_statuses.unwrap()[0]
                .state
                .clone()
                .unwrap()
                .terminated
                .unwrap()
                .message
        }
    };
    assert_eq!(message("good").await.as_deref(), Some("{\"documents\":3}"));
    assert_eq!(
        message("bad").await.as_deref(),
        Some("exiting"),
        "FallbackToLogsOnError: the log's tail"
    );
}

/// The devcluster binary as a child process, so that its exit is a real process exit.
struct Server {
    child: tokio::process::Child,
    kubeconfig: std::path::PathBuf,
    home: std::path::PathBuf,
}

impl Server {
    async fn start(dir: &std::path::Path, name: &str) -> Server {
        let nodes = dir.join("nodes.yaml");
        std::fs::write(
            &nodes,
            format!(
                "images:\n- image: example.com/testpod*\n  executable: {}\n",
                testpod().display()
            ),
        )
        .unwrap();
        let state = dir.join(name);
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_alcove-devcluster"))
            .args(["--state-dir", state.to_str().unwrap(), "--nodes", nodes.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
            child.stdout.take().unwrap(),
        ));
        let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(ready.contains("ready"), "{ready}");
        Server {
            child,
            kubeconfig: state.join("kubeconfig"),
            home: dir.join(format!("{name}-home")),
        }
    }

    async fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        kubectl(&self.kubeconfig, &self.home, args, stdin).await.stdout
    }

    /// Starts a pod that ignores SIGTERM and returns its process id.
    async fn run_pod(&self, name: &str) -> i32 {
        let mut pod = testpod_pod(name, &["sleep"]);
        pod["spec"]["terminationGracePeriodSeconds"] = 30.into();
        self.kubectl(&["apply", "-f", "-"], Some(&pod.to_string())).await;
        until_some("pod process runs", Duration::from_secs(20), || async {
            let id = self
                .kubectl(
                    &[
                        "get",
                        "pod",
                        name,
                        "-o",
                        "jsonpath={.status.containerStatuses[0].containerID}",
                    ],
                    None,
                )
                .await;
            id.strip_prefix("devcluster://").and_then(|p| p.parse::<i32>().ok())
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_process_survives_the_server() {
    let dir = tempfile::tempdir().unwrap();
    // SIGTERM: the server stops every pod process on its way out.
    let mut server = Server::start(dir.path(), "one").await;
    let pids = [server.run_pod("p1").await, server.run_pod("p2").await];
    for pid in pids {
        assert!(alcove_devcluster::runtime::process_alive(pid));
    }
    // SAFETY: signalling a child this test spawned.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(server.child.id().unwrap() as i32, libc::SIGTERM);
    }
    tokio::time::timeout(Duration::from_secs(20), server.child.wait()).await.unwrap().unwrap();
    for pid in pids {
        eventually("pod process gone after SIGTERM", Duration::from_secs(5), || async {
            !alcove_devcluster::runtime::process_alive(pid)
        })
        .await;
    }
    // SIGKILL: nothing runs the server's shutdown; the parent-death signal still takes the pods.
    let mut server = Server::start(dir.path(), "two").await;
    let pid = server.run_pod("p3").await;
    server.child.kill().await.unwrap();
    eventually("pod process gone after SIGKILL", Duration::from_secs(5), || async {
        !alcove_devcluster::runtime::process_alive(pid)
    })
    .await;
}
