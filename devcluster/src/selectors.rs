//! Label and field selectors, parsed from query strings as apimachinery's `labels.Parse` and
//! `fields.ParseSelector` accept them.

use serde_json::Value;

use crate::meta::{self, At};

#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; empty selects everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector {
    reqs: Vec<Requirement>,
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        for term in split_top_level(s) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            reqs.push(parse_requirement(term)?);
        }
        Ok(LabelSelector { reqs })
    }

    /// From a plain map selector (Service `spec.selector`): every pair must match.
    pub fn from_map(m: &serde_json::Map<String, Value>) -> LabelSelector {
        LabelSelector {
            reqs: m
                .iter()
                .map(|(k, v)| Requirement::Eq(k.clone(), v.as_str().unwrap_or_default().into()))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// From a `metav1.LabelSelector` object (`matchLabels` and `matchExpressions`, all must
    /// hold); an empty or missing one selects everything. An unknown operator selects nothing.
    pub fn from_object(v: &Value) -> LabelSelector {
        let mut reqs: Vec<Requirement> = v["matchLabels"]
            .as_object()
            .map(|m| LabelSelector::from_map(m).reqs)
            .unwrap_or_default();
        for e in v["matchExpressions"].as_array().into_iter().flatten() {
            let key = e["key"].as_str().unwrap_or_default().to_string();
            let values: Vec<String> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect();
            reqs.push(match e["operator"].as_str() {
                Some("In") => Requirement::In(key, values),
                Some("NotIn") => Requirement::NotIn(key, values),
                Some("Exists") => Requirement::Exists(key),
                Some("DoesNotExist") => Requirement::NotExists(key),
                _ => Requirement::In(key, Vec::new()),
            });
        }
        LabelSelector { reqs }
    }

    /// What `from_map(m).matches(obj)` answers, without building the selector: the endpoints
    /// controller asks it of every Service in a namespace for every pod change.
    pub fn map_matches(m: &serde_json::Map<String, Value>, obj: &Value) -> bool {
        let labels = meta::labels(obj);
        m.iter().all(|(k, v)| {
            labels.and_then(|l| l.get(k)).and_then(Value::as_str)
                == Some(v.as_str().unwrap_or_default())
        })
    }

    pub fn matches_labels(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|r| match r {
            Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEq(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.matches_labels(meta::labels(obj))
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn check_key(k: &str) -> Result<String, String> {
    if meta::is_qualified_name(k) {
        Ok(k.to_string())
    } else {
        Err(format!(
            "unable to parse requirement: invalid label key \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.'"
        ))
    }
}

fn parse_requirement(term: &str) -> Result<Requirement, String> {
    if let Some(k) = term.strip_prefix('!') {
        return Ok(Requirement::NotExists(check_key(k.trim())?));
    }
    for (op, ctor) in [(" notin ", false), (" in ", true)] {
        if let Some(idx) = term.find(op) {
            let key = check_key(term[..idx].trim())?;
            let rest = term[idx + op.len()..].trim();
            let inner =
                rest.strip_prefix('(').and_then(|r| r.strip_suffix(')')).ok_or_else(|| {
                    format!("unable to parse requirement: found '{rest}', expected: '('")
                })?;
            let values: Vec<String> =
                inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect();
            return Ok(if ctor {
                Requirement::In(key, values)
            } else {
                Requirement::NotIn(key, values)
            });
        }
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Requirement::NotEq(check_key(k.trim())?, v.trim().to_string()));
    }
    if let Some((k, v)) = term.split_once("==") {
        return Ok(Requirement::Eq(check_key(k.trim())?, v.trim().to_string()));
    }
    if let Some((k, v)) = term.split_once('=') {
        return Ok(Requirement::Eq(check_key(k.trim())?, v.trim().to_string()));
    }
    Ok(Requirement::Exists(check_key(term)?))
}

/// A parsed field selector: `field=value`, `field==value`, `field!=value`, comma-separated.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub fn parse(s: &str) -> Result<FieldSelector, String> {
        let mut reqs = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, eq, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: '{s}'; can't understand '{term}'"));
            };
            reqs.push((field.trim().to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector { reqs })
    }

    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.reqs.iter().map(|(f, _, _)| f.as_str())
    }

    /// The value a `metadata.name=` term asks for (lets a get-by-name list skip a scan).
    pub fn name(&self) -> Option<&str> {
        self.reqs.iter().find(|(f, eq, _)| f == "metadata.name" && *eq).map(|(_, _, v)| v.as_str())
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(field, eq, value)| {
            let actual = field_value(obj, field);
            (actual.as_deref() == Some(value.as_str())) == *eq
        })
    }
}

/// The value of a selectable field; missing fields select as the empty string, as in Kubernetes.
fn field_value(obj: &Value, field: &str) -> Option<String> {
    let pointer = format!("/{}", field.replace('.', "/"));
    match obj.at(&pointer) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => None,
        None => Some(String::new()),
    }
}

/// Fields each built-in kind may be selected by (beyond `metadata.name` and `metadata.namespace`).
pub fn selectable_fields(group: &str, resource: &str) -> &'static [&'static str] {
    match (group, resource) {
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "events") | ("events.k8s.io", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
            "regarding.kind",
            "regarding.name",
            "regarding.namespace",
            "regarding.uid",
        ],
        ("", "secrets") => &["type"],
        ("", "namespaces") => &["status.phase"],
        ("", "nodes") => &["spec.unschedulable"],
        ("", "persistentvolumeclaims") => &[],
        ("batch", "jobs") => &["status.successful"],
        ("", "replicationcontrollers") => &["status.replicas"],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_map_matches_as_the_selector_built_from_it() {
        let pods = [
            json!({"metadata": {"labels": {"app": "a", "tier": "web"}}}),
            json!({"metadata": {"labels": {"app": "a"}}}),
            json!({"metadata": {"labels": {"app": "b", "tier": "web"}}}),
            json!({"metadata": {"labels": {"app": ""}}}),
            json!({"metadata": {}}),
        ];
        let selectors = [
            json!({"app": "a"}),
            json!({"app": "a", "tier": "web"}),
            json!({"app": ""}),
            json!({"app": 1}),
            json!({}),
        ];
        let mut matched = 0;
        for sel in &selectors {
            let sel = sel.as_object().unwrap();
            for pod in &pods {
                let built = LabelSelector::from_map(sel).matches(pod);
                assert_eq!(LabelSelector::map_matches(sel, pod), built, "{sel:?} {pod}");
                matched += built as usize;
            }
        }
        assert_eq!(matched, 2 + 1 + 1 + 1 + 5, "the cases both match and miss");
    }

    #[test]
    fn label_selectors() {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        for (sel, want) in [
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("app in (web, api)", true),
            ("tier notin (front)", false),
            ("app", true),
            ("!missing", true),
            ("!app", false),
            ("", true),
        ] {
            assert_eq!(LabelSelector::parse(sel).unwrap().matches(&obj), want, "{sel}");
        }
        assert!(LabelSelector::parse("bad key=1").is_err());
    }

    #[test]
    fn field_selectors() {
        let obj =
            json!({"metadata": {"name": "a", "namespace": "n"}, "status": {"phase": "Running"}});
        assert!(FieldSelector::parse("metadata.name=a").unwrap().matches(&obj));
        assert!(!FieldSelector::parse("status.phase!=Running").unwrap().matches(&obj));
        assert!(FieldSelector::parse("spec.nodeName=").unwrap().matches(&obj));
        assert_eq!(FieldSelector::parse("metadata.name==a").unwrap().name(), Some("a"));
    }
}
