//! The requests one reconcile sends, against a fake API server that holds a canvas's
//! children and pods as the real one would return them: at steady state only reads (also
//! while a pod cannot get its image), for one child changed by hand exactly one server-side
//! apply, to that child, and for a Redis pod stuck on an old revision's image one delete.

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{
    client::Body,
    runtime::events::{Recorder, Reporter},
};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use super::*;
use crate::{
    api::PixelCanvasSpec,
    children::naming::{LABEL_COMPONENT, LABEL_VERSION},
    status::CONTROLLER_REVISION_HASH,
};

const NAMESPACE: &str = "art";
const PASSWORD: &str = "s3cret-s3cret";
const API_TOKEN: &str = "internal-token-0123456789";
const IDENTITY_KEY: &str = "identity-key-0123456789-0123456789";

/// One request the fake received.
#[derive(Debug, Clone)]
struct Sent {
    method: Method,
    path: String,
    query: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// A fake API server. GET answers from `live` by path (a list too), else 404; PATCH and
/// DELETE answer with the object at that path in `converged`, as it reads once the write
/// has taken effect (a `Status` there is the failure answered instead). Anything else
/// answers 405, so an unexpected write fails the reconcile as well as the assertion.
fn fake_api(
    live: BTreeMap<String, Value>,
    converged: BTreeMap<String, Value>,
) -> (Client, Arc<Mutex<Vec<Sent>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let sent = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn({
        let sent = sent.clone();
        async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (request, body) = request.into_parts();
                let path = request.uri.path().to_owned();
                let body = body.collect_bytes().await.expect("body").to_vec();
                sent.lock().expect("lock").push(Sent {
                    method: request.method.clone(),
                    path: path.clone(),
                    query: request.uri.query().unwrap_or_default().to_owned(),
                    content_type: request
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                    body,
                });
                let found = match request.method {
                    Method::GET => live.get(&path),
                    Method::PATCH | Method::DELETE => converged.get(&path),
                    _ => None,
                };
                let (status, body) = match (found, &request.method) {
                    (Some(object), _) if object["kind"] == "Status" => (
                        StatusCode::from_u16(object["code"].as_u64().map_or(500, |c| c as u16))
                            .expect("status code"),
                        object.clone(),
                    ),
                    (Some(object), _) => (StatusCode::OK, object.clone()),
                    (None, &Method::GET) => (StatusCode::NOT_FOUND, failure(404, "NotFound")),
                    (None, _) => (
                        StatusCode::METHOD_NOT_ALLOWED,
                        failure(405, "MethodNotAllowed"),
                    ),
                };
                let response = Response::builder()
                    .status(status)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Body::from(serde_json::to_vec(&body).expect("json")))
                    .expect("response");
                respond.send_response(response);
            }
        }
    });
    (Client::new(service, NAMESPACE), sent)
}

/// A `Status` as the API server sends with an error.
fn failure(code: u16, reason: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": reason, "reason": reason, "code": code,
    })
}

fn canvas() -> PixelCanvas {
    let mut canvas = PixelCanvas::new(
        "demo",
        serde_json::from_value::<PixelCanvasSpec>(json!({})).expect("spec"),
    );
    canvas.meta_mut().namespace = Some(NAMESPACE.to_owned());
    canvas.meta_mut().uid = Some("0000-uid".to_owned());
    canvas.meta_mut().generation = Some(1);
    canvas
}

/// `desired` as the API server returns it once applied: with the applied-hash annotation,
/// the metadata and defaults the server adds, and (for workloads) a status that reports
/// every replica ready and rolled out.
fn as_served<K>(desired: &K) -> (String, Value)
where
    K: Resource<DynamicType = ()> + Serialize + Clone,
{
    let path = format!(
        "{}/{}",
        K::url_path(&(), Some(NAMESPACE)),
        desired.name_any()
    );
    let mut object =
        serde_json::to_value(annotated(desired, content_digest(desired).expect("hash")))
            .expect("json");
    let metadata = object["metadata"].as_object_mut().expect("metadata");
    metadata.insert(
        "uid".to_owned(),
        json!(format!("uid-{}", desired.name_any())),
    );
    metadata.insert("resourceVersion".to_owned(), json!("17"));
    metadata.insert("generation".to_owned(), json!(1));
    metadata.insert(
        "managedFields".to_owned(),
        json!([{"manager": MANAGER, "operation": "Apply"}]),
    );
    let replicas = object["spec"]["replicas"].as_i64();
    match K::kind(&()).as_ref() {
        "Deployment" => {
            let spec = object["spec"].as_object_mut().expect("spec");
            spec.entry("progressDeadlineSeconds").or_insert(json!(600));
            spec.entry("revisionHistoryLimit").or_insert(json!(10));
            object["status"] = json!({
                "observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                "readyReplicas": replicas, "availableReplicas": replicas,
            });
        }
        "StatefulSet" => {
            object["status"] = json!({
                "observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                "readyReplicas": replicas, "currentRevision": "demo-redis-1",
                "updateRevision": "demo-redis-1",
            });
        }
        _ => {}
    }
    (path, object)
}

/// Where the canvas's pods are listed.
const PODS: &str = "/api/v1/namespaces/art/pods";
/// The Redis pod's volume claim.
const CLAIM: &str = "/api/v1/namespaces/art/persistentvolumeclaims/data-demo-redis-0";
/// The Redis pod.
const REDIS_POD: &str = "/api/v1/namespaces/art/pods/demo-redis-0";
/// The Redis StatefulSet.
const REDIS_SET: &str = "/apis/apps/v1/namespaces/art/statefulsets/demo-redis";

/// A pod of `component` at `revision` running `image`, or waiting for it with `reason`.
fn pod(component: Component, revision: &str, image: &str, waiting: Option<&str>) -> Value {
    let name = format!("demo-{}-0", component.as_str());
    let ready = waiting.is_none();
    let state = match waiting {
        Some(reason) => json!({"waiting": {"reason": reason, "message": "Back-off pulling image"}}),
        None => json!({"running": {"startedAt": "2027-01-01T00:00:00Z"}}),
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": NAMESPACE, "uid": format!("uid-{name}-{revision}"),
            "resourceVersion": "18",
            "labels": {
                LABEL_INSTANCE: "demo", LABEL_COMPONENT: component.as_str(),
                LABEL_MANAGED_BY: MANAGER, CONTROLLER_REVISION_HASH: revision,
            },
        },
        "spec": {"containers": [{"name": component.as_str(), "image": image}]},
        "status": {
            "phase": if ready { "Running" } else { "Pending" },
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            "containerStatuses": [{
                "name": component.as_str(), "image": image, "imageID": "", "ready": ready,
                "restartCount": 0, "state": state,
            }],
        },
    })
}

/// The pod list the API server answers with.
fn pod_list(pods: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "20"}, "items": pods})
}

/// A canvas whose children are all as desired, the objects the API server holds for
/// them (by path), and the canvas with the status a reconcile of that world computes.
fn steady_world(paused: bool) -> (PixelCanvas, BTreeMap<String, Value>) {
    steady_world_with(paused, &Defaults::default())
}

/// [`steady_world`] as an operator with `defaults` leaves it.
fn steady_world_with(paused: bool, defaults: &Defaults) -> (PixelCanvas, BTreeMap<String, Value>) {
    world(paused, defaults, |_| {})
}

/// A canvas, the objects the API server holds for its children and pods (every child as
/// desired and every pod healthy, then changed by `edit`), and the canvas with the status
/// a reconcile of that world computes.
fn world(
    paused: bool,
    defaults: &Defaults,
    edit: impl FnOnce(&mut BTreeMap<String, Value>),
) -> (PixelCanvas, BTreeMap<String, Value>) {
    let mut canvas = canvas();
    canvas.spec.paused = paused;
    world_of(canvas, defaults, edit)
}

/// [`world`] for a canvas of its own.
fn world_of(
    mut canvas: PixelCanvas,
    defaults: &Defaults,
    edit: impl FnOnce(&mut BTreeMap<String, Value>),
) -> (PixelCanvas, BTreeMap<String, Value>) {
    let names = Names::new(&canvas.name_any());
    let credentials = Credentials {
        redis_password: PASSWORD.to_owned(),
        api_token: API_TOKEN.to_owned(),
        identity: IdentityKeys {
            current: IDENTITY_KEY.to_owned(),
            ..IdentityKeys::default()
        },
        moderator_token: "moderator-token-0123456789".to_owned(),
        oidc_client_secret: String::new(),
    };
    let inputs = Inputs::new(&canvas, credentials, defaults).expect("inputs");
    let desired = children::desired(&inputs).apply;
    let mut objects = BTreeMap::new();
    let mut paths = Vec::new();
    for child in &desired {
        let (path, object) = with_child!(child, |desired| as_served(desired));
        objects.insert(path.clone(), object);
        paths.push(path);
    }
    let pods = Component::ALL
        .into_iter()
        .map(|component| pod(component, "demo-redis-1", "image:1", None))
        .collect();
    objects.insert(PODS.to_owned(), pod_list(pods));
    // The claim the StatefulSet made, as large as the spec asks.
    let size = &canvas.spec.redis.storage.size.0;
    objects.insert(
        CLAIM.to_owned(),
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": names.redis_claim(), "namespace": NAMESPACE},
            "spec": {"storageClassName": "standard", "resources": {"requests": {"storage": size}}},
            "status": {"phase": "Bound", "capacity": {"storage": size}},
        }),
    );
    edit(&mut objects);

    let mut workloads = Workloads::new();
    for (child, path) in desired.iter().zip(&paths) {
        let live = with_child!(child, |_desired, wrap| wrap(
            serde_json::from_value(objects[path].clone()).expect("typed")
        ));
        if let Some((component, state)) = workload_state(&live, &names) {
            workloads.insert(component, state);
        }
    }
    let listed = serde_json::from_value::<Vec<Pod>>(objects[PODS]["items"].clone()).expect("pods");
    let pods: Vec<PodState> = listed.iter().filter_map(PodState::of_pod).collect();
    let claim: Option<PersistentVolumeClaim> = objects
        .get(CLAIM)
        .map(|claim| serde_json::from_value(claim.clone()).expect("claim"));
    let observed = Observed {
        workloads,
        image_problems: status::image_problems(&pods),
        failure: None,
        url: url_of(&canvas, defaults),
        storage: (!canvas.spec.paused).then(|| {
            crate::storage::plan(
                &names.redis_claim(),
                &canvas.spec.redis.storage.size,
                claim.as_ref(),
                None,
            )
            .state
        }),
        backup: status::reported_backup(&listed),
    };
    let before = Time(Timestamp::from_second(1_800_000_000).expect("timestamp"));
    canvas.status = Some(status::status(&canvas, &observed, &before));
    (canvas, objects)
}

async fn reconcile_against(
    canvas: PixelCanvas,
    live: BTreeMap<String, Value>,
    converged: BTreeMap<String, Value>,
) -> (Result<Action, ReconcileError>, Vec<Sent>) {
    reconcile_with(canvas, live, converged, Defaults::default()).await
}

/// [`reconcile_against`] by an operator with `defaults`.
async fn reconcile_with(
    canvas: PixelCanvas,
    live: BTreeMap<String, Value>,
    converged: BTreeMap<String, Value>,
    defaults: Defaults,
) -> (Result<Action, ReconcileError>, Vec<Sent>) {
    let (client, sent) = fake_api(live, converged);
    let reporter = Reporter {
        controller: MANAGER.to_owned(),
        instance: None,
    };
    let context = Arc::new(Context::new(
        client.clone(),
        Recorder::new(client, reporter),
        Metrics::register(&mut Registry::default()),
        defaults,
    ));
    let result = reconcile(Arc::new(canvas), context).await;
    let sent = sent.lock().expect("lock").clone();
    (result, sent)
}

/// Every read a reconcile of the steady world makes, in order: the generated Secrets (the
/// credentials), each desired child, the children that must not exist, then the canvas's pods.
/// The workloads are not read again to observe them: the apply step already holds them.
const STEADY_READS: [&str; 27] = [
    "/api/v1/namespaces/art/secrets/demo-redis-auth",
    "/api/v1/namespaces/art/secrets/demo-internal",
    "/api/v1/namespaces/art/secrets/demo-moderator",
    "/api/v1/namespaces/art/configmaps/demo-config",
    "/api/v1/namespaces/art/secrets/demo-redis-auth",
    "/api/v1/namespaces/art/secrets/demo-internal",
    "/api/v1/namespaces/art/secrets/demo-moderator",
    "/apis/networking.k8s.io/v1/namespaces/art/networkpolicies/demo-redis",
    "/apis/networking.k8s.io/v1/namespaces/art/networkpolicies/demo-api",
    "/apis/networking.k8s.io/v1/namespaces/art/networkpolicies/demo-gateway",
    "/apis/networking.k8s.io/v1/namespaces/art/networkpolicies/demo-frontend",
    "/api/v1/namespaces/art/services/demo-api",
    "/apis/apps/v1/namespaces/art/deployments/demo-api",
    "/apis/policy/v1/namespaces/art/poddisruptionbudgets/demo-api",
    "/api/v1/namespaces/art/services/demo-gateway",
    "/apis/apps/v1/namespaces/art/deployments/demo-gateway",
    "/apis/policy/v1/namespaces/art/poddisruptionbudgets/demo-gateway",
    "/api/v1/namespaces/art/services/demo-frontend",
    "/apis/apps/v1/namespaces/art/deployments/demo-frontend",
    "/apis/policy/v1/namespaces/art/poddisruptionbudgets/demo-frontend",
    "/api/v1/namespaces/art/services/demo-redis",
    "/apis/apps/v1/namespaces/art/statefulsets/demo-redis",
    "/apis/networking.k8s.io/v1/namespaces/art/ingresses/demo",
    // No backups: their NetworkPolicy and CronJob must not exist (one read each, found
    // absent).
    "/apis/networking.k8s.io/v1/namespaces/art/networkpolicies/demo-backup",
    BACKUP_CRON_JOB,
    PODS,
    CLAIM,
];

const BACKUP_CRON_JOB: &str = "/apis/batch/v1/namespaces/art/cronjobs/demo-backup";

fn reads(sent: &[Sent]) -> Vec<&str> {
    sent.iter()
        .filter(|s| s.method == Method::GET)
        .map(|s| s.path.as_str())
        .collect()
}

fn writes(sent: &[Sent]) -> Vec<(Method, &str)> {
    sent.iter()
        .filter(|s| s.method != Method::GET)
        .map(|s| (s.method.clone(), s.path.as_str()))
        .collect()
}

#[tokio::test]
async fn steady_state_sends_only_reads() {
    let (canvas, objects) = steady_world(false);
    let (result, sent) = reconcile_against(canvas, objects.clone(), objects).await;
    assert_eq!(result.expect("reconciled"), Action::requeue(RESYNC));
    assert_eq!(writes(&sent), [], "{sent:#?}");
    assert_eq!(reads(&sent), STEADY_READS, "{sent:#?}");
    let list = sent.iter().find(|s| s.path == PODS).expect("the pod list");
    assert_eq!(
        list.query,
        "&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dpixel-operator%2Capp.kubernetes.io%2Finstance%3Ddemo",
        "only this canvas's pods"
    );
}

#[tokio::test]
async fn a_child_changed_by_hand_is_applied_and_nothing_else_is_written() {
    let (canvas, converged) = steady_world(false);
    let gateway = "/apis/apps/v1/namespaces/art/deployments/demo-gateway";
    let mut live = converged.clone();
    let scaled = live.get_mut(gateway).expect("gateway Deployment");
    assert_ne!(scaled["spec"]["replicas"], json!(5));
    scaled["spec"]["replicas"] = json!(5);

    let (result, sent) = reconcile_against(canvas, live, converged).await;
    assert_eq!(result.expect("reconciled"), Action::requeue(RESYNC));
    assert_eq!(writes(&sent), [(Method::PATCH, gateway)], "{sent:#?}");
    let apply = sent
        .iter()
        .find(|s| s.method == Method::PATCH)
        .expect("the apply");
    assert_eq!(
        apply.content_type.as_deref(),
        Some("application/apply-patch+yaml"),
        "a server-side apply"
    );
    let query: Vec<&str> = apply.query.split('&').collect();
    assert!(
        query.contains(&format!("fieldManager={MANAGER}").as_str())
            && query.contains(&"force=true"),
        "{query:?}"
    );
    assert_eq!(reads(&sent), STEADY_READS, "{sent:#?}");
}

#[tokio::test]
async fn new_operator_defaults_apply_exactly_the_workloads_that_use_them() {
    let (canvas, live) = steady_world(false);
    let defaults = Defaults {
        redis_image: "registry.local:5000/redis:7.2".to_owned(),
        image_repository: "registry.local:5000/pixel-playground".to_owned(),
        ..Defaults::default()
    };
    let (_, converged) = steady_world_with(false, &defaults);
    let (result, sent) =
        reconcile_with(canvas.clone(), live, converged.clone(), defaults.clone()).await;
    assert_eq!(result.expect("reconciled"), Action::requeue(RESYNC));
    assert_eq!(
        writes(&sent),
        [
            (
                Method::PATCH,
                "/apis/apps/v1/namespaces/art/deployments/demo-api"
            ),
            (
                Method::PATCH,
                "/apis/apps/v1/namespaces/art/deployments/demo-gateway"
            ),
            (
                Method::PATCH,
                "/apis/apps/v1/namespaces/art/deployments/demo-frontend"
            ),
            (
                Method::PATCH,
                "/apis/apps/v1/namespaces/art/statefulsets/demo-redis"
            ),
        ],
        "{sent:#?}"
    );
    // Once applied, the same operator is at steady state again.
    let (result, sent) = reconcile_with(canvas, converged.clone(), converged, defaults).await;
    assert_eq!(result.expect("reconciled"), Action::requeue(RESYNC));
    assert_eq!(writes(&sent), [], "{sent:#?}");
}

#[tokio::test]
async fn a_paused_canvas_reads_its_workloads_and_applies_nothing() {
    let (canvas, objects) = steady_world(true);
    let (result, sent) = reconcile_against(canvas, objects.clone(), objects).await;
    assert_eq!(result.expect("reconciled"), Action::requeue(RESYNC));
    assert_eq!(writes(&sent), [], "{sent:#?}");
    assert_eq!(
        reads(&sent),
        [
            "/api/v1/namespaces/art/secrets/demo-redis-auth",
            "/api/v1/namespaces/art/secrets/demo-internal",
            "/api/v1/namespaces/art/secrets/demo-moderator",
            "/apis/apps/v1/namespaces/art/statefulsets/demo-redis",
            "/apis/apps/v1/namespaces/art/deployments/demo-api",
            "/apis/apps/v1/namespaces/art/deployments/demo-gateway",
            "/apis/apps/v1/namespaces/art/deployments/demo-frontend",
            PODS,
        ],
        "{sent:#?}"
    );
}

/// The writes other than events (which the recorder sends as it sees fit).
fn object_writes(sent: &[Sent]) -> Vec<(Method, &str)> {
    writes(sent)
        .into_iter()
        .filter(|(_, path)| !path.starts_with("/apis/events.k8s.io/"))
        .collect()
}

/// The Redis StatefulSet rolling out `update_revision` with no pod ready, and its pod
/// `redis` (a [`pod`]).
fn redis_rolling_out(objects: &mut BTreeMap<String, Value>, update_revision: &str, redis: Value) {
    let status = &mut objects.get_mut(REDIS_SET).expect("StatefulSet")["status"];
    status["readyReplicas"] = json!(0);
    status["updatedReplicas"] = json!(0);
    status["currentRevision"] = json!("demo-redis-1");
    status["updateRevision"] = json!(update_revision);
    objects.get_mut(PODS).expect("pods")["items"][0] = redis;
}

#[tokio::test]
async fn a_canvas_stuck_on_a_missing_image_sends_only_reads() {
    let (canvas, objects) = world(false, &Defaults::default(), |objects| {
        let stuck = pod(
            Component::Redis,
            "demo-redis-1",
            "redis:nope",
            Some("ImagePullBackOff"),
        );
        redis_rolling_out(objects, "demo-redis-1", stuck);
    });
    let ready = canvas
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
        .expect("Ready");
    assert_eq!(
        (ready.reason.as_str(), ready.message.as_str()),
        (
            status::IMAGE_PULL_FAILED,
            "redis: image \"redis:nope\" cannot be pulled (ErrImagePull/ImagePullBackOff)"
        )
    );
    let (result, sent) = reconcile_against(canvas, objects.clone(), objects).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(WHILE_PROGRESSING)
    );
    assert_eq!(
        writes(&sent),
        [],
        "a pod of the current revision waits for its image: nothing to delete, status unchanged"
    );
    assert_eq!(reads(&sent), STEADY_READS, "{sent:#?}");
}

#[tokio::test]
async fn a_redis_pod_stuck_on_an_old_revisions_image_is_deleted_once() {
    // The spec's image was fixed: the StatefulSet rolls out revision 2, but its pod of
    // revision 1 never became ready, so the StatefulSet controller would wait for it forever.
    let stuck = pod(
        Component::Redis,
        "demo-redis-1",
        "redis:nope",
        Some("ImagePullBackOff"),
    );
    let (canvas, live) = world(false, &Defaults::default(), |objects| {
        redis_rolling_out(objects, "demo-redis-2", stuck.clone());
    });
    let mut converged = live.clone();
    let mut deleted = stuck;
    deleted["metadata"]["deletionTimestamp"] = json!("2027-01-01T00:00:00Z");
    converged.insert(REDIS_POD.to_owned(), deleted);
    let status_path = canvas_status_path();
    accept_status_write(&mut converged, &canvas);

    let (result, sent) = reconcile_against(canvas.clone(), live.clone(), converged.clone()).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(WHILE_PROGRESSING)
    );
    assert_eq!(
        object_writes(&sent),
        [
            (Method::DELETE, REDIS_POD),
            (Method::PATCH, status_path.as_str())
        ],
        "the stuck pod, then the status (it no longer waits for that pod's image)"
    );
    let delete = sent
        .iter()
        .find(|s| s.method == Method::DELETE)
        .expect("the delete");
    let options: Value = serde_json::from_slice(&delete.body).expect("DeleteOptions");
    assert_eq!(
        options["preconditions"]["uid"],
        json!("uid-demo-redis-0-demo-redis-1"),
        "only the pod that was observed: {options}"
    );

    // The StatefulSet controller made the pod again at revision 2: nothing more to delete,
    // even while it waits for its image.
    let mut replaced = live;
    replaced.get_mut(PODS).expect("pods")["items"][0] = pod(
        Component::Redis,
        "demo-redis-2",
        "redis:7.2-alpine",
        Some("ContainerCreating"),
    );
    let (result, sent) = reconcile_against(canvas, replaced, converged).await;
    result.expect("reconciled");
    assert!(
        object_writes(&sent)
            .iter()
            .all(|(method, _)| method != Method::DELETE),
        "{sent:#?}"
    );
}

#[tokio::test]
async fn a_paused_canvas_leaves_a_stuck_pod_alone() {
    let (canvas, objects) = world(true, &Defaults::default(), |objects| {
        let stuck = pod(
            Component::Redis,
            "demo-redis-1",
            "redis:nope",
            Some("ErrImagePull"),
        );
        redis_rolling_out(objects, "demo-redis-2", stuck);
    });
    let (result, sent) = reconcile_against(canvas, objects.clone(), objects).await;
    result.expect("reconciled");
    assert_eq!(writes(&sent), [], "{sent:#?}");
}

#[tokio::test]
async fn a_stuck_pod_that_cannot_be_deleted_fails_the_reconcile_and_says_so() {
    let (canvas, live) = world(false, &Defaults::default(), |objects| {
        let stuck = pod(
            Component::Redis,
            "demo-redis-1",
            "redis:nope",
            Some("ImagePullBackOff"),
        );
        redis_rolling_out(objects, "demo-redis-2", stuck);
    });
    let status_path = canvas_status_path();
    // The pod's DELETE is refused (the fake answers 405), the status is written.
    let converged = BTreeMap::from([(
        status_path.clone(),
        serde_json::to_value(&canvas).expect("canvas"),
    )]);
    let (result, sent) = reconcile_against(canvas, live, converged).await;
    let error = result.expect_err("the delete failed");
    assert_eq!(error.reason(), "KubernetesApiError");
    assert_eq!(
        error.to_string(),
        "cannot delete Pod demo-redis-0",
        "and so Degraded says"
    );
    assert_eq!(
        object_writes(&sent),
        [
            (Method::DELETE, REDIS_POD),
            (Method::PATCH, status_path.as_str())
        ]
    );
    let patch: Value = serde_json::from_slice(
        &sent
            .iter()
            .find(|s| s.method == Method::PATCH)
            .expect("the status")
            .body,
    )
    .expect("json");
    let degraded = patch["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == status::DEGRADED)
        .expect("Degraded")
        .clone();
    assert_eq!(degraded["reason"], json!("KubernetesApiError"));
    assert!(
        degraded["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("cannot delete Pod demo-redis-0: ")),
        "{degraded}"
    );
}

/// The canvas of [`canvas`] with another image tag and a larger volume, as a user would
/// change it on day two.
fn upgraded() -> PixelCanvas {
    let mut canvas = canvas();
    canvas.spec.image.tag = Some("9.9.9".to_owned());
    canvas.spec.redis.storage.size = Quantity("5Gi".to_owned());
    canvas
}

/// The local cluster's StorageClass, as the API server serves it.
const STANDARD_CLASS: &str = "/apis/storage.k8s.io/v1/storageclasses/standard";

fn storage_class(expandable: bool) -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "standard"}, "provisioner": "example.com/disk",
        "allowVolumeExpansion": expandable,
    })
}

/// A larger `spec.redis.storage.size` raises the claim's request, once, when its class
/// allows expansion; StorageReady says the volume is growing.
#[tokio::test]
async fn a_larger_volume_is_asked_of_the_claim_when_its_class_allows() {
    let (_, mut live) = steady_world(false);
    live.insert(STANDARD_CLASS.to_owned(), storage_class(true));
    let (canvas, mut converged) = world_of(upgraded(), &Defaults::default(), |_| {});
    accept_status_write(&mut converged, &canvas);
    let (result, sent) = reconcile_against(canvas, live, converged).await;
    result.expect("reconciled");
    let patch = written(&sent, CLAIM);
    assert_eq!(
        patch,
        json!({"spec": {"resources": {"requests": {"storage": "5Gi"}}}})
    );
    let storage = condition_written(&sent, status::STORAGE_READY);
    assert_eq!(storage["reason"], "Expanding", "{storage}");
    assert_eq!(
        storage["message"],
        "data-demo-redis-0 is growing from 1Gi to 5Gi"
    );
}

/// The claim store lags the operator's own patch: the reconcile after the one that raised
/// the claim's request, before the claim's watch event arrived, does not raise it again.
#[tokio::test]
async fn with_synced_stores_a_volume_is_grown_once_though_its_store_lags() {
    let (_, mut live) = steady_world(false);
    live.insert(STANDARD_CLASS.to_owned(), storage_class(true));
    live.get_mut(CLAIM).expect("claim")["metadata"]["resourceVersion"] = json!("1");
    let (canvas, mut converged) = world_of(upgraded(), &Defaults::default(), |objects| {
        objects.get_mut(CLAIM).expect("claim")["metadata"]["resourceVersion"] = json!("2");
    });
    accept_status_write(&mut converged, &canvas);
    let (client, sent) = fake_api(live.clone(), converged);
    let context = cached_context(client, &live);
    for _ in 0..2 {
        reconcile(Arc::new(canvas.clone()), context.clone())
            .await
            .expect("reconciled");
    }
    let sent = sent.lock().expect("lock").clone();
    let claim_patches = writes(&sent)
        .into_iter()
        .filter(|(_, path)| *path == CLAIM)
        .count();
    assert_eq!(claim_patches, 1, "{sent:#?}");
}

/// A class that does not allow expansion: nothing is written to the claim, StorageReady
/// says why, and every other child is still applied (the new tag reaches the Deployments).
#[tokio::test]
async fn a_volume_whose_class_cannot_grow_says_so_and_holds_nothing_up() {
    let (_, mut live) = steady_world(false);
    live.insert(STANDARD_CLASS.to_owned(), storage_class(false));
    let (canvas, mut converged) = world_of(upgraded(), &Defaults::default(), |_| {});
    accept_status_write(&mut converged, &canvas);
    let (result, sent) = reconcile_against(canvas, live, converged).await;
    result.expect("no failure: a volume that cannot grow is a state, not an error");
    assert!(
        !sent
            .iter()
            .any(|s| s.path == CLAIM && s.method != Method::GET),
        "the claim is left as it is"
    );
    let storage = condition_written(&sent, status::STORAGE_READY);
    assert_eq!(
        (storage["status"].as_str(), storage["reason"].as_str()),
        (Some("False"), Some(status::EXPANSION_NOT_ALLOWED))
    );
    assert_eq!(
        storage["message"],
        "the StorageClass standard does not allow volume expansion, so data-demo-redis-0 \
         stays at 1Gi while spec.redis.storage.size asks 5Gi"
    );
    for deployment in ["demo-api", "demo-gateway", "demo-frontend"] {
        let path = format!("/apis/apps/v1/namespaces/art/deployments/{deployment}");
        let image = &written(&sent, &path)["spec"]["template"]["spec"]["containers"][0]["image"];
        assert_eq!(image, &json!("pixel-playground:9.9.9"), "{deployment}");
    }
}

/// The condition `type_` of the status the reconcile wrote.
fn condition_written(sent: &[Sent], type_: &str) -> Value {
    written(sent, &canvas_status_path())["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"))
        .clone()
}

/// The body the reconcile sent with its write to `path`.
fn written(sent: &[Sent], path: &str) -> Value {
    let write = sent
        .iter()
        .find(|s| s.method == Method::PATCH && s.path == path)
        .unwrap_or_else(|| panic!("a write to {path}: {sent:#?}"));
    serde_json::from_slice(&write.body).expect("json")
}

#[tokio::test]
async fn an_upgrade_keeps_the_live_claim_templates_and_leaves_redis_pods_be() {
    let (_, mut live) = steady_world(false);
    let set = live.get_mut(REDIS_SET).expect("StatefulSet");
    let claims = &mut set["spec"]["volumeClaimTemplates"];
    claims[0]["metadata"]["labels"][LABEL_VERSION] = json!("0.0.1");
    claims[0]["status"] = json!({"phase": "Pending"});
    let created_with = claims.clone();
    let template_before = set["spec"]["template"].clone();
    let (canvas, mut converged) = world_of(upgraded(), &Defaults::default(), |_| {});
    live.insert(STANDARD_CLASS.to_owned(), storage_class(true));
    accept_status_write(&mut converged, &canvas);

    let (result, sent) = reconcile_against(canvas, live, converged).await;
    result.expect("reconciled");
    let applied = written(&sent, REDIS_SET);
    assert_eq!(
        applied["spec"]["volumeClaimTemplates"], created_with,
        "immutable: the templates go back as the StatefulSet holds them"
    );
    assert_eq!(
        applied["spec"]["template"], template_before,
        "a new tag does not restart Redis"
    );
    for deployment in ["demo-api", "demo-gateway", "demo-frontend"] {
        let path = format!("/apis/apps/v1/namespaces/art/deployments/{deployment}");
        let image = &written(&sent, &path)["spec"]["template"]["spec"]["containers"][0]["image"];
        assert_eq!(image, &json!("pixel-playground:9.9.9"), "{deployment}");
    }
}

#[tokio::test]
async fn a_child_that_cannot_be_applied_holds_up_none_of_the_others_and_is_named() {
    let (_, live) = steady_world(false);
    let (canvas, mut converged) = world_of(upgraded(), &Defaults::default(), |_| {});
    // The fake refuses the StatefulSet's apply (405), as the API server refused an
    // immutable field; the status write goes through.
    converged.remove(REDIS_SET);
    let status_path = canvas_status_path();
    accept_status_write(&mut converged, &canvas);

    let (result, sent) = reconcile_against(canvas, live, converged).await;
    let error = result.expect_err("the StatefulSet failed");
    assert_eq!(error.to_string(), "cannot apply StatefulSet demo-redis");
    let written_paths: Vec<&str> = object_writes(&sent).into_iter().map(|(_, p)| p).collect();
    let after_redis = &written_paths[written_paths
        .iter()
        .position(|p| *p == REDIS_SET)
        .expect("the StatefulSet was tried")..];
    assert!(
        after_redis.contains(&"/apis/networking.k8s.io/v1/namespaces/art/ingresses/demo"),
        "the children after it are still applied: {written_paths:#?}"
    );
    for deployment in ["demo-api", "demo-gateway", "demo-frontend"] {
        let path = format!("/apis/apps/v1/namespaces/art/deployments/{deployment}");
        assert!(written_paths.contains(&path.as_str()), "{path}");
    }
    let degraded = written(&sent, &status_path)["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == status::DEGRADED)
        .expect("Degraded")
        .clone();
    assert_eq!(
        degraded["message"],
        json!("cannot apply StatefulSet demo-redis: MethodNotAllowed"),
        "the object and the API server's message, no debug dump"
    );
}

/// Where the canvas's status is written.
/// Lets the fake API server take the reconcile's status write for `canvas`.
fn accept_status_write(converged: &mut BTreeMap<String, Value>, canvas: &PixelCanvas) {
    converged.insert(
        canvas_status_path(),
        serde_json::to_value(canvas).expect("canvas"),
    );
}

fn canvas_status_path() -> String {
    format!(
        "{}/demo/status",
        PixelCanvas::url_path(&(), Some(NAMESPACE))
    )
}

/// Synced stores holding what the fake API server holds: each child by its kind, and the
/// pods of the pod list.
fn caches_of(objects: &BTreeMap<String, Value>) -> Caches {
    use kube::runtime::watcher;
    fn sync<K>(writer: &mut kube::runtime::reflector::store::Writer<K>, objects: &[Value])
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + 'static,
    {
        writer.apply_watcher_event(&watcher::Event::Init);
        for object in objects {
            let typed: K = serde_json::from_value(object.clone()).expect("typed");
            writer.apply_watcher_event(&watcher::Event::InitApply(typed));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
    }
    let of_kind = |kind: &str| -> Vec<Value> {
        objects
            .values()
            .flat_map(|object| match object["kind"].as_str() {
                Some("PodList") => object["items"].as_array().cloned().unwrap_or_default(),
                _ => vec![object.clone()],
            })
            .filter(|object| object["kind"] == kind)
            .collect()
    };
    let (caches, mut writers) = Caches::new();
    sync(&mut writers.stateful_sets, &of_kind("StatefulSet"));
    sync(&mut writers.deployments, &of_kind("Deployment"));
    sync(&mut writers.services, &of_kind("Service"));
    sync(&mut writers.config_maps, &of_kind("ConfigMap"));
    sync(
        &mut writers.pod_disruption_budgets,
        &of_kind("PodDisruptionBudget"),
    );
    sync(&mut writers.network_policies, &of_kind("NetworkPolicy"));
    sync(&mut writers.ingresses, &of_kind("Ingress"));
    sync(&mut writers.cron_jobs, &of_kind("CronJob"));
    sync(&mut writers.secrets, &of_kind("Secret"));
    sync(&mut writers.claims, &of_kind("PersistentVolumeClaim"));
    writers.pods.apply_watcher_event(&watcher::Event::Init);
    for pod in of_kind("Pod") {
        let pod: Pod = serde_json::from_value(pod).expect("a pod");
        writers
            .pods
            .apply_watcher_event(&crate::caches::CachedPod::event(
                &watcher::Event::InitApply(pod),
            ));
    }
    writers.pods.apply_watcher_event(&watcher::Event::InitDone);
    caches
}

/// An operator's context on `client` whose stores hold `cached` (what its watches saw).
fn cached_context(client: Client, cached: &BTreeMap<String, Value>) -> Arc<Context> {
    let reporter = Reporter {
        controller: MANAGER.to_owned(),
        instance: None,
    };
    Arc::new(
        Context::new(
            client.clone(),
            Recorder::new(client, reporter),
            Metrics::register(&mut Registry::default()),
            Defaults::default(),
        )
        .with_caches(caches_of(cached)),
    )
}

/// [`reconcile_against`] by an operator whose stores hold `cached` (what its watches saw).
async fn reconcile_cached(
    canvas: PixelCanvas,
    cached: &BTreeMap<String, Value>,
    live: BTreeMap<String, Value>,
    converged: BTreeMap<String, Value>,
) -> (Result<Action, ReconcileError>, Vec<Sent>) {
    let (client, sent) = fake_api(live, converged);
    let result = reconcile(Arc::new(canvas), cached_context(client, cached)).await;
    let sent = sent.lock().expect("lock").clone();
    (result, sent)
}

#[tokio::test]
async fn with_synced_stores_a_steady_reconcile_sends_no_request() {
    let (canvas, objects) = steady_world(false);
    let (result, sent) = reconcile_cached(canvas, &objects.clone(), objects.clone(), objects).await;
    assert_eq!(result.expect("reconciled"), Action::requeue(RESYNC));
    assert!(sent.is_empty(), "{sent:#?}");
}

/// The stores are what the reconcile believes: a child changed behind the operator's back
/// (its watch event in the store) is applied again, and only it.
#[tokio::test]
async fn with_synced_stores_a_child_changed_by_hand_is_repaired() {
    let (canvas, converged) = steady_world(false);
    let gateway = "/apis/apps/v1/namespaces/art/deployments/demo-gateway";
    let mut changed = converged.clone();
    changed.get_mut(gateway).expect("gateway Deployment")["spec"]["replicas"] = json!(5);
    let (result, sent) = reconcile_cached(canvas, &changed.clone(), changed, converged).await;
    assert_eq!(result.expect("reconciled"), Action::requeue(RESYNC));
    assert_eq!(writes(&sent), [(Method::PATCH, gateway)], "{sent:#?}");
    assert_eq!(reads(&sent), Vec::<&str>::new(), "{sent:#?}");
}

/// The StatefulSet controller has not made the Redis claim yet. Its template carries the
/// operator's label, so the synced claim store would hold it: its absence is read there,
/// with no GET, and the status says the claim is pending.
#[tokio::test]
async fn with_synced_stores_a_claim_not_made_yet_is_not_asked_for() {
    let (canvas, mut converged) = steady_world(false);
    converged.remove(CLAIM);
    accept_status_write(&mut converged, &canvas);
    let (result, sent) =
        reconcile_cached(canvas, &converged.clone(), converged.clone(), converged).await;
    result.expect("reconciled");
    assert_eq!(reads(&sent), Vec::<&str>::new(), "{sent:#?}");
    let storage = condition_written(&sent, status::STORAGE_READY);
    assert_eq!(storage["status"], "False", "{storage}");
}

/// A store lags a deletion: a child no longer wanted that the store still holds but the
/// API server has deleted already (its watch event not yet in) is gone, not an error.
#[tokio::test]
async fn with_synced_stores_a_child_deleted_before_its_watch_event_is_not_an_error() {
    let (canvas, converged) = steady_world(false);
    let name = Names::new("demo").backup();
    let path = format!("/apis/batch/v1/namespaces/{NAMESPACE}/cronjobs/{name}");
    let mut cached = converged.clone();
    cached.insert(
        path.clone(),
        json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {
                "name": name, "namespace": NAMESPACE, "resourceVersion": "7",
                "ownerReferences": [{
                    "apiVersion": "pixel-playground.dev/v1alpha1", "kind": "PixelCanvas",
                    "name": "demo", "uid": "0000-uid", "controller": true,
                }],
            },
            "spec": {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}}},
        }),
    );
    let mut deleted = converged.clone();
    deleted.insert(path.clone(), failure(404, "NotFound"));
    let (result, sent) = reconcile_cached(canvas, &cached, converged, deleted).await;
    assert_eq!(result.expect("reconciled"), Action::requeue(RESYNC));
    assert_eq!(
        writes(&sent),
        [(Method::DELETE, path.as_str())],
        "{sent:#?}"
    );
}

/// A new canvas: the synced stores hold none of its children, so each is applied with no
/// read before it.
#[tokio::test]
async fn with_synced_stores_a_new_canvas_reads_no_child_before_applying_it() {
    let (mut canvas, mut converged) = steady_world(false);
    canvas.status = None;
    accept_status_write(&mut converged, &canvas);
    let (result, sent) =
        reconcile_cached(canvas, &BTreeMap::new(), BTreeMap::new(), converged.clone()).await;
    result.expect("reconciled");
    // Only the generated Secrets are read, once each: their absence is confirmed before
    // new credentials are made.
    let mut children_read = reads(&sent);
    children_read.sort_unstable();
    let secrets: Vec<&str> = converged
        .keys()
        .map(String::as_str)
        .filter(|path| path.contains("/secrets/"))
        .collect();
    assert_eq!(children_read, secrets, "{sent:#?}");
    let status = canvas_status_path();
    let mut applied: Vec<&str> = object_writes(&sent)
        .into_iter()
        .map(|(_, path)| path)
        .filter(|path| *path != status)
        .collect();
    applied.sort_unstable();
    let desired: Vec<&str> = converged
        .keys()
        .map(String::as_str)
        .filter(|path| ![PODS, CLAIM, status.as_str()].contains(path))
        .collect();
    assert_eq!(applied, desired, "each child applied once");
}

/// The stores lag the operator's own writes. A reconcile right after the one that created a
/// canvas's children, before any of their watch events arrived, applies none of them again.
#[tokio::test]
async fn with_stores_behind_its_own_writes_a_reconcile_applies_nothing_again() {
    let (mut canvas, mut converged) = steady_world(false);
    canvas.status = None;
    accept_status_write(&mut converged, &canvas);
    // What the operator does not watch exists already: the Secrets and the claim.
    let unwatched: BTreeMap<String, Value> = converged
        .iter()
        .filter(|(path, _)| path.contains("/secrets/") || *path == CLAIM)
        .map(|(path, object)| (path.clone(), object.clone()))
        .collect();
    let (client, sent) = fake_api(unwatched, converged);
    let context = cached_context(client, &BTreeMap::new());
    let status = canvas_status_path();
    let children_written = |sent: &[Sent]| -> usize {
        object_writes(sent)
            .into_iter()
            .filter(|(_, path)| *path != status)
            .count()
    };

    reconcile(Arc::new(canvas.clone()), context.clone())
        .await
        .expect("reconciled");
    let first: Vec<Sent> = sent.lock().expect("lock").drain(..).collect();
    assert!(children_written(&first) > 10, "{first:#?}");

    reconcile(Arc::new(canvas), context)
        .await
        .expect("reconciled");
    let second = sent.lock().expect("lock").clone();
    assert_eq!(children_written(&second), 0, "{second:#?}");
    assert!(
        reads(&second)
            .iter()
            .all(|path| path.contains("/secrets/") || *path == CLAIM),
        "{second:#?}"
    );
}

/// The API server fills in defaults in a new StatefulSet's claim templates, which the
/// reconcile keeps (they are immutable). Those defaults must not look like a change: the
/// StatefulSet is not applied a second time.
#[tokio::test]
async fn a_claim_template_the_server_defaulted_is_not_a_change() {
    let (canvas, objects) = world(false, &Defaults::default(), |objects| {
        let templates = &mut objects.get_mut(REDIS_SET).expect("the Redis StatefulSet")["spec"]["volumeClaimTemplates"];
        for template in templates.as_array_mut().expect("claim templates") {
            template["apiVersion"] = json!("v1");
            template["kind"] = json!("PersistentVolumeClaim");
            template["spec"]["volumeMode"] = json!("Filesystem");
            template["status"] = json!({"phase": "Pending"});
        }
    });
    let (result, sent) = reconcile_against(canvas, objects.clone(), objects).await;
    assert_eq!(result.expect("reconciled"), Action::requeue(RESYNC));
    assert_eq!(writes(&sent), [], "{sent:#?}");
}
