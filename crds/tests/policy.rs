//! The schema's CEL retention rules agree with `policy.rs` at every boundary.

use alcove_crds::policy::{DataClass, Tier, Window};
use serde_json::{Value, json};

fn tenant(tier: Tier, class: DataClass, window: Window) -> Value {
    let mut doc = json!({
        "apiVersion": "alcove.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": "boundary"},
        "spec": {
            "displayName": "Boundary",
            "tier": tier.as_str(),
            "region": "tw-taipei-1",
            "retention": { class.as_str(): window.to_string() },
        }
    });
    if tier == Tier::Enterprise {
        doc["spec"]["placement"] = json!({"nodeSelector": {"pool": "customer"}});
    }
    doc
}

fn schema() -> Value {
    let crd = alcove_crds::crds().remove(0);
    serde_json::to_value(
        crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap(),
    )
    .unwrap()
}

fn accepted(schema: &Value, doc: &Value) -> bool {
    kube_cel::Validator::new().validate(schema, doc, None).is_ok()
}

#[test]
fn cel_rules_match_policy_at_the_boundaries() {
    let schema = schema();
    for tier in [Tier::Free, Tier::Basic, Tier::Pro, Tier::Enterprise] {
        for class in DataClass::ALL {
            if let Some(max) = class.max_window() {
                assert!(accepted(&schema, &tenant(tier, class, max)), "{tier:?} {class:?} at max");
                let over = Window::minutes(max.minutes + 1);
                assert!(
                    !accepted(&schema, &tenant(tier, class, over)),
                    "{tier:?} {class:?} above max"
                );
            }
            match class.legal_minimum(tier) {
                Some(min) => {
                    assert!(
                        accepted(&schema, &tenant(tier, class, min)),
                        "{tier:?} {class:?} at min"
                    );
                    let under = Window::minutes(min.minutes - 1);
                    assert!(
                        !accepted(&schema, &tenant(tier, class, under)),
                        "{tier:?} {class:?} below min"
                    );
                }
                None => assert!(
                    accepted(&schema, &tenant(tier, class, Window::minutes(1))),
                    "{tier:?} {class:?} 1m"
                ),
            }
        }
    }
}
