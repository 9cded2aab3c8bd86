//! One reconcile: resolve the Redis password, apply the desired children (skipping those
//! already as desired), remove those ruled out, observe the workloads, and write the status
//! only when it changed. Steady state therefore makes no writes.

use std::{collections::HashMap, fmt::Debug, sync::Arc, time::Duration};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::{Deployment, StatefulSet},
        core::v1::Secret,
        networking::v1::Ingress,
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder},
    },
};
use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::{
    api::PixelCanvas,
    children::{
        self, Child, ChildKind, Component, Context, DesiredError, Names, PASSWORD_KEY,
        naming::MANAGER,
    },
    metrics::Metrics,
    status::{self, DEGRADED, Observed, READY, WorkloadState},
};

/// Annotation on each child: digest of what the operator last applied. A child whose digest
/// matches and whose fields still hold the applied values is left alone.
pub const APPLIED_HASH_ANNOTATION: &str = "pixel-playground.dev/applied-hash";

/// Requeue when all is well, as a safety net beside the watches.
const RESYNC: Duration = Duration::from_secs(300);
/// Requeue while a rollout is under way.
const WHILE_PROGRESSING: Duration = Duration::from_secs(30);

/// What every reconcile shares.
pub struct Ctx {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// Consecutive failures per canvas, for exponential backoff.
    failures: std::sync::Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl Ctx {
    pub fn new(client: Client, recorder: Recorder, metrics: Metrics) -> Self {
        Self {
            client,
            recorder,
            metrics,
            failures: Default::default(),
        }
    }
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Desired(#[from] DesiredError),
    #[error("Secret {0} named by spec.redis.passwordSecretRef does not exist")]
    PasswordSecretMissing(String),
    #[error("Secret {secret} has no key {key:?} (spec.redis.passwordSecretRef.key)")]
    PasswordKeyMissing { secret: String, key: String },
    #[error("the password in Secret {0} is not UTF-8 text")]
    PasswordNotText(String),
    #[error("cannot {verb} {kind} {name}: {source}")]
    Kube {
        verb: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot serialize {kind} {name}: {source}")]
    Serialize {
        kind: &'static str,
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ReconcileError {
    /// A CamelCase reason for conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Desired(_) => "InvalidCanvas",
            ReconcileError::PasswordSecretMissing(_) => "PasswordSecretMissing",
            ReconcileError::PasswordKeyMissing { .. } => "PasswordKeyMissing",
            ReconcileError::PasswordNotText(_) => "PasswordNotText",
            ReconcileError::Kube { .. } => "KubernetesApiError",
            ReconcileError::Serialize { .. } => "SerializationError",
        }
    }
}

fn kube_error(
    verb: &'static str,
    kind: &'static str,
    name: &str,
) -> impl FnOnce(kube::Error) -> ReconcileError {
    let name = name.to_owned();
    move |source| ReconcileError::Kube {
        verb,
        kind,
        name,
        source,
    }
}

/// The controller's entry point for one canvas.
pub async fn reconcile(canvas: Arc<PixelCanvas>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let result = reconcile_canvas(&canvas, &ctx).await;
    let key = status::describe(&canvas);
    ctx.metrics.reconciled(
        started.elapsed().as_secs_f64(),
        result.as_ref().err().map(ReconcileError::reason),
    );
    if result.is_ok()
        && let Ok(mut failures) = ctx.failures.lock()
    {
        failures.remove(&key);
    }
    result
}

/// Backoff after a failure: 5 s, doubling per consecutive failure, at most 5 minutes.
pub fn error_policy(canvas: Arc<PixelCanvas>, error: &ReconcileError, ctx: Arc<Ctx>) -> Action {
    let key = status::describe(&canvas);
    tracing::warn!(canvas = %key, %error, reason = error.reason(), "reconcile failed");
    let failures = ctx.failures.lock().map(|mut f| {
        let n = f.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    });
    Action::requeue(backoff(failures.unwrap_or(1)))
}

fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(6);
    Duration::from_secs(5 * 2u64.pow(exponent)).min(Duration::from_secs(300))
}

async fn reconcile_canvas(canvas: &PixelCanvas, ctx: &Ctx) -> Result<Action, ReconcileError> {
    let namespace = canvas.namespace().ok_or(DesiredError::NoNamespace)?;
    let names = Names::new(&canvas.name_any());

    let applied = apply_children(canvas, ctx, &namespace, &names).await;
    let failure = applied
        .as_ref()
        .err()
        .map(|e| (e.reason().to_owned(), e.to_string()));
    let observed = Observed {
        workloads: observe(ctx, &namespace, &names).await?,
        failure,
        url: url_of(canvas),
    };
    let now = Time(
        Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now()),
    );
    let new_status = status::status(canvas, &observed, &now);
    if canvas.status.as_ref() != Some(&new_status) {
        write_status(canvas, ctx, &new_status).await?;
        publish_transitions(canvas, ctx, &new_status).await;
    }
    applied?;
    let ready = new_status
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == "True");
    Ok(Action::requeue(if ready {
        RESYNC
    } else {
        WHILE_PROGRESSING
    }))
}

fn url_of(canvas: &PixelCanvas) -> Option<String> {
    let ctx = Context::new(canvas, String::new()).ok()?;
    children::url(&ctx)
}

/// Applies every desired child and removes the ones ruled out, unless the canvas is paused.
async fn apply_children(
    canvas: &PixelCanvas,
    ctx: &Ctx,
    namespace: &str,
    names: &Names,
) -> Result<(), ReconcileError> {
    let password = password(canvas, ctx, namespace, names).await?;
    let context = Context::new(canvas, password)?;
    if canvas.spec.paused {
        return Ok(());
    }
    let desired = children::desired(&context);
    for child in &desired.apply {
        match child {
            Child::ConfigMap(o) => apply(ctx, namespace, o, child.kind()).await?,
            Child::Secret(o) => apply(ctx, namespace, o, child.kind()).await?,
            Child::StatefulSet(o) => apply(ctx, namespace, o, child.kind()).await?,
            Child::Service(o) => apply(ctx, namespace, o, child.kind()).await?,
            Child::Deployment(o) => apply(ctx, namespace, o, child.kind()).await?,
            Child::PodDisruptionBudget(o) => apply(ctx, namespace, o, child.kind()).await?,
            Child::NetworkPolicy(o) => apply(ctx, namespace, o, child.kind()).await?,
            Child::Ingress(o) => apply(ctx, namespace, o, child.kind()).await?,
        }
    }
    let uid = canvas.uid().unwrap_or_default();
    for (kind, name) in &desired.absent {
        match kind {
            ChildKind::Secret => {
                remove_owned::<Secret>(ctx, namespace, name, &uid, "Secret").await?
            }
            ChildKind::PodDisruptionBudget => {
                remove_owned::<PodDisruptionBudget>(
                    ctx,
                    namespace,
                    name,
                    &uid,
                    "PodDisruptionBudget",
                )
                .await?;
            }
            ChildKind::Ingress => {
                remove_owned::<Ingress>(ctx, namespace, name, &uid, "Ingress").await?
            }
        }
    }
    Ok(())
}

/// The Redis password: the referenced Secret's, else the generated Secret's, else a new one.
async fn password(
    canvas: &PixelCanvas,
    ctx: &Ctx,
    namespace: &str,
    names: &Names,
) -> Result<String, ReconcileError> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let read = |secret: Secret, key: &str, name: &str| -> Result<Option<String>, ReconcileError> {
        match secret.data.and_then(|mut d| d.remove(key)) {
            Some(bytes) => String::from_utf8(bytes.0)
                .map(Some)
                .map_err(|_| ReconcileError::PasswordNotText(format!("{namespace}/{name}"))),
            None => Ok(None),
        }
    };
    if let Some(reference) = &canvas.spec.redis.password_secret_ref {
        let qualified = format!("{namespace}/{}", reference.name);
        let secret = secrets
            .get_opt(&reference.name)
            .await
            .map_err(kube_error("get", "Secret", &reference.name))?
            .ok_or_else(|| ReconcileError::PasswordSecretMissing(qualified.clone()))?;
        return read(secret, &reference.key, &reference.name)?.ok_or_else(|| {
            ReconcileError::PasswordKeyMissing {
                secret: qualified,
                key: reference.key.clone(),
            }
        });
    }
    let generated = names.redis_secret();
    if let Some(secret) = secrets
        .get_opt(&generated)
        .await
        .map_err(kube_error("get", "Secret", &generated))?
        && let Some(password) = read(secret, PASSWORD_KEY, &generated)?
    {
        return Ok(password);
    }
    Ok(new_password())
}

fn new_password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

/// Server-side applies `desired` unless the live object already holds what was last applied.
async fn apply<K>(
    ctx: &Ctx,
    namespace: &str,
    desired: &K,
    kind: &'static str,
) -> Result<(), ReconcileError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let name = desired.name_any();
    let serialize = |source| ReconcileError::Serialize {
        kind,
        name: name.clone(),
        source,
    };
    let mut desired = desired.clone();
    let hash = digest(&serde_json::to_value(&desired).map_err(serialize)?);
    desired
        .annotations_mut()
        .insert(APPLIED_HASH_ANNOTATION.to_owned(), hash.clone());

    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    if let Some(live) = api
        .get_opt(&name)
        .await
        .map_err(kube_error("get", kind, &name))?
    {
        let want = serde_json::to_value(&desired).map_err(serialize)?;
        let have = serde_json::to_value(&live).map_err(serialize)?;
        if live.annotations().get(APPLIED_HASH_ANNOTATION) == Some(&hash) && is_subset(&want, &have)
        {
            return Ok(());
        }
    }
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .map_err(kube_error("apply", kind, &name))?;
    ctx.metrics.wrote(kind, "apply");
    tracing::info!(kind, %namespace, %name, "applied");
    Ok(())
}

/// Deletes an object this canvas owns; leaves alone anything it does not own.
async fn remove_owned<K>(
    ctx: &Ctx,
    namespace: &str,
    name: &str,
    owner_uid: &str,
    kind: &'static str,
) -> Result<(), ReconcileError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(live) = api
        .get_opt(name)
        .await
        .map_err(kube_error("get", kind, name))?
    else {
        return Ok(());
    };
    if !live.owner_references().iter().any(|o| o.uid == owner_uid) {
        return Ok(());
    }
    api.delete(name, &DeleteParams::background())
        .await
        .map_err(kube_error("delete", kind, name))?;
    ctx.metrics.wrote(kind, "delete");
    tracing::info!(kind, %namespace, %name, "deleted");
    Ok(())
}

/// Every field of `want` holds the same value in `have` (lists must match element-wise).
/// Fields the API server adds (defaults, status, managedFields) do not matter.
pub fn is_subset(want: &serde_json::Value, have: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w
            .iter()
            .all(|(k, v)| h.get(k).is_some_and(|hv| is_subset(v, hv))),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(a, b)| is_subset(a, b))
        }
        _ => want == have,
    }
}

fn digest(value: &serde_json::Value) -> String {
    let digest = Sha256::digest(value.to_string().as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads each component's workload.
async fn observe(
    ctx: &Ctx,
    namespace: &str,
    names: &Names,
) -> Result<std::collections::BTreeMap<Component, WorkloadState>, ReconcileError> {
    let mut workloads = std::collections::BTreeMap::new();
    let redis_name = names.component(Component::Redis);
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    if let Some(set) =
        sets.get_opt(&redis_name)
            .await
            .map_err(kube_error("get", "StatefulSet", &redis_name))?
    {
        workloads.insert(Component::Redis, WorkloadState::of_stateful_set(&set));
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    for component in [Component::Api, Component::Gateway, Component::Frontend] {
        let name = names.component(component);
        if let Some(d) =
            deployments
                .get_opt(&name)
                .await
                .map_err(kube_error("get", "Deployment", &name))?
        {
            workloads.insert(component, WorkloadState::of_deployment(&d));
        }
    }
    Ok(workloads)
}

async fn write_status(
    canvas: &PixelCanvas,
    ctx: &Ctx,
    status: &crate::api::PixelCanvasStatus,
) -> Result<(), ReconcileError> {
    let name = canvas.name_any();
    let api: Api<PixelCanvas> =
        Api::namespaced(ctx.client.clone(), &canvas.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": PixelCanvas::api_version(&()),
        "kind": PixelCanvas::kind(&()),
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(kube_error("update the status of", "PixelCanvas", &name))?;
    ctx.metrics.wrote("PixelCanvas", "status");
    Ok(())
}

/// Events for real transitions: Ready flipping, and a new reason for being degraded.
async fn publish_transitions(canvas: &PixelCanvas, ctx: &Ctx, new: &crate::api::PixelCanvasStatus) {
    let find = |conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
                type_: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let old = canvas
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let mut events = Vec::new();
    if let Some((status, reason, message)) = find(&new.conditions, READY)
        && find(old, READY).map(|(s, _, _)| s) != Some(status.clone())
    {
        let type_ = if status == "True" {
            EventType::Normal
        } else {
            EventType::Warning
        };
        let reason = if status == "True" {
            "Ready".to_owned()
        } else {
            reason
        };
        events.push(Event {
            type_,
            reason,
            note: Some(message),
            action: "Reconcile".to_owned(),
            secondary: None,
        });
    }
    if let Some((status, reason, message)) = find(&new.conditions, DEGRADED)
        && status == "True"
        && find(old, DEGRADED).map(|(s, r, _)| (s, r)) != Some((status.clone(), reason.clone()))
    {
        events.push(Event {
            type_: EventType::Warning,
            reason,
            note: Some(message),
            action: "Reconcile".to_owned(),
            secondary: None,
        });
    }
    let reference = canvas.object_ref(&());
    for event in events {
        match ctx.recorder.publish(&event, &reference).await {
            Ok(()) => ctx.metrics.wrote("Event", "create"),
            Err(error) => tracing::warn!(%error, reason = %event.reason, "cannot publish event"),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn subset_ignores_server_added_fields_but_not_changed_ones() {
        let want = json!({"spec": {"replicas": 2, "template": {"containers": [{"name": "a", "image": "x"}]}}});
        let have = json!({"spec": {"replicas": 2, "strategy": {}, "template": {"containers": [{"name": "a", "image": "x", "terminationMessagePath": "/dev/termination-log"}]}}, "status": {}});
        assert!(is_subset(&want, &have));
        let scaled_by_hand = json!({"spec": {"replicas": 5, "template": {"containers": [{"name": "a", "image": "x"}]}}});
        assert!(!is_subset(&want, &scaled_by_hand));
        let extra_container = json!({"spec": {"replicas": 2, "template": {"containers": [{"name": "a", "image": "x"}, {"name": "b"}]}}});
        assert!(
            !is_subset(&want, &extra_container),
            "lists must match element-wise"
        );
        assert!(!is_subset(&want, &json!({})));
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(30), Duration::from_secs(300));
    }

    #[test]
    fn generated_passwords_are_long_and_fresh() {
        let (a, b) = (new_password(), new_password());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn digests_differ_with_content() {
        assert_eq!(digest(&json!({"a": 1})), digest(&json!({"a": 1})));
        assert_ne!(digest(&json!({"a": 1})), digest(&json!({"a": 2})));
    }
}
