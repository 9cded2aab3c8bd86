//! The `PixelCanvas` API (`pixel-playground.dev/v1alpha1`): the spec users write and the
//! status the operator reports. The CRD in `crds/` is generated from these types.
//!
//! Validation lives in the schema so the API server enforces it: bounds and patterns through
//! `schemars` attributes, cross-field and transition rules as CEL (`x-kubernetes-validations`).
//! Every field has a default, so a `PixelCanvas` with only a name is complete. Two defaults
//! are the operator's, not the schema's: `image.repository` and `redis.image` stay unset in
//! the stored object and the operator fills them in (`--image-repository`,
//! `--default-redis-image`), so one operator can point every canvas at another registry.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint},
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{Condition, Time},
    },
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An RFC 1123 label, such as a namespace name.
const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A DNS subdomain name (RFC 1123), as Kubernetes requires of object and host names.
const DNS_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// An image repository without tag (`pixel-playground`, `registry.local:5000/team/pixel`):
/// what `spec.image.repository` and the operator's `--image-repository` accept.
pub const IMAGE_REPOSITORY_PATTERN: &str = r"^[a-z0-9]+([._/:-][a-z0-9]+)*$";

/// The longest image reference (`spec.image.repository`, `spec.redis.image`).
pub const IMAGE_MAX_LENGTH: usize = 255;

/// A Kubernetes resource quantity (`500m`, `1.5`, `256Mi`, `1e3`).
const QUANTITY: &str = r"^[+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// The r/place 2017 palette: 16 colours.
pub const DEFAULT_PALETTE: [&str; 16] = [
    "#FFFFFF", "#E4E4E4", "#888888", "#222222", "#FFA7D1", "#E50000", "#E59500", "#A06A42",
    "#E5D900", "#94E044", "#02BE01", "#00D3DD", "#0083C7", "#0000EA", "#CF6EE4", "#820080",
];

/// A collaborative pixel canvas: Redis for state, canvas-api, gateway and frontend
/// Deployments, and an Ingress.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pixel-playground.dev",
    version = "v1alpha1",
    kind = "PixelCanvas",
    plural = "pixelcanvases",
    shortname = "pxc",
    shortname = "canvas",
    category = "pixel-playground",
    namespaced,
    status = "PixelCanvasStatus",
    derive = "PartialEq",
    validation = Rule::new("self.metadata.name.size() <= 40").message("metadata.name must be at most 40 characters: it prefixes the names of the canvas's Services and pods"),
    doc = "A collaborative pixel canvas: Redis for state, canvas-api, gateway and frontend Deployments, and an Ingress.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "API", type_ = "string", json_path = ".status.components.api.summary"),
    printcolumn(name = "Gateway", type_ = "string", json_path = ".status.components.gateway.summary"),
    printcolumn(name = "Frontend", type_ = "string", json_path = ".status.components.frontend.summary"),
    printcolumn(name = "Redis", type_ = "string", json_path = ".status.components.redis.summary"),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.auth) || has(self.auth.redirectUrl) || (has(self.ingress.host) && self.ingress.enabled)").message("auth needs ingress.host (or auth.redirectUrl): the provider sends people back to <host>/auth/callback").field_path(".auth"))]
// The operator's own sizing (children::redis): a full canvas takes 64 MiB plus 128 bytes
// per pixel (about 121 measured on a fully placed 4096² canvas), and maxmemory is half the
// limit, so the limit must be twice that. In floating point: the API server's cost
// estimate refuses a quantity made from an integer's string.
#[x_kube(validation = Rule::new("!has(self.redis) || !has(self.redis.resources) || !has(self.redis.resources.limits) || !('memory' in self.redis.resources.limits) || !isQuantity(string(self.redis.resources.limits['memory'])) || quantity(string(self.redis.resources.limits['memory'])).asApproximateFloat() >= 2.0 * (67108864.0 + 128.0 * double(self.canvas.width) * double(self.canvas.height))").message("redis.resources.limits.memory cannot hold this canvas once every pixel is placed: Redis may use half its limit, and a full canvas takes 64Mi plus 128 bytes per pixel, so the limit must be at least twice that (373Mi for 1000x1000, 4224Mi for 4096x4096)"))]
#[x_kube(validation = Rule::new("!has(self.restore) || has(self.restore.store) || has(self.backup)").message("restore needs restore.store (or backup.store): where to read the backup from").field_path(".restore"))]
#[x_kube(validation = Rule::new("!has(self.restore) || (has(oldSelf.restore) && self.restore == oldSelf.restore)").message("restore is set at creation only (it fills a new canvas's empty volume once); it may be removed, not added or changed").field_path(".restore"))]
pub struct PixelCanvasSpec {
    /// The canvas itself: size, palette and how often one client may place a pixel.
    #[serde(default)]
    pub canvas: CanvasSpec,

    /// The container image holding all Pixel Playground binaries.
    #[serde(default)]
    pub image: ImageSpec,

    /// canvas-api, the REST API in front of Redis.
    #[serde(default)]
    pub api: ComponentSpec,

    /// The WebSocket gateway that fans pixel updates out to browsers.
    #[serde(default)]
    pub gateway: GatewaySpec,

    /// The frontend serving the canvas page.
    #[serde(default)]
    pub frontend: ComponentSpec,

    /// Redis, which stores the canvas.
    #[serde(default)]
    pub redis: RedisSpec,

    /// How the canvas is exposed outside the cluster.
    #[serde(default)]
    pub ingress: IngressSpec,

    /// Who may reach canvas-api besides the canvas's gateway.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,

    /// Sign-in with OpenID Connect: only signed-in people place. Unset: every browser gets an anonymous identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,

    /// Scheduled backups of Redis to S3-compatible object storage. Unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,

    /// Start the canvas from a backup: read once, into a Redis volume that holds no data yet. Set when the canvas is created; it may be removed after (which restarts Redis once, without its restore step), not added or changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreSpec>,

    /// When true, the operator stops changing the canvas's children (status stays current).
    #[serde(default)]
    pub paused: bool,
}

impl PixelCanvasSpec {
    /// The user's Secrets this canvas reads (its Redis password, its sign-in client secret).
    pub fn referenced_secrets(&self) -> impl Iterator<Item = &str> {
        let auth = self
            .auth
            .as_ref()
            .and_then(|auth| auth.client_secret_ref.as_ref());
        self.redis
            .password_secret_ref
            .iter()
            .chain(auth)
            .map(|reference| reference.name.as_str())
    }
}

/// Size, palette and pacing of the canvas.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CanvasSpec {
    /// Width in pixels (1 to 4096). Fixed at creation: pixels are stored by position.
    #[serde(default = "default_side")]
    #[schemars(range(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("canvas.width is immutable: create a new PixelCanvas for another size"))]
    pub width: i32,

    /// Height in pixels (1 to 4096). Fixed at creation: pixels are stored by position.
    #[serde(default = "default_side")]
    #[schemars(range(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("canvas.height is immutable: create a new PixelCanvas for another size"))]
    pub height: i32,

    /// Colours clients may place, as `#RRGGBB`, 2 to 32 distinct entries. Pixels refer to
    /// colours by position, so entries may be changed or appended but never removed.
    #[serde(default = "default_palette")]
    #[schemars(
        length(min = 2, max = 32),
        inner(length(max = 7), regex(pattern = r"^#[0-9A-Fa-f]{6}$"))
    )]
    #[x_kube(
        merge_strategy = ListMerge::Atomic,
        validation = Rule::new("self.all(c, self.exists_one(d, d.lowerAscii() == c.lowerAscii()))").message("canvas.palette entries must be distinct colours"),
        validation = Rule::new("size(self) >= size(oldSelf)").message("canvas.palette may gain colours but never lose them: existing pixels refer to colours by position")
    )]
    pub palette: Vec<String>,

    /// Seconds a client must wait between two placements (0 to 86400; 0 disables the cooldown).
    #[serde(default)]
    #[schemars(range(min = 0, max = 86400))]
    pub cooldown_seconds: i32,

    /// Seconds a person may undo their last placement, which gets back the colour it
    /// replaced and refunds the cooldown (0 to 3600; 0 disables undo).
    #[serde(default = "default_undo_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub undo_seconds: i32,

    /// Freezes the canvas: placements and undos are refused (`canvas_closed`); it stays
    /// readable. Pods roll to take the change.
    #[serde(default)]
    pub read_only: bool,

    /// When the canvas takes placements; before `start` and from `end` on they are refused
    /// (`canvas_closed`), and the page counts down to the opening or says it has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
}

/// Opening hours of the canvas, as RFC 3339 instants (`2026-12-24T18:00:00Z`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.start) || !has(self.end) || timestamp(self.end) > timestamp(self.start)").message("canvas.schedule.end must come after canvas.schedule.start"))]
pub struct ScheduleSpec {
    /// Placements open at this instant. Unset: open already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Time>,

    /// Placements close at this instant. Unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Time>,
}

/// The image for every Pixel Playground container.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Image repository, without tag. Unset: the operator's `--image-repository` (by
    /// default `pixel-playground`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = IMAGE_MAX_LENGTH),
        regex(pattern = IMAGE_REPOSITORY_PATTERN)
    )]
    pub repository: Option<String>,

    /// Image tag. Unset: the operator's own version, so upgrading the operator moves the
    /// canvas to the new build. Set it to pin the canvas to one build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    )]
    pub tag: Option<String>,

    /// When the kubelet pulls the image: Always, IfNotPresent or Never.
    #[serde(default)]
    pub pull_policy: PullPolicy,
}

/// Image pull policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

/// Replicas and resources of a stateless component.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    /// Number of pods (0 to 50).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 50))]
    pub replicas: i32,

    /// CPU and memory requests and limits of the component's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "resources_schema")]
    pub resources: Option<ResourceRequirements>,

    /// Scheduling and annotations of the component's pods.
    #[serde(default, skip_serializing_if = "PodOverrides::is_empty")]
    pub pod: PodOverrides,
}

/// Replicas, resources and connection limit of the gateway.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Number of pods (0 to 50).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 50))]
    pub replicas: i32,

    /// CPU and memory requests and limits of the gateway container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "resources_schema")]
    pub resources: Option<ResourceRequirements>,

    /// WebSocket connections one gateway pod accepts before refusing more (1 to 1000000).
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_connections: i32,

    /// Addresses (CIDRs) of the proxies in front of the gateway whose `X-Forwarded-For` it believes, walking it from the right through these hops only: the Ingress controller's pods or nodes, and a load balancer in front of them that adds the header. The client address is what per-address limits (connections, new identities) count. Unset: `networkPolicy.ingressControllerCIDRs`. A proxy in the pod (loopback) is always believed, and no private range is by default: a peer that is no proxy could write any address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "trusted_proxies_schema")]
    pub trusted_proxies: Option<Vec<String>>,

    /// Scheduling and annotations of the component's pods.
    #[serde(default, skip_serializing_if = "PodOverrides::is_empty")]
    pub pod: PodOverrides,
}

/// Where a component's pods run, and what they carry for other tools. Every field is the
/// pod field of the same name; the API server checks them when it receives the workload.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Annotations added to the pods (a service mesh's or a scraper's, say). The operator's
    /// own prefix `pixel-playground.dev/` is refused. A change rolls the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "pod_annotations_schema")]
    pub annotations: BTreeMap<String, String>,

    /// Node labels the pods require.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "node_selector_schema")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints the pods tolerate (at most 32).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,

    /// Node affinity and pod (anti-)affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// How replicas spread over the cluster (at most 8 constraints). Unset: one per node
    /// where the scheduler can (by `kubernetes.io/hostname`, `ScheduleAnyway`, counting the
    /// current revision's pods); an empty list turns spreading off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,

    /// The PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub priority_class_name: Option<String>,
}

impl PodOverrides {
    fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// Redis, the canvas's store.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// The persistent volume holding Redis's append-only file.
    #[serde(default)]
    pub storage: StorageSpec,

    /// How often Redis fsyncs its append-only file (Redis's `appendfsync`): `Always` (no
    /// acknowledged placement is lost), `EverySecond` (at most about one second lost), or
    /// `Never` (Redis leaves flushing to the operating system, typically within 30 seconds).
    #[serde(default)]
    pub append_fsync: AppendFsync,

    /// The Redis server image. Unset: the operator's `--default-redis-image` (by default
    /// `redis:7.2-alpine`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = IMAGE_MAX_LENGTH))]
    pub image: Option<String>,

    /// When the kubelet pulls the Redis image: Always, IfNotPresent or Never. Separate from
    /// `spec.image.pullPolicy`, which is for the Pixel Playground image only.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,

    /// CPU and memory requests and limits of the Redis container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "resources_schema")]
    pub resources: Option<ResourceRequirements>,

    /// An existing Secret holding the Redis password. When unset, the operator generates one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,

    /// Scheduling and annotations of the Redis pod.
    #[serde(default, skip_serializing_if = "PodOverrides::is_empty")]
    pub pod: PodOverrides,
}

/// Redis's persistent volume.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)").message("redis.storage.storageClassName is immutable").field_path(".storageClassName"))]
pub struct StorageSpec {
    /// Volume size, as a quantity (for example `1Gi`), from 64Mi to 1Ti. May grow, never shrink: the operator raises the volume's claim when its StorageClass allows expansion, and the StorageReady condition says when it does not.
    #[serde(default = "default_storage_size")]
    #[schemars(schema_with = "quantity_schema")]
    #[x_kube(
        validation = Rule::new("isQuantity(self) && quantity(self).compareTo(quantity('64Mi')) >= 0 && quantity(self).compareTo(quantity('1Ti')) <= 0").message("redis.storage.size must be a quantity from 64Mi to 1Ti, for example 1Gi"),
        validation = Rule::new("!isQuantity(oldSelf) || !isQuantity(self) || quantity(self).compareTo(quantity(oldSelf)) >= 0").message("redis.storage.size may grow but never shrink")
    )]
    pub size: Quantity,

    /// StorageClass of the volume; unset uses the cluster default. Fixed at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub storage_class_name: Option<String>,

    /// Keep the volume (and so the canvas) when the PixelCanvas is deleted.
    #[serde(default = "default_true")]
    pub retain_on_delete: bool,
}

/// Redis `appendfsync` policy. (Redis spells them `always`, `everysec` and `no`; the API uses
/// Kubernetes-style names, which YAML cannot mistake for booleans.)
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AppendFsync {
    Always,
    #[default]
    EverySecond,
    Never,
}

/// Scheduled backups: a Job the operator runs takes an RDB file from Redis (a fork on
/// Redis's side; placements go on), checks that it loads, and uploads it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// When to back up: a cron schedule (five fields, or a macro such as `@hourly`), in the time zone of `timeZone`.
    #[schemars(length(min = 1, max = 100), regex(pattern = CRON_SCHEDULE))]
    pub schedule: String,

    /// The IANA time zone of the schedule (for example `Europe/Paris`). Unset: the controller manager's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$")
    )]
    pub time_zone: Option<String>,

    /// How many backups to keep: after each upload the oldest beyond this count are deleted.
    #[serde(default = "default_backup_retention")]
    #[schemars(range(min = 1, max = 1000))]
    pub retention: i32,

    /// Where the backups go.
    pub store: ObjectStoreSpec,

    /// Take no backups for now (the schedule is kept).
    #[serde(default)]
    pub suspend: bool,
}

fn default_backup_retention() -> i32 {
    7
}

/// A cron schedule: five fields, or one of the macros CronJobs accept.
const CRON_SCHEDULE: &str = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|[0-9*/,?A-Za-z-]+( +[0-9*/,?A-Za-z-]+){4})$";

/// A bucket in S3-compatible object storage, and the prefix of this canvas's objects.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStoreSpec {
    /// The endpoint, `https://host[:port]` (or `http://` on a trusted network), without credentials.
    #[schemars(
        length(min = 8, max = 2048),
        regex(pattern = r"^https?://[^\s/?#@]+/?$")
    )]
    pub endpoint: String,

    /// The bucket (it must exist).
    #[schemars(
        length(min = 3, max = 63),
        regex(pattern = r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
    )]
    pub bucket: String,

    /// The prefix of the canvas's objects: empty, or path segments of letters, digits and `!_.'()-` (not starting with `.`), each ending with `/`. Unset: `<namespace>/<name>/` of this canvas (so a canvas restoring another's backups names that canvas's prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 512),
        regex(pattern = r"^([A-Za-z0-9!_'()-][A-Za-z0-9!_.'()-]*/)*$")
    )]
    pub prefix: Option<String>,

    /// The region requests are signed for.
    #[serde(default = "default_region")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[a-z0-9-]+$"))]
    pub region: String,

    /// A Secret in the canvas's namespace holding `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub credentials_secret_name: String,
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

/// Where a new canvas's data comes from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    /// `latest` (the newest backup under the store's prefix) or a backup's object key, as `status.lastBackup.object` names it.
    #[serde(default = "default_restore_from")]
    #[schemars(length(min = 1, max = 1024))]
    pub from: String,

    /// Where the backup is. Unset: `backup.store`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<ObjectStoreSpec>,
}

fn default_restore_from() -> String {
    pixel_common::backup::RESTORE_LATEST.to_owned()
}

/// A key of a Secret in the canvas's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = DNS_SUBDOMAIN)
    )]
    pub name: String,

    /// Key within the Secret (unset: `password`).
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// Exposure through an Ingress: `/` to the frontend, `/api` to canvas-api, `/ws` to the gateway.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.tlsSecretName) || has(self.host)").message("ingress.tlsSecretName needs ingress.host: a certificate is for a host name").field_path(".tlsSecretName"))]
pub struct IngressSpec {
    /// Create the Ingress.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Host name to route (a DNS name); unset routes every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = DNS_SUBDOMAIN)
    )]
    pub host: Option<String>,

    /// IngressClass to use; unset uses the cluster default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub class_name: Option<String>,

    /// Secret holding the TLS certificate for `host`; unset serves plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = DNS_SUBDOMAIN)
    )]
    pub tls_secret_name: Option<String>,

    /// Annotations for the Ingress, as its controller or a certificate issuer reads them
    /// (for example `cert-manager.io/cluster-issuer`, or a WebSocket read timeout). At most
    /// 32; the operator's own `pixel-playground.dev/` prefix is refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "annotations_schema")]
    pub annotations: BTreeMap<String, String>,
}

/// Sign-in with an OpenID Connect provider (authorization code with PKCE). Identity is the issuer and the person's subject there; the page shows the provider's name for them, never their email.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// The provider's issuer URL, `https://` (its discovery document is at `<issuerUrl>/.well-known/openid-configuration`); plain `http://` only for `localhost`.
    #[schemars(
        length(min = 8, max = 2048),
        regex(pattern = r"^(https://[^\s]+|http://localhost([:/][^\s]*)?)$")
    )]
    pub issuer_url: String,

    /// The client ID registered with the provider.
    #[schemars(length(min = 1, max = 255))]
    pub client_id: String,

    /// The Secret key holding the client secret; unset for a public client (PKCE alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<SecretKeyRef>,

    /// The callback URL registered with the provider (unset: `<scheme>://<ingress.host>/auth/callback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 8, max = 2048),
        regex(pattern = r"^https?://[^\s]+/auth/callback$")
    )]
    pub redirect_url: Option<String>,

    /// Email domains whose people may sign in (the email must be verified); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub allowed_email_domains: Vec<String>,

    /// Groups whose members may sign in (from the `groupsClaim` of the userinfo); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 255), regex(pattern = r"^[^,\s]+$"))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub allowed_groups: Vec<String>,

    /// Groups whose members moderate (ban, roll back, read the audit log) through the gateway's `/auth/moderation`, which holds the moderator token for them; empty: moderation by the token alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 255), regex(pattern = r"^[^,\s]+$"))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub moderator_groups: Vec<String>,

    /// The userinfo claim listing a person's groups (a list of strings, or one string).
    #[serde(default = "default_groups_claim")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[^,\s]+$"))]
    pub groups_claim: String,

    /// Whether signed-out visitors may open the live connection and watch (the REST reads, snapshot and pixel info, stay public either way).
    #[serde(default = "default_true")]
    pub watchers_allowed: bool,
}

/// Who may open the ports of canvas-api, the gateway and the frontend: the pods of these
/// namespaces and these addresses; canvas-api's also the canvas's gateway. Every other pod
/// is refused by the NetworkPolicies `<name>-api`, `<name>-gateway` and `<name>-frontend`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Guard canvas-api, the gateway and the frontend with their NetworkPolicies. Turn off only while an Ingress controller the lists below miss must reach them (Redis stays guarded).
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Namespaces of the Ingress controller's pods, which route `/api`, `/ws` and `/` to the canvas (unset: `ingress-nginx`, and `kube-system`, where k3s runs Traefik).
    #[serde(default = "default_ingress_controller_namespaces")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 63), regex(pattern = DNS_LABEL)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub ingress_controller_namespaces: Vec<String>,

    /// Addresses (CIDRs) an Ingress controller on the host network connects from (its nodes' addresses), admitted to canvas-api as well: a host-network pod is in no namespace a policy can name.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        rename = "ingressControllerCIDRs"
    )]
    #[schemars(schema_with = "ingress_controller_cidrs_schema")]
    pub ingress_controller_cidrs: Vec<String>,

    /// Namespaces of the metrics scrapers that read the components' `/metrics` (unset: `monitoring`, where kube-prometheus runs Prometheus).
    #[serde(default = "default_metrics_namespaces")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 63), regex(pattern = DNS_LABEL)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub metrics_namespaces: Vec<String>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        Self {
            enabled: true,
            ingress_controller_namespaces: default_ingress_controller_namespaces(),
            ingress_controller_cidrs: Vec::new(),
            metrics_namespaces: default_metrics_namespaces(),
        }
    }
}

/// What the operator observed, written only when it changes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PixelCanvasStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Progressing`, `Degraded` and `Paused`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Desired and ready replicas per component.
    #[serde(default)]
    pub components: ComponentsStatus,

    /// Where users open the canvas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// The newest backup a backup Job reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<LastBackup>,
}

/// One backup in the store.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LastBackup {
    /// When it was taken.
    pub time: Time,
    /// Its object's key in the bucket (what `restore.from` takes).
    pub object: String,
    /// The canvas version it holds.
    pub version: i64,
}

/// Replica counts of each component.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComponentsStatus {
    /// The Redis StatefulSet.
    #[serde(default)]
    pub redis: ReplicaStatus,
    /// The canvas-api Deployment.
    #[serde(default)]
    pub api: ReplicaStatus,
    /// The gateway Deployment.
    #[serde(default)]
    pub gateway: ReplicaStatus,
    /// The frontend Deployment.
    #[serde(default)]
    pub frontend: ReplicaStatus,
}

/// Desired and ready replicas of one component.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Replicas the spec asks for.
    #[serde(default)]
    pub desired: i32,
    /// Replicas that are ready and run the current pod template.
    #[serde(default)]
    pub ready: i32,
    /// `ready/desired`, for `kubectl get`.
    #[serde(default)]
    pub summary: String,
}

fn annotations_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    annotations_of("ingress.annotations")
}

fn pod_annotations_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    annotations_of("pod.annotations")
}

/// At most 32 annotations, none under the operator's prefix (its own keys would be
/// overwritten, or would overwrite the operator's).
fn annotations_of(field: &str) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 32,
        "additionalProperties": {"type": "string", "maxLength": 4096},
        "x-kubernetes-validations": [{
            "rule": "self.all(key, !key.startsWith('pixel-playground.dev/'))",
            "message": format!("{field} must not use the operator's own prefix pixel-playground.dev/"),
        }],
    })
}

fn trusted_proxies_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    cidr_list("gateway.trustedProxies")
}

fn ingress_controller_cidrs_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    cidr_list("networkPolicy.ingressControllerCIDRs")
}

/// Up to 16 distinct address ranges such as `198.51.100.0/24` or `2001:db8::/64`.
fn cidr_list(field: &str) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 16,
        "items": {
            "type": "string",
            "minLength": 4,
            "maxLength": 43,
            "pattern": r"^[0-9a-fA-F:.]+/[0-9]{1,3}$",
        },
        "x-kubernetes-list-type": "set",
        "x-kubernetes-validations": [{
            "rule": "self.all(c, isCIDR(c))",
            "message": format!("{field} entries must be CIDRs (198.51.100.0/24, 2001:db8::/64)"),
        }],
    })
}

fn node_selector_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 32,
        "additionalProperties": {"type": "string", "maxLength": 63},
    })
}

fn quantity_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "maxLength": 64,
    })
}

/// The part of a container's `resources` a canvas may set: `requests` and `limits` of
/// well-formed quantities, requests not above limits. Checked here because the API server
/// would otherwise accept the canvas and refuse only the Deployment built from it.
fn resources_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let amounts = |what: &str| {
        serde_json::json!({
            "type": "object",
            "description": format!("{what}, by resource name (cpu, memory, ...), as quantities such as 500m or 256Mi."),
            "maxProperties": 8,
            "additionalProperties": {
                "x-kubernetes-int-or-string": true,
                "pattern": QUANTITY,
                // Bounds the cost the API server estimates for the CEL rule below.
                "maxLength": 64,
            },
        })
    };
    schemars::json_schema!({
        "type": "object",
        "nullable": true,
        "properties": {
            "requests": amounts("Resources the container is guaranteed"),
            "limits": amounts("Resources the container may use at most"),
        },
        "x-kubernetes-validations": [{
            "rule": "!has(self.requests) || !has(self.limits) || self.requests.all(name, !(name in self.limits) || quantity(string(self.requests[name])).compareTo(quantity(string(self.limits[name]))) <= 0)",
            "message": "resources.requests must not exceed resources.limits for the same resource",
        }],
    })
}

fn default_side() -> i32 {
    1000
}
fn default_palette() -> Vec<String> {
    DEFAULT_PALETTE.iter().map(|c| (*c).to_owned()).collect()
}
fn default_undo_seconds() -> i32 {
    5
}
fn default_replicas() -> i32 {
    2
}
fn default_max_connections() -> i32 {
    10_000
}
fn default_storage_size() -> Quantity {
    Quantity("1Gi".to_owned())
}
fn default_password_key() -> String {
    "password".to_owned()
}
fn default_groups_claim() -> String {
    "groups".to_owned()
}
fn default_ingress_controller_namespaces() -> Vec<String> {
    vec!["ingress-nginx".to_owned(), "kube-system".to_owned()]
}
fn default_metrics_namespaces() -> Vec<String> {
    vec!["monitoring".to_owned()]
}
fn default_true() -> bool {
    true
}

macro_rules! default_from_serde {
    ($($ty:ty),*) => {$(
        impl Default for $ty {
            /// The defaults the schema declares (an empty object deserializes to them).
            fn default() -> Self {
                serde_json::from_value(serde_json::json!({})).expect("every field has a serde default")
            }
        }
    )*};
}
default_from_serde!(
    CanvasSpec,
    ImageSpec,
    ComponentSpec,
    GatewaySpec,
    RedisSpec,
    StorageSpec,
    IngressSpec
);
