//! NetworkPolicies and Services as one nftables script, for the network-namespace pod network
//! ([`crate::netns`]). Pure: objects in, the text `nft -f` takes out.
//!
//! The semantics are those of the Kubernetes documentation:
//! - a pod is isolated for ingress (egress) when a policy of its namespace selects it and has
//!   that type (`policyTypes`, or when absent: Ingress, and Egress if it has egress rules);
//! - an isolated pod's traffic passes when any rule of those policies allows it; a connection
//!   needs the source's egress and the destination's ingress both allowed;
//! - peers: `podSelector` (in the policy's namespace), `namespaceSelector` (every pod of the
//!   namespaces it picks), both (the pods they pick together), `ipBlock` with `except`; no peers
//!   means everyone; ports with protocol, `endPort` ranges and named container ports;
//! - replies of allowed connections pass (conntrack), and policies act on the pod addresses a
//!   Service address was translated to.
//!
//! Traffic from the node itself (the kubelet's probes, the API server's service proxy) is not
//! filtered, as on most network plugins. Named ports in egress rules are resolved against the
//! destination pods; with an `ipBlock` peer they match nothing. IPv6 blocks are left out: the pod
//! network is IPv4.

use std::fmt::Write;
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::meta::{self, At};
use crate::selectors::LabelSelector;

/// The node's address inside the pod network: the API server and the probes come from here.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The pod network, 10.244.0.0/16.
pub const POD_PREFIX: u8 = 16;

/// The nftables table devcluster owns in the router namespace.
pub const TABLE: &str = "devcluster";

/// Whether `ip` is in the pod network.
pub fn in_pod_network(ip: Ipv4Addr) -> bool {
    u32::from(ip) >> (32 - POD_PREFIX) == u32::from(NODE_IP) >> (32 - POD_PREFIX)
}

/// What the rules are made from: the store's objects of each kind.
pub struct Objects<'a> {
    pub pods: &'a [Arc<Value>],
    pub namespaces: &'a [Arc<Value>],
    pub policies: &'a [Arc<Value>],
    pub services: &'a [Arc<Value>],
    pub endpoints: &'a [Arc<Value>],
}

struct Pod<'a> {
    obj: &'a Value,
    ip: Ipv4Addr,
}

impl Pod<'_> {
    fn namespace(&self) -> &str {
        meta::namespace(self.obj)
    }

    /// The number of the container port named `name` with `protocol`.
    fn named_port(&self, name: &str, protocol: &str) -> Option<i64> {
        self.obj
            .at("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .find(|p| {
                p["name"] == name
                    && p["protocol"].as_str().unwrap_or("TCP").eq_ignore_ascii_case(protocol)
            })
            .and_then(|p| p["containerPort"].as_i64())
    }
}

/// Who a peer stands for.
enum Peer {
    Anyone,
    Pods(Vec<Ipv4Addr>),
    Block { cidr: String, except: Vec<String> },
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn rules_field(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
    fn peers_field(self) -> &'static str {
        match self {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        }
    }
    /// The address of the other side of the connection.
    fn peer_addr(self) -> &'static str {
        match self {
            Direction::Ingress => "ip saddr",
            Direction::Egress => "ip daddr",
        }
    }
}

/// The policy types a policy has: (ingress, egress).
fn policy_types(policy: &Value) -> (bool, bool) {
    match policy.at("/spec/policyTypes").and_then(Value::as_array).filter(|t| !t.is_empty()) {
        Some(types) => (types.iter().any(|t| t == "Ingress"), types.iter().any(|t| t == "Egress")),
        None => (
            true,
            policy.at("/spec/egress").and_then(Value::as_array).is_some_and(|e| !e.is_empty()),
        ),
    }
}

fn ipv4_cidr(s: &str) -> Option<String> {
    let (addr, len) = s.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    // nft refuses a prefix with host bits set; Kubernetes takes the network it names.
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Some(format!("{}/{len}", Ipv4Addr::from(u32::from(addr) & mask)))
}

struct World<'a> {
    pods: Vec<Pod<'a>>,
    namespaces: &'a [Arc<Value>],
}

impl World<'_> {
    /// The labels of namespace `name`, with the `kubernetes.io/metadata.name` label every
    /// namespace carries.
    fn namespace_labels(&self, name: &str) -> Map<String, Value> {
        let mut labels = self
            .namespaces
            .iter()
            .find(|n| meta::name(n) == name)
            .and_then(|n| meta::labels(n).cloned())
            .unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".into(), name.into());
        labels
    }

    fn peer(&self, peer: &Value, policy_namespace: &str) -> Option<Peer> {
        if let Some(block) = peer.get("ipBlock") {
            let cidr = ipv4_cidr(block["cidr"].as_str()?)?;
            let except = block["except"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter_map(ipv4_cidr)
                .collect();
            return Some(Peer::Block { cidr, except });
        }
        let namespaces = peer.get("namespaceSelector").map(LabelSelector::from_object);
        let pods = peer.get("podSelector").map(LabelSelector::from_object);
        if namespaces.is_none() && pods.is_none() {
            return None;
        }
        let ips = self
            .pods
            .iter()
            .filter(|p| match &namespaces {
                Some(sel) => sel.matches_labels(Some(&self.namespace_labels(p.namespace()))),
                None => p.namespace() == policy_namespace,
            })
            .filter(|p| pods.as_ref().is_none_or(|sel| sel.matches(p.obj)))
            .map(|p| p.ip)
            .collect();
        Some(Peer::Pods(ips))
    }
}

fn address_set(ips: &[Ipv4Addr]) -> String {
    match ips {
        [one] => one.to_string(),
        _ => {
            format!("{{ {} }}", ips.iter().map(Ipv4Addr::to_string).collect::<Vec<_>>().join(", "))
        }
    }
}

/// The rules of `pod`'s chain for one direction: each allowed case ends in `return`, the chain
/// in `drop`.
fn chain_rules(world: &World, pod: &Pod, policies: &[&Value], dir: Direction) -> Vec<String> {
    let mut out = Vec::new();
    for policy in policies {
        let ns = meta::namespace(policy);
        for rule in policy
            .at(&format!("/spec/{}", dir.rules_field()))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let peers: Vec<Peer> =
                match rule[dir.peers_field()].as_array().filter(|p| !p.is_empty()) {
                    None => vec![Peer::Anyone],
                    Some(list) => list.iter().filter_map(|p| world.peer(p, ns)).collect(),
                };
            let ports = rule["ports"].as_array().filter(|p| !p.is_empty());
            for peer in &peers {
                let addr = match peer {
                    Peer::Anyone => String::new(),
                    Peer::Pods(ips) if ips.is_empty() => continue,
                    Peer::Pods(ips) => format!("{} {} ", dir.peer_addr(), address_set(ips)),
                    Peer::Block { cidr, except } => {
                        let mut s = format!("{} {cidr} ", dir.peer_addr());
                        if !except.is_empty() {
                            let _ =
                                write!(s, "{} != {{ {} }} ", dir.peer_addr(), except.join(", "));
                        }
                        s
                    }
                };
                let Some(ports) = ports else {
                    out.push(format!("{addr}return"));
                    continue;
                };
                for port in ports {
                    let protocol = port["protocol"].as_str().unwrap_or("TCP").to_ascii_lowercase();
                    if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
                        continue;
                    }
                    match &port["port"] {
                        Value::Null => out.push(format!("{addr}meta l4proto {protocol} return")),
                        Value::Number(n) => {
                            let Some(n) = n.as_i64() else { continue };
                            let range = match port["endPort"].as_i64() {
                                Some(end) if end > n => format!("{n}-{end}"),
                                _ => n.to_string(),
                            };
                            out.push(format!("{addr}{protocol} dport {range} return"));
                        }
                        Value::String(name) => {
                            if let Ok(n) = name.parse::<i64>() {
                                out.push(format!("{addr}{protocol} dport {n} return"));
                                continue;
                            }
                            match dir {
                                // The port is the selected pod's own.
                                Direction::Ingress => {
                                    if let Some(n) = pod.named_port(name, &protocol) {
                                        out.push(format!("{addr}{protocol} dport {n} return"));
                                    }
                                }
                                // The port is each destination pod's.
                                Direction::Egress => {
                                    let targets: Vec<&Pod> = match peer {
                                        Peer::Anyone => world.pods.iter().collect(),
                                        Peer::Pods(ips) => world
                                            .pods
                                            .iter()
                                            .filter(|p| ips.contains(&p.ip))
                                            .collect(),
                                        Peer::Block { .. } => Vec::new(),
                                    };
                                    for t in targets {
                                        if let Some(n) = t.named_port(name, &protocol) {
                                            out.push(format!(
                                                "ip daddr {} {protocol} dport {n} return",
                                                t.ip
                                            ));
                                        }
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    out.push("drop".into());
    out
}

fn chain_name(dir: Direction, ip: Ipv4Addr) -> String {
    let side = match dir {
        Direction::Ingress => "to",
        Direction::Egress => "from",
    };
    format!("{side}_{}", ip.to_string().replace('.', "_"))
}

/// DNAT rules: a Service's cluster IP and port to its ready endpoints.
fn service_rules(o: &Objects) -> Vec<String> {
    let mut out = Vec::new();
    for svc in o.services {
        let Some(cluster_ip) = svc
            .at("/spec/clusterIP")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let Some(eps) = o.endpoints.iter().find(|e| {
            meta::namespace(e) == meta::namespace(svc) && meta::name(e) == meta::name(svc)
        }) else {
            continue;
        };
        for sp in svc.at("/spec/ports").and_then(Value::as_array).into_iter().flatten() {
            let protocol = sp["protocol"].as_str().unwrap_or("TCP").to_ascii_lowercase();
            let Some(port) = sp["port"].as_i64() else { continue };
            let mut targets: Vec<(Ipv4Addr, i64)> = Vec::new();
            for subset in eps["subsets"].as_array().into_iter().flatten() {
                let ports = subset["ports"].as_array().cloned().unwrap_or_default();
                let ep_port = match sp["name"].as_str() {
                    Some(name) => ports.iter().find(|p| p["name"] == name),
                    None => ports.first(),
                }
                .and_then(|p| p["port"].as_i64());
                let Some(target) = ep_port else { continue };
                for a in subset["addresses"].as_array().into_iter().flatten() {
                    if let Some(ip) = a["ip"].as_str().and_then(|s| s.parse::<Ipv4Addr>().ok()) {
                        targets.push((ip, target));
                    }
                }
            }
            let head = format!("ip daddr {cluster_ip} {protocol} dport {port} dnat ip to");
            match targets.as_slice() {
                [] => {}
                [(ip, target)] => out.push(format!("{head} {ip}:{target}")),
                many => {
                    let map: Vec<String> = many
                        .iter()
                        .enumerate()
                        .map(|(i, (ip, target))| format!("{i} : {ip} . {target}"))
                        .collect();
                    out.push(format!(
                        "{head} numgen random mod {} map {{ {} }}",
                        many.len(),
                        map.join(", ")
                    ));
                }
            }
        }
    }
    out
}

/// The whole table, replacing the one before in one transaction.
pub fn ruleset(o: &Objects) -> String {
    let pods: Vec<Pod> = o
        .pods
        .iter()
        .filter(|p| {
            !matches!(p.at("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"))
        })
        .filter_map(|p| {
            let ip = p.at("/status/podIP")?.as_str()?.parse::<Ipv4Addr>().ok()?;
            (in_pod_network(ip) && ip != NODE_IP).then_some(Pod { obj: p, ip })
        })
        .collect();
    let world = World { pods, namespaces: o.namespaces };
    let mut chains: Vec<(String, Vec<String>)> = Vec::new();
    let mut maps: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for pod in &world.pods {
        for (i, dir) in [Direction::Egress, Direction::Ingress].into_iter().enumerate() {
            let selecting: Vec<&Value> = o
                .policies
                .iter()
                .filter(|np| meta::namespace(np) == pod.namespace())
                .filter(|np| {
                    let (ingress, egress) = policy_types(np);
                    if dir == Direction::Ingress { ingress } else { egress }
                })
                .filter(|np| {
                    LabelSelector::from_object(np.at("/spec/podSelector").unwrap_or(&Value::Null))
                        .matches(pod.obj)
                })
                .map(|np| &**np)
                .collect();
            if selecting.is_empty() {
                continue;
            }
            let name = chain_name(dir, pod.ip);
            maps[i].push(format!("{} : jump {name}", pod.ip));
            chains.push((name, chain_rules(&world, pod, &selecting, dir)));
        }
    }
    let mut s = String::new();
    let _ = writeln!(s, "table ip {TABLE} {{}}\ndelete table ip {TABLE}\ntable ip {TABLE} {{");
    let chain = |s: &mut String, name: &str, head: Option<&str>, rules: &[String]| {
        let _ = writeln!(s, "  chain {name} {{");
        if let Some(h) = head {
            let _ = writeln!(s, "    {h}");
        }
        for r in rules {
            let _ = writeln!(s, "    {r}");
        }
        let _ = writeln!(s, "  }}");
    };
    let services = service_rules(o);
    chain(
        &mut s,
        "services",
        Some("type nat hook prerouting priority dstnat; policy accept;"),
        &services,
    );
    chain(
        &mut s,
        "node_services",
        Some("type nat hook output priority -100; policy accept;"),
        &services,
    );
    let established =
        ["ct state established,related accept".to_string(), "ct state invalid drop".into()];
    let mut between = established.to_vec();
    between.extend(["jump from_pods".into(), "jump to_pods".into()]);
    chain(
        &mut s,
        "between_pods",
        Some("type filter hook forward priority filter; policy accept;"),
        &between,
    );
    let mut to_node = established.to_vec();
    to_node.extend(["iifname \"lo\" accept".into(), "jump from_pods".into()]);
    chain(
        &mut s,
        "to_node",
        Some("type filter hook input priority filter; policy accept;"),
        &to_node,
    );
    for (name, addr, map) in
        [("from_pods", "ip saddr", &maps[0]), ("to_pods", "ip daddr", &maps[1])]
    {
        let rules: Vec<String> = if map.is_empty() {
            Vec::new()
        } else {
            vec![format!("{addr} vmap {{ {} }}", map.join(", "))]
        };
        chain(&mut s, name, None, &rules);
    }
    for (name, rules) in &chains {
        chain(&mut s, name, None, rules);
    }
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, ip: &str, labels: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip}}))
    }

    fn ns(name: &str, labels: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": name, "labels": labels}}))
    }

    fn policy(ns: &str, spec: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"namespace": ns, "name": "p"}, "spec": spec}))
    }

    fn rules(pods: &[Arc<Value>], namespaces: &[Arc<Value>], policies: &[Arc<Value>]) -> String {
        ruleset(&Objects { pods, namespaces, policies, services: &[], endpoints: &[] })
    }

    /// The rules of one chain, in order.
    fn chain_of(script: &str, name: &str) -> Vec<String> {
        let start = script
            .find(&format!("chain {name} {{"))
            .unwrap_or_else(|| panic!("no chain {name} in\n{script}"));
        script[start..]
            .lines()
            .skip(1)
            .take_while(|l| l.trim() != "}")
            .map(|l| l.trim().to_string())
            .collect()
    }

    #[test]
    fn unselected_pods_have_no_chain_and_pass() {
        let s = rules(&[pod("a", "x", "10.244.0.2", json!({}))], &[], &[]);
        assert!(chain_of(&s, "from_pods").is_empty());
        assert!(chain_of(&s, "to_pods").is_empty());
        assert!(!s.contains("chain from_10_244_0_2"));
    }

    #[test]
    fn default_deny_isolates_both_ways() {
        let s = rules(
            &[pod("a", "x", "10.244.0.2", json!({})), pod("b", "y", "10.244.0.3", json!({}))],
            &[],
            &[policy("a", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))],
        );
        assert_eq!(
            chain_of(&s, "from_pods"),
            ["ip saddr vmap { 10.244.0.2 : jump from_10_244_0_2 }"]
        );
        assert_eq!(chain_of(&s, "to_pods"), ["ip daddr vmap { 10.244.0.2 : jump to_10_244_0_2 }"]);
        assert_eq!(chain_of(&s, "from_10_244_0_2"), ["drop"]);
        assert_eq!(chain_of(&s, "to_10_244_0_2"), ["drop"]);
    }

    #[test]
    fn policy_types_default_to_ingress_and_to_egress_only_with_egress_rules() {
        let p = |spec: Value| policy_types(&json!({ "spec": spec }));
        assert_eq!(p(json!({})), (true, false));
        assert_eq!(p(json!({"egress": []})), (true, false));
        assert_eq!(p(json!({"egress": [{}]})), (true, true));
        assert_eq!(p(json!({"policyTypes": ["Egress"]})), (false, true));
    }

    #[test]
    fn namespace_and_pod_selectors_pick_pods_together() {
        let pods = [
            pod("gw", "g", "10.244.0.2", json!({"app": "gateway"})),
            pod("gw", "o", "10.244.0.3", json!({"app": "other"})),
            pod("t", "i", "10.244.0.4", json!({"role": "inference"})),
            pod("t", "j", "10.244.0.5", json!({})),
        ];
        let namespaces = [ns("gw", json!({"team": "edge"})), ns("t", json!({}))];
        let s = rules(
            &pods,
            &namespaces,
            &[policy(
                "t",
                json!({"podSelector": {"matchLabels": {"role": "inference"}},
                "ingress": [
                    {"from": [{"namespaceSelector": {"matchLabels": {"team": "edge"}}, "podSelector": {"matchLabels": {"app": "gateway"}}}], "ports": [{"port": "http"}]},
                    {"from": [{"podSelector": {}}]},
                    {"from": [{"namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["gw"]}]}}], "ports": [{"protocol": "UDP", "port": 53, "endPort": 60}]}
                ]}),
            )],
        );
        assert_eq!(
            chain_of(&s, "to_10_244_0_4"),
            [
                "ip saddr 10.244.0.2 tcp dport 8080 return",
                "ip saddr { 10.244.0.4, 10.244.0.5 } return",
                "ip saddr { 10.244.0.2, 10.244.0.3 } udp dport 53-60 return",
                "drop"
            ]
        );
        assert!(!s.contains("to_10_244_0_5"), "the policy selects only the inference pod");
    }

    #[test]
    fn ip_blocks_with_except_and_named_egress_ports() {
        let pods = [
            pod("t", "x", "10.244.0.2", json!({})),
            pod("u", "y", "10.244.0.3", json!({"a": "b"})),
        ];
        let s = rules(
            &pods,
            &[],
            &[policy(
                "t",
                json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [
                    {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "fc00::/7"]}}, {"ipBlock": {"cidr": "::/0"}}], "ports": [{"protocol": "TCP", "port": 443}]},
                    {"to": [{"ipBlock": {"cidr": "10.244.0.9/24"}}]},
                    {"ports": [{"port": "http"}]},
                    {"to": [{"namespaceSelector": {"matchLabels": {"nothing": "here"}}}]}
                ]}),
            )],
        );
        assert_eq!(
            chain_of(&s, "from_10_244_0_2"),
            [
                "ip daddr 0.0.0.0/0 ip daddr != { 10.0.0.0/8 } tcp dport 443 return",
                "ip daddr 10.244.0.0/24 return",
                "ip daddr 10.244.0.2 tcp dport 8080 return",
                "ip daddr 10.244.0.3 tcp dport 8080 return",
                "drop"
            ]
        );
    }

    #[test]
    fn services_translate_to_their_ready_endpoints() {
        let svc = |name: &str, ip: &str| {
            Arc::new(json!({"metadata": {"namespace": "t", "name": name},
                "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}))
        };
        let eps = |name: &str, ips: &[&str]| {
            Arc::new(json!({"metadata": {"namespace": "t", "name": name}, "subsets": [{
                "addresses": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
                "notReadyAddresses": [{"ip": "10.244.0.9"}],
                "ports": [{"name": "http", "port": 8080}]}]}))
        };
        let services = [svc("one", "10.96.0.5"), svc("two", "10.96.0.6"), svc("none", "None")];
        let endpoints = [eps("one", &["10.244.0.2"]), eps("two", &["10.244.0.2", "10.244.0.3"])];
        let s = ruleset(&Objects {
            pods: &[],
            namespaces: &[],
            policies: &[],
            services: &services,
            endpoints: &endpoints,
        });
        assert_eq!(
            chain_of(&s, "services")[1..],
            [
                "ip daddr 10.96.0.5 tcp dport 80 dnat ip to 10.244.0.2:8080",
                "ip daddr 10.96.0.6 tcp dport 80 dnat ip to numgen random mod 2 map { 0 : 10.244.0.2 . 8080, 1 : 10.244.0.3 . 8080 }"
            ]
        );
    }

    #[test]
    fn finished_pods_and_pods_outside_the_network_get_no_rules() {
        let mut done = (*pod("a", "x", "10.244.0.2", json!({}))).clone();
        done["status"]["phase"] = "Succeeded".into();
        let s = rules(
            &[Arc::new(done), pod("a", "y", "127.0.0.1", json!({}))],
            &[],
            &[policy("a", json!({"podSelector": {}}))],
        );
        assert!(chain_of(&s, "to_pods").is_empty());
    }
}
