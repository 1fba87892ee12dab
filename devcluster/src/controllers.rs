//! The built-in controllers a cluster needs for operators to be tested for real: owner-reference
//! garbage collection (background, foreground, orphan), namespace deletion, endpoints, jobs,
//! deployments and replica sets, persistent-volume provisioning and reclaim, quota status, and
//! default service accounts. They react to the store's events and write through `api`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::admission;
use crate::api::{self, DeleteOpts};
use crate::meta::{self, At};
use crate::resources::GroupResource;
use crate::selectors::LabelSelector;
use crate::state::{Event, EventType, ObjectRef, State};

fn gr(group: &str, resource: &str) -> GroupResource {
    GroupResource::new(group, resource)
}

fn owner_ref(owner: &Value, controller: bool) -> Value {
    json!({
        "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta::name(owner), "uid": meta::uid(owner),
        "controller": controller, "blockOwnerDeletion": true,
    })
}

fn controlled_by(obj: &Value, owner_uid: &str) -> bool {
    meta::owner_references(obj).iter().any(|r| r["uid"] == owner_uid)
}

fn pod_ready(pod: &Value) -> bool {
    pod.at("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn pod_phase(pod: &Value) -> &str {
    pod.at("/status/phase").and_then(Value::as_str).unwrap_or("Pending")
}

/// What `reconcile_endpoints` reads of a pod (its spec's ports never change).
fn endpoint_view(pod: &Value) -> impl PartialEq + '_ {
    (
        meta::labels(pod),
        pod.at("/status/podIP"),
        pod.at("/spec/nodeName"),
        matches!(pod_phase(pod), "Succeeded" | "Failed"),
        pod_ready(pod),
        meta::is_deleting(pod),
    )
}

fn set_condition(conds: &mut Vec<Value>, ty: &str, status: &str, reason: &str, message: &str) {
    if let Some(c) = conds.iter_mut().find(|c| c["type"] == ty) {
        if c["status"] != status {
            c["lastTransitionTime"] = meta::now_rfc3339().into();
        }
        c["status"] = status.into();
        c["reason"] = reason.into();
        c["message"] = message.into();
    } else {
        conds.push(json!({"type": ty, "status": status, "reason": reason, "message": message, "lastProbeTime": null, "lastTransitionTime": meta::now_rfc3339()}));
    }
}

/// State the controllers keep between events.
#[derive(Default)]
pub struct Controllers {
    /// Job uid → earliest time the next pod may be created (failure backoff).
    job_backoff: HashMap<String, tokio::time::Instant>,
    volumes_dir: PathBuf,
}

impl Controllers {
    pub fn new(volumes_dir: PathBuf) -> Controllers {
        Controllers { job_backoff: HashMap::new(), volumes_dir }
    }

    /// Reacts to a batch of store events.
    pub fn handle(&mut self, st: &mut State, events: &[Arc<Event>]) {
        let mut namespaces_to_check: BTreeSet<String> = BTreeSet::new();
        let mut services: BTreeSet<(String, String)> = BTreeSet::new();
        let mut jobs: BTreeSet<(String, String)> = BTreeSet::new();
        let mut deployments: BTreeSet<(String, String)> = BTreeSet::new();
        let mut replicasets: BTreeSet<(String, String)> = BTreeSet::new();
        let mut quota_namespaces: BTreeSet<String> = BTreeSet::new();
        let mut claims: BTreeSet<(String, String)> = BTreeSet::new();
        for e in events {
            let obj = &e.object;
            let ns = meta::namespace(obj).to_string();
            let name = meta::name(obj).to_string();
            self.garbage_collect(st, e);
            match (e.gr.group.as_str(), e.gr.resource.as_str()) {
                ("", "namespaces") => {
                    if e.kind == EventType::Added {
                        ensure_default_service_account(st, &name);
                    }
                    if meta::is_deleting(obj) && e.kind != EventType::Deleted {
                        namespaces_to_check.insert(name.clone());
                    }
                }
                ("", "services") => {
                    services.insert((ns.clone(), name.clone()));
                }
                ("", "pods") => {
                    let finished = matches!(pod_phase(obj), "Succeeded" | "Failed")
                        && pod_phase(obj) != pod_phase(e.old.as_deref().unwrap_or(obj));
                    // Only services selecting the pod (before or after the change) are
                    // affected, and only by a change of what endpoints show of it.
                    let shown_changed = e.kind != EventType::Modified
                        || e.old.as_deref().is_none_or(|o| endpoint_view(o) != endpoint_view(obj));
                    let candidates = if shown_changed {
                        st.list(&GroupResource::core("services"), Some(&ns))
                    } else {
                        Vec::new()
                    };
                    for svc in candidates {
                        let Some(sel) = svc
                            .at("/spec/selector")
                            .and_then(Value::as_object)
                            .filter(|s| !s.is_empty())
                        else {
                            continue;
                        };
                        if LabelSelector::map_matches(sel, obj)
                            || e.old.as_deref().is_some_and(|o| LabelSelector::map_matches(sel, o))
                        {
                            services.insert((ns.clone(), meta::name(&svc).to_string()));
                        }
                    }
                    for r in meta::owner_references(obj) {
                        let owner = r["name"].as_str().unwrap_or_default().to_string();
                        match r["kind"].as_str() {
                            Some("Job") => {
                                jobs.insert((ns.clone(), owner));
                            }
                            Some("ReplicaSet") => {
                                replicasets.insert((ns.clone(), owner));
                            }
                            _ => {}
                        }
                    }
                    for v in obj.at("/spec/volumes").and_then(Value::as_array).into_iter().flatten()
                    {
                        if let Some(c) =
                            v.at("/persistentVolumeClaim/claimName").and_then(Value::as_str)
                        {
                            claims.insert((ns.clone(), c.to_string()));
                        }
                    }
                    // Quota usage moves when a pod appears, goes, or finishes (finished pods
                    // hold no quota); a status update of a running pod changes nothing.
                    if e.kind != EventType::Modified || finished {
                        quota_namespaces.insert(ns.clone());
                    }
                }
                ("", "persistentvolumeclaims") => {
                    claims.insert((ns.clone(), name.clone()));
                    quota_namespaces.insert(ns.clone());
                }
                ("", "persistentvolumes") => self.reconcile_volume(st, &name),
                ("", "resourcequotas") => {
                    quota_namespaces.insert(ns.clone());
                }
                ("batch", "jobs") => {
                    jobs.insert((ns.clone(), name.clone()));
                }
                ("apps", "deployments") => {
                    deployments.insert((ns.clone(), name.clone()));
                }
                ("apps", "replicasets") => {
                    replicasets.insert((ns.clone(), name.clone()));
                    for r in meta::owner_references(obj) {
                        if r["kind"] == "Deployment" {
                            deployments.insert((
                                ns.clone(),
                                r["name"].as_str().unwrap_or_default().to_string(),
                            ));
                        }
                    }
                }
                // Events and endpoints are never counted by quota here; other objects count
                // when they appear or go.
                ("", "events")
                | ("events.k8s.io", "events")
                | ("", "endpoints")
                | ("discovery.k8s.io", "endpointslices")
                | ("coordination.k8s.io", "leases") => {}
                _ => {
                    if !ns.is_empty() && e.kind != EventType::Modified {
                        quota_namespaces.insert(ns.clone());
                    }
                }
            }
            if e.kind == EventType::Deleted
                && !ns.is_empty()
                && st
                    .get(&GroupResource::core("namespaces"), "", &ns)
                    .is_some_and(|n| meta::is_deleting(&n))
            {
                namespaces_to_check.insert(ns.clone());
            }
        }
        for (ns, name) in claims {
            self.reconcile_claim(st, &ns, &name);
        }
        for (ns, name) in services {
            reconcile_endpoints(st, &ns, &name);
        }
        for (ns, name) in jobs {
            self.reconcile_job(st, &ns, &name);
        }
        for (ns, name) in deployments {
            reconcile_deployment(st, &ns, &name);
        }
        for (ns, name) in replicasets {
            reconcile_replicaset(st, &ns, &name);
        }
        for ns in quota_namespaces {
            reconcile_quota_status(st, &ns);
        }
        for ns in namespaces_to_check {
            finalize_namespace(st, &ns);
        }
    }

    /// Time-driven work: job backoff expiry, finished-job TTLs, pending pods.
    pub fn tick(&mut self, st: &mut State) {
        let now = tokio::time::Instant::now();
        let due: Vec<String> =
            self.job_backoff.iter().filter(|(_, t)| **t <= now).map(|(k, _)| k.clone()).collect();
        for uid in due {
            self.job_backoff.remove(&uid);
            if let Some((r, _)) = st.get_by_uid(&uid) {
                self.reconcile_job(st, &r.namespace, &r.name);
            }
        }
        for job in st.list(&gr("batch", "jobs"), None) {
            let Some(ttl) = job.at("/spec/ttlSecondsAfterFinished").and_then(Value::as_i64) else {
                continue;
            };
            let Some(done) = job
                .at("/status/completionTime")
                .or_else(|| {
                    job.at("/status/conditions")
                        .and_then(Value::as_array)
                        .and_then(|cs| {
                            cs.iter().find(|c| c["type"] == "Failed" && c["status"] == "True")
                        })
                        .and_then(|c| c.get("lastTransitionTime"))
                })
                .and_then(Value::as_str)
                .and_then(meta::parse_time)
            else {
                continue;
            };
            if jiff::Timestamp::now().as_second() >= done.as_second() + ttl
                && !meta::is_deleting(&job)
            {
                let opts =
                    DeleteOpts { propagation: Some("Background".into()), ..Default::default() };
                api::system_delete(
                    st,
                    &gr("batch", "jobs"),
                    meta::namespace(&job),
                    meta::name(&job),
                    &opts,
                );
            }
        }
    }

    fn garbage_collect(&mut self, st: &mut State, e: &Event) {
        let obj = &e.object;
        match e.kind {
            EventType::Deleted => {
                let uid = meta::uid(obj).to_string();
                for dep in st.dependents_of(&uid) {
                    collect_dependent(st, &dep);
                }
                // A foreground-deleting owner may be waiting for this dependent.
                for r in meta::owner_references(obj) {
                    if let Some(owner_uid) = r["uid"].as_str()
                        && let Some((or, owner)) = st.get_by_uid(owner_uid)
                        && meta::finalizers(&owner).iter().any(|f| f == "foregroundDeletion")
                    {
                        foreground(st, &or, &owner);
                    }
                }
            }
            EventType::Added | EventType::Modified => {
                if meta::is_deleting(obj) {
                    let finalizers = meta::finalizers(obj);
                    let r = ObjectRef {
                        gr: e.gr.clone(),
                        namespace: meta::namespace(obj).into(),
                        name: meta::name(obj).into(),
                    };
                    if finalizers.iter().any(|f| f == "orphan") {
                        orphan(st, &r, obj);
                    } else if finalizers.iter().any(|f| f == "foregroundDeletion") {
                        foreground(st, &r, obj);
                    }
                }
                let refs_changed = e
                    .old
                    .as_deref()
                    .is_none_or(|old| meta::owner_references(old) != meta::owner_references(obj));
                if refs_changed && !meta::owner_references(obj).is_empty() {
                    let r = ObjectRef {
                        gr: e.gr.clone(),
                        namespace: meta::namespace(obj).into(),
                        name: meta::name(obj).into(),
                    };
                    collect_dependent(st, &r);
                }
            }
        }
    }

    fn reconcile_job(&mut self, st: &mut State, ns: &str, name: &str) {
        let jobs = gr("batch", "jobs");
        let Some(job) = st.get(&jobs, ns, name) else { return };
        if meta::is_deleting(&job) {
            return;
        }
        let uid = meta::uid(&job).to_string();
        let spec = &job["spec"];
        let completions = spec["completions"].as_i64().unwrap_or(1);
        let parallelism = spec["parallelism"].as_i64().unwrap_or(1);
        let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);
        let pods: Vec<Arc<Value>> = st
            .list(&GroupResource::core("pods"), Some(ns))
            .into_iter()
            .filter(|p| controlled_by(p, &uid))
            .collect();
        let active: Vec<&Arc<Value>> = pods
            .iter()
            .filter(|p| !matches!(pod_phase(p), "Succeeded" | "Failed") && !meta::is_deleting(p))
            .collect();
        let succeeded = (pods.iter().filter(|p| pod_phase(p) == "Succeeded").count() as i64)
            .max(job.at("/status/succeeded").and_then(Value::as_i64).unwrap_or(0));
        let failed = (pods.iter().filter(|p| pod_phase(p) == "Failed").count() as i64)
            .max(job.at("/status/failed").and_then(Value::as_i64).unwrap_or(0));
        let ready = active.iter().filter(|p| pod_ready(p)).count() as i64;
        let mut status = job.get("status").cloned().unwrap_or_else(|| json!({}));
        let mut conds: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
        let finished = conds
            .iter()
            .any(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True");
        let now = meta::now_rfc3339();
        if status.get("startTime").is_none() && spec["suspend"] != true {
            status["startTime"] = now.clone().into();
        }
        let deadline_exceeded = spec["activeDeadlineSeconds"].as_i64().is_some_and(|d| {
            status["startTime"]
                .as_str()
                .and_then(meta::parse_time)
                .is_some_and(|t| jiff::Timestamp::now().as_second() - t.as_second() >= d)
        });
        let mut kill_active = false;
        if !finished {
            if succeeded >= completions {
                set_condition(
                    &mut conds,
                    "SuccessCriteriaMet",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                );
                set_condition(
                    &mut conds,
                    "Complete",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                );
                status["completionTime"] = now.clone().into();
                kill_active = true;
                api::record_event(
                    st,
                    &job,
                    "Normal",
                    "Completed",
                    "Job completed",
                    "job-controller",
                );
            } else if failed > backoff_limit {
                set_condition(
                    &mut conds,
                    "FailureTarget",
                    "True",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                );
                set_condition(
                    &mut conds,
                    "Failed",
                    "True",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                );
                kill_active = true;
                api::record_event(
                    st,
                    &job,
                    "Warning",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                    "job-controller",
                );
            } else if deadline_exceeded {
                set_condition(
                    &mut conds,
                    "FailureTarget",
                    "True",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                );
                set_condition(
                    &mut conds,
                    "Failed",
                    "True",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                );
                kill_active = true;
                api::record_event(
                    st,
                    &job,
                    "Warning",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                    "job-controller",
                );
            } else if spec["suspend"] != true {
                let wanted = parallelism.min(completions - succeeded).max(0);
                let backoff_ok =
                    self.job_backoff.get(&uid).is_none_or(|t| *t <= tokio::time::Instant::now());
                if (active.len() as i64) < wanted && backoff_ok {
                    for _ in active.len() as i64..wanted {
                        create_job_pod(st, &job);
                    }
                } else if !backoff_ok {
                    // Woken by tick() when the backoff ends.
                }
            }
        }
        if kill_active {
            for p in &active {
                api::system_delete(
                    st,
                    &GroupResource::core("pods"),
                    ns,
                    meta::name(p),
                    &DeleteOpts::default(),
                );
            }
        }
        // Back off after each failure: 10s, 20s, 40s … capped at 6 minutes (kube's job backoff).
        let prev_failed = job.at("/status/failed").and_then(Value::as_i64).unwrap_or(0);
        if failed > prev_failed && failed <= backoff_limit {
            let secs = (10u64 << (failed - 1).min(6) as u64).min(360);
            self.job_backoff
                .insert(uid.clone(), tokio::time::Instant::now() + Duration::from_secs(secs));
        }
        status["active"] = (if kill_active { 0 } else { active.len() as i64 }).into();
        status["succeeded"] = succeeded.into();
        status["failed"] = failed.into();
        status["ready"] = ready.into();
        status["terminating"] = 0.into();
        status["uncountedTerminatedPods"] = json!({});
        if conds.is_empty() {
            status.as_object_mut().map(|m| m.remove("conditions"));
        } else {
            status["conditions"] = Value::Array(conds);
        }
        for k in ["succeeded", "failed"] {
            if status[k] == 0 {
                status.as_object_mut().map(|m| m.remove(k));
            }
        }
        if status != job["status"] {
            let mut j = (*job).clone();
            j["status"] = status;
            api::system_write(st, &jobs, j, true, "job-controller");
        }
    }

    fn reconcile_claim(&mut self, st: &mut State, ns: &str, name: &str) {
        let claims = GroupResource::core("persistentvolumeclaims");
        let pvs = GroupResource::core("persistentvolumes");
        let Some(pvc) = st.get(&claims, ns, name) else {
            // Gone: release the volume it held.
            for pv in st.list(&pvs, None) {
                if pv.at("/spec/claimRef/namespace").and_then(Value::as_str) == Some(ns)
                    && pv.at("/spec/claimRef/name").and_then(Value::as_str) == Some(name)
                    && st.get(&claims, ns, name).is_none()
                    && pv.at("/status/phase").and_then(Value::as_str) == Some("Bound")
                {
                    let mut p = (*pv).clone();
                    p["status"] = json!({"phase": "Released", "lastPhaseTransitionTime": meta::now_rfc3339()});
                    api::system_write(st, &pvs, p, true, "persistentvolume-binder");
                }
            }
            return;
        };
        if meta::is_deleting(&pvc) {
            // pvc-protection: released once no running pod uses the claim.
            let in_use = st.list(&GroupResource::core("pods"), Some(ns)).iter().any(|p| {
                !matches!(pod_phase(p), "Succeeded" | "Failed")
                    && p.at("/spec/volumes").and_then(Value::as_array).into_iter().flatten().any(
                        |v| {
                            v.at("/persistentVolumeClaim/claimName").and_then(Value::as_str)
                                == Some(name)
                        },
                    )
            });
            if !in_use {
                let mut c = (*pvc).clone();
                let fs: Vec<String> = meta::finalizers(&c)
                    .into_iter()
                    .filter(|f| f != "kubernetes.io/pvc-protection")
                    .collect();
                if fs.len() != meta::finalizers(&c).len() {
                    meta::set_finalizers(&mut c, &fs);
                    api::system_write(st, &claims, c, false, "pvc-protection-controller");
                }
            }
            return;
        }
        if !meta::finalizers(&pvc).iter().any(|f| f == "kubernetes.io/pvc-protection") {
            let mut c = (*pvc).clone();
            let mut fs = meta::finalizers(&c);
            fs.push("kubernetes.io/pvc-protection".into());
            meta::set_finalizers(&mut c, &fs);
            api::system_write(st, &claims, c, false, "pvc-protection-controller");
        }
        let Some(pvc) = st.get(&claims, ns, name) else { return };
        if pvc.at("/status/phase").and_then(Value::as_str) == Some("Bound") {
            return;
        }
        let classes = gr("storage.k8s.io", "storageclasses");
        let class_name =
            pvc.at("/spec/storageClassName").and_then(Value::as_str).map(str::to_string).or_else(
                || {
                    st.list(&classes, None)
                        .iter()
                        .find(|c| {
                            meta::annotation(c, "storageclass.kubernetes.io/is-default-class")
                                == Some("true")
                        })
                        .map(|c| meta::name(c).to_string())
                },
            );
        let Some(class_name) = class_name else {
            api::record_event(
                st,
                &pvc,
                "Normal",
                "FailedBinding",
                "no persistent volumes available for this claim and no storage class is set",
                "persistentvolume-controller",
            );
            return;
        };
        let Some(class) = st.get(&classes, "", &class_name) else {
            api::record_event(
                st,
                &pvc,
                "Warning",
                "ProvisioningFailed",
                &format!("storageclass.storage.k8s.io \"{class_name}\" not found"),
                "persistentvolume-controller",
            );
            return;
        };
        let request =
            pvc.at("/spec/resources/requests/storage").cloned().unwrap_or_else(|| json!("1Gi"));
        let pv_name = pvc
            .at("/spec/volumeName")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("pvc-{}", meta::uid(&pvc)));
        let pv = match st.get(&pvs, "", &pv_name) {
            Some(pv) => pv,
            None => {
                let dir = self.volumes_dir.join(&pv_name);
                if let Err(e) = std::fs::create_dir_all(&dir) {
                    api::record_event(
                        st,
                        &pvc,
                        "Warning",
                        "ProvisioningFailed",
                        &format!("creating {}: {e}", dir.display()),
                        "persistentvolume-controller",
                    );
                    return;
                }
                let new = json!({
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": pv_name, "annotations": {"pv.kubernetes.io/provisioned-by": class["provisioner"]}, "finalizers": ["kubernetes.io/pv-protection"]},
                    "spec": {
                        "capacity": {"storage": request},
                        "accessModes": pvc["spec"]["accessModes"],
                        "persistentVolumeReclaimPolicy": class["reclaimPolicy"].as_str().unwrap_or("Delete"),
                        "storageClassName": class_name,
                        "volumeMode": "Filesystem",
                        "hostPath": {"path": dir.display().to_string(), "type": "DirectoryOrCreate"},
                        "claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": ns, "name": name, "uid": meta::uid(&pvc)},
                    },
                });
                let Some(pv) =
                    api::system_write(st, &pvs, new, false, "persistentvolume-controller")
                else {
                    return;
                };
                api::record_event(
                    st,
                    &pvc,
                    "Normal",
                    "ProvisioningSucceeded",
                    &format!("Successfully provisioned volume {pv_name}"),
                    "persistentvolume-controller",
                );
                pv
            }
        };
        let mut p = (*pv).clone();
        p["status"] = json!({"phase": "Bound", "lastPhaseTransitionTime": meta::now_rfc3339()});
        api::system_write(st, &pvs, p, true, "persistentvolume-controller");
        let mut c = (*pvc).clone();
        c["spec"]["volumeName"] = pv_name.clone().into();
        meta::set_annotation(&mut c, "pv.kubernetes.io/bind-completed", "yes");
        meta::set_annotation(&mut c, "pv.kubernetes.io/bound-by-controller", "yes");
        meta::set_annotation(
            &mut c,
            "volume.kubernetes.io/storage-provisioner",
            class["provisioner"].as_str().unwrap_or_default(),
        );
        if let Some(c2) = api::system_write(st, &claims, c, false, "persistentvolume-controller") {
            let mut c3 = (*c2).clone();
            c3["status"] = json!({"phase": "Bound", "accessModes": pvc["spec"]["accessModes"], "capacity": {"storage": request}});
            api::system_write(st, &claims, c3, true, "persistentvolume-controller");
        }
    }

    /// Released volumes are reclaimed by policy: `Delete` removes the directory and the volume.
    fn reconcile_volume(&mut self, st: &mut State, name: &str) {
        let pvs = GroupResource::core("persistentvolumes");
        let Some(pv) = st.get(&pvs, "", name) else { return };
        let phase = pv.at("/status/phase").and_then(Value::as_str).unwrap_or_default();
        if meta::is_deleting(&pv) {
            if phase != "Bound" {
                let mut p = (*pv).clone();
                let fs: Vec<String> = meta::finalizers(&p)
                    .into_iter()
                    .filter(|f| f != "kubernetes.io/pv-protection")
                    .collect();
                meta::set_finalizers(&mut p, &fs);
                api::system_write(st, &pvs, p, false, "pv-protection-controller");
            }
            return;
        }
        if phase == "Released"
            && pv.at("/spec/persistentVolumeReclaimPolicy").and_then(Value::as_str)
                == Some("Delete")
        {
            if let Some(path) = pv
                .at("/spec/hostPath/path")
                .or_else(|| pv.at("/spec/local/path"))
                .and_then(Value::as_str)
            {
                let p = PathBuf::from(path);
                // Only directories this server provisioned are ever removed.
                if p.starts_with(&self.volumes_dir)
                    && let Err(e) = std::fs::remove_dir_all(&p)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    api::record_event(
                        st,
                        &pv,
                        "Warning",
                        "VolumeFailedDelete",
                        &format!("removing {}: {e}", p.display()),
                        "persistentvolume-controller",
                    );
                    return;
                }
            }
            api::system_delete(st, &pvs, "", name, &DeleteOpts::default());
        }
    }
}

/// Background garbage collection of one dependent: deleted when none of its owners exists,
/// dangling references removed when some still do.
fn collect_dependent(st: &mut State, dep: &ObjectRef) {
    let Some(obj) = st.get(&dep.gr, &dep.namespace, &dep.name) else { return };
    let refs = meta::owner_references(&obj);
    if refs.is_empty() {
        return;
    }
    let alive: Vec<Value> = refs
        .iter()
        .filter(|r| r["uid"].as_str().and_then(|u| st.get_by_uid(u)).is_some())
        .map(|r| (*r).clone())
        .collect();
    if alive.is_empty() {
        if !meta::is_deleting(&obj) {
            let opts = DeleteOpts { propagation: Some("Background".into()), ..Default::default() };
            api::system_delete(st, &dep.gr, &dep.namespace, &dep.name, &opts);
        }
    } else if alive.len() != refs.len() {
        let mut o = (*obj).clone();
        meta::set_meta(&mut o, "ownerReferences", Some(Value::Array(alive)));
        api::system_write(st, &dep.gr, o, false, "garbage-collector");
    }
}

fn orphan(st: &mut State, r: &ObjectRef, owner: &Value) {
    let uid = meta::uid(owner).to_string();
    for dep in st.dependents_of(&uid) {
        if let Some(obj) = st.get(&dep.gr, &dep.namespace, &dep.name) {
            let mut o = (*obj).clone();
            let keep: Vec<Value> = meta::owner_references(&obj)
                .into_iter()
                .filter(|x| x["uid"] != uid.as_str())
                .cloned()
                .collect();
            meta::set_meta(
                &mut o,
                "ownerReferences",
                if keep.is_empty() { None } else { Some(Value::Array(keep)) },
            );
            api::system_write(st, &dep.gr, o, false, "garbage-collector");
        }
    }
    remove_finalizer(st, r, "orphan");
}

fn foreground(st: &mut State, r: &ObjectRef, owner: &Value) {
    let uid = meta::uid(owner).to_string();
    let deps = st.dependents_of(&uid);
    let mut blocking = 0;
    for dep in &deps {
        let Some(obj) = st.get(&dep.gr, &dep.namespace, &dep.name) else { continue };
        blocking += 1;
        if !meta::is_deleting(&obj) {
            let opts = DeleteOpts { propagation: Some("Foreground".into()), ..Default::default() };
            api::system_delete(st, &dep.gr, &dep.namespace, &dep.name, &opts);
        }
    }
    let remaining = deps.iter().filter(|d| st.get(&d.gr, &d.namespace, &d.name).is_some()).count();
    if remaining == 0 || blocking == 0 {
        remove_finalizer(st, r, "foregroundDeletion");
    }
}

fn remove_finalizer(st: &mut State, r: &ObjectRef, finalizer: &str) {
    let Some(obj) = st.get(&r.gr, &r.namespace, &r.name) else { return };
    let fs: Vec<String> = meta::finalizers(&obj).into_iter().filter(|f| f != finalizer).collect();
    if fs.len() == meta::finalizers(&obj).len() {
        return;
    }
    let mut o = (*obj).clone();
    meta::set_finalizers(&mut o, &fs);
    api::system_write(st, &r.gr, o, false, "garbage-collector");
}

fn ensure_default_service_account(st: &mut State, ns: &str) {
    let sas = GroupResource::core("serviceaccounts");
    if st.get(&sas, ns, "default").is_none() {
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}});
        api::system_write(st, &sas, sa, false, "service-account-controller");
    }
}

/// Deletes a terminating namespace's contents, then finalizes it.
fn finalize_namespace(st: &mut State, ns: &str) {
    let namespaces = GroupResource::core("namespaces");
    let Some(namespace) = st.get(&namespaces, "", ns) else { return };
    if !meta::is_deleting(&namespace) {
        return;
    }
    let collections: Vec<GroupResource> = st
        .registry
        .all()
        .filter(|i| i.namespaced && !i.virtual_only && i.storage.is_none())
        .map(|i| i.group_resource())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut remaining = 0;
    for c in &collections {
        for obj in st.list(c, Some(ns)) {
            remaining += 1;
            if !meta::is_deleting(&obj) {
                let opts =
                    DeleteOpts { propagation: Some("Background".into()), ..Default::default() };
                api::system_delete(st, c, ns, meta::name(&obj), &opts);
            }
        }
    }
    let left: usize = collections.iter().map(|c| st.count(c, Some(ns))).sum();
    if left == 0 {
        let mut n = (*namespace).clone();
        n["spec"]["finalizers"] = json!([]);
        api::system_write(st, &namespaces, n, false, "namespace-controller");
    } else if remaining > 0 {
        let mut n = (*namespace).clone();
        let mut conds: Vec<Value> =
            n["status"]["conditions"].as_array().cloned().unwrap_or_default();
        set_condition(
            &mut conds,
            "NamespaceContentRemaining",
            "True",
            "SomeResourcesRemain",
            &format!("Some resources are remaining: {left} objects"),
        );
        n["status"]["conditions"] = Value::Array(conds);
        if n != *namespace {
            api::system_write(st, &namespaces, n, true, "namespace-controller");
        }
    }
}

fn resolve_target_port(port: &Value, pod: &Value) -> Option<i64> {
    match &port["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => pod
            .at("/spec/containers")
            .and_then(Value::as_array)?
            .iter()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_i64()),
        _ => port["port"].as_i64(),
    }
}

/// Endpoints and EndpointSlice of a service from the pods its selector picks.
fn reconcile_endpoints(st: &mut State, ns: &str, name: &str) {
    let eps = GroupResource::core("endpoints");
    let slices = gr("discovery.k8s.io", "endpointslices");
    let Some(svc) = st.get(&GroupResource::core("services"), ns, name) else { return };
    let Some(selector) =
        svc.at("/spec/selector").and_then(Value::as_object).filter(|s| !s.is_empty())
    else {
        return;
    };
    let sel = LabelSelector::from_map(selector);
    let pods: Vec<Arc<Value>> = st
        .list(&GroupResource::core("pods"), Some(ns))
        .into_iter()
        .filter(|p| {
            sel.matches(p)
                && p.at("/status/podIP").is_some()
                && !matches!(pod_phase(p), "Succeeded" | "Failed")
        })
        .collect();
    let ports: Vec<Value> =
        svc.at("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default();
    let address = |p: &Value| {
        json!({"ip": p.at("/status/podIP").cloned().unwrap_or_default(), "nodeName": p.at("/spec/nodeName").cloned().unwrap_or_default(),
            "targetRef": {"kind": "Pod", "namespace": ns, "name": meta::name(p), "uid": meta::uid(p)}})
    };
    let ready: Vec<Value> =
        pods.iter().filter(|p| pod_ready(p) && !meta::is_deleting(p)).map(|p| address(p)).collect();
    let not_ready: Vec<Value> =
        pods.iter().filter(|p| !pod_ready(p) || meta::is_deleting(p)).map(|p| address(p)).collect();
    let ep_ports: Vec<Value> = ports
        .iter()
        .map(|p| {
            let target = pods
                .first()
                .and_then(|pod| resolve_target_port(p, pod))
                .or_else(|| p["targetPort"].as_i64())
                .unwrap_or_else(|| p["port"].as_i64().unwrap_or(0));
            let mut v =
                json!({"port": target, "protocol": p["protocol"].as_str().unwrap_or("TCP")});
            if let Some(n) = p["name"].as_str() {
                v["name"] = n.into();
            }
            v
        })
        .collect();
    let mut subset = json!({"ports": ep_ports});
    if !ready.is_empty() {
        subset["addresses"] = Value::Array(ready.clone());
    }
    if !not_ready.is_empty() {
        subset["notReadyAddresses"] = Value::Array(not_ready);
    }
    let subsets = if pods.is_empty() { json!([]) } else { json!([subset]) };
    let live_endpoints = st.get(&eps, ns, name);
    let mut endpoints = live_endpoints.as_deref().cloned().unwrap_or_else(|| {
        json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": ns, "ownerReferences": [owner_ref(&svc, true)]}})
    });
    if subsets.as_array().is_some_and(Vec::is_empty) {
        endpoints.as_object_mut().map(|m| m.remove("subsets"));
    } else {
        endpoints["subsets"] = subsets;
    }
    meta::set_label(&mut endpoints, "endpoints.kubernetes.io/managed-by", "endpoint-controller");
    // Most calls change nothing (a pod's other fields moved): no write to work out then.
    if live_endpoints.as_deref() != Some(&endpoints) {
        api::system_write(st, &eps, endpoints, false, "endpoint-controller");
    }

    let slice_name =
        format!("{name}-{}", &meta::uid(&svc).replace('-', "")[..5.min(meta::uid(&svc).len())]);
    let slice_endpoints: Vec<Value> = pods
        .iter()
        .map(|p| {
            let r = pod_ready(p) && !meta::is_deleting(p);
            json!({"addresses": [p.at("/status/podIP").cloned().unwrap_or_default()], "conditions": {"ready": r, "serving": pod_ready(p), "terminating": meta::is_deleting(p)},
                "nodeName": p.at("/spec/nodeName").cloned().unwrap_or_default(), "targetRef": {"kind": "Pod", "namespace": ns, "name": meta::name(p), "uid": meta::uid(p)}})
        })
        .collect();
    let live_slice = st.get(&slices, ns, &slice_name);
    let mut slice = live_slice.as_deref().cloned().unwrap_or_else(|| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": slice_name, "namespace": ns, "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}, "ownerReferences": [owner_ref(&svc, true)]}})
    });
    slice["endpoints"] = Value::Array(slice_endpoints);
    slice["ports"] = Value::Array(ep_ports_named(&ports, &pods));
    if live_slice.as_deref() != Some(&slice) {
        api::system_write(st, &slices, slice, false, "endpointslice-controller");
    }
}

fn ep_ports_named(ports: &[Value], pods: &[Arc<Value>]) -> Vec<Value> {
    ports
        .iter()
        .map(|p| {
            let target = pods.first().and_then(|pod| resolve_target_port(p, pod)).or_else(|| p["targetPort"].as_i64()).unwrap_or_else(|| p["port"].as_i64().unwrap_or(0));
            json!({"name": p["name"].as_str().unwrap_or_default(), "port": target, "protocol": p["protocol"].as_str().unwrap_or("TCP")})
        })
        .collect()
}

fn create_job_pod(st: &mut State, job: &Value) {
    let name = meta::name(job);
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": job["spec"]["template"]["metadata"].clone(),
        "spec": job["spec"]["template"]["spec"].clone(),
    });
    meta::set_meta(&mut pod, "name", Some(format!("{name}-{}", meta::random_suffix(5)).into()));
    meta::set_meta(&mut pod, "namespace", Some(meta::namespace(job).into()));
    meta::set_meta(&mut pod, "ownerReferences", Some(json!([owner_ref(job, true)])));
    meta::set_label(&mut pod, "batch.kubernetes.io/controller-uid", meta::uid(job));
    meta::set_label(&mut pod, "batch.kubernetes.io/job-name", name);
    let pod_name = meta::name(&pod).to_string();
    if api::system_write(st, &GroupResource::core("pods"), pod, false, "job-controller").is_some() {
        api::record_event(
            st,
            job,
            "Normal",
            "SuccessfulCreate",
            &format!("Created pod: {pod_name}"),
            "job-controller",
        );
    } else {
        api::record_event(
            st,
            job,
            "Warning",
            "FailedCreate",
            &format!("Error creating pod for job {name}"),
            "job-controller",
        );
    }
}

fn template_hash(template: &Value) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(template.to_string().as_bytes());
    crate::meta::hex(&digest[..5])
}

fn reconcile_deployment(st: &mut State, ns: &str, name: &str) {
    let deployments = gr("apps", "deployments");
    let rss = gr("apps", "replicasets");
    let Some(d) = st.get(&deployments, ns, name) else { return };
    if meta::is_deleting(&d) {
        return;
    }
    let uid = meta::uid(&d).to_string();
    let hash = template_hash(&d["spec"]["template"]);
    let rs_name = format!("{name}-{hash}");
    let replicas = d.at("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    let owned: Vec<Arc<Value>> =
        st.list(&rss, Some(ns)).into_iter().filter(|r| controlled_by(r, &uid)).collect();
    for r in &owned {
        if meta::name(r) != rs_name && r.at("/spec/replicas").and_then(Value::as_i64) != Some(0) {
            let mut o = (**r).clone();
            o["spec"]["replicas"] = 0.into();
            api::system_write(st, &rss, o, false, "deployment-controller");
        }
    }
    let mut template = d["spec"]["template"].clone();
    meta::set_label(&mut template, "pod-template-hash", &hash);
    let mut selector = d["spec"]["selector"].clone();
    selector["matchLabels"]["pod-template-hash"] = hash.clone().into();
    let current = st.get(&rss, ns, &rs_name);
    let mut rs = current.as_deref().cloned().unwrap_or_else(|| {
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": rs_name, "namespace": ns, "labels": template["metadata"]["labels"], "ownerReferences": [owner_ref(&d, true)]}})
    });
    rs["spec"] = json!({"replicas": replicas, "selector": selector, "template": template});
    if current.is_none() {
        api::record_event(
            st,
            &d,
            "Normal",
            "ScalingReplicaSet",
            &format!("Scaled up replica set {rs_name} from 0 to {replicas}"),
            "deployment-controller",
        );
    }
    api::system_write(st, &rss, rs, false, "deployment-controller");
    let owned: Vec<Arc<Value>> =
        st.list(&rss, Some(ns)).into_iter().filter(|r| controlled_by(r, &uid)).collect();
    let sum =
        |p: &str| owned.iter().map(|r| r.at(p).and_then(Value::as_i64).unwrap_or(0)).sum::<i64>();
    let updated = owned
        .iter()
        .find(|r| meta::name(r) == rs_name)
        .and_then(|r| r.at("/status/replicas").and_then(Value::as_i64))
        .unwrap_or(0);
    let available = sum("/status/availableReplicas");
    let mut status = json!({
        "observedGeneration": meta::generation(&d),
        "replicas": sum("/status/replicas"),
        "updatedReplicas": updated,
        "readyReplicas": sum("/status/readyReplicas"),
        "availableReplicas": available,
    });
    let mut conds: Vec<Value> =
        d.at("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    if available >= replicas {
        set_condition(
            &mut conds,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        );
    } else {
        set_condition(
            &mut conds,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        );
    }
    set_condition(
        &mut conds,
        "Progressing",
        "True",
        if updated >= replicas { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" },
        &format!("ReplicaSet \"{rs_name}\" is progressing."),
    );
    status["conditions"] = Value::Array(conds);
    for k in ["replicas", "updatedReplicas", "readyReplicas", "availableReplicas"] {
        if status[k] == 0 {
            status.as_object_mut().map(|m| m.remove(k));
        }
    }
    if d.get("status") != Some(&status) {
        let mut o = (*d).clone();
        o["status"] = status;
        api::system_write(st, &deployments, o, true, "deployment-controller");
    }
}

fn reconcile_replicaset(st: &mut State, ns: &str, name: &str) {
    let rss = gr("apps", "replicasets");
    let pods_gr = GroupResource::core("pods");
    let Some(rs) = st.get(&rss, ns, name) else { return };
    if meta::is_deleting(&rs) {
        return;
    }
    let uid = meta::uid(&rs).to_string();
    let want = rs.at("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    let pods: Vec<Arc<Value>> = st
        .list(&pods_gr, Some(ns))
        .into_iter()
        .filter(|p| {
            controlled_by(p, &uid)
                && !meta::is_deleting(p)
                && !matches!(pod_phase(p), "Succeeded" | "Failed")
        })
        .collect();
    let have = pods.len() as i64;
    if have < want {
        for _ in have..want {
            let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": rs["spec"]["template"]["metadata"].clone(), "spec": rs["spec"]["template"]["spec"].clone()});
            meta::set_meta(
                &mut pod,
                "name",
                Some(format!("{name}-{}", meta::random_suffix(5)).into()),
            );
            meta::set_meta(&mut pod, "namespace", Some(ns.into()));
            meta::set_meta(&mut pod, "ownerReferences", Some(json!([owner_ref(&rs, true)])));
            let pod_name = meta::name(&pod).to_string();
            match api::system_write(st, &pods_gr, pod, false, "replicaset-controller") {
                Some(_) => api::record_event(
                    st,
                    &rs,
                    "Normal",
                    "SuccessfulCreate",
                    &format!("Created pod: {pod_name}"),
                    "replicaset-controller",
                ),
                None => {
                    api::record_event(
                        st,
                        &rs,
                        "Warning",
                        "FailedCreate",
                        &format!(
                            "Error creating: pod {pod_name} was refused (see the namespace's quota and Pod Security level)"
                        ),
                        "replicaset-controller",
                    );
                    break;
                }
            }
        }
    } else if have > want {
        for p in pods.iter().take((have - want) as usize) {
            api::system_delete(st, &pods_gr, ns, meta::name(p), &DeleteOpts::default());
        }
    }
    let pods: Vec<Arc<Value>> = st
        .list(&pods_gr, Some(ns))
        .into_iter()
        .filter(|p| controlled_by(p, &uid) && !meta::is_deleting(p))
        .collect();
    let ready = pods.iter().filter(|p| pod_ready(p)).count() as i64;
    let mut status = json!({"replicas": pods.len(), "fullyLabeledReplicas": pods.len(), "readyReplicas": ready, "availableReplicas": ready, "observedGeneration": meta::generation(&rs)});
    for k in ["readyReplicas", "availableReplicas", "fullyLabeledReplicas"] {
        if status[k] == 0 {
            status.as_object_mut().map(|m| m.remove(k));
        }
    }
    if rs.get("status") != Some(&status) {
        let mut o = (*rs).clone();
        o["status"] = status;
        api::system_write(st, &rss, o, true, "replicaset-controller");
    }
}

fn reconcile_quota_status(st: &mut State, ns: &str) {
    let quotas = GroupResource::core("resourcequotas");
    for q in st.list(&quotas, Some(ns)) {
        let Some(hard) = q.at("/spec/hard").and_then(Value::as_object).cloned() else {
            continue;
        };
        let used = admission::quota_used(st, ns, &hard);
        let used_json: BTreeMap<String, Value> =
            used.iter().map(|(k, v)| (k.clone(), Value::from(v.to_string()))).collect();
        let status = json!({"hard": hard, "used": used_json});
        if q.get("status") != Some(&status) {
            let mut o = (*q).clone();
            o["status"] = status;
            api::system_write(st, &quotas, o, true, "resourcequota-controller");
        }
    }
}
