//! canvas-api, gateway and frontend: a Deployment, a Service and (above one replica) a
//! PodDisruptionBudget each.

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource,
            HTTPGetAction, Lifecycle, LifecycleHandler, Probe, ResourceRequirements,
            SecretKeySelector, Service, ServicePort, ServiceSpec, SleepAction,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use pixel_common::ports;

use super::{Inputs, config, naming::Component, pod_template, security};

/// How long a stopping pod keeps serving before it is signalled: the time endpoint
/// controllers and Ingress controllers take to stop routing to it.
pub const PRE_STOP_SECONDS: i64 = 5;

/// A stateless component: what differs between canvas-api, gateway and frontend.
struct Stateless {
    component: Component,
    binary: &'static str,
    port: u16,
    replicas: i32,
    resources: Option<ResourceRequirements>,
    /// Reads Redis (and so the password and canvas settings).
    uses_redis: bool,
}

fn stateless(inputs: &Inputs, component: Component) -> Option<Stateless> {
    let spec = &inputs.canvas.spec;
    Some(match component {
        Component::Redis => return None,
        Component::Api => Stateless {
            component,
            binary: "canvas-api",
            port: ports::CANVAS_API,
            replicas: spec.api.replicas,
            resources: spec.api.resources.clone(),
            uses_redis: true,
        },
        Component::Gateway => Stateless {
            component,
            binary: "gateway",
            port: ports::GATEWAY,
            replicas: spec.gateway.replicas,
            resources: spec.gateway.resources.clone(),
            uses_redis: true,
        },
        Component::Frontend => Stateless {
            component,
            binary: "frontend",
            port: ports::FRONTEND,
            replicas: spec.frontend.replicas,
            resources: spec.frontend.resources.clone(),
            uses_redis: false,
        },
    })
}

/// The proxies whose `X-Forwarded-For` the gateway believes: loopback, and the ranges the
/// spec names for its proxies, else those its Ingress controller connects from.
fn trusted_proxies(inputs: &Inputs) -> String {
    let spec = &inputs.canvas.spec;
    let named = spec
        .gateway
        .trusted_proxies
        .as_ref()
        .unwrap_or(&spec.network_policy.ingress_controller_cidrs);
    [ports::LOOPBACK_PROXIES]
        .into_iter()
        .chain(named.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(",")
}

/// The stateless components, in order.
pub const STATELESS: [Component; 3] = [Component::Api, Component::Gateway, Component::Frontend];

fn env(inputs: &Inputs, s: &Stateless) -> Vec<EnvVar> {
    let value = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..Default::default()
    };
    let mut env = vec![
        value(
            ports::ENV_LISTEN_ADDR,
            ports::listen_any(s.port).to_string(),
        ),
        value(ports::ENV_LOG_FORMAT, "json".to_owned()),
    ];
    if s.uses_redis {
        env.push(value(
            ports::ENV_REDIS_URL,
            format!(
                "redis://{}:{}",
                inputs.names.component(Component::Redis),
                ports::REDIS
            ),
        ));
        env.push(password_env(inputs, ports::ENV_REDIS_PASSWORD));
    }
    if matches!(s.component, Component::Api | Component::Gateway) {
        env.push(secret_env(
            ports::ENV_API_TOKEN,
            inputs.names.internal_secret(),
            config::API_TOKEN_KEY,
        ));
    }
    if s.component == Component::Api {
        env.push(secret_env(
            ports::ENV_MODERATOR_TOKEN,
            inputs.names.moderator_secret(),
            config::MODERATOR_TOKEN_KEY,
        ));
    }
    if s.component == Component::Gateway {
        env.push(secret_env(
            ports::ENV_IDENTITY_KEY,
            inputs.names.internal_secret(),
            config::IDENTITY_KEY_KEY,
        ));
        env.push(secret_env(
            ports::ENV_IDENTITY_KEY_PREVIOUS,
            inputs.names.internal_secret(),
            config::IDENTITY_KEY_PREVIOUS_KEY,
        ));
        env.push(secret_env(
            ports::ENV_IDENTITY_KEY_NEXT,
            inputs.names.internal_secret(),
            config::IDENTITY_KEY_NEXT_KEY,
        ));
        env.push(value(
            ports::ENV_WS_TRUSTED_PROXIES,
            trusted_proxies(inputs),
        ));
        // A cookie for a canvas served over TLS is never sent over plain HTTP.
        env.push(value(
            ports::ENV_IDENTITY_COOKIE_SECURE,
            inputs
                .canvas
                .spec
                .ingress
                .tls_secret_name
                .is_some()
                .to_string(),
        ));
        env.push(value(
            ports::ENV_API_URL,
            format!(
                "http://{}:{}",
                inputs.names.component(Component::Api),
                ports::CANVAS_API
            ),
        ));
        env.push(value(
            ports::ENV_MAX_CONNECTIONS,
            inputs.canvas.spec.gateway.max_connections.to_string(),
        ));
        if let Some(auth) = &inputs.canvas.spec.auth {
            env.extend(sign_in_env(inputs, auth));
        }
    }
    env
}

/// The gateway's sign-in settings, from `spec.auth`; the client secret by reference.
fn sign_in_env(inputs: &Inputs, auth: &crate::api::AuthSpec) -> Vec<EnvVar> {
    let value = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..Default::default()
    };
    let redirect = auth.redirect_url.clone().or_else(|| {
        super::ingress::url(inputs)
            .map(|url| format!("{}{}", url.trim_end_matches('/'), ports::AUTH_CALLBACK_PATH))
    });
    let mut env = vec![
        value(ports::ENV_OIDC_ISSUER, auth.issuer_url.clone()),
        value(ports::ENV_OIDC_CLIENT_ID, auth.client_id.clone()),
        // The CRD requires a redirect URL or an Ingress host, so this is never empty.
        value(ports::ENV_OIDC_REDIRECT_URL, redirect.unwrap_or_default()),
        value(
            ports::ENV_OIDC_ALLOWED_EMAIL_DOMAINS,
            auth.allowed_email_domains.join(","),
        ),
        value(
            ports::ENV_OIDC_ALLOWED_GROUPS,
            auth.allowed_groups.join(","),
        ),
        value(ports::ENV_OIDC_GROUPS_CLAIM, auth.groups_claim.clone()),
        value(
            ports::ENV_OIDC_MODERATOR_GROUPS,
            auth.moderator_groups.join(","),
        ),
        value(
            ports::ENV_OIDC_WATCHERS_ALLOWED,
            auth.watchers_allowed.to_string(),
        ),
    ];
    if let Some(secret) = &auth.client_secret_ref {
        env.push(secret_env(
            ports::ENV_OIDC_CLIENT_SECRET,
            secret.name.clone(),
            &secret.key,
        ));
    }
    if moderates_for_people(inputs) {
        env.push(secret_env(
            ports::ENV_MODERATOR_TOKEN,
            inputs.names.moderator_secret(),
            config::MODERATOR_TOKEN_KEY,
        ));
    }
    env
}

/// Whether the gateway moderates for signed-in moderators (so holds the moderator token).
pub fn moderates_for_people(inputs: &Inputs) -> bool {
    inputs
        .canvas
        .spec
        .auth
        .as_ref()
        .is_some_and(|auth| !auth.moderator_groups.is_empty())
}

/// An environment variable holding the Redis password, from whichever Secret holds it.
pub fn password_env(inputs: &Inputs, name: &str) -> EnvVar {
    let (secret, key) = match &inputs.canvas.spec.redis.password_secret_ref {
        Some(r) => (r.name.clone(), r.key.clone()),
        None => (inputs.names.redis_secret(), config::PASSWORD_KEY.to_owned()),
    };
    secret_env(name, secret, &key)
}

/// An environment variable from a key of a Secret that must exist.
pub(super) fn secret_env(name: &str, secret: String, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret,
                key: key.to_owned(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

fn deployment(inputs: &Inputs, s: &Stateless) -> Deployment {
    let names = &inputs.names;
    let (tmp_volume, tmp_mount) = security::tmp_volume();
    let container = Container {
        name: s.binary.to_owned(),
        image: Some(inputs.image().to_owned()),
        image_pull_policy: Some(inputs.pull_policy().to_owned()),
        command: Some(vec![format!("/usr/local/bin/{}", s.binary)]),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: i32::from(s.port),
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        }]),
        env: Some(env(inputs, s)),
        env_from: s.uses_redis.then(|| {
            vec![EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: names.config(),
                    optional: Some(false),
                }),
                ..Default::default()
            }]
        }),
        liveness_probe: Some(http_probe(ports::HEALTHZ_PATH, 10, 3)),
        readiness_probe: Some(http_probe(ports::READYZ_PATH, 5, 2)),
        // Endpoints and the Ingress stop routing to a terminating pod only a moment after it
        // is told to stop: keep serving that long before the listener closes.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SECONDS,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        resources: Some(security::resources(
            s.resources.as_ref(),
            ("50m", "64Mi", "256Mi"),
        )),
        security_context: Some(security::container_security_context()),
        volume_mounts: Some(vec![tmp_mount]),
        ..Default::default()
    };
    Deployment {
        metadata: inputs.metadata(names.component(s.component), Some(s.component)),
        spec: Some(DeploymentSpec {
            replicas: Some(s.replicas),
            selector: LabelSelector {
                match_labels: Some(names.selector(s.component)),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: pod_template(inputs, s.component, container, tmp_volume),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn service(inputs: &Inputs, s: &Stateless) -> Service {
    Service {
        metadata: inputs.metadata(inputs.names.component(s.component), Some(s.component)),
        spec: Some(ServiceSpec {
            selector: Some(inputs.names.selector(s.component)),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: i32::from(s.port),
                target_port: Some(IntOrString::String("http".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Voluntary disruptions (node drains) take at most one pod at a time, when there is more
/// than one to take.
fn disruption_budget(inputs: &Inputs, s: &Stateless) -> Option<PodDisruptionBudget> {
    (s.replicas > 1).then(|| PodDisruptionBudget {
        metadata: inputs.metadata(inputs.names.component(s.component), Some(s.component)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(inputs.names.selector(s.component)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The Deployment, Service and (maybe) PodDisruptionBudget of a stateless component
/// (`None` for Redis, which is stateful).
pub fn objects(
    inputs: &Inputs,
    component: Component,
) -> Option<(Deployment, Service, Option<PodDisruptionBudget>)> {
    let s = stateless(inputs, component)?;
    Some((
        deployment(inputs, &s),
        service(inputs, &s),
        disruption_budget(inputs, &s),
    ))
}
