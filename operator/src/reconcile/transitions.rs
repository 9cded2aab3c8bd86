//! Which events a status change deserves: Ready flipping either way, and a new reason for
//! being Degraded (such as `ImagePullFailed`, naming the image a pod cannot get). A pure
//! function of the old and the new status; `reconcile` only publishes what it returns.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::events::{Event, EventType};

use crate::{
    api::PixelCanvasStatus,
    status::{COMPONENTS_NOT_READY, DEGRADED, EXPANSION_NOT_ALLOWED, READY, STORAGE_READY},
};

/// The `action` of every event the reconciler publishes.
const ACTION: &str = "Reconcile";

/// One event to publish about a canvas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub type_: EventType,
    pub reason: String,
    pub note: String,
}

impl Transition {
    pub fn into_event(self) -> Event {
        Event {
            type_: self.type_,
            reason: self.reason,
            note: Some(self.note),
            action: ACTION.to_owned(),
            secondary: None,
        }
    }
}

/// The events for going from `old` (none before the first reconcile) to `new`: Ready
/// flipping (Normal `Ready` when it becomes true; when it becomes false, a Warning with its
/// reason, or a Normal event while components merely roll out or start, as on creation or
/// a scale-up), and Degraded becoming true or changing its reason (a Warning), unless Ready's
/// Warning already says the same; and the Redis volume becoming unable to grow (a Warning).
/// A message changing under the same reason is no event.
pub fn transitions(old: Option<&PixelCanvasStatus>, new: &PixelCanvasStatus) -> Vec<Transition> {
    let old = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let mut events = Vec::new();
    if let Some(ready) = find(&new.conditions, READY)
        && find(old, READY).map(|c| &c.status) != Some(&ready.status)
    {
        let became_ready = ready.status == "True";
        let progress = ready.reason == COMPONENTS_NOT_READY;
        events.push(Transition {
            type_: if became_ready || progress {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: if became_ready {
                READY.to_owned()
            } else {
                ready.reason.clone()
            },
            note: ready.message.clone(),
        });
    }
    if let Some(degraded) = find(&new.conditions, DEGRADED)
        && degraded.status == "True"
        && find(old, DEGRADED).map(|c| (&c.status, &c.reason))
            != Some((&degraded.status, &degraded.reason))
    {
        let warning = Transition {
            type_: EventType::Warning,
            reason: degraded.reason.clone(),
            note: degraded.message.clone(),
        };
        if !events.contains(&warning) {
            events.push(warning);
        }
    }
    if let Some(storage) = find(&new.conditions, STORAGE_READY)
        && storage.reason == EXPANSION_NOT_ALLOWED
        && find(old, STORAGE_READY).map(|c| &c.reason) != Some(&storage.reason)
    {
        events.push(Transition {
            type_: EventType::Warning,
            reason: storage.reason.clone(),
            note: storage.message.clone(),
        });
    }
    events
}

fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

    use super::*;

    fn condition(type_: &str, status: bool, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.to_owned(),
            status: if status { "True" } else { "False" }.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }
    }

    fn with(conditions: Vec<Condition>) -> PixelCanvasStatus {
        PixelCanvasStatus {
            conditions,
            ..Default::default()
        }
    }

    fn ready() -> PixelCanvasStatus {
        with(vec![
            condition(READY, true, "AllComponentsReady", "all ready"),
            condition(DEGRADED, false, "AsExpected", "none unavailable"),
        ])
    }

    fn failing(reason: &str, message: &str) -> PixelCanvasStatus {
        with(vec![
            condition(READY, false, reason, message),
            condition(DEGRADED, true, reason, message),
        ])
    }

    fn warning(reason: &str, note: &str) -> Transition {
        Transition {
            type_: EventType::Warning,
            reason: reason.to_owned(),
            note: note.to_owned(),
        }
    }

    #[test]
    fn becoming_ready_is_a_normal_event() {
        assert_eq!(
            transitions(Some(&failing("ComponentsNotReady", "waiting")), &ready()),
            [Transition {
                type_: EventType::Normal,
                reason: "Ready".to_owned(),
                note: "all ready".to_owned(),
            }]
        );
    }

    #[test]
    fn ceasing_to_be_ready_warns_with_its_reason_once() {
        assert_eq!(
            transitions(
                Some(&ready()),
                &failing("PasswordSecretMissing", "no Secret")
            ),
            [warning("PasswordSecretMissing", "no Secret")],
            "Degraded says the same as Ready: one event"
        );
    }

    #[test]
    fn ceasing_to_be_ready_warns_with_its_reason_and_a_different_degradation() {
        let unavailable = with(vec![
            condition(READY, false, "ComponentsNotReady", "waiting for api 0/2"),
            condition(DEGRADED, true, "ComponentUnavailable", "api has none"),
        ]);
        assert_eq!(
            transitions(Some(&ready()), &unavailable),
            [
                Transition {
                    type_: EventType::Normal,
                    reason: "ComponentsNotReady".to_owned(),
                    note: "waiting for api 0/2".to_owned(),
                },
                warning("ComponentUnavailable", "api has none"),
            ]
        );
    }

    #[test]
    fn a_volume_that_cannot_grow_warns_once() {
        let fixed = with(vec![
            condition(READY, true, "AllComponentsReady", "all ready"),
            condition(
                STORAGE_READY,
                false,
                EXPANSION_NOT_ALLOWED,
                "the class fixed",
            ),
        ]);
        assert_eq!(
            transitions(Some(&ready()), &fixed),
            [warning(EXPANSION_NOT_ALLOWED, "the class fixed")]
        );
        assert_eq!(transitions(Some(&fixed), &fixed), [], "once per transition");
    }

    /// A canvas being created, or rolling out a change, is making progress: no Warning.
    #[test]
    fn a_first_rollout_is_normal_progress_not_a_warning() {
        let rolling = with(vec![
            condition(READY, false, "ComponentsNotReady", "waiting for api 0/2"),
            condition(DEGRADED, false, "AsExpected", "no component is unavailable"),
        ]);
        for old in [None, Some(&ready())] {
            let events = transitions(old, &rolling);
            assert_eq!(events.len(), 1, "{events:?}");
            assert_eq!(events[0].type_, EventType::Normal, "{old:?}");
        }
    }

    #[test]
    fn a_new_degraded_reason_warns_again_but_not_ready_again() {
        assert_eq!(
            transitions(
                Some(&failing("PasswordSecretMissing", "no Secret")),
                &failing("PasswordKeyMissing", "no key"),
            ),
            [warning("PasswordKeyMissing", "no key")]
        );
    }

    #[test]
    fn the_same_degraded_reason_with_a_new_message_is_no_event() {
        assert_eq!(
            transitions(
                Some(&failing("KubernetesApiError", "cannot get Secret a")),
                &failing("KubernetesApiError", "cannot get Secret b"),
            ),
            []
        );
    }

    #[test]
    fn an_unchanged_status_is_no_event() {
        assert_eq!(transitions(Some(&ready()), &ready()), []);
        let failing = failing("PasswordSecretMissing", "no Secret");
        assert_eq!(transitions(Some(&failing), &failing), []);
    }

    #[test]
    fn the_first_status_announces_where_the_canvas_stands() {
        assert_eq!(
            transitions(None, &ready()),
            [Transition {
                type_: EventType::Normal,
                reason: "Ready".to_owned(),
                note: "all ready".to_owned(),
            }]
        );
        assert_eq!(
            transitions(None, &failing("PasswordSecretMissing", "no Secret")),
            [warning("PasswordSecretMissing", "no Secret")]
        );
    }

    const PULL: &str =
        "redis: image \"redis:nope\" cannot be pulled (ErrImagePull/ImagePullBackOff)";

    #[test]
    fn a_pod_that_cannot_get_its_image_warns_once_naming_it() {
        let unavailable = with(vec![
            condition(READY, false, "ComponentsNotReady", "waiting for redis 0/1"),
            condition(DEGRADED, true, "ComponentUnavailable", "redis has none"),
        ]);
        let stuck = failing("ImagePullFailed", PULL);
        assert_eq!(
            transitions(Some(&unavailable), &stuck),
            [warning("ImagePullFailed", PULL)],
            "already not Ready: only the new degradation"
        );
        assert_eq!(
            transitions(Some(&ready()), &stuck),
            [warning("ImagePullFailed", PULL)],
            "Ready and Degraded say the same: one event"
        );
    }

    #[test]
    fn staying_unable_to_get_an_image_is_no_event() {
        let stuck = failing("ImagePullFailed", PULL);
        assert_eq!(transitions(Some(&stuck), &stuck), []);
        let and_api = failing(
            "ImagePullFailed",
            &format!(
                "{PULL}; api: image \"app:2\" cannot be pulled (ErrImagePull/ImagePullBackOff)"
            ),
        );
        assert_eq!(transitions(Some(&stuck), &and_api), []);
    }

    #[test]
    fn getting_the_image_at_last_is_one_ready_event() {
        assert_eq!(
            transitions(Some(&failing("ImagePullFailed", PULL)), &ready()),
            [Transition {
                type_: EventType::Normal,
                reason: "Ready".to_owned(),
                note: "all ready".to_owned(),
            }]
        );
    }

    #[test]
    fn recovering_is_one_ready_event() {
        let unavailable = with(vec![
            condition(READY, false, "ComponentsNotReady", "waiting for api 0/2"),
            condition(DEGRADED, true, "ComponentUnavailable", "api has none"),
        ]);
        assert_eq!(
            transitions(Some(&unavailable), &ready()),
            [Transition {
                type_: EventType::Normal,
                reason: "Ready".to_owned(),
                note: "all ready".to_owned(),
            }]
        );
    }
}
