//! Redis: a one-replica StatefulSet with its append-only file on a PVC and a headless
//! Service (its NetworkPolicy is in `network`).

use k8s_openapi::{
    api::{
        apps::v1::{StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec},
        core::v1::{
            Container, ContainerPort, ExecAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
            Probe, ResourceRequirements, Service, ServicePort, ServiceSpec, TCPSocketAction,
            VolumeMount, VolumeResourceRequirements,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use pixel_common::ports;

use super::{Inputs, naming::Component, pod_template, security, workloads};
use crate::api::AppendFsync;

/// Redis's data volume (and volumeClaimTemplate) name.
pub const DATA_VOLUME: &str = "data";
/// Where the password reaches the Redis container.
const PASSWORD_ENV: &str = "REDIS_PASSWORD";
/// Where `redis-cli` (the readiness probe) reads the password: never on a command line,
/// which every process on the node can read.
pub(super) const CLI_PASSWORD_ENV: &str = "REDISCLI_AUTH";
/// Commands no client of the canvas needs and an attacker would love.
const DISABLED_COMMANDS: [&str; 4] = ["FLUSHALL", "FLUSHDB", "CONFIG", "DEBUG"];

/// What Redis holds per placed pixel, with room to spare: a fully placed 4096² canvas
/// (16,777,216 `canvas:placed` records, anonymous players) used 1.89 GiB (`used_memory`),
/// about 121 bytes per pixel.
const BYTES_PER_PIXEL: u64 = 128;
/// Everything else: the history (100,000 entries took 7.8 MB), players' cooldown, undo and
/// rate keys, Redis itself.
const BASE_BYTES: u64 = 64 << 20;
/// The least Redis requests and may use, whatever the canvas's size.
const MIN_REQUEST_BYTES: u64 = 128 << 20;
const MIN_LIMIT_BYTES: u64 = 512 << 20;

/// The memory a fully placed canvas of this size needs.
pub fn dataset_bytes(width: i32, height: i32) -> u64 {
    let area = u64::from(width.unsigned_abs()) * u64::from(height.unsigned_abs());
    BASE_BYTES + area * BYTES_PER_PIXEL
}

/// Requests and limit of memory when the spec sets no resources: the full dataset, and
/// twice it as the limit, since an append-only-file rewrite forks and every page written
/// meanwhile is copied.
fn default_memory(inputs: &Inputs) -> (String, String) {
    let canvas = &inputs.canvas.spec.canvas;
    let dataset = dataset_bytes(canvas.width, canvas.height);
    (
        mebibytes(dataset.max(MIN_REQUEST_BYTES)),
        mebibytes((2 * dataset).max(MIN_LIMIT_BYTES)),
    )
}

/// `bytes` as a quantity in whole MiB, rounded up.
fn mebibytes(bytes: u64) -> String {
    format!("{}Mi", bytes.div_ceil(1 << 20))
}

/// Redis's `maxmemory`: half the container's memory limit (the other half is for the pages
/// a rewrite's fork copies), so that Redis refuses writes (placements fail, the canvas
/// stays) instead of the kernel killing it (the last second of placements lost). None
/// without a limit.
fn maxmemory(resources: &ResourceRequirements) -> Option<u64> {
    let limit = resources.limits.as_ref()?.get("memory")?;
    let bytes = kube_quantity::ParsedQuantity::try_from(limit.clone())
        .ok()?
        .to_bytes_u64()?;
    Some(bytes / 2)
}

/// The Redis container's resources: the spec's, else sized for the canvas.
pub(super) fn resources(inputs: &Inputs) -> ResourceRequirements {
    let (memory, memory_limit) = default_memory(inputs);
    security::resources(
        inputs.canvas.spec.redis.resources.as_ref(),
        ("100m", &memory, &memory_limit),
    )
}

fn appendfsync(policy: AppendFsync) -> &'static str {
    match policy {
        AppendFsync::Always => "always",
        AppendFsync::EverySecond => "everysec",
        AppendFsync::Never => "no",
    }
}

fn args(inputs: &Inputs, resources: &ResourceRequirements) -> Vec<String> {
    let mut args: Vec<String> = [
        "--port",
        &ports::REDIS.to_string(),
        "--dir",
        "/data",
        "--appendonly",
        "yes",
        "--appendfsync",
        appendfsync(inputs.canvas.spec.redis.append_fsync),
        // AOF only: RDB snapshots would fork a copy of the dataset for no extra safety.
        "--save",
        "",
        // Kubernetes substitutes $(VAR) from the container's environment.
        "--requirepass",
        &format!("$({PASSWORD_ENV})"),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for command in DISABLED_COMMANDS {
        args.extend([
            "--rename-command".to_owned(),
            command.to_owned(),
            String::new(),
        ]);
    }
    if let Some(bytes) = maxmemory(resources) {
        args.extend([
            "--maxmemory".to_owned(),
            bytes.to_string(),
            // Never drop a key: a full Redis refuses writes instead.
            "--maxmemory-policy".to_owned(),
            "noeviction".to_owned(),
        ]);
    }
    args
}

pub fn stateful_set(inputs: &Inputs) -> StatefulSet {
    let names = &inputs.names;
    let redis = &inputs.canvas.spec.redis;
    let (tmp_volume, tmp_mount) = security::tmp_volume();
    let resources = resources(inputs);
    let data = VolumeMount {
        name: DATA_VOLUME.to_owned(),
        mount_path: "/data".to_owned(),
        ..Default::default()
    };
    let ping = Probe {
        exec: Some(ExecAction {
            command: Some(
                ["sh", "-c", "redis-cli ping | grep -q PONG"]
                    .map(str::to_owned)
                    .to_vec(),
            ),
        }),
        period_seconds: Some(5),
        timeout_seconds: Some(2),
        failure_threshold: Some(2),
        ..Default::default()
    };
    let container = Container {
        name: "redis".to_owned(),
        image: Some(inputs.redis_image().to_owned()),
        image_pull_policy: Some(inputs.redis_pull_policy().to_owned()),
        command: Some(vec!["redis-server".to_owned()]),
        args: Some(args(inputs, &resources)),
        ports: Some(vec![ContainerPort {
            name: Some("redis".to_owned()),
            container_port: i32::from(ports::REDIS),
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        }]),
        env: Some(vec![
            workloads::password_env(inputs, PASSWORD_ENV),
            workloads::password_env(inputs, CLI_PASSWORD_ENV),
        ]),
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("redis".to_owned()),
                host: None,
            }),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        readiness_probe: Some(ping),
        resources: Some(resources),
        security_context: Some(security::container_security_context()),
        volume_mounts: Some(vec![data.clone(), tmp_mount]),
        ..Default::default()
    };
    let when_deleted = if redis.storage.retain_on_delete {
        "Retain"
    } else {
        "Delete"
    };
    let mut template = pod_template(inputs, Component::Redis, container, tmp_volume);
    if let (Some(pod), Some(restore)) = (
        template.spec.as_mut(),
        super::backup::restore_container(inputs, &data),
    ) {
        pod.init_containers = Some(vec![restore]);
    }
    StatefulSet {
        metadata: inputs.metadata(names.component(Component::Redis), Some(Component::Redis)),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(names.component(Component::Redis)),
            selector: LabelSelector {
                match_labels: Some(names.selector(Component::Redis)),
                ..Default::default()
            },
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(when_deleted.to_owned()),
                    when_scaled: Some("Retain".to_owned()),
                },
            ),
            template,
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(DATA_VOLUME.to_owned()),
                    labels: Some(inputs.pod_labels(Component::Redis)),
                    ..Default::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
                    storage_class_name: redis.storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some([("storage".to_owned(), redis.storage.size.clone())].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The headless Service giving the Redis pod its stable DNS name.
pub fn service(inputs: &Inputs) -> Service {
    Service {
        metadata: inputs.metadata(
            inputs.names.component(Component::Redis),
            Some(Component::Redis),
        ),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            selector: Some(inputs.names.selector(Component::Redis)),
            ports: Some(vec![ServicePort {
                name: Some("redis".to_owned()),
                port: i32::from(ports::REDIS),
                target_port: Some(IntOrString::String("redis".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Gives `desired` (when it has a restore init container) the init containers of the
/// `live` StatefulSet: a restore fills the volume once, when the StatefulSet is created, so
/// a later change to what it would run (a new tag, another store) must not change Redis's
/// pod template and restart Redis for a step that has nothing left to do. Removing
/// `spec.restore` removes the init container.
pub fn keep_restore_container(desired: &mut StatefulSet, live: &StatefulSet) {
    let live = live
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .and_then(|pod| pod.init_containers.clone());
    let desired = desired
        .spec
        .as_mut()
        .and_then(|spec| spec.template.spec.as_mut());
    if let (Some(pod), Some(live)) = (desired, live)
        && pod.init_containers.is_some()
    {
        pod.init_containers = Some(live);
    }
}

/// Gives `desired` the volumeClaimTemplates of the `live` StatefulSet. They are immutable
/// once created: applying others (a new version label, a larger size) is refused and would
/// hold up the whole StatefulSet. A larger `spec.redis.storage.size` reaches the claim
/// itself instead.
pub fn keep_claim_templates(desired: &mut StatefulSet, live: &StatefulSet) {
    let live = live
        .spec
        .as_ref()
        .and_then(|spec| spec.volume_claim_templates.clone());
    if let (Some(spec), Some(live)) = (desired.spec.as_mut(), live) {
        spec.volume_claim_templates = Some(live);
    }
}
