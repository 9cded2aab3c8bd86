use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Resource;
use pixel_common::ports;
use serde_json::json;

use super::*;
use crate::api::{PixelCanvasSpec, SecretKeyRef};

fn canvas(spec: serde_json::Value) -> PixelCanvas {
    let mut canvas = PixelCanvas::new(
        "demo",
        serde_json::from_value::<PixelCanvasSpec>(spec).expect("valid spec"),
    );
    canvas.meta_mut().namespace = Some("art".to_owned());
    canvas.meta_mut().uid = Some("0000-uid".to_owned());
    canvas
}

fn desired_for(canvas: &PixelCanvas) -> Desired {
    desired_with(canvas, &Defaults::default())
}

fn desired_with(canvas: &PixelCanvas, defaults: &Defaults) -> Desired {
    desired(
        &Inputs::new(canvas, credentials("s3cret", "t0ken-0123456789"), defaults).expect("context"),
    )
}

/// Asserts which pods a change from `base` to `changed` rolls (their config hash moves).
fn assert_rolls(base: &Desired, changed: &Desired, change: &str, rolls: [(&str, bool); 4]) {
    for (name, rolls) in rolls {
        assert_eq!(
            pod_annotation(base, name) != pod_annotation(changed, name),
            rolls,
            "{change}, {name}"
        );
    }
}

fn credentials(redis_password: &str, api_token: &str) -> Credentials {
    Credentials {
        redis_password: redis_password.to_owned(),
        api_token: api_token.to_owned(),
        identity: IdentityKeys {
            current: "identity-key-0123456789-0123456789".to_owned(),
            ..IdentityKeys::default()
        },
        moderator_token: "moderator-token-0123456789".to_owned(),
        oidc_client_secret: String::new(),
    }
}

fn find<'a>(desired: &'a Desired, kind: &str, name: &str) -> &'a Child {
    desired
        .apply
        .iter()
        .find(|c| c.kind() == kind && c.name() == name)
        .unwrap_or_else(|| {
            panic!(
                "no {kind} {name} in {:?}",
                desired
                    .apply
                    .iter()
                    .map(|c| (c.kind(), c.name()))
                    .collect::<Vec<_>>()
            )
        })
}

/// Where the child `kind` `name` comes in the apply order.
fn position_of(desired: &Desired, kind: &str, name: &str) -> usize {
    desired
        .apply
        .iter()
        .position(|c| c.kind() == kind && c.name() == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn deployment<'a>(desired: &'a Desired, name: &str) -> &'a Deployment {
    match find(desired, "Deployment", name) {
        Child::Deployment(d) => d,
        other => panic!("{other:?}"),
    }
}

fn stateful_set(desired: &Desired) -> &StatefulSet {
    match find(desired, "StatefulSet", "demo-redis") {
        Child::StatefulSet(s) => s,
        other => panic!("{other:?}"),
    }
}

fn pod_specs(desired: &Desired) -> Vec<(&str, &PodSpec)> {
    desired
        .apply
        .iter()
        .filter_map(|child| match child {
            Child::Deployment(d) => Some((child.name(), d.spec.as_ref()?.template.spec.as_ref()?)),
            Child::StatefulSet(s) => Some((child.name(), s.spec.as_ref()?.template.spec.as_ref()?)),
            _ => None,
        })
        .collect()
}

fn pod_annotation(desired: &Desired, name: &str) -> String {
    pod_annotations(desired, name)
        .get(CONFIG_HASH_ANNOTATION)
        .cloned()
        .expect("hash")
}

fn pod_annotations(desired: &Desired, name: &str) -> BTreeMap<String, String> {
    let template = match find(
        desired,
        if name.ends_with("-redis") {
            "StatefulSet"
        } else {
            "Deployment"
        },
        name,
    ) {
        Child::Deployment(d) => d.spec.clone().expect("spec").template,
        Child::StatefulSet(s) => s.spec.clone().expect("spec").template,
        other => panic!("{other:?}"),
    };
    template
        .metadata
        .and_then(|m| m.annotations)
        .unwrap_or_default()
}

fn container(spec: &PodSpec) -> &Container {
    assert_eq!(spec.containers.len(), 1);
    &spec.containers[0]
}

#[test]
fn a_default_canvas_has_the_whole_stack() {
    let d = desired_for(&canvas(json!({})));
    let mut kinds: Vec<(&str, &str)> = d.apply.iter().map(|c| (c.kind(), c.name())).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            ("ConfigMap", "demo-config"),
            ("Deployment", "demo-api"),
            ("Deployment", "demo-frontend"),
            ("Deployment", "demo-gateway"),
            ("Ingress", "demo"),
            ("NetworkPolicy", "demo-api"),
            ("NetworkPolicy", "demo-frontend"),
            ("NetworkPolicy", "demo-gateway"),
            ("NetworkPolicy", "demo-redis"),
            ("PodDisruptionBudget", "demo-api"),
            ("PodDisruptionBudget", "demo-frontend"),
            ("PodDisruptionBudget", "demo-gateway"),
            ("Secret", "demo-internal"),
            ("Secret", "demo-moderator"),
            ("Secret", "demo-redis-auth"),
            ("Service", "demo-api"),
            ("Service", "demo-frontend"),
            ("Service", "demo-gateway"),
            ("Service", "demo-redis"),
            ("StatefulSet", "demo-redis"),
        ]
    );
    assert_eq!(
        d.absent,
        vec![
            (ChildKind::NetworkPolicy, "demo-backup".to_owned()),
            (ChildKind::CronJob, "demo-backup".to_owned())
        ],
        "no backups unless asked for"
    );
}

#[test]
fn the_config_map_comes_before_its_users() {
    let d = desired_for(&canvas(json!({})));
    assert_eq!(d.apply[0].kind(), "ConfigMap");
    assert_eq!(d.apply[1].kind(), "Secret");
}

#[test]
fn every_child_is_owned_by_the_canvas_and_labelled() {
    let c = canvas(json!({}));
    for child in desired_for(&c).apply {
        let meta = child.meta();
        assert_eq!(meta.namespace.as_deref(), Some("art"));
        let owners = meta.owner_references.as_ref().expect("owner references");
        assert_eq!(owners.len(), 1, "{}", child.name());
        assert_eq!(owners[0].uid, "0000-uid");
        assert_eq!(owners[0].kind, "PixelCanvas");
        assert_eq!(owners[0].controller, Some(true));
        let labels = meta.labels.as_ref().expect("labels");
        for key in [
            naming::LABEL_NAME,
            naming::LABEL_INSTANCE,
            naming::LABEL_MANAGED_BY,
            naming::LABEL_PART_OF,
            naming::LABEL_VERSION,
        ] {
            assert!(
                labels.contains_key(key),
                "{} {} lacks {key}",
                child.kind(),
                child.name()
            );
        }
        assert_eq!(labels[naming::LABEL_INSTANCE], "demo");
    }
}

#[test]
fn every_pod_meets_the_restricted_profile_with_a_read_only_root() {
    let d = desired_for(&canvas(json!({})));
    let pods = pod_specs(&d);
    assert_eq!(pods.len(), 4);
    for (name, spec) in pods {
        let pod = spec
            .security_context
            .as_ref()
            .expect("pod security context");
        assert_eq!(pod.run_as_non_root, Some(true), "{name}");
        assert_eq!(
            pod.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault"),
            "{name}"
        );
        assert_eq!(spec.automount_service_account_token, Some(false), "{name}");
        for c in &spec.containers {
            let sc = c
                .security_context
                .as_ref()
                .expect("container security context");
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{name}");
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}");
            assert_eq!(sc.privileged, None, "{name}");
            let drop = sc
                .capabilities
                .as_ref()
                .and_then(|c| c.drop.clone())
                .unwrap_or_default();
            assert_eq!(drop, vec!["ALL".to_owned()], "{name}");
            assert!(
                c.resources
                    .as_ref()
                    .and_then(|r| r.limits.as_ref())
                    .is_some(),
                "{name} has limits"
            );
            assert!(
                c.liveness_probe.is_some() && c.readiness_probe.is_some(),
                "{name} has probes"
            );
        }
    }
}

#[test]
fn services_listen_on_the_shared_ports() {
    let d = desired_for(&canvas(json!({})));
    for (name, port) in [
        ("demo-api", 3001),
        ("demo-gateway", 3002),
        ("demo-frontend", 3000),
        ("demo-redis", 6379),
    ] {
        let Child::Service(service) = find(&d, "Service", name) else {
            panic!()
        };
        let ports = service
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .expect("ports");
        assert_eq!(ports[0].port, port, "{name}");
    }
    let Child::Service(redis) = find(&d, "Service", "demo-redis") else {
        panic!()
    };
    assert_eq!(
        redis.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        Some("None"),
        "headless"
    );
}

#[test]
fn replicas_and_resources_follow_the_spec() {
    let d = desired_for(&canvas(json!({
        "api": {"replicas": 5, "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
        "gateway": {"replicas": 3},
        "frontend": {"replicas": 1}
    })));
    let replicas = |name| deployment(&d, name).spec.as_ref().and_then(|s| s.replicas);
    assert_eq!(
        (
            replicas("demo-api"),
            replicas("demo-gateway"),
            replicas("demo-frontend")
        ),
        (Some(5), Some(3), Some(1))
    );
    let api = deployment(&d, "demo-api")
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod");
    let limits = container(api)
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .expect("limits");
    assert_eq!(limits["memory"].0, "1Gi");
}

#[test]
fn disruption_budgets_exist_only_above_one_replica() {
    let d = desired_for(&canvas(
        json!({"api": {"replicas": 1}, "frontend": {"replicas": 0}}),
    ));
    assert!(
        !d.apply
            .iter()
            .any(|c| c.kind() == "PodDisruptionBudget" && c.name() != "demo-gateway")
    );
    find(&d, "PodDisruptionBudget", "demo-gateway");
    assert!(
        d.absent
            .contains(&(ChildKind::PodDisruptionBudget, "demo-api".to_owned()))
    );
    assert!(
        d.absent
            .contains(&(ChildKind::PodDisruptionBudget, "demo-frontend".to_owned()))
    );
}

#[test]
fn redis_persists_its_append_only_file_as_the_spec_says() {
    let d = desired_for(&canvas(
        json!({"redis": {"appendFsync": "Always", "storage": {"size": "5Gi", "storageClassName": "fast", "retainOnDelete": false}}}),
    ));
    let sts = stateful_set(&d);
    let spec = sts.spec.as_ref().expect("spec");
    let args = container(spec.template.spec.as_ref().expect("pod"))
        .args
        .clone()
        .expect("args");
    let joined = args.join(" ");
    assert!(joined.contains("--appendonly yes"), "{joined}");
    assert!(joined.contains("--appendfsync always"), "{joined}");
    for command in ["FLUSHALL", "FLUSHDB", "CONFIG", "DEBUG"] {
        assert!(
            args.windows(3)
                .any(|w| w[0] == "--rename-command" && w[1] == command && w[2].is_empty()),
            "{command}"
        );
    }
    let claim = &spec.volume_claim_templates.as_ref().expect("claims")[0];
    let claim_spec = claim.spec.as_ref().expect("claim spec");
    assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        claim_spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .expect("requests")["storage"]
            .0,
        "5Gi"
    );
    let retention = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .expect("retention");
    assert_eq!(retention.when_deleted.as_deref(), Some("Delete"));

    let kept = desired_for(&canvas(json!({})));
    let retention = stateful_set(&kept)
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.clone());
    assert_eq!(
        retention.and_then(|r| r.when_deleted).as_deref(),
        Some("Retain")
    );
}

/// The write path is closed: canvas-api requires the internal token of the generated
/// Secret, and only the gateway (besides canvas-api) is given it.
#[test]
fn only_the_api_and_the_gateway_get_the_internal_token() {
    let d = desired_for(&canvas(json!({})));
    let Child::Secret(secret) = find(&d, "Secret", "demo-internal") else {
        panic!()
    };
    assert_eq!(
        secret.data.as_ref().expect("data")[API_TOKEN_KEY].0,
        b"t0ken-0123456789"
    );
    for (name, given) in [
        ("demo-api", true),
        ("demo-gateway", true),
        ("demo-frontend", false),
    ] {
        assert_eq!(
            secret_env(&d, name, pixel_common::ports::ENV_API_TOKEN),
            given.then(|| ("demo-internal".to_owned(), API_TOKEN_KEY.to_owned())),
            "{name}"
        );
    }
}

#[test]
fn only_the_api_gets_the_moderator_token_from_a_secret_of_its_own() {
    let d = desired_for(&canvas(json!({})));
    let Child::Secret(secret) = find(&d, "Secret", "demo-moderator") else {
        panic!()
    };
    assert_eq!(
        secret.data.as_ref().expect("data")[MODERATOR_TOKEN_KEY].0,
        b"moderator-token-0123456789"
    );
    for (name, given) in [
        ("demo-api", true),
        ("demo-gateway", false),
        ("demo-frontend", false),
    ] {
        assert_eq!(
            secret_env(&d, name, pixel_common::ports::ENV_MODERATOR_TOKEN),
            given.then(|| ("demo-moderator".to_owned(), MODERATOR_TOKEN_KEY.to_owned())),
            "{name}"
        );
    }
}

/// The Secret and key a Deployment's container takes `env` from (never inline).
fn secret_env(d: &Desired, deployment_name: &str, env: &str) -> Option<(String, String)> {
    let container = &deployment(d, deployment_name)
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
        .containers[0];
    let var = container.env.iter().flatten().find(|e| e.name == env)?;
    assert_eq!(var.value, None, "never inline");
    let from = var
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("from a Secret");
    Some((from.name.clone(), from.key.clone()))
}

/// The environment of a Deployment's container.
fn env_of(d: &Desired, name: &str) -> Vec<k8s_openapi::api::core::v1::EnvVar> {
    deployment(d, name)
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
        .containers[0]
        .env
        .clone()
        .unwrap_or_default()
}

/// The inline value of `name` in `env`.
fn value_of(env: &[k8s_openapi::api::core::v1::EnvVar], name: &str) -> Option<String> {
    env.iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

/// Sign-in (`spec.auth`) reaches the gateway alone: the provider's settings inline, the
/// client secret by reference to the user's Secret, the callback from the Ingress host
/// (HTTPS with TLS) unless given; a rotated client secret rolls the gateways only.
#[test]
fn sign_in_settings_reach_the_gateway_alone_and_a_new_client_secret_rolls_it() {
    use pixel_common::ports::{
        ENV_OIDC_ALLOWED_EMAIL_DOMAINS, ENV_OIDC_ALLOWED_GROUPS, ENV_OIDC_CLIENT_ID,
        ENV_OIDC_CLIENT_SECRET, ENV_OIDC_GROUPS_CLAIM, ENV_OIDC_ISSUER, ENV_OIDC_MODERATOR_GROUPS,
        ENV_OIDC_REDIRECT_URL, ENV_OIDC_WATCHERS_ALLOWED,
    };
    let auth = json!({
        "issuerUrl": "https://id.example.com/",
        "clientId": "pixels",
        "clientSecretRef": {"name": "oidc", "key": "client-secret"},
        "allowedEmailDomains": ["example.com", "example.org"],
        "allowedGroups": ["painters"],
        "moderatorGroups": ["moderators", "admins"],
    });
    let spec = json!({"ingress": {"host": "c.example.com", "tlsSecretName": "cert"}, "auth": auth});
    let d = desired_for(&canvas(spec.clone()));
    let gateway = env_of(&d, "demo-gateway");
    let sign_in_env = [
        ENV_OIDC_ISSUER,
        ENV_OIDC_CLIENT_ID,
        ENV_OIDC_CLIENT_SECRET,
        ENV_OIDC_REDIRECT_URL,
        ENV_OIDC_ALLOWED_EMAIL_DOMAINS,
        ENV_OIDC_ALLOWED_GROUPS,
        ENV_OIDC_GROUPS_CLAIM,
        ENV_OIDC_MODERATOR_GROUPS,
        ENV_OIDC_WATCHERS_ALLOWED,
    ];
    let has_sign_in = |env: &[k8s_openapi::api::core::v1::EnvVar]| {
        env.iter().any(|e| sign_in_env.contains(&e.name.as_str()))
    };
    for (name, wanted) in [
        (ENV_OIDC_ISSUER, "https://id.example.com/"),
        (ENV_OIDC_CLIENT_ID, "pixels"),
        (ENV_OIDC_REDIRECT_URL, "https://c.example.com/auth/callback"),
        (ENV_OIDC_ALLOWED_EMAIL_DOMAINS, "example.com,example.org"),
        (ENV_OIDC_ALLOWED_GROUPS, "painters"),
        (ENV_OIDC_GROUPS_CLAIM, "groups"),
        (ENV_OIDC_MODERATOR_GROUPS, "moderators,admins"),
        (ENV_OIDC_WATCHERS_ALLOWED, "true"),
    ] {
        assert_eq!(value_of(&gateway, name).as_deref(), Some(wanted), "{name}");
    }
    assert_eq!(
        secret_env(&d, "demo-gateway", ENV_OIDC_CLIENT_SECRET),
        Some(("oidc".to_owned(), "client-secret".to_owned()))
    );
    // With moderator groups the gateway holds the moderator token for them; without, not.
    assert_eq!(
        secret_env(&d, "demo-gateway", pixel_common::ports::ENV_MODERATOR_TOKEN),
        Some(("demo-moderator".to_owned(), MODERATOR_TOKEN_KEY.to_owned()))
    );
    let mut no_moderators = spec.clone();
    no_moderators["auth"]
        .as_object_mut()
        .expect("auth")
        .remove("moderatorGroups");
    assert_eq!(
        secret_env(
            &desired_for(&canvas(no_moderators)),
            "demo-gateway",
            pixel_common::ports::ENV_MODERATOR_TOKEN
        ),
        None
    );
    for name in ["demo-api", "demo-frontend"] {
        assert!(!has_sign_in(&env_of(&d, name)), "{name}");
    }
    // Anonymous canvases carry none of it.
    let anonymous = desired_for(&canvas(json!({"ingress": {"host": "c.example.com"}})));
    assert!(!has_sign_in(&env_of(&anonymous, "demo-gateway")));
    // A redirect URL given wins over the Ingress host.
    let mut given = spec.clone();
    given["auth"]["redirectUrl"] = json!("https://pixels.example.net/auth/callback");
    assert_eq!(
        value_of(
            &env_of(&desired_for(&canvas(given)), "demo-gateway"),
            ENV_OIDC_REDIRECT_URL
        )
        .as_deref(),
        Some("https://pixels.example.net/auth/callback")
    );
    let mut rotated = credentials("s3cret", "t0ken-0123456789");
    rotated.oidc_client_secret = "a rotated client secret".to_owned();
    let after =
        desired(&Inputs::new(&canvas(spec), rotated, &Defaults::default()).expect("context"));
    assert_rolls(
        &d,
        &after,
        "a rotated client secret",
        [
            ("demo-api", false),
            ("demo-gateway", true),
            ("demo-frontend", false),
            ("demo-redis", false),
        ],
    );
}

/// Only the gateway signs identity cookies; they carry `Secure` exactly when the canvas
/// is served over TLS.
#[test]
fn the_gateway_alone_gets_the_identity_key_and_secure_cookies_follow_tls() {
    let plain = desired_for(&canvas(json!({"ingress": {"host": "c.example.com"}})));
    let gateway = env_of(&plain, "demo-gateway");
    let key = gateway
        .iter()
        .find(|e| e.name == pixel_common::ports::ENV_IDENTITY_KEY)
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("the identity key from the Secret");
    assert_eq!(
        (key.name.as_str(), key.key.as_str()),
        ("demo-internal", IDENTITY_KEY_KEY)
    );
    assert_eq!(
        value_of(&gateway, pixel_common::ports::ENV_IDENTITY_COOKIE_SECURE).as_deref(),
        Some("false")
    );
    for name in ["demo-api", "demo-frontend"] {
        assert!(
            !env_of(&plain, name)
                .iter()
                .any(|e| e.name == pixel_common::ports::ENV_IDENTITY_KEY),
            "{name}"
        );
    }
    let tls = desired_for(&canvas(
        json!({"ingress": {"host": "c.example.com", "tlsSecretName": "cert"}}),
    ));
    assert_eq!(
        value_of(
            &env_of(&tls, "demo-gateway"),
            pixel_common::ports::ENV_IDENTITY_COOKIE_SECURE
        )
        .as_deref(),
        Some("true")
    );
}

#[test]
fn the_generated_secret_holds_the_password_unless_one_is_referenced() {
    let d = desired_for(&canvas(json!({})));
    let Child::Secret(secret) = find(&d, "Secret", "demo-redis-auth") else {
        panic!()
    };
    assert_eq!(
        secret.data.as_ref().expect("data")[PASSWORD_KEY].0,
        b"s3cret"
    );

    let c = canvas(json!({"redis": {"passwordSecretRef": {"name": "mine", "key": "pw"}}}));
    let d = desired_for(&c);
    assert!(
        !d.apply
            .iter()
            .any(|child| child.kind() == "Secret" && child.name() == "demo-redis-auth")
    );
    assert!(
        d.absent
            .contains(&(ChildKind::Secret, "demo-redis-auth".to_owned()))
    );
    assert_eq!(
        c.spec.redis.password_secret_ref,
        Some(SecretKeyRef {
            name: "mine".into(),
            key: "pw".into()
        })
    );
    for (name, spec) in pod_specs(&d) {
        for env in container(spec)
            .env
            .iter()
            .flatten()
            .filter(|e| e.value_from.is_some() && e.name.contains("REDIS_PASSWORD"))
        {
            let r = env
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .expect("secret ref");
            assert_eq!((r.name.as_str(), r.key.as_str()), ("mine", "pw"), "{name}");
        }
    }
}

#[test]
fn only_the_pods_that_consume_a_change_roll() {
    let base = desired_for(&canvas(json!({})));
    let recoloured = desired_for(&canvas(
        json!({"canvas": {"palette": ["#000000", "#FFFFFF"]}}),
    ));
    assert_rolls(
        &base,
        &recoloured,
        "palette change",
        [
            ("demo-api", true),
            ("demo-gateway", true),
            ("demo-frontend", false),
            ("demo-redis", false),
        ],
    );
    let c = canvas(json!({}));
    let rotated = desired(
        &Inputs::new(
            &c,
            credentials("another", "t0ken-0123456789"),
            &Defaults::default(),
        )
        .expect("context"),
    );
    assert_rolls(
        &base,
        &rotated,
        "password change",
        [
            ("demo-api", true),
            ("demo-gateway", true),
            ("demo-frontend", false),
            ("demo-redis", true),
        ],
    );
    let new_token = desired(
        &Inputs::new(
            &c,
            credentials("s3cret", "another-token-0123"),
            &Defaults::default(),
        )
        .expect("context"),
    );
    assert_rolls(
        &base,
        &new_token,
        "internal token change",
        [
            ("demo-api", true),
            ("demo-gateway", true),
            ("demo-frontend", false),
            ("demo-redis", false),
        ],
    );
    let scaled = desired_for(&canvas(json!({"api": {"replicas": 7}})));
    for name in ["demo-api", "demo-gateway", "demo-frontend", "demo-redis"] {
        assert_eq!(
            pod_annotation(&base, name),
            pod_annotation(&scaled, name),
            "scaling rolls nothing, {name}"
        );
    }
}

#[test]
fn undo_freeze_and_schedule_reach_the_config_and_roll_api_and_gateway() {
    let config = |desired: &Desired| match find(desired, "ConfigMap", "demo-config") {
        Child::ConfigMap(map) => map.data.clone().unwrap_or_default(),
        other => panic!("not a ConfigMap: {other:?}"),
    };
    let base = desired_for(&canvas(json!({})));
    let defaults = config(&base);
    assert_eq!(defaults[ports::ENV_CANVAS_UNDO_SECONDS], "5");
    assert_eq!(defaults[ports::ENV_CANVAS_READ_ONLY], "false");
    assert!(!defaults.contains_key(ports::ENV_CANVAS_OPENS_AT));
    assert!(!defaults.contains_key(ports::ENV_CANVAS_CLOSES_AT));

    let changed = desired_for(&canvas(json!({"canvas": {
        "undoSeconds": 0,
        "readOnly": true,
        "schedule": {"start": "2026-12-24T18:00:00+01:00", "end": "2026-12-26T00:00:00Z"},
    }})));
    let data = config(&changed);
    assert_eq!(data[ports::ENV_CANVAS_UNDO_SECONDS], "0");
    assert_eq!(data[ports::ENV_CANVAS_READ_ONLY], "true");
    assert_eq!(data[ports::ENV_CANVAS_OPENS_AT], "2026-12-24T17:00:00Z");
    assert_eq!(data[ports::ENV_CANVAS_CLOSES_AT], "2026-12-26T00:00:00Z");
    let only_end = desired_for(&canvas(
        json!({"canvas": {"schedule": {"end": "2026-12-26T00:00:00Z"}}}),
    ));
    assert!(!config(&only_end).contains_key(ports::ENV_CANVAS_OPENS_AT));
    assert_rolls(
        &base,
        &changed,
        "freeze",
        [
            ("demo-api", true),
            ("demo-gateway", true),
            ("demo-frontend", false),
            ("demo-redis", false),
        ],
    );
}

#[test]
fn only_api_and_gateway_pods_reach_redis() {
    let d = desired_for(&canvas(json!({})));
    let policy = find(&d, "NetworkPolicy", "demo-redis");
    assert_eq!(
        admitted(policy),
        (
            Vec::new(),
            vec!["api".to_owned(), "gateway".to_owned()],
            6379
        )
    );
}

/// What a policy admits: the namespaces its peers name, the components of the canvas's
/// pods it admits, and its one port. It guards the pods its name says.
fn admitted(policy: &Child) -> (Vec<String>, Vec<String>, i32) {
    let Child::NetworkPolicy(policy) = policy else {
        panic!("not a NetworkPolicy")
    };
    let spec = policy.spec.as_ref().expect("spec");
    let guarded = Component::ALL
        .into_iter()
        .find(|c| Names::new("demo").component(*c) == policy.name_any())
        .expect("named after a component");
    assert_eq!(
        spec.pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.clone()),
        Some(Names::new("demo").selector(guarded))
    );
    let rules = spec.ingress.as_ref().expect("ingress rules");
    assert_eq!(rules.len(), 1, "one rule: its peers and its one port");
    let (mut namespaces, mut components) = (Vec::new(), Vec::new());
    for peer in rules[0].from.as_ref().expect("from") {
        let values = |selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
                      key: &str| {
            let expr = &selector.match_expressions.as_ref().expect("expressions")[0];
            assert_eq!((expr.key.as_str(), expr.operator.as_str()), (key, "In"));
            expr.values.clone().expect("values")
        };
        match (&peer.pod_selector, &peer.namespace_selector) {
            (Some(pods), None) => {
                assert_eq!(
                    pods.match_labels.as_ref().expect("labels")[naming::LABEL_INSTANCE],
                    "demo",
                    "only this canvas's pods"
                );
                components.extend(values(pods, naming::LABEL_COMPONENT));
            }
            (None, Some(ns)) => namespaces.extend(values(ns, "kubernetes.io/metadata.name")),
            // Addresses, listed with the namespaces as `cidr <block>`.
            (None, None) => namespaces.push(format!(
                "cidr {}",
                peer.ip_block.as_ref().expect("an address block").cidr
            )),
            other => panic!("a peer of another shape: {other:?}"),
        }
    }
    let ports = rules[0].ports.as_ref().expect("ports");
    let Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port)) = ports[0].port
    else {
        panic!("no numeric port")
    };
    (namespaces, components, port)
}

#[test]
fn only_the_gateway_the_ingress_controller_and_scrapers_reach_the_api() {
    let d = desired_for(&canvas(json!({})));
    let policy = find(&d, "NetworkPolicy", "demo-api");
    assert_eq!(
        admitted(policy),
        (
            vec![
                "ingress-nginx".to_owned(),
                "kube-system".to_owned(),
                "monitoring".to_owned()
            ],
            vec!["gateway".to_owned()],
            3001
        )
    );

    let d = desired_for(&canvas(json!({"networkPolicy": {
        "ingressControllerNamespaces": ["traefik", "shared"],
        "metricsNamespaces": ["shared"],
        "ingressControllerCIDRs": ["198.51.100.7/32"],
    }})));
    assert_eq!(
        admitted(find(&d, "NetworkPolicy", "demo-api")).0,
        vec![
            "shared".to_owned(),
            "traefik".to_owned(),
            "cidr 198.51.100.7/32".to_owned()
        ],
        "each namespace once, and the host-network controller's address"
    );

    // Turned off: no policy, and the one a canvas had is removed.
    let off = desired_for(&canvas(json!({"networkPolicy": {"enabled": false}})));
    assert!(
        !off.apply
            .iter()
            .any(|c| c.kind() == "NetworkPolicy" && c.name() == "demo-api")
    );
    assert!(
        off.absent
            .iter()
            .any(|(kind, name)| *kind == ChildKind::NetworkPolicy && name == "demo-api"),
        "{:?}",
        off.absent
    );
    find(&off, "NetworkPolicy", "demo-redis");

    // No namespace at all: the gateway alone, and no empty selector (which would admit all).
    let d = desired_for(&canvas(json!({"networkPolicy": {
        "ingressControllerNamespaces": [],
        "metricsNamespaces": [],
    }})));
    assert_eq!(
        admitted(find(&d, "NetworkPolicy", "demo-api")),
        (Vec::new(), vec!["gateway".to_owned()], 3001)
    );
}

#[test]
fn network_policies_come_before_the_pods_they_guard() {
    let d = desired_for(&canvas(json!({})));
    let position = |kind: &str, name: &str| position_of(&d, kind, name);
    assert!(position("NetworkPolicy", "demo-redis") < position("StatefulSet", "demo-redis"));
    for name in ["demo-api", "demo-gateway", "demo-frontend"] {
        assert!(
            position("NetworkPolicy", name) < position("Deployment", name),
            "{name}"
        );
    }
}

#[test]
fn only_the_ingress_controller_and_scrapers_reach_the_gateway_and_the_frontend() {
    let d = desired_for(&canvas(json!({})));
    let defaults = vec![
        "ingress-nginx".to_owned(),
        "kube-system".to_owned(),
        "monitoring".to_owned(),
    ];
    for (name, port) in [
        ("demo-gateway", ports::GATEWAY),
        ("demo-frontend", ports::FRONTEND),
    ] {
        assert_eq!(
            admitted(find(&d, "NetworkPolicy", name)),
            (defaults.clone(), Vec::new(), i32::from(port)),
            "{name}: no pod of the canvas's namespace"
        );
    }
    let d = desired_for(&canvas(json!({"networkPolicy": {
        "ingressControllerNamespaces": ["edge"],
        "metricsNamespaces": [],
        "ingressControllerCIDRs": ["198.51.100.7/32"],
    }})));
    assert_eq!(
        admitted(find(&d, "NetworkPolicy", "demo-gateway")).0,
        vec!["edge".to_owned(), "cidr 198.51.100.7/32".to_owned()]
    );
    // Nobody named: nobody admitted (a rule with an empty `from` would admit everyone).
    let d = desired_for(&canvas(json!({"networkPolicy": {
        "ingressControllerNamespaces": [],
        "metricsNamespaces": [],
    }})));
    let Child::NetworkPolicy(closed) = find(&d, "NetworkPolicy", "demo-frontend") else {
        unreachable!()
    };
    assert_eq!(
        closed.spec.as_ref().and_then(|s| s.ingress.clone()),
        Some(Vec::new()),
        "no rule at all"
    );
    // Turned off: every stateless component's policy goes; Redis's stays.
    let off = desired_for(&canvas(json!({"networkPolicy": {"enabled": false}})));
    for name in ["demo-api", "demo-gateway", "demo-frontend"] {
        assert!(
            off.absent
                .iter()
                .any(|(kind, n)| *kind == ChildKind::NetworkPolicy && n == name),
            "{name}"
        );
    }
    find(&off, "NetworkPolicy", "demo-redis");
}

#[test]
fn the_ingress_routes_api_ws_and_the_page() {
    let d = desired_for(&canvas(
        json!({"ingress": {"host": "canvas.example.com", "className": "nginx", "tlsSecretName": "tls"}}),
    ));
    let Child::Ingress(ingress) = find(&d, "Ingress", "demo") else {
        panic!()
    };
    let spec = ingress.spec.as_ref().expect("spec");
    assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
    let rule = &spec.rules.as_ref().expect("rules")[0];
    assert_eq!(rule.host.as_deref(), Some("canvas.example.com"));
    let routes: Vec<(String, String)> = rule
        .http
        .as_ref()
        .expect("http")
        .paths
        .iter()
        .map(|p| {
            (
                p.path.clone().unwrap_or_default(),
                p.backend
                    .service
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        routes,
        vec![
            ("/api".to_owned(), "demo-api".to_owned()),
            ("/ws".to_owned(), "demo-gateway".to_owned()),
            ("/auth".to_owned(), "demo-gateway".to_owned()),
            ("/".to_owned(), "demo-frontend".to_owned()),
        ]
    );
    assert_eq!(
        spec.tls.as_ref().expect("tls")[0].secret_name.as_deref(),
        Some("tls")
    );

    let ctx_canvas =
        canvas(json!({"ingress": {"host": "canvas.example.com", "tlsSecretName": "tls"}}));
    assert_eq!(
        url(
            &Inputs::new(&ctx_canvas, Credentials::default(), &Defaults::default())
                .expect("inputs")
        )
        .as_deref(),
        Some("https://canvas.example.com/")
    );

    let off = desired_for(&canvas(json!({"ingress": {"enabled": false}})));
    assert!(!off.apply.iter().any(|c| c.kind() == "Ingress"));
    assert!(
        off.absent
            .contains(&(ChildKind::Ingress, "demo".to_owned()))
    );
}

#[test]
fn the_gateway_finds_canvas_api_and_redis_by_service_name() {
    let d = desired_for(&canvas(json!({"gateway": {"maxConnections": 123}})));
    let pod = deployment(&d, "demo-gateway")
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod");
    let env: BTreeMap<String, String> = container(pod)
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    assert_eq!(
        env[pixel_common::ports::ENV_API_URL],
        format!("http://demo-api:{}", pixel_common::ports::CANVAS_API)
    );
    assert_eq!(
        env[pixel_common::ports::ENV_REDIS_URL],
        format!("redis://demo-redis:{}", pixel_common::ports::REDIS)
    );
    assert_eq!(env[pixel_common::ports::ENV_MAX_CONNECTIONS], "123");
}

#[test]
fn desired_state_is_deterministic() {
    let c = canvas(json!({"canvas": {"cooldownSeconds": 3}}));
    assert_eq!(desired_for(&c), desired_for(&c));
}

#[test]
fn a_canvas_without_namespace_or_uid_is_an_error() {
    let mut c = canvas(json!({}));
    c.meta_mut().uid = None;
    assert!(matches!(
        Inputs::new(&c, Credentials::default(), &Defaults::default()),
        Err(DesiredError::NoUid)
    ));
    c.meta_mut().namespace = None;
    assert!(matches!(
        Inputs::new(&c, Credentials::default(), &Defaults::default()),
        Err(DesiredError::NoNamespace)
    ));
}

/// The image of every container, by workload name.
fn images(desired: &Desired) -> BTreeMap<String, String> {
    pod_specs(desired)
        .into_iter()
        .map(|(name, spec)| {
            let image = container(spec).image.clone().expect("image");
            (name.to_owned(), image)
        })
        .collect()
}

fn local_registry() -> Defaults {
    Defaults {
        redis_image: "registry.local:5000/redis:7.2".to_owned(),
        image_repository: "registry.local:5000/pixel-playground".to_owned(),
        ..Defaults::default()
    }
}

#[test]
fn unset_images_come_from_the_operator_defaults() {
    let c = canvas(json!({"image": {"tag": "1.2.3"}}));
    assert_eq!(
        c.spec.image.repository, None,
        "no repository is stored for the operator to override"
    );
    assert_eq!(c.spec.redis.image, None);
    let tag = "1.2.3";
    let built_in = images(&desired_for(&c));
    assert_eq!(built_in["demo-redis"], DEFAULT_REDIS_IMAGE);
    for name in ["demo-api", "demo-gateway", "demo-frontend"] {
        assert_eq!(
            built_in[name],
            format!("{DEFAULT_IMAGE_REPOSITORY}:{tag}"),
            "{name}"
        );
    }
    let local = images(&desired_with(&c, &local_registry()));
    assert_eq!(local["demo-redis"], "registry.local:5000/redis:7.2");
    for name in ["demo-api", "demo-gateway", "demo-frontend"] {
        assert_eq!(
            local[name],
            format!("registry.local:5000/pixel-playground:{tag}"),
            "{name}"
        );
    }
}

/// An unpinned canvas runs the operator's version: a new operator build moves every child
/// to its tag, and a pinned canvas stays.
#[test]
fn an_unpinned_canvas_follows_the_operators_version() {
    let next = Defaults {
        image_tag: "9.9.9".to_owned(),
        ..Defaults::default()
    };
    let unpinned = canvas(json!({}));
    let desired = desired_with(&unpinned, &next);
    for child in &desired.apply {
        let labels = child.meta().labels.as_ref().expect("labels");
        assert_eq!(labels[naming::LABEL_VERSION], "9.9.9", "{}", child.name());
    }
    for name in ["demo-api", "demo-gateway", "demo-frontend"] {
        assert_eq!(images(&desired)[name], "pixel-playground:9.9.9", "{name}");
    }
    let pinned = canvas(json!({"image": {"tag": "1.2.3"}}));
    for name in ["demo-api", "demo-gateway", "demo-frontend"] {
        assert_eq!(
            images(&desired_with(&pinned, &next))[name],
            "pixel-playground:1.2.3",
            "{name}"
        );
    }
}

#[test]
fn images_the_spec_names_win_over_the_operator_defaults() {
    let c = canvas(json!({
        "image": {"repository": "example.com/pixel", "tag": "2.0.0"},
        "redis": {"image": "example.com/redis:7.2.5"}
    }));
    for defaults in [Defaults::default(), local_registry()] {
        let images = images(&desired_with(&c, &defaults));
        assert_eq!(images["demo-redis"], "example.com/redis:7.2.5");
        for name in ["demo-api", "demo-gateway", "demo-frontend"] {
            assert_eq!(images[name], "example.com/pixel:2.0.0", "{name}");
        }
    }
    // Each field on its own: the other still follows the operator.
    let only_redis = canvas(json!({"redis": {"image": "example.com/redis:7.2.5"}}));
    let images = images(&desired_with(&only_redis, &local_registry()));
    assert_eq!(images["demo-redis"], "example.com/redis:7.2.5");
    assert!(
        images["demo-api"].starts_with("registry.local:5000/pixel-playground:"),
        "{images:?}"
    );
}

#[test]
fn a_changed_operator_default_changes_the_pods_that_rely_on_it() {
    let c = canvas(json!({}));
    let before = desired_for(&c);
    let new_redis = desired_with(
        &c,
        &Defaults {
            redis_image: "redis:7.2.5-alpine".to_owned(),
            ..Defaults::default()
        },
    );
    let new_repository = desired_with(
        &c,
        &Defaults {
            image_repository: "mirror.example.com/pixel-playground".to_owned(),
            ..Defaults::default()
        },
    );
    // The pod templates differ exactly where the image does, so the workloads roll.
    let template = |d: &Desired, name: &str| match find(
        d,
        if name.ends_with("-redis") {
            "StatefulSet"
        } else {
            "Deployment"
        },
        name,
    ) {
        Child::Deployment(d) => d.spec.clone().expect("spec").template,
        Child::StatefulSet(s) => s.spec.clone().expect("spec").template,
        other => panic!("{other:?}"),
    };
    for (name, redis_rolls, others_roll) in [
        ("demo-redis", true, false),
        ("demo-api", false, true),
        ("demo-gateway", false, true),
        ("demo-frontend", false, true),
    ] {
        assert_eq!(
            template(&before, name) != template(&new_redis, name),
            redis_rolls,
            "new Redis default, {name}"
        );
        assert_eq!(
            template(&before, name) != template(&new_repository, name),
            others_roll,
            "new repository default, {name}"
        );
    }
    // A canvas naming its images is untouched by either change.
    let pinned = canvas(json!({
        "image": {"repository": "example.com/pixel"},
        "redis": {"image": "example.com/redis:7.2.5"}
    }));
    assert_eq!(
        desired_for(&pinned),
        desired_with(&pinned, &local_registry())
    );
}

#[test]
fn identity_keys_rotate_in_two_steps_once_per_requested_value() {
    let key = |c: char| c.to_string().repeat(32);
    let first = IdentityKeys::next(None, None, key('a'), false);
    assert_eq!(
        (first.current.as_str(), first.previous.as_str()),
        (key('a').as_str(), "")
    );
    assert!(!first.rotating());
    // Kept as they are without a request, and for the request they were made for.
    assert_eq!(
        IdentityKeys::next(Some(first.clone()), None, key('x'), false),
        first
    );
    // Asked for: the new key first verifies only, on every gateway.
    let asked = IdentityKeys::next(Some(first.clone()), Some("2026-12-02"), key('b'), false);
    assert_eq!(
        (asked.current.as_str(), asked.next.as_str()),
        (key('a').as_str(), key('b').as_str())
    );
    assert_eq!(asked.rotation, "2026-12-02");
    assert!(asked.rotating());
    // Until every gateway holds it, nothing moves, whatever is asked meanwhile.
    assert_eq!(
        IdentityKeys::next(Some(asked.clone()), Some("2026-12-02"), key('x'), false),
        asked
    );
    assert_eq!(
        IdentityKeys::next(Some(asked.clone()), Some("later"), key('x'), false),
        asked
    );
    // Then it signs, and the old key verifies.
    let promoted = IdentityKeys::next(Some(asked.clone()), Some("2026-12-02"), key('x'), true);
    assert_eq!(
        (
            promoted.current.as_str(),
            promoted.previous.as_str(),
            promoted.next.as_str()
        ),
        (key('b').as_str(), key('a').as_str(), "")
    );
    assert_eq!(
        IdentityKeys::next(Some(promoted.clone()), Some("2026-12-02"), key('x'), true),
        promoted,
        "one rotation per value: reconciling again changes nothing"
    );
    // A canvas created with the annotation starts with it acted on.
    assert_eq!(
        IdentityKeys::next(None, Some("v1"), key('a'), false).rotation,
        "v1"
    );
}

#[test]
fn a_rotation_is_in_the_internal_secret_and_rolls_only_the_gateways() {
    let c = canvas(json!({}));
    let with_keys = |previous: &str| {
        let mut credentials = credentials("s3cret", "t0ken-0123456789");
        credentials.identity.previous = previous.to_owned();
        desired(&Inputs::new(&c, credentials, &Defaults::default()).expect("inputs"))
    };
    let before = with_keys("");
    let after = with_keys("the previous identity key, 32 bytes long");
    let Child::Secret(secret) = find(&after, "Secret", "demo-internal") else {
        panic!()
    };
    let data = secret.data.as_ref().expect("data");
    assert_eq!(
        data[IDENTITY_KEY_PREVIOUS_KEY].0,
        b"the previous identity key, 32 bytes long"
    );
    assert_eq!(
        data[IDENTITY_KEY_ROTATION_KEY].0, b"",
        "no rotation asked for yet"
    );
    assert_rolls(
        &before,
        &after,
        "identity key rotation",
        [
            ("demo-api", false),
            ("demo-gateway", true),
            ("demo-frontend", false),
            ("demo-redis", false),
        ],
    );
}

#[test]
fn a_new_tag_changes_every_app_pod_and_no_part_of_redis_that_rolls_or_is_immutable() {
    let base = desired_for(&canvas(json!({})));
    let tagged = desired_for(&canvas(json!({"image": {"tag": "9.9.9"}})));
    let (before, after) = (stateful_set(&base), stateful_set(&tagged));
    let spec = |set: &StatefulSet| set.spec.clone().expect("spec");
    assert_eq!(
        spec(before).template,
        spec(after).template,
        "Redis keeps running"
    );
    assert_eq!(
        spec(before).volume_claim_templates,
        spec(after).volume_claim_templates,
        "immutable once created"
    );
    for name in ["demo-api", "demo-gateway", "demo-frontend"] {
        let template = |d: &Desired| deployment(d, name).spec.clone().expect("spec").template;
        assert_ne!(template(&base), template(&tagged), "{name} rolls");
    }
}

#[test]
fn the_redis_statefulset_follows_the_stateless_components() {
    let d = desired_for(&canvas(json!({})));
    let position = |kind: &str, name: &str| position_of(&d, kind, name);
    let redis = position("StatefulSet", "demo-redis");
    for name in ["demo-api", "demo-gateway", "demo-frontend"] {
        assert!(position("Deployment", name) < redis, "{name}");
    }
    assert!(position("NetworkPolicy", "demo-redis") < redis);
}

#[test]
fn the_redis_password_is_on_no_command_line() {
    let d = desired_for(&canvas(
        json!({"redis": {"passwordSecretRef": {"name": "mine", "key": "pw"}}}),
    ));
    let redis = container(
        stateful_set(&d)
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod"),
    );
    let probe = redis
        .readiness_probe
        .as_ref()
        .and_then(|p| p.exec.as_ref())
        .and_then(|e| e.command.clone())
        .expect("an exec probe");
    assert!(
        probe
            .iter()
            .all(|arg| !arg.contains("PASSWORD") && !arg.contains(" -a ")),
        "{probe:?}"
    );
    let cli = redis
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "REDISCLI_AUTH")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("redis-cli reads the password from its environment");
    assert_eq!((cli.name.as_str(), cli.key.as_str()), ("mine", "pw"));
}

#[test]
fn redis_has_a_pull_policy_of_its_own() {
    let pulled = |spec: serde_json::Value| {
        let d = desired_for(&canvas(spec));
        let redis = container(
            stateful_set(&d)
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .expect("pod"),
        )
        .image_pull_policy
        .clone();
        let api = container(
            deployment(&d, "demo-api")
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .expect("pod"),
        )
        .image_pull_policy
        .clone();
        (redis.expect("redis"), api.expect("api"))
    };
    assert_eq!(
        pulled(json!({"image": {"pullPolicy": "Never"}})),
        ("IfNotPresent".to_owned(), "Never".to_owned()),
        "a side-loaded app image leaves Redis's pulls alone"
    );
    assert_eq!(
        pulled(json!({"redis": {"imagePullPolicy": "Always"}})),
        ("Always".to_owned(), "IfNotPresent".to_owned())
    );
}

#[test]
fn the_ingress_carries_the_annotations_and_class_the_canvas_gives_it() {
    let d = desired_for(&canvas(json!({"ingress": {
        "host": "art.example.com",
        "className": "traefik",
        "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
    }})));
    let Child::Ingress(ingress) = find(&d, "Ingress", "demo") else {
        panic!("an Ingress")
    };
    assert_eq!(
        ingress.metadata.annotations,
        Some(
            [(
                "cert-manager.io/cluster-issuer".to_owned(),
                "letsencrypt".to_owned()
            )]
            .into()
        )
    );
    let spec = ingress.spec.as_ref().expect("spec");
    assert_eq!(spec.ingress_class_name.as_deref(), Some("traefik"));
    let plain = desired_for(&canvas(json!({})));
    let Child::Ingress(plain) = find(&plain, "Ingress", "demo") else {
        panic!("an Ingress")
    };
    assert_eq!(plain.metadata.annotations, None, "none unless given");
}

#[test]
fn stateless_pods_keep_serving_while_their_endpoints_drain() {
    let d = desired_for(&canvas(json!({})));
    for name in ["demo-api", "demo-gateway", "demo-frontend"] {
        let spec = deployment(&d, name).spec.clone().expect("spec");
        let pod = spec.template.spec.expect("pod");
        let sleep = container(&pod)
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.sleep.as_ref())
            .map(|s| s.seconds);
        assert_eq!(sleep, Some(workloads::PRE_STOP_SECONDS), "{name}");
        assert!(
            pod.termination_grace_period_seconds.unwrap_or(30) > workloads::PRE_STOP_SECONDS + 10,
            "{name}: time left to drain after the delay"
        );
    }
}

#[test]
fn every_container_bounds_its_local_disk_and_every_empty_dir_its_size() {
    let d = desired_for(&canvas(json!({
        "api": {"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
        "gateway": {"resources": {"limits": {"ephemeral-storage": "2Gi"}}}
    })));
    for (name, pod) in pod_specs(&d) {
        let resources = container(pod).resources.clone().expect("resources");
        let quantity = |side: Option<BTreeMap<String, Quantity>>| {
            side.and_then(|q| q.get("ephemeral-storage").map(|q| q.0.clone()))
        };
        let (request, limit) = (
            quantity(resources.requests.clone()),
            quantity(resources.limits.clone()),
        );
        if name == "demo-gateway" {
            // The spec's own bound wins, and nothing is added beside it.
            assert_eq!((request, limit), (None, Some("2Gi".to_owned())), "{name}");
        } else {
            assert_eq!(
                (request, limit),
                (
                    Some(security::EPHEMERAL_STORAGE_REQUEST.to_owned()),
                    Some(security::EPHEMERAL_STORAGE_LIMIT.to_owned())
                ),
                "{name}"
            );
        }
        for volume in pod.volumes.iter().flatten() {
            if let Some(empty_dir) = &volume.empty_dir {
                assert_eq!(
                    empty_dir.size_limit.as_ref().map(|q| q.0.as_str()),
                    Some(security::TMP_SIZE_LIMIT),
                    "{name}: {}",
                    volume.name
                );
            }
        }
    }
    // The spec's CPU and memory are kept as they are.
    let limits = deployment(&d, "demo-api")
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|pod| container(pod).resources.clone())
        .and_then(|r| r.limits)
        .expect("limits");
    assert_eq!(limits["memory"].0, "1Gi");
}

#[test]
fn stateless_replicas_spread_over_nodes_by_default_and_redis_does_not() {
    let d = desired_for(&canvas(json!({})));
    for (name, pod) in pod_specs(&d) {
        let spread = pod.topology_spread_constraints.clone().unwrap_or_default();
        if name == "demo-redis" {
            assert!(spread.is_empty(), "{name}: {spread:?}");
            continue;
        }
        assert_eq!(spread.len(), 1, "{name}");
        let constraint = &spread[0];
        assert_eq!(
            (
                constraint.topology_key.as_str(),
                constraint.when_unsatisfiable.as_str(),
                constraint.max_skew
            ),
            ("kubernetes.io/hostname", "ScheduleAnyway", 1),
            "{name}"
        );
        let component = name.trim_start_matches("demo-");
        let selected = constraint
            .label_selector
            .as_ref()
            .and_then(|s| s.match_labels.clone())
            .unwrap_or_default();
        assert_eq!(
            selected
                .get("app.kubernetes.io/component")
                .map(String::as_str),
            Some(component),
            "{name} counts only its own pods"
        );
        assert_eq!(
            constraint.match_label_keys,
            Some(vec!["pod-template-hash".to_owned()]),
            "{name} counts per revision"
        );
    }
}

#[test]
fn pod_overrides_reach_only_their_components_pods() {
    let d = desired_for(&canvas(json!({
        "gateway": {"pod": {
            "annotations": {"mesh.example/inject": "false"},
            "nodeSelector": {"pool": "edge"},
            "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "zone", "operator": "In", "values": ["a"]}
                ]}]
            }}},
            "topologySpreadConstraints": [],
            "priorityClassName": "canvas-critical"
        }},
        "redis": {"pod": {"nodeSelector": {"disk": "ssd"}}}
    })));
    let pods: BTreeMap<&str, &PodSpec> = pod_specs(&d).into_iter().collect();
    let gateway = pods["demo-gateway"];
    assert_eq!(
        gateway.node_selector,
        Some(BTreeMap::from([("pool".to_owned(), "edge".to_owned())]))
    );
    assert_eq!(gateway.tolerations.as_ref().map(Vec::len), Some(1));
    assert!(
        gateway
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .is_some()
    );
    assert_eq!(
        gateway.topology_spread_constraints, None,
        "an empty list turns spreading off"
    );
    assert_eq!(
        gateway.priority_class_name.as_deref(),
        Some("canvas-critical")
    );
    let annotations = pod_annotations(&d, "demo-gateway");
    assert_eq!(
        annotations.get("mesh.example/inject").map(String::as_str),
        Some("false")
    );
    assert!(
        annotations.contains_key(CONFIG_HASH_ANNOTATION),
        "the operator's own annotation stays"
    );
    assert_eq!(
        pods["demo-redis"].node_selector,
        Some(BTreeMap::from([("disk".to_owned(), "ssd".to_owned())]))
    );
    for name in ["demo-api", "demo-frontend"] {
        let pod = pods[name];
        assert_eq!(
            (
                &pod.node_selector,
                &pod.tolerations,
                &pod.affinity,
                &pod.priority_class_name
            ),
            (&None, &None, &None, &None),
            "{name}"
        );
        assert!(
            pod.topology_spread_constraints.is_some(),
            "{name} keeps the default spread"
        );
        assert!(!pod_annotations(&d, name).contains_key("mesh.example/inject"));
    }
}

#[test]
fn the_gateway_believes_only_loopback_and_the_proxies_the_canvas_names() {
    let trusted = |spec| {
        value_of(
            &env_of(&desired_for(&canvas(spec)), "demo-gateway"),
            ports::ENV_WS_TRUSTED_PROXIES,
        )
    };
    assert_eq!(
        trusted(json!({})).as_deref(),
        Some(ports::LOOPBACK_PROXIES),
        "no private range by default"
    );
    assert_eq!(
        trusted(json!({"networkPolicy": {"ingressControllerCIDRs": ["198.51.100.7/32"]}}))
            .as_deref(),
        Some(format!("{},198.51.100.7/32", ports::LOOPBACK_PROXIES).as_str()),
        "the Ingress controller's host addresses"
    );
    assert_eq!(
        trusted(json!({
            "networkPolicy": {"ingressControllerCIDRs": ["198.51.100.7/32"]},
            "gateway": {"trustedProxies": ["203.0.113.0/24", "2001:db8::/64"]}
        }))
        .as_deref(),
        Some(format!("{},203.0.113.0/24,2001:db8::/64", ports::LOOPBACK_PROXIES).as_str()),
        "the proxies named for the gateway win"
    );
    assert_eq!(
        trusted(json!({"gateway": {"trustedProxies": []}})).as_deref(),
        Some(ports::LOOPBACK_PROXIES)
    );
}

/// Redis's memory follows the canvas's size: a fully placed 4096² canvas needs about 2 GiB
/// (measured 1.89 GiB), which the old fixed 512Mi limit could never hold; maxmemory is half
/// the limit, so a full Redis refuses writes instead of being killed.
#[test]
fn redis_memory_fits_the_canvas_and_maxmemory_keeps_it_inside_its_limit() {
    let redis = |spec| {
        let d = desired_for(&canvas(spec));
        let pod = stateful_set(&d)
            .spec
            .clone()
            .and_then(|s| s.template.spec)
            .expect("pod");
        let container = container(&pod).clone();
        let resources = container.resources.clone().expect("resources");
        let memory = |side: Option<BTreeMap<String, Quantity>>| {
            side.and_then(|q| q.get("memory").map(|q| q.0.clone()))
        };
        let args = container.args.clone().unwrap_or_default();
        let maxmemory = args
            .iter()
            .position(|a| a == "--maxmemory")
            .map(|i| args[i + 1].clone());
        (
            memory(resources.requests),
            memory(resources.limits),
            maxmemory,
        )
    };
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        redis(json!({})),
        (some("187Mi"), some("512Mi"), some("268435456")),
        "1000² by default: the floor of 512Mi holds it twice over"
    );
    assert_eq!(
        redis(json!({"canvas": {"width": 4096, "height": 4096}})),
        (some("2112Mi"), some("4224Mi"), some("2214592512"))
    );
    assert_eq!(
        redis(json!({"redis": {"resources": {"limits": {"memory": "1Gi"}}}})).2,
        some("536870912"),
        "the spec's own limit"
    );
    assert_eq!(
        redis(json!({"redis": {"resources": {"requests": {"memory": "1Gi"}}}})).2,
        None,
        "no limit, no maxmemory"
    );
    assert!(redis::dataset_bytes(4096, 4096) > 2 * 1024 * 1024 * 1024);
}

fn backup_spec() -> serde_json::Value {
    json!({
        "schedule": "0 * * * *",
        "timeZone": "Europe/Paris",
        "retention": 3,
        "store": {
            "endpoint": "http://s3.storage:9000",
            "bucket": "canvases",
            "credentialsSecretName": "s3-credentials",
        },
    })
}

fn cron_job(desired: &Desired) -> &k8s_openapi::api::batch::v1::CronJob {
    match find(desired, "CronJob", "demo-backup") {
        Child::CronJob(c) => c,
        other => panic!("{other:?}"),
    }
}

/// The value of `name` in `env`, or the Secret and key it comes from as `secret/key`.
fn env_source(env: &[k8s_openapi::api::core::v1::EnvVar], name: &str) -> Option<String> {
    let var = env.iter().find(|e| e.name == name)?;
    var.value.clone().or_else(|| {
        let secret = var.value_from.as_ref()?.secret_key_ref.as_ref()?;
        Some(format!("{}/{}", secret.name, secret.key))
    })
}

#[test]
fn backups_run_on_the_schedule_read_redis_and_upload_to_the_store() {
    let d = desired_for(&canvas(json!({"backup": backup_spec()})));
    let spec = &cron_job(&d).spec;
    assert_eq!(spec.schedule, "0 * * * *");
    assert_eq!(spec.time_zone.as_deref(), Some("Europe/Paris"));
    assert_eq!(spec.suspend, Some(false));
    assert_eq!(
        spec.concurrency_policy.as_deref(),
        Some("Forbid"),
        "one backup at a time"
    );
    assert!(d.absent.iter().all(|(kind, _)| *kind != ChildKind::CronJob));
    assert!(
        position_of(&d, "CronJob", "demo-backup") > position_of(&d, "StatefulSet", "demo-redis"),
        "after the Redis it reads"
    );

    let pod = spec
        .job_template
        .spec
        .as_ref()
        .and_then(|j| j.template.spec.as_ref())
        .expect("pod");
    let labels = spec
        .job_template
        .spec
        .as_ref()
        .and_then(|j| j.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .expect("labels");
    assert_eq!(labels[naming::LABEL_COMPONENT], naming::BACKUP_COMPONENT);
    assert_eq!(labels[naming::LABEL_INSTANCE], "demo");
    assert_eq!(
        labels[naming::LABEL_MANAGED_BY],
        naming::MANAGER,
        "the pod list finds it"
    );
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.automount_service_account_token, Some(false));

    let dump = &pod.init_containers.as_ref().expect("init containers")[0];
    assert_eq!(dump.image.as_deref(), Some(DEFAULT_REDIS_IMAGE));
    assert_eq!(
        dump.command.clone().expect("command"),
        ["sh", "-c", &pixel_common::backup::dump_script()]
    );
    let env = dump.env.clone().expect("env");
    assert_eq!(
        env_source(&env, ports::ENV_BACKUP_REDIS_HOST).as_deref(),
        Some("demo-redis")
    );
    assert_eq!(
        env_source(&env, ports::ENV_BACKUP_REDIS_PORT).as_deref(),
        Some("6379")
    );
    assert_eq!(
        env_source(&env, "REDISCLI_AUTH").as_deref(),
        Some("demo-redis-auth/password"),
        "the password from the Secret, in redis-cli's variable, on no command line"
    );
    assert!(
        env.iter()
            .all(|e| e.name != ports::ENV_BACKUP_SECRET_ACCESS_KEY
                && e.name != ports::ENV_BACKUP_ACCESS_KEY_ID),
        "the dump step never sees the store's credentials"
    );

    let upload = container(pod);
    assert_eq!(upload.name, UPLOAD_CONTAINER);
    assert_eq!(
        upload.image.as_deref(),
        Some(concat!("pixel-playground:", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(
        upload.command.clone().expect("command"),
        ["backup", "upload"]
    );
    let env = upload.env.clone().expect("env");
    for (name, value) in [
        (ports::ENV_BACKUP_ENDPOINT, "http://s3.storage:9000"),
        (ports::ENV_BACKUP_BUCKET, "canvases"),
        (ports::ENV_BACKUP_PREFIX, "art/demo/"),
        (ports::ENV_BACKUP_REGION, "us-east-1"),
        (ports::ENV_BACKUP_RETENTION, "3"),
        (
            ports::ENV_BACKUP_ACCESS_KEY_ID,
            "s3-credentials/AWS_ACCESS_KEY_ID",
        ),
        (
            ports::ENV_BACKUP_SECRET_ACCESS_KEY,
            "s3-credentials/AWS_SECRET_ACCESS_KEY",
        ),
        (ports::ENV_BACKUP_RESULT_FILE, "/dev/termination-log"),
    ] {
        assert_eq!(env_source(&env, name).as_deref(), Some(value), "{name}");
    }
    // The two containers hand the file over through the pod's volume.
    assert_eq!(
        env_source(&env, ports::ENV_BACKUP_FILE),
        env_source(dump.env.as_ref().expect("env"), ports::ENV_BACKUP_FILE)
    );
    for c in [dump, upload] {
        let sc = c.security_context.as_ref().expect("security context");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
        // The RDB file (at most the 1Gi volume) is on the pod's disk until the upload ends:
        // the kubelet counts it against the containers' limits.
        assert_eq!(
            c.resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.get("ephemeral-storage"))
                .map(|q| q.0.as_str()),
            Some("1280Mi"),
            "{}",
            c.name
        );
        assert!(
            c.resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .is_some(),
            "{} has limits",
            c.name
        );
    }

    // Redis admits the backup pods too; without backups, it does not.
    let (_, components, _) = admitted(find(&d, "NetworkPolicy", "demo-redis"));
    assert_eq!(components, ["api", "gateway", "backup"]);
    // Nothing reaches the backup pods, and that holds before they exist.
    let Child::NetworkPolicy(own) = find(&d, "NetworkPolicy", "demo-backup") else {
        panic!("not a NetworkPolicy")
    };
    let own = own.spec.as_ref().expect("spec");
    assert_eq!(
        own.ingress.as_deref(),
        Some(&[][..]),
        "no rule: no one admitted"
    );
    let selected = own
        .pod_selector
        .as_ref()
        .and_then(|s| s.match_labels.clone())
        .expect("selector");
    assert!(
        selected.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "it selects the backup pods: {selected:?}"
    );
    assert!(
        position_of(&d, "NetworkPolicy", "demo-backup") < position_of(&d, "CronJob", "demo-backup")
    );

    let mut suspended = backup_spec();
    suspended["suspend"] = json!(true);
    suspended["store"]["prefix"] = json!("");
    let suspended = desired_for(&canvas(json!({"backup": suspended})));
    let spec = &cron_job(&suspended).spec;
    assert_eq!(spec.suspend, Some(true));
    let upload = container(
        spec.job_template
            .spec
            .as_ref()
            .and_then(|j| j.template.spec.as_ref())
            .expect("pod"),
    );
    assert_eq!(
        env_source(upload.env.as_ref().expect("env"), ports::ENV_BACKUP_PREFIX).as_deref(),
        Some(""),
        "a prefix the spec sets, even empty, is the spec's"
    );
}

#[test]
fn a_restored_canvas_fills_its_empty_volume_before_redis_starts() {
    let init = |spec| {
        stateful_set(&desired_for(&canvas(spec)))
            .spec
            .clone()
            .and_then(|s| s.template.spec)
            .and_then(|p| p.init_containers)
            .unwrap_or_default()
    };
    assert!(init(json!({})).is_empty(), "no restore, no init container");
    assert!(init(json!({"backup": backup_spec()})).is_empty());

    let from_backup_store = init(json!({"backup": backup_spec(), "restore": {"from": "latest"}}));
    assert_eq!(from_backup_store.len(), 1);
    let restore = &from_backup_store[0];
    assert_eq!(
        restore.command.clone().expect("command"),
        ["backup", "restore"]
    );
    assert_eq!(
        restore.image.as_deref(),
        Some(concat!("pixel-playground:", env!("CARGO_PKG_VERSION")))
    );
    let env = restore.env.clone().expect("env");
    assert_eq!(
        env_source(&env, ports::ENV_RESTORE_FROM).as_deref(),
        Some("latest")
    );
    assert_eq!(
        env_source(&env, ports::ENV_RESTORE_DATA_DIR).as_deref(),
        Some("/data")
    );
    assert_eq!(
        env_source(&env, ports::ENV_BACKUP_BUCKET).as_deref(),
        Some("canvases")
    );
    assert_eq!(
        env_source(&env, ports::ENV_BACKUP_PREFIX).as_deref(),
        Some("art/demo/")
    );
    let mounts = restore.volume_mounts.clone().expect("mounts");
    assert_eq!(
        mounts
            .iter()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect::<Vec<_>>(),
        [("data", "/data")],
        "Redis's volume, where Redis will read it"
    );

    let elsewhere = init(json!({"restore": {
        "from": "art/old/20261206T220000Z-v42.rdb",
        "store": {"endpoint": "https://s3.example", "bucket": "archive",
                  "prefix": "art/old/", "credentialsSecretName": "archive-keys"},
    }}));
    let env = elsewhere[0].env.clone().expect("env");
    assert_eq!(
        env_source(&env, ports::ENV_RESTORE_FROM).as_deref(),
        Some("art/old/20261206T220000Z-v42.rdb")
    );
    assert_eq!(
        env_source(&env, ports::ENV_BACKUP_PREFIX).as_deref(),
        Some("art/old/")
    );
    assert_eq!(
        env_source(&env, ports::ENV_BACKUP_ACCESS_KEY_ID).as_deref(),
        Some("archive-keys/AWS_ACCESS_KEY_ID")
    );
    assert!(
        env.iter()
            .filter_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
            .all(|secret| secret.optional == Some(true)),
        "a restarted Redis needs no store credentials: the restore has nothing left to do"
    );
}

/// A restore fills the volume when the StatefulSet is created; a later change to what it
/// would run (a new tag) must not change Redis's pod template, so it keeps the live one.
#[test]
fn a_new_tag_leaves_the_live_restore_step_and_redis_be() {
    let spec = |tag: &str| json!({"image": {"tag": tag}, "backup": backup_spec(), "restore": {"from": "latest"}});
    let live = stateful_set(&desired_for(&canvas(spec("0.1.0")))).clone();
    let mut upgraded = stateful_set(&desired_for(&canvas(spec("0.2.0")))).clone();
    assert_ne!(
        upgraded.spec.as_ref().map(|s| &s.template),
        live.spec.as_ref().map(|s| &s.template),
        "the desired restore step runs the new tag"
    );
    keep_restore_container(&mut upgraded, &live);
    assert_eq!(
        upgraded.spec.as_ref().map(|s| &s.template),
        live.spec.as_ref().map(|s| &s.template),
        "applied, Redis's pod template is as it was"
    );
    // Without a restore in the spec, the step goes.
    let mut removed =
        stateful_set(&desired_for(&canvas(json!({"image": {"tag": "0.2.0"}})))).clone();
    keep_restore_container(&mut removed, &live);
    assert_eq!(
        removed
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.init_containers.as_ref()),
        None
    );
}
