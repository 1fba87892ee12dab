//! The process kubelet: pods bound to a node run here. Images mapped to a local executable run
//! as child processes (each in its own process group, killed with the server); unmapped images
//! are simulated (Running and Ready without a process, as KWOK does).
//!
//! By default every pod shares the host network, so a pod's IP is 127.0.0.1 and each container
//! port gets a free host port. The kubelet rewrites the container's arguments to match: an
//! argument equal to a declared container port, or ending in `=<port>` or `:<port>`, gets the
//! host port. In the network-namespace mode ([`crate::netns`]) a pod has its own address and
//! serves on its declared ports; the host ports forward into it.
//! Volumes are directories; arguments and environment values under a mount path are rewritten
//! to the directory backing it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, watch};

use crate::api;
use crate::error::ApiError;
use crate::meta::{self, At};
use crate::netns::{Network, PodNet};
use crate::resources::GroupResource;
use crate::runtime::{PodHandle, signal_group};
use crate::shared::{Reply, Shared, async_stream_body};
use crate::state::{EventType, State};

const KUBELET: &str = "kubelet";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// `pod` with `status` merged into its status; `None` when that changes nothing.
fn with_status(pod: &Value, status: &Value) -> Option<Value> {
    let mut merged = pod.get("status").cloned().unwrap_or_else(|| json!({}));
    for (k, v) in status.as_object().into_iter().flatten() {
        merged[k] = v.clone();
    }
    if merged == pod["status"] {
        return None;
    }
    let mut p = pod.clone();
    p["status"] = merged;
    Some(p)
}
fn pods() -> GroupResource {
    GroupResource::core("pods")
}

/// Pods to tell when a ConfigMap or Secret they mount as a volume changes:
/// (namespace, resource, name) → pod uid → its worker's bell.
type Mounts = HashMap<(String, &'static str, String), HashMap<String, Arc<Notify>>>;

/// The ConfigMaps and Secrets a pod mounts as volumes of their own (what the kubelet refreshes).
fn volume_sources(pod: &Value) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for v in pod.at("/spec/volumes").and_then(Value::as_array).into_iter().flatten() {
        if let Some(n) = v.at("/configMap/name").and_then(Value::as_str) {
            out.push(("configmaps", n.to_string()));
        } else if let Some(n) = v.at("/secret/secretName").and_then(Value::as_str) {
            out.push(("secrets", n.to_string()));
        }
    }
    out
}

/// Watches pods and runs those bound to a node; tells running pods when a ConfigMap or Secret
/// they mount changes, so no pod polls the store for it.
pub async fn run(shared: Arc<Shared>, network: Option<Arc<Network>>) {
    let mut rx = shared.lock().subscribe();
    let mut mounts = Mounts::new();
    let started = |pod: &Value, bell: Arc<Notify>, mounts: &mut Mounts| {
        for (resource, name) in volume_sources(pod) {
            mounts
                .entry((meta::namespace(pod).to_string(), resource, name))
                .or_default()
                .insert(meta::uid(pod).to_string(), bell.clone());
        }
    };
    // Pods already bound when the kubelet starts.
    let existing: Vec<Arc<Value>> = shared.lock().list(&pods(), None);
    for p in existing {
        if let Some(bell) = consider(&shared, &network, &p) {
            started(&p, bell, &mut mounts);
        }
    }
    loop {
        match rx.recv().await {
            Ok(e) => {
                let source = match (e.gr.group.as_str(), e.gr.resource.as_str()) {
                    ("", "configmaps") => Some("configmaps"),
                    ("", "secrets") => Some("secrets"),
                    _ => None,
                };
                if let Some(resource) = source {
                    let key = (
                        meta::namespace(&e.object).to_string(),
                        resource,
                        meta::name(&e.object).to_string(),
                    );
                    for bell in mounts.get(&key).into_iter().flat_map(HashMap::values) {
                        bell.notify_one();
                    }
                    continue;
                }
                if e.gr != pods() {
                    continue;
                }
                match e.kind {
                    EventType::Deleted => {
                        // Force-deleted: stop whatever still runs.
                        if let Some(h) = shared.runtime.lock().get(meta::uid(&e.object)) {
                            let _ = h.stop.send(true);
                        }
                        let ns = meta::namespace(&e.object).to_string();
                        for (resource, name) in volume_sources(&e.object) {
                            let key = (ns.clone(), resource, name);
                            if let Some(pods) = mounts.get_mut(&key) {
                                pods.remove(meta::uid(&e.object));
                                if pods.is_empty() {
                                    mounts.remove(&key);
                                }
                            }
                        }
                    }
                    _ => {
                        if let Some(bell) = consider(&shared, &network, &e.object) {
                            started(&e.object, bell, &mut mounts);
                        }
                    }
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                // Changes were missed: every mounted source may have changed.
                for bell in mounts.values().flat_map(HashMap::values) {
                    bell.notify_one();
                }
                let all: Vec<Arc<Value>> = shared.lock().list(&pods(), None);
                for p in all {
                    if let Some(bell) = consider(&shared, &network, &p) {
                        started(&p, bell, &mut mounts);
                    }
                }
            }
            Err(_) => return,
        }
    }
}

/// Starts a worker for a pod bound here and not yet running; returns the bell that tells it its
/// mounted sources changed.
fn consider(
    shared: &Arc<Shared>,
    network: &Option<Arc<Network>>,
    pod: &Arc<Value>,
) -> Option<Arc<Notify>> {
    let uid = meta::uid(pod).to_string();
    // Not bound yet: the scheduler has not placed it.
    pod.at("/spec/nodeName")?;
    let running = shared.runtime.lock().contains_key(&uid);
    if meta::is_deleting(pod) {
        if let Some(h) = shared.runtime.lock().get(&uid) {
            let _ = h.stop.send(true);
        }
        if !running {
            // Never started here: nothing to stop, finish the deletion.
            let mut st = shared.lock();
            if st
                .get(&pods(), meta::namespace(pod), meta::name(pod))
                .is_some_and(|p| meta::uid(&p) == uid)
            {
                st.remove(&pods(), meta::namespace(pod), meta::name(pod));
            }
        }
        return None;
    }
    if running
        || matches!(pod.at("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"))
    {
        return None;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let dir = shared.runtime.state_dir.join("pods").join(&uid);
    let mut ports = BTreeMap::new();
    for c in pod.at("/spec/containers").and_then(Value::as_array).into_iter().flatten() {
        for p in c["ports"].as_array().into_iter().flatten() {
            if let Some(cp) = p["containerPort"].as_i64() {
                ports.entry(cp).or_insert_with(free_port);
            }
        }
    }
    let pgids = Arc::new(Mutex::new(BTreeMap::new()));
    shared.runtime.lock().insert(
        uid.clone(),
        PodHandle {
            namespace: meta::namespace(pod).into(),
            name: meta::name(pod).into(),
            ports: ports.clone(),
            dir: dir.clone(),
            pgids: pgids.clone(),
            stop: stop_tx,
        },
    );
    let bell = Arc::new(Notify::new());
    let worker = PodWorker {
        shared: shared.clone(),
        uid,
        dir,
        ports,
        pgids,
        stop: stop_rx,
        sources_changed: bell.clone(),
        network: network.clone(),
        net: None,
        forwarders: Vec::new(),
    };
    tokio::spawn(worker.run());
    Some(bell)
}

struct PodWorker {
    shared: Arc<Shared>,
    uid: String,
    dir: PathBuf,
    ports: BTreeMap<i64, u16>,
    pgids: Arc<Mutex<BTreeMap<String, i32>>>,
    stop: watch::Receiver<bool>,
    /// Rung when a ConfigMap or Secret mounted as a volume changes.
    sources_changed: Arc<Notify>,
    /// The network-namespace pod network, when the cluster runs one.
    network: Option<Arc<Network>>,
    /// The pod's namespace and address in it.
    net: Option<PodNet>,
    /// Host ports forwarding into the pod (network-namespace mode).
    forwarders: Vec<tokio::task::AbortHandle>,
}

/// One container being run.
struct Running {
    name: String,
    child: Option<Child>,
    started_at: String,
    restarts: i64,
    ready: bool,
    exit: Option<(i32, String, String)>,
    spec: Value,
    liveness_failures: u32,
    last_probe: tokio::time::Instant,
    backoff_until: Option<tokio::time::Instant>,
    /// The termination message of the last exit (`state.terminated.message`).
    message: Option<String>,
    /// The previous run's end, shown as `lastState.terminated` after a restart.
    last_terminated: Option<Value>,
}

impl PodWorker {
    fn current(&self) -> Option<Arc<Value>> {
        self.current_in(&self.shared.lock())
    }

    fn current_in(&self, st: &State) -> Option<Arc<Value>> {
        let handle = self.shared.runtime.lock();
        let h = handle.get(&self.uid)?;
        st.get(&pods(), &h.namespace, &h.name).filter(|p| meta::uid(p) == self.uid)
    }

    /// Merges `status` into the pod's. The write is worked out outside the store's lock and
    /// committed only if the pod is still the version it was merged into (else merged again, and
    /// after a few lost races read and written under one hold of the lock): a write between the
    /// read and the write would otherwise make it a conflict, refused, and the pod would keep a
    /// stale status for good (a simulated pod stayed unready that way at 10,000 pods).
    /// False when the write was refused (the pod gone or the status unchanged count as done).
    fn write_status(&self, status: Value) -> bool {
        let opts = api::WriteOpts::system(KUBELET);
        for _ in 0..api::OPTIMISTIC_TRIES {
            let (pod, info) = {
                let st = self.shared.lock();
                (self.current_in(&st), st.registry.preferred(&pods()))
            };
            let Some(pod) = pod else { return true };
            let Some(info) = info else { return false };
            let Some(p) = with_status(&pod, &status) else { return true };
            let prepared = match api::prepare_put(&info, pod, p, &opts, true) {
                Ok(prepared) => prepared,
                Err(e) => {
                    tracing::debug!(pod = %self.uid, error = %e, "status write refused");
                    return false;
                }
            };
            if api::commit_if_current(&mut self.shared.lock(), &info, prepared).is_some() {
                return true;
            }
        }
        let mut st = self.shared.lock();
        let Some(pod) = self.current_in(&st) else { return true };
        let Some(p) = with_status(&pod, &status) else { return true };
        api::system_write(&mut st, &pods(), p, true, KUBELET).is_some()
    }

    fn event(&self, ty: &str, reason: &str, message: &str) {
        let Some(pod) = self.current() else { return };
        let mut st = self.shared.lock();
        crate::api::record_event(&mut st, &pod, ty, reason, message, KUBELET);
    }

    async fn run(mut self) {
        let Some(pod) = self.current() else {
            self.finish().await;
            return;
        };
        if let Some(network) = self.network.clone() {
            match network.add_pod().await {
                Ok(net) => {
                    for (cp, hp) in &self.ports {
                        match u16::try_from(*cp).map(|cp| network.forward(*hp, net.ip, cp)) {
                            Ok(Ok(f)) => self.forwarders.push(f),
                            Ok(Err(e)) => {
                                tracing::warn!(pod = %self.uid, error = %e, "host port not forwarded")
                            }
                            Err(_) => {}
                        }
                    }
                    self.net = Some(net);
                }
                Err(msg) => {
                    self.fail_pod(&pod, &format!("creating the pod's network: {msg}")).await;
                    return;
                }
            }
        }
        let pod_ip = self.pod_ip();
        let spec = pod["spec"].clone();
        let restart_policy = spec["restartPolicy"].as_str().unwrap_or("Always").to_string();
        let now = meta::now_rfc3339();
        let containers: Vec<Value> = spec["containers"].as_array().cloned().unwrap_or_default();
        let waiting = |reason: &str, message: &str| -> Vec<Value> {
            containers
                .iter()
                .map(|c| json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": false, "restartCount": 0, "started": false,
                    "state": {"waiting": {"reason": reason, "message": message}}}))
                .collect()
        };
        self.write_status(json!({
            "phase": "Pending", "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}], "startTime": now,
            "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
            "containerStatuses": waiting("ContainerCreating", ""),
            "conditions": conditions(&pod, false, false, true),
        }));

        // The pod as written, with its address for `status.podIP` references.
        let pod = self.current().unwrap_or(pod);
        if let (Some(network), Some(net)) = (&self.network, &self.net) {
            network.covering(net.ip).await;
        }
        // Versions of the mounted sources before they are first written: a change from here on
        // is written again once the pod runs.
        let mut projected = self.volume_versions(&pod);
        // Volumes, retried until their sources exist (like the kubelet's mount retries).
        let mounts = loop {
            if *self.stop.borrow() {
                self.finish().await;
                return;
            }
            match self.prepare_volumes(&pod).await {
                Ok(m) => break m,
                Err(msg) => {
                    self.event("Warning", "FailedMount", &msg);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = self.stop.changed() => {}
                    }
                }
            }
        };
        let env_base = match self.resolve_env_sources(&pod) {
            Ok(e) => e,
            Err(msg) => {
                self.write_status(
                    json!({"containerStatuses": waiting("CreateContainerConfigError", &msg)}),
                );
                self.event("Warning", "Failed", &format!("Error: {msg}"));
                // Stay pending until deleted, as the kubelet does with config errors.
                let _ = self.stop.changed().await;
                self.finish().await;
                return;
            }
        };

        // Init containers, in order, each to completion. A failed one is restarted with the
        // kubelet's back-off unless the pod's restartPolicy is Never; the pod stays Pending
        // meanwhile, with the exit in the init container's status.
        let inits: Vec<Value> = spec["initContainers"].as_array().cloned().unwrap_or_default();
        let mut init_status: Vec<Value> = inits
            .iter()
            .map(|c| json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": false, "restartCount": 0, "started": false,
                "state": {"waiting": {"reason": "PodInitializing"}}}))
            .collect();
        if !inits.is_empty() {
            self.write_status(json!({"initContainerStatuses": init_status, "containerStatuses": waiting("PodInitializing", "")}));
        }
        for (ix, c) in inits.iter().enumerate() {
            let mut r = Running::new(c);
            loop {
                if let Err(msg) = self.start(&pod, c, &mounts, &env_base[&r.name], &mut r) {
                    self.fail_pod(&pod, &format!("init container {}: {msg}", r.name)).await;
                    return;
                }
                init_status[ix] = r.status();
                self.write_status(json!({"initContainerStatuses": init_status}));
                let code = match r.child.as_mut() {
                    Some(child) => tokio::select! {
                        s = child.wait() => s.ok().and_then(|s| s.code()).unwrap_or(1),
                        _ = self.stop.changed() => {
                            self.terminate(&mut [r], &pod).await;
                            self.finish().await;
                            return;
                        }
                    },
                    None => 0,
                };
                self.pgids.lock().unwrap_or_else(|x| x.into_inner()).remove(&r.name);
                r.child = None;
                let reason = if code == 0 { "Completed" } else { "Error" };
                r.exit = Some((code, reason.to_string(), meta::now_rfc3339()));
                r.message = self.termination_message(&r.spec, code);
                if code == 0 {
                    init_status[ix] = r.status();
                    init_status[ix]["ready"] = true.into();
                    self.write_status(json!({"initContainerStatuses": init_status}));
                    break;
                }
                if restart_policy == "Never" {
                    init_status[ix] = r.status();
                    self.write_status(json!({"phase": "Failed", "reason": "Error", "message": format!("init container {} exited with {code}", r.name), "initContainerStatuses": init_status}));
                    self.event(
                        "Warning",
                        "Failed",
                        &format!("init container {} failed with exit code {code}", r.name),
                    );
                    let _ = self.stop.changed().await;
                    self.finish().await;
                    return;
                }
                let delay = restart_backoff(r.restarts);
                r.backoff_until = Some(tokio::time::Instant::now() + delay);
                init_status[ix] = r.status();
                self.write_status(json!({"initContainerStatuses": init_status}));
                self.event(
                    "Warning",
                    "BackOff",
                    &format!(
                        "Back-off restarting failed init container {} in pod {}",
                        r.name,
                        meta::name(&pod)
                    ),
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = self.stop.changed() => {
                        self.finish().await;
                        return;
                    }
                }
                r.backoff_until = None;
                r.last_terminated = r.terminated();
                r.exit = None;
                r.restarts += 1;
            }
        }

        let mut running: Vec<Running> = containers.iter().map(Running::new).collect();
        for r in running.iter_mut() {
            let env = env_base.get(&r.name).cloned().unwrap_or_default();
            let spec_c = r.spec.clone();
            if let Err(msg) = self.start(&pod, &spec_c, &mounts, &env, r) {
                self.fail_pod(&pod, &msg).await;
                return;
            }
            self.event("Normal", "Started", &format!("Started container {}", r.name));
        }
        let mut unpublished = !self.publish(&pod, &running, "Running");

        let mut ticker = tokio::time::interval(Duration::from_millis(250));
        let bell = self.sources_changed.clone();
        let mut sources_changed = false;
        loop {
            // The kubelet refreshes configMap and secret volumes in place when their source
            // changes (some time later; here as soon as the store says so).
            if std::mem::take(&mut sources_changed) {
                self.sync_volumes(&pod, &mut projected);
            }
            // Simulated containers that are ready have nothing to probe or wait for: such a pod
            // sleeps until stopped or its sources change (10,000 of them would otherwise tick).
            let idle = !unpublished
                && running.iter().all(|r| {
                    r.child.is_none() && r.exit.is_none() && r.backoff_until.is_none() && r.ready
                });
            if *self.stop.borrow() {
                self.terminate(&mut running, &pod).await;
                self.finish().await;
                return;
            }
            let exited = {
                let futures: Vec<_> = running
                    .iter_mut()
                    .enumerate()
                    .filter_map(|(i, r)| {
                        r.child.as_mut().map(|c| Box::pin(async move { (i, c.wait().await) }))
                    })
                    .collect();
                if futures.is_empty() {
                    tokio::select! {
                        _ = ticker.tick(), if !idle => None,
                        _ = bell.notified() => { sources_changed = true; None }
                        _ = self.stop.changed() => None,
                    }
                } else {
                    tokio::select! {
                        (res, _, _) = futures::future::select_all(futures) => Some(res),
                        _ = ticker.tick() => None,
                        _ = bell.notified() => { sources_changed = true; None }
                        _ = self.stop.changed() => None,
                    }
                }
            };
            let mut changed = false;
            if let Some((i, status)) = exited {
                let r = &mut running[i];
                let (code, signal) = match status {
                    Ok(s) => {
                        use std::os::unix::process::ExitStatusExt;
                        (s.code().unwrap_or(128 + s.signal().unwrap_or(9)), s.signal())
                    }
                    Err(_) => (1, None),
                };
                r.child = None;
                self.pgids.lock().unwrap_or_else(|x| x.into_inner()).remove(&r.name);
                let reason = if code == 0 { "Completed" } else { "Error" };
                let _ = signal;
                r.exit = Some((code, reason.to_string(), meta::now_rfc3339()));
                r.message = self.termination_message(&r.spec, code);
                r.ready = false;
                changed = true;
                let restart = match restart_policy.as_str() {
                    "Always" => true,
                    "OnFailure" => code != 0,
                    _ => false,
                };
                if restart && !*self.stop.borrow() {
                    let delay = restart_backoff(r.restarts);
                    r.backoff_until = Some(tokio::time::Instant::now() + delay);
                    self.event(
                        "Warning",
                        "BackOff",
                        &format!(
                            "Back-off restarting failed container {} in pod {}",
                            r.name,
                            meta::name(&pod)
                        ),
                    );
                }
            }
            // Restarts whose backoff ended.
            for r in running.iter_mut() {
                if r.child.is_none()
                    && r.backoff_until.is_some_and(|t| t <= tokio::time::Instant::now())
                {
                    r.backoff_until = None;
                    r.restarts += 1;
                    r.last_terminated = r.terminated();
                    r.exit = None;
                    let env = env_base.get(&r.name).cloned().unwrap_or_default();
                    let spec_c = r.spec.clone();
                    if let Err(msg) = self.start(&pod, &spec_c, &mounts, &env, r) {
                        self.event("Warning", "Failed", &msg);
                    }
                    changed = true;
                }
            }
            // Probes.
            for r in running.iter_mut() {
                let simulated = r.child.is_none() && r.exit.is_none() && r.backoff_until.is_none();
                if r.child.is_none() && !simulated {
                    continue;
                }
                let period = |p: &Value| {
                    Duration::from_secs(p["periodSeconds"].as_u64().unwrap_or(10).max(1))
                };
                let initial =
                    |p: &Value| Duration::from_secs(p["initialDelaySeconds"].as_u64().unwrap_or(0));
                let since_start = started_elapsed(&r.started_at);
                if let Some(probe) = r.spec.get("readinessProbe").cloned() {
                    if since_start >= initial(&probe)
                        && (r.last_probe.elapsed() >= period(&probe) || !r.ready)
                    {
                        r.last_probe = tokio::time::Instant::now();
                        let ok = if simulated { true } else { self.probe(&probe, &r.spec).await };
                        if ok != r.ready {
                            r.ready = ok;
                            changed = true;
                        }
                    }
                } else if !r.ready {
                    r.ready = true;
                    changed = true;
                }
                if let Some(probe) = r.spec.get("livenessProbe").cloned()
                    && !simulated
                    && since_start >= initial(&probe)
                    && r.last_probe.elapsed() >= period(&probe)
                {
                    if self.probe(&probe, &r.spec).await {
                        r.liveness_failures = 0;
                    } else {
                        r.liveness_failures += 1;
                        if r.liveness_failures
                            >= probe["failureThreshold"].as_u64().unwrap_or(3) as u32
                        {
                            self.event(
                                "Warning",
                                "Unhealthy",
                                &format!(
                                    "Liveness probe failed for container {}; restarting",
                                    r.name
                                ),
                            );
                            if let Some(pgid) =
                                self.pgids.lock().unwrap_or_else(|x| x.into_inner()).get(&r.name)
                            {
                                signal_group(*pgid, libc::SIGKILL);
                            }
                            r.liveness_failures = 0;
                        }
                    }
                }
            }
            if changed || unpublished {
                let all_done = running
                    .iter()
                    .all(|r| r.child.is_none() && r.backoff_until.is_none() && r.exit.is_some());
                let phase = if all_done {
                    if running.iter().all(|r| r.exit.as_ref().is_some_and(|e| e.0 == 0)) {
                        "Succeeded"
                    } else {
                        "Failed"
                    }
                } else {
                    "Running"
                };
                // A refused write is tried again on the next tick.
                unpublished = !self.publish(&pod, &running, phase);
                if all_done && !unpublished {
                    // Keep the worker until deletion so the pod's logs stay readable.
                    let _ = self.stop.changed().await;
                    self.finish().await;
                    return;
                }
            }
        }
    }

    fn pod_ip(&self) -> String {
        self.net.as_ref().map_or_else(|| "127.0.0.1".into(), |n| n.ip.to_string())
    }

    /// Writes the containers' states; false when the write was refused.
    fn publish(&self, pod: &Value, running: &[Running], phase: &str) -> bool {
        let statuses: Vec<Value> = running.iter().map(|r| r.status()).collect();
        let all_ready = running.iter().all(|r| r.ready);
        let mut status = json!({
            "phase": phase,
            "podIP": self.pod_ip(),
            "podIPs": [{"ip": self.pod_ip()}],
            "containerStatuses": statuses,
            "conditions": conditions(pod, all_ready && phase == "Running", true, phase == "Running"),
        });
        if phase == "Succeeded" || phase == "Failed" {
            status["conditions"] = conditions(pod, false, true, false);
        }
        self.write_status(status)
    }

    async fn fail_pod(&mut self, _pod: &Value, msg: &str) {
        self.event("Warning", "Failed", msg);
        self.write_status(json!({"phase": "Failed", "reason": "Error", "message": msg}));
        let _ = self.stop.changed().await;
        self.finish().await;
    }

    /// SIGTERM every container, SIGKILL after the grace period.
    async fn terminate(&self, running: &mut [Running], pod: &Value) {
        let grace = self
            .current()
            .and_then(|p| p.at("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64))
            .or_else(|| pod.at("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64))
            .unwrap_or(30)
            .max(0) as u64;
        let pgids: Vec<i32> =
            self.pgids.lock().unwrap_or_else(|x| x.into_inner()).values().copied().collect();
        for pgid in &pgids {
            signal_group(*pgid, libc::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(grace);
        for r in running.iter_mut() {
            if let Some(child) = r.child.as_mut() {
                match tokio::time::timeout_at(deadline, child.wait()).await {
                    Ok(_) => {}
                    Err(_) => {
                        if let Some(pgid) =
                            self.pgids.lock().unwrap_or_else(|x| x.into_inner()).get(&r.name)
                        {
                            signal_group(*pgid, libc::SIGKILL);
                        }
                        let _ = child.wait().await;
                    }
                }
                r.child = None;
            }
        }
        // Anything left in the groups (grandchildren) goes too.
        for pgid in pgids {
            signal_group(pgid, libc::SIGKILL);
        }
        self.pgids.lock().unwrap_or_else(|x| x.into_inner()).clear();
    }

    /// Releases ports and the pod's network, removes the pod's own volume directories and the
    /// pod object.
    async fn finish(&self) {
        for f in &self.forwarders {
            f.abort();
        }
        if let (Some(network), Some(net)) = (&self.network, &self.net) {
            network.remove_pod(net).await;
        }
        let handle = self.shared.runtime.lock().remove(&self.uid);
        if let Some(h) = handle {
            for pgid in h.pgids.lock().unwrap_or_else(|x| x.into_inner()).values() {
                signal_group(*pgid, libc::SIGKILL);
            }
            let _ = std::fs::remove_dir_all(h.dir.join("volumes"));
            let _ = std::fs::remove_dir_all(h.dir.join("tmp"));
            let mut st = self.shared.lock();
            if let Some(p) = st.get(&pods(), &h.namespace, &h.name)
                && meta::uid(&p) == self.uid
                && meta::is_deleting(&p)
            {
                st.remove(&pods(), &h.namespace, &h.name);
            }
        }
    }

    async fn probe(&self, probe: &Value, container: &Value) -> bool {
        let timeout = Duration::from_secs(probe["timeoutSeconds"].as_u64().unwrap_or(1).max(1));
        let port_of = |p: &Value| -> Option<u16> {
            let cp = match p {
                Value::Number(n) => n.as_i64(),
                // A named port of the container.
                Value::String(s) => s.parse().ok().or_else(|| {
                    container["ports"]
                                .as_array()?
                                .iter()
                                .find(|x| x["name"] == s.as_str())?["containerPort"]
                                .as_i64()
                }),
                _ => None,
            }?;
            self.ports.get(&cp).copied()
        };
        if let Some(h) = probe.get("httpGet") {
            let Some(port) = port_of(&h["port"]) else { return false };
            let path = h["path"].as_str().unwrap_or("/");
            return tokio::time::timeout(timeout, http_get_status(port, path))
                .await
                .ok()
                .flatten()
                .is_some_and(|s| (200..400).contains(&s));
        }
        if let Some(t) = probe.get("tcpSocket") {
            let Some(port) = port_of(&t["port"]) else { return false };
            return tokio::time::timeout(
                timeout,
                tokio::net::TcpStream::connect(("127.0.0.1", port)),
            )
            .await
            .is_ok_and(|r| r.is_ok());
        }
        // exec and grpc probes: the container is alive, which is all a simulated check can tell.
        true
    }

    fn start(
        &self,
        pod: &Value,
        c: &Value,
        mounts: &[(String, PathBuf)],
        env: &[(String, String)],
        r: &mut Running,
    ) -> Result<(), String> {
        r.started_at = meta::now_rfc3339();
        r.last_probe = tokio::time::Instant::now() - Duration::from_secs(3600);
        let image = c["image"].as_str().unwrap_or_default();
        let Some(exe) = self.shared.runtime.image_executable(image) else {
            // Simulated container: "runs" without a process.
            r.child = None;
            if pod.at("/spec/restartPolicy").and_then(Value::as_str) != Some("Always") {
                r.exit = Some((0, "Completed".into(), meta::now_rfc3339()));
            }
            return Ok(());
        };
        let env_map: BTreeMap<String, String> = env.iter().cloned().collect();
        let expand = |s: &str| expand_vars(s, &env_map);
        let mut argv: Vec<String> = Vec::new();
        if let Some(cmd) = c["command"].as_array() {
            // command[0] names the program inside the image; the mapping says where it is here.
            argv.extend(cmd.iter().skip(1).filter_map(Value::as_str).map(expand));
        }
        argv.extend(
            c["args"].as_array().into_iter().flatten().filter_map(Value::as_str).map(expand),
        );
        // The termination-message file is a host file mounted at terminationMessagePath.
        let term = self.termination_file(c);
        let _ = std::fs::create_dir_all(term.parent().unwrap_or(&self.dir));
        std::fs::write(&term, b"").map_err(|e| e.to_string())?;
        let mut mounts = mounts.to_vec();
        mounts.push((
            c["terminationMessagePath"].as_str().unwrap_or("/dev/termination-log").to_string(),
            term,
        ));
        let mounts = &mounts[..];
        // With a network of its own the pod serves on its declared ports.
        let argv: Vec<String> = argv
            .iter()
            .map(|a| rewrite_paths(a, mounts))
            .map(|a| if self.net.is_some() { a } else { self.rewrite_ports(&a) })
            .collect();
        let logs = self.dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
        let name = c["name"].as_str().unwrap_or_default();
        let log_path = logs.join(format!("{name}.log"));
        if log_path.exists() {
            let _ = std::fs::rename(&log_path, logs.join(format!("{name}.previous.log")));
        }
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let tmp = self.dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        let (api_host, api_port) = match &self.net {
            Some(_) => (crate::netpol::NODE_IP.to_string(), crate::netns::API_PORT),
            None => (
                "127.0.0.1".to_string(),
                *self.shared.runtime.api_port.lock().unwrap_or_else(|p| p.into_inner()),
            ),
        };
        let mut cmd = match (&self.network, &self.net) {
            (Some(network), Some(net)) => network.command(net, &exe),
            _ => Command::new(&exe),
        };
        cmd.args(&argv)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()))
            .env("HOME", &tmp)
            .env("TMPDIR", &tmp)
            .env("HOSTNAME", meta::name(pod))
            .env("KUBERNETES_SERVICE_HOST", api_host)
            .env("KUBERNETES_SERVICE_PORT", api_port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, rewrite_paths(v, mounts));
        }
        let workdir = c["workingDir"]
            .as_str()
            .map(|w| PathBuf::from(rewrite_paths(w, mounts)))
            .unwrap_or_else(|| tmp.clone());
        cmd.current_dir(if workdir.is_dir() { workdir } else { tmp });
        // SAFETY: only async-signal-safe calls between fork and exec: a new process group, and
        // death of the server kills the child.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(|| {
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("failed to start {}: {e}", exe.display()))?;
        if let Some(pid) = child.id() {
            self.pgids
                .lock()
                .unwrap_or_else(|x| x.into_inner())
                .insert(name.to_string(), pid as i32);
        }
        r.child = Some(child);
        Ok(())
    }

    fn termination_file(&self, c: &Value) -> PathBuf {
        self.dir.join("termination").join(c["name"].as_str().unwrap_or_default())
    }

    /// What the kubelet reports as `terminated.message`: the termination-message file (at most
    /// 4096 bytes) or, with `FallbackToLogsOnError` after a failure and an empty file, the log's
    /// last 80 lines (at most 2048 bytes).
    fn termination_message(&self, c: &Value, code: i32) -> Option<String> {
        let cap = |b: &[u8], n: usize| {
            String::from_utf8_lossy(&b[b.len().saturating_sub(n)..]).into_owned()
        };
        let file = std::fs::read(self.termination_file(c)).unwrap_or_default();
        if !file.is_empty() {
            return Some(String::from_utf8_lossy(&file[..file.len().min(4096)]).into_owned());
        }
        if code != 0 && c["terminationMessagePolicy"].as_str() == Some("FallbackToLogsOnError") {
            let log = std::fs::read(
                self.dir
                    .join("logs")
                    .join(format!("{}.log", c["name"].as_str().unwrap_or_default())),
            )
            .unwrap_or_default();
            let text = cap(&log, 1 << 16);
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            return (!tail.is_empty()).then(|| cap(tail.as_bytes(), 2048));
        }
        None
    }

    fn rewrite_ports(&self, arg: &str) -> String {
        for (cp, hp) in &self.ports {
            let c = cp.to_string();
            if arg == c {
                return hp.to_string();
            }
            for sep in ['=', ':'] {
                if let Some(prefix) = arg.strip_suffix(&format!("{sep}{c}")) {
                    return format!("{prefix}{sep}{hp}");
                }
            }
        }
        arg.to_string()
    }

    /// Environment of each container: env and envFrom with their sources resolved.
    fn resolve_env_sources(
        &self,
        pod: &Value,
    ) -> Result<HashMap<String, Vec<(String, String)>>, String> {
        let st = self.shared.lock();
        let ns = meta::namespace(pod);
        let cm = |name: &str| st.get(&GroupResource::core("configmaps"), ns, name);
        let secret = |name: &str| st.get(&GroupResource::core("secrets"), ns, name);
        let decode = |v: &Value| -> String {
            v.as_str()
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let mut out = HashMap::new();
        let all: Vec<Value> = ["initContainers", "containers"]
            .iter()
            .flat_map(|k| pod["spec"][*k].as_array().cloned().unwrap_or_default())
            .collect();
        for c in all {
            let mut env: Vec<(String, String)> = Vec::new();
            for from in c["envFrom"].as_array().into_iter().flatten() {
                let prefix = from["prefix"].as_str().unwrap_or_default();
                if let Some(r) = from.get("configMapRef") {
                    let name = r["name"].as_str().unwrap_or_default();
                    match cm(name) {
                        Some(o) => {
                            env.extend(o["data"].as_object().into_iter().flatten().map(|(k, v)| {
                                (format!("{prefix}{k}"), v.as_str().unwrap_or_default().to_string())
                            }))
                        }
                        None if r["optional"] == true => {}
                        None => return Err(format!("configmap \"{name}\" not found")),
                    }
                }
                if let Some(r) = from.get("secretRef") {
                    let name = r["name"].as_str().unwrap_or_default();
                    match secret(name) {
                        Some(o) => env.extend(
                            o["data"]
                                .as_object()
                                .into_iter()
                                .flatten()
                                .map(|(k, v)| (format!("{prefix}{k}"), decode(v))),
                        ),
                        None if r["optional"] == true => {}
                        None => return Err(format!("secret \"{name}\" not found")),
                    }
                }
            }
            for e in c["env"].as_array().into_iter().flatten() {
                let name = e["name"].as_str().unwrap_or_default().to_string();
                let so_far: BTreeMap<String, String> = env.iter().cloned().collect();
                let value = if let Some(v) = e["value"].as_str() {
                    expand_vars(v, &so_far)
                } else if let Some(f) =
                    e.at("/valueFrom/fieldRef/fieldPath").and_then(Value::as_str)
                {
                    field_ref(pod, f)
                } else if let Some(r) = e.at("/valueFrom/configMapKeyRef") {
                    let (n, k) = (
                        r["name"].as_str().unwrap_or_default(),
                        r["key"].as_str().unwrap_or_default(),
                    );
                    match cm(n).and_then(|o| o["data"][k].as_str().map(str::to_string)) {
                        Some(v) => v,
                        None if r["optional"] == true => continue,
                        None => return Err(format!("couldn't find key {k} in ConfigMap {ns}/{n}")),
                    }
                } else if let Some(r) = e.at("/valueFrom/secretKeyRef") {
                    let (n, k) = (
                        r["name"].as_str().unwrap_or_default(),
                        r["key"].as_str().unwrap_or_default(),
                    );
                    match secret(n).map(|o| o["data"][k].clone()).filter(|v| !v.is_null()) {
                        Some(v) => decode(&v),
                        None if r["optional"] == true => continue,
                        None => return Err(format!("couldn't find key {k} in Secret {ns}/{n}")),
                    }
                } else if let Some(r) =
                    e.at("/valueFrom/resourceFieldRef/resource").and_then(Value::as_str)
                {
                    let (kind, res) = r.split_once('.').unwrap_or(("limits", r));
                    c["resources"][kind][res]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| "0".into())
                } else {
                    String::new()
                };
                env.retain(|(k, _)| k != &name);
                env.push((name, value));
            }
            out.insert(c["name"].as_str().unwrap_or_default().to_string(), env);
        }
        Ok(out)
    }

    /// Materializes the pod's volumes as directories; returns (mountPath → host path) per mount
    /// of every container, longest mount path first.
    async fn prepare_volumes(&self, pod: &Value) -> Result<Vec<(String, PathBuf)>, String> {
        let vol_root = self.dir.join("volumes");
        std::fs::create_dir_all(&vol_root).map_err(|e| e.to_string())?;
        let mut dirs: HashMap<String, PathBuf> = HashMap::new();
        let ns = meta::namespace(pod).to_string();
        for v in pod.at("/spec/volumes").and_then(Value::as_array).into_iter().flatten() {
            let name = v["name"].as_str().unwrap_or_default().to_string();
            let own = vol_root.join(&name);
            let dir = if v.get("emptyDir").is_some() {
                std::fs::create_dir_all(&own).map_err(|e| e.to_string())?;
                own
            } else if let Some(src) = v.get("configMap") {
                self.write_keys(&ns, "configmaps", src, &own, false, true)?;
                own
            } else if let Some(src) = v.get("secret") {
                let mut s = src.clone();
                s["name"] = src["secretName"].clone();
                self.write_keys(&ns, "secrets", &s, &own, true, true)?;
                own
            } else if let Some(p) = v.get("projected") {
                std::fs::create_dir_all(&own).map_err(|e| e.to_string())?;
                for source in p["sources"].as_array().into_iter().flatten() {
                    if let Some(src) = source.get("configMap") {
                        self.write_keys(&ns, "configmaps", src, &own, false, false)?;
                    } else if let Some(src) = source.get("secret") {
                        self.write_keys(&ns, "secrets", src, &own, true, false)?;
                    } else if let Some(src) = source.get("downwardAPI") {
                        write_downward(pod, src, &own)?;
                    } else if let Some(src) = source.get("serviceAccountToken") {
                        let sa = pod
                            .at("/spec/serviceAccountName")
                            .and_then(Value::as_str)
                            .unwrap_or("default");
                        let token = self.shared.auth.issue_service_account_token(&ns, sa, "");
                        let path = own.join(src["path"].as_str().unwrap_or("token"));
                        write_file(&path, token.as_bytes(), 0o600)?;
                    }
                }
                own
            } else if let Some(src) = v.get("downwardAPI") {
                std::fs::create_dir_all(&own).map_err(|e| e.to_string())?;
                write_downward(pod, src, &own)?;
                own
            } else if let Some(src) = v.get("persistentVolumeClaim") {
                let claim = src["claimName"].as_str().unwrap_or_default();
                let st = self.shared.lock();
                let pvc = st.get(&GroupResource::core("persistentvolumeclaims"), &ns, claim).ok_or_else(|| {
                    format!(
                        "MountVolume.SetUp failed for volume \"{name}\" : persistentvolumeclaim \"{claim}\" not found"
                    )
                })?;
                if pvc.at("/status/phase").and_then(Value::as_str) != Some("Bound") {
                    return Err(format!(
                        "MountVolume.SetUp failed for volume \"{name}\" : persistentvolumeclaim \"{claim}\" is not bound"
                    ));
                }
                let pv_name =
                    pvc.at("/spec/volumeName").and_then(Value::as_str).unwrap_or_default();
                let pv = st
                    .get(&GroupResource::core("persistentvolumes"), "", pv_name)
                    .ok_or_else(|| format!("persistentvolume \"{pv_name}\" not found"))?;
                let path = pv
                    .at("/spec/hostPath/path")
                    .or_else(|| pv.at("/spec/local/path"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        format!("persistentvolume \"{pv_name}\" has no hostPath or local path")
                    })?;
                let p = PathBuf::from(path);
                std::fs::create_dir_all(&p).map_err(|e| e.to_string())?;
                p
            } else if let Some(src) = v.get("csi") {
                let driver = src["driver"].as_str().unwrap_or_default();
                let d = self
                    .shared
                    .runtime
                    .csi
                    .iter()
                    .find(|d| d.driver == driver)
                    .ok_or_else(|| format!("MountVolume.SetUp failed for volume \"{name}\" : kubernetes.io/csi: driver name {driver} not found in the list of registered CSI drivers"))?;
                let value =
                    src["volumeAttributes"][d.attribute.as_str()].as_str().unwrap_or_default();
                if value.is_empty() || value.contains('/') || value == ".." {
                    return Err(format!(
                        "MountVolume.SetUp failed for volume \"{name}\" : attribute {} must name a directory",
                        d.attribute
                    ));
                }
                let p = d.root.join(value);
                if !p.is_dir() {
                    return Err(format!(
                        "MountVolume.SetUp failed for volume \"{name}\" : {driver}: {} does not exist",
                        p.display()
                    ));
                }
                p
            } else if let Some(src) = v.get("hostPath") {
                PathBuf::from(src["path"].as_str().unwrap_or("/"))
            } else {
                std::fs::create_dir_all(&own).map_err(|e| e.to_string())?;
                own
            };
            dirs.insert(name, dir);
        }
        let mut mounts = Vec::new();
        for list in ["initContainers", "containers"] {
            for c in pod["spec"][list].as_array().into_iter().flatten() {
                for m in c["volumeMounts"].as_array().into_iter().flatten() {
                    let Some(base) = dirs.get(m["name"].as_str().unwrap_or_default()) else {
                        continue;
                    };
                    let host = match m["subPath"].as_str().filter(|s| !s.is_empty()) {
                        Some(sub) => {
                            if sub.split('/').any(|s| s == "..") {
                                return Err(format!("subPath {sub:?} must not contain '..'"));
                            }
                            base.join(sub)
                        }
                        None => base.clone(),
                    };
                    mounts.push((
                        m["mountPath"]
                            .as_str()
                            .unwrap_or_default()
                            .trim_end_matches('/')
                            .to_string(),
                        host,
                    ));
                }
            }
        }
        mounts.sort_by_key(|m| std::cmp::Reverse(m.0.len()));
        mounts.dedup();
        Ok(mounts)
    }

    /// The resourceVersion of each configMap or secret volume's source.
    fn volume_versions(&self, pod: &Value) -> HashMap<String, String> {
        let ns = meta::namespace(pod);
        let st = self.shared.lock();
        let mut out = HashMap::new();
        for v in pod.at("/spec/volumes").and_then(Value::as_array).into_iter().flatten() {
            let (resource, name) = match (v.get("configMap"), v.get("secret")) {
                (Some(c), _) => ("configmaps", c["name"].as_str()),
                (_, Some(s)) => ("secrets", s["secretName"].as_str()),
                _ => continue,
            };
            let rv = st
                .get(&GroupResource::core(resource), ns, name.unwrap_or_default())
                .map(|o| meta::resource_version(&o).to_string())
                .unwrap_or_default();
            out.insert(v["name"].as_str().unwrap_or_default().to_string(), rv);
        }
        out
    }

    /// Rewrites the configMap and secret volumes whose source changed since `seen`.
    fn sync_volumes(&self, pod: &Value, seen: &mut HashMap<String, String>) {
        let now = self.volume_versions(pod);
        if now == *seen {
            return;
        }
        let ns = meta::namespace(pod).to_string();
        for v in pod.at("/spec/volumes").and_then(Value::as_array).into_iter().flatten() {
            let name = v["name"].as_str().unwrap_or_default();
            if now.get(name) == seen.get(name) || now.get(name).is_none_or(|rv| rv.is_empty()) {
                continue;
            }
            let dir = self.dir.join("volumes").join(name);
            let result = match (v.get("configMap"), v.get("secret")) {
                (Some(src), _) => self.write_keys(&ns, "configmaps", src, &dir, false, true),
                (_, Some(src)) => {
                    let mut s = src.clone();
                    s["name"] = src["secretName"].clone();
                    self.write_keys(&ns, "secrets", &s, &dir, true, true)
                }
                _ => Ok(()),
            };
            if let Err(msg) = result {
                self.event("Warning", "FailedMount", &msg);
            }
        }
        *seen = now;
    }

    /// Projects a configMap's or secret's keys into `dir`; keys gone from the source are removed
    /// (`prune`, for a volume of its own with all keys projected), and each file is replaced
    /// atomically.
    fn write_keys(
        &self,
        ns: &str,
        resource: &str,
        src: &Value,
        dir: &Path,
        base64_values: bool,
        prune: bool,
    ) -> Result<(), String> {
        let name = src["name"].as_str().unwrap_or_default();
        let obj = self.shared.lock().get(&GroupResource::core(resource), ns, name);
        let kind = if resource == "secrets" { "secret" } else { "configmap" };
        let Some(obj) = obj else {
            if src["optional"] == true {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
                return Ok(());
            }
            return Err(format!(
                "MountVolume.SetUp failed for volume : {kind} \"{name}\" not found"
            ));
        };
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let mode = src["defaultMode"].as_u64().unwrap_or(0o644) as u32;
        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        for field in ["data", "binaryData"] {
            for (k, v) in obj[field].as_object().into_iter().flatten() {
                let bytes = if base64_values || field == "binaryData" {
                    base64::engine::general_purpose::STANDARD
                        .decode(v.as_str().unwrap_or_default())
                        .map_err(|e| e.to_string())?
                } else {
                    v.as_str().unwrap_or_default().as_bytes().to_vec()
                };
                entries.push((k.clone(), bytes));
            }
        }
        match src["items"].as_array() {
            Some(items) if !items.is_empty() => {
                for item in items {
                    let key = item["key"].as_str().unwrap_or_default();
                    let path = item["path"].as_str().unwrap_or(key);
                    if path.split('/').any(|s| s == "..") {
                        return Err(format!("item path {path:?} must not contain '..'"));
                    }
                    let Some((_, bytes)) = entries.iter().find(|(k, _)| k == key) else {
                        return Err(format!(
                            "MountVolume.SetUp failed: configmap references non-existent config key: {key}"
                        ));
                    };
                    write_file(
                        &dir.join(path),
                        bytes,
                        item["mode"].as_u64().map(|m| m as u32).unwrap_or(mode),
                    )?;
                }
            }
            _ => {
                for (k, bytes) in &entries {
                    write_file(&dir.join(k), bytes, mode)?;
                }
                for old in std::fs::read_dir(dir).into_iter().flatten().filter(|_| prune).flatten()
                {
                    let file = old.file_name().to_string_lossy().into_owned();
                    if !entries.iter().any(|(k, _)| *k == file) {
                        let _ = std::fs::remove_file(old.path());
                    }
                }
            }
        }
        Ok(())
    }
}

impl Running {
    fn new(spec: &Value) -> Running {
        Running {
            name: spec["name"].as_str().unwrap_or_default().to_string(),
            child: None,
            started_at: String::new(),
            restarts: 0,
            ready: false,
            exit: None,
            spec: spec.clone(),
            liveness_failures: 0,
            last_probe: tokio::time::Instant::now(),
            backoff_until: None,
            message: None,
            last_terminated: None,
        }
    }

    /// The last exit as a `terminated` state.
    fn terminated(&self) -> Option<Value> {
        let (code, reason, at) = self.exit.as_ref()?;
        let mut t = json!({"exitCode": code, "reason": reason, "startedAt": self.started_at, "finishedAt": at, "containerID": format!("devcluster://{}", self.name)});
        if let Some(m) = &self.message {
            t["message"] = m.clone().into();
        }
        Some(t)
    }

    fn status(&self) -> Value {
        let (state, last) = match (self.terminated(), self.backoff_until) {
            (Some(t), Some(_)) => (
                json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off restarting failed container={}", self.name)}}),
                Some(t),
            ),
            (Some(t), None) => (json!({"terminated": t}), self.last_terminated.clone()),
            (None, _) => {
                (json!({"running": {"startedAt": self.started_at}}), self.last_terminated.clone())
            }
        };
        let mut status = json!({
            "name": self.name,
            "image": self.spec["image"],
            "imageID": "",
            "containerID": format!("devcluster://{}", self.child.as_ref().and_then(Child::id).map(|p| p.to_string()).unwrap_or_else(|| "simulated".into())),
            "ready": self.ready,
            "restartCount": self.restarts,
            "started": self.exit.is_none(),
            "state": state,
        });
        if let Some(t) = last {
            status["lastState"] = json!({"terminated": t});
        }
        status
    }
}

/// The kubelet's back-off before restarting a failed container: 10 s, doubling per restart, at
/// most 5 minutes.
fn restart_backoff(restarts: i64) -> Duration {
    Duration::from_secs((10u64 << restarts.clamp(0, 5) as u64).min(300))
}

fn started_elapsed(started_at: &str) -> Duration {
    meta::parse_time(started_at)
        .map(|t| {
            Duration::from_secs((jiff::Timestamp::now().as_second() - t.as_second()).max(0) as u64)
        })
        .unwrap_or_default()
}

fn conditions(pod: &Value, ready: bool, initialized: bool, started: bool) -> Value {
    let now = meta::now_rfc3339();
    let old: Vec<Value> =
        pod.at("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let cond = |ty: &str, ok: bool| {
        let status = if ok { "True" } else { "False" };
        let since = old
            .iter()
            .find(|c| c["type"] == ty && c["status"] == status)
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| now.clone().into());
        json!({"type": ty, "status": status, "lastProbeTime": null, "lastTransitionTime": since})
    };
    json!([
        cond("PodReadyToStartContainers", started || initialized),
        cond("Initialized", initialized),
        cond("Ready", ready),
        cond("ContainersReady", ready),
        cond("PodScheduled", true),
    ])
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    // Replaced by rename, so a reader sees the old content or the new, never a mix.
    let tmp = path.with_file_name(format!(
        ".{}.devcluster-tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode & 0o777))
        .map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

fn field_ref(pod: &Value, path: &str) -> String {
    if let Some(key) = path.strip_prefix("metadata.labels['").and_then(|k| k.strip_suffix("']")) {
        return meta::label(pod, key).unwrap_or_default().to_string();
    }
    if let Some(key) =
        path.strip_prefix("metadata.annotations['").and_then(|k| k.strip_suffix("']"))
    {
        return meta::annotation(pod, key).unwrap_or_default().to_string();
    }
    match path {
        "status.podIP" | "status.podIPs" => {
            pod.at("/status/podIP").and_then(Value::as_str).unwrap_or("127.0.0.1").into()
        }
        "status.hostIP" | "status.hostIPs" => "127.0.0.1".into(),
        "metadata.labels" => meta::labels(pod)
            .map(|l| l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\n"))
            .unwrap_or_default(),
        other => {
            let pointer = format!("/{}", other.replace('.', "/"));
            match pod.at(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(v) if !v.is_null() => v.to_string(),
                _ => String::new(),
            }
        }
    }
}

fn write_downward(pod: &Value, src: &Value, dir: &Path) -> Result<(), String> {
    for item in src["items"].as_array().into_iter().flatten() {
        let path = item["path"].as_str().unwrap_or_default();
        if path.split('/').any(|s| s == "..") {
            return Err(format!("downwardAPI path {path:?} must not contain '..'"));
        }
        let value = item
            .at("/fieldRef/fieldPath")
            .and_then(Value::as_str)
            .map(|f| field_ref(pod, f))
            .unwrap_or_default();
        write_file(&dir.join(path), value.as_bytes(), 0o644)?;
    }
    Ok(())
}

/// Kubernetes' `$(VAR)` expansion; `$$` escapes, unknown references stay as written.
pub fn expand_vars(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            if bytes[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if bytes[i + 1] == b'('
                && let Some(end) = s[i + 2..].find(')')
            {
                let name = &s[i + 2..i + 2 + end];
                match env.get(name) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&s[i..i + 3 + end]),
                }
                i += 3 + end;
                continue;
            }
        }
        let ch = s[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Rewrites a path under a mount (or `--flag=path`) to the directory backing it.
pub fn rewrite_paths(arg: &str, mounts: &[(String, PathBuf)]) -> String {
    let rewrite_one = |p: &str| -> Option<String> {
        mounts.iter().find_map(|(mp, host)| {
            if mp.is_empty() {
                return None;
            }
            if p == mp {
                Some(host.display().to_string())
            } else {
                p.strip_prefix(&format!("{mp}/")).map(|rest| host.join(rest).display().to_string())
            }
        })
    };
    if let Some(r) = rewrite_one(arg) {
        return r;
    }
    if let Some((flag, value)) = arg.split_once('=')
        && let Some(r) = rewrite_one(value)
    {
        return format!("{flag}={r}");
    }
    arg.to_string()
}

async fn http_get_status(port: u16, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: kube-probe/1.33\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).await.ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

/// `GET pods/<name>/log`.
pub async fn logs(
    shared: &Arc<Shared>,
    ns: &str,
    name: &str,
    query: &BTreeMap<String, String>,
) -> Result<Reply, ApiError> {
    let pod = shared.lock().get(&pods(), ns, name).ok_or_else(|| {
        ApiError::not_found(crate::error::Qualified { group: "", resource: "pods" }, name)
    })?;
    let names = |list: &str| -> Vec<String> {
        pod.at(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    let containers = names("/spec/containers");
    let inits = names("/spec/initContainers");
    let container = match query.get("container") {
        Some(c) => c.clone(),
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            let init = if inits.is_empty() {
                String::new()
            } else {
                format!(" or one of the init containers: [{}]", inits.join(" "))
            };
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]{init}",
                containers.join(" ")
            )));
        }
    };
    if !containers.contains(&container) && !inits.contains(&container) {
        return Err(ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    let dir = shared
        .runtime
        .pod_dir(meta::uid(&pod))
        .unwrap_or_else(|| shared.runtime.state_dir.join("pods").join(meta::uid(&pod)));
    let file = if query.get("previous").is_some_and(|v| v == "true") {
        dir.join("logs").join(format!("{container}.previous.log"))
    } else {
        dir.join("logs").join(format!("{container}.log"))
    };
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let tail = query.get("tailLines").and_then(|t| t.parse::<usize>().ok());
    let shown = match tail {
        Some(n) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            lines[start..].iter().map(|l| format!("{l}\n")).collect::<String>()
        }
        None => text.clone(),
    };
    if query.get("follow").is_some_and(|v| v == "true") {
        let uid = meta::uid(&pod).to_string();
        let shared_c = shared.clone();
        let start_len = text.len();
        let body = async_stream_body(move |tx| async move {
            if tx.send(shown.into()).await.is_err() {
                return;
            }
            let mut offset = start_len;
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Ok(bytes) = std::fs::read(&file)
                    && bytes.len() > offset
                {
                    if tx.send(bytes[offset..].to_vec().into()).await.is_err() {
                        return;
                    }
                    offset = bytes.len();
                }
                if shared_c.runtime.pod_dir(&uid).is_none() || tx.is_closed() {
                    return;
                }
            }
        });
        return Ok(Reply::stream_text(body));
    }
    Ok(Reply::plain(shown))
}
