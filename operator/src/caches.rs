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

use std::{borrow::Cow, sync::Arc};

use futures::FutureExt;
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    batch::v1::CronJob,
    core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service},
    networking::v1::{Ingress, NetworkPolicy},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    ResourceExt,
    runtime::{
        reflector::{self, Lookup, ObjectRef, Store, store::Writer},
        watcher,
    },
};

pub use self::recent_writes::RecentWrites;
use crate::{api::LastBackup, children::naming::LABEL_INSTANCE, status::PodState};

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
    pub pods: Store<CachedPod>,
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
    pub pods: Writer<CachedPod>,
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

    /// The pods of canvas `canvas` in `namespace`, or `None` when the pod store has not
    /// synced yet.
    pub fn pods(&self, namespace: &str, canvas: &str) -> Option<Vec<Arc<CachedPod>>> {
        synced(&self.pods).then(|| {
            self.pods.state_filter(|pod| {
                pod.namespace == namespace && pod.canvas.as_deref() == Some(canvas)
            })
        })
    }
}

/// Whether the store has had its first full list (then it stays so).
fn synced<K>(store: &Store<K>) -> bool
where
    K: Lookup + Clone + 'static,
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

/// What the pod cache keeps of a pod, the operator's most numerous object: what the canvas's
/// status reads of it, worked out when its watch event arrives. A whole pod, even trimmed,
/// is kilobytes (k8s-openapi's `Pod` alone is 2.4 KiB before any string).
#[derive(Debug, Clone, PartialEq)]
pub struct CachedPod {
    name: String,
    namespace: String,
    resource_version: Option<String>,
    uid: Option<String>,
    /// Its canvas: the instance label.
    canvas: Option<String>,
    /// `None` for a pod of no component, or one on its way out ([`PodState::of_pod`]).
    pub state: Option<PodState>,
    /// What it reports if it is a finished backup pod ([`crate::status::backup_of`]).
    pub backup: Option<LastBackup>,
}

impl CachedPod {
    pub fn of(pod: &Pod) -> Self {
        Self {
            name: pod.name_any(),
            namespace: ResourceExt::namespace(pod).unwrap_or_default(),
            resource_version: ResourceExt::resource_version(pod),
            uid: ResourceExt::uid(pod),
            canvas: pod.labels().get(LABEL_INSTANCE).cloned(),
            state: PodState::of_pod(pod),
            backup: crate::status::backup_of(pod),
        }
    }

    /// A watch event of pods as the cache keeps them.
    pub fn event(event: &watcher::Event<Pod>) -> watcher::Event<Self> {
        match event {
            watcher::Event::Apply(pod) => watcher::Event::Apply(Self::of(pod)),
            watcher::Event::Delete(pod) => watcher::Event::Delete(Self::of(pod)),
            watcher::Event::Init => watcher::Event::Init,
            watcher::Event::InitApply(pod) => watcher::Event::InitApply(Self::of(pod)),
            watcher::Event::InitDone => watcher::Event::InitDone,
        }
    }
}

impl Lookup for CachedPod {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        <Pod as k8s_openapi::Resource>::KIND.into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        <Pod as k8s_openapi::Resource>::GROUP.into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        <Pod as k8s_openapi::Resource>::VERSION.into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        <Pod as k8s_openapi::Resource>::URL_PATH_SEGMENT.into()
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(self.name.as_str().into())
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        Some(self.namespace.as_str().into())
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        self.resource_version.as_deref().map(Cow::from)
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        self.uid.as_deref().map(Cow::from)
    }
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

    /// The pod cache answers, for one canvas, what the status reads of each of its pods,
    /// and follows the pods' watch events.
    #[test]
    fn the_pod_cache_keeps_what_the_status_reads_of_a_canvas_s_pods() {
        let pod = |namespace: &str, name: &str, canvas: &str, status: serde_json::Value| -> Pod {
            serde_json::from_value(json!({
                "metadata": {
                    "name": name, "namespace": namespace, "uid": name, "resourceVersion": "1",
                    "labels": {
                        "app.kubernetes.io/component": "api",
                        "app.kubernetes.io/instance": canvas,
                    },
                },
                "spec": {"containers": [{"name": "api", "image": "app:2"}]},
                "status": status,
            }))
            .expect("a pod")
        };
        let ready = json!({"conditions": [{"type": "Ready", "status": "True"}]});
        let pulling = json!({"containerStatuses": [{
            "name": "api", "image": "docker.io/library/app:2", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff"}},
        }]});
        let ours = pod("art", "demo-api-1", "demo", ready.clone());
        let stuck = pod("art", "demo-api-2", "demo", pulling);
        let other_canvas = pod("art", "mural-api-1", "mural", ready.clone());
        let other_namespace = pod("lab", "demo-api-1", "demo", ready);

        let (caches, mut writers) = Caches::new();
        assert_eq!(caches.pods("art", "demo"), None, "not synced yet");
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(ours.clone()),
            watcher::Event::InitApply(other_canvas),
            watcher::Event::InitApply(other_namespace),
            watcher::Event::InitDone,
            watcher::Event::Apply(stuck.clone()),
        ] {
            writers.pods.apply_watcher_event(&CachedPod::event(&event));
        }
        let states = |caches: &Caches| {
            let mut states: Vec<PodState> = caches
                .pods("art", "demo")
                .expect("synced")
                .iter()
                .map(|pod| pod.state.clone().expect("a component's pod"))
                .collect();
            states.sort_by(|a, b| a.name.cmp(&b.name));
            states
        };
        let whole = [&ours, &stuck].map(|pod| PodState::of_pod(pod).expect("a pod"));
        assert_eq!(states(&caches), whole);
        assert!(whole[0].ready && whole[1].image_problems.len() == 1);

        writers
            .pods
            .apply_watcher_event(&CachedPod::event(&watcher::Event::Delete(stuck)));
        assert_eq!(states(&caches), whole[..1]);
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
