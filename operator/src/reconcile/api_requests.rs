//! The requests one reconcile sends, against a fake API server that holds a canvas's
//! children as the real one would return them: at steady state only reads, and for one
//! child changed by hand exactly one server-side apply, to that child.

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::{
    client::Body,
    runtime::events::{Recorder, Reporter},
};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use super::*;
use crate::api::PixelCanvasSpec;

const NAMESPACE: &str = "art";
const PASSWORD: &str = "s3cret-s3cret";

/// One request the fake received.
#[derive(Debug, Clone)]
struct Sent {
    method: Method,
    path: String,
    query: String,
    content_type: Option<String>,
}

/// A fake API server. GET answers from `live` by path, else 404; PATCH answers with the
/// object at that path in `converged`, as it reads once the apply has taken effect.
/// Anything else answers 405, so an unexpected write fails the reconcile as well as the
/// assertion.
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
                let path = request.uri().path().to_owned();
                sent.lock().expect("lock").push(Sent {
                    method: request.method().clone(),
                    path: path.clone(),
                    query: request.uri().query().unwrap_or_default().to_owned(),
                    content_type: request
                        .headers()
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                });
                let found = match *request.method() {
                    Method::GET => live.get(&path),
                    Method::PATCH => converged.get(&path),
                    _ => None,
                };
                let (status, body) = match (found, request.method()) {
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
    let mut object = serde_json::to_value(with_applied_hash(desired).expect("hash")).expect("json");
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

/// A canvas whose children are all as desired, the objects the API server holds for
/// them (by path), and the canvas with the status a reconcile of that world computes.
fn steady_world(paused: bool) -> (PixelCanvas, BTreeMap<String, Value>) {
    steady_world_with(paused, &Defaults::default())
}

/// [`steady_world`] as an operator with `defaults` leaves it.
fn steady_world_with(paused: bool, defaults: &Defaults) -> (PixelCanvas, BTreeMap<String, Value>) {
    let mut canvas = canvas();
    canvas.spec.paused = paused;
    let names = Names::new(&canvas.name_any());
    let inputs = Inputs::new(&canvas, PASSWORD.to_owned(), defaults).expect("inputs");
    let mut objects = BTreeMap::new();
    let mut workloads = Workloads::new();
    for child in children::desired(&inputs).apply {
        let (path, object) = with_child!(&child, |desired| as_served(desired));
        let live = with_child!(&child, |_desired, wrap| wrap(
            serde_json::from_value(object.clone()).expect("typed")
        ));
        if let Some((component, state)) = workload_state(&live, &names) {
            workloads.insert(component, state);
        }
        objects.insert(path, object);
    }
    let observed = Observed {
        workloads,
        failure: None,
        url: url_of(&canvas, defaults),
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

/// Every read a reconcile of the steady world makes, in order: the generated password
/// Secret, each desired child, then the children that must not exist. The workloads are
/// not read again to observe them: the apply step already holds them.
const STEADY_READS: [&str; 16] = [
    "/api/v1/namespaces/art/secrets/demo-redis-auth",
    "/api/v1/namespaces/art/configmaps/demo-config",
    "/api/v1/namespaces/art/secrets/demo-redis-auth",
    "/api/v1/namespaces/art/services/demo-redis",
    "/apis/apps/v1/namespaces/art/statefulsets/demo-redis",
    "/apis/networking.k8s.io/v1/namespaces/art/networkpolicies/demo-redis",
    "/api/v1/namespaces/art/services/demo-api",
    "/apis/apps/v1/namespaces/art/deployments/demo-api",
    "/apis/policy/v1/namespaces/art/poddisruptionbudgets/demo-api",
    "/api/v1/namespaces/art/services/demo-gateway",
    "/apis/apps/v1/namespaces/art/deployments/demo-gateway",
    "/apis/policy/v1/namespaces/art/poddisruptionbudgets/demo-gateway",
    "/api/v1/namespaces/art/services/demo-frontend",
    "/apis/apps/v1/namespaces/art/deployments/demo-frontend",
    "/apis/policy/v1/namespaces/art/poddisruptionbudgets/demo-frontend",
    "/apis/networking.k8s.io/v1/namespaces/art/ingresses/demo",
];

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
                "/apis/apps/v1/namespaces/art/statefulsets/demo-redis"
            ),
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
            "/apis/apps/v1/namespaces/art/statefulsets/demo-redis",
            "/apis/apps/v1/namespaces/art/deployments/demo-api",
            "/apis/apps/v1/namespaces/art/deployments/demo-gateway",
            "/apis/apps/v1/namespaces/art/deployments/demo-frontend",
        ],
        "{sent:#?}"
    );
}
