//! Controller sharding end to end: three `alcove operator --shards 3` processes against devcluster
//! share the shard Leases, each tenant's objects are written by the holder of its shard alone,
//! and when one replica is SIGKILLed its shard is re-taken within 15 s and its tenants keep
//! converging; its member Lease is deleted a minute later. Instance pods are simulated (Ready
//! without a process).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use alcove::shard::{member_lease_name, shard_lease_name, shard_of};
use alcove_tests::*;

const SHARDS: u32 = 3;

fn tenant(name: &str) -> String {
    format!(
        "apiVersion: alcove.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: {name}}}\nspec:\n  displayName: {name}\n  tier: basic\n  region: tw-taipei-1\n  quota: {{maxGpus: 4, maxInstances: 4}}\n"
    )
}

fn instance(tenant: &str, name: &str) -> String {
    format!(
        "apiVersion: alcove.dev/v1alpha1\nkind: InferenceInstance\nmetadata: {{name: {name}, namespace: tenant-{tenant}}}\nspec:\n  model: {{format: safetensors, source: {{platform: default}}}}\n  gpu: {{count: 1}}\n"
    )
}

/// Holder identity of each shard Lease (empty when not held).
async fn holders(p: &Platform) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..SHARDS {
        let (_, h, _) = p
            .kubectl(&[
                "get",
                "lease",
                &shard_lease_name(i, SHARDS),
                "-n",
                "alcove-system",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .await;
        out.push(h.trim().to_string());
    }
    out
}

/// [`reporters`] once `object` has an Event: it is written a moment after the pass that made it
/// (under API faults, after retries), so an instance can be Ready before its Event is there.
async fn reporters_once(
    p: &Platform,
    tenant: &str,
    object: &str,
) -> BTreeMap<String, BTreeSet<String>> {
    let what = format!("an Event about tenant {tenant}'s {object}");
    until_some(&what, Duration::from_secs(10), || async {
        let by = reporters(p, tenant).await;
        by.contains_key(object).then_some(by)
    })
    .await
}

/// Which operator replicas published Events about the objects in `tenant`'s namespace, by object
/// name.
async fn reporters(p: &Platform, tenant: &str) -> BTreeMap<String, BTreeSet<String>> {
    let v = p.json(&["get", "events", "-n", &format!("tenant-{tenant}")]).await;
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in v["items"].as_array().unwrap() {
        if e["reportingComponent"] != "alcove-operator" {
            continue;
        }
        let object = e["involvedObject"]["name"].as_str().unwrap_or_default().to_string();
        let by = e["reportingInstance"].as_str().unwrap_or_default().to_string();
        out.entry(object).or_default().insert(by);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_tenants_and_a_dead_ones_shard_moves_within_fifteen_seconds() {
    let mut p = Platform::start_with(with_platform_models).await;
    for _ in 0..3 {
        p.spawn_operator(&["--shards", &SHARDS.to_string()]).await;
    }
    let ids: BTreeSet<String> = p.operators.iter().map(|o| o.identity.clone()).collect();
    // One shard each: the replicas see each other before taking shares.
    let spread = until_some("each replica holds one shard", Duration::from_secs(30), || async {
        let h = holders(&p).await;
        (h.iter().cloned().collect::<BTreeSet<_>>() == ids).then_some(h)
    })
    .await;
    // Two tenants per shard.
    let mut tenants: Vec<String> = Vec::new();
    for s in 0..SHARDS {
        tenants.extend((0..).map(|i| format!("t{i}")).filter(|t| shard_of(t, SHARDS) == s).take(2));
    }
    for t in &tenants {
        p.ok_in(&["apply", "-f", "-"], &tenant(t)).await;
    }
    for t in &tenants {
        p.wait_condition(&format!("tenant/{t}"), "Ready", 60).await;
        p.ok_in(&["apply", "-f", "-"], &instance(t, "first")).await;
    }
    for t in &tenants {
        p.wait_condition(&format!("inst/first -n tenant-{t}"), "Ready", 60).await;
    }
    // Every Event about a tenant's objects comes from the holder of its shard, and nobody else.
    for t in &tenants {
        let owner = &spread[shard_of(t, SHARDS) as usize];
        let by = reporters_once(&p, t, "first").await;
        for (object, who) in &by {
            assert_eq!(who, &BTreeSet::from([owner.clone()]), "tenant {t}, {object}");
        }
    }
    for o in &p.operators {
        let m = o.metrics().await;
        assert_eq!(metric(&m, "alcove_shards_owned", ""), 1.0, "{}", o.identity);
        assert!(metric(&m, "alcove_reconcile_total", "") > 0.0, "{} reconciles", o.identity);
    }

    // SIGKILL the holder of shard 0: its Lease stays until it expires.
    let victim = p.operators.iter().position(|o| o.identity == spread[0]).unwrap();
    p.operators[victim].kill().await;
    let killed_at = Instant::now();
    let moved = tenants.iter().filter(|t| shard_of(t, SHARDS) == 0).cloned().collect::<Vec<_>>();
    let stayed = tenants.iter().filter(|t| shard_of(t, SHARDS) != 0).cloned().collect::<Vec<_>>();
    for t in moved.iter().chain(&stayed) {
        p.ok_in(&["apply", "-f", "-"], &instance(t, "second")).await;
    }
    let heir = until_some("shard 0 re-taken", Duration::from_secs(20), || async {
        let h = holders(&p).await[0].clone();
        (!h.is_empty() && h != spread[0]).then_some(h)
    })
    .await;
    let retaken = killed_at.elapsed();
    for t in &moved {
        p.wait_condition(&format!("inst/second -n tenant-{t}"), "Ready", 30).await;
    }
    let converged = killed_at.elapsed();
    assert!(retaken < Duration::from_secs(15), "shard 0 re-taken {retaken:?} after the kill");
    for t in &stayed {
        p.wait_condition(&format!("inst/second -n tenant-{t}"), "Ready", 30).await;
    }
    // The moved tenants' new objects are the heir's alone; the others' stay with their owners.
    for t in &tenants {
        let owner = if moved.contains(t) { &heir } else { &spread[shard_of(t, SHARDS) as usize] };
        let by = reporters_once(&p, t, "second").await;
        assert_eq!(by.get("second"), Some(&BTreeSet::from([owner.clone()])), "tenant {t}: {by:?}");
    }
    // The two survivors hold all three shards between them.
    let after = holders(&p).await;
    assert!(after.iter().all(|h| h != &spread[0] && ids.contains(h)), "{after:?}");
    // The dead replica's member Lease is deleted a minute after it expired; the others stay.
    let member = |i: usize| member_lease_name(&p.operators[i].identity);
    eventually("the dead replica's member Lease deleted", Duration::from_secs(90), || async {
        !p.kubectl(&["get", "lease", &member(victim), "-n", "alcove-system"]).await.0
    })
    .await;
    for i in (0..3).filter(|i| *i != victim) {
        p.ok(&["get", "lease", &member(i), "-n", "alcove-system"]).await;
    }
    println!(
        "sharding: shard 0 re-taken {retaken:?} after SIGKILL; its tenants' new instances Ready after {converged:?}"
    );
}
