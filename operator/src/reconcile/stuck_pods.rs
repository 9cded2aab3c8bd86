//! Which Redis pods to delete so that a fixed image can roll out: a pure function of the live
//! StatefulSet and the canvas's pods.
//!
//! A StatefulSet (`OrderedReady`, `RollingUpdate`) never replaces a pod that has never
//! become ready: after the spec's image is fixed, a pod stuck in `ImagePullBackOff` on the
//! old revision stays so forever, and the rollout waits for it. Deleting that pod is the
//! standard remedy; the StatefulSet controller then recreates it at the update revision.

use k8s_openapi::api::apps::v1::StatefulSet;

use crate::{children::Component, status::PodState};

/// The Redis pods that are not ready, wait for an image they cannot get, and belong to
/// another revision than the one the StatefulSet controller is rolling out. None while the
/// controller has not yet acted on the StatefulSet's latest spec (its update revision would
/// be stale), and never a pod of the update revision: that one waits for the image the spec
/// names now, and deleting it would only make it again.
pub fn stuck_pods<'a>(set: &StatefulSet, pods: &'a [PodState]) -> Vec<&'a PodState> {
    let Some(status) = &set.status else {
        return Vec::new();
    };
    let current_generation =
        status.observed_generation.unwrap_or(0) >= set.metadata.generation.unwrap_or(0);
    let Some(update_revision) = status
        .update_revision
        .as_deref()
        .filter(|_| current_generation)
    else {
        return Vec::new();
    };
    pods.iter()
        .filter(|pod| {
            pod.component == Component::Redis
                && !pod.ready
                && !pod.image_problems.is_empty()
                && pod
                    .revision
                    .as_deref()
                    .is_some_and(|revision| revision != update_revision)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use k8s_openapi::api::apps::v1::StatefulSetStatus;

    use super::*;
    use crate::status::{ImageFailure, ImageProblem};

    fn set(generation: i64, observed: i64, update_revision: &str) -> StatefulSet {
        let mut set = StatefulSet {
            status: Some(StatefulSetStatus {
                observed_generation: Some(observed),
                current_revision: Some("demo-redis-1".to_owned()),
                update_revision: Some(update_revision.to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        };
        set.metadata.generation = Some(generation);
        set
    }

    fn pod(revision: &str, ready: bool, failure: Option<ImageFailure>) -> PodState {
        PodState {
            name: "demo-redis-0".to_owned(),
            uid: "uid-0".to_owned(),
            component: Component::Redis,
            ready,
            revision: Some(revision.to_owned()),
            image_problems: failure
                .map(|failure| ImageProblem {
                    image: "redis:nope".to_owned(),
                    failure,
                })
                .into_iter()
                .collect::<BTreeSet<_>>(),
        }
    }

    #[test]
    fn a_pod_stuck_on_an_old_revisions_image_is_replaced() {
        for failure in [
            ImageFailure::Pull,
            ImageFailure::NeverPull,
            ImageFailure::InvalidName,
        ] {
            let pods = [pod("demo-redis-1", false, Some(failure))];
            assert_eq!(
                stuck_pods(&set(2, 2, "demo-redis-2"), &pods),
                [&pods[0]],
                "{failure:?}"
            );
        }
    }

    #[test]
    fn a_pod_of_the_update_revision_is_left_to_wait() {
        let pods = [pod("demo-redis-2", false, Some(ImageFailure::Pull))];
        assert_eq!(
            stuck_pods(&set(2, 2, "demo-redis-2"), &pods),
            [] as [&PodState; 0]
        );
    }

    #[test]
    fn an_old_pod_without_an_image_problem_is_left_to_the_rollout() {
        let set = set(2, 2, "demo-redis-2");
        let not_ready = [pod("demo-redis-1", false, None)];
        assert_eq!(stuck_pods(&set, &not_ready), [] as [&PodState; 0]);
        let ready = [pod("demo-redis-1", true, Some(ImageFailure::Pull))];
        assert_eq!(
            stuck_pods(&set, &ready),
            [] as [&PodState; 0],
            "a ready pod is replaced by the rollout itself"
        );
    }

    #[test]
    fn nothing_is_replaced_before_the_controller_sees_the_spec() {
        let pods = [pod("demo-redis-1", false, Some(ImageFailure::Pull))];
        assert_eq!(
            stuck_pods(&set(3, 2, "demo-redis-2"), &pods),
            [] as [&PodState; 0]
        );
        assert_eq!(
            stuck_pods(&StatefulSet::default(), &pods),
            [] as [&PodState; 0]
        );
    }

    #[test]
    fn only_redis_pods_with_a_revision_are_considered() {
        let set = set(2, 2, "demo-redis-2");
        let mut api = pod("demo-redis-1", false, Some(ImageFailure::Pull));
        api.component = Component::Api;
        let mut unlabelled = pod("demo-redis-1", false, Some(ImageFailure::Pull));
        unlabelled.revision = None;
        assert_eq!(stuck_pods(&set, &[api, unlabelled]), [] as [&PodState; 0]);
    }
}
