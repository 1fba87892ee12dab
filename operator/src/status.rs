//! The one status writer: server-side apply of the whole status on the status subresource, only
//! when it differs from what is there. Conditions keep their transition time while their status
//! holds (`conditions::settle`, applied by the writer itself, so no controller can get it
//! wrong), so an unchanged object yields an identical status and no write.

use alcove_crds::FIELD_MANAGER;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::apply::{WriteLog, log_key};
use crate::conditions::{Conditioned, settle};
use crate::error::{Error, Result};
use crate::hash::config_hash;

/// Writes `desired` as the status of `obj` unless `current` already equals it (or we already
/// wrote it on top of this version: the cache is only behind our own write). Conditions whose
/// status did not change keep `current`'s transition time, whatever the builder put there.
pub async fn write<K, S>(
    log: &WriteLog,
    api: &Api<K>,
    obj: &K,
    current: Option<&S>,
    desired: &S,
) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq + Clone + Conditioned,
{
    let mut desired = desired.clone();
    if let Some(current) = current {
        settle(current.conditions(), desired.conditions_mut());
    }
    if current == Some(&desired) {
        return Ok(false);
    }
    let status = serde_json::to_value(&desired)
        .map_err(|source| Error::Serialize { what: "status", source })?;
    let fingerprint = config_hash(&status);
    let key = log_key(obj, "/status");
    let rv = obj.resource_version();
    if log.already_written(&key, rv.as_deref()) {
        return Ok(false);
    }
    if tracing::enabled!(tracing::Level::DEBUG) {
        // Transition times follow the status of their condition: the status says why.
        let without_times = |mut v: serde_json::Value| {
            if let Some(cs) = v.get_mut("conditions").and_then(|c| c.as_array_mut()) {
                cs.iter_mut().filter_map(|c| c.as_object_mut()).for_each(|c| {
                    c.remove("lastTransitionTime");
                });
            }
            v
        };
        let before = without_times(serde_json::to_value(current).unwrap_or_default());
        let why = crate::apply::first_difference(&without_times(status.clone()), &before, "status");
        tracing::debug!(object = %log_key(obj, ""), difference = ?why, "writing status");
    }
    let body = serde_json::json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    log.record(key, rv, fingerprint);
    Ok(true)
}
