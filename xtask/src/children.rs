//! What xtask knows of a canvas's children when it inspects them with kubectl: how to list
//! them and how to walk the list.

use serde_json::Value;

/// The label every child of a canvas carries, as a selector.
pub const MANAGED: &str = "app.kubernetes.io/managed-by=pixel-operator";

/// The kinds of a canvas's children, for `kubectl get`.
pub const KINDS: &str = "deployments,statefulsets,services,configmaps,secrets,poddisruptionbudgets,networkpolicies,ingresses";

/// The items of a `kubectl get -o json` list.
pub fn items(list: &Value) -> impl Iterator<Item = &Value> {
    list["items"].as_array().into_iter().flatten()
}
