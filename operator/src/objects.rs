//! Small constructors for the k8s-openapi types the builders assemble, so builders write typed
//! objects (a misspelled field does not compile) without repeating `..Default::default()` for
//! the few shapes they use over and over.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, KeyToPath, PersistentVolumeClaimVolumeSource,
    PodSecurityContext, SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The image's numeric non-root user and group.
pub const RUN_AS: i64 = 65532;

/// `(key, value)` pairs as an owned string map (labels, selectors, data).
pub fn string_map<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// `(resource, amount)` pairs as resource quantities.
pub fn quantities<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> BTreeMap<String, Quantity> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect()
}

pub fn mount(volume: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// Keys projected into files of the same name (`None` for no keys: the whole object).
pub fn items(keys: &[(&str, &str)]) -> Option<Vec<KeyToPath>> {
    (!keys.is_empty()).then(|| {
        keys.iter()
            .map(|(key, path)| KeyToPath {
                key: key.to_string(),
                path: path.to_string(),
                mode: None,
            })
            .collect()
    })
}

pub fn pvc_volume(volume: &str, claim: &str, read_only: bool) -> Volume {
    Volume {
        name: volume.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.into(),
            read_only: read_only.then_some(true),
        }),
        ..Default::default()
    }
}

pub fn secret_volume(
    volume: &str,
    secret: &str,
    mode: i32,
    items: Option<Vec<KeyToPath>>,
) -> Volume {
    Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(mode),
            items,
            optional: None,
        }),
        ..Default::default()
    }
}

pub fn config_map_volume(
    volume: &str,
    config_map: &str,
    mode: i32,
    items: Option<Vec<KeyToPath>>,
) -> Volume {
    Volume {
        name: volume.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.into(),
            default_mode: Some(mode),
            items,
            optional: None,
        }),
        ..Default::default()
    }
}

/// The pod security context every pod the operator makes has (Pod Security `restricted`): the
/// image's numeric non-root user, fsGroup for the secret files, the runtime's seccomp profile.
pub fn restricted_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: Some(RUN_AS),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

/// The container security context for Pod Security `restricted`, with a read-only root.
pub fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
        ..Default::default()
    }
}
