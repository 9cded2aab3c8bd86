//! What the tooling knows of a canvas's children when it inspects them with kubectl: how to
//! list them and how to walk the list.

use std::sync::LazyLock;

use serde_json::Value;

/// The kinds of a canvas's children, for `kubectl get`.
pub const KINDS: &str = "deployments,statefulsets,services,configmaps,secrets,poddisruptionbudgets,networkpolicies,ingresses";

/// `kubectl` arguments listing, as JSON, the objects of `kinds` in `namespace` that carry
/// the operator's label.
pub fn get_args<'a>(kinds: &'a str, namespace: &'a str) -> [&'a str; 8] {
    static MANAGED: LazyLock<String> =
        LazyLock::new(pixel_common::operator_contract::managed_selector);
    ["get", kinds, "-n", namespace, "-l", &MANAGED, "-o", "json"]
}

/// The items of a `kubectl get -o json` list.
pub fn items(list: &Value) -> impl Iterator<Item = &Value> {
    list["items"].as_array().into_iter().flatten()
}
