//! The one status writer: server-side apply of the whole status on the status subresource, only
//! when it differs from what is there. Conditions keep their transition time while their status
//! holds, so an unchanged object yields an identical status and no write.

use alcove_crds::{Condition, FIELD_MANAGER};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::apply::{WriteLog, config_hash, log_key};
use crate::error::{Error, Result};

/// Writes `desired` as the status of `obj` unless `current` already equals it (or we already
/// wrote it on top of this version: the cache is only behind our own write).
pub async fn write<K, S>(log: &WriteLog, api: &Api<K>, obj: &K, current: Option<&S>, desired: &S) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(desired) {
        return Ok(false);
    }
    let status = serde_json::to_value(desired).map_err(|source| Error::Serialize { what: "status", source })?;
    let fingerprint = config_hash(&status);
    let key = log_key(obj, "/status");
    let rv = obj.resource_version();
    if log.already_written(&key, rv.as_deref()) {
        return Ok(false);
    }
    let body = serde_json::json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
    api.patch_status(&obj.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await?;
    log.record(key, rv, fingerprint);
    Ok(true)
}

/// A condition, keeping `lastTransitionTime` from `previous` when the status did not change.
pub fn condition(previous: &[Condition], type_: &str, ok: bool, reason: &str, message: &str, generation: Option<i64>, now: jiff::Timestamp) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(now.round(jiff::Unit::Second).unwrap_or(now)));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// Whether a condition of this type is True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}

/// Whether `type_` just changed status (for Events on transitions only).
pub fn transitioned(previous: &[Condition], now: &Condition) -> bool {
    !previous.iter().any(|c| c.type_ == now.type_ && c.status == now.status && c.reason == now.reason)
}
