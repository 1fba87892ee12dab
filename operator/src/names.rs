//! Names every layer agrees on: labels, well-known object names and ports, and how tenants map to
//! their namespaces. Constants and string functions only.

/// The label every object the operator makes carries.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "alcove-operator");
/// Label on instance pods, so policies can select them.
pub const COMPONENT_LABEL: &str = "alcove.dev/component";
/// The port every instance serves on, inside its pod.
pub const INSTANCE_PORT: i32 = 8080;
/// The Secret holding a tenant's encryption key, in its namespace.
pub const KEY_SECRET: &str = "alcove-tenant-key";
/// Where a knowledge base's index lies on its volume.
pub const INDEX_DIR: &str = "index";

pub fn namespace_name(tenant: &str) -> String {
    alcove_crds::tenant::namespace_of(tenant)
}

/// The tenant a tenant namespace belongs to (`tenant-<name>`).
pub fn tenant_of_namespace(ns: &str) -> Option<&str> {
    ns.strip_prefix("tenant-").filter(|n| !n.is_empty())
}
