//! The status: a pure function of the canvas, what its workloads report, which images their
//! pods cannot get, and whether the last reconcile failed. `lastTransitionTime` moves only
//! when a condition's status flips, so an unchanged world yields an identical status and no
//! write.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        core::v1::{Container, ContainerStatus, Pod},
    },
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::ResourceExt;

use crate::{
    api::{ComponentsStatus, LastBackup, PixelCanvas, PixelCanvasStatus, ReplicaStatus},
    children::{
        Component, UPLOAD_CONTAINER, desired_replicas,
        naming::{BACKUP_COMPONENT, LABEL_COMPONENT},
    },
    storage::StorageState,
};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const PAUSED: &str = "Paused";
/// Whether the Redis volume holds what `spec.redis.storage.size` asks.
pub const STORAGE_READY: &str = "StorageReady";
/// The reason of StorageReady when the claim's StorageClass does not allow expansion.
pub const EXPANSION_NOT_ALLOWED: &str = "ExpansionNotAllowed";

/// The reason of Ready while components roll out or start: normal progress, not a fault.
pub const COMPONENTS_NOT_READY: &str = "ComponentsNotReady";

/// The reason of Ready and Degraded while a pod cannot get its image.
pub const IMAGE_PULL_FAILED: &str = "ImagePullFailed";

/// The label a StatefulSet puts on each pod: the revision of the template it was made from.
pub const CONTROLLER_REVISION_HASH: &str = "controller-revision-hash";

/// What one workload reports about its replicas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkloadState {
    /// Ready pods running the current pod template.
    pub ready: i32,
    /// The workload controller has acted on the latest spec and replaced every old pod.
    pub rolled_out: bool,
}

impl WorkloadState {
    /// While old pods remain, only ready pods of the current template count.
    fn counting(ready: i32, updated: i32, rolled_out: bool) -> Self {
        Self {
            ready: if rolled_out {
                ready
            } else {
                ready.min(updated)
            },
            rolled_out,
        }
    }

    pub fn of_deployment(d: &Deployment) -> Self {
        let status = d.status.clone().unwrap_or_default();
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let updated = status.updated_replicas.unwrap_or(0);
        let current_generation =
            status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
        let rolled_out =
            current_generation && updated == desired && status.replicas.unwrap_or(0) == desired;
        let ready = status.ready_replicas.unwrap_or(0);
        Self::counting(ready, updated, rolled_out)
    }

    pub fn of_stateful_set(s: &StatefulSet) -> Self {
        let status = s.status.clone().unwrap_or_default();
        let desired = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let current_generation =
            status.observed_generation.unwrap_or(0) >= s.metadata.generation.unwrap_or(0);
        let same_revision =
            status.update_revision.is_some() && status.current_revision == status.update_revision;
        let updated = status.updated_replicas.unwrap_or(0);
        let rolled_out = current_generation && same_revision && updated == desired;
        let ready = status.ready_replicas.unwrap_or(0);
        Self::counting(ready, updated, rolled_out)
    }
}

/// Why the kubelet cannot start a container from its image, from the container's waiting
/// reason. The kubelet alternates `ErrImagePull` (an attempt failed) and `ImagePullBackOff`
/// (waiting for the next attempt) for as long as a pull keeps failing, so both are one kind:
/// the status names them together and stays put between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ImageFailure {
    /// `ErrImagePull` or `ImagePullBackOff`.
    Pull,
    /// `ErrImageNeverPull`: the image is not on the node and the pull policy is `Never`.
    NeverPull,
    /// `InvalidImageName`.
    InvalidName,
}

impl ImageFailure {
    /// The kind of a container's waiting reason, if it means the image cannot be had.
    pub fn of_waiting_reason(reason: &str) -> Option<Self> {
        match reason {
            "ErrImagePull" | "ImagePullBackOff" => Some(Self::Pull),
            "ErrImageNeverPull" => Some(Self::NeverPull),
            "InvalidImageName" => Some(Self::InvalidName),
            _ => None,
        }
    }

    /// What is wrong with the image, and the kubelet's reasons for it.
    fn describe(self) -> &'static str {
        match self {
            Self::Pull => "cannot be pulled (ErrImagePull/ImagePullBackOff)",
            Self::NeverPull => {
                "is not on the node and its pull policy is Never (ErrImageNeverPull)"
            }
            Self::InvalidName => "is not a valid image name (InvalidImageName)",
        }
    }
}

/// An image some container of a component cannot start from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ImageProblem {
    /// The image as the pod's spec names it.
    pub image: String,
    pub failure: ImageFailure,
}

/// What the operator reads from one of a canvas's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    pub name: String,
    pub uid: String,
    pub component: Component,
    /// The pod's Ready condition is true.
    pub ready: bool,
    /// The [`CONTROLLER_REVISION_HASH`] label (StatefulSet pods only).
    pub revision: Option<String>,
    /// The images its containers (init containers too) are waiting for in vain.
    pub image_problems: BTreeSet<ImageProblem>,
}

impl PodState {
    /// `None` for a pod of no component, or one being deleted: it is on its way out, and
    /// what it waits for no longer matters.
    pub fn of_pod(pod: &Pod) -> Option<Self> {
        if pod.metadata.deletion_timestamp.is_some() {
            return None;
        }
        let labels = pod.labels();
        let component = labels
            .get(LABEL_COMPONENT)
            .and_then(|label| Component::ALL.into_iter().find(|c| c.as_str() == label))?;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
        let image_problems = [
            (
                status.and_then(|s| s.init_container_statuses.as_deref()),
                spec.and_then(|s| s.init_containers.as_deref()),
            ),
            (
                status.and_then(|s| s.container_statuses.as_deref()),
                spec.map(|s| s.containers.as_slice()),
            ),
        ]
        .into_iter()
        .flat_map(|(statuses, containers)| {
            statuses
                .unwrap_or_default()
                .iter()
                .filter_map(move |s| image_problem(s, containers.unwrap_or_default()))
        })
        .collect();
        Some(Self {
            name: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
            component,
            ready,
            revision: labels.get(CONTROLLER_REVISION_HASH).cloned(),
            image_problems,
        })
    }
}

/// The problem a container's waiting reason reports, naming the image its spec gives (the
/// status's image where the spec has no such container).
fn image_problem(status: &ContainerStatus, containers: &[Container]) -> Option<ImageProblem> {
    let reason = status.state.as_ref()?.waiting.as_ref()?.reason.as_deref()?;
    let failure = ImageFailure::of_waiting_reason(reason)?;
    let image = containers
        .iter()
        .find(|c| c.name == status.name)
        .and_then(|c| c.image.clone())
        .unwrap_or_else(|| status.image.clone());
    Some(ImageProblem { image, failure })
}

/// The image problems of each component, over all its pods.
pub fn image_problems(pods: &[PodState]) -> BTreeMap<Component, BTreeSet<ImageProblem>> {
    let mut problems = BTreeMap::<Component, BTreeSet<ImageProblem>>::new();
    for pod in pods.iter().filter(|p| !p.image_problems.is_empty()) {
        problems
            .entry(pod.component)
            .or_default()
            .extend(pod.image_problems.iter().cloned());
    }
    problems
}

/// Everything the status depends on besides the canvas.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Each component's workload, when it exists.
    pub workloads: BTreeMap<Component, WorkloadState>,
    /// The images each component's pods cannot get (none: absent or empty).
    pub image_problems: BTreeMap<Component, BTreeSet<ImageProblem>>,
    /// The reason and message of the last reconcile's failure, if it failed.
    pub failure: Option<(String, String)>,
    /// The canvas URL, when there is one.
    pub url: Option<String>,
    /// Where the Redis volume stands against the spec (none: not looked at, as when paused).
    pub storage: Option<StorageState>,
    /// The newest backup a finished backup pod reports ([`reported_backup`]).
    pub backup: Option<LastBackup>,
}

/// The newest backup the canvas's finished backup pods report: the record their upload
/// container left as its termination message (`pixel_common::backup::BackupRecord`). A
/// pod that failed, or whose message is no record, reports nothing.
pub fn reported_backup(pods: &[Pod]) -> Option<LastBackup> {
    newest_backup(pods.iter().filter_map(backup_of))
}

/// The backup a finished backup pod reports, if it is one.
pub fn backup_of(pod: &Pod) -> Option<LastBackup> {
    if pod.labels().get(LABEL_COMPONENT).map(String::as_str) != Some(BACKUP_COMPONENT) {
        return None;
    }
    let containers = pod.status.as_ref()?.container_statuses.as_ref()?;
    let records = containers
        .iter()
        .filter(|container| container.name == UPLOAD_CONTAINER)
        .filter_map(|container| {
            let terminated = container.state.as_ref()?.terminated.as_ref()?;
            (terminated.exit_code == 0).then_some(())?;
            let record: pixel_common::backup::BackupRecord =
                serde_json::from_str(terminated.message.as_deref()?).ok()?;
            Some(LastBackup {
                time: Time(record.time.parse().ok()?),
                object: record.object,
                version: i64::try_from(record.version).ok()?,
            })
        });
    newest_backup(records)
}

/// The newest of `backups`.
pub fn newest_backup(backups: impl IntoIterator<Item = LastBackup>) -> Option<LastBackup> {
    backups.into_iter().max_by(|a, b| a.time.0.cmp(&b.time.0))
}

/// The newer of two backups: the one the status holds and one a pod reports (the pods of
/// old Jobs are deleted, so the status keeps what they said).
fn newer(known: Option<&LastBackup>, reported: Option<&LastBackup>) -> Option<LastBackup> {
    match (known, reported) {
        (Some(known), Some(reported)) if reported.time.0 > known.time.0 => Some(reported.clone()),
        (Some(known), _) => Some(known.clone()),
        (None, reported) => reported.cloned(),
    }
}

/// The status to write. `now` stamps conditions whose status flips.
pub fn status(canvas: &PixelCanvas, observed: &Observed, now: &Time) -> PixelCanvasStatus {
    let generation = canvas.metadata.generation;
    let replica_status = |component| {
        let desired = desired_replicas(canvas, component);
        let ready = observed
            .workloads
            .get(&component)
            .map_or(0, |w| w.ready)
            .min(desired);
        ReplicaStatus {
            desired,
            ready,
            summary: format!("{ready}/{desired}"),
        }
    };
    let components = ComponentsStatus {
        redis: replica_status(Component::Redis),
        api: replica_status(Component::Api),
        gateway: replica_status(Component::Gateway),
        frontend: replica_status(Component::Frontend),
    };
    let per_component = [
        (Component::Redis, &components.redis),
        (Component::Api, &components.api),
        (Component::Gateway, &components.gateway),
        (Component::Frontend, &components.frontend),
    ];

    let waiting: Vec<String> = per_component
        .iter()
        .filter(|(component, counts)| {
            let rolled_out = observed
                .workloads
                .get(component)
                .is_some_and(|w| w.rolled_out);
            !rolled_out || counts.ready < counts.desired
        })
        .map(|(component, counts)| format!("{} {}", component.as_str(), counts.summary))
        .collect();
    let unavailable: Vec<String> = per_component
        .iter()
        .filter(|(_, counts)| counts.desired > 0 && counts.ready == 0)
        .map(|(component, counts)| {
            format!(
                "{} has none of its {} replicas ready",
                component.as_str(),
                counts.desired
            )
        })
        .collect();

    // Bounded: one entry per component, image and kind, whatever the number of pods.
    let image_problems: Vec<String> = observed
        .image_problems
        .iter()
        .flat_map(|(component, problems)| {
            problems.iter().map(move |p| {
                format!(
                    "{}: image {:?} {}",
                    component.as_str(),
                    p.image,
                    p.failure.describe()
                )
            })
        })
        .collect();
    let image_problems = (!image_problems.is_empty()).then(|| image_problems.join("; "));

    let mut conditions = Vec::new();
    let mut set = |type_: &str, status: bool, reason: &str, message: String| {
        conditions.push(Condition {
            type_: type_.to_owned(),
            status: if status { "True" } else { "False" }.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            last_transition_time: transition_time(canvas, type_, status, now),
        });
    };

    let all_ready = waiting.is_empty() && observed.failure.is_none() && image_problems.is_none();
    if all_ready {
        set(
            READY,
            true,
            "AllComponentsReady",
            "every component has all its replicas ready".to_owned(),
        );
    } else if let Some((reason, message)) = &observed.failure {
        set(READY, false, reason, message.clone());
    } else if let Some(message) = &image_problems {
        set(READY, false, IMAGE_PULL_FAILED, message.clone());
    } else {
        set(
            READY,
            false,
            COMPONENTS_NOT_READY,
            format!("waiting for {}", waiting.join(", ")),
        );
    }

    if canvas.spec.paused {
        set(
            PROGRESSING,
            false,
            "Paused",
            "spec.paused is true: children are not being changed".to_owned(),
        );
    } else if waiting.is_empty() {
        set(
            PROGRESSING,
            false,
            "RolloutComplete",
            "every component runs the current spec".to_owned(),
        );
    } else {
        set(
            PROGRESSING,
            true,
            "RollingOut",
            format!("waiting for {}", waiting.join(", ")),
        );
    }

    if let Some((reason, message)) = &observed.failure {
        set(DEGRADED, true, reason, message.clone());
    } else if let Some(message) = &image_problems {
        set(DEGRADED, true, IMAGE_PULL_FAILED, message.clone());
    } else if !unavailable.is_empty() {
        set(
            DEGRADED,
            true,
            "ComponentUnavailable",
            unavailable.join("; "),
        );
    } else {
        set(
            DEGRADED,
            false,
            "AsExpected",
            "no component is unavailable".to_owned(),
        );
    }

    if canvas.spec.paused {
        set(
            PAUSED,
            true,
            "Paused",
            "spec.paused is true: children are not being changed".to_owned(),
        );
    } else {
        set(
            PAUSED,
            false,
            "NotPaused",
            "children follow the spec".to_owned(),
        );
    }

    if let Some(storage) = &observed.storage {
        let (status, reason, message) = storage_condition(storage);
        set(STORAGE_READY, status, reason, message);
    } else if let Some(previous) = canvas
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == STORAGE_READY))
    {
        // Not looked at this time (paused): what was last known stands.
        conditions.push(previous.clone());
    }

    PixelCanvasStatus {
        observed_generation: generation,
        conditions,
        components,
        url: observed.url.clone(),
        last_backup: newer(
            canvas.status.as_ref().and_then(|s| s.last_backup.as_ref()),
            observed.backup.as_ref(),
        ),
    }
}

/// StorageReady for where the volume stands: one human sentence naming the claim.
fn storage_condition(storage: &StorageState) -> (bool, &'static str, String) {
    match storage {
        StorageState::ClaimPending { claim } => (
            false,
            "ClaimPending",
            format!("the volume claim {claim} does not exist yet"),
        ),
        StorageState::AsRequested {
            claim,
            capacity,
            wanted,
        } => (
            true,
            "AsRequested",
            format!("{claim} holds {capacity}; spec.redis.storage.size asks {wanted}"),
        ),
        StorageState::Expanding {
            claim,
            capacity,
            wanted,
        } => (
            false,
            "Expanding",
            format!("{claim} is growing from {capacity} to {wanted}"),
        ),
        StorageState::NotExpandable {
            claim,
            class,
            requested,
            wanted,
        } => (
            false,
            EXPANSION_NOT_ALLOWED,
            match class {
                Some(class) => format!(
                    "the StorageClass {class} does not allow volume expansion, so {claim} stays \
                     at {requested} while spec.redis.storage.size asks {wanted}"
                ),
                None => format!(
                    "{claim} names no StorageClass, so it cannot grow: it stays at {requested} \
                     while spec.redis.storage.size asks {wanted}"
                ),
            },
        ),
    }
}

/// The previous transition time while the condition's status is unchanged, else `now`.
fn transition_time(canvas: &PixelCanvas, type_: &str, status: bool, now: &Time) -> Time {
    let want = if status { "True" } else { "False" };
    canvas
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == want)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone())
}

/// The canvas's name, for messages.
pub fn describe(canvas: &PixelCanvas) -> String {
    format!(
        "{}/{}",
        canvas.namespace().unwrap_or_default(),
        canvas.name_any()
    )
}

#[cfg(test)]
mod tests;
