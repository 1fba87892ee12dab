//! The scheduler: binds pending pods to nodes honouring unschedulable nodes, taints and
//! tolerations, node selectors and required node affinity, and resource fit (GPUs are whole,
//! exclusive devices). Pods that fit nowhere stay Pending with kube-scheduler's message.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::api;
use crate::meta::{self, At};
use crate::quantity::Quantity;
use crate::resources::GroupResource;
use crate::state::{Event, EventType, State};

const SCHEDULER: &str = "default-scheduler";

fn pods() -> GroupResource {
    GroupResource::core("pods")
}

fn nodes() -> GroupResource {
    GroupResource::core("nodes")
}

fn tolerates(tolerations: &[Value], taint: &Value) -> bool {
    tolerations.iter().any(|t| {
        let key_ok = match t["key"].as_str() {
            None | Some("") => t["operator"] == "Exists",
            Some(k) => taint["key"] == k,
        };
        let effect_ok = t["effect"].as_str().is_none_or(|e| e.is_empty() || taint["effect"] == e);
        let value_ok = t["operator"] == "Exists"
            || t["value"].as_str().unwrap_or_default()
                == taint["value"].as_str().unwrap_or_default();
        key_ok && effect_ok && value_ok
    })
}

fn expression_matches(expr: &Value, labels: Option<&serde_json::Map<String, Value>>) -> bool {
    let key = expr["key"].as_str().unwrap_or_default();
    let actual = labels.and_then(|l| l.get(key)).and_then(Value::as_str);
    let values: Vec<&str> =
        expr["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    match expr["operator"].as_str() {
        Some("In") => actual.is_some_and(|a| values.contains(&a)),
        Some("NotIn") => actual.is_none_or(|a| !values.contains(&a)),
        Some("Exists") => actual.is_some(),
        Some("DoesNotExist") => actual.is_none(),
        Some("Gt") => actual
            .and_then(|a| a.parse::<i64>().ok())
            .zip(values.first().and_then(|v| v.parse::<i64>().ok()))
            .is_some_and(|(a, v)| a > v),
        Some("Lt") => actual
            .and_then(|a| a.parse::<i64>().ok())
            .zip(values.first().and_then(|v| v.parse::<i64>().ok()))
            .is_some_and(|(a, v)| a < v),
        _ => false,
    }
}

fn affinity_matches(pod: &PodFit, node: &Value) -> bool {
    let labels = meta::labels(node);
    if let Some(sel) = pod.node_selector {
        for (k, v) in sel {
            if labels.and_then(|l| l.get(k)) != Some(v) {
                return false;
            }
        }
    }
    let Some(terms) = pod.affinity_terms else {
        return true;
    };
    terms.iter().any(|term| {
        let exprs_ok = term["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|e| expression_matches(e, labels));
        let fields_ok = term["matchFields"].as_array().into_iter().flatten().all(|f| {
            let mut fake = serde_json::Map::new();
            fake.insert("metadata.name".into(), Value::from(meta::name(node)));
            expression_matches(f, Some(&fake))
        });
        exprs_ok && fields_ok
    })
}

/// What a pod requests, per resource (requests, or limits where no request is given).
pub fn pod_requests(pod: &Value) -> BTreeMap<String, Quantity> {
    let mut out: BTreeMap<String, Quantity> = BTreeMap::new();
    for c in pod.at("/spec/containers").and_then(Value::as_array).into_iter().flatten() {
        let mut res: BTreeMap<String, Quantity> = BTreeMap::new();
        for kind in ["limits", "requests"] {
            for (k, v) in c["resources"][kind].as_object().into_iter().flatten() {
                if let Some(q) = Quantity::from_value(v) {
                    res.insert(k.clone(), q);
                }
            }
        }
        for (k, q) in res {
            let cur = out.get(&k).copied().unwrap_or_default();
            out.insert(k, cur + q);
        }
    }
    out.insert("pods".into(), Quantity::whole(1));
    out
}

fn allocatable(node: &Value) -> BTreeMap<String, Quantity> {
    node.at("/status/allocatable")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Quantity::from_value(v).map(|q| (k.clone(), q)))
        .collect()
}

fn is_active(pod: &Value) -> bool {
    !matches!(pod.at("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"))
}

/// What the scheduler knows between runs, kept up to date from pod events (kube-scheduler's
/// cache): the resources each node's pods hold, and the pods waiting for a node. Without it every
/// new pod would cost a scan of every pod in the cluster.
#[derive(Default)]
pub struct Cache {
    bound: HashMap<(String, String), (String, BTreeMap<String, Quantity>)>,
    used: BTreeMap<String, BTreeMap<String, Quantity>>,
    pending: BTreeSet<(String, String)>,
    /// The nodes as the filters read them; `None` after a node changed.
    nodes: Option<Vec<NodeFit>>,
    /// The nodes in order of preference, built from `nodes` (and dropped with them), and the
    /// nodes whose pods changed since it was last brought up to date.
    by_free: Option<ByFree>,
    changed: BTreeSet<String>,
}

impl Cache {
    fn add(&mut self, key: (String, String), node: String, requests: BTreeMap<String, Quantity>) {
        let u = self.used.entry(node.clone()).or_default();
        for (k, q) in &requests {
            let cur = u.get(k).copied().unwrap_or_default();
            u.insert(k.clone(), cur + *q);
        }
        self.changed.insert(node.clone());
        self.bound.insert(key, (node, requests));
    }

    /// Takes in a pod's new state (or its deletion).
    pub fn observe(&mut self, pod: &Value, deleted: bool) {
        let key = (meta::namespace(pod).to_string(), meta::name(pod).to_string());
        if let Some((node, requests)) = self.bound.remove(&key)
            && let Some(u) = self.used.get_mut(&node)
        {
            for (k, q) in requests {
                let cur = u.get(&k).copied().unwrap_or_default();
                u.insert(k, cur - q);
            }
            self.changed.insert(node);
        }
        self.pending.remove(&key);
        if deleted || !is_active(pod) {
            return;
        }
        match pod.at("/spec/nodeName").and_then(Value::as_str) {
            Some(node) => self.add(key, node.to_string(), pod_requests(pod)),
            None if !meta::is_deleting(pod)
                && pod.at("/spec/schedulerName").and_then(Value::as_str).unwrap_or(SCHEDULER)
                    == SCHEDULER =>
            {
                self.pending.insert(key);
            }
            None => {}
        }
    }

    /// Rebuilds from every pod (after missed events).
    pub fn rebuild(&mut self, st: &State) {
        *self = Cache::default();
        for p in st.list(&pods(), None) {
            self.observe(&p, false);
        }
    }
}

/// What the filters need of a pod, computed once per pod rather than once per node.
pub struct PodFit<'a> {
    pub pod: &'a Value,
    pub requests: BTreeMap<String, Quantity>,
    pub tolerations: Vec<Value>,
    node_selector: Option<&'a serde_json::Map<String, Value>>,
    affinity_terms: Option<&'a Vec<Value>>,
}

impl<'a> PodFit<'a> {
    pub fn new(pod: &'a Value) -> PodFit<'a> {
        PodFit {
            pod,
            requests: pod_requests(pod),
            tolerations: pod
                .at("/spec/tolerations")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            node_selector: pod.at("/spec/nodeSelector").and_then(Value::as_object),
            affinity_terms: pod
                .at("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
                .and_then(Value::as_array),
        }
    }
}

/// A node as the filters read it, parsed once per change of the node rather than once per pod
/// and node (at 1,000 nodes the per-pod parsing was most of scheduling).
pub struct NodeFit {
    pub node: Arc<Value>,
    pub name: String,
    pub allocatable: BTreeMap<String, Quantity>,
    unschedulable: bool,
    /// Taints that keep pods off (NoSchedule, NoExecute).
    repelling: Vec<Value>,
}

impl NodeFit {
    pub fn new(node: Arc<Value>) -> NodeFit {
        NodeFit {
            allocatable: allocatable(&node),
            name: meta::name(&node).to_string(),
            unschedulable: node.at("/spec/unschedulable") == Some(&Value::Bool(true)),
            repelling: node
                .at("/spec/taints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|t| matches!(t["effect"].as_str(), Some("NoSchedule" | "NoExecute")))
                .cloned()
                .collect(),
            node,
        }
    }
}

/// Why a node cannot take a pod: kube-scheduler's filter messages, first failing filter only.
fn filter(
    pod: &PodFit,
    node: &NodeFit,
    used: &BTreeMap<String, Quantity>,
) -> Result<(), Vec<String>> {
    if node.unschedulable {
        return Err(vec!["node(s) were unschedulable".into()]);
    }
    for taint in &node.repelling {
        if !tolerates(&pod.tolerations, taint) {
            return Err(vec![format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint["key"].as_str().unwrap_or_default(),
                taint["value"].as_str().unwrap_or_default()
            )]);
        }
    }
    if !affinity_matches(pod, &node.node) {
        return Err(vec!["node(s) didn't match Pod's node affinity/selector".into()]);
    }
    let mut insufficient = Vec::new();
    for (res, want) in &pod.requests {
        if want.is_zero() {
            continue;
        }
        let have = node.allocatable.get(res).copied().unwrap_or_default();
        let in_use = used.get(res).copied().unwrap_or_default();
        if in_use + *want > have {
            insufficient.push(if res == "pods" {
                "Too many pods".to_string()
            } else {
                format!("Insufficient {res}")
            });
        }
    }
    if insufficient.is_empty() { Ok(()) } else { Err(insufficient) }
}

/// Spread: the node with the most free GPU and CPU is preferred (the pod's requests are the same
/// on every node, so before or after placement orders them alike).
fn free(node: &NodeFit, used: &BTreeMap<String, Quantity>) -> i128 {
    ["nvidia.com/gpu", "cpu"]
        .iter()
        .map(|r| {
            node.allocatable.get(*r).copied().unwrap_or_default().0
                - used.get(*r).copied().unwrap_or_default().0
        })
        .sum()
}

/// The nodes in `find_node`'s order of preference (most free first, then by name), kept in the
/// cache and brought up to date for the nodes whose pods changed: the first that fits is the node
/// `find_node` picks, found without filtering every node for every pod (at 10,000 pods on 1,252
/// nodes that was a fifth of devcluster's CPU).
struct ByFree {
    order: BTreeSet<(Reverse<i128>, usize)>,
    /// Each node's free amount (by its index in the node list), and the indexes by name.
    free: Vec<i128>,
    index: HashMap<String, usize>,
}

impl ByFree {
    fn new(nodes: &[NodeFit], used: &BTreeMap<String, BTreeMap<String, Quantity>>) -> ByFree {
        let empty = BTreeMap::new();
        let free: Vec<i128> =
            nodes.iter().map(|n| free(n, used.get(&n.name).unwrap_or(&empty))).collect();
        let mut index: HashMap<String, usize> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            index.entry(n.name.clone()).or_insert(i);
        }
        let order = index.values().map(|&i| (Reverse(free[i]), i)).collect();
        ByFree { order, free, index }
    }

    /// The preferred node that fits, if any. Ties go to the first name, as in `find_node`: the
    /// node list is in name order (the store lists by name).
    fn first_fit(
        &self,
        pod: &Value,
        nodes: &[NodeFit],
        used: &BTreeMap<String, BTreeMap<String, Quantity>>,
    ) -> Option<String> {
        let pod = PodFit::new(pod);
        let empty = BTreeMap::new();
        self.order
            .iter()
            .map(|(_, i)| &nodes[*i])
            .find(|n| filter(&pod, n, used.get(&n.name).unwrap_or(&empty)).is_ok())
            .map(|n| n.name.clone())
    }

    /// Takes in a change of what `node` has in use.
    fn update(&mut self, node: &str, nodes: &[NodeFit], used: &BTreeMap<String, Quantity>) {
        let Some(&i) = self.index.get(node) else { return };
        self.order.remove(&(Reverse(self.free[i]), i));
        self.free[i] = free(&nodes[i], used);
        self.order.insert((Reverse(self.free[i]), i));
    }
}

/// Picks a node (the least-allocated fit), or kube-scheduler's "0/N nodes are available" message.
pub fn find_node(
    pod: &Value,
    nodes: &[NodeFit],
    used: &BTreeMap<String, BTreeMap<String, Quantity>>,
) -> Result<String, String> {
    let pod = PodFit::new(pod);
    let empty = BTreeMap::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut preemption: BTreeMap<&str, usize> = BTreeMap::new();
    let mut best: Option<(i128, String)> = None;
    for node in nodes {
        let name = node.name.as_str();
        let node_used = used.get(name).unwrap_or(&empty);
        match filter(&pod, node, node_used) {
            Ok(()) => {
                let free = free(node, node_used);
                if best.as_ref().is_none_or(|(f, n)| free > *f || (free == *f && name < n.as_str()))
                {
                    best = Some((free, name.to_string()));
                }
            }
            Err(rs) => {
                let resources =
                    rs.iter().any(|r| r.starts_with("Insufficient") || r == "Too many pods");
                for r in rs {
                    *reasons.entry(r).or_default() += 1;
                }
                *preemption
                    .entry(if resources {
                        "No preemption victims found for incoming pod"
                    } else {
                        "Preemption is not helpful for scheduling"
                    })
                    .or_default() += 1;
            }
        }
    }
    if let Some((_, n)) = best {
        return Ok(n);
    }
    let total = nodes.len();
    if total == 0 {
        return Err("no nodes available to schedule pods".into());
    }
    // kube-scheduler sorts the "count reason" strings themselves.
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    let mut pre: Vec<String> = preemption.iter().map(|(r, n)| format!("{n} {r}")).collect();
    pre.sort();
    Err(format!(
        "0/{total} nodes are available: {}. preemption: 0/{total} nodes are available: {}.",
        parts.join(", "),
        pre.join(", ")
    ))
}

fn set_condition(pod: &mut Value, cond: Value) {
    let conds = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let mut out: Vec<Value> = conds.into_iter().filter(|c| c["type"] != cond["type"]).collect();
    out.push(cond);
    pod["status"]["conditions"] = Value::Array(out);
}

/// Binds a pod to a node (the `pods/binding` subresource).
pub fn bind(st: &mut State, namespace: &str, name: &str, node: &str) -> Result<(), String> {
    let pod = st
        .get(&pods(), namespace, name)
        .ok_or_else(|| format!("pod {namespace}/{name} not found"))?;
    if let Some(n) = pod.at("/spec/nodeName").and_then(Value::as_str) {
        return Err(format!("pod {name} is already assigned to node \"{n}\""));
    }
    if st.get(&nodes(), "", node).is_none() {
        return Err(format!("node \"{node}\" not found"));
    }
    let mut p = (*pod).clone();
    p["spec"]["nodeName"] = node.into();
    set_condition(
        &mut p,
        json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": meta::now_rfc3339()}),
    );
    st.replace(&pods(), p);
    crate::api::record_event(
        st,
        &pod,
        "Normal",
        "Scheduled",
        &format!("Successfully assigned {namespace}/{name} to {node}"),
        SCHEDULER,
    );
    Ok(())
}

/// One scheduling pass over every pending pod.
pub fn schedule_pending(st: &mut State, cache: &mut Cache) {
    if cache.pending.is_empty() {
        return;
    }
    let (node_list, by_free) = match (cache.nodes.take(), cache.by_free.take()) {
        (Some(list), Some(mut by_free)) => {
            let empty = BTreeMap::new();
            for node in std::mem::take(&mut cache.changed) {
                by_free.update(&node, &list, cache.used.get(&node).unwrap_or(&empty));
            }
            (list, by_free)
        }
        _ => {
            let list: Vec<NodeFit> =
                st.list(&nodes(), None).into_iter().map(NodeFit::new).collect();
            cache.changed.clear();
            let by_free = ByFree::new(&list, &cache.used);
            (list, by_free)
        }
    };
    let mut by_free = by_free;
    for key in cache.pending.clone() {
        let (ns, name) = key.clone();
        let Some(pod) = st.get(&pods(), &ns, &name) else {
            cache.pending.remove(&key);
            continue;
        };
        if pod.at("/spec/nodeName").is_some() {
            continue; // bound; its event updates the cache
        }
        // Claims must be bound before a pod using them can be placed.
        let unbound = pod
            .at("/spec/volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.at("/persistentVolumeClaim/claimName").and_then(Value::as_str))
            .any(|claim| {
                st.get(&GroupResource::core("persistentvolumeclaims"), &ns, claim)
                    .is_none_or(|c| c.at("/status/phase").and_then(Value::as_str) != Some("Bound"))
            });
        let decision = if unbound {
            Err("0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.".to_string())
        } else {
            // The full scan only to say why nothing fits.
            by_free
                .first_fit(&pod, &node_list, &cache.used)
                .map_or_else(|| find_node(&pod, &node_list, &cache.used), Ok)
        };
        match decision {
            Ok(node) => {
                if bind(st, &ns, &name, &node).is_ok() {
                    cache.pending.remove(&key);
                    cache.add(key, node.clone(), pod_requests(&pod));
                    if let Some(used) = cache.used.get(&node) {
                        by_free.update(&node, &node_list, used);
                    }
                    cache.changed.remove(&node);
                }
            }
            Err(message) => {
                let current = pod
                    .at("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled"))
                    .and_then(|c| c["message"].as_str())
                    .map(str::to_string);
                if current.as_deref() == Some(message.as_str()) {
                    continue;
                }
                let mut p = (*pod).clone();
                set_condition(
                    &mut p,
                    json!({"type": "PodScheduled", "status": "False", "lastProbeTime": null, "lastTransitionTime": meta::now_rfc3339(), "reason": "Unschedulable", "message": message}),
                );
                api::system_write(st, &pods(), p, true, SCHEDULER);
                crate::api::record_event(
                    st,
                    &pod,
                    "Warning",
                    "FailedScheduling",
                    &message,
                    SCHEDULER,
                );
            }
        }
    }
    cache.nodes = Some(node_list);
    cache.by_free = Some(by_free);
}

/// Reacts to a batch of store events: keeps the cache current, and schedules when a pod waits
/// for a node, one stops holding its node's resources (deleted, or finished), a node changes, or
/// a claim a pod may wait for is bound.
pub fn handle(st: &mut State, cache: &mut Cache, events: &[Arc<Event>]) {
    let phase =
        |o: &Value| o.at("/status/phase").and_then(Value::as_str).unwrap_or_default().to_string();
    let mut schedule = false;
    for e in events {
        let obj = &e.object;
        let was = e.old.as_deref().map(phase);
        match (e.gr.group.as_str(), e.gr.resource.as_str()) {
            ("", "pods") => {
                cache.observe(obj, e.kind == EventType::Deleted);
                let finished = matches!(phase(obj).as_str(), "Succeeded" | "Failed")
                    && Some(phase(obj)) != was;
                schedule |= (obj.at("/spec/nodeName").is_none() && !meta::is_deleting(obj))
                    || e.kind == EventType::Deleted
                    || finished;
            }
            ("", "nodes") => {
                cache.nodes = None;
                schedule = true;
            }
            ("", "persistentvolumeclaims") => {
                schedule |= phase(obj) == "Bound" && was.as_deref() != Some("Bound")
            }
            _ => {}
        }
    }
    if schedule {
        schedule_pending(st, cache);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: Value, taints: Value, gpus: &str) -> Arc<Value> {
        Arc::new(
            json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}, "status": {"allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110", "nvidia.com/gpu": gpus}}}),
        )
    }

    #[test]
    fn fit_selectors_taints_and_gpus() {
        let nodes = vec![
            node("a", json!({"region": "tw"}), json!([]), "1"),
            node("b", json!({"region": "jp"}), json!([]), "8"),
            node(
                "c",
                json!({"region": "tw"}),
                json!([{"key": "alcove.dev/tenant", "value": "acme", "effect": "NoSchedule"}]),
                "8",
            ),
        ];
        let pod = json!({"spec": {"nodeSelector": {"region": "tw"}, "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "2"}}}]}});
        let nodes: Vec<NodeFit> = nodes.into_iter().map(NodeFit::new).collect();
        let err = find_node(&pod, &nodes, &BTreeMap::new()).unwrap_err();
        assert_eq!(
            err,
            "0/3 nodes are available: 1 Insufficient nvidia.com/gpu, 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {alcove.dev/tenant: acme}. preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, 2 Preemption is not helpful for scheduling."
        );
        let tolerant = json!({"spec": {"nodeSelector": {"region": "tw"}, "tolerations": [{"key": "alcove.dev/tenant", "operator": "Equal", "value": "acme", "effect": "NoSchedule"}], "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "2"}}}]}});
        assert_eq!(find_node(&tolerant, &nodes, &BTreeMap::new()).unwrap(), "c");
    }

    #[test]
    fn the_ordered_search_picks_what_the_full_scan_picks() {
        // Nodes in name order (as the store lists them), with ties, a taint and a selector.
        let nodes: Vec<NodeFit> = (0..40)
            .map(|i| {
                let taints = if i % 7 == 3 {
                    json!([{"key": "k", "value": "v", "effect": "NoSchedule"}])
                } else {
                    json!([])
                };
                let region = if i % 5 == 1 { "jp" } else { "tw" };
                node(&format!("n{i:02}"), json!({"region": region}), taints, ["2", "4", "8"][i % 3])
            })
            .map(NodeFit::new)
            .collect();
        let pod = json!({"spec": {"nodeSelector": {"region": "tw"}, "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1", "cpu": "1"}}}]}});
        let requests = pod_requests(&pod);
        let mut used: BTreeMap<String, BTreeMap<String, Quantity>> = BTreeMap::new();
        let mut by_free = ByFree::new(&nodes, &used);
        let mut placed = 0;
        loop {
            let full = find_node(&pod, &nodes, &used);
            let ordered = by_free.first_fit(&pod, &nodes, &used);
            assert_eq!(ordered, full.clone().ok(), "after {placed} placements");
            let Ok(node) = full else { break };
            let u = used.entry(node.clone()).or_default();
            for (k, q) in &requests {
                let cur = u.get(k).copied().unwrap_or_default();
                u.insert(k.clone(), cur + *q);
            }
            by_free.update(&node, &nodes, &used[&node]);
            placed += 1;
        }
        // Every GPU of the nodes the pod may use: 2, 4 or 8 on each untainted node in tw.
        let usable: usize =
            (0..40).filter(|i| i % 7 != 3 && i % 5 != 1).map(|i| [2, 4, 8][i % 3]).sum();
        assert_eq!(placed, usable);
    }
}
