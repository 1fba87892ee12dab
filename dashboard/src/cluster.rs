//! The dashboard's two ways into the cluster.
//!
//! - Its own identity (the ServiceAccount) only watches Tenants, to know whose owners name the
//!   signed-in user, and lists Nodes' GPU products for the create form. Nothing else.
//! - Everything a customer does goes through [`Cluster::as_user`]: the same connection pool, with
//!   `Impersonate-User: <email>` and `Impersonate-Group: alcove:tenant:<tenant>`, so the API
//!   server's RBAC (the tenant-admin Role) decides, never the dashboard.

use std::collections::BTreeSet;
use std::sync::Arc;

use alcove_crds::instance::InferenceInstance;
use alcove_crds::tenant::{OwnerKind, ResolvedPlacement, Tenant, admin_group};
use futures::StreamExt;
use http::HeaderValue;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};

pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";

#[derive(Clone)]
pub struct Cluster {
    client: Client,
    tenants: reflector::Store<Tenant>,
    /// Each Tenant as it was when it went (its final status holds its erasure receipts).
    gone: tokio::sync::broadcast::Sender<Arc<Tenant>>,
}

/// Whether `spec.owners` names this user (addresses compare without case).
pub fn owned_by(tenant: &Tenant, email: &str) -> bool {
    tenant
        .spec
        .owners
        .iter()
        .any(|o| o.kind == OwnerKind::User && o.name.eq_ignore_ascii_case(email))
}

/// GPU products of the nodes a placement admits: nodes whose labels include every label of the
/// tenant's node selector (region, tier pool, dedicated nodes).
pub fn products_for(nodes: &[Node], placement: &ResolvedPlacement) -> Vec<String> {
    let mut products = BTreeSet::new();
    for n in nodes {
        let labels = n.labels();
        let admitted = placement.node_selector.iter().all(|(k, v)| labels.get(k) == Some(v));
        if let (true, Some(p)) = (admitted, labels.get(GPU_PRODUCT_LABEL)) {
            products.insert(p.clone());
        }
    }
    products.into_iter().collect()
}

impl Cluster {
    /// The cluster view and the future that keeps its Tenant cache current.
    pub fn new(
        client: Client,
    ) -> (Cluster, impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static) {
        let (tenants, writer) = reflector::store();
        let api: Api<Tenant> = Api::all(client.clone());
        let (gone, _) = tokio::sync::broadcast::channel(64);
        let tell = gone.clone();
        let watching = async move {
            let mut events =
                reflector(writer, watcher(api, watcher::Config::default()).default_backoff())
                    .boxed();
            while let Some(e) = events.next().await {
                match e {
                    Ok(watcher::Event::Delete(t)) => {
                        let _ = tell.send(Arc::new(t));
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "watching tenants"),
                }
            }
            anyhow::bail!("the tenant watch ended")
        };
        (Cluster { client, tenants, gone }, watching)
    }

    /// Tenants as they were when they were deleted for good, from now on.
    pub fn gone(&self) -> tokio::sync::broadcast::Receiver<Arc<Tenant>> {
        self.gone.subscribe()
    }

    /// Waits until the first list of Tenants has arrived.
    pub async fn ready(&self) {
        let _ = self.tenants.wait_until_ready().await;
    }

    /// The tenants whose owners name this user, by name.
    pub fn tenants_of(&self, email: &str) -> Vec<Arc<Tenant>> {
        let mut mine: Vec<_> =
            self.tenants.state().into_iter().filter(|t| owned_by(t, email)).collect();
        mine.sort_by_key(|t| t.name_any());
        mine
    }

    /// One tenant of this user, also while it is being deleted; `None` for a tenant that does
    /// not exist and for one that is not theirs alike, so a crafted name learns nothing.
    pub fn tenant_of(&self, email: &str, tenant: &str) -> Option<Arc<Tenant>> {
        self.tenants.get(&reflector::ObjectRef::new(tenant)).filter(|t| owned_by(t, email))
    }

    /// Every tenant in the cache (the notices watch them all).
    pub fn all_tenants(&self) -> Vec<Arc<Tenant>> {
        self.tenants.state()
    }

    /// Whether any tenant names this address (sign-in mail goes only to such addresses).
    pub fn is_known(&self, email: &str) -> bool {
        self.tenants.state().iter().any(|t| owned_by(t, email))
    }

    /// Corrects a tenant's display name and contact address (`Some(None)` removes the contact),
    /// as the dashboard itself: the owners' RBAC may not patch their Tenant, since most of its
    /// spec (tier, owners, consents) is the platform's. The caller checked the user owns it.
    pub async fn rectify(
        &self,
        tenant: &str,
        display_name: Option<&str>,
        contact_email: Option<Option<&str>>,
    ) -> Result<Tenant, kube::Error> {
        let mut spec = serde_json::Map::new();
        if let Some(d) = display_name {
            spec.insert("displayName".into(), d.into());
        }
        if let Some(c) = contact_email {
            spec.insert("contactEmail".into(), c.into());
        }
        let patch = serde_json::json!({ "spec": spec });
        let params = kube::api::PatchParams {
            field_manager: Some("alcove-dashboard".into()),
            ..Default::default()
        };
        let patched = Api::<Tenant>::all(self.client.clone())
            .patch(tenant, &params, &kube::api::Patch::Merge(&patch))
            .await?;
        // The page after "Saved." reads the watch cache: wait (bounded) until it has the change,
        // so the customer never sees their old details under "Saved.".
        let key = reflector::ObjectRef::new(tenant);
        for _ in 0..50 {
            let seen = self.tenants.get(&key).is_some_and(|t| {
                t.spec.display_name == patched.spec.display_name
                    && t.spec.contact_email == patched.spec.contact_email
            });
            if seen {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Ok(patched)
    }

    /// Creates a sign-up's Tenant, as the dashboard (the new owner has no rights yet), and waits
    /// up to 15 seconds for the operator to make it Ready (its namespace and the owner's
    /// Role), so its pages open; whether it did.
    pub async fn create_tenant(&self, tenant: &Tenant) -> Result<bool, kube::Error> {
        let params = kube::api::PostParams {
            field_manager: Some("alcove-dashboard".into()),
            ..Default::default()
        };
        let made = Api::<Tenant>::all(self.client.clone()).create(&params, tenant).await?;
        let key = reflector::ObjectRef::new(&made.name_any());
        for _ in 0..150 {
            let phase = self.tenants.get(&key).and_then(|t| t.status.as_ref()?.phase);
            if phase == Some(alcove_crds::tenant::TenantPhase::Ready) {
                return Ok(true);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Ok(false)
    }

    /// An instance's API key, read as `email` (`None` while the instance has none).
    pub async fn instance_key(
        &self,
        email: &str,
        tenant: &str,
        name: &str,
    ) -> Result<Option<String>, kube::Error> {
        let client = self.as_user(email, tenant);
        let ns = alcove_crds::tenant::namespace_of(tenant);
        let i = Api::<InferenceInstance>::namespaced(client.clone(), &ns).get(name).await?;
        let Some(secret) = i.status.and_then(|s| s.api_key_secret) else {
            return Ok(None);
        };
        let secret = Api::<Secret>::namespaced(client, &ns).get(&secret).await?;
        Ok(secret
            .data
            .and_then(|mut d| d.remove("api-key"))
            .and_then(|b| String::from_utf8(b.0).ok()))
    }

    /// A client that acts as `email`, a member of `tenant`'s admin group. Callers pass only a
    /// tenant [`Cluster::tenant_of`] returned for this user.
    pub fn as_user(&self, email: &str, tenant: &str) -> Client {
        let base = self.client.clone();
        let user = HeaderValue::from_bytes(email.as_bytes()).ok();
        let group = HeaderValue::from_str(&admin_group(tenant)).ok();
        let namespace = alcove_crds::tenant::namespace_of(tenant);
        let service = tower::service_fn(move |mut req: http::Request<kube::client::Body>| {
            let base = base.clone();
            let headers = req.headers_mut();
            // A user header that cannot be sent means no impersonation at all; then the request
            // must fail rather than go out as the dashboard itself.
            match (&user, &group) {
                (Some(u), Some(g)) => {
                    headers.insert("impersonate-user", u.clone());
                    headers.insert("impersonate-group", g.clone());
                }
                _ => {
                    headers
                        .insert("impersonate-user", HeaderValue::from_static("system:anonymous"));
                }
            }
            async move { base.send(req).await }
        });
        Client::new(service, namespace)
    }

    /// GPU products the tenant's placement can schedule on.
    pub async fn gpu_products(
        &self,
        placement: &ResolvedPlacement,
    ) -> Result<Vec<String>, kube::Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let list = nodes.list(&ListParams::default().labels(GPU_PRODUCT_LABEL)).await?;
        Ok(products_for(&list.items, placement))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(labels: &[(&str, &str)]) -> Node {
        let mut n = Node::default();
        n.metadata.labels =
            Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        n
    }

    #[test]
    fn only_products_on_admitted_nodes_are_offered() {
        let nodes = [
            node(&[("topology.kubernetes.io/region", "eu"), (GPU_PRODUCT_LABEL, "H100")]),
            node(&[("topology.kubernetes.io/region", "eu"), (GPU_PRODUCT_LABEL, "L4")]),
            node(&[("topology.kubernetes.io/region", "us"), (GPU_PRODUCT_LABEL, "A100")]),
            node(&[("topology.kubernetes.io/region", "eu")]),
        ];
        let placement = ResolvedPlacement {
            node_selector: [("topology.kubernetes.io/region".to_string(), "eu".to_string())].into(),
            tolerations: vec![],
        };
        assert_eq!(products_for(&nodes, &placement), ["H100", "L4"]);
    }

    #[test]
    fn ownership_is_by_user_subject_without_case() {
        let t: Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "alcove.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "acme"},
            "spec": {"displayName": "Acme", "tier": "basic", "region": "eu",
                     "owners": [{"kind": "User", "name": "Ada@Acme.example"},
                                {"kind": "Group", "name": "bob@acme.example"}]}
        }))
        .unwrap();
        assert!(owned_by(&t, "ada@acme.example"));
        assert!(!owned_by(&t, "bob@acme.example"), "a group of that name is not the user");
        assert!(!owned_by(&t, "eve@evil.example"));
    }
}
