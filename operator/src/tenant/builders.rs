//! Tenant → the objects of its isolated namespace. Pure functions, no I/O.

use std::collections::BTreeMap;

use alcove_crds::{LABEL_TENANT, OwnerKind, ResolvedPlacement, Tenant, TenantQuota, Tier};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, Node, ResourceQuota, ResourceQuotaSpec,
    Secret, Toleration,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta, OwnerReference,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::config::Config;
use crate::names::{
    COMPONENT_LABEL, INSTANCE_PORT, KEY_SECRET, MANAGED_BY, namespace_name, tenant_of_namespace,
};
use crate::objects::{quantities, string_map};

pub const QUOTA: &str = "alcove-quota";
pub const LIMITS: &str = "alcove-limits";
pub const ROLE: &str = "alcove-tenant-admin";
pub const ROLE_BINDING: &str = "alcove-tenant-admins";
pub const NETPOL_DENY: &str = "alcove-default-deny";
pub const NETPOL_DNS: &str = "alcove-allow-dns";
pub const NETPOL_SAME_NS: &str = "alcove-allow-same-namespace";
pub const NETPOL_GATEWAY: &str = "alcove-allow-gateway";

pub use alcove_crds::tenant::admin_group;

pub fn owner_ref(tenant: &Tenant) -> OwnerReference {
    tenant.controller_owner_ref(&()).expect("a stored Tenant has a name and uid")
}

/// Metadata every child of a tenant carries.
pub fn child_meta(tenant: &Tenant, name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(str::to_string),
        labels: Some(
            [
                (LABEL_TENANT.to_string(), tenant.name_any()),
                (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
            ]
            .into(),
        ),
        owner_references: Some(vec![owner_ref(tenant)]),
        ..Default::default()
    }
}

/// Metadata of a child object in its owner's namespace, garbage-collected with it: labelled
/// managed-by, with the tenant (from the namespace) and `owner_label=<owner's name>`.
pub fn owned_meta<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: &str,
    owner_label: &str,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    let ns = owner.meta().namespace.clone().unwrap_or_default();
    let owner_name = owner.meta().name.clone().unwrap_or_default();
    k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: Some(name.into()),
        namespace: Some(ns.clone()),
        labels: Some(
            [
                (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
                (
                    alcove_crds::LABEL_TENANT.to_string(),
                    tenant_of_namespace(&ns).unwrap_or_default().to_string(),
                ),
                (owner_label.to_string(), owner_name),
            ]
            .into(),
        ),
        owner_references: Some(vec![
            owner.controller_owner_ref(&()).expect("a stored object has a name and uid"),
        ]),
        ..Default::default()
    }
}

pub fn namespace(tenant: &Tenant) -> Namespace {
    let mut meta = child_meta(tenant, &namespace_name(&tenant.name_any()), None);
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    for mode in ["enforce", "audit", "warn"] {
        labels.insert(format!("pod-security.kubernetes.io/{mode}"), "restricted".into());
        labels.insert(format!("pod-security.kubernetes.io/{mode}-version"), "latest".into());
    }
    Namespace { metadata: meta, ..Default::default() }
}

fn quota_of(tenant: &Tenant) -> TenantQuota {
    tenant
        .spec
        .quota
        .clone()
        .unwrap_or_else(|| serde_json::from_value(serde_json::json!({})).expect("defaults"))
}

/// ResourceQuota from `spec.quota`: GPUs, instances and knowledge bases (object counts), pods,
/// and persistent storage.
pub fn resource_quota(tenant: &Tenant) -> ResourceQuota {
    let q = quota_of(tenant);
    // The free tier has no knowledge-base storage: its pods and claims leave no room for them.
    // One KnowledgeBase object may still exist, so that the operator can refuse it with a
    // condition that says why (a quota refusal would not name the tier).
    let (kb_objects, kbs) = if tenant.spec.tier == Tier::Free {
        (1, 0)
    } else {
        let n = q.max_knowledge_bases.unwrap_or(4);
        (n, n)
    };
    // Each instance has one pod; each knowledge base at most one indexing pod at a time. Claims:
    // each instance's history and the model cache it may fetch into, each knowledge base's
    // index (storage itself is bounded by `requests.storage`).
    let pods = q.max_instances + kbs;
    let claims = 2 * q.max_instances + kbs;
    let ns = namespace_name(&tenant.name_any());
    let counts = [q.max_gpus, q.max_instances, kb_objects, pods, claims].map(|n| n.to_string());
    ResourceQuota {
        metadata: child_meta(tenant, QUOTA, Some(&ns)),
        spec: Some(ResourceQuotaSpec {
            hard: Some(quantities([
                ("requests.nvidia.com/gpu", counts[0].as_str()),
                ("count/inferenceinstances.alcove.dev", &counts[1]),
                ("count/knowledgebases.alcove.dev", &counts[2]),
                ("pods", &counts[3]),
                ("persistentvolumeclaims", &counts[4]),
                ("requests.storage", &q.max_storage),
            ])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Defaults for containers that do not say (indexing jobs); instance pods set their own.
pub fn limit_range(tenant: &Tenant) -> LimitRange {
    let ns = namespace_name(&tenant.name_any());
    LimitRange {
        metadata: child_meta(tenant, LIMITS, Some(&ns)),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".into(),
                default_request: Some(quantities([("cpu", "250m"), ("memory", "256Mi")])),
                default: Some(quantities([("cpu", "2"), ("memory", "4Gi")])),
                max: Some(quantities([("cpu", "64"), ("memory", "512Gi")])),
                ..Default::default()
            }],
        }),
    }
}

/// Default-deny both ways, DNS, traffic inside the namespace, and ingress to instance ports from
/// the gateway namespaces only.
pub fn network_policies(tenant: &Tenant, config: &Config) -> Vec<NetworkPolicy> {
    let ns = namespace_name(&tenant.name_any());
    let policy = |name: &str, spec: NetworkPolicySpec| NetworkPolicy {
        metadata: child_meta(tenant, name, Some(&ns)),
        spec: Some(spec),
    };
    let types = |t: &[&str]| Some(t.iter().map(|s| s.to_string()).collect());
    let all_pods = || LabelSelector::default();
    let port = |protocol: &str, port: i32| NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(IntOrString::Int(port)),
        end_port: None,
    };
    let same_namespace =
        || Some(vec![NetworkPolicyPeer { pod_selector: Some(all_pods()), ..Default::default() }]);
    let labels = |pairs: &[(&str, &str)]| LabelSelector {
        match_labels: Some(string_map(pairs.iter().copied())),
        match_expressions: None,
    };
    vec![
        policy(
            NETPOL_DENY,
            NetworkPolicySpec {
                pod_selector: Some(all_pods()),
                policy_types: types(&["Ingress", "Egress"]),
                ..Default::default()
            },
        ),
        policy(
            NETPOL_DNS,
            NetworkPolicySpec {
                pod_selector: Some(all_pods()),
                policy_types: types(&["Egress"]),
                egress: Some(vec![NetworkPolicyEgressRule {
                    to: Some(vec![NetworkPolicyPeer {
                        namespace_selector: Some(labels(&[(
                            "kubernetes.io/metadata.name",
                            "kube-system",
                        )])),
                        pod_selector: Some(labels(&[("k8s-app", "kube-dns")])),
                        ..Default::default()
                    }]),
                    ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
                }]),
                ..Default::default()
            },
        ),
        policy(
            NETPOL_SAME_NS,
            NetworkPolicySpec {
                pod_selector: Some(all_pods()),
                policy_types: types(&["Ingress", "Egress"]),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: same_namespace(),
                    ports: None,
                }]),
                egress: Some(vec![NetworkPolicyEgressRule { to: same_namespace(), ports: None }]),
            },
        ),
        policy(
            NETPOL_GATEWAY,
            NetworkPolicySpec {
                pod_selector: Some(labels(&[(COMPONENT_LABEL, "inference")])),
                policy_types: types(&["Ingress"]),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        namespace_selector: Some(LabelSelector {
                            match_labels: None,
                            match_expressions: Some(vec![LabelSelectorRequirement {
                                key: "kubernetes.io/metadata.name".into(),
                                operator: "In".into(),
                                values: Some(config.gateway_namespaces.clone()),
                            }]),
                        }),
                        ..Default::default()
                    }]),
                    ports: Some(vec![port("TCP", INSTANCE_PORT)]),
                }]),
                ..Default::default()
            },
        ),
    ]
}

/// The tenant-admin Role: instances and knowledge bases, read access to what runs them, the
/// instances' API-key Secrets by name, documents as ConfigMaps; nothing about quota, policies or
/// the tenant's encryption key.
pub fn role(tenant: &Tenant, api_key_secrets: &[String]) -> Role {
    let ns = namespace_name(&tenant.name_any());
    let rule = |group: &str, resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    };
    const ALL: &[&str] = &["get", "list", "watch", "create", "update", "patch", "delete"];
    const READ: &[&str] = &["get", "list", "watch"];
    let mut rules = vec![
        rule("alcove.dev", &["inferenceinstances", "knowledgebases"], ALL),
        rule("alcove.dev", &["inferenceinstances/status", "knowledgebases/status"], READ),
        rule("", &["pods", "pods/log", "events", "services", "persistentvolumeclaims"], READ),
        rule("events.k8s.io", &["events"], READ),
        rule("", &["configmaps"], ALL),
        // Documents kept as Secrets can be written, never read back or listed: listing would
        // expose the tenant key.
        rule("", &["secrets"], &["create"]),
        rule("", &["services/proxy"], &["get", "create"]),
    ];
    if !api_key_secrets.is_empty() {
        let mut names = api_key_secrets.to_vec();
        names.sort();
        names.dedup();
        rules.push(PolicyRule { resource_names: Some(names), ..rule("", &["secrets"], &["get"]) });
    }
    Role { metadata: child_meta(tenant, ROLE, Some(&ns)), rules: Some(rules) }
}

/// The tenant's owners and its admin group (the dashboard impersonates that group).
fn admin_subjects(tenant: &Tenant) -> Vec<Subject> {
    let subject = |kind: &str, name: &str| Subject {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: kind.into(),
        name: name.into(),
        namespace: None,
    };
    let mut subjects: Vec<Subject> =
        tenant.spec.owners.iter().map(|o| subject(o.kind.as_str(), &o.name)).collect();
    let group = admin_group(&tenant.name_any());
    if !tenant.spec.owners.iter().any(|o| o.kind == OwnerKind::Group && o.name == group) {
        subjects.push(subject("Group", &group));
    }
    subjects
}

pub fn role_binding(tenant: &Tenant) -> RoleBinding {
    let ns = namespace_name(&tenant.name_any());
    RoleBinding {
        metadata: child_meta(tenant, ROLE_BINDING, Some(&ns)),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: ROLE.into(),
        },
        subjects: Some(admin_subjects(tenant)),
    }
}

/// The cluster-scoped name of a tenant's account role and its binding.
pub fn account_role_name(tenant: &str) -> String {
    format!("alcove-tenant-{tenant}-account")
}

/// The owners' rights on their own Tenant object: read it, and delete it ("delete your
/// account"), which starts the erase window. Only this one Tenant, by name.
pub fn account_role(tenant: &Tenant) -> ClusterRole {
    let name = tenant.name_any();
    ClusterRole {
        metadata: child_meta(tenant, &account_role_name(&name), None),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["alcove.dev".into()]),
            resources: Some(vec!["tenants".into()]),
            resource_names: Some(vec![name]),
            verbs: vec!["get".into(), "delete".into()],
            ..Default::default()
        }]),
        ..Default::default()
    }
}

pub fn account_role_binding(tenant: &Tenant) -> ClusterRoleBinding {
    let name = account_role_name(&tenant.name_any());
    ClusterRoleBinding {
        metadata: child_meta(tenant, &name, None),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name,
        },
        subjects: Some(admin_subjects(tenant)),
    }
}

/// The per-tenant encryption key: 256 random bits, created once and never changed by the
/// operator. Retention deletes it last, which crypto-shreds anything that escaped.
pub fn key_secret(tenant: &Tenant, key: &[u8; 32]) -> Secret {
    let ns = namespace_name(&tenant.name_any());
    let mut meta = child_meta(tenant, KEY_SECRET, Some(&ns));
    meta.annotations = Some(
        [(
            "alcove.dev/purpose".to_string(),
            "encryption key of the tenant's data at rest; never rotated silently".to_string(),
        )]
        .into(),
    );
    Secret {
        metadata: meta,
        type_: Some("Opaque".into()),
        immutable: Some(true),
        data: Some([("key".to_string(), ByteString(key.to_vec()))].into()),
        ..Default::default()
    }
}

/// Where every instance of the tenant runs: the tier's pool, always inside the region.
pub fn placement(tenant: &Tenant, config: &Config) -> ResolvedPlacement {
    let tier = config.tier(tenant.spec.tier);
    let mut node_selector: BTreeMap<String, String> = BTreeMap::new();
    let mut tolerations: Vec<Toleration> =
        tier.tolerations.iter().filter_map(|t| serde_json::from_value(t.clone()).ok()).collect();
    match tenant.spec.tier {
        Tier::Free | Tier::Basic => node_selector.extend(tier.node_selector),
        Tier::Pro => {
            node_selector.extend(tier.node_selector);
            node_selector.insert(LABEL_TENANT.into(), tenant.name_any());
            tolerations.push(Toleration {
                key: Some(LABEL_TENANT.into()),
                operator: Some("Equal".into()),
                value: Some(tenant.name_any()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            });
        }
        Tier::Enterprise => {
            if let Some(p) = &tenant.spec.placement {
                node_selector.extend(p.node_selector.clone());
                tolerations.extend(p.tolerations.iter().cloned());
            }
        }
    }
    // Residency is not negotiable: whatever the tier says, the region label is set last.
    node_selector.insert("topology.kubernetes.io/region".into(), tenant.spec.region.clone());
    ResolvedPlacement { node_selector, tolerations }
}

fn tolerated(tolerations: &[Toleration], taint: &k8s_openapi::api::core::v1::Taint) -> bool {
    tolerations.iter().any(|t| {
        let key_ok = match t.key.as_deref() {
            None | Some("") => t.operator.as_deref() == Some("Exists"),
            Some(k) => k == taint.key,
        };
        let effect_ok = t.effect.as_deref().is_none_or(|e| e.is_empty() || e == taint.effect);
        let value_ok = t.operator.as_deref() == Some("Exists")
            || t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default();
        key_ok && effect_ok && value_ok
    })
}

/// Whether a node could ever host a GPU instance placed like this (ignoring current use).
pub fn node_can_host(placement: &ResolvedPlacement, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if !placement.node_selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
        return false;
    }
    let spec = node.spec.clone().unwrap_or_default();
    if spec.unschedulable == Some(true) {
        return false;
    }
    for taint in spec.taints.unwrap_or_default() {
        if (taint.effect == "NoSchedule" || taint.effect == "NoExecute")
            && !tolerated(&placement.tolerations, &taint)
        {
            return false;
        }
    }
    let allocatable = node.status.as_ref().and_then(|s| s.allocatable.clone()).unwrap_or_default();
    allocatable.iter().any(|(k, q)| {
        (k == "nvidia.com/gpu" || k.starts_with("nvidia.com/mig-"))
            && q.0.trim() != "0"
            && !q.0.trim().is_empty()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tenant(yaml: &str) -> Tenant {
        let mut t: Tenant = serde_saphyr::from_str(yaml).unwrap();
        t.metadata.uid = Some("uid-1".into());
        t
    }

    fn example(name: &str) -> Tenant {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/good").join(name);
        tenant(&std::fs::read_to_string(path).unwrap())
    }

    fn node(labels: serde_json::Value, taints: serde_json::Value, gpus: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": "n", "labels": labels}, "spec": {"taints": taints}, "status": {"allocatable": {"nvidia.com/gpu": gpus}}})).unwrap()
    }

    #[test]
    fn namespace_is_labelled_for_isolation() {
        let t = example("tenant-basic.yaml");
        let ns = namespace(&t);
        assert_eq!(ns.metadata.name.as_deref(), Some("tenant-startup"));
        let labels = ns.metadata.labels.unwrap();
        assert_eq!(labels["alcove.dev/tenant"], "startup");
        assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
        assert_eq!(ns.metadata.owner_references.unwrap()[0].kind, "Tenant");
    }

    #[test]
    fn quota_follows_the_spec_and_free_has_no_knowledge_bases() {
        let q = resource_quota(&example("tenant-basic.yaml"));
        let hard = q.spec.unwrap().hard.unwrap();
        assert_eq!(hard["requests.nvidia.com/gpu"].0, "4");
        assert_eq!(hard["count/inferenceinstances.alcove.dev"].0, "4");
        assert_eq!(hard["count/knowledgebases.alcove.dev"].0, "4");
        assert_eq!(hard["requests.storage"].0, "50Gi");
        let free = resource_quota(&example("tenant-free.yaml")).spec.unwrap().hard.unwrap();
        // One object, to be refused with a condition; no pod or claim for it.
        assert_eq!(free["count/knowledgebases.alcove.dev"].0, "1");
        let free_spec = example("tenant-free.yaml")
            .spec
            .quota
            .unwrap_or_else(|| serde_json::from_value(json!({})).unwrap());
        assert_eq!(free["pods"].0, free_spec.max_instances.to_string());
        assert_eq!(free["persistentvolumeclaims"].0, (2 * free_spec.max_instances).to_string());
    }

    #[test]
    fn policies_deny_by_default_and_admit_the_gateway() {
        let config = Config::for_tests();
        let pols = network_policies(&example("tenant-pro.yaml"), &config);
        assert_eq!(pols.len(), 4);
        let deny = pols[0].spec.clone().unwrap();
        assert_eq!(deny.policy_types.unwrap(), vec!["Ingress", "Egress"]);
        assert!(deny.ingress.is_none() && deny.egress.is_none());
        let gw = serde_json::to_value(&pols[3]).unwrap();
        assert_eq!(
            gw["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"],
            json!(["alcove-system"])
        );
        assert_eq!(gw["spec"]["ingress"][0]["ports"][0]["port"], 8080);
    }

    #[test]
    fn role_grants_no_quota_policy_or_key_access() {
        let r = serde_json::to_value(role(&example("tenant-pro.yaml"), &["chat-api-key".into()]))
            .unwrap();
        let rules = r["rules"].as_array().unwrap();
        for rule in rules {
            let resources: Vec<&str> =
                rule["resources"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
            assert!(
                !resources.iter().any(|x| x.contains("quota")
                    || x.contains("networkpolic")
                    || x.contains("limitrange")
                    || x.contains("role")),
                "{rule}"
            );
            if resources.contains(&"secrets") {
                let verbs: Vec<&str> =
                    rule["verbs"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
                assert!(
                    verbs == ["create"] || rule["resourceNames"] == json!(["chat-api-key"]),
                    "secret access is create-only or by name: {rule}"
                );
            }
        }
        let rb = serde_json::to_value(role_binding(&example("tenant-pro.yaml"))).unwrap();
        assert_eq!(
            rb["subjects"],
            json!([
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob@acme.example"},
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "alcove:tenant:acme"},
            ])
        );
    }

    #[test]
    fn owners_may_read_and_delete_their_own_tenant_only() {
        let t = example("tenant-pro.yaml");
        let role = serde_json::to_value(account_role(&t)).unwrap();
        assert_eq!(role["metadata"]["name"], "alcove-tenant-acme-account");
        assert!(role["metadata"].get("namespace").is_none(), "cluster-scoped");
        assert_eq!(
            role["rules"],
            json!([{"apiGroups": ["alcove.dev"], "resources": ["tenants"], "resourceNames": ["acme"], "verbs": ["get", "delete"]}])
        );
        let binding = serde_json::to_value(account_role_binding(&t)).unwrap();
        assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
        assert_eq!(binding["roleRef"]["name"], "alcove-tenant-acme-account");
        assert_eq!(
            binding["subjects"],
            serde_json::to_value(role_binding(&t)).unwrap()["subjects"],
            "the same people as the tenant-admin Role"
        );
        assert_eq!(
            binding["metadata"]["ownerReferences"][0]["kind"], "Tenant",
            "collected with it"
        );
    }

    #[test]
    fn placement_by_tier_always_within_region() {
        let config = Config::for_tests();
        let basic = placement(&example("tenant-basic.yaml"), &config);
        assert_eq!(
            basic.node_selector,
            [
                ("alcove.dev/pool".into(), "shared".into()),
                ("topology.kubernetes.io/region".into(), "tw-taipei-1".into())
            ]
            .into()
        );
        let pro = placement(&example("tenant-pro.yaml"), &config);
        assert_eq!(pro.node_selector["alcove.dev/tenant"], "acme");
        assert_eq!(pro.tolerations[0].value.as_deref(), Some("acme"));
        let ent = placement(&example("tenant-enterprise.yaml"), &config);
        assert_eq!(ent.node_selector["alcove.dev/customer-pool"], "globex");
        assert_eq!(ent.node_selector["topology.kubernetes.io/region"], "tw-taipei-1");
        assert_eq!(ent.tolerations.len(), 1);
    }

    #[test]
    fn capacity_needs_region_pool_tolerated_taints_and_gpus() {
        let config = Config::for_tests();
        let pro = placement(&example("tenant-pro.yaml"), &config);
        let dedicated = node(
            json!({"topology.kubernetes.io/region": "tw-taipei-1", "alcove.dev/tenant": "acme"}),
            json!([{"key": "alcove.dev/tenant", "value": "acme", "effect": "NoSchedule"}]),
            "8",
        );
        assert!(node_can_host(&pro, &dedicated));
        let other_region = node(
            json!({"topology.kubernetes.io/region": "jp-tokyo-1", "alcove.dev/tenant": "acme"}),
            json!([]),
            "8",
        );
        assert!(!node_can_host(&pro, &other_region));
        let no_gpu = node(
            json!({"topology.kubernetes.io/region": "tw-taipei-1", "alcove.dev/tenant": "acme"}),
            json!([]),
            "0",
        );
        assert!(!node_can_host(&pro, &no_gpu));
        let basic = placement(&example("tenant-basic.yaml"), &config);
        assert!(!node_can_host(&basic, &dedicated), "shared tenants never land on dedicated nodes");
    }

    #[test]
    fn key_secret_holds_256_bits() {
        let s = key_secret(&example("tenant-basic.yaml"), &[7u8; 32]);
        let data = s.data.unwrap();
        assert_eq!(data["key"].0.len(), 32);
        assert_eq!(s.immutable, Some(true));
    }
}
