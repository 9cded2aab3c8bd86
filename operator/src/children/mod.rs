//! The desired state: every child object of a canvas, as a pure function of the canvas, the
//! Redis password and the operator's [`Defaults`]. `reconcile` applies what this returns and
//! removes what it rules out.

mod backup;
mod config;
pub mod image_tag;
mod ingress;
pub mod naming;
mod network;
mod redis;
mod security;
mod workloads;

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        batch::v1::CronJob,
        core::v1::{
            ConfigMap, Container, PodSpec, PodTemplateSpec, Secret, Service,
            TopologySpreadConstraint, Volume,
        },
        networking::v1::{Ingress, NetworkPolicy},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
};
use kube::{Resource, ResourceExt};

pub use self::{
    backup::UPLOAD_CONTAINER,
    config::{
        API_TOKEN_KEY, IDENTITY_KEY_KEY, IDENTITY_KEY_NEXT_KEY, IDENTITY_KEY_PREVIOUS_KEY,
        IDENTITY_KEY_ROTATION_KEY, MODERATOR_TOKEN_KEY, PASSWORD_KEY, consumed_hash,
    },
    image_tag::image_tag,
    ingress::url,
    naming::Component,
    naming::Names,
    redis::{keep_claim_templates, keep_restore_container},
};
use crate::api::{PixelCanvas, PodOverrides, PullPolicy};

/// Pod template annotation: digest of what the pods consume from the ConfigMap and Secret.
pub const CONFIG_HASH_ANNOTATION: &str = "pixel-playground.dev/config-hash";

/// Why the desired state cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    #[error("the PixelCanvas has no namespace")]
    NoNamespace,
    #[error("the PixelCanvas has no uid yet, so children cannot reference it")]
    NoUid,
}

/// The Redis image of a canvas that names none (`--default-redis-image`).
pub const DEFAULT_REDIS_IMAGE: &str = "redis:7.2-alpine";
/// The image repository of a canvas that names none (`--image-repository`).
pub const DEFAULT_IMAGE_REPOSITORY: &str = "pixel-playground";

/// What the operator supplies where a canvas leaves a field unset. Operator-wide, from its
/// flags, so one operator can point every canvas at a private or local registry while the
/// canvases stay as users wrote them. A change here changes the pod templates, so the pods
/// of every canvas relying on it roll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// For `spec.redis.image`.
    pub redis_image: String,
    /// For `spec.image.repository`.
    pub image_repository: String,
    /// For `spec.image.tag`: the operator's own version.
    pub image_tag: String,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            redis_image: DEFAULT_REDIS_IMAGE.to_owned(),
            image_repository: DEFAULT_IMAGE_REPOSITORY.to_owned(),
            image_tag: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// The canvas's secrets, as reconcile resolved them: from the Secrets that hold them, or
/// freshly generated.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The Redis password: from the referenced Secret, the generated one, or new.
    pub redis_password: String,
    /// The token the gateway presents to canvas-api's placement endpoint.
    pub api_token: String,
    /// The keys the gateway signs and verifies identity cookies with.
    pub identity: IdentityKeys,
    /// The token moderators present to canvas-api's moderation API.
    pub moderator_token: String,
    /// The OpenID Connect client secret, from `spec.auth.clientSecretRef`; empty without one.
    pub oidc_client_secret: String,
}

/// The identity keys, as the internal Secret holds them. A rotation takes two rolls of
/// the gateways, so that no gateway ever meets a cookie signed with a key it does not
/// know: first the new key is given to every gateway to verify only (`next`); once they
/// all run with it, it signs (`current`) and the old one only verifies (`previous`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IdentityKeys {
    /// Signs new cookies (and verifies).
    pub current: String,
    /// The key before the last rotation, still verifying; empty before the first rotation.
    pub previous: String,
    /// The key of a rotation under way, verifying only until every gateway holds it;
    /// empty otherwise.
    pub next: String,
    /// The rotation annotation's value these keys were made for; empty before the first.
    pub rotation: String,
}

impl std::fmt::Debug for IdentityKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityKeys")
            .field("rotation", &self.rotation)
            .finish_non_exhaustive()
    }
}

impl IdentityKeys {
    /// The keys after this reconcile. Nothing stored: `fresh`. A rotation under way is
    /// finished once `gateways_hold_next` (every gateway pod runs with the `next` key):
    /// `next` signs, `current` becomes `previous`. Otherwise, when the canvas asks for a
    /// rotation (`requested`, its annotation's value) the keys were not made for, `fresh`
    /// becomes `next`. Else `stored` as it is.
    pub fn next(
        stored: Option<Self>,
        requested: Option<&str>,
        fresh: String,
        gateways_hold_next: bool,
    ) -> Self {
        let requested = requested.unwrap_or_default();
        match stored {
            None => Self {
                current: fresh,
                rotation: requested.to_owned(),
                ..Self::default()
            },
            Some(stored) if !stored.next.is_empty() => {
                if gateways_hold_next {
                    Self {
                        current: stored.next,
                        previous: stored.current,
                        next: String::new(),
                        rotation: stored.rotation,
                    }
                } else {
                    stored
                }
            }
            Some(stored) if requested.is_empty() || requested == stored.rotation => stored,
            Some(stored) => Self {
                next: fresh,
                rotation: requested.to_owned(),
                ..stored
            },
        }
    }

    /// Whether a rotation waits for the gateways to hold its key.
    pub fn rotating(&self) -> bool {
        !self.next.is_empty()
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

/// Everything the desired state depends on.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub canvas: &'a PixelCanvas,
    pub names: Names,
    namespace: String,
    owner: OwnerReference,
    pub credentials: Credentials,
    /// The Pixel Playground image's tag: the spec's, else the default.
    image_tag: String,
    /// The Pixel Playground image (`repository:tag`): the spec's repository, else the default.
    image: String,
    /// The Redis image: the spec's, else the default.
    redis_image: String,
}

impl<'a> Inputs<'a> {
    pub fn new(
        canvas: &'a PixelCanvas,
        credentials: Credentials,
        defaults: &Defaults,
    ) -> Result<Self, DesiredError> {
        let spec = &canvas.spec;
        let repository = spec
            .image
            .repository
            .as_deref()
            .unwrap_or(&defaults.image_repository);
        let tag = image_tag(canvas, &defaults.image_tag).to_owned();
        Ok(Self {
            names: Names::new(&canvas.name_any()),
            namespace: canvas.namespace().ok_or(DesiredError::NoNamespace)?,
            owner: canvas
                .controller_owner_ref(&())
                .ok_or(DesiredError::NoUid)?,
            image: format!("{repository}:{tag}"),
            image_tag: tag,
            redis_image: spec
                .redis
                .image
                .clone()
                .unwrap_or_else(|| defaults.redis_image.clone()),
            canvas,
            credentials,
        })
    }

    /// Name, namespace, labels and the controller owner reference of a child.
    fn metadata(&self, name: String, component: Option<Component>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels(component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..Default::default()
        }
    }

    fn labels(&self, component: Option<Component>) -> BTreeMap<String, String> {
        self.names.labels(component, &self.image_tag)
    }

    /// The spec's scheduling and annotations for a component's pods.
    fn pod_overrides(&self, component: Component) -> &PodOverrides {
        let spec = &self.canvas.spec;
        match component {
            Component::Redis => &spec.redis.pod,
            Component::Api => &spec.api.pod,
            Component::Gateway => &spec.gateway.pod,
            Component::Frontend => &spec.frontend.pod,
        }
    }

    /// The labels of a component's pods. Redis's carry no Pixel Playground version: it runs
    /// its own image, so a new tag must not restart it (and the data with it).
    fn pod_labels(&self, component: Component) -> BTreeMap<String, String> {
        let mut labels = self.labels(Some(component));
        if component == Component::Redis {
            labels.remove(naming::LABEL_VERSION);
        }
        labels
    }

    /// The image of the canvas-api, gateway and frontend containers.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// The image of the Redis container.
    pub fn redis_image(&self) -> &str {
        &self.redis_image
    }

    /// The pull policy of the Pixel Playground image.
    fn pull_policy(&self) -> &'static str {
        pull_policy(self.canvas.spec.image.pull_policy)
    }

    /// The pull policy of the Redis image.
    fn redis_pull_policy(&self) -> &'static str {
        pull_policy(self.canvas.spec.redis.image_pull_policy)
    }
}

fn pull_policy(policy: PullPolicy) -> &'static str {
    match policy {
        PullPolicy::Always => "Always",
        PullPolicy::IfNotPresent => "IfNotPresent",
        PullPolicy::Never => "Never",
    }
}

/// The pod template every component shares: its labels, the hash of what it consumes (so
/// a change rolls it), the restricted security context, no service-account token, and `/tmp`.
fn pod_template(
    inputs: &Inputs,
    component: Component,
    container: Container,
    tmp: Volume,
) -> PodTemplateSpec {
    let overrides = inputs.pod_overrides(component);
    let mut annotations = overrides.annotations.clone();
    annotations.insert(
        CONFIG_HASH_ANNOTATION.to_owned(),
        config::consumed_hash(inputs, component),
    );
    let spread = match &overrides.topology_spread_constraints {
        Some(constraints) => constraints.clone(),
        None => default_spread(inputs, component),
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(inputs.pod_labels(component)),
            annotations: Some(annotations),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(vec![tmp]),
            security_context: Some(security::pod_security_context()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(30),
            node_selector: (!overrides.node_selector.is_empty())
                .then(|| overrides.node_selector.clone()),
            tolerations: (!overrides.tolerations.is_empty()).then(|| overrides.tolerations.clone()),
            affinity: overrides.affinity.clone(),
            topology_spread_constraints: (!spread.is_empty()).then_some(spread),
            priority_class_name: overrides.priority_class_name.clone(),
            ..Default::default()
        }),
    }
}

/// Replicas of a stateless component spread one per node where the scheduler can, so a
/// node's loss takes one replica; never at the price of a pod left pending. Counted per
/// revision (`pod-template-hash`), so a rollout spreads its new pods too. Redis has one pod.
fn default_spread(inputs: &Inputs, component: Component) -> Vec<TopologySpreadConstraint> {
    if component == Component::Redis {
        return Vec::new();
    }
    vec![TopologySpreadConstraint {
        max_skew: 1,
        topology_key: HOSTNAME_TOPOLOGY_KEY.to_owned(),
        when_unsatisfiable: "ScheduleAnyway".to_owned(),
        label_selector: Some(LabelSelector {
            match_labels: Some(inputs.names.selector(component)),
            ..Default::default()
        }),
        match_label_keys: Some(vec![POD_TEMPLATE_HASH_LABEL.to_owned()]),
        ..Default::default()
    }]
}

/// The node label every kubelet sets to its node's name.
const HOSTNAME_TOPOLOGY_KEY: &str = "kubernetes.io/hostname";
/// The label a Deployment gives each revision's pods.
const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// One child object.
// A reconcile holds about a dozen, once: their sizes cost nothing worth a box each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Child {
    ConfigMap(ConfigMap),
    Secret(Secret),
    StatefulSet(StatefulSet),
    Service(Service),
    Deployment(Deployment),
    PodDisruptionBudget(PodDisruptionBudget),
    NetworkPolicy(NetworkPolicy),
    Ingress(Ingress),
    CronJob(CronJob),
}

/// Evaluates `$body` for whichever kind `$child` is, with `$object` bound to its object (of
/// its own type) and, in the second form, `$wrap` to the variant's constructor. The one
/// place besides the enum that lists every kind, so code generic over the object's type
/// (reconcile's apply) is written once.
macro_rules! with_child {
    ($child:expr, |$object:ident| $body:expr) => {
        $crate::children::with_child!($child, |$object, _wrap| $body)
    };
    ($child:expr, |$object:ident, $wrap:ident| $body:expr) => {
        match $child {
            $crate::children::Child::ConfigMap($object) => {
                let $wrap = $crate::children::Child::ConfigMap;
                $body
            }
            $crate::children::Child::Secret($object) => {
                let $wrap = $crate::children::Child::Secret;
                $body
            }
            $crate::children::Child::StatefulSet($object) => {
                let $wrap = $crate::children::Child::StatefulSet;
                $body
            }
            $crate::children::Child::Service($object) => {
                let $wrap = $crate::children::Child::Service;
                $body
            }
            $crate::children::Child::Deployment($object) => {
                let $wrap = $crate::children::Child::Deployment;
                $body
            }
            $crate::children::Child::PodDisruptionBudget($object) => {
                let $wrap = $crate::children::Child::PodDisruptionBudget;
                $body
            }
            $crate::children::Child::NetworkPolicy($object) => {
                let $wrap = $crate::children::Child::NetworkPolicy;
                $body
            }
            $crate::children::Child::Ingress($object) => {
                let $wrap = $crate::children::Child::Ingress;
                $body
            }
            $crate::children::Child::CronJob($object) => {
                let $wrap = $crate::children::Child::CronJob;
                $body
            }
        }
    };
}
pub(crate) use with_child;

/// The kinds of child that may have to be removed, to name objects that must not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildKind {
    Secret,
    PodDisruptionBudget,
    Ingress,
    NetworkPolicy,
    CronJob,
}

impl ChildKind {
    /// The Kubernetes kind, as the API spells it.
    pub fn name(self) -> &'static str {
        match self {
            ChildKind::Secret => kind_of::<Secret>(),
            ChildKind::PodDisruptionBudget => kind_of::<PodDisruptionBudget>(),
            ChildKind::Ingress => kind_of::<Ingress>(),
            ChildKind::NetworkPolicy => kind_of::<NetworkPolicy>(),
            ChildKind::CronJob => kind_of::<CronJob>(),
        }
    }
}

/// The Kubernetes kind of `K`, as the API spells it.
pub fn kind_of<K: k8s_openapi::Resource>() -> &'static str {
    K::KIND
}

impl Child {
    fn meta(&self) -> &ObjectMeta {
        with_child!(self, |object| object.meta())
    }

    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    /// The Kubernetes kind, as the API spells it.
    pub fn kind(&self) -> &'static str {
        fn of<K: k8s_openapi::Resource>(_: &K) -> &'static str {
            kind_of::<K>()
        }
        with_child!(self, |object| of(object))
    }

    /// The object as the API server would receive it (`apiVersion` and `kind` included).
    pub fn to_json(&self) -> serde_json::Value {
        with_child!(self, |object| serde_json::to_value(object)
            .expect("Kubernetes objects are JSON"))
    }
}

/// The desired state of a canvas's children.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// Objects to create or update, in the order to apply them (config before its users).
    pub apply: Vec<Child>,
    /// Objects this canvas may once have had and must not have now.
    pub absent: Vec<(ChildKind, String)>,
}

/// Computes the desired children. Pure: same inputs, same output.
pub fn desired(inputs: &Inputs) -> Desired {
    let mut apply = vec![Child::ConfigMap(config::config_map(inputs))];
    let mut absent = Vec::new();
    match config::redis_secret(inputs) {
        Some(secret) => apply.push(Child::Secret(secret)),
        None => absent.push((ChildKind::Secret, inputs.names.redis_secret())),
    }
    apply.push(Child::Secret(config::internal_secret(inputs)));
    apply.push(Child::Secret(config::moderator_secret(inputs)));
    // Before the pods they guard: no canvas pod is ever open, not even on creation.
    apply.push(Child::NetworkPolicy(network::redis(inputs)));
    for component in workloads::STATELESS {
        match network::stateless(inputs, component) {
            Some(policy) => apply.push(Child::NetworkPolicy(policy)),
            None => absent.push((ChildKind::NetworkPolicy, inputs.names.component(component))),
        }
    }
    for component in workloads::STATELESS {
        let Some((deployment, service, budget)) = workloads::objects(inputs, component) else {
            continue;
        };
        apply.push(Child::Service(service));
        apply.push(Child::Deployment(deployment));
        match budget {
            Some(budget) => apply.push(Child::PodDisruptionBudget(budget)),
            None => absent.push((
                ChildKind::PodDisruptionBudget,
                inputs.names.component(component),
            )),
        }
    }
    // Redis after the stateless components: an upgrade that changes both rolls Redis last,
    // once the pods that were using it have moved on.
    apply.push(Child::Service(redis::service(inputs)));
    apply.push(Child::StatefulSet(redis::stateful_set(inputs)));
    match ingress::ingress(inputs) {
        Some(ingress) => apply.push(Child::Ingress(ingress)),
        None => absent.push((ChildKind::Ingress, inputs.names.ingress())),
    }
    // After Redis, which it reads, and its NetworkPolicy, which admits its pods; after
    // their own, which admits nothing.
    match network::backup(inputs) {
        Some(policy) => apply.push(Child::NetworkPolicy(policy)),
        None => absent.push((ChildKind::NetworkPolicy, inputs.names.backup())),
    }
    match backup::cron_job(inputs) {
        Some(cron_job) => apply.push(Child::CronJob(cron_job)),
        None => absent.push((ChildKind::CronJob, inputs.names.backup())),
    }
    Desired { apply, absent }
}

/// Desired replicas of each component.
pub fn desired_replicas(canvas: &PixelCanvas, component: Component) -> i32 {
    match component {
        Component::Redis => 1,
        Component::Api => canvas.spec.api.replicas,
        Component::Gateway => canvas.spec.gateway.replicas,
        Component::Frontend => canvas.spec.frontend.replicas,
    }
}

#[cfg(test)]
mod tests;
