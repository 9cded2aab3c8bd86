//! Backups and restores (`spec.backup`, `spec.restore`): the CronJob whose Jobs back Redis up
//! to object storage, and the init container that fills a new canvas's Redis volume from a
//! backup. Both run the `backup` binary of the Pixel Playground image; the dump step runs
//! in the Redis image (`pixel_common::backup::dump_script`).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec},
        core::v1::{
            Container, EmptyDirVolumeSource, EnvVar, PodSpec, PodTemplateSpec,
            ResourceRequirements, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};
use pixel_common::{backup, ports};

use super::{
    Inputs,
    naming::{BACKUP_COMPONENT, LABEL_COMPONENT},
    security, workloads,
};
use crate::api::ObjectStoreSpec;

/// The Secret keys of the store's credentials (`credentialsSecretName`).
pub const ACCESS_KEY_ID_KEY: &str = "AWS_ACCESS_KEY_ID";
pub const SECRET_ACCESS_KEY_KEY: &str = "AWS_SECRET_ACCESS_KEY";

/// The container whose termination message is the backup's record.
pub const UPLOAD_CONTAINER: &str = "upload";
/// The init container of the Redis pod that restores.
pub const RESTORE_CONTAINER: &str = "restore";
/// Where a Job's pod keeps the RDB file between its two containers.
const WORK_DIR: &str = "/backup";
const WORK_VOLUME: &str = "backup";
/// Where the upload writes its record: the kubelet's default termination-message path.
const TERMINATION_MESSAGE: &str = "/dev/termination-log";
/// The binary in the Pixel Playground image.
const BINARY: &str = "backup";
/// A Job's tries and its time: a backup larger than an hour's upload is misconfigured.
const BACKOFF_LIMIT: i32 = 2;
const ACTIVE_DEADLINE_SECONDS: i64 = 3600;
/// Finished Jobs kept for `kubectl get jobs` (and their pods' records for the status).
const JOBS_KEPT: i32 = 3;

/// A container's termination message: its own file, else the end of its log on failure.
const FALLBACK_TO_LOGS: &str = "FallbackToLogsOnError";
/// Local disk a container may use besides the RDB file.
const LOCAL_DISK_BESIDES: u64 = 256 << 20;

/// Raises a container's local-disk limit to hold the RDB file: the kubelet counts the pod's
/// emptyDir against its containers' limits, and the file is at most the Redis volume.
fn room_for_the_file(inputs: &Inputs, resources: &mut ResourceRequirements) {
    let volume =
        kube_quantity::ParsedQuantity::try_from(inputs.canvas.spec.redis.storage.size.clone())
            .ok()
            .and_then(|q| q.to_bytes_u64())
            .unwrap_or(1 << 30);
    let limit = (volume + LOCAL_DISK_BESIDES).div_ceil(1 << 20);
    resources
        .limits
        .get_or_insert_with(Default::default)
        .insert(
            security::EPHEMERAL_STORAGE.to_owned(),
            Quantity(format!("{limit}Mi")),
        );
}

/// The environment naming the store, its credentials and its prefix. With `optional`
/// credentials a pod starts without their Secret (the restore, which needs them only on an
/// empty volume, must not keep Redis from restarting once the Secret is gone).
fn store_env(inputs: &Inputs, store: &ObjectStoreSpec, optional: bool) -> Vec<EnvVar> {
    let prefix = store
        .prefix
        .clone()
        .unwrap_or_else(|| default_prefix(inputs));
    let credential = |name: &str, key: &str| {
        let mut env = workloads::secret_env(name, store.credentials_secret_name.clone(), key);
        if let Some(selector) = env
            .value_from
            .as_mut()
            .and_then(|source| source.secret_key_ref.as_mut())
        {
            selector.optional = Some(optional);
        }
        env
    };
    vec![
        value(ports::ENV_BACKUP_ENDPOINT, &store.endpoint),
        value(ports::ENV_BACKUP_BUCKET, &store.bucket),
        value(ports::ENV_BACKUP_PREFIX, &prefix),
        value(ports::ENV_BACKUP_REGION, &store.region),
        credential(ports::ENV_BACKUP_ACCESS_KEY_ID, ACCESS_KEY_ID_KEY),
        credential(ports::ENV_BACKUP_SECRET_ACCESS_KEY, SECRET_ACCESS_KEY_KEY),
    ]
}

/// `<namespace>/<canvas>/`: one canvas's backups apart from every other's in a bucket.
pub fn default_prefix(inputs: &Inputs) -> String {
    format!("{}/{}/", inputs.namespace, inputs.names.canvas())
}

fn value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..Default::default()
    }
}

/// What the backup pods' labels carry besides the canvas's: their component, which the
/// Redis NetworkPolicy admits and the status reads the records of.
pub fn pod_labels(inputs: &Inputs) -> BTreeMap<String, String> {
    let mut labels = inputs.labels(None);
    labels.insert(LABEL_COMPONENT.to_owned(), BACKUP_COMPONENT.to_owned());
    labels
}

/// The CronJob `<canvas>-backup`; `None` without `spec.backup`.
pub fn cron_job(inputs: &Inputs) -> Option<CronJob> {
    let spec = inputs.canvas.spec.backup.as_ref()?;
    let work = VolumeMount {
        name: WORK_VOLUME.to_owned(),
        mount_path: WORK_DIR.to_owned(),
        ..Default::default()
    };
    let file = format!("{WORK_DIR}/dump.rdb");
    let version_file = format!("{WORK_DIR}/version");
    // The check loads the whole dataset once, as Redis holds it; the file is on the pod's
    // local disk until the upload is done.
    let mut dump_resources = super::redis::resources(inputs);
    room_for_the_file(inputs, &mut dump_resources);
    let mut upload_resources = security::resources(None, ("50m", "64Mi", "256Mi"));
    room_for_the_file(inputs, &mut upload_resources);
    let dump = Container {
        name: "dump".to_owned(),
        image: Some(inputs.redis_image().to_owned()),
        image_pull_policy: Some(inputs.redis_pull_policy().to_owned()),
        command: Some(vec![
            "sh".to_owned(),
            "-c".to_owned(),
            backup::dump_script(),
        ]),
        env: Some(vec![
            value(ports::ENV_BACKUP_FILE, &file),
            value(ports::ENV_BACKUP_VERSION_FILE, &version_file),
            value(
                ports::ENV_BACKUP_REDIS_HOST,
                &inputs.names.component(super::Component::Redis),
            ),
            value(ports::ENV_BACKUP_REDIS_PORT, &ports::REDIS.to_string()),
            workloads::password_env(inputs, super::redis::CLI_PASSWORD_ENV),
        ]),
        resources: Some(dump_resources),
        security_context: Some(security::container_security_context()),
        termination_message_policy: Some(FALLBACK_TO_LOGS.to_owned()),
        volume_mounts: Some(vec![work.clone()]),
        ..Default::default()
    };
    let mut env = store_env(inputs, &spec.store, false);
    env.extend([
        value(ports::ENV_BACKUP_FILE, &file),
        value(ports::ENV_BACKUP_VERSION_FILE, &version_file),
        value(ports::ENV_BACKUP_RETENTION, &spec.retention.to_string()),
        value(ports::ENV_BACKUP_RESULT_FILE, TERMINATION_MESSAGE),
        value(ports::ENV_LOG_FORMAT, "json"),
    ]);
    let upload = Container {
        name: UPLOAD_CONTAINER.to_owned(),
        image: Some(inputs.image().to_owned()),
        image_pull_policy: Some(inputs.pull_policy().to_owned()),
        command: Some(vec![BINARY.to_owned(), "upload".to_owned()]),
        env: Some(env),
        resources: Some(upload_resources),
        security_context: Some(security::container_security_context()),
        termination_message_path: Some(TERMINATION_MESSAGE.to_owned()),
        // The record on success; the log's end when it fails, for `kubectl describe`.
        termination_message_policy: Some(FALLBACK_TO_LOGS.to_owned()),
        volume_mounts: Some(vec![work]),
        ..Default::default()
    };
    let redis_pod = &inputs.canvas.spec.redis.pod;
    let pod = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels(inputs)),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            init_containers: Some(vec![dump]),
            containers: vec![upload],
            restart_policy: Some("Never".to_owned()),
            volumes: Some(vec![Volume {
                name: WORK_VOLUME.to_owned(),
                empty_dir: Some(EmptyDirVolumeSource {
                    // Room for the RDB file, which is smaller than the volume it comes from.
                    size_limit: Some(inputs.canvas.spec.redis.storage.size.clone()),
                    medium: None,
                }),
                ..Default::default()
            }]),
            security_context: Some(security::pod_security_context()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            // Where Redis may run, so may its backups (dedicated or tainted nodes).
            node_selector: (!redis_pod.node_selector.is_empty())
                .then(|| redis_pod.node_selector.clone()),
            tolerations: (!redis_pod.tolerations.is_empty()).then(|| redis_pod.tolerations.clone()),
            priority_class_name: redis_pod.priority_class_name.clone(),
            ..Default::default()
        }),
    };
    Some(CronJob {
        metadata: inputs.metadata(inputs.names.backup(), None),
        spec: CronJobSpec {
            schedule: spec.schedule.clone(),
            time_zone: spec.time_zone.clone(),
            suspend: Some(spec.suspend),
            concurrency_policy: Some("Forbid".to_owned()),
            starting_deadline_seconds: Some(300),
            successful_jobs_history_limit: Some(JOBS_KEPT),
            failed_jobs_history_limit: Some(JOBS_KEPT),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels(inputs)),
                    ..Default::default()
                }),
                spec: Some(JobSpec {
                    backoff_limit: Some(BACKOFF_LIMIT),
                    active_deadline_seconds: Some(ACTIVE_DEADLINE_SECONDS),
                    template: pod,
                    ..Default::default()
                }),
            },
        },
        ..Default::default()
    })
}

/// The Redis pod's init container of a canvas created from a backup; `None` without
/// `spec.restore`. It fills `/data` only while it holds no append-only file, so a restarted
/// pod (or a canvas whose volume was kept) keeps its own data.
pub fn restore_container(inputs: &Inputs, data: &VolumeMount) -> Option<Container> {
    let spec = &inputs.canvas.spec;
    let restore = spec.restore.as_ref()?;
    let store = restore
        .store
        .as_ref()
        .or(spec.backup.as_ref().map(|b| &b.store))?;
    let mut env = store_env(inputs, store, true);
    env.extend([
        value(ports::ENV_RESTORE_FROM, &restore.from),
        value(ports::ENV_RESTORE_DATA_DIR, &data.mount_path),
        value(ports::ENV_LOG_FORMAT, "json"),
    ]);
    Some(Container {
        name: RESTORE_CONTAINER.to_owned(),
        image: Some(inputs.image().to_owned()),
        image_pull_policy: Some(inputs.pull_policy().to_owned()),
        command: Some(vec![BINARY.to_owned(), "restore".to_owned()]),
        env: Some(env),
        resources: Some(security::resources(None, ("50m", "64Mi", "256Mi"))),
        security_context: Some(security::container_security_context()),
        termination_message_policy: Some(FALLBACK_TO_LOGS.to_owned()),
        volume_mounts: Some(vec![data.clone()]),
        ..Default::default()
    })
}
