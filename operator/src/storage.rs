//! Growing the Redis volume. A StatefulSet's volumeClaimTemplates are immutable, so a larger
//! `spec.redis.storage.size` reaches the volume through its claim: the operator raises the
//! claim's request when the claim's StorageClass allows expansion, and otherwise says why it
//! cannot. What to do, and what the status says, is a pure function of the spec's size, the
//! claim and its class; `reconcile` reads those and applies the answer.

use k8s_openapi::{
    api::{core::v1::PersistentVolumeClaim, storage::v1::StorageClass},
    apimachinery::pkg::api::resource::Quantity,
};
use kube_quantity::ParsedQuantity;

/// The resource a claim requests and holds.
const STORAGE: &str = "storage";

/// Where the Redis volume stands against the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageState {
    /// The StatefulSet has not made the claim yet.
    ClaimPending { claim: String },
    /// The volume holds at least what the spec asks.
    AsRequested {
        claim: String,
        capacity: String,
        wanted: String,
    },
    /// The claim asks for the spec's size; the volume has not grown to it yet.
    Expanding {
        claim: String,
        capacity: String,
        wanted: String,
    },
    /// The claim's StorageClass does not allow expansion (or the claim names none).
    NotExpandable {
        claim: String,
        class: Option<String>,
        requested: String,
        wanted: String,
    },
}

/// What to do about the claim, and the state that results.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Raise the claim's storage request to this.
    pub expand_to: Option<Quantity>,
    pub state: StorageState,
}

/// Whether the claim asks for less than `wanted`: only then does its class matter.
pub fn needs_more(wanted: &Quantity, claim: &PersistentVolumeClaim) -> bool {
    less(requested(claim).as_ref(), wanted)
}

/// The plan for claim `name` (`None`: not made yet) when the spec asks for `wanted`; `class`
/// is the claim's StorageClass, read only when [`needs_more`] said so.
pub fn plan(
    name: &str,
    wanted: &Quantity,
    claim: Option<&PersistentVolumeClaim>,
    class: Option<&StorageClass>,
) -> Plan {
    let claim_name = name.to_owned();
    let Some(claim) = claim else {
        return Plan {
            expand_to: None,
            state: StorageState::ClaimPending { claim: claim_name },
        };
    };
    let requested = requested(claim);
    let capacity = claim
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get(STORAGE))
        .cloned();
    // Once the claim asks enough: growing until the volume holds it.
    let held = StorageState::held(claim_name.clone(), capacity.as_ref(), wanted);
    if !less(requested.as_ref(), wanted) {
        return Plan {
            expand_to: None,
            state: held,
        };
    }
    if class.and_then(|c| c.allow_volume_expansion) != Some(true) {
        return Plan {
            expand_to: None,
            state: StorageState::NotExpandable {
                claim: claim_name,
                class: claim
                    .spec
                    .as_ref()
                    .and_then(|s| s.storage_class_name.clone()),
                requested: shown(requested.as_ref()),
                wanted: wanted.0.clone(),
            },
        };
    }
    Plan {
        expand_to: Some(wanted.clone()),
        state: held,
    }
}

impl StorageState {
    /// A claim that asks for `wanted`: as requested once its `capacity` holds it.
    fn held(claim: String, capacity: Option<&Quantity>, wanted: &Quantity) -> Self {
        let (capacity_text, wanted_text) = (shown(capacity), wanted.0.clone());
        if less(capacity, wanted) {
            Self::Expanding {
                claim,
                capacity: capacity_text,
                wanted: wanted_text,
            }
        } else {
            Self::AsRequested {
                claim,
                capacity: capacity_text,
                wanted: wanted_text,
            }
        }
    }
}

/// A quantity for a message.
fn shown(quantity: Option<&Quantity>) -> String {
    quantity.map_or_else(|| "nothing".to_owned(), |q| q.0.clone())
}

fn requested(claim: &PersistentVolumeClaim) -> Option<Quantity> {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get(STORAGE))
        .cloned()
}

/// `have < wanted`; nothing is less than anything. A quantity that does not parse (the
/// schema admits none) is never less, so it never causes a write.
fn less(have: Option<&Quantity>, wanted: &Quantity) -> bool {
    let parse = |q: &Quantity| ParsedQuantity::try_from(q.clone()).ok();
    match (have, parse(wanted)) {
        (None, Some(_)) => true,
        (Some(have), Some(wanted)) => parse(have).is_some_and(|have| have < wanted),
        (_, None) => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claim(requested: &str, capacity: Option<&str>, class: &str) -> PersistentVolumeClaim {
        let mut claim = json!({
            "metadata": {"name": "data-demo-redis-0"},
            "spec": {"storageClassName": class, "resources": {"requests": {"storage": requested}}},
        });
        if let Some(capacity) = capacity {
            claim["status"] = json!({"capacity": {"storage": capacity}});
        }
        serde_json::from_value(claim).expect("claim")
    }

    fn class(expandable: Option<bool>) -> StorageClass {
        let mut class = json!({"metadata": {"name": "standard"}, "provisioner": "example"});
        if let Some(expandable) = expandable {
            class["allowVolumeExpansion"] = json!(expandable);
        }
        serde_json::from_value(class).expect("class")
    }

    fn q(text: &str) -> Quantity {
        Quantity(text.to_owned())
    }

    const NAME: &str = "data-demo-redis-0";

    #[test]
    fn a_claim_with_what_the_spec_asks_is_left_alone() {
        let live = claim("1Gi", Some("1Gi"), "standard");
        assert!(!needs_more(&q("1Gi"), &live));
        assert!(
            !needs_more(&q("1024Mi"), &live),
            "the same size, spelled otherwise"
        );
        assert_eq!(
            plan(NAME, &q("1Gi"), Some(&live), None),
            Plan {
                expand_to: None,
                state: StorageState::AsRequested {
                    claim: NAME.to_owned(),
                    capacity: "1Gi".to_owned(),
                    wanted: "1Gi".to_owned()
                }
            }
        );
    }

    #[test]
    fn a_larger_size_expands_the_claim_when_its_class_allows() {
        let live = claim("1Gi", Some("1Gi"), "standard");
        assert!(needs_more(&q("2Gi"), &live));
        let plan = plan(NAME, &q("2Gi"), Some(&live), Some(&class(Some(true))));
        assert_eq!(plan.expand_to, Some(q("2Gi")));
        assert!(
            matches!(plan.state, StorageState::Expanding { .. }),
            "{plan:?}"
        );
    }

    #[test]
    fn a_claim_asking_enough_is_expanding_until_its_capacity_follows() {
        let growing = claim("2Gi", Some("1Gi"), "standard");
        let plan_now = plan(NAME, &q("2Gi"), Some(&growing), None);
        assert_eq!(plan_now.expand_to, None, "asked once; no second write");
        assert!(matches!(plan_now.state, StorageState::Expanding { .. }));
        let grown = claim("2Gi", Some("2Gi"), "standard");
        assert!(matches!(
            plan(NAME, &q("2Gi"), Some(&grown), None).state,
            StorageState::AsRequested { .. }
        ));
        // A volume larger than asked (a pre-made 100Gi disk) holds the spec already.
        let big = claim("1Gi", Some("100Gi"), "standard");
        let plan = plan(NAME, &q("2Gi"), Some(&big), Some(&class(Some(true))));
        assert_eq!(
            plan.expand_to,
            Some(q("2Gi")),
            "the claim still asks for it"
        );
        assert!(matches!(plan.state, StorageState::AsRequested { .. }));
    }

    #[test]
    fn a_class_without_expansion_says_so_and_writes_nothing() {
        let live = claim("1Gi", Some("1Gi"), "fixed");
        for class in [Some(class(None)), Some(class(Some(false))), None] {
            let plan = plan(NAME, &q("2Gi"), Some(&live), class.as_ref());
            assert_eq!(plan.expand_to, None);
            assert_eq!(
                plan.state,
                StorageState::NotExpandable {
                    claim: NAME.to_owned(),
                    class: Some("fixed".to_owned()),
                    requested: "1Gi".to_owned(),
                    wanted: "2Gi".to_owned()
                }
            );
        }
    }

    #[test]
    fn no_claim_yet_is_pending_and_a_smaller_size_is_never_applied() {
        assert_eq!(
            plan(NAME, &q("1Gi"), None, None).state,
            StorageState::ClaimPending {
                claim: NAME.to_owned()
            }
        );
        let live = claim("2Gi", Some("2Gi"), "standard");
        assert!(!needs_more(&q("1Gi"), &live));
        assert_eq!(plan(NAME, &q("1Gi"), Some(&live), None).expand_to, None);
        assert!(!needs_more(&q("not a quantity"), &live));
    }
}
