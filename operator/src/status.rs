//! The status: a pure function of the canvas, what its workloads report, and whether the
//! last reconcile failed. `lastTransitionTime` moves only when a condition's status flips,
//! so an unchanged world yields an identical status and no write.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::apps::v1::{Deployment, StatefulSet},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::ResourceExt;

use crate::{
    api::{ComponentsStatus, PixelCanvas, PixelCanvasStatus, ReplicaStatus},
    children::{Component, desired_replicas},
};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const PAUSED: &str = "Paused";

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

/// Everything the status depends on besides the canvas.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Each component's workload, when it exists.
    pub workloads: BTreeMap<Component, WorkloadState>,
    /// The reason and message of the last reconcile's failure, if it failed.
    pub failure: Option<(String, String)>,
    /// The canvas URL, when there is one.
    pub url: Option<String>,
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

    let all_ready = waiting.is_empty() && observed.failure.is_none();
    if all_ready {
        set(
            READY,
            true,
            "AllComponentsReady",
            "every component has all its replicas ready".to_owned(),
        );
    } else if let Some((reason, message)) = &observed.failure {
        set(READY, false, reason, message.clone());
    } else {
        set(
            READY,
            false,
            "ComponentsNotReady",
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

    PixelCanvasStatus {
        observed_generation: generation,
        conditions,
        components,
        url: observed.url.clone(),
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
