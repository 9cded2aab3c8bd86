//! One reconcile: resolve the Redis password, apply the desired children (skipping those
//! already as desired), remove those ruled out, observe the workloads and the pods (deleting
//! a Redis pod stuck on an old revision's missing image), and write the status only when it
//! changed. Steady state therefore makes no writes.

mod stuck_pods;
mod transitions;

use std::{
    collections::{BTreeMap, HashMap, btree_map::Entry},
    fmt::Debug,
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::{Deployment, StatefulSet},
        batch::v1::CronJob,
        core::v1::{PersistentVolumeClaim, Pod, Secret},
        networking::v1::{Ingress, NetworkPolicy},
        policy::v1::PodDisruptionBudget,
        storage::v1::StorageClass,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions},
    runtime::{controller::Action, events::Recorder},
};
use pixel_common::{error::ErrorChain, operator_contract::ROTATE_IDENTITY_KEY_ANNOTATION};
use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use self::stuck_pods::stuck_pods;
pub use self::transitions::{Transition, transitions};
use crate::{
    api::{LastBackup, PixelCanvas, PixelCanvasStatus},
    caches::{Cached, Caches},
    children::{
        self, API_TOKEN_KEY, CONFIG_HASH_ANNOTATION, Child, ChildKind, Component, Credentials,
        Defaults, DesiredError, IDENTITY_KEY_KEY, IDENTITY_KEY_NEXT_KEY, IDENTITY_KEY_PREVIOUS_KEY,
        IDENTITY_KEY_ROTATION_KEY, IdentityKeys, Inputs, MODERATOR_TOKEN_KEY, Names, PASSWORD_KEY,
        consumed_hash, kind_of,
        naming::{LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGER},
        with_child,
    },
    metrics::Metrics,
    status::{self, Observed, PodState, READY, WorkloadState},
    storage::{self, StorageState},
};

/// Annotation on each child: digest of what the operator last applied. A child whose digest
/// matches and whose fields still hold the applied values is left alone.
pub const APPLIED_HASH_ANNOTATION: &str = "pixel-playground.dev/applied-hash";

/// Requeue when all is well, as a safety net beside the watches.
const RESYNC: Duration = Duration::from_secs(300);
/// Requeue while a rollout is under way.
const WHILE_PROGRESSING: Duration = Duration::from_secs(30);
/// Requeue of a Ready canvas that names a Secret of the user's (a password, a client
/// secret): how soon its rotation reaches the pods, since the operator may not watch it.
const REFERENCED_SECRET_POLL: Duration = Duration::from_secs(30);

/// What every reconcile shares: the controller's context.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// What the operator fills in where a canvas leaves a field unset.
    pub defaults: Defaults,
    /// The watches' stores, read instead of the API server once synced.
    caches: Option<Caches>,
    /// Consecutive failures per canvas, for exponential backoff.
    failures: std::sync::Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("metrics", &self.metrics)
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(client: Client, recorder: Recorder, metrics: Metrics, defaults: Defaults) -> Self {
        Self {
            client,
            recorder,
            metrics,
            defaults,
            caches: None,
            failures: Default::default(),
        }
    }

    /// Reads children and pods from `caches` once they have synced.
    #[must_use]
    pub fn with_caches(mut self, caches: Caches) -> Self {
        self.caches = Some(caches);
        self
    }
}

/// Why a reconcile failed. Its [`ErrorChain`] (the message and every cause) is what the
/// Degraded condition and the event say.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Desired(#[from] DesiredError),
    #[error("Secret {0} named by spec.redis.passwordSecretRef does not exist")]
    PasswordSecretMissing(String),
    #[error("Secret {secret} has no key {key:?} (spec.redis.passwordSecretRef.key)")]
    PasswordKeyMissing { secret: String, key: String },
    #[error("a credential in Secret {0} is not UTF-8 text")]
    PasswordNotText(String),
    #[error("Secret {0} named by spec.auth.clientSecretRef does not exist")]
    ClientSecretMissing(String),
    #[error("Secret {secret} has no key {key:?} (spec.auth.clientSecretRef.key)")]
    ClientSecretKeyMissing { secret: String, key: String },
    #[error("cannot {verb} {kind} {name}")]
    Kube {
        verb: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// More than one child failed; each is tried regardless of the others.
    #[error("{}", sentences(.0))]
    Several(Vec<ReconcileError>),
    #[error("cannot serialize {kind} {name}")]
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
            ReconcileError::ClientSecretMissing(_) => "ClientSecretMissing",
            ReconcileError::ClientSecretKeyMissing { .. } => "ClientSecretKeyMissing",
            ReconcileError::Kube { .. } => "KubernetesApiError",
            ReconcileError::Serialize { .. } => "SerializationError",
            ReconcileError::Several(errors) => errors
                .first()
                .map_or("KubernetesApiError", ReconcileError::reason),
        }
    }

    /// `Ok` without failures, the failure itself when there is one, else [`Self::Several`].
    fn all(mut failures: Vec<ReconcileError>) -> Result<(), ReconcileError> {
        match failures.len() {
            0 => Ok(()),
            1 => Err(failures.remove(0)),
            _ => Err(ReconcileError::Several(failures)),
        }
    }

    /// What the Degraded condition and the event say: one sentence per failure, naming the
    /// object and the API server's own message, without the client's debug rendering.
    pub fn sentence(&self) -> String {
        match self {
            ReconcileError::Kube {
                source: kube::Error::Api(status),
                ..
            } if !status.message.is_empty() => format!("{self}: {}", status.message),
            ReconcileError::Several(_) => self.to_string(),
            other => ErrorChain(other).to_string(),
        }
    }
}

/// The sentences of several failures, in the order the children were tried.
fn sentences(errors: &[ReconcileError]) -> String {
    errors
        .iter()
        .map(ReconcileError::sentence)
        .collect::<Vec<_>>()
        .join("; ")
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
pub async fn reconcile(
    canvas: Arc<PixelCanvas>,
    context: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let result = reconcile_canvas(&canvas, &context).await;
    let key = status::describe(&canvas);
    context.metrics.reconciled(
        started.elapsed().as_secs_f64(),
        result.as_ref().err().map(ReconcileError::reason),
    );
    if result.is_ok()
        && let Ok(mut failures) = context.failures.lock()
    {
        failures.remove(&key);
    }
    result
}

/// Backoff after a failure: 5 s, doubling per consecutive failure, at most 5 minutes.
pub fn error_policy(
    canvas: Arc<PixelCanvas>,
    error: &ReconcileError,
    context: Arc<Context>,
) -> Action {
    let key = status::describe(&canvas);
    tracing::warn!(canvas = %key, error = %ErrorChain(error), reason = error.reason(), "reconcile failed");
    let failures = context.failures.lock().map(|mut f| {
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

/// Each component's workload state, as far as it is known.
type Workloads = BTreeMap<Component, WorkloadState>;

/// What applying the children returned.
#[derive(Debug, Default)]
struct Live {
    /// The state of each workload applied.
    workloads: Workloads,
    /// The Redis StatefulSet, once applied.
    redis: Option<StatefulSet>,
}

async fn reconcile_canvas(
    canvas: &PixelCanvas,
    context: &Context,
) -> Result<Action, ReconcileError> {
    let namespace = canvas.namespace().ok_or(DesiredError::NoNamespace)?;
    let names = Names::new(&canvas.name_any());

    let mut live = Live::default();
    let applied = apply_children(canvas, context, &namespace, &names, &mut live).await;
    let mut workloads = live.workloads;
    observe(context, &namespace, &names, &mut workloads).await?;
    let (mut pods, backup) = list_pods(context, &namespace, &names).await?;
    // Only with an applied Redis StatefulSet: a paused canvas's pods are left be.
    let replaced = match &live.redis {
        Some(set) => replace_stuck_pods(context, &namespace, set, &pods).await,
        None => Ok(Vec::new()),
    };
    if let Ok(replaced) = &replaced {
        pods.retain(|pod| !replaced.contains(&pod.name));
    }
    // A volume that cannot grow holds nothing else up: its state goes to the status.
    let storage = if canvas.spec.paused {
        Ok(None)
    } else {
        grow_storage(canvas, context, &namespace, &names, live.redis.as_ref())
            .await
            .map(Some)
    };
    let failure = applied
        .as_ref()
        .err()
        .or(replaced.as_ref().err())
        .or(storage.as_ref().err())
        .map(|e| (e.reason().to_owned(), e.sentence()));
    let observed = Observed {
        workloads,
        image_problems: status::image_problems(&pods),
        failure,
        url: url_of(canvas, &context.defaults),
        storage: storage.as_ref().ok().cloned().flatten(),
        backup,
    };
    let now = Time(
        Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now()),
    );
    let new_status = status::status(canvas, &observed, &now);
    if canvas.status.as_ref() != Some(&new_status) {
        write_status(canvas, context, &new_status).await?;
        publish(
            canvas,
            context,
            transitions(canvas.status.as_ref(), &new_status),
        )
        .await;
    }
    applied?;
    replaced?;
    storage?;
    let ready = new_status
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == "True");
    Ok(Action::requeue(requeue_after(canvas, ready)))
}

/// When to look at the canvas again without a watch event.
fn requeue_after(canvas: &PixelCanvas, ready: bool) -> Duration {
    if !ready {
        WHILE_PROGRESSING
    } else if canvas.spec.referenced_secrets().next().is_some() {
        REFERENCED_SECRET_POLL
    } else {
        RESYNC
    }
}

fn url_of(canvas: &PixelCanvas, defaults: &Defaults) -> Option<String> {
    let inputs = Inputs::new(canvas, Credentials::default(), defaults).ok()?;
    children::url(&inputs)
}

/// Applies every desired child and removes the ones ruled out, unless the canvas is paused.
/// Records the state of each workload it applied in `live`, from the live object.
async fn apply_children(
    canvas: &PixelCanvas,
    context: &Context,
    namespace: &str,
    names: &Names,
    live: &mut Live,
) -> Result<(), ReconcileError> {
    let credentials = credentials(canvas, context, namespace, names).await?;
    let inputs = Inputs::new(canvas, credentials, &context.defaults)?;
    if canvas.spec.paused {
        return Ok(());
    }
    let desired = children::desired(&inputs);
    // Every child is tried: one that cannot be applied holds up none of the others.
    let mut failures = Vec::new();
    for child in &desired.apply {
        let applied = match child {
            Child::StatefulSet(set) => apply_stateful_set(context, namespace, set)
                .await
                .map(Child::StatefulSet),
            other => {
                with_child!(other, |object, wrap| apply(context, namespace, object)
                    .await
                    .map(wrap))
            }
        };
        let object = match applied {
            Ok(object) => object,
            Err(error) => {
                failures.push(error);
                continue;
            }
        };
        if let Some((component, state)) = workload_state(&object, names) {
            live.workloads.insert(component, state);
            if let (Component::Redis, Child::StatefulSet(set)) = (component, object) {
                live.redis = Some(set);
            }
        }
    }
    let uid = canvas.uid().unwrap_or_default();
    for (kind, name) in &desired.absent {
        let (context, uid) = (context, uid.as_str());
        let removed = match kind {
            ChildKind::Secret => remove_owned::<Secret>(context, namespace, name, uid).await,
            ChildKind::PodDisruptionBudget => {
                remove_owned::<PodDisruptionBudget>(context, namespace, name, uid).await
            }
            ChildKind::Ingress => remove_owned::<Ingress>(context, namespace, name, uid).await,
            ChildKind::NetworkPolicy => {
                remove_owned::<NetworkPolicy>(context, namespace, name, uid).await
            }
            ChildKind::CronJob => remove_owned::<CronJob>(context, namespace, name, uid).await,
        };
        if let Err(error) = removed {
            failures.push(error);
        }
    }
    ReconcileError::all(failures)
}

/// Applies the Redis StatefulSet, keeping the live one's volumeClaimTemplates (see
/// [`children::keep_claim_templates`]).
async fn apply_stateful_set(
    context: &Context,
    namespace: &str,
    desired: &StatefulSet,
) -> Result<StatefulSet, ReconcileError> {
    let live = read::<StatefulSet>(context, namespace, &desired.name_any()).await?;
    // The digest is of what the canvas asks for. What is kept from the live object carries
    // the API server's defaults, and a digest over those would differ from the one the
    // first apply wrote, so every new StatefulSet would be applied a second time.
    let hash = content_digest(desired).map_err(serialize_error::<StatefulSet>(desired))?;
    let mut desired = desired.clone();
    if let Some(live) = &live {
        children::keep_claim_templates(&mut desired, live);
        children::keep_restore_container(&mut desired, live);
    }
    apply_over(context, namespace, &desired, &hash, live).await
}

/// Which component a live child is the workload of, and what it reports.
fn workload_state(live: &Child, names: &Names) -> Option<(Component, WorkloadState)> {
    let component = Component::ALL
        .into_iter()
        .find(|component| names.component(*component) == live.name())?;
    match (component, live) {
        (Component::Redis, Child::StatefulSet(set)) => {
            Some((component, WorkloadState::of_stateful_set(set)))
        }
        (Component::Api | Component::Gateway | Component::Frontend, Child::Deployment(d)) => {
            Some((component, WorkloadState::of_deployment(d)))
        }
        _ => None,
    }
}

/// The canvas's credentials: each from the Secret that holds it, else new.
async fn credentials(
    canvas: &PixelCanvas,
    context: &Context,
    namespace: &str,
    names: &Names,
) -> Result<Credentials, ReconcileError> {
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), namespace);
    let redis_password = password(canvas, context, &secrets, namespace, names).await?;
    let internal = names.internal_secret();
    let stored = read::<Secret>(context, namespace, &internal).await?;
    let qualified = format!("{namespace}/{internal}");
    let key = |key: &str| -> Result<Option<String>, ReconcileError> {
        match &stored {
            Some(secret) => secret_text(secret.clone(), key, &qualified),
            None => Ok(None),
        }
    };
    let api_token = key(API_TOKEN_KEY)?.unwrap_or_else(new_password);
    let moderator = names.moderator_secret();
    let moderator_token = read::<Secret>(context, namespace, &moderator)
        .await?
        .map(|secret| {
            secret_text(
                secret,
                MODERATOR_TOKEN_KEY,
                &format!("{namespace}/{moderator}"),
            )
        })
        .transpose()?
        .flatten()
        .filter(|token| !token.is_empty())
        .unwrap_or_else(new_password);
    let stored_identity = key(IDENTITY_KEY_KEY)?
        .filter(|current| !current.is_empty())
        .map(|current| -> Result<IdentityKeys, ReconcileError> {
            Ok(IdentityKeys {
                current,
                previous: key(IDENTITY_KEY_PREVIOUS_KEY)?.unwrap_or_default(),
                next: key(IDENTITY_KEY_NEXT_KEY)?.unwrap_or_default(),
                rotation: key(IDENTITY_KEY_ROTATION_KEY)?.unwrap_or_default(),
            })
        })
        .transpose()?;
    let requested = canvas
        .annotations()
        .get(ROTATE_IDENTITY_KEY_ANNOTATION)
        .map(String::as_str);
    let oidc_client_secret = match canvas
        .spec
        .auth
        .as_ref()
        .and_then(|auth| auth.client_secret_ref.as_ref())
    {
        Some(reference) => {
            referenced(
                &secrets,
                namespace,
                reference,
                ReconcileError::ClientSecretMissing,
                |secret, key| ReconcileError::ClientSecretKeyMissing { secret, key },
            )
            .await?
        }
        None => String::new(),
    };
    let mut credentials = Credentials {
        redis_password,
        api_token,
        identity: stored_identity.clone().unwrap_or_default(),
        moderator_token,
        oidc_client_secret,
    };
    // Only mid-rotation: do the gateways all run with the key to promote?
    let gateways_hold_next = match &stored_identity {
        Some(keys) if keys.rotating() => {
            let inputs = Inputs::new(canvas, credentials.clone(), &context.defaults)?;
            let name = names.component(Component::Gateway);
            read::<Deployment>(context, namespace, &name)
                .await?
                .is_some_and(|live| gateways_run(&inputs, &live))
        }
        _ => false,
    };
    credentials.identity = IdentityKeys::next(
        stored_identity,
        requested,
        new_password(),
        gateways_hold_next,
    );
    Ok(credentials)
}

/// A key of a Secret as text; `None` when the Secret or the key does not exist.
fn secret_text(
    secret: Secret,
    key: &str,
    qualified: &str,
) -> Result<Option<String>, ReconcileError> {
    match secret.data.and_then(|mut d| d.remove(key)) {
        Some(bytes) => String::from_utf8(bytes.0)
            .map(Some)
            .map_err(|_| ReconcileError::PasswordNotText(qualified.to_owned())),
        None => Ok(None),
    }
}

/// What the operator generated earlier under `key` of its Secret `name`, if it did.
async fn generated_value(
    context: &Context,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<Option<String>, ReconcileError> {
    match read::<Secret>(context, namespace, name).await? {
        Some(secret) => secret_text(secret, key, &format!("{namespace}/{name}")),
        None => Ok(None),
    }
}

/// The text at a Secret key the canvas references, or `missing` (the Secret) or
/// `key_missing` (its key) naming what is not there.
async fn referenced(
    secrets: &Api<Secret>,
    namespace: &str,
    reference: &crate::api::SecretKeyRef,
    missing: impl FnOnce(String) -> ReconcileError,
    key_missing: impl FnOnce(String, String) -> ReconcileError,
) -> Result<String, ReconcileError> {
    let qualified = format!("{namespace}/{}", reference.name);
    let secret = secrets
        .get_opt(&reference.name)
        .await
        .map_err(kube_error("get", kind_of::<Secret>(), &reference.name))?
        .ok_or_else(|| missing(qualified.clone()))?;
    secret_text(secret, &reference.key, &qualified)?
        .ok_or_else(|| key_missing(qualified, reference.key.clone()))
}

/// The Redis password: the referenced Secret's, else the generated Secret's, else a new one.
async fn password(
    canvas: &PixelCanvas,
    context: &Context,
    secrets: &Api<Secret>,
    namespace: &str,
    names: &Names,
) -> Result<String, ReconcileError> {
    if let Some(reference) = &canvas.spec.redis.password_secret_ref {
        return referenced(
            secrets,
            namespace,
            reference,
            ReconcileError::PasswordSecretMissing,
            |secret, key| ReconcileError::PasswordKeyMissing { secret, key },
        )
        .await;
    }
    Ok(
        generated_value(context, namespace, &names.redis_secret(), PASSWORD_KEY)
            .await?
            .unwrap_or_else(new_password),
    )
}

/// Whether the live gateway Deployment runs, on every replica, the pod template `inputs`
/// give it (the same config hash, rolled out).
fn gateways_run(inputs: &Inputs, live: &Deployment) -> bool {
    let running = live
        .spec
        .as_ref()
        .and_then(|spec| spec.template.metadata.as_ref())
        .and_then(|meta| meta.annotations.as_ref())
        .and_then(|annotations| annotations.get(CONFIG_HASH_ANNOTATION));
    running == Some(&consumed_hash(inputs, Component::Gateway))
        && WorkloadState::of_deployment(live).rolled_out
}

fn new_password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

/// The digest of `desired`'s content, as [`APPLIED_HASH_ANNOTATION`] records it.
fn content_digest<K: Serialize>(desired: &K) -> serde_json::Result<String> {
    Ok(digest(&serde_json::to_value(desired)?))
}

/// `desired` annotated with `hash` ([`APPLIED_HASH_ANNOTATION`]).
fn annotated<K: Resource + Clone>(desired: &K, hash: String) -> K {
    let mut annotated = desired.clone();
    annotated
        .annotations_mut()
        .insert(APPLIED_HASH_ANNOTATION.to_owned(), hash);
    annotated
}

/// The error of an object that does not serialize.
fn serialize_error<K: k8s_openapi::Resource + Resource>(
    object: &K,
) -> impl FnOnce(serde_json::Error) -> ReconcileError + '_ {
    move |source| ReconcileError::Serialize {
        kind: kind_of::<K>(),
        name: object.name_any(),
        source,
    }
}

/// What reconcile reads, applies and deletes: a namespaced Kubernetes object of a known kind.
trait NamespacedObject:
    k8s_openapi::Resource
    + Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Cached
    + Clone
    + Debug
    + DeserializeOwned
{
}

impl<K> NamespacedObject for K where
    K: k8s_openapi::Resource
        + Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Cached
        + Clone
        + Debug
        + DeserializeOwned
{
}

/// Server-side applies `desired` unless the live object already holds what was last
/// applied. Returns the live object: the one read, or the one the apply returned.
async fn apply<K>(context: &Context, namespace: &str, desired: &K) -> Result<K, ReconcileError>
where
    K: NamespacedObject + Serialize,
{
    // What is applied carries the operator's label. At worst an object the store cannot
    // see (made unlabelled by an older version) is applied once more, which labels it. The
    // credentials' reads still confirm a Secret's absence before generating a value.
    let live = read_labelled::<K>(context, namespace, &desired.name_any()).await?;
    let hash = content_digest(desired).map_err(serialize_error(desired))?;
    apply_over(context, namespace, desired, &hash, live).await
}

/// [`apply`] with the live object already read (`None`: there is none) and the digest to
/// record.
async fn apply_over<K>(
    context: &Context,
    namespace: &str,
    desired: &K,
    hash: &str,
    live: Option<K>,
) -> Result<K, ReconcileError>
where
    K: NamespacedObject + Serialize,
{
    let kind = kind_of::<K>();
    let name = desired.name_any();
    let desired = annotated(desired, hash.to_owned());

    if let Some(live) = live {
        let want = serde_json::to_value(&desired).map_err(serialize_error(&desired))?;
        let have = serde_json::to_value(&live).map_err(serialize_error(&desired))?;
        let recorded = live.annotations().get(APPLIED_HASH_ANNOTATION);
        if recorded.map(String::as_str) == Some(hash) && is_subset(&want, &have) {
            return Ok(live);
        }
    }
    let live = Api::<K>::namespaced(context.client.clone(), namespace)
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await
        .map_err(kube_error("apply", kind, &name))?;
    if let Some(caches) = &context.caches {
        caches.wrote(&live);
    }
    context.metrics.wrote(kind, "apply");
    tracing::info!(kind, %namespace, %name, "applied");
    Ok(live)
}

/// Deletes an object this canvas owns; leaves alone anything it does not own.
async fn remove_owned<K>(
    context: &Context,
    namespace: &str,
    name: &str,
    owner_uid: &str,
) -> Result<(), ReconcileError>
where
    K: NamespacedObject,
{
    let kind = kind_of::<K>();
    let Some(live) = read::<K>(context, namespace, name).await? else {
        return Ok(());
    };
    if !live.owner_references().iter().any(|o| o.uid == owner_uid) {
        return Ok(());
    }
    match Api::<K>::namespaced(context.client.clone(), namespace)
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => {
            context.metrics.wrote(kind, "delete");
            tracing::info!(kind, %namespace, %name, "deleted");
            Ok(())
        }
        // Gone already: the store read it before its watch event of the deletion arrived.
        Err(kube::Error::Api(response)) if response.code == 404 => Ok(()),
        Err(source) => Err(kube_error("delete", kind, name)(source)),
    }
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

/// Reads the workloads `workloads` does not know yet: all of them when the canvas is
/// paused (nothing was applied), those not reached when applying failed part-way.
async fn observe(
    context: &Context,
    namespace: &str,
    names: &Names,
    workloads: &mut Workloads,
) -> Result<(), ReconcileError> {
    for component in Component::ALL {
        let Entry::Vacant(unknown) = workloads.entry(component) else {
            continue;
        };
        let name = names.component(component);
        let state = match component {
            Component::Redis => read::<StatefulSet>(context, namespace, &name)
                .await?
                .map(|set| WorkloadState::of_stateful_set(&set)),
            Component::Api | Component::Gateway | Component::Frontend => {
                read::<Deployment>(context, namespace, &name)
                    .await?
                    .map(|deployment| WorkloadState::of_deployment(&deployment))
            }
        };
        if let Some(state) = state {
            unknown.insert(state);
        }
    }
    Ok(())
}

/// Raises the Redis claim's request to `spec.redis.storage.size` when its StorageClass allows
/// expansion (see [`storage::plan`]); the StorageClass is read only when the claim asks for
/// less than the spec.
async fn grow_storage(
    canvas: &PixelCanvas,
    context: &Context,
    namespace: &str,
    names: &Names,
    redis: Option<&StatefulSet>,
) -> Result<StorageState, ReconcileError> {
    let name = names.redis_claim();
    let wanted = &canvas.spec.redis.storage.size;
    // A claim made from a template with the operator's label is in the claim store once it
    // exists, so its absence there needs no GET: the StatefulSet controller may take
    // minutes to make it while a new canvas is reconciled again and again.
    let claim = if redis.is_some_and(claims_are_labelled) {
        read_labelled::<PersistentVolumeClaim>(context, namespace, &name).await?
    } else {
        read::<PersistentVolumeClaim>(context, namespace, &name).await?
    };
    let class = match claim.as_ref() {
        Some(claim) if storage::needs_more(wanted, claim) => {
            match claim
                .spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_deref())
            {
                Some(class) => Api::<StorageClass>::all(context.client.clone())
                    .get_opt(class)
                    .await
                    .map_err(kube_error("get", kind_of::<StorageClass>(), class))?,
                None => None,
            }
        }
        _ => None,
    };
    let plan = storage::plan(&name, wanted, claim.as_ref(), class.as_ref());
    if let Some(size) = &plan.expand_to {
        let patch = serde_json::json!({"spec": {"resources": {"requests": {"storage": size}}}});
        let patched = Api::<PersistentVolumeClaim>::namespaced(context.client.clone(), namespace)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(kube_error(
                "patch",
                kind_of::<PersistentVolumeClaim>(),
                &name,
            ))?;
        if let Some(caches) = &context.caches {
            // Until the claim store sees it, the next reconcile would patch it again.
            caches.wrote(&patched);
        }
        tracing::info!(claim = %name, size = %size.0, "volume claim expanded");
    }
    Ok(plan.state)
}

/// Whether the claims `set` makes carry the label the operator's claim watch selects.
fn claims_are_labelled(set: &StatefulSet) -> bool {
    set.spec
        .as_ref()
        .and_then(|spec| spec.volume_claim_templates.as_ref())
        .is_some_and(|templates| {
            !templates.is_empty()
                && templates.iter().all(|template| {
                    template.metadata.labels.as_ref().is_some_and(|labels| {
                        labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGER)
                    })
                })
        })
}

/// The canvas's pods (those carrying the operator's label and the canvas's instance).
async fn list_pods(
    context: &Context,
    namespace: &str,
    names: &Names,
) -> Result<(Vec<PodState>, Option<LastBackup>), ReconcileError> {
    let labels = [
        (LABEL_MANAGED_BY, MANAGER),
        (LABEL_INSTANCE, names.canvas()),
    ];
    let cached = context
        .caches
        .as_ref()
        .and_then(|caches| caches.pods(namespace, names.canvas()));
    if let Some(pods) = cached {
        return Ok((
            pods.iter().filter_map(|pod| pod.state.clone()).collect(),
            status::newest_backup(pods.iter().filter_map(|pod| pod.backup.clone())),
        ));
    }
    let selector = labels
        .map(|(key, value)| format!("{key}={value}"))
        .join(",");
    let pods = Api::<Pod>::namespaced(context.client.clone(), namespace)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_error(
            "list",
            kind_of::<Pod>(),
            &format!("{namespace}/* labelled {selector}"),
        ))?
        .items;
    Ok((
        pods.iter().filter_map(PodState::of_pod).collect(),
        status::reported_backup(&pods),
    ))
}

/// Deletes the Redis pods [`stuck_pods`] picks, each only while it is still the pod that
/// was observed (a UID precondition), so the StatefulSet controller recreates it at the
/// update revision. Returns the names of the pods deleted.
async fn replace_stuck_pods(
    context: &Context,
    namespace: &str,
    set: &StatefulSet,
    pods: &[PodState],
) -> Result<Vec<String>, ReconcileError> {
    let kind = kind_of::<Pod>();
    let api = Api::<Pod>::namespaced(context.client.clone(), namespace);
    let update_revision = set
        .status
        .as_ref()
        .and_then(|s| s.update_revision.as_deref())
        .unwrap_or_default();
    let mut replaced = Vec::new();
    for pod in stuck_pods(set, pods) {
        let params = DeleteParams::default().preconditions(Preconditions {
            uid: Some(pod.uid.clone()),
            resource_version: None,
        });
        match api.delete(&pod.name, &params).await {
            Ok(_) => {
                context.metrics.wrote(kind, "delete");
                tracing::info!(
                    kind,
                    %namespace,
                    name = %pod.name,
                    revision = pod.revision.as_deref().unwrap_or_default(),
                    update_revision,
                    "deleted a pod stuck on an old revision's image"
                );
                replaced.push(pod.name.clone());
            }
            // Gone already, or a new pod of that name: nothing left to replace.
            Err(kube::Error::Api(status)) if status.is_not_found() || status.is_conflict() => {}
            Err(error) => return Err(kube_error("delete", kind, &pod.name)(error)),
        }
    }
    Ok(replaced)
}

/// The object named `name`, if it exists: from its store once synced, else from the API
/// server.
async fn read<K>(
    context: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<K>, ReconcileError>
where
    K: NamespacedObject,
{
    let cached = context
        .caches
        .as_ref()
        .and_then(|caches| caches.get::<K>(namespace, name));
    cached_or_get(context, namespace, name, cached).await
}

/// [`read`] of an object that, if it exists, carries the label its watch selects: a
/// synced store's "there is none" is the answer, with no GET.
async fn read_labelled<K>(
    context: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<K>, ReconcileError>
where
    K: NamespacedObject,
{
    let cached = context
        .caches
        .as_ref()
        .and_then(|caches| caches.get_labelled::<K>(namespace, name));
    cached_or_get(context, namespace, name, cached).await
}

/// `cached`, the store's answer, or else the API server's.
async fn cached_or_get<K>(
    context: &Context,
    namespace: &str,
    name: &str,
    cached: Option<Option<K>>,
) -> Result<Option<K>, ReconcileError>
where
    K: NamespacedObject,
{
    match cached {
        Some(cached) => Ok(cached),
        None => Api::<K>::namespaced(context.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(kube_error("get", kind_of::<K>(), name)),
    }
}

async fn write_status(
    canvas: &PixelCanvas,
    context: &Context,
    status: &PixelCanvasStatus,
) -> Result<(), ReconcileError> {
    let name = canvas.name_any();
    let api: Api<PixelCanvas> = Api::namespaced(
        context.client.clone(),
        &canvas.namespace().unwrap_or_default(),
    );
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
    context.metrics.wrote("PixelCanvas", "status");
    Ok(())
}

/// Publishes the events `transitions` chose.
async fn publish(canvas: &PixelCanvas, context: &Context, transitions: Vec<Transition>) {
    let reference = canvas.object_ref(&());
    for transition in transitions {
        let event = transition.into_event();
        match context.recorder.publish(&event, &reference).await {
            Ok(()) => context.metrics.wrote("Event", "create"),
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), reason = %event.reason, "cannot publish event")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn gateways_hold_a_key_once_every_replica_runs_its_template() {
        use k8s_openapi::api::apps::v1::DeploymentStatus;
        let mut canvas = PixelCanvas::new(
            "demo",
            serde_json::from_value(serde_json::json!({})).expect("spec"),
        );
        canvas.meta_mut().namespace = Some("art".to_owned());
        canvas.meta_mut().uid = Some("uid".to_owned());
        let mut credentials = Credentials::default();
        credentials.identity.next = "n".repeat(32);
        let inputs =
            Inputs::new(&canvas, credentials.clone(), &Defaults::default()).expect("inputs");
        let Some(Child::Deployment(mut live)) = children::desired(&inputs)
            .apply
            .into_iter()
            .find(|c| c.kind() == "Deployment" && c.name() == "demo-gateway")
        else {
            panic!("a gateway Deployment")
        };
        live.metadata.generation = Some(2);
        let rolled = |updated: i32, observed: i64| DeploymentStatus {
            observed_generation: Some(observed),
            replicas: Some(2),
            updated_replicas: Some(updated),
            ready_replicas: Some(2),
            ..Default::default()
        };
        live.status = Some(rolled(2, 2));
        assert!(gateways_run(&inputs, &live));
        live.status = Some(rolled(1, 2));
        assert!(
            !gateways_run(&inputs, &live),
            "a replica still runs the old template"
        );
        live.status = Some(rolled(2, 1));
        assert!(
            !gateways_run(&inputs, &live),
            "the controller has not seen the change"
        );
        live.status = Some(rolled(2, 2));
        credentials.identity.next = "m".repeat(32);
        let other = Inputs::new(&canvas, credentials, &Defaults::default()).expect("inputs");
        assert!(
            !gateways_run(&other, &live),
            "the template carries another key"
        );
    }

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

    /// The operator may not watch Secrets, so a Ready canvas that names one of the user's
    /// is looked at again soon enough for a rotation to reach its pods.
    #[test]
    fn a_canvas_naming_a_users_secret_is_polled_for_its_rotation() {
        let canvas = |spec| PixelCanvas::new("demo", serde_json::from_value(spec).expect("spec"));
        assert_eq!(requeue_after(&canvas(json!({})), true), RESYNC);
        assert_eq!(requeue_after(&canvas(json!({})), false), WHILE_PROGRESSING);
        let named = canvas(json!({"redis": {"passwordSecretRef": {"name": "mine"}}}));
        assert_eq!(requeue_after(&named, true), REFERENCED_SECRET_POLL);
        assert!(REFERENCED_SECRET_POLL < RESYNC);
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

#[cfg(test)]
mod api_requests;
