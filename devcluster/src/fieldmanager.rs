//! Server-side apply and `metadata.managedFields`, following structured-merge-diff: field sets
//! (FieldsV1), the merge of an applied configuration into the live object, pruning of fields a
//! manager stopped applying, conflict detection between managers, and ownership changes on
//! ordinary updates.

use crate::meta::At;
use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::typeinfo::{ListKind, TypeInfo};

/// A set of field paths, as a tree keyed by FieldsV1 path elements (`f:name`, `k:{...}`,
/// `v:value`, `i:index`). `member` marks the path itself as part of the set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSet {
    pub member: bool,
    pub children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(FieldSet::is_empty)
    }

    pub fn from_fields_v1(v: &Value) -> FieldSet {
        let mut set = FieldSet::default();
        if let Some(map) = v.as_object() {
            for (k, child) in map {
                if k == "." {
                    set.member = true;
                } else {
                    let mut c = FieldSet::from_fields_v1(child);
                    if child.as_object().is_some_and(|m| m.is_empty()) {
                        c.member = true;
                    }
                    set.children.insert(k.clone(), c);
                }
            }
        }
        set
    }

    pub fn to_fields_v1(&self) -> Value {
        let mut map = Map::new();
        for (k, child) in &self.children {
            if child.is_empty() {
                continue;
            }
            let mut inner = child.to_fields_v1();
            if child.member && inner.as_object().is_some_and(|m| !m.is_empty()) {
                inner.as_object_mut().expect("object").insert(".".into(), json!({}));
            }
            map.insert(k.clone(), inner);
        }
        Value::Object(map)
    }

    pub fn insert(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.member = true,
            Some((head, rest)) => self.children.entry(head.clone()).or_default().insert(rest),
        }
    }

    pub fn contains(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => self.member,
            Some((head, rest)) => self.children.get(head).is_some_and(|c| c.contains(rest)),
        }
    }

    pub fn union(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        out.member |= other.member;
        for (k, c) in &other.children {
            let merged = match out.children.get(k) {
                Some(mine) => mine.union(c),
                None => c.clone(),
            };
            out.children.insert(k.clone(), merged);
        }
        out
    }

    /// Paths in `self` that are not members of `other` (exact paths, not subtrees).
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet { member: self.member && !other.member, children: BTreeMap::new() };
        for (k, c) in &self.children {
            let d = match other.children.get(k) {
                Some(o) => c.difference(o),
                None => c.clone(),
            };
            if !d.is_empty() {
                out.children.insert(k.clone(), d);
            }
        }
        out
    }

    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet { member: self.member && other.member, children: BTreeMap::new() };
        for (k, c) in &self.children {
            if let Some(o) = other.children.get(k) {
                let i = c.intersection(o);
                if !i.is_empty() {
                    out.children.insert(k.clone(), i);
                }
            }
        }
        out
    }

    /// Every member path, depth first.
    pub fn paths(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.member {
            out.push(prefix.clone());
        }
        for (k, c) in &self.children {
            prefix.push(k.clone());
            c.collect(prefix, out);
            prefix.pop();
        }
    }

    /// Drops the paths no manager may own (identity and bookkeeping metadata), and keeps either
    /// only `status` (status subresource) or everything but `status` (main resource, when the
    /// kind has a status subresource).
    pub fn strip(mut self, scope: Scope) -> FieldSet {
        for k in ["f:apiVersion", "f:kind"] {
            self.children.remove(k);
        }
        if let Some(meta) = self.children.get_mut("f:metadata") {
            meta.member = false;
            for k in [
                "f:name",
                "f:namespace",
                "f:creationTimestamp",
                "f:selfLink",
                "f:uid",
                "f:generation",
                "f:managedFields",
                "f:resourceVersion",
                "f:deletionTimestamp",
                "f:deletionGracePeriodSeconds",
            ] {
                meta.children.remove(k);
            }
        }
        match scope {
            Scope::Everything => {}
            Scope::MainResource => {
                self.children.remove("f:status");
            }
            Scope::StatusOnly => self.children.retain(|k, _| k == "f:status"),
        }
        self
    }
}

/// Which part of an object a request may manage.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scope {
    Everything,
    MainResource,
    StatusOnly,
}

fn field_pe(name: &str) -> String {
    format!("f:{name}")
}

/// The path element naming a list item.
fn item_pe(item: &Value, kind: &ListKind, index: usize) -> String {
    match kind {
        ListKind::Map(keys) => {
            let mut key = Map::new();
            let mut sorted = keys.clone();
            sorted.sort();
            for k in sorted {
                if let Some(v) = item.get(&k) {
                    key.insert(k, v.clone());
                }
            }
            format!("k:{}", Value::Object(key))
        }
        ListKind::Set => format!("v:{item}"),
        ListKind::Atomic => format!("i:{index}"),
    }
}

/// Renders a FieldsV1 path like structured-merge-diff's `Path.String()`: `.spec.containers[name="c"].image`.
pub fn path_string(path: &[String]) -> String {
    let mut s = String::new();
    for pe in path {
        if let Some(f) = pe.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = pe.strip_prefix("k:") {
            let obj: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = obj.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = pe.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        } else if let Some(i) = pe.strip_prefix("i:") {
            s.push_str(&format!("[{i}]"));
        }
    }
    s
}

/// The field set an applied configuration claims (`ToFieldSet`).
pub fn to_fieldset(value: &Value, ti: &TypeInfo, names: &mut Vec<String>) -> FieldSet {
    let mut set = FieldSet::default();
    match value {
        Value::Object(map) => {
            let names_ref: Vec<&str> = names.iter().map(String::as_str).collect();
            if ti.map_is_atomic(&names_ref) && !names.is_empty() {
                set.member = true;
                return set;
            }
            for (k, v) in map {
                names.push(k.clone());
                let mut child = to_fieldset(v, ti, names);
                names.pop();
                let leaf = match v {
                    Value::Object(m) => m.is_empty(),
                    Value::Array(_) => false,
                    _ => true,
                };
                if leaf {
                    child.member = true;
                }
                set.children.insert(field_pe(k), child);
            }
        }
        Value::Array(items) => {
            let names_ref: Vec<&str> = names.iter().map(String::as_str).collect();
            let kind = ti.list_kind(&names_ref);
            if kind == ListKind::Atomic {
                set.member = true;
                return set;
            }
            for (i, item) in items.iter().enumerate() {
                let mut child = if matches!(kind, ListKind::Map(_)) {
                    to_fieldset(item, ti, names)
                } else {
                    FieldSet::default()
                };
                child.member = true;
                set.children.insert(item_pe(item, &kind, i), child);
            }
        }
        _ => set.member = true,
    }
    set
}

/// Fields added, modified and removed between two versions of an object (`Compare`).
#[derive(Default, Debug)]
pub struct Comparison {
    pub added: FieldSet,
    pub modified: FieldSet,
    pub removed: FieldSet,
}

impl Comparison {}

pub fn compare(lhs: Option<&Value>, rhs: Option<&Value>, ti: &TypeInfo) -> Comparison {
    let mut c = Comparison::default();
    compare_at(lhs, rhs, ti, &mut Vec::new(), &mut Vec::new(), &mut c);
    c
}

fn compare_at(
    lhs: Option<&Value>,
    rhs: Option<&Value>,
    ti: &TypeInfo,
    names: &mut Vec<String>,
    path: &mut Vec<String>,
    c: &mut Comparison,
) {
    let names_ref: Vec<&str> = names.iter().map(String::as_str).collect();
    let leaf = |c: &mut Comparison, path: &[String]| match (lhs, rhs) {
        (None, Some(_)) => c.added.insert(path),
        (Some(_), None) => c.removed.insert(path),
        (Some(a), Some(b)) if a != b => c.modified.insert(path),
        _ => {}
    };
    let is_obj = |v: Option<&Value>| v.is_none_or(Value::is_object);
    let is_arr = |v: Option<&Value>| v.is_none_or(Value::is_array);
    if is_obj(lhs) && is_obj(rhs) && (lhs.is_some() || rhs.is_some()) {
        let empty = |v: Option<&Value>| v.and_then(Value::as_object).is_none_or(Map::is_empty);
        if (!names.is_empty() && ti.map_is_atomic(&names_ref)) || (empty(lhs) && empty(rhs)) {
            leaf(c, path);
            return;
        }
        let l = lhs.and_then(Value::as_object);
        let r = rhs.and_then(Value::as_object);
        let mut keys: Vec<&String> = l.into_iter().flat_map(|m| m.keys()).collect();
        for k in r.into_iter().flat_map(|m| m.keys()) {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        for k in keys {
            names.push(k.clone());
            path.push(field_pe(k));
            compare_at(l.and_then(|m| m.get(k)), r.and_then(|m| m.get(k)), ti, names, path, c);
            path.pop();
            names.pop();
        }
    } else if is_arr(lhs) && is_arr(rhs) && (lhs.is_some() || rhs.is_some()) {
        let kind = ti.list_kind(&names_ref);
        let empty = |v: Option<&Value>| v.and_then(Value::as_array).is_none_or(Vec::is_empty);
        if kind == ListKind::Atomic || (empty(lhs) && empty(rhs)) {
            leaf(c, path);
        } else {
            let l = index_items(lhs, &kind);
            let r = index_items(rhs, &kind);
            let mut pes: Vec<&String> = l.iter().map(|(pe, _)| pe).collect();
            for (pe, _) in &r {
                if !pes.contains(&pe) {
                    pes.push(pe);
                }
            }
            for pe in pes {
                let li = l.iter().find(|(p, _)| p == pe).map(|(_, v)| *v);
                let ri = r.iter().find(|(p, _)| p == pe).map(|(_, v)| *v);
                path.push(pe.clone());
                if matches!(kind, ListKind::Map(_)) {
                    compare_at(li, ri, ti, names, path, c);
                } else {
                    match (li, ri) {
                        (None, Some(_)) => c.added.insert(path),
                        (Some(_), None) => c.removed.insert(path),
                        _ => {}
                    }
                }
                path.pop();
            }
        }
    } else {
        leaf(c, path);
        return;
    }
    if lhs.is_none() {
        c.added.insert(path);
    } else if rhs.is_none() {
        c.removed.insert(path);
    }
}

fn index_items<'a>(v: Option<&'a Value>, kind: &ListKind) -> Vec<(String, &'a Value)> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().enumerate().map(|(i, item)| (item_pe(item, kind, i), item)).collect())
        .unwrap_or_default()
}

/// Merges an applied configuration into the live object (`Merge`): objects field by field,
/// keyed lists item by item, everything else replaced by the configuration's value.
pub fn merge(lhs: &Value, rhs: &Value, ti: &TypeInfo, names: &mut Vec<String>) -> Value {
    let names_ref: Vec<&str> = names.iter().map(String::as_str).collect();
    match (lhs, rhs) {
        (Value::Object(l), Value::Object(r))
            if names.is_empty() || !ti.map_is_atomic(&names_ref) =>
        {
            let mut out = l.clone();
            for (k, rv) in r {
                names.push(k.clone());
                let merged = match l.get(k) {
                    Some(lv) => merge(lv, rv, ti, names),
                    None => rv.clone(),
                };
                names.pop();
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(r)) => {
            let kind = ti.list_kind(&names_ref);
            if kind == ListKind::Atomic {
                return rhs.clone();
            }
            let lpes: Vec<String> =
                l.iter().enumerate().map(|(i, v)| item_pe(v, &kind, i)).collect();
            let rpes: Vec<String> =
                r.iter().enumerate().map(|(i, v)| item_pe(v, &kind, i)).collect();
            let mut out = Vec::new();
            let mut emitted = vec![false; l.len()];
            for (ri, rpe) in rpes.iter().enumerate() {
                if let Some(li) = lpes.iter().position(|p| p == rpe) {
                    // Live-only items that came before this shared one keep their place.
                    for (j, lpe) in lpes.iter().enumerate().take(li) {
                        if !emitted[j] && !rpes.contains(lpe) {
                            out.push(l[j].clone());
                            emitted[j] = true;
                        }
                    }
                    emitted[li] = true;
                    out.push(if matches!(kind, ListKind::Map(_)) {
                        merge(&l[li], &r[ri], ti, names)
                    } else {
                        r[ri].clone()
                    });
                } else {
                    out.push(r[ri].clone());
                }
            }
            for (j, item) in l.iter().enumerate() {
                if !emitted[j] && !rpes.contains(&lpes[j]) {
                    out.push(item.clone());
                }
            }
            Value::Array(out)
        }
        _ => rhs.clone(),
    }
}

/// Removes the member paths of `set` from `value` (pruning fields nobody applies any more). A
/// map or list that the removal empties goes too, as structured-merge-diff's `RemoveItems` does
/// (it yields null): an emptied struct must not linger as `{}` without its required fields.
pub fn remove_fields(value: &mut Value, set: &FieldSet, ti: &TypeInfo, names: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (pe, child) in &set.children {
                let Some(name) = pe.strip_prefix("f:") else { continue };
                if child.member {
                    map.remove(name);
                } else if let Some(v) = map.get_mut(name) {
                    let was_full = is_full(v);
                    names.push(name.to_string());
                    remove_fields(v, child, ti, names);
                    names.pop();
                    if was_full && !is_full(v) {
                        map.remove(name);
                    }
                }
            }
        }
        Value::Array(items) => {
            let names_ref: Vec<&str> = names.iter().map(String::as_str).collect();
            let kind = ti.list_kind(&names_ref);
            let mut keep = Vec::new();
            for (i, mut item) in std::mem::take(items).into_iter().enumerate() {
                let pe = item_pe(&item, &kind, i);
                match set.children.get(&pe) {
                    Some(child) if child.member => continue,
                    Some(child) => {
                        remove_fields(&mut item, child, ti, names);
                        keep.push(item);
                    }
                    None => keep.push(item),
                }
            }
            *items = keep;
        }
        _ => {}
    }
}

/// A map or list with something in it.
fn is_full(v: &Value) -> bool {
    match v {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct ManagedEntry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: String,
    pub fields: FieldSet,
}

impl ManagedEntry {
    fn is_apply(&self) -> bool {
        self.operation == "Apply"
    }

    fn same_slot(&self, other: &ManagedEntry) -> bool {
        self.manager == other.manager
            && self.operation == other.operation
            && self.subresource == other.subresource
    }

    /// How a conflict names this manager (`printManager`).
    fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if !self.is_apply() {
            s.push_str(&format!(" using {}", self.api_version));
            if !self.time.is_empty() {
                s.push_str(&format!(" at {}", self.time));
            }
        }
        s
    }
}

pub fn read_managed(obj: &Value) -> Vec<ManagedEntry> {
    obj.at("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .map(|e| ManagedEntry {
                    manager: e["manager"].as_str().unwrap_or_default().into(),
                    operation: e["operation"].as_str().unwrap_or("Update").into(),
                    api_version: e["apiVersion"].as_str().unwrap_or_default().into(),
                    time: e["time"].as_str().unwrap_or_default().into(),
                    subresource: e["subresource"].as_str().unwrap_or_default().into(),
                    fields: FieldSet::from_fields_v1(&e["fieldsV1"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn write_managed(obj: &mut Value, entries: &[ManagedEntry]) {
    let rendered: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "fieldsType": "FieldsV1",
                "fieldsV1": e.fields.to_fields_v1(),
            });
            if !e.time.is_empty() {
                v["time"] = e.time.clone().into();
            }
            if !e.subresource.is_empty() {
                v["subresource"] = e.subresource.clone().into();
            }
            v
        })
        .collect();
    let meta = crate::meta::metadata_mut(obj);
    if rendered.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(rendered));
    }
}

/// An apply conflict: who owns which field.
#[derive(Debug, Clone)]
pub struct Conflict {
    pub manager: String,
    pub path: String,
}

/// The 409 kube-apiserver answers an apply conflict with.
pub fn conflict_error(conflicts: &[Conflict]) -> crate::error::ApiError {
    let message = if conflicts.len() == 1 {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            conflicts[0].manager, conflicts[0].path
        )
    } else {
        let mut by_manager: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for c in conflicts {
            by_manager.entry(&c.manager).or_default().push(&c.path);
        }
        let mut lines = Vec::new();
        for (m, paths) in by_manager {
            lines.push(format!("conflicts with {m}:"));
            for p in paths {
                lines.push(format!("- {p}"));
            }
        }
        format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {}", c.manager), "field": c.path}))
        .collect();
    crate::error::ApiError {
        code: 409,
        reason: "Conflict",
        message,
        details: Some(json!({"causes": causes})),
        retry_after: None,
    }
}

/// Everything an operation needs to know about field ownership.
pub struct Ownership<'a> {
    pub ti: TypeInfo<'a>,
    pub scope: Scope,
    pub api_version: &'a str,
    pub subresource: &'a str,
    pub now: &'a str,
}

/// Recomputes ownership after an ordinary write (create, update, non-apply patch).
pub fn update_managed(old: Option<&Value>, new: &mut Value, manager: &str, own: &Ownership) {
    let mut entries = old.map(read_managed).unwrap_or_default();
    let cmp = compare(old, Some(new), &own.ti);
    let changed = cmp.modified.union(&cmp.added).strip(own.scope);
    let removed = cmp.removed.strip(own.scope);
    let me = ManagedEntry {
        manager: manager.into(),
        operation: "Update".into(),
        api_version: own.api_version.into(),
        time: own.now.into(),
        subresource: own.subresource.into(),
        fields: FieldSet::default(),
    };
    for e in entries.iter_mut().filter(|e| !e.same_slot(&me)) {
        e.fields = e.fields.difference(&changed).difference(&removed);
    }
    match entries.iter_mut().find(|e| e.same_slot(&me)) {
        Some(mine) => {
            if !changed.is_empty() || !removed.is_empty() {
                mine.fields = mine.fields.difference(&removed).union(&changed);
                mine.time = own.now.into();
                mine.api_version = own.api_version.into();
            }
        }
        None => {
            if !changed.is_empty() {
                entries.push(ManagedEntry { fields: changed, ..me });
            }
        }
    }
    entries.retain(|e| !e.fields.is_empty());
    write_managed(new, &entries);
}

/// Server-side apply of `config` by `manager` onto `live` (an empty object when creating).
/// Returns the new object with its managed fields, or the conflicts.
pub fn apply(
    live: &Value,
    config: &Value,
    manager: &str,
    force: bool,
    own: &Ownership,
) -> Result<Value, Vec<Conflict>> {
    let mut entries = read_managed(live);
    let config_set = to_fieldset(config, &own.ti, &mut Vec::new()).strip(own.scope);
    let me = ManagedEntry {
        manager: manager.into(),
        operation: "Apply".into(),
        api_version: own.api_version.into(),
        time: own.now.into(),
        subresource: own.subresource.into(),
        fields: config_set.clone(),
    };
    let last_set =
        entries.iter().find(|e| e.same_slot(&me)).map(|e| e.fields.clone()).unwrap_or_default();

    let mut live_clean = live.clone();
    crate::meta::metadata_mut(&mut live_clean).remove("managedFields");
    let mut new = merge(&live_clean, config, &own.ti, &mut Vec::new());

    // Prune what this manager applied before and no longer applies, unless someone else owns it.
    let others = entries
        .iter()
        .filter(|e| !e.same_slot(&me))
        .fold(FieldSet::default(), |acc, e| acc.union(&e.fields));
    let pruned = last_set.difference(&config_set).difference(&others);
    remove_fields(&mut new, &pruned, &own.ti, &mut Vec::new());

    let cmp = compare(Some(&live_clean), Some(&new), &own.ti);
    let changed = cmp.modified.union(&cmp.added);
    let mut conflicts = Vec::new();
    for e in entries.iter().filter(|e| !e.same_slot(&me)) {
        // Another applier that set the same value co-owns it; only differing values conflict.
        for p in e.fields.intersection(&changed).paths() {
            conflicts.push(Conflict { manager: e.describe(), path: path_string(&p) });
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    for e in entries.iter_mut().filter(|e| !e.same_slot(&me)) {
        e.fields = e.fields.difference(&changed).difference(&cmp.removed);
    }
    // A re-apply that changes nothing keeps its entry's time, so the object stays the same and
    // the write is a no-op, as in Kubernetes; otherwise it would depend on the clock's second.
    let mut me = me;
    if let Some(old) = entries.iter().find(|e| e.same_slot(&me)) {
        let unchanged = changed.is_empty() && cmp.removed.is_empty();
        if unchanged && old.fields == me.fields && old.api_version == me.api_version {
            me.time = old.time.clone();
        }
    }
    entries.retain(|e| !e.same_slot(&me));
    if !config_set.is_empty() {
        entries.push(me);
    }
    entries.retain(|e| !e.fields.is_empty());
    write_managed(&mut new, &entries);
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own<'a>(ti: TypeInfo<'a>) -> Ownership<'a> {
        Ownership {
            ti,
            scope: Scope::Everything,
            api_version: "v1",
            subresource: "",
            now: "2026-01-01T00:00:00Z",
        }
    }

    #[test]
    fn fieldset_round_trips_fields_v1() {
        let v = json!({"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}}}}});
        let set = FieldSet::from_fields_v1(&v);
        assert_eq!(set.to_fields_v1(), v);
        assert!(set.contains(&[
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"c\"}".into()
        ]));
    }

    #[test]
    fn apply_sets_owns_and_prunes() {
        let ti = TypeInfo::Builtin { kind: "ConfigMap" };
        let o = own(ti);
        let first =
            apply(&json!({}), &json!({"data": {"a": "1", "b": "2"}}), "op", false, &o).unwrap();
        assert_eq!(first["data"], json!({"a": "1", "b": "2"}));
        let entries = read_managed(&first);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].fields.to_fields_v1(), json!({"f:data": {"f:a": {}, "f:b": {}}}));
        // Applying without b removes b.
        let second = apply(&first, &json!({"data": {"a": "1"}}), "op", false, &o).unwrap();
        assert_eq!(second["data"], json!({"a": "1"}));
        // The same apply a second later is a no-op: the entry keeps its time.
        let later = Ownership { now: "2026-01-01T00:00:01Z", ..own(ti) };
        let again = apply(&second, &json!({"data": {"a": "1"}}), "op", false, &later).unwrap();
        assert_eq!(again, second);
        // A change takes the new time.
        let changed = apply(&second, &json!({"data": {"a": "2"}}), "op", false, &later).unwrap();
        assert_eq!(read_managed(&changed)[0].time, "2026-01-01T00:00:01Z");
    }

    #[test]
    fn conflicting_apply_is_refused_unless_forced() {
        let o = own(TypeInfo::Builtin { kind: "ConfigMap" });
        let first = apply(&json!({}), &json!({"data": {"a": "1"}}), "one", false, &o).unwrap();
        // Same value: shared ownership, no conflict.
        let shared = apply(&first, &json!({"data": {"a": "1"}}), "two", false, &o).unwrap();
        assert_eq!(read_managed(&shared).len(), 2);
        let err = apply(&first, &json!({"data": {"a": "2"}}), "two", false, &o).unwrap_err();
        assert_eq!(err[0].path, ".data.a");
        assert_eq!(err[0].manager, "\"one\"");
        let forced = apply(&first, &json!({"data": {"a": "2"}}), "two", true, &o).unwrap();
        let entries = read_managed(&forced);
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].manager, "two");
    }

    #[test]
    fn keyed_lists_merge_by_key() {
        let ti = TypeInfo::Builtin { kind: "Pod" };
        let live = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        let merged = merge(
            &live,
            &json!({"spec": {"containers": [{"name": "b", "image": "z"}]}}),
            &ti,
            &mut Vec::new(),
        );
        assert_eq!(
            merged["spec"]["containers"],
            json!([{"name": "a", "image": "x"}, {"name": "b", "image": "z"}])
        );
        let set = to_fieldset(
            &json!({"spec": {"containers": [{"name": "b", "image": "z"}]}}),
            &ti,
            &mut Vec::new(),
        );
        assert_eq!(
            set.to_fields_v1(),
            json!({"f:spec": {"f:containers": {"k:{\"name\":\"b\"}": {".": {}, "f:image": {}, "f:name": {}}}}})
        );
        assert_eq!(
            path_string(&[
                "f:spec".into(),
                "f:containers".into(),
                "k:{\"name\":\"b\"}".into(),
                "f:image".into()
            ]),
            ".spec.containers[name=\"b\"].image"
        );
    }

    #[test]
    fn updates_transfer_ownership() {
        let o = own(TypeInfo::Builtin { kind: "ConfigMap" });
        let first = apply(&json!({}), &json!({"data": {"a": "1", "b": "2"}}), "applier", false, &o)
            .unwrap();
        let mut edited = first.clone();
        edited["data"]["a"] = "9".into();
        update_managed(Some(&first), &mut edited, "editor", &o);
        let entries = read_managed(&edited);
        let editor = entries.iter().find(|e| e.manager == "editor").unwrap();
        assert_eq!(editor.fields.to_fields_v1(), json!({"f:data": {"f:a": {}}}));
        let applier = entries.iter().find(|e| e.manager == "applier").unwrap();
        assert_eq!(applier.fields.to_fields_v1(), json!({"f:data": {"f:b": {}}}));
    }
}

#[cfg(test)]
mod status_tests {
    use super::*;

    #[test]
    fn status_apply_prunes_map_keys() {
        let o = Ownership {
            ti: TypeInfo::Builtin { kind: "X" },
            scope: Scope::StatusOnly,
            api_version: "v1",
            subresource: "status",
            now: "t",
        };
        let live = json!({"metadata": {"name": "n"}, "spec": {"a": 1}});
        let first =
            apply(&live, &json!({"status": {"p": {"a": "1", "b": "2"}}}), "op", true, &o).unwrap();
        assert_eq!(first["status"]["p"], json!({"a": "1", "b": "2"}));
        let second =
            apply(&first, &json!({"status": {"p": {"c": "3", "b": "2"}}}), "op", true, &o).unwrap();
        assert_eq!(second["status"]["p"], json!({"b": "2", "c": "3"}));
        // A struct no longer applied goes whole, not as an empty `{}` missing its required fields.
        let third = apply(&second, &json!({"status": {"q": 1}}), "op", true, &o).unwrap();
        assert_eq!(third["status"], json!({"q": 1}), "{third}");
    }
}
