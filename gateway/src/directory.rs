//! Which instance a key opens, from nothing but the instances' published key hashes.
//!
//! The operator writes `status.apiKeyHash` (SHA-256 of the key); the gateway keeps one [`Route`]
//! per instance, indexed by the first four bytes of that hash, and confirms a match by comparing
//! the whole hash in constant time. The index reveals nothing an attacker does not already know:
//! it is computed from the key they sent, and a 256-bit random key cannot be recovered from its
//! hash.

use std::collections::HashMap;
use std::sync::Arc;

use alcove_crds::instance::{InferenceInstance, InstancePhase, InstanceState, RateLimits};
use alcove_crds::{LABEL_TENANT, reason};
use kube::ResourceExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Whether an instance can take a request now, and if not, what the customer should be told.
#[derive(Debug, Clone, PartialEq)]
pub enum Availability {
    Ready,
    /// `spec.state: Suspended`.
    SuspendedBySpec,
    /// Suspended by billing: the tenant's credit ran out.
    CreditExhausted,
    /// Stopped for want of requests (`spec.idleTimeout`) since `status.idleSince`: a request
    /// wakes it.
    Idle(String),
    /// Starting, waiting for a GPU, failing: the phase and message.
    NotReady(String),
}

/// One instance as the gateway needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub tenant: String,
    pub namespace: String,
    pub instance: String,
    pub uid: String,
    /// The `model` clients name; filled in when a request omits it.
    pub served_name: String,
    /// The first 12 hex digits of the key's hash: names the key in metrics and records, proves
    /// nothing about the key.
    pub key_id: String,
    pub hash: [u8; 32],
    pub availability: Availability,
    pub limits: RateLimits,
    /// The in-cluster base URL (`status.endpoint`, ending in `/v1`).
    pub endpoint: Option<String>,
}

impl Route {
    /// The route of an instance whose key hash is published; None before the operator has.
    pub fn of(i: &InferenceInstance) -> Option<Route> {
        let status = i.status.as_ref()?;
        let hash: [u8; 32] = from_hex(status.api_key_hash.as_deref()?)?.try_into().ok()?;
        let namespace = i.namespace().unwrap_or_default();
        let tenant =
            i.labels().get(LABEL_TENANT).cloned().unwrap_or_else(|| {
                namespace.strip_prefix("tenant-").unwrap_or(&namespace).to_string()
            });
        let credit = status.conditions.iter().any(|c| c.reason == reason::CREDIT_EXHAUSTED);
        let availability = if i.metadata.deletion_timestamp.is_some() {
            Availability::NotReady("being destroyed".into())
        } else if i.spec.state == InstanceState::Suspended {
            Availability::SuspendedBySpec
        } else if status.phase == Some(InstancePhase::Suspended) && credit {
            Availability::CreditExhausted
        } else if status.phase == Some(InstancePhase::Idle) {
            Availability::Idle(status.idle_since.clone().unwrap_or_default())
        } else if status.phase == Some(InstancePhase::Ready) {
            Availability::Ready
        } else {
            let phase = status.phase.map(|p| format!("{p:?}")).unwrap_or("Pending".into());
            Availability::NotReady(match status.message.as_deref() {
                Some(m) if !m.is_empty() => format!("{phase}: {m}"),
                _ => phase,
            })
        };
        Some(Route {
            tenant,
            namespace,
            instance: i.name_any(),
            uid: i.uid().unwrap_or_default(),
            served_name: i.spec.model.served_name.clone().unwrap_or_else(|| i.name_any()),
            key_id: status.api_key_hash.as_deref().unwrap_or_default()[..12].to_string(),
            hash,
            availability,
            limits: status.rate_limits.unwrap_or_default(),
            endpoint: status.endpoint.clone(),
        })
    }
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn bucket(hash: &[u8; 32]) -> u32 {
    u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]])
}

/// Every instance with a published key hash.
#[derive(Default, Debug)]
pub struct Directory {
    buckets: HashMap<u32, Vec<Arc<Route>>>,
}

impl Directory {
    pub fn build<'a>(instances: impl IntoIterator<Item = &'a InferenceInstance>) -> Directory {
        let mut buckets: HashMap<u32, Vec<Arc<Route>>> = HashMap::new();
        for route in instances.into_iter().filter_map(Route::of) {
            buckets.entry(bucket(&route.hash)).or_default().push(Arc::new(route));
        }
        Directory { buckets }
    }

    /// The instance `key` opens.
    pub fn lookup(&self, key: &str) -> Option<Arc<Route>> {
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let candidates = self.buckets.get(&bucket(&presented))?;
        // Every candidate is compared in full, so the time taken does not depend on which one
        // (if any) matches.
        let mut found = None;
        for route in candidates {
            if bool::from(route.hash.ct_eq(&presented)) {
                found = Some(route.clone());
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.buckets.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alcove_crds::instance::InferenceInstanceStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn hash_hex(key: &str) -> String {
        Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    }

    fn instance(name: &str, key: &str, phase: InstancePhase) -> InferenceInstance {
        let mut i: InferenceInstance = serde_json::from_value(serde_json::json!({
            "apiVersion": "alcove.dev/v1alpha1", "kind": "InferenceInstance",
            "metadata": {"name": name, "namespace": "tenant-acme",
                         "labels": {"alcove.dev/tenant": "acme"}},
            "spec": {"model": {"format": "safetensors", "source": {"platform": "default"}},
                     "gpu": {"count": 1}},
        }))
        .unwrap();
        i.status = Some(InferenceInstanceStatus {
            phase: Some(phase),
            api_key_hash: Some(hash_hex(key)),
            rate_limits: Some(RateLimits { requests_per_minute: 5, tokens_per_minute: 100 }),
            ..Default::default()
        });
        i
    }

    #[test]
    fn a_key_opens_its_own_instance_only() {
        let a = instance("a", "key-a", InstancePhase::Ready);
        let b = instance("b", "key-b", InstancePhase::Provisioning);
        let mut unpublished = instance("c", "key-c", InstancePhase::Ready);
        unpublished.status.as_mut().unwrap().api_key_hash = None;
        let d = Directory::build([&a, &b, &unpublished]);
        assert_eq!(d.len(), 2);
        let r = d.lookup("key-a").unwrap();
        assert_eq!((r.instance.as_str(), r.tenant.as_str()), ("a", "acme"));
        assert_eq!(r.availability, Availability::Ready);
        assert_eq!(r.key_id, hash_hex("key-a")[..12]);
        assert_eq!(r.limits.requests_per_minute, 5);
        assert!(matches!(d.lookup("key-b").unwrap().availability, Availability::NotReady(_)));
        assert!(d.lookup("key-c").is_none(), "no published hash, no route");
        assert!(d.lookup("key-a ").is_none());
        assert!(d.lookup("").is_none());
    }

    #[test]
    fn suspension_says_whether_the_spec_or_the_credit_did_it() {
        let mut by_spec = instance("a", "k1", InstancePhase::Suspended);
        by_spec.spec.state = InstanceState::Suspended;
        assert_eq!(Route::of(&by_spec).unwrap().availability, Availability::SuspendedBySpec);
        let mut by_credit = instance("b", "k2", InstancePhase::Suspended);
        by_credit.status.as_mut().unwrap().conditions.push(Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: reason::CREDIT_EXHAUSTED.into(),
            message: String::new(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
            observed_generation: None,
        });
        assert_eq!(Route::of(&by_credit).unwrap().availability, Availability::CreditExhausted);
        let mut bad = instance("c", "k3", InstancePhase::Ready);
        bad.status.as_mut().unwrap().api_key_hash = Some("zz".repeat(32));
        assert!(Route::of(&bad).is_none(), "a malformed hash is no route");
    }
}
