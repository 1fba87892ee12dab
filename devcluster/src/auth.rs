//! Authentication (static and service-account bearer tokens), impersonation, and RBAC
//! authorization evaluated as Kubernetes' RBAC authorizer does, plus the access-review APIs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::config::StaticToken;
use crate::error::ApiError;
use crate::meta;
use crate::resources::GroupResource;
use crate::state::State;

/// An authenticated user.
#[derive(Clone, Debug, PartialEq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    pub fn anonymous() -> UserInfo {
        UserInfo {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
            extra: BTreeMap::new(),
        }
    }

    fn authenticated(name: &str, uid: &str, mut groups: Vec<String>) -> UserInfo {
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        UserInfo { name: name.into(), uid: uid.into(), groups, extra: BTreeMap::new() }
    }

    pub fn is_superuser(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({"username": self.name, "groups": self.groups});
        if !self.uid.is_empty() {
            v["uid"] = self.uid.clone().into();
        }
        if !self.extra.is_empty() {
            v["extra"] = json!(self.extra);
        }
        v
    }
}

/// Issued service-account tokens and the static token file.
pub struct Authenticator {
    tokens: Mutex<HashMap<String, UserInfo>>,
}

impl Authenticator {
    pub fn new(static_tokens: &[StaticToken]) -> Authenticator {
        let tokens = static_tokens
            .iter()
            .map(|t| (t.token.clone(), UserInfo::authenticated(&t.user, &t.uid, t.groups.clone())))
            .collect();
        Authenticator { tokens: Mutex::new(tokens) }
    }

    pub fn add_token(&self, token: &str, user: &str, groups: &[String]) {
        self.lock().insert(token.into(), UserInfo::authenticated(user, "", groups.to_vec()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, UserInfo>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A token for a service account (TokenRequest).
    pub fn issue_service_account_token(&self, namespace: &str, name: &str, uid: &str) -> String {
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes).expect("randomness");
        let token = format!("devcluster-sa.{}", crate::meta::hex(&bytes));
        let user = UserInfo::authenticated(
            &format!("system:serviceaccount:{namespace}:{name}"),
            uid,
            vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{namespace}")],
        );
        self.lock().insert(token.clone(), user);
        token
    }

    pub fn lookup(&self, token: &str) -> Option<UserInfo> {
        self.lock().get(token).cloned()
    }

    /// The user of a request: its bearer token, or anonymous without one.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<UserInfo, ApiError> {
        let Some(h) = authorization else { return Ok(UserInfo::anonymous()) };
        let token = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
            .ok_or_else(ApiError::unauthorized)?;
        self.lookup(token.trim()).ok_or_else(ApiError::unauthorized)
    }
}

/// What a request wants to do (`authorizer.Attributes`).
#[derive(Clone, Debug, Default)]
pub struct Attributes {
    pub verb: String,
    pub resource_request: bool,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub path: String,
}

/// The result of authorization, with RBAC's explanation when allowed.
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

fn subject_matches(subject: &Value, user: &UserInfo, binding_namespace: &str) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str() {
        Some("User") => user.name == name,
        Some("Group") => user.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = subject["namespace"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or(binding_namespace);
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

fn has(list: &Value, item: &str) -> bool {
    list.as_array().is_some_and(|a| a.iter().any(|v| v == item || v == "*"))
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    if !has(&rule["verbs"], &a.verb) {
        return false;
    }
    if !a.resource_request {
        return rule["nonResourceURLs"].as_array().is_some_and(|urls| {
            urls.iter().filter_map(Value::as_str).any(|u| {
                u == "*"
                    || u == a.path
                    || (u.ends_with('*') && a.path.starts_with(&u[..u.len() - 1]))
            })
        });
    }
    if !has(&rule["apiGroups"], &a.group) {
        return false;
    }
    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resource_ok = rule["resources"].as_array().is_some_and(|rs| {
        rs.iter().filter_map(Value::as_str).any(|r| {
            r == "*"
                || r == combined
                || (!a.subresource.is_empty() && r == format!("*/{}", a.subresource))
        })
    });
    if !resource_ok {
        return false;
    }
    match rule["resourceNames"].as_array() {
        Some(names) if !names.is_empty() => {
            !a.name.is_empty() && names.iter().any(|n| n == a.name.as_str())
        }
        _ => true,
    }
}

/// The rules a binding grants, with a description for "allowed by" reasons.
fn role_rules(st: &State, role_ref: &Value, binding_namespace: &str) -> Vec<Value> {
    let name = role_ref["name"].as_str().unwrap_or_default();
    let role = match role_ref["kind"].as_str() {
        Some("ClusterRole") => {
            st.get(&GroupResource::new("rbac.authorization.k8s.io", "clusterroles"), "", name)
        }
        Some("Role") => st.get(
            &GroupResource::new("rbac.authorization.k8s.io", "roles"),
            binding_namespace,
            name,
        ),
        _ => None,
    };
    role.and_then(|r| r["rules"].as_array().cloned()).unwrap_or_default()
}

/// RBAC: allowed when any binding that names the user grants a matching rule.
pub fn authorize(st: &State, user: &UserInfo, a: &Attributes) -> Decision {
    if user.is_superuser() {
        return Decision { allowed: true, reason: String::new() };
    }
    let crbs =
        st.list(&GroupResource::new("rbac.authorization.k8s.io", "clusterrolebindings"), None);
    for b in &crbs {
        if b["subjects"].as_array().into_iter().flatten().any(|s| subject_matches(s, user, "")) {
            let rules = role_rules(st, &b["roleRef"], "");
            if rules.iter().any(|r| rule_allows(r, a)) {
                return Decision {
                    allowed: true,
                    reason: format!(
                        "RBAC: allowed by ClusterRoleBinding {:?} of ClusterRole {:?} to {}",
                        meta::name(b),
                        b["roleRef"]["name"].as_str().unwrap_or_default(),
                        describe(user)
                    ),
                };
            }
        }
    }
    if a.resource_request && !a.namespace.is_empty() {
        let rbs = st.list(
            &GroupResource::new("rbac.authorization.k8s.io", "rolebindings"),
            Some(&a.namespace),
        );
        for b in &rbs {
            if b["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| subject_matches(s, user, &a.namespace))
            {
                let rules = role_rules(st, &b["roleRef"], &a.namespace);
                if rules.iter().any(|r| rule_allows(r, a)) {
                    return Decision {
                        allowed: true,
                        reason: format!(
                            "RBAC: allowed by RoleBinding \"{}/{}\" of {} {:?} to {}",
                            meta::name(b),
                            a.namespace,
                            b["roleRef"]["kind"].as_str().unwrap_or_default(),
                            b["roleRef"]["name"].as_str().unwrap_or_default(),
                            describe(user)
                        ),
                    };
                }
            }
        }
    }
    Decision { allowed: false, reason: String::new() }
}

fn describe(user: &UserInfo) -> String {
    if let Some(rest) = user.name.strip_prefix("system:serviceaccount:") {
        let (ns, name) = rest.split_once(':').unwrap_or((rest, ""));
        return format!("ServiceAccount {name:?}/{ns:?}").replace("\"/\"", "/");
    }
    format!("User {:?}", user.name)
}

/// RBAC escalation prevention, as kube-apiserver's RBAC storage does it: writing a Role or
/// ClusterRole needs `escalate` on it or every permission it grants; writing a binding needs
/// `bind` on the role it references or every permission of that role. `obj` is the object as it
/// would be stored.
pub fn check_escalation(
    st: &State,
    user: &UserInfo,
    resource: &str,
    namespace: &str,
    obj: &Value,
) -> Result<(), ApiError> {
    if user.is_superuser() {
        return Ok(());
    }
    let name = meta::name(obj);
    let (rules, verb, role_resource, role_name) = match resource {
        "roles" | "clusterroles" => (
            obj["rules"].as_array().cloned().unwrap_or_default(),
            "escalate",
            resource.to_string(),
            name.to_string(),
        ),
        "rolebindings" | "clusterrolebindings" => {
            let role_ref = &obj["roleRef"];
            let kind = role_ref["kind"].as_str().unwrap_or_default();
            let res = if kind == "Role" { "roles" } else { "clusterroles" };
            let found = match kind {
                "ClusterRole" => st.get(
                    &GroupResource::new("rbac.authorization.k8s.io", "clusterroles"),
                    "",
                    role_ref["name"].as_str().unwrap_or_default(),
                ),
                _ => st.get(
                    &GroupResource::new("rbac.authorization.k8s.io", "roles"),
                    namespace,
                    role_ref["name"].as_str().unwrap_or_default(),
                ),
            };
            let rules = found.and_then(|r| r["rules"].as_array().cloned()).unwrap_or_default();
            (
                rules,
                "bind",
                res.to_string(),
                role_ref["name"].as_str().unwrap_or_default().to_string(),
            )
        }
        _ => return Ok(()),
    };
    let privileged = Attributes {
        verb: verb.into(),
        resource_request: true,
        group: "rbac.authorization.k8s.io".into(),
        resource: role_resource,
        namespace: namespace.into(),
        name: role_name,
        ..Default::default()
    };
    if authorize(st, user, &privileged).allowed {
        return Ok(());
    }
    let missing: Vec<String> =
        rules.iter().filter(|r| !rule_held(st, user, namespace, r)).map(describe_rule).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let qualified = format!("{resource}.rbac.authorization.k8s.io");
    Err(ApiError::forbidden(
        format!(
            "{qualified} {name:?} is forbidden: user {:?} (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            user.groups,
            missing.join("\n")
        ),
        "rbac.authorization.k8s.io",
        resource,
        name,
    ))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect()
}

/// Whether `user` holds every permission `rule` grants, in `namespace` (empty: cluster-wide).
fn rule_held(st: &State, user: &UserInfo, namespace: &str, rule: &Value) -> bool {
    let verbs = strings(&rule["verbs"]);
    let urls = strings(&rule["nonResourceURLs"]);
    if !urls.is_empty() {
        return urls.iter().all(|u| {
            verbs.iter().all(|v| {
                authorize(
                    st,
                    user,
                    &Attributes { verb: v.clone(), path: u.clone(), ..Default::default() },
                )
                .allowed
            })
        });
    }
    let names = match strings(&rule["resourceNames"]) {
        n if n.is_empty() => vec![String::new()],
        n => n,
    };
    strings(&rule["apiGroups"]).iter().all(|g| {
        strings(&rule["resources"]).iter().all(|r| {
            let (resource, subresource) = r
                .split_once('/')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .unwrap_or((r.clone(), String::new()));
            verbs.iter().all(|v| {
                names.iter().all(|n| {
                    let a = Attributes {
                        verb: v.clone(),
                        resource_request: true,
                        group: g.clone(),
                        resource: resource.clone(),
                        subresource: subresource.clone(),
                        namespace: namespace.into(),
                        name: n.clone(),
                        path: String::new(),
                    };
                    authorize(st, user, &a).allowed
                })
            })
        })
    })
}

/// A rule the way kube-apiserver prints it in escalation errors.
fn describe_rule(rule: &Value) -> String {
    let list =
        |k: &str| strings(&rule[k]).iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(" ");
    let mut parts = Vec::new();
    for (field, key) in [
        ("APIGroups", "apiGroups"),
        ("Resources", "resources"),
        ("ResourceNames", "resourceNames"),
        ("NonResourceURLs", "nonResourceURLs"),
        ("Verbs", "verbs"),
    ] {
        if !strings(&rule[key]).is_empty() {
            parts.push(format!("{field}:[{}]", list(key)));
        }
    }
    format!("{{{}}}", parts.join(", "))
}

/// kube-apiserver's 403 for a refused request.
pub fn forbidden(user: &UserInfo, a: &Attributes) -> ApiError {
    if !a.resource_request {
        return ApiError::forbidden(
            format!("forbidden: User {:?} cannot {} path {:?}", user.name, a.verb, a.path),
            "",
            "",
            "",
        );
    }
    let resource = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace {:?}", a.namespace)
    };
    let why = format!(
        "User {:?} cannot {} resource {:?} in API group {:?} {scope}",
        user.name, a.verb, resource, a.group
    );
    let qualified =
        if a.group.is_empty() { a.resource.clone() } else { format!("{}.{}", a.resource, a.group) };
    let message = if a.name.is_empty() {
        format!("{qualified} is forbidden: {why}")
    } else {
        format!("{qualified} {:?} is forbidden: {why}", a.name)
    };
    ApiError::forbidden(message, &a.group, &a.resource, &a.name)
}

/// Applies `Impersonate-*` headers after checking the requester may impersonate each of them.
pub fn impersonate(
    st: &State,
    user: UserInfo,
    headers: &axum::http::HeaderMap,
) -> Result<UserInfo, ApiError> {
    let imp_user =
        headers.get("impersonate-user").and_then(|v| v.to_str().ok()).map(str::to_string);
    let imp_groups: Vec<String> = headers
        .get_all("impersonate-group")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    let imp_uid = headers.get("impersonate-uid").and_then(|v| v.to_str().ok()).map(str::to_string);
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in headers {
        if let Some(key) = k.as_str().strip_prefix("impersonate-extra-")
            && let Ok(s) = v.to_str()
        {
            extra.entry(key.to_string()).or_default().push(s.to_string());
        }
    }
    let Some(target) = imp_user else {
        if !imp_groups.is_empty() || imp_uid.is_some() || !extra.is_empty() {
            return Err(ApiError::internal(
                "requested impersonation of groups, uid or extra without impersonating a user",
            ));
        }
        return Ok(user);
    };
    let check = |a: Attributes| -> Result<(), ApiError> {
        if authorize(st, &user, &a).allowed { Ok(()) } else { Err(forbidden(&user, &a)) }
    };
    if let Some(rest) = target.strip_prefix("system:serviceaccount:") {
        let (ns, name) = rest.split_once(':').unwrap_or((rest, ""));
        check(Attributes {
            verb: "impersonate".into(),
            resource_request: true,
            resource: "serviceaccounts".into(),
            namespace: ns.into(),
            name: name.into(),
            ..Default::default()
        })?;
    } else {
        check(Attributes {
            verb: "impersonate".into(),
            resource_request: true,
            resource: "users".into(),
            name: target.clone(),
            ..Default::default()
        })?;
    }
    for g in &imp_groups {
        check(Attributes {
            verb: "impersonate".into(),
            resource_request: true,
            resource: "groups".into(),
            name: g.clone(),
            ..Default::default()
        })?;
    }
    if let Some(uid) = &imp_uid {
        check(Attributes {
            verb: "impersonate".into(),
            resource_request: true,
            group: "authentication.k8s.io".into(),
            resource: "uids".into(),
            name: uid.clone(),
            ..Default::default()
        })?;
    }
    for (k, vs) in &extra {
        for v in vs {
            check(Attributes {
                verb: "impersonate".into(),
                resource_request: true,
                group: "authentication.k8s.io".into(),
                resource: "userextras".into(),
                subresource: k.clone(),
                name: v.clone(),
                ..Default::default()
            })?;
        }
    }
    let mut groups = imp_groups;
    if let Some(rest) = target.strip_prefix("system:serviceaccount:") {
        let ns = rest.split(':').next().unwrap_or_default();
        groups.push("system:serviceaccounts".into());
        groups.push(format!("system:serviceaccounts:{ns}"));
    }
    if target != "system:anonymous" && !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".into());
    }
    Ok(UserInfo { name: target, uid: imp_uid.unwrap_or_default(), groups, extra })
}

fn attrs_from_review(spec: &Value) -> Attributes {
    if let Some(r) = spec.get("resourceAttributes") {
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
        Attributes {
            verb: s("verb"),
            resource_request: true,
            group: s("group"),
            resource: s("resource"),
            subresource: s("subresource"),
            namespace: s("namespace"),
            name: s("name"),
            path: String::new(),
        }
    } else {
        let n = &spec["nonResourceAttributes"];
        Attributes {
            verb: n["verb"].as_str().unwrap_or_default().into(),
            resource_request: false,
            path: n["path"].as_str().unwrap_or_default().into(),
            ..Default::default()
        }
    }
}

/// Answers SelfSubjectAccessReview, SubjectAccessReview, SelfSubjectRulesReview,
/// SelfSubjectReview and TokenReview. `body` is the request object; the answer echoes it with
/// `status` filled.
pub fn review(
    st: &State,
    auth: &Authenticator,
    kind: &str,
    user: &UserInfo,
    mut body: Value,
) -> Result<Value, ApiError> {
    match kind {
        "SelfSubjectAccessReview" | "SubjectAccessReview" => {
            let subject = if kind == "SubjectAccessReview" {
                let spec = &body["spec"];
                let mut groups: Vec<String> = spec["groups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|g| g.as_str().map(str::to_string))
                    .collect();
                if groups.is_empty() {
                    groups.push("system:authenticated".into());
                }
                UserInfo {
                    name: spec["user"].as_str().unwrap_or_default().into(),
                    uid: String::new(),
                    groups,
                    extra: BTreeMap::new(),
                }
            } else {
                user.clone()
            };
            let d = authorize(st, &subject, &attrs_from_review(&body["spec"]));
            body["status"] = json!({"allowed": d.allowed});
            if !d.reason.is_empty() {
                body["status"]["reason"] = d.reason.into();
            }
        }
        "SelfSubjectRulesReview" => {
            let ns = body["spec"]["namespace"].as_str().unwrap_or_default().to_string();
            let (resource, non_resource) = rules_for(st, user, &ns);
            body["status"] = json!({"resourceRules": resource, "nonResourceRules": non_resource, "incomplete": false});
        }
        "SelfSubjectReview" => {
            body["status"] = json!({"userInfo": user.to_json()});
        }
        "TokenReview" => {
            let token = body["spec"]["token"].as_str().unwrap_or_default();
            body["status"] = match auth.lookup(token) {
                Some(u) => json!({"authenticated": true, "user": u.to_json()}),
                None => json!({"authenticated": false}),
            };
        }
        other => {
            return Err(ApiError::not_found(
                crate::error::Qualified { group: "", resource: other },
                "",
            ));
        }
    }
    meta::metadata_mut(&mut body).insert("creationTimestamp".into(), Value::Null);
    Ok(body)
}

/// Every rule that applies to the user in a namespace (for `kubectl auth can-i --list`).
fn rules_for(st: &State, user: &UserInfo, namespace: &str) -> (Vec<Value>, Vec<Value>) {
    let mut resource = Vec::new();
    let mut non_resource = Vec::new();
    let mut take = |rules: Vec<Value>| {
        for r in rules {
            if r.get("nonResourceURLs").is_some() {
                non_resource
                    .push(json!({"verbs": r["verbs"], "nonResourceURLs": r["nonResourceURLs"]}));
            } else {
                let mut rr = json!({"verbs": r["verbs"], "apiGroups": r["apiGroups"], "resources": r["resources"]});
                if r.get("resourceNames").is_some() {
                    rr["resourceNames"] = r["resourceNames"].clone();
                }
                resource.push(rr);
            }
        }
    };
    if user.is_superuser() {
        take(vec![
            json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}),
            json!({"verbs": ["*"], "nonResourceURLs": ["*"]}),
        ]);
    }
    for b in st.list(&GroupResource::new("rbac.authorization.k8s.io", "clusterrolebindings"), None)
    {
        if b["subjects"].as_array().into_iter().flatten().any(|s| subject_matches(s, user, "")) {
            take(role_rules(st, &b["roleRef"], ""));
        }
    }
    if !namespace.is_empty() {
        for b in st
            .list(&GroupResource::new("rbac.authorization.k8s.io", "rolebindings"), Some(namespace))
        {
            if b["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| subject_matches(s, user, namespace))
            {
                take(role_rules(st, &b["roleRef"], namespace));
            }
        }
    }
    (resource, non_resource)
}

/// The cluster roles and bindings a fresh kube-apiserver bootstraps that matter here.
pub fn bootstrap_rbac() -> Vec<(GroupResource, Value)> {
    let cr = |name: &str, rules: Value| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}}, "rules": rules})
    };
    let crb = |name: &str, role: &str, subjects: Value| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}, "subjects": subjects})
    };
    let group =
        |g: &str| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g});
    let read = json!(["get", "list", "watch"]);
    let write = json!(["create", "delete", "deletecollection", "patch", "update"]);
    let roles = GroupResource::new("rbac.authorization.k8s.io", "clusterroles");
    let bindings = GroupResource::new("rbac.authorization.k8s.io", "clusterrolebindings");
    vec![
        (
            roles.clone(),
            cr(
                "cluster-admin",
                json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
            ),
        ),
        (
            roles.clone(),
            cr(
                "system:discovery",
                json!([{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"], "verbs": ["get"]}]),
            ),
        ),
        (
            roles.clone(),
            cr(
                "system:public-info-viewer",
                json!([{"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}]),
            ),
        ),
        (
            roles.clone(),
            cr(
                "system:basic-user",
                json!([
                    {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
                    {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
                ]),
            ),
        ),
        (
            roles.clone(),
            cr(
                "view",
                json!([{"apiGroups": ["", "apps", "batch", "networking.k8s.io", "policy", "discovery.k8s.io"], "resources": ["pods", "pods/log", "services", "endpoints", "configmaps", "persistentvolumeclaims", "events", "deployments", "replicasets", "statefulsets", "jobs", "ingresses", "networkpolicies", "poddisruptionbudgets", "endpointslices", "serviceaccounts", "resourcequotas", "limitranges"], "verbs": read}]),
            ),
        ),
        (
            roles.clone(),
            cr(
                "edit",
                json!([
                    {"apiGroups": ["", "apps", "batch", "networking.k8s.io", "policy", "discovery.k8s.io"], "resources": ["pods", "pods/log", "services", "endpoints", "configmaps", "secrets", "persistentvolumeclaims", "events", "deployments", "replicasets", "statefulsets", "jobs", "ingresses", "networkpolicies", "poddisruptionbudgets", "endpointslices", "serviceaccounts"], "verbs": read},
                    {"apiGroups": ["", "apps", "batch", "networking.k8s.io", "policy"], "resources": ["pods", "services", "configmaps", "secrets", "persistentvolumeclaims", "deployments", "replicasets", "statefulsets", "jobs", "ingresses", "networkpolicies", "poddisruptionbudgets", "serviceaccounts"], "verbs": write},
                ]),
            ),
        ),
        (bindings.clone(), crb("cluster-admin", "cluster-admin", json!([group("system:masters")]))),
        (
            bindings.clone(),
            crb("system:discovery", "system:discovery", json!([group("system:authenticated")])),
        ),
        (
            bindings.clone(),
            crb("system:basic-user", "system:basic-user", json!([group("system:authenticated")])),
        ),
        (
            bindings,
            crb(
                "system:public-info-viewer",
                "system:public-info-viewer",
                json!([group("system:authenticated"), group("system:unauthenticated")]),
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rbac_rule_matching() {
        let rule = json!({"apiGroups": ["alcove.dev"], "resources": ["inferenceinstances", "pods/log"], "verbs": ["get", "create"]});
        let a = |group: &str, resource: &str, sub: &str, verb: &str| Attributes {
            verb: verb.into(),
            resource_request: true,
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            ..Default::default()
        };
        assert!(rule_allows(&rule, &a("alcove.dev", "inferenceinstances", "", "create")));
        assert!(!rule_allows(&rule, &a("alcove.dev", "inferenceinstances", "", "delete")));
        assert!(!rule_allows(&rule, &a("", "inferenceinstances", "", "get")));
        assert!(rule_allows(
            &json!({"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}),
            &a("", "pods", "log", "get")
        ));
        assert!(!rule_allows(
            &json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}),
            &a("", "pods", "log", "get")
        ));
        let named = json!({"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["k"], "verbs": ["get"]});
        let mut get_k = a("", "secrets", "", "get");
        get_k.name = "k".into();
        assert!(rule_allows(&named, &get_k));
        assert!(!rule_allows(&named, &a("", "secrets", "", "list")));
    }

    #[test]
    fn forbidden_messages() {
        let u = UserInfo::authenticated("alice", "", vec![]);
        let e = forbidden(
            &u,
            &Attributes {
                verb: "list".into(),
                resource_request: true,
                resource: "secrets".into(),
                namespace: "tenant-b".into(),
                ..Default::default()
            },
        );
        assert_eq!(
            e.message,
            "secrets is forbidden: User \"alice\" cannot list resource \"secrets\" in API group \"\" in the namespace \"tenant-b\""
        );
        let e = forbidden(
            &u,
            &Attributes {
                verb: "get".into(),
                resource_request: true,
                group: "alcove.dev".into(),
                resource: "tenants".into(),
                name: "t".into(),
                ..Default::default()
            },
        );
        assert_eq!(
            e.message,
            "tenants.alcove.dev \"t\" is forbidden: User \"alice\" cannot get resource \"tenants\" in API group \"alcove.dev\" at the cluster scope"
        );
    }
}
