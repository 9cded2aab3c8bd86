//! The operator's own Deployment (`config/manager`) gives it what its flags read from the
//! environment: its pod's name and namespace, from the downward API.

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Container};
use serde::Deserialize;

fn manager_container() -> Container {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/manager/manager.yaml"
    );
    let text = std::fs::read_to_string(path).expect("config/manager/manager.yaml");
    let deployment = serde_yaml::Deserializer::from_str(&text)
        .filter_map(|document| {
            let value = serde_yaml::Value::deserialize(document).ok()?;
            (value["kind"] == "Deployment")
                .then(|| serde_yaml::from_value::<Deployment>(value).expect("a Deployment"))
        })
        .next()
        .expect("the operator's Deployment");
    deployment
        .spec
        .and_then(|spec| spec.template.spec)
        .expect("pod spec")
        .containers
        .swap_remove(0)
}

/// The operator's image is this build: canvases that pin no tag run the operator's version,
/// so the manifest that installs the operator must name the same one.
#[test]
fn the_manager_runs_this_builds_version() {
    assert_eq!(
        manager_container().image.as_deref(),
        Some(concat!("pixel-playground:", env!("CARGO_PKG_VERSION")))
    );
}

#[test]
fn the_manager_learns_its_pod_name_and_namespace_from_the_downward_api() {
    let container = manager_container();
    let field = |name: &str| {
        container
            .env
            .iter()
            .flatten()
            .find(|env| env.name == name)
            .and_then(|env| env.value_from.as_ref())
            .and_then(|from| from.field_ref.as_ref())
            .map(|field| field.field_path.clone())
    };
    assert_eq!(field("POD_NAME").as_deref(), Some("metadata.name"));
    assert_eq!(
        field("POD_NAMESPACE").as_deref(),
        Some("metadata.namespace"),
        "the lease lives in the operator's own namespace, wherever it is installed"
    );
}
