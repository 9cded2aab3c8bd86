//! The operator's caches of what it watches: one reflector store per kind of child and one
//! of the canvases' pods, fed by the controller's watches. A reconcile reads a child or
//! lists pods from here once the store has synced, so it sends no GET for what it already
//! watches; before that, or when a Secret or claim it reads for what it holds is absent
//! from its store (the watches select by label, so one may be there unseen), it asks the
//! API server. What it is about to apply carries the label, so there its absence is taken
//! from the store ([`Caches::get_labelled`]).
//!
//! A store lags a write by the moment its watch event takes to arrive; until then a read
//! takes the object the write returned ([`RecentWrites`]), so a child just applied is not
//! applied again.

mod recent_writes;

use std::sync::Arc;

use futures::FutureExt;
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    batch::v1::CronJob,
    core::v1::{
        ConfigMap, Container, ContainerState, ContainerStatus, PersistentVolumeClaim, Pod,
        PodCondition, PodSpec, PodStatus, Secret, Service,
    },
    networking::v1::{Ingress, NetworkPolicy},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    ResourceExt,
    runtime::reflector::{self, ObjectRef, Store, store::Writer},
};

pub use self::recent_writes::RecentWrites;
use crate::status::ImageFailure;

/// The stores, one per kind the controller watches in full.
#[derive(Clone)]
pub struct Caches {
    pub stateful_sets: Store<StatefulSet>,
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub config_maps: Store<ConfigMap>,
    pub pod_disruption_budgets: Store<PodDisruptionBudget>,
    pub network_policies: Store<NetworkPolicy>,
    pub ingresses: Store<Ingress>,
    pub cron_jobs: Store<CronJob>,
    pub secrets: Store<Secret>,
    pub claims: Store<PersistentVolumeClaim>,
    pub pods: Store<Pod>,
    /// Writes the child stores have not seen yet.
    pub recent_writes: Arc<RecentWrites>,
}

/// The writing ends of the [`Caches`]' stores, for the watches that fill them.
pub struct Writers {
    pub stateful_sets: Writer<StatefulSet>,
    pub deployments: Writer<Deployment>,
    pub services: Writer<Service>,
    pub config_maps: Writer<ConfigMap>,
    pub pod_disruption_budgets: Writer<PodDisruptionBudget>,
    pub network_policies: Writer<NetworkPolicy>,
    pub ingresses: Writer<Ingress>,
    pub cron_jobs: Writer<CronJob>,
    pub secrets: Writer<Secret>,
    pub claims: Writer<PersistentVolumeClaim>,
    pub pods: Writer<Pod>,
}

impl std::fmt::Debug for Writers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writers").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches").finish_non_exhaustive()
    }
}

/// A kind a reconcile reads by name, and its store among the [`Caches`] if it has one.
pub trait Cached: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static {
    fn store(caches: &Caches) -> Option<&Store<Self>>;

    /// Whether the store's "there is none" must be confirmed by the API server: where
    /// acting on a wrong absence would lose data (a Secret generated anew replaces the
    /// password Redis was started with) or miss an object the label selector does not
    /// see. A synced store that holds the object still answers alone.
    const CONFIRM_ABSENCE: bool = false;
}

macro_rules! cached {
    ($($kind:ty => $field:ident),* $(,)?) => {$(
        impl Cached for $kind {
            fn store(caches: &Caches) -> Option<&Store<Self>> {
                Some(&caches.$field)
            }
        }
    )*};
}

cached!(
    StatefulSet => stateful_sets,
    Deployment => deployments,
    Service => services,
    ConfigMap => config_maps,
    PodDisruptionBudget => pod_disruption_budgets,
    NetworkPolicy => network_policies,
    Ingress => ingresses,
    CronJob => cron_jobs,
);

/// Only the Secrets the operator labels are watched; one it generated but cannot find
/// there is looked up before a new one is made.
impl Cached for Secret {
    fn store(caches: &Caches) -> Option<&Store<Self>> {
        Some(&caches.secrets)
    }

    const CONFIRM_ABSENCE: bool = true;
}

/// The Redis volume's claim is the StatefulSet controller's, labelled from the claim
/// template; until it exists, each read asks the API server.
impl Cached for PersistentVolumeClaim {
    fn store(caches: &Caches) -> Option<&Store<Self>> {
        Some(&caches.claims)
    }

    const CONFIRM_ABSENCE: bool = true;
}

impl Caches {
    /// Empty stores, not synced until their writers have had a first full list.
    pub fn new() -> (Self, Writers) {
        let (stateful_sets, stateful_sets_writer) = reflector::store();
        let (deployments, deployments_writer) = reflector::store();
        let (services, services_writer) = reflector::store();
        let (config_maps, config_maps_writer) = reflector::store();
        let (pod_disruption_budgets, pod_disruption_budgets_writer) = reflector::store();
        let (network_policies, network_policies_writer) = reflector::store();
        let (ingresses, ingresses_writer) = reflector::store();
        let (cron_jobs, cron_jobs_writer) = reflector::store();
        let (secrets, secrets_writer) = reflector::store();
        let (claims, claims_writer) = reflector::store();
        let (pods, pods_writer) = reflector::store();
        let caches = Self {
            stateful_sets,
            deployments,
            services,
            config_maps,
            pod_disruption_budgets,
            network_policies,
            ingresses,
            cron_jobs,
            secrets,
            claims,
            pods,
            recent_writes: Arc::default(),
        };
        let writers = Writers {
            stateful_sets: stateful_sets_writer,
            deployments: deployments_writer,
            services: services_writer,
            config_maps: config_maps_writer,
            pod_disruption_budgets: pod_disruption_budgets_writer,
            network_policies: network_policies_writer,
            ingresses: ingresses_writer,
            cron_jobs: cron_jobs_writer,
            secrets: secrets_writer,
            claims: claims_writer,
            pods: pods_writer,
        };
        (caches, writers)
    }

    /// The `K` named `name` in `namespace` as the store holds it (`Some(None)`: it does not
    /// exist), or `None` when `K` has no store or it has not synced yet, or it is absent and
    /// `K` wants absence confirmed ([`Cached::CONFIRM_ABSENCE`]).
    pub fn get<K: Cached>(&self, namespace: &str, name: &str) -> Option<Option<K>> {
        self.get_labelled(namespace, name)
            .filter(|newest| newest.is_some() || !K::CONFIRM_ABSENCE)
    }

    /// As [`Caches::get`], but the store's "there is none" is the answer for every `K`: for
    /// a caller that knows the object, if it existed, would carry the label the watch
    /// selects.
    pub fn get_labelled<K: Cached>(&self, namespace: &str, name: &str) -> Option<Option<K>> {
        let store = K::store(self).filter(|store| synced(store))?;
        let stored = store.get(&ObjectRef::new(name).within(namespace));
        Some(self.recent_writes.newest(namespace, name, stored))
    }

    /// Keeps what an apply of a `K` returned, if `K` has a store, until the store has it.
    pub fn wrote<K: Cached>(&self, object: &K) {
        if K::store(self).is_some() {
            let mut trimmed = object.clone();
            trim(&mut trimmed);
            self.recent_writes.record(&trimmed);
        }
    }

    /// The pods in `namespace` whose labels hold every `(key, value)` of `labels`, or
    /// `None` when the pod store has not synced yet.
    pub fn pods(&self, namespace: &str, labels: &[(&str, &str)]) -> Option<Vec<Pod>> {
        synced(&self.pods).then(|| {
            self.pods
                .state_filter(|pod| {
                    pod.namespace().as_deref() == Some(namespace)
                        && labels.iter().all(|(key, value)| {
                            pod.labels().get(*key).map(String::as_str) == Some(value)
                        })
                })
                .into_iter()
                .map(Arc::unwrap_or_clone)
                .collect()
        })
    }
}

/// Whether the store has had its first full list (then it stays so).
fn synced<K>(store: &Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|ready| ready.is_ok())
}

/// What the stores keep of a child: all but its managed fields, which no reconcile reads
/// and which are most of a small object's bytes. The reconcile compares the rest with what
/// it would apply.
pub fn trim<K: kube::Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// What the pod store keeps of a pod, the operator's most numerous object: what the
/// canvas's status reads ([`crate::status::PodState::of_pod`],
/// [`crate::status::reported_backup`]) and no more. Its metadata but the annotations; its
/// Ready condition; the statuses of the containers that wait for an image they cannot get
/// or have ended (a backup's upload reports there), each with its name, image and state;
/// and of the spec only those waiting containers' names and images.
pub fn trim_pod(pod: &mut Pod) {
    trim(pod);
    pod.metadata.annotations = None;
    let Some(status) = pod.status.take() else {
        pod.spec = None;
        return;
    };
    let waiting_on_image = |state: &ContainerState| {
        state
            .waiting
            .as_ref()
            .and_then(|waiting| waiting.reason.as_deref())
            .and_then(ImageFailure::of_waiting_reason)
            .is_some()
    };
    let kept = |statuses: Option<Vec<ContainerStatus>>| {
        let kept: Vec<ContainerStatus> = statuses
            .into_iter()
            .flatten()
            .filter_map(|status| {
                let state = status
                    .state
                    .filter(|state| waiting_on_image(state) || state.terminated.is_some())?;
                Some(ContainerStatus {
                    name: status.name,
                    image: status.image,
                    state: Some(ContainerState {
                        running: None,
                        ..state
                    }),
                    ..ContainerStatus::default()
                })
            })
            .collect();
        (!kept.is_empty()).then_some(kept)
    };
    let init_container_statuses = kept(status.init_container_statuses);
    let container_statuses = kept(status.container_statuses);
    pod.status = Some(PodStatus {
        conditions: status.conditions.map(|conditions| {
            conditions
                .into_iter()
                .filter(|condition| condition.type_ == "Ready")
                .map(|condition| PodCondition {
                    type_: condition.type_,
                    status: condition.status,
                    ..PodCondition::default()
                })
                .collect()
        }),
        init_container_statuses,
        container_statuses,
        ..PodStatus::default()
    });
    let waiting: Vec<&str> = pod
        .status
        .iter()
        .flat_map(|status| {
            let statuses = [&status.init_container_statuses, &status.container_statuses];
            statuses.into_iter().flatten().flatten()
        })
        .filter(|status| status.state.as_ref().is_some_and(waiting_on_image))
        .map(|status| status.name.as_str())
        .collect();
    let spec = pod.spec.take().filter(|_| !waiting.is_empty());
    pod.spec = spec.map(|spec| {
        let named = |containers: Vec<Container>| {
            containers
                .into_iter()
                .filter(|container| waiting.contains(&container.name.as_str()))
                .map(|container| Container {
                    name: container.name,
                    image: container.image,
                    ..Container::default()
                })
                .collect::<Vec<_>>()
        };
        PodSpec {
            containers: named(spec.containers),
            init_containers: spec
                .init_containers
                .map(named)
                .filter(|containers| !containers.is_empty()),
            ..PodSpec::default()
        }
    });
}

#[cfg(test)]
mod tests {
    use kube::runtime::{reflector, watcher};
    use serde_json::json;

    use super::*;

    fn deployment(namespace: &str, name: &str) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": "x"}},
        }))
        .expect("a deployment")
    }

    fn caches_with(deployments: Store<Deployment>) -> Caches {
        let (caches, _) = Caches::new();
        Caches {
            deployments,
            ..caches
        }
    }

    /// The canvas's status reads of a pod what its store keeps.
    #[test]
    fn a_trimmed_pod_tells_the_status_what_the_whole_one_does() {
        let pod = |component: &str, spec: serde_json::Value, status: serde_json::Value| -> Pod {
            serde_json::from_value(json!({
                "metadata": {
                    "name": format!("demo-{component}-0"), "namespace": "art", "uid": "u-1",
                    "labels": {
                        "app.kubernetes.io/component": component,
                        "app.kubernetes.io/instance": "demo",
                        "controller-revision-hash": "demo-redis-1",
                    },
                    "annotations": {"note": "x"},
                    "managedFields": [{"manager": "kubelet", "operation": "Update"}],
                },
                "spec": spec,
                "status": status,
            }))
            .expect("a pod")
        };
        let spec = json!({
            "nodeName": "node-1",
            "volumes": [{"name": "tmp", "emptyDir": {}}],
            "initContainers": [{"name": "restore", "image": "app:1", "args": ["restore"]}],
            "containers": [{
                "name": "api", "image": "app:2",
                "env": [{"name": "A", "value": "b"}],
                "readinessProbe": {"exec": {"command": ["true"]}},
            }],
        });
        let container = |name: &str, image: &str, state: serde_json::Value| {
            json!({
                "name": name, "image": image, "imageID": "sha256:1", "ready": false,
                "restartCount": 2, "containerID": "containerd://1", "state": state,
                "lastState": {"terminated": {"exitCode": 1}},
            })
        };
        let running = json!({"running": {"startedAt": "2026-12-07T10:00:00Z"}});
        let pull = json!({"waiting": {"reason": "ImagePullBackOff", "message": "no"}});
        let record = r#"{"time":"2026-12-07T10:00:00Z","object":"art/demo/1.rdb","version":3}"#;
        let pods = [
            // Waiting for its image: the spec's name for it (the status's differs) is kept.
            pod(
                "api",
                spec.clone(),
                json!({
                    "phase": "Pending",
                    "conditions": [{"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}],
                    "containerStatuses": [container("api", "docker.io/library/app:2", pull.clone())],
                }),
            ),
            // An init container waiting for its image.
            pod(
                "redis",
                spec.clone(),
                json!({
                    "initContainerStatuses": [container("restore", "docker.io/library/app:1", pull)],
                    "containerStatuses": [container("api", "app:2", json!({"waiting": {"reason": "PodInitializing"}}))],
                }),
            ),
            // Ready and running.
            pod(
                "frontend",
                spec.clone(),
                json!({
                    "phase": "Running", "podIP": "198.18.0.9",
                    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-07T10:00:00Z"}],
                    "containerStatuses": [container("api", "app:2", running)],
                }),
            ),
            // A backup's upload, ended with its record.
            pod(
                "backup",
                spec,
                json!({
                    "containerStatuses": [container("upload", "app:2", json!({"terminated": {"exitCode": 0, "message": record}}))],
                }),
            ),
        ];
        for pod in &pods {
            let mut trimmed = pod.clone();
            trim_pod(&mut trimmed);
            assert_eq!(trimmed.metadata.managed_fields, None);
            assert_eq!(trimmed.metadata.annotations, None);
            if let Some(spec) = &trimmed.spec {
                assert!(spec.volumes.is_none() && spec.node_name.is_none());
                assert!(spec.containers.iter().all(|c| c.env.is_none()));
            }
            assert_eq!(
                crate::status::PodState::of_pod(&trimmed),
                crate::status::PodState::of_pod(pod),
                "{:?}",
                pod.metadata.name
            );
            assert_eq!(
                crate::status::reported_backup(std::slice::from_ref(&trimmed)),
                crate::status::reported_backup(std::slice::from_ref(pod)),
            );
        }
        let problems = |pod: &Pod| {
            let mut trimmed = pod.clone();
            trim_pod(&mut trimmed);
            crate::status::PodState::of_pod(&trimmed)
                .expect("a pod")
                .image_problems
        };
        assert_eq!(
            problems(&pods[0])
                .into_iter()
                .map(|p| p.image)
                .collect::<Vec<_>>(),
            ["app:2"]
        );
        assert_eq!(
            problems(&pods[1])
                .into_iter()
                .map(|p| p.image)
                .collect::<Vec<_>>(),
            ["app:1"]
        );
        assert!(crate::status::reported_backup(&pods[3..]).is_some());
        let mut healthy = pods[2].clone();
        trim_pod(&mut healthy);
        assert!(crate::status::PodState::of_pod(&healthy).expect("a pod").ready);
        let status = healthy.status.expect("status");
        assert_eq!((healthy.spec, status.container_statuses), (None, None));
    }

    /// A Secret the store lacks may exist unlabelled (made by hand, or by an older
    /// release): only the API server may say it does not exist, or a new password would
    /// replace the one Redis runs with.
    #[test]
    fn a_secret_missing_from_its_synced_store_is_asked_of_the_api_server() {
        let (store, mut writer) = reflector::store::<Secret>();
        let mut caches = caches_with(reflector::store().0);
        caches.secrets = store;
        writer.apply_watcher_event(&watcher::Event::Init);
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "demo-internal", "namespace": "art"},
            "data": {"api-token": "dG9rZW4="},
        }))
        .expect("a secret");
        writer.apply_watcher_event(&watcher::Event::InitApply(secret.clone()));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        assert_eq!(
            caches.get::<Secret>("art", "demo-internal"),
            Some(Some(secret))
        );
        assert_eq!(caches.get::<Secret>("art", "demo-redis-auth"), None);
    }

    #[test]
    fn an_unsynced_store_answers_nothing_and_a_synced_one_answers_absence_too() {
        let (store, mut writer) = reflector::store::<Deployment>();
        let caches = caches_with(store);
        assert_eq!(caches.get::<Deployment>("art", "demo-api"), None);
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(deployment("art", "demo-api")));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        assert_eq!(
            caches
                .get::<Deployment>("art", "demo-api")
                .flatten()
                .map(|d| d.name_any()),
            Some("demo-api".to_owned())
        );
        assert_eq!(caches.get::<Deployment>("art", "demo-gateway"), Some(None));
        assert_eq!(
            caches.get::<Deployment>("elsewhere", "demo-api"),
            Some(None)
        );
        assert_eq!(
            caches.get::<Secret>("art", "demo-redis-auth"),
            None,
            "a Secret's store is not synced: read from the API server"
        );
    }
}
