//! What xtask knows of a canvas's children when it inspects them with kubectl: how to list
//! them and how to walk the list.

use serde_json::Value;

/// The label every child of a canvas carries, as a selector.
const MANAGED: &str = "app.kubernetes.io/managed-by=pixel-operator";

/// The kinds of a canvas's children, for `kubectl get`.
pub const KINDS: &str = "deployments,statefulsets,services,configmaps,secrets,poddisruptionbudgets,networkpolicies,ingresses";

/// `kubectl` arguments listing, as JSON, the objects of `kinds` in `namespace` that carry
/// the operator's label.
pub fn get_args<'a>(kinds: &'a str, namespace: &'a str) -> [&'a str; 8] {
    ["get", kinds, "-n", namespace, "-l", MANAGED, "-o", "json"]
}

/// The items of a `kubectl get -o json` list.
pub fn items(list: &Value) -> impl Iterator<Item = &Value> {
    list["items"].as_array().into_iter().flatten()
}
