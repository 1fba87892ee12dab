//! Reads and writes a tenant's ledger ConfigMap: every change a compare-and-swap on its
//! resourceVersion, retried on conflict with a fresh read.

use alcove_crds::Tenant;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PostParams};
use kube::{Client, ResourceExt};

use super::ledger::{CLASS, DATA_KEY, Ledger, name, parse};
use crate::error::{Error, Result};

/// Reads the ledger fresh from the API server.
pub async fn read(client: &Client, namespace: &str, tenant: &str) -> Result<Option<Ledger>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    Ok(api.get_opt(&name(tenant)).await?.as_ref().and_then(parse))
}

/// Applies `change` to the tenant's ledger (created on first use) and stores it, retrying on
/// conflicts with a fresh read; `change` returns whether it changed anything. Returns the
/// ledger as stored.
pub async fn update(
    client: &Client,
    namespace: &str,
    tenant: &Tenant,
    mut change: impl FnMut(&mut Ledger) -> bool,
) -> Result<Ledger> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let tenant_name = tenant.name_any();
    let ledger_name = name(&tenant_name);
    for _ in 0..10 {
        let live = crate::error::retry_passing(|| api.get_opt(&ledger_name)).await?;
        let mut ledger = live.as_ref().and_then(parse).unwrap_or_else(|| Ledger::new(tenant));
        if !change(&mut ledger) && live.is_some() {
            return Ok(ledger);
        }
        let text = serde_json::to_string_pretty(&ledger)
            .map_err(|source| Error::Serialize { what: "ledger", source })?;
        let result = match &live {
            None => api
                .create(
                    &PostParams {
                        field_manager: Some(alcove_crds::FIELD_MANAGER.into()),
                        ..Default::default()
                    },
                    &config_map(&tenant_name, text),
                )
                .await
                .map(drop),
            Some(cm) => {
                // The resourceVersion makes this a compare-and-swap.
                let body = serde_json::json!({"metadata": {"resourceVersion": cm.resource_version()}, "data": {DATA_KEY: text}});
                api.patch(&name(&tenant_name), &crate::apply::merge_params(), &Patch::Merge(&body))
                    .await
                    .map(drop)
            }
        };
        match result {
            Ok(()) => return Ok(ledger),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            // The compare-and-swap makes another try safe: the change is worked out again from
            // the ledger as it then is.
            Err(e) if crate::error::passing(&e) => {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Billing(format!(
        "ledger {} kept changing under concurrent writes; retrying",
        name(&tenant_name)
    )))
}

fn config_map(tenant: &str, text: String) -> ConfigMap {
    let labels = [
        (crate::names::MANAGED_BY.0.to_string(), crate::names::MANAGED_BY.1.to_string()),
        (alcove_crds::LABEL_TENANT.to_string(), tenant.to_string()),
        (alcove_crds::LABEL_DATA_CLASS.to_string(), CLASS.to_string()),
    ];
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name(tenant)),
            labels: Some(labels.into()),
            ..Default::default()
        },
        data: Some([(DATA_KEY.to_string(), text)].into()),
        ..Default::default()
    }
}
