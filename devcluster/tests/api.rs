//! API semantics through the kube-rs client: CRUD, optimistic concurrency, status subresources,
//! generation, patches, server-side apply, finalizers, garbage collection, namespaces, watches,
//! pagination, selectors, CRDs with schema and CEL, metrics, and fault injection.

mod common;

use std::time::Duration;

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

fn cm(name: &str, data: Value) -> ConfigMap {
    serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}),
    )
    .unwrap()
}

fn status_code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("not an API error: {other}"),
    }
}

fn api_status(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_conflicts_and_not_found() {
    let env = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), "default");
    let created = cms.create(&PostParams::default(), &cm("a", json!({"k": "v"}))).await.unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    assert!(created.metadata.creation_timestamp.is_some());
    let rv1: u64 = created.metadata.resource_version.clone().unwrap().parse().unwrap();

    let dup = cms.create(&PostParams::default(), &cm("a", json!({}))).await.unwrap_err();
    let s = api_status(dup);
    assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(s.message, "configmaps \"a\" already exists");

    let mut stale = created.clone();
    stale.data = Some([("k".to_string(), "v2".to_string())].into());
    let updated = cms.replace("a", &PostParams::default(), &stale).await.unwrap();
    let rv2: u64 = updated.metadata.resource_version.clone().unwrap().parse().unwrap();
    assert!(rv2 > rv1, "resourceVersion increases");
    assert_eq!(updated.metadata.uid.as_deref(), Some(uid.as_str()));
    // The same old resourceVersion again: 409 Conflict with kube-apiserver's message.
    let conflict = api_status(cms.replace("a", &PostParams::default(), &stale).await.unwrap_err());
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        conflict.message,
        "Operation cannot be fulfilled on configmaps \"a\": the object has been modified; please apply your changes to the latest version and try again"
    );

    let nf = api_status(cms.get("missing").await.unwrap_err());
    assert_eq!(
        (nf.code, nf.reason.as_str(), nf.message.as_str()),
        (404, "NotFound", "configmaps \"missing\" not found")
    );

    // Creating in a namespace that does not exist.
    let nowhere: Api<ConfigMap> = Api::namespaced(env.client.clone(), "nowhere");
    let e = nowhere.create(&PostParams::default(), &cm("x", json!({}))).await.unwrap_err();
    assert_eq!(api_status(e).message, "namespaces \"nowhere\" not found");

    // An unchanged update writes nothing: same resourceVersion.
    let same = cms.replace("a", &PostParams::default(), &updated).await.unwrap();
    assert_eq!(same.metadata.resource_version, updated.metadata.resource_version);

    cms.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(status_code(&cms.get("a").await.unwrap_err()), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_objects_get_422_with_field_causes() {
    let env = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), "default");
    let e = api_status(
        cms.create(&PostParams::default(), &cm("Bad_Name", json!({}))).await.unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert!(
        e.message.starts_with(
            "ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\""
        ),
        "{}",
        e.message
    );
    let causes = e.details.unwrap().causes;
    assert_eq!(causes[0].field, "metadata.name");
    assert_eq!(causes[0].reason, "FieldValueInvalid");

    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let bad: Pod = serde_json::from_value(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}),
    )
    .unwrap();
    let e = api_status(pods.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!(e.message, "Pod \"p\" is invalid: spec.containers[0].image: Required value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_schema_cel_status_subresource_and_generation() {
    let env = start().await;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(env.client.clone());
    for crd in alcove_crds::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("alcove.dev", "v1alpha1", "Tenant"),
        "tenants",
    );
    let tenants: Api<DynamicObject> = Api::all_with(env.client.clone(), &ar);
    let t: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "alcove.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "acme"},
        "spec": {"displayName": "ACME", "tier": "basic", "region": "tw-taipei-1", "unknownField": 1},
        "status": {"phase": "Ready"},
    }))
    .unwrap();
    let created = tenants.create(&PostParams::default(), &t).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(
        created.data.get("status").is_none(),
        "create ignores status when /status is a subresource"
    );
    assert!(created.data["spec"].get("unknownField").is_none(), "unknown fields are pruned");
    assert_eq!(created.data["spec"]["quota"], Value::Null, "no default without the parent");

    // Status writes do not touch spec or generation.
    let status =
        json!({"status": {"phase": "Ready", "instances": 2}, "spec": {"displayName": "ignored"}});
    let after = tenants
        .patch_status("acme", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(after.data["status"]["phase"], "Ready");
    assert_eq!(after.data["spec"]["displayName"], "ACME");
    assert_eq!(after.metadata.generation, Some(1));
    // Spec writes ignore status and bump generation.
    let spec = json!({"spec": {"displayName": "ACME Corp"}, "status": {"phase": "Pending"}});
    let after = tenants.patch("acme", &PatchParams::default(), &Patch::Merge(&spec)).await.unwrap();
    assert_eq!(after.metadata.generation, Some(2));
    assert_eq!(after.data["status"]["phase"], "Ready");
    // Metadata-only changes do not bump generation.
    let labels = json!({"metadata": {"labels": {"team": "a"}}});
    let after =
        tenants.patch("acme", &PatchParams::default(), &Patch::Merge(&labels)).await.unwrap();
    assert_eq!(after.metadata.generation, Some(2));

    // Transition rule (oldSelf): region is immutable.
    let moved = json!({"spec": {"region": "jp-tokyo-1"}});
    let e = api_status(
        tenants.patch("acme", &PatchParams::default(), &Patch::Merge(&moved)).await.unwrap_err(),
    );
    assert_eq!(e.code, 422);
    assert!(
        e.message.contains("spec.region: Invalid value: \"string\": spec.region is immutable"),
        "{}",
        e.message
    );
    // Structural rule with the field in the cause.
    let bad_tier = json!({"spec": {"tier": "gold"}});
    let e = api_status(
        tenants.patch("acme", &PatchParams::default(), &Patch::Merge(&bad_tier)).await.unwrap_err(),
    );
    let cause = &e.details.unwrap().causes[0];
    assert_eq!(cause.field, "spec.tier");
    assert_eq!(cause.reason, "FieldValueNotSupported");

    // Strict field validation refuses unknown fields with 400.
    let pp = PatchParams::default().validation_strict();
    let e = api_status(
        tenants
            .patch("acme", &pp, &Patch::Merge(&json!({"spec": {"bogus": 1}})))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 400);
    assert!(e.message.contains("unknown field \"spec.bogus\""), "{}", e.message);

    // Strategic merge patch is not for custom resources.
    let e = api_status(
        tenants
            .patch("acme", &PatchParams::default(), &Patch::Strategic(&json!({"spec": {}})))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 415);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_json_merge_strategic() {
    let env = start().await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "p"}, "spec": {"nodeName": "nowhere", "containers": [
        {"name": "a", "image": "img:1", "env": [{"name": "X", "value": "1"}]},
        {"name": "b", "image": "img:1"}]}}),
    )
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    // Strategic: containers merge by name, env by name.
    let smp = json!({"spec": {"containers": [{"name": "b", "image": "img:2"}]}});
    let p = pods.patch("p", &PatchParams::default(), &Patch::Strategic(&smp)).await.unwrap();
    let cs = p.spec.unwrap().containers;
    assert_eq!(cs.len(), 2);
    assert_eq!(cs[1].image.as_deref(), Some("img:2"));
    assert_eq!(cs[0].env.as_ref().unwrap()[0].value.as_deref(), Some("1"));
    // JSON patch with a failing test op changes nothing.
    let jp: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/metadata/name", "value": "other"}]))
            .unwrap();
    let e = pods.patch("p", &PatchParams::default(), &Patch::<()>::Json(jp)).await.unwrap_err();
    assert_eq!(status_code(&e), 422);
    let jp: json_patch::Patch = serde_json::from_value(
        json!([{"op": "add", "path": "/metadata/labels", "value": {"x": "y"}}]),
    )
    .unwrap();
    let p = pods.patch("p", &PatchParams::default(), &Patch::<()>::Json(jp)).await.unwrap();
    assert_eq!(p.metadata.labels.unwrap()["x"], "y");
    // Merge patch with null removes.
    let p = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": null}}})),
        )
        .await
        .unwrap();
    assert!(p.metadata.labels.unwrap_or_default().is_empty());
    // Pod spec is immutable beyond images.
    let e = api_status(
        pods.patch(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(&json!({"spec": {"restartPolicy": "Never"}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 422);
    assert!(e.message.contains("pod updates may not change fields"), "{}", e.message);
}

/// Patches are worked out outside the store's lock and committed only if the object is still
/// the version they started from: concurrent writers of one object must lose nothing, and each
/// write must be one watch event at its own, increasing resourceVersion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_of_one_object_lose_nothing() {
    let env = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), "default");
    let created = cms.create(&PostParams::default(), &cm("busy", json!({}))).await.unwrap();
    let start_rv = created.metadata.resource_version.unwrap();
    let mut stream = cms.watch(&WatchParams::default(), &start_rv).await.unwrap().boxed();
    const EACH: usize = 24;
    let mut writers = Vec::new();
    for i in 0..EACH {
        let merging = cms.clone();
        writers.push(tokio::spawn(async move {
            let merge = json!({"data": {format!("m{i}"): "v"}});
            merging.patch("busy", &PatchParams::default(), &Patch::Merge(merge)).await.unwrap();
        }));
        let applying = cms.clone();
        writers.push(tokio::spawn(async move {
            let applied = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "busy"}, "data": {format!("a{i}"): "v"}});
            let params = PatchParams::apply(&format!("applier-{i}"));
            applying.patch("busy", &params, &Patch::Apply(applied)).await.unwrap();
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let data = cms.get("busy").await.unwrap().data.unwrap_or_default();
    for i in 0..EACH {
        assert!(data.contains_key(&format!("m{i}")), "merge patch {i} lost: {data:?}");
        assert!(data.contains_key(&format!("a{i}")), "apply {i} lost: {data:?}");
    }
    let mut versions = Vec::new();
    while versions.len() < 2 * EACH {
        match tokio::time::timeout(Duration::from_secs(5), stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Modified(o) => {
                versions.push(o.metadata.resource_version.unwrap().parse::<u64>().unwrap())
            }
            other => panic!("only modifications were made: {other:?}"),
        }
    }
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "increasing: {versions:?}");
    let managers = cms.get("busy").await.unwrap().metadata.managed_fields.unwrap_or_default();
    assert_eq!(
        managers.iter().filter(|m| m.operation.as_deref() == Some("Apply")).count(),
        EACH,
        "each applier owns its field"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_owns_fields_and_detects_conflicts() {
    let env = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), "default");
    let a = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "1", "b": "2"}});
    let one = cms.patch("ssa", &PatchParams::apply("one"), &Patch::Apply(&a)).await.unwrap();
    let mf = one.metadata.managed_fields.unwrap();
    assert_eq!(mf.len(), 1);
    assert_eq!(mf[0].manager.as_deref(), Some("one"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    assert_eq!(
        serde_json::to_value(&mf[0].fields_v1).unwrap(),
        json!({"f:data": {"f:a": {}, "f:b": {}}})
    );
    // Re-applying the same config writes nothing.
    let again = cms.patch("ssa", &PatchParams::apply("one"), &Patch::Apply(&a)).await.unwrap();
    assert_eq!(again.metadata.resource_version, one.metadata.resource_version);
    // Another manager changing an owned field conflicts …
    let b = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "9"}});
    let e = api_status(
        cms.patch("ssa", &PatchParams::apply("two"), &Patch::Apply(&b)).await.unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert_eq!(e.message, "Apply failed with 1 conflict: conflict with \"one\": .data.a");
    assert_eq!(e.details.unwrap().causes[0].field, ".data.a");
    // … unless forced, which moves ownership.
    let forced =
        cms.patch("ssa", &PatchParams::apply("two").force(), &Patch::Apply(&b)).await.unwrap();
    assert_eq!(forced.data.as_ref().unwrap()["a"], "9");
    let managers: Vec<String> =
        forced.metadata.managed_fields.unwrap().iter().filter_map(|m| m.manager.clone()).collect();
    assert_eq!(managers, vec!["one", "two"]);
    // A manager dropping a field it alone owned removes it.
    let a2 =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {}});
    let pruned = cms.patch("ssa", &PatchParams::apply("one"), &Patch::Apply(&a2)).await.unwrap();
    assert_eq!(pruned.data.unwrap_or_default().get("b"), None);
    // Apply creates.
    let created = cms
        .patch(
            "fresh",
            &PatchParams::apply("one"),
            &Patch::Apply(
                &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fresh"}}),
            ),
        )
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    // Apply needs a field manager.
    let e = api_status(
        cms.patch("fresh", &PatchParams::default(), &Patch::Apply(&a)).await.unwrap_err(),
    );
    assert_eq!(e.code, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_and_deletion_timestamp() {
    let env = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), "default");
    let mut c = cm("held", json!({}));
    c.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &c).await.unwrap();
    cms.delete("held", &DeleteParams::default()).await.unwrap();
    let held = cms.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some(), "deletion waits for the finalizer");
    // New finalizers cannot be added to an object being deleted? (they can; only removal matters)
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    eventually("finalized object is gone", Duration::from_secs(5), || async {
        cms.get("held").await.is_err()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_references_background_foreground_orphan() {
    let env = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), "default");
    let owner_ref = |o: &ConfigMap| json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": o.metadata.name, "uid": o.metadata.uid, "blockOwnerDeletion": true}]);
    let make_child = |name: &str, owner: &ConfigMap| -> ConfigMap {
        serde_json::from_value(
            json!({"metadata": {"name": name, "ownerReferences": owner_ref(owner)}}),
        )
        .unwrap()
    };
    // Background.
    let parent = cms.create(&PostParams::default(), &cm("parent", json!({}))).await.unwrap();
    cms.create(&PostParams::default(), &make_child("child", &parent)).await.unwrap();
    cms.delete("parent", &DeleteParams::background()).await.unwrap();
    eventually("background GC deletes the child", Duration::from_secs(5), || async {
        cms.get("child").await.is_err()
    })
    .await;
    // Foreground: the owner stays (with the finalizer) until its dependents are gone.
    let parent = cms.create(&PostParams::default(), &cm("fg", json!({}))).await.unwrap();
    let mut child = make_child("fg-child", &parent);
    child.metadata.finalizers = Some(vec!["example.com/slow".into()]);
    cms.create(&PostParams::default(), &child).await.unwrap();
    cms.delete("fg", &DeleteParams::foreground()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = cms.get("fg").await.unwrap();
    assert!(waiting.metadata.finalizers.unwrap().contains(&"foregroundDeletion".to_string()));
    assert!(cms.get("fg-child").await.unwrap().metadata.deletion_timestamp.is_some());
    cms.patch(
        "fg-child",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    eventually("foreground owner goes after its dependent", Duration::from_secs(5), || async {
        cms.get("fg").await.is_err()
    })
    .await;
    // Orphan: dependents stay, without the owner reference.
    let parent = cms.create(&PostParams::default(), &cm("orph", json!({}))).await.unwrap();
    cms.create(&PostParams::default(), &make_child("orph-child", &parent)).await.unwrap();
    cms.delete("orph", &DeleteParams::orphan()).await.unwrap();
    eventually("orphaning owner is gone", Duration::from_secs(5), || async {
        cms.get("orph").await.is_err()
    })
    .await;
    let kept = cms.get("orph-child").await.unwrap();
    assert!(kept.metadata.owner_references.unwrap_or_default().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_deletion_removes_contents() {
    let env = start().await;
    let nss: Api<Namespace> = Api::all(env.client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "doomed"}})).unwrap(),
    )
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), "doomed");
    let mut held = cm("held", json!({}));
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &held).await.unwrap();
    cms.create(&PostParams::default(), &cm("plain", json!({}))).await.unwrap();
    nss.delete("doomed", &DeleteParams::default()).await.unwrap();
    let ns = nss.get("doomed").await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    eventually("plain content deleted", Duration::from_secs(5), || async {
        cms.get("plain").await.is_err()
    })
    .await;
    // New content is refused while terminating.
    let e =
        api_status(cms.create(&PostParams::default(), &cm("late", json!({}))).await.unwrap_err());
    assert_eq!(e.code, 403);
    assert!(e.message.contains("because it is being terminated"), "{}", e.message);
    assert!(nss.get("doomed").await.is_ok(), "namespace waits for the finalized configmap");
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    eventually("namespace gone", Duration::from_secs(5), || async {
        nss.get("doomed").await.is_err()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pagination_and_selectors() {
    let env = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), "default");
    for i in 0..7 {
        let mut c = cm(&format!("item-{i}"), json!({}));
        c.metadata.labels = Some(
            [("parity".to_string(), if i % 2 == 0 { "even" } else { "odd" }.to_string())].into(),
        );
        cms.create(&PostParams::default(), &c).await.unwrap();
    }
    let first = cms.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(first.items.len(), 3);
    let token = first.metadata.continue_.clone().expect("continue token");
    assert_eq!(first.metadata.remaining_item_count, Some(4));
    let second = cms.list(&ListParams::default().limit(3).continue_token(&token)).await.unwrap();
    assert_eq!(second.items.len(), 3);
    let names: Vec<String> =
        first.items.iter().chain(&second.items).map(|c| c.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["item-0", "item-1", "item-2", "item-3", "item-4", "item-5"]);
    let even = cms.list(&ListParams::default().labels("parity=even")).await.unwrap();
    assert_eq!(even.items.len(), 4);
    let notin = cms.list(&ListParams::default().labels("parity notin (even)")).await.unwrap();
    assert_eq!(notin.items.len(), 3);
    let by_name = cms.list(&ListParams::default().fields("metadata.name=item-5")).await.unwrap();
    assert_eq!(by_name.items.len(), 1);
    let e = api_status(cms.list(&ListParams::default().fields("data.x=1")).await.unwrap_err());
    assert_eq!((e.code, e.message.as_str()), (400, "field label not supported: data.x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_resume_and_expiry() {
    let env = start_with(|mut c| {
        c.watch_history = 20;
        c.bookmark_interval = Duration::from_millis(200);
        c
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), "default");
    let start_rv =
        cms.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let mut stream = cms.watch(&WatchParams::default(), &start_rv).await.unwrap().boxed();
    cms.create(&PostParams::default(), &cm("w", json!({}))).await.unwrap();
    cms.patch("w", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "v"}})))
        .await
        .unwrap();
    cms.delete("w", &DeleteParams::default()).await.unwrap();
    let mut kinds = Vec::new();
    let mut saw_bookmark = false;
    while kinds.len() < 3 || !saw_bookmark {
        match tokio::time::timeout(Duration::from_secs(5), stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(o) => kinds.push(("ADDED", o.metadata.name.unwrap())),
            WatchEvent::Modified(o) => kinds.push(("MODIFIED", o.metadata.name.unwrap())),
            WatchEvent::Deleted(o) => kinds.push(("DELETED", o.metadata.name.unwrap())),
            WatchEvent::Bookmark(_) => saw_bookmark = true,
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(kinds, [("ADDED", "w".into()), ("MODIFIED", "w".into()), ("DELETED", "w".into())]);
    // Writes of other kinds move the bookmarks on too (kube-apiserver's do), so a watch of a
    // quiet kind resumes from a fresh version instead of one compacted away.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(env.client.clone(), "default");
    let other = secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "elsewhere"}})).unwrap(),
        )
        .await
        .unwrap();
    let other_rv: u64 = other.metadata.resource_version.unwrap().parse().unwrap();
    let bookmarked = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Bookmark(b) => {
                let rv: u64 = b.metadata.resource_version.parse().unwrap();
                if rv >= other_rv {
                    break rv;
                }
            }
            other => panic!("only bookmarks were due, got {other:?}"),
        }
    };
    assert!(bookmarked >= other_rv);
    // Resuming from an old version replays what came after it.
    let mut resumed = cms.watch(&WatchParams::default(), &start_rv).await.unwrap().boxed();
    match tokio::time::timeout(Duration::from_secs(5), resumed.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("w")),
        other => panic!("expected the replayed ADDED, got {other:?}"),
    }
    // Push the history past the start version: resuming there is 410 Gone.
    for i in 0..30 {
        cms.create(&PostParams::default(), &cm(&format!("fill-{i}"), json!({}))).await.unwrap();
    }
    let mut expired = cms.watch(&WatchParams::default(), &start_rv).await.unwrap().boxed();
    match tokio::time::timeout(Duration::from_secs(5), expired.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Error(e) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
            assert!(e.message.starts_with("too old resource version"), "{}", e.message);
        }
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_by_label_sees_objects_leave_the_selection() {
    let env = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), "default");
    let rv = cms.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let mut stream =
        cms.watch(&WatchParams::default().labels("keep=yes"), &rv).await.unwrap().boxed();
    let mut c = cm("sel", json!({}));
    c.metadata.labels = Some([("keep".to_string(), "yes".to_string())].into());
    cms.create(&PostParams::default(), &c).await.unwrap();
    cms.patch(
        "sel",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"keep": "no"}}})),
    )
    .await
    .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(first, WatchEvent::Added(_)));
    let second = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(second, WatchEvent::Deleted(_)), "{second:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metrics_count_what_clients_did() {
    let env = start().await;
    let before = env.write_requests().await;
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), "default");
    cms.create(&PostParams::default(), &cm("m", json!({}))).await.unwrap();
    cms.patch(
        "m",
        &PatchParams::apply("t"),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "m"}, "data": {"a": "b"}})),
    )
    .await
    .unwrap();
    cms.get("m").await.unwrap();
    let after = env.write_requests().await;
    assert_eq!(after - before, 2.0, "one POST and one APPLY");
    let text = env.get_raw("/metrics").await;
    assert!(text.contains("apiserver_request_total{code=\"201\",component=\"apiserver\",dry_run=\"\",group=\"\",resource=\"configmaps\",scope=\"namespace\",subresource=\"\",verb=\"POST\",version=\"v1\"} 1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_answers_500_and_cuts_watches() {
    let env = start_with(|mut c| {
        c.faults.error_rate = 1.0;
        c
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), "default");
    let e = api_status(cms.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (500, "InternalError"));

    let env = start_with(|mut c| {
        c.faults.watch_cut_events = Some(1);
        c.faults.force_gone_on_resume = true;
        c
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), "default");
    let rv = cms.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let stream = cms.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
    let events: Vec<_> = stream.collect().await;
    assert!(
        matches!(events.first(), Some(Ok(WatchEvent::Error(e))) if e.code == 410),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_apply_records_its_owner_and_prunes() {
    let env = start().await;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(env.client.clone());
    for crd in alcove_crds::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("alcove.dev", "v1alpha1", "Tenant"),
        "tenants",
    );
    let tenants: Api<DynamicObject> = Api::all_with(env.client.clone(), &ar);
    let t: DynamicObject = serde_json::from_value(
        json!({"apiVersion": "alcove.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "s"},
        "spec": {"displayName": "S", "tier": "basic", "region": "tw-taipei-1"}}),
    )
    .unwrap();
    tenants.create(&PostParams::default(), &t).await.unwrap();
    let status = |sel: Value| json!({"apiVersion": "alcove.dev/v1alpha1", "kind": "Tenant", "status": {"placement": {"nodeSelector": sel}}});
    tenants
        .patch_status(
            "s",
            &PatchParams::apply("op").force(),
            &Patch::Apply(&status(json!({"a": "1", "b": "2"}))),
        )
        .await
        .unwrap();
    let after = tenants
        .patch_status(
            "s",
            &PatchParams::apply("op").force(),
            &Patch::Apply(&status(json!({"b": "2", "c": "3"}))),
        )
        .await
        .unwrap();
    assert_eq!(
        after.data["status"]["placement"]["nodeSelector"],
        json!({"b": "2", "c": "3"}),
        "a key no longer applied is pruned"
    );
    let mf = after.metadata.managed_fields.unwrap();
    let entry =
        mf.iter().find(|m| m.manager.as_deref() == Some("op")).expect("status manager recorded");
    assert_eq!(entry.subresource.as_deref(), Some("status"));
}
