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
