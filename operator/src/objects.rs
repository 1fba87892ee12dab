//! Small constructors for the k8s-openapi types the builders assemble, so builders write typed
//! objects (a misspelled field does not compile) without repeating `..Default::default()` for
//! the few shapes they use over and over.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, KeyToPath, PersistentVolumeClaimVolumeSource,
    PodSecurityContext, SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

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

/// Bytes in a storage quantity (`50Gi`, `1G`, `1048576`); `None` when it is not one.
pub fn storage_bytes(q: &str) -> Option<u64> {
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (digits, suffix) = q.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let factor: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// Where a URL connects: host and port.
pub fn url_target(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map(|(_, a)| a).unwrap_or(authority);
    let default = if scheme == "https" { 443 } else { 80 };
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok()).unwrap_or(default);
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((authority.to_string(), default)),
    }
}

/// A NetworkPolicy opening egress from the pods matching `pod_labels` to each URL's host and
/// port (the tenant namespace denies all other egress); `None` for no URLs. An IP literal is
/// allowed exactly; a host name can only be allowed by port (NetworkPolicy has no names), to
/// any address outside the cluster's private ranges.
pub fn egress_policy<'a>(
    metadata: ObjectMeta,
    pod_labels: BTreeMap<String, String>,
    urls: impl IntoIterator<Item = &'a str>,
) -> Option<NetworkPolicy> {
    let targets: Vec<(String, u16)> = urls.into_iter().filter_map(url_target).collect();
    if targets.is_empty() {
        return None;
    }
    let block = |cidr: String, except: &[&str]| NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr,
            except: (!except.is_empty()).then(|| except.iter().map(|e| e.to_string()).collect()),
        }),
        ..Default::default()
    };
    let rules = targets
        .iter()
        .map(|(host, port)| {
            let to = match host.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(ip)) => vec![block(format!("{ip}/32"), &[])],
                Ok(std::net::IpAddr::V6(ip)) => vec![block(format!("{ip}/128"), &[])],
                Err(_) => vec![
                    block(
                        "0.0.0.0/0".into(),
                        &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"],
                    ),
                    block("::/0".into(), &["fc00::/7", "fe80::/10"]),
                ],
            };
            NetworkPolicyEgressRule {
                to: Some(to),
                ports: Some(vec![NetworkPolicyPort {
                    protocol: Some("TCP".into()),
                    port: Some(IntOrString::Int((*port).into())),
                    end_port: None,
                }]),
            }
        })
        .collect();
    Some(NetworkPolicy {
        metadata,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(pod_labels),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Egress".into()]),
            egress: Some(rules),
            ingress: None,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_quantities_in_bytes() {
        assert_eq!(storage_bytes("50Gi"), Some(50 << 30));
        assert_eq!(storage_bytes("1G"), Some(1_000_000_000));
        assert_eq!(storage_bytes("4096"), Some(4096));
        assert_eq!(storage_bytes("1.5Gi"), None);
        assert_eq!(storage_bytes("Gi"), None);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any size a spec can hold: the bytes it means, or `None` when they do not fit a
            /// `u64` or it is not a size; never a panic or a wrapped count.
            #[test]
            fn sizes_are_exact_or_refused(
                n in any::<u64>(),
                which in 0usize..9,
                junk in "\\PC{0,6}",
            ) {
                let (suffix, factor) = [
                    ("", 1u128),
                    ("Ki", 1 << 10),
                    ("Mi", 1 << 20),
                    ("Gi", 1 << 30),
                    ("Ti", 1 << 40),
                    ("k", 1000),
                    ("M", 1_000_000),
                    ("G", 1_000_000_000),
                    ("T", 1_000_000_000_000),
                ][which];
                let exact = u64::try_from(n as u128 * factor).ok();
                prop_assert_eq!(storage_bytes(&format!("{n}{suffix}")), exact);
                let _ = storage_bytes(&junk);
            }
        }
    }
}
