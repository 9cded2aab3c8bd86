//! Which tag of the Pixel Playground image a canvas runs: the one its spec pins, else the
//! operator's own version, so upgrading the operator moves every unpinned canvas along.
//!
//! Builds up to 0.1.0 defaulted `spec.image.tag` in the CRD, and the API server stores a
//! schema default in the object: every canvas created then carries that build's version as
//! if a user had pinned it. Such a stored default is told from a pin by who owns the field:
//! nobody, after a server-side apply; after a client-side apply, `kubectl` owns every field,
//! but its last-applied configuration shows what the user wrote. A canvas created otherwise
//! (`kubectl create`, an API client's POST) stays pinned: its creator owns the field, as if
//! written, and nothing tells the two apart.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::api::PixelCanvas;

/// `kubectl apply`'s (client-side) field manager.
const CLIENT_SIDE_APPLY_MANAGER: &str = "kubectl-client-side-apply";
/// Where client-side `kubectl apply` keeps the configuration it last applied.
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The tag `canvas` runs: its spec's, unless unset or a default the API server stored;
/// then `default` (the operator's version).
pub fn image_tag<'a>(canvas: &'a PixelCanvas, default: &'a str) -> &'a str {
    match canvas.spec.image.tag.as_deref() {
        Some(tag) if !is_stored_default(canvas) => tag,
        _ => default,
    }
}

/// Whether the canvas's `spec.image.tag` was stored by the API server's defaulting rather
/// than written by anyone. Without managed fields (stripped, or never recorded) nothing
/// shows, and the tag counts as written.
fn is_stored_default(canvas: &PixelCanvas) -> bool {
    let entries = canvas.managed_fields();
    if entries.is_empty() {
        return false;
    }
    let owners: Vec<&ManagedFieldsEntry> = entries
        .iter()
        .filter(|entry| entry.subresource.as_deref().unwrap_or_default().is_empty())
        .filter(|entry| owns_tag(entry))
        .collect();
    owners.iter().all(|entry| {
        entry.manager.as_deref() == Some(CLIENT_SIDE_APPLY_MANAGER)
            && !last_applied_sets_tag(canvas)
    })
}

/// What the operator's canvas cache keeps of the managed fields: every entry, but of its
/// fields only whether it owns the tag, which is all [`image_tag`] reads. The status's
/// entries alone (conditions, components) were most of a cached canvas's bytes.
pub fn trim_managed_fields(canvas: &mut PixelCanvas) {
    for entry in canvas.metadata.managed_fields.iter_mut().flatten() {
        let tag_only =
            owns_tag(entry).then(|| FieldsV1(json!({"f:spec": {"f:image": {"f:tag": {}}}})));
        entry.fields_v1 = tag_only;
    }
}

fn owns_tag(entry: &ManagedFieldsEntry) -> bool {
    entry
        .fields_v1
        .as_ref()
        .is_some_and(|fields| fields.0.pointer("/f:spec/f:image/f:tag").is_some())
}

/// Whether the last client-side apply wrote a tag; an unreadable record counts as yes.
fn last_applied_sets_tag(canvas: &PixelCanvas) -> bool {
    let Some(text) = canvas.annotations().get(LAST_APPLIED_ANNOTATION) else {
        return true;
    };
    serde_json::from_str::<Value>(text)
        .map_or(true, |applied| applied.pointer("/spec/image/tag").is_some())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const OPERATOR: &str = "0.2.0";

    fn canvas(tag: Option<&str>, managed: Value, annotations: Value) -> PixelCanvas {
        let mut spec = json!({"canvas": {"width": 64, "height": 64}});
        if let Some(tag) = tag {
            spec["image"] = json!({"tag": tag});
        }
        serde_json::from_value(json!({
            "apiVersion": "pixel-playground.dev/v1alpha1",
            "kind": "PixelCanvas",
            "metadata": {
                "name": "demo",
                "namespace": "default",
                "managedFields": managed,
                "annotations": annotations,
            },
            "spec": spec,
        }))
        .expect("a valid canvas")
    }

    fn entry(manager: &str, operation: &str, fields: Value) -> Value {
        json!({
            "manager": manager,
            "operation": operation,
            "apiVersion": "pixel-playground.dev/v1alpha1",
            "fieldsType": "FieldsV1",
            "fieldsV1": fields,
        })
    }

    fn owning_tag(manager: &str, operation: &str) -> Value {
        entry(
            manager,
            operation,
            json!({"f:spec": {"f:canvas": {"f:width": {}}, "f:image": {".": {}, "f:tag": {}}}}),
        )
    }

    fn owning_size(manager: &str, operation: &str) -> Value {
        entry(
            manager,
            operation,
            json!({"f:spec": {"f:canvas": {"f:width": {}}}}),
        )
    }

    /// [`image_tag`] of `canvas`, checked to be the same on the canvas as the cache keeps it.
    fn image_tag_cached(canvas: &PixelCanvas) -> String {
        let mut trimmed = canvas.clone();
        trim_managed_fields(&mut trimmed);
        assert_eq!(image_tag(&trimmed, OPERATOR), image_tag(canvas, OPERATOR));
        image_tag(canvas, OPERATOR).to_owned()
    }

    #[test]
    fn the_cache_keeps_only_who_owns_the_tag() {
        let mut status_entry = entry(
            "pixel-operator",
            "Apply",
            json!({"f:status": {"f:url": {}}}),
        );
        status_entry["subresource"] = json!("status");
        let mut canvas = canvas(
            Some("0.1.0"),
            json!([
                owning_tag("kubectl", "Apply"),
                owning_size("kubectl", "Apply"),
                status_entry
            ]),
            json!({}),
        );
        trim_managed_fields(&mut canvas);
        let fields: Vec<Option<Value>> = canvas
            .managed_fields()
            .iter()
            .map(|entry| entry.fields_v1.as_ref().map(|fields| fields.0.clone()))
            .collect();
        assert_eq!(
            fields,
            [
                Some(json!({"f:spec": {"f:image": {"f:tag": {}}}})),
                None,
                None
            ]
        );
    }

    #[test]
    fn an_unset_tag_is_the_operators_version() {
        let unset = canvas(None, json!([owning_size("kubectl", "Apply")]), json!({}));
        assert_eq!(image_tag_cached(&unset), OPERATOR);
    }

    #[test]
    fn a_tag_someone_wrote_is_kept() {
        for owner in [
            owning_tag("kubectl", "Apply"),
            owning_tag("kubectl-create", "Update"),
            owning_tag("kubectl-patch", "Update"),
        ] {
            let pinned = canvas(Some("0.1.0"), json!([owner]), json!({}));
            assert_eq!(image_tag_cached(&pinned), "0.1.0");
        }
    }

    #[test]
    fn a_default_stored_on_a_server_side_apply_follows_the_operator() {
        // What a 0.1.0 CRD left: the tag in the spec, owned by no manager.
        let mut status_entry = entry(
            "pixel-operator",
            "Apply",
            json!({"f:status": {"f:url": {}}}),
        );
        status_entry["subresource"] = json!("status");
        let defaulted = canvas(
            Some("0.1.0"),
            json!([owning_size("kubectl", "Apply"), status_entry,]),
            json!({}),
        );
        assert_eq!(image_tag_cached(&defaulted), OPERATOR);
    }

    #[test]
    fn a_client_side_apply_is_read_from_its_last_applied_configuration() {
        let applied =
            |spec: Value| json!({LAST_APPLIED_ANNOTATION: json!({"spec": spec}).to_string()});
        let owner = json!([owning_tag(CLIENT_SIDE_APPLY_MANAGER, "Update")]);
        let defaulted = canvas(
            Some("0.1.0"),
            owner.clone(),
            applied(json!({"canvas": {"width": 64}})),
        );
        assert_eq!(image_tag_cached(&defaulted), OPERATOR);
        let written = canvas(
            Some("0.1.0"),
            owner.clone(),
            applied(json!({"image": {"tag": "0.1.0"}})),
        );
        assert_eq!(image_tag_cached(&written), "0.1.0");
        let unreadable = canvas(
            Some("0.1.0"),
            owner.clone(),
            json!({LAST_APPLIED_ANNOTATION: "{"}),
        );
        assert_eq!(image_tag_cached(&unreadable), "0.1.0");
        // A later patch of the tag is somebody's choice, whatever kubectl last applied.
        let patched = canvas(
            Some("0.1.1"),
            json!([owner[0].clone(), owning_tag("kubectl-patch", "Update")]),
            applied(json!({"canvas": {"width": 64}})),
        );
        assert_eq!(image_tag_cached(&patched), "0.1.1");
    }

    #[test]
    fn without_managed_fields_a_tag_counts_as_written() {
        let bare = canvas(Some("0.1.0"), json!([]), json!({}));
        assert_eq!(image_tag_cached(&bare), "0.1.0");
    }
}
