//! The ConfigMap with the canvas settings, the generated Secrets (the Redis password, the
//! internal API token and identity keys, the moderator token), and the hash that rolls pods when any of them changes.

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
/// Key of the internal API token in the generated internal Secret.
pub const API_TOKEN_KEY: &str = "api-token";
/// Key of the key that signs identity cookies, in the generated internal Secret.
pub const IDENTITY_KEY_KEY: &str = "identity-key";
/// Key of the identity key before the last rotation (empty before the first).
pub const IDENTITY_KEY_PREVIOUS_KEY: &str = "identity-key-previous";
/// Key of the identity key of a rotation under way (verifying only; empty otherwise).
pub const IDENTITY_KEY_NEXT_KEY: &str = "identity-key-next";
/// Key of the moderator token in the generated moderator Secret.
pub const MODERATOR_TOKEN_KEY: &str = "token";
/// Key of the rotation annotation's value the keys were last rotated for.
pub const IDENTITY_KEY_ROTATION_KEY: &str = "identity-key-rotation";

/// The canvas settings, as the environment the services read (`envFrom`).
pub fn config_data(inputs: &Inputs) -> BTreeMap<String, String> {
    let canvas = &inputs.canvas.spec.canvas;
    let mut data = BTreeMap::from([
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
        (
            ports::ENV_CANVAS_UNDO_SECONDS.to_owned(),
            canvas.undo_seconds.to_string(),
        ),
        (
            ports::ENV_CANVAS_READ_ONLY.to_owned(),
            canvas.read_only.to_string(),
        ),
    ]);
    // Unset ends are absent, not empty: the services read an empty value as an instant.
    let schedule = canvas.schedule.as_ref();
    let ends = [
        (
            ports::ENV_CANVAS_OPENS_AT,
            schedule.and_then(|s| s.start.as_ref()),
        ),
        (
            ports::ENV_CANVAS_CLOSES_AT,
            schedule.and_then(|s| s.end.as_ref()),
        ),
    ];
    for (name, at) in ends {
        if let Some(at) = at {
            data.insert(name.to_owned(), at.0.to_string());
        }
    }
    data
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
            ByteString(inputs.credentials.redis_password.as_bytes().to_vec()),
        )])),
        ..Default::default()
    })
}

/// The generated Secret of the moderator token, which moderators are given (by whoever may
/// read it: `kubectl get secret <name>-moderator`) for the moderation API.
pub fn moderator_secret(inputs: &Inputs) -> Secret {
    Secret {
        metadata: inputs.metadata(inputs.names.moderator_secret(), Some(Component::Api)),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            MODERATOR_TOKEN_KEY.to_owned(),
            ByteString(inputs.credentials.moderator_token.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

/// The generated Secret of the internal credentials: the token canvas-api requires of its
/// only caller, the gateway, and the key the gateway signs identity cookies with.
pub fn internal_secret(inputs: &Inputs) -> Secret {
    let credentials = &inputs.credentials;
    let bytes = |value: &str| ByteString(value.as_bytes().to_vec());
    Secret {
        metadata: inputs.metadata(inputs.names.internal_secret(), None),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([
            (API_TOKEN_KEY.to_owned(), bytes(&credentials.api_token)),
            (
                IDENTITY_KEY_KEY.to_owned(),
                bytes(&credentials.identity.current),
            ),
            (
                IDENTITY_KEY_PREVIOUS_KEY.to_owned(),
                bytes(&credentials.identity.previous),
            ),
            (
                IDENTITY_KEY_NEXT_KEY.to_owned(),
                bytes(&credentials.identity.next),
            ),
            (
                IDENTITY_KEY_ROTATION_KEY.to_owned(),
                bytes(&credentials.identity.rotation),
            ),
        ])),
        ..Default::default()
    }
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
            feed(&inputs.credentials.redis_password);
            feed(&inputs.credentials.api_token);
            if component == Component::Api
                || (component == Component::Gateway
                    && super::workloads::moderates_for_people(inputs))
            {
                feed(&inputs.credentials.moderator_token);
            }
            if component == Component::Gateway {
                // A rotated client secret reaches the gateways by a roll.
                feed(&inputs.credentials.oidc_client_secret);
                feed(&inputs.credentials.identity.current);
                feed(&inputs.credentials.identity.previous);
                feed(&inputs.credentials.identity.next);
            }
        }
        Component::Redis => feed(&inputs.credentials.redis_password),
        Component::Frontend => {}
    }
    let digest = hasher.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}
