use k8s_openapi::{
    api::apps::v1::{DeploymentSpec, DeploymentStatus},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::Resource;
use serde_json::json;

use super::*;
use crate::api::PixelCanvasSpec;

fn canvas(spec: serde_json::Value) -> PixelCanvas {
    let mut canvas = PixelCanvas::new(
        "demo",
        serde_json::from_value::<PixelCanvasSpec>(spec).expect("spec"),
    );
    canvas.meta_mut().namespace = Some("art".to_owned());
    canvas.meta_mut().generation = Some(3);
    canvas
}

fn time(seconds: i64) -> Time {
    Time(Timestamp::from_second(1_800_000_000 + seconds).expect("timestamp"))
}

fn all(state: WorkloadState) -> Observed {
    Observed {
        workloads: Component::ALL.into_iter().map(|c| (c, state)).collect(),
        ..Default::default()
    }
}

const DONE: WorkloadState = WorkloadState {
    ready: 2,
    rolled_out: true,
};

fn cond<'a>(status: &'a PixelCanvasStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_}"))
}

#[test]
fn everything_rolled_out_and_ready_is_ready() {
    let s = status(&canvas(json!({})), &all(DONE), &time(0));
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!(cond(&s, READY).status, "True");
    assert_eq!(cond(&s, PROGRESSING).status, "False");
    assert_eq!(cond(&s, DEGRADED).status, "False");
    assert_eq!(cond(&s, PAUSED).status, "False");
    assert_eq!(
        s.components.api,
        ReplicaStatus {
            desired: 2,
            ready: 2,
            summary: "2/2".to_owned()
        }
    );
    assert_eq!(
        s.components.redis.summary, "1/1",
        "Redis counts at most its one desired replica"
    );
    assert!(
        s.conditions
            .iter()
            .all(|c| c.observed_generation == Some(3))
    );
}

#[test]
fn a_new_canvas_is_progressing_and_degraded() {
    let s = status(&canvas(json!({})), &Observed::default(), &time(0));
    assert_eq!(
        (
            cond(&s, READY).status.as_str(),
            cond(&s, READY).reason.as_str()
        ),
        ("False", "ComponentsNotReady")
    );
    assert_eq!(cond(&s, PROGRESSING).status, "True");
    assert_eq!(cond(&s, DEGRADED).reason, "ComponentUnavailable");
    assert!(
        cond(&s, DEGRADED)
            .message
            .contains("gateway has none of its 2 replicas ready"),
        "{}",
        cond(&s, DEGRADED).message
    );
}

#[test]
fn a_partly_ready_component_keeps_the_canvas_progressing() {
    let mut observed = all(DONE);
    observed.workloads.insert(
        Component::Api,
        WorkloadState {
            ready: 1,
            rolled_out: true,
        },
    );
    let s = status(&canvas(json!({})), &observed, &time(0));
    assert_eq!(cond(&s, READY).status, "False");
    assert!(
        cond(&s, READY).message.contains("api 1/2"),
        "{}",
        cond(&s, READY).message
    );
    assert_eq!(
        cond(&s, DEGRADED).status,
        "False",
        "one ready replica still serves"
    );
}

#[test]
fn ready_pods_of_an_old_generation_do_not_make_it_ready() {
    let s = status(
        &canvas(json!({})),
        &all(WorkloadState {
            ready: 2,
            rolled_out: false,
        }),
        &time(0),
    );
    assert_eq!(cond(&s, READY).status, "False");
    assert_eq!(cond(&s, PROGRESSING).status, "True");
}

#[test]
fn a_failed_reconcile_is_degraded_with_its_reason() {
    let observed = Observed {
        failure: Some((
            "PasswordSecretMissing".into(),
            "Secret art/mine not found".into(),
        )),
        ..all(DONE)
    };
    let s = status(&canvas(json!({})), &observed, &time(0));
    assert_eq!(
        (
            cond(&s, DEGRADED).status.as_str(),
            cond(&s, DEGRADED).reason.as_str()
        ),
        ("True", "PasswordSecretMissing")
    );
    assert_eq!(cond(&s, DEGRADED).message, "Secret art/mine not found");
    assert_eq!(cond(&s, READY).status, "False");
}

#[test]
fn zero_replicas_is_ready_when_none_run() {
    let mut observed = all(DONE);
    observed.workloads.insert(
        Component::Frontend,
        WorkloadState {
            ready: 0,
            rolled_out: true,
        },
    );
    let s = status(
        &canvas(json!({"frontend": {"replicas": 0}})),
        &observed,
        &time(0),
    );
    assert_eq!(s.components.frontend.summary, "0/0");
    assert_eq!(cond(&s, READY).status, "True");
    assert_eq!(cond(&s, DEGRADED).status, "False");
}

#[test]
fn paused_sets_its_condition() {
    let s = status(&canvas(json!({"paused": true})), &all(DONE), &time(0));
    assert_eq!(cond(&s, PAUSED).status, "True");
    assert_eq!(cond(&s, PROGRESSING).reason, "Paused");
    assert_eq!(
        cond(&s, READY).status,
        "True",
        "status stays current while paused"
    );
}

#[test]
fn an_unchanged_world_gives_an_identical_status() {
    let mut c = canvas(json!({}));
    let first = status(&c, &all(DONE), &time(0));
    c.status = Some(first.clone());
    let again = status(&c, &all(DONE), &time(600));
    assert_eq!(again, first, "no new timestamps, so no write");
}

#[test]
fn transition_times_move_only_when_a_status_flips() {
    let mut c = canvas(json!({}));
    c.status = Some(status(&c, &Observed::default(), &time(0)));
    let later = status(&c, &all(DONE), &time(60));
    assert_eq!(
        cond(&later, READY).last_transition_time,
        time(60),
        "Ready flipped"
    );
    assert_eq!(
        cond(&later, PAUSED).last_transition_time,
        time(0),
        "Paused did not"
    );
}

#[test]
fn deployments_count_only_ready_pods_of_the_current_template() {
    let mut d = Deployment {
        spec: Some(DeploymentSpec {
            replicas: Some(2),
            ..Default::default()
        }),
        status: Some(DeploymentStatus {
            observed_generation: Some(4),
            replicas: Some(3),
            updated_replicas: Some(1),
            ready_replicas: Some(3),
            ..Default::default()
        }),
        ..Default::default()
    };
    d.metadata.generation = Some(4);
    assert_eq!(
        WorkloadState::of_deployment(&d),
        WorkloadState {
            ready: 1,
            rolled_out: false
        }
    );
    d.status = Some(DeploymentStatus {
        observed_generation: Some(4),
        replicas: Some(2),
        updated_replicas: Some(2),
        ready_replicas: Some(2),
        ..Default::default()
    });
    assert_eq!(
        WorkloadState::of_deployment(&d),
        WorkloadState {
            ready: 2,
            rolled_out: true
        }
    );
    d.metadata.generation = Some(5);
    assert!(
        !WorkloadState::of_deployment(&d).rolled_out,
        "the controller has not seen generation 5"
    );
}

fn problems(
    entries: &[(Component, &str, ImageFailure)],
) -> BTreeMap<Component, BTreeSet<ImageProblem>> {
    let mut map = BTreeMap::<Component, BTreeSet<ImageProblem>>::new();
    for (component, image, failure) in entries {
        map.entry(*component).or_default().insert(ImageProblem {
            image: (*image).to_owned(),
            failure: *failure,
        });
    }
    map
}

/// The canvas waits for Redis, whose one pod cannot get its image.
fn redis_waiting_for(entries: &[(Component, &str, ImageFailure)]) -> Observed {
    let mut observed = all(DONE);
    observed.workloads.insert(
        Component::Redis,
        WorkloadState {
            ready: 0,
            rolled_out: false,
        },
    );
    observed.image_problems = problems(entries);
    observed
}

#[test]
fn each_image_failure_names_component_image_and_kubelet_reason() {
    for (failure, says) in [
        (
            ImageFailure::Pull,
            "cannot be pulled (ErrImagePull/ImagePullBackOff)",
        ),
        (
            ImageFailure::NeverPull,
            "is not on the node and its pull policy is Never (ErrImageNeverPull)",
        ),
        (
            ImageFailure::InvalidName,
            "is not a valid image name (InvalidImageName)",
        ),
    ] {
        let observed =
            redis_waiting_for(&[(Component::Redis, "pixel-playground-redis:nope", failure)]);
        let s = status(&canvas(json!({})), &observed, &time(0));
        let message = format!("redis: image \"pixel-playground-redis:nope\" {says}");
        for type_ in [READY, DEGRADED] {
            let c = cond(&s, type_);
            assert_eq!(
                (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
                (
                    if type_ == READY { "False" } else { "True" },
                    IMAGE_PULL_FAILED,
                    message.as_str()
                ),
                "{type_} for {failure:?}"
            );
        }
        assert_eq!(
            cond(&s, PROGRESSING).message,
            "waiting for redis 0/1",
            "Progressing still says what it waits for"
        );
    }
}

#[test]
fn the_kubelets_waiting_reasons_map_to_their_failures() {
    assert_eq!(
        ImageFailure::of_waiting_reason("ErrImagePull"),
        Some(ImageFailure::Pull)
    );
    assert_eq!(
        ImageFailure::of_waiting_reason("ImagePullBackOff"),
        Some(ImageFailure::Pull)
    );
    assert_eq!(
        ImageFailure::of_waiting_reason("ErrImageNeverPull"),
        Some(ImageFailure::NeverPull)
    );
    assert_eq!(
        ImageFailure::of_waiting_reason("InvalidImageName"),
        Some(ImageFailure::InvalidName)
    );
    for other in [
        "ContainerCreating",
        "CrashLoopBackOff",
        "PodInitializing",
        "",
    ] {
        assert_eq!(ImageFailure::of_waiting_reason(other), None, "{other}");
    }
}

#[test]
fn several_image_problems_are_listed_in_component_order_once_each() {
    let observed = redis_waiting_for(&[
        (
            Component::Gateway,
            "pixel-playground:typo",
            ImageFailure::Pull,
        ),
        (Component::Redis, "redis:nope", ImageFailure::Pull),
        (Component::Api, "pixel-playground:typo", ImageFailure::Pull),
        (Component::Redis, "redis:nope", ImageFailure::Pull),
        (Component::Redis, "Bad Name", ImageFailure::InvalidName),
    ]);
    let s = status(&canvas(json!({})), &observed, &time(0));
    assert_eq!(
        cond(&s, READY).message,
        "redis: image \"Bad Name\" is not a valid image name (InvalidImageName); \
         redis: image \"redis:nope\" cannot be pulled (ErrImagePull/ImagePullBackOff); \
         api: image \"pixel-playground:typo\" cannot be pulled (ErrImagePull/ImagePullBackOff); \
         gateway: image \"pixel-playground:typo\" cannot be pulled (ErrImagePull/ImagePullBackOff)"
    );
    assert_eq!(cond(&s, DEGRADED).message, cond(&s, READY).message);
}

#[test]
fn an_image_problem_beside_ready_replicas_still_keeps_the_canvas_not_ready() {
    // A Deployment rolling out a new image: the old pods serve, the new one cannot start.
    let mut observed = all(WorkloadState {
        ready: 2,
        rolled_out: false,
    });
    observed.image_problems = problems(&[(Component::Api, "app:2", ImageFailure::Pull)]);
    let s = status(&canvas(json!({})), &observed, &time(0));
    assert_eq!(cond(&s, READY).reason, IMAGE_PULL_FAILED);
    assert_eq!(cond(&s, DEGRADED).reason, IMAGE_PULL_FAILED);
}

#[test]
fn a_failed_reconcile_outranks_an_image_problem() {
    let mut observed = redis_waiting_for(&[(Component::Redis, "redis:nope", ImageFailure::Pull)]);
    observed.failure = Some(("PasswordSecretMissing".into(), "Secret art/mine".into()));
    let s = status(&canvas(json!({})), &observed, &time(0));
    assert_eq!(cond(&s, READY).reason, "PasswordSecretMissing");
    assert_eq!(cond(&s, DEGRADED).reason, "PasswordSecretMissing");
}

#[test]
fn a_healthy_canvas_is_unaffected_by_pods_without_image_problems() {
    let mut observed = all(DONE);
    observed.image_problems = [(Component::Redis, BTreeSet::new())].into();
    let pods = [pod(
        json!({"containerStatuses": [running("redis", "redis:7.2")]}),
    )];
    observed.image_problems.extend(image_problems(
        &pods.map(|p| PodState::of_pod(&p).expect("a pod")),
    ));
    assert_eq!(
        status(&canvas(json!({})), &observed, &time(0)),
        status(&canvas(json!({})), &all(DONE), &time(0))
    );
}

#[test]
fn the_kubelet_retrying_a_pull_changes_no_status() {
    let mut c = canvas(json!({}));
    let observe = |reason: &str| {
        let pod = pod(json!({"containerStatuses": [waiting("redis", "redis:nope", reason)]}));
        let mut observed = redis_waiting_for(&[]);
        observed.image_problems = image_problems(&[PodState::of_pod(&pod).expect("a pod")]);
        observed
    };
    let first = status(&c, &observe("ErrImagePull"), &time(0));
    c.status = Some(first.clone());
    assert_eq!(
        status(&c, &observe("ImagePullBackOff"), &time(10)),
        first,
        "no write between the kubelet's attempts"
    );
}

/// A Redis pod of revision `demo-redis-1` with `status`, its spec naming `redis:nope`.
fn pod(status: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": "demo-redis-0", "uid": "uid-0",
            "labels": {
                "app.kubernetes.io/instance": "demo",
                "app.kubernetes.io/component": "redis",
                "controller-revision-hash": "demo-redis-1",
            },
        },
        "spec": {
            "initContainers": [{"name": "init", "image": "busybox:nope"}],
            "containers": [{"name": "redis", "image": "redis:nope"}],
        },
        "status": status,
    }))
    .expect("pod")
}

fn waiting(name: &str, image: &str, reason: &str) -> serde_json::Value {
    json!({
        "name": name, "image": image, "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": reason, "message": "Back-off pulling image: a long story"}},
    })
}

fn running(name: &str, image: &str) -> serde_json::Value {
    json!({
        "name": name, "image": image, "imageID": "sha256:1", "ready": true, "restartCount": 0,
        "state": {"running": {"startedAt": "2027-01-01T00:00:00Z"}},
    })
}

#[test]
fn a_pod_reports_component_readiness_revision_and_image_problems() {
    let stuck = pod(json!({
        "conditions": [{"type": "Ready", "status": "False"}],
        "containerStatuses": [waiting("redis", "docker.io/library/redis:nope", "ImagePullBackOff")],
    }));
    assert_eq!(
        PodState::of_pod(&stuck),
        Some(PodState {
            name: "demo-redis-0".to_owned(),
            uid: "uid-0".to_owned(),
            component: Component::Redis,
            ready: false,
            revision: Some("demo-redis-1".to_owned()),
            image_problems: [ImageProblem {
                image: "redis:nope".to_owned(),
                failure: ImageFailure::Pull,
            }]
            .into(),
        }),
        "the image as the spec names it, not as the runtime expanded it"
    );
    let healthy = pod(json!({
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [running("redis", "redis:7.2")],
    }));
    let healthy = PodState::of_pod(&healthy).expect("a pod");
    assert!(healthy.ready);
    assert!(healthy.image_problems.is_empty());
}

#[test]
fn init_containers_and_containers_missing_from_the_spec_count_too() {
    let pod = pod(json!({
        "initContainerStatuses": [waiting("init", "docker.io/library/busybox:nope", "ErrImageNeverPull")],
        "containerStatuses": [
            waiting("redis", "redis:nope", "PodInitializing"),
            waiting("sidecar", "sidecar:1", "InvalidImageName"),
        ],
    }));
    assert_eq!(
        PodState::of_pod(&pod).expect("a pod").image_problems,
        [
            ImageProblem {
                image: "busybox:nope".to_owned(),
                failure: ImageFailure::NeverPull,
            },
            ImageProblem {
                image: "sidecar:1".to_owned(),
                failure: ImageFailure::InvalidName,
            },
        ]
        .into()
    );
}

#[test]
fn deleted_pods_and_pods_of_no_component_are_not_observed() {
    let mut leaving = pod(json!({
        "containerStatuses": [waiting("redis", "redis:nope", "ImagePullBackOff")],
    }));
    leaving.metadata.deletion_timestamp = Some(time(0));
    assert_eq!(PodState::of_pod(&leaving), None);
    let mut stranger = pod(json!({}));
    stranger
        .labels_mut()
        .insert(LABEL_COMPONENT.to_owned(), "sidecar".to_owned());
    assert_eq!(PodState::of_pod(&stranger), None);
}

#[test]
fn image_problems_gather_each_components_pods() {
    let stuck = |name: &str, component: Component, image: &str| PodState {
        name: name.to_owned(),
        uid: String::new(),
        component,
        ready: false,
        revision: None,
        image_problems: [ImageProblem {
            image: image.to_owned(),
            failure: ImageFailure::Pull,
        }]
        .into(),
    };
    let mut healthy = stuck("demo-gateway-b", Component::Gateway, "x");
    healthy.image_problems.clear();
    assert_eq!(
        image_problems(&[
            stuck("demo-api-a", Component::Api, "app:2"),
            stuck("demo-api-b", Component::Api, "app:2"),
            stuck("demo-api-c", Component::Api, "app:3"),
            healthy,
        ]),
        problems(&[
            (Component::Api, "app:2", ImageFailure::Pull),
            (Component::Api, "app:3", ImageFailure::Pull),
        ])
    );
}

/// A volume that cannot grow is its own condition: Ready and Degraded do not change for it.
#[test]
fn a_volume_that_cannot_grow_leaves_ready_and_degraded_alone() {
    let mut observed = all(DONE);
    observed.storage = Some(StorageState::NotExpandable {
        claim: "data-demo-redis-0".to_owned(),
        class: Some("fixed".to_owned()),
        requested: "1Gi".to_owned(),
        wanted: "2Gi".to_owned(),
    });
    let s = status(&canvas(json!({})), &observed, &time(0));
    assert_eq!(cond(&s, READY).status, "True");
    assert_eq!(cond(&s, DEGRADED).status, "False");
    let storage = cond(&s, STORAGE_READY);
    assert_eq!(
        (storage.status.as_str(), storage.reason.as_str()),
        ("False", EXPANSION_NOT_ALLOWED)
    );
    assert!(storage.message.contains("fixed") && storage.message.contains("2Gi"));
    // Paused, the volume is not looked at: the last known condition stands, unchanged.
    let mut paused = canvas(json!({"paused": true}));
    paused.status = Some(s.clone());
    let later = status(&paused, &all(DONE), &time(60));
    assert_eq!(cond(&later, STORAGE_READY), storage);
}

/// A finished backup pod of the canvas, its upload container having exited with `code` and
/// left `message`.
fn backup_pod(name: &str, code: i32, message: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "app.kubernetes.io/component": "backup",
            "app.kubernetes.io/instance": "demo",
        }},
        "status": {"containerStatuses": [{
            "name": "upload", "image": "pixel-playground:0.1.0", "imageID": "",
            "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "message": message}},
        }]},
    }))
    .expect("pod")
}

fn record(time: &str, object: &str, version: u64) -> String {
    format!(r#"{{"time":"{time}","object":"{object}","version":{version}}}"#)
}

#[test]
fn the_newest_backup_a_pod_reports_stays_in_the_status() {
    let pods = [
        backup_pod(
            "b-1",
            0,
            &record("2026-12-06T21:00:00Z", "art/demo/1.rdb", 10),
        ),
        backup_pod(
            "b-2",
            0,
            &record("2026-12-06T22:00:00Z", "art/demo/2.rdb", 20),
        ),
        // Failed, or saying something else: no backup.
        backup_pod(
            "b-3",
            1,
            &record("2026-12-06T23:00:00Z", "art/demo/3.rdb", 30),
        ),
        backup_pod("b-4", 0, "upload interrupted"),
    ];
    let reported = reported_backup(&pods).expect("a backup");
    assert_eq!(
        (
            reported.object.as_str(),
            reported.version,
            reported.time.0.to_string()
        ),
        ("art/demo/2.rdb", 20, "2026-12-06T22:00:00Z".to_owned())
    );
    // A pod of another component says nothing about backups, whatever its message.
    let mut api = pods[1].clone();
    api.metadata
        .labels
        .as_mut()
        .expect("labels")
        .insert("app.kubernetes.io/component".to_owned(), "api".to_owned());
    assert_eq!(reported_backup(&[api]), None);

    let mut c = canvas(json!({}));
    let observed = Observed {
        backup: Some(reported.clone()),
        ..all(DONE)
    };
    let s = status(&c, &observed, &time(0));
    assert_eq!(s.last_backup.as_ref(), Some(&reported));

    // The Job's pod is gone: the status keeps what it said; an older report changes nothing.
    c.status = Some(s);
    let gone = status(&c, &all(DONE), &time(1));
    assert_eq!(gone.last_backup.as_ref(), Some(&reported));
    let older = Observed {
        backup: reported_backup(&pods[..1]),
        ..all(DONE)
    };
    assert_eq!(
        status(&c, &older, &time(2)).last_backup.as_ref(),
        Some(&reported)
    );
}
