//! The ConfigMap with the canvas settings, the generated Redis password Secret, and the
//! hash that rolls pods when either changes.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Secret},
};
use pixel_common::ports;
use sha2::{Digest, Sha256};

use super::{Inputs, naming::Component};

/// Key of the password in the generated Secret.
pub const PASSWORD_KEY: &str = "password";

/// The canvas settings, as the environment the services read (`envFrom`).
pub fn config_data(inputs: &Inputs) -> BTreeMap<String, String> {
    let canvas = &inputs.canvas.spec.canvas;
    BTreeMap::from([
        (ports::ENV_CANVAS_WIDTH.to_owned(), canvas.width.to_string()),
        (
            ports::ENV_CANVAS_HEIGHT.to_owned(),
            canvas.height.to_string(),
        ),
        (
            ports::ENV_CANVAS_PALETTE.to_owned(),
            canvas.palette.join(","),
        ),
        (
            ports::ENV_CANVAS_COOLDOWN_SECONDS.to_owned(),
            canvas.cooldown_seconds.to_string(),
        ),
    ])
}

pub fn config_map(inputs: &Inputs) -> ConfigMap {
    ConfigMap {
        metadata: inputs.metadata(inputs.names.config(), None),
        data: Some(config_data(inputs)),
        ..Default::default()
    }
}

/// The generated password Secret, unless the spec references an existing one.
pub fn redis_secret(inputs: &Inputs) -> Option<Secret> {
    if inputs.canvas.spec.redis.password_secret_ref.is_some() {
        return None;
    }
    Some(Secret {
        metadata: inputs.metadata(inputs.names.redis_secret(), Some(Component::Redis)),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            PASSWORD_KEY.to_owned(),
            ByteString(inputs.password.as_bytes().to_vec()),
        )])),
        ..Default::default()
    })
}

/// What a component's pods consume from the ConfigMap and the Secret, digested. Put in the
/// pod template, so a change rolls exactly the pods that use it.
pub fn consumed_hash(inputs: &Inputs, component: Component) -> String {
    let mut hasher = Sha256::new();
    let mut feed = |part: &str| {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    };
    match component {
        Component::Api | Component::Gateway => {
            for (key, value) in config_data(inputs) {
                feed(&key);
                feed(&value);
            }
            feed(&inputs.password);
        }
        Component::Redis => feed(&inputs.password),
        Component::Frontend => {}
    }
    let digest = hasher.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}
